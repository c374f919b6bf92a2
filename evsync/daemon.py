"""Wire config, storage, syncers and triggers together and run them until told to stop."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from evsync.config import Config, FsOptions, S3Options
from evsync.errors import ConfigError
from evsync.storage import BlobStore, open_store
from evsync.syncer import Syncer
from evsync.triggers.base import HintQueue, Trigger
from evsync.triggers.fs_watch import FsBucketWatcher
from evsync.triggers.listing import Lister
from evsync.triggers.lmdb_watch import LmdbWatcher, TxnObserver, TxnPoller
from evsync.triggers.mqtt import MqttSource
from evsync.triggers.sqs import SqsSource

log = logging.getLogger(__name__)

SYNCER_JOIN_SECONDS = 30.0


def _counts(counter: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counter.items())) or "none"


class Daemon:
    """All syncers of one process, one thread each, plus their triggers."""

    def __init__(
        self,
        config: Config,
        *,
        only_dbs: Iterable[str] | None = None,
        receive_only: bool = False,
        store: BlobStore | None = None,
    ) -> None:
        self.config = config
        names = list(only_dbs or config.lmdbs)
        for name in names:
            if name not in config.lmdbs:
                raise ConfigError(f"--only-db: {name!r} is not configured under lmdbs")
        self.stop_event = threading.Event()
        self.store = store or open_store(config.storage)
        self.receive_only = receive_only
        self.syncers: dict[str, Syncer] = {}
        self.triggers: list[Trigger] = []
        self.push_sources: dict[str, MqttSource | SqsSource] = {}
        self._threads: list[threading.Thread] = []
        try:
            for name in names:
                self.syncers[name] = Syncer(
                    config,
                    config.lmdbs[name],
                    self.store,
                    HintQueue(name, own_instance=config.instance),
                    receive_only=receive_only,
                    stop_event=self.stop_event,
                )
        except Exception:
            self.close()
            raise

    def _build_triggers(self) -> None:
        cfg = self.config
        for syncer in self.syncers.values():
            observer = TxnObserver(syncer.lenv, syncer.queue)
            if cfg.notify.watch_lmdb:
                self.triggers.append(LmdbWatcher(syncer.cfg.data_file, observer))
            self.triggers.append(TxnPoller(observer, cfg.lmdb_poll_interval))
            self.triggers.append(
                Lister(
                    self.store,
                    syncer.db,
                    syncer.queue,
                    cfg.listing_interval,
                    on_result=syncer.on_listing,
                )
            )
        opts = cfg.storage.options
        if cfg.notify.mqtt is not None:
            mqtt = MqttSource(
                cfg.notify.mqtt,
                cfg.instance,
                {name: s.queue for name, s in self.syncers.items()},
                bucket=opts.bucket if isinstance(opts, S3Options) else None,
                prefix=opts.global_prefix if isinstance(opts, S3Options) else "",
            )
            self.triggers.append(mqtt)
            self.push_sources["mqtt"] = mqtt
            if cfg.notify.mqtt.publish and not self.receive_only:
                for syncer in self.syncers.values():
                    syncer.on_stored.append(mqtt.announce)
        if cfg.notify.sqs is not None:
            creds = {}
            if isinstance(opts, S3Options) and opts.access_key and opts.secret_key:
                creds = {
                    "aws_access_key_id": opts.access_key,
                    "aws_secret_access_key": opts.secret_key,
                }
            sqs = SqsSource(
                cfg.notify.sqs,
                {name: s.queue for name, s in self.syncers.items()},
                bucket=opts.bucket if isinstance(opts, S3Options) else None,
                prefix=opts.global_prefix if isinstance(opts, S3Options) else "",
                credentials=creds,
            )
            self.triggers.append(sqs)
            self.push_sources["sqs"] = sqs
        if isinstance(opts, FsOptions) and opts.watch:
            queues = [s.queue for s in self.syncers.values()]
            self.triggers.append(FsBucketWatcher(Path(opts.root_path), queues))

    def start(self) -> None:
        """Start triggers first (so no commit is missed), then one thread per syncer."""
        log.info(
            "evsync starting: instance %s, dbs %s, storage %s, listing every %gs",
            self.config.instance,
            ", ".join(self.syncers),
            self.store.describe(),
            self.config.listing_interval,
        )
        self._build_triggers()
        for trigger in self.triggers:
            trigger.start()
        for name, syncer in self.syncers.items():
            thread = threading.Thread(target=syncer.run, name=f"syncer-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def wait(self) -> None:
        """Block until :meth:`stop` is called (e.g. by a signal handler)."""
        while not self.stop_event.wait(0.5):
            if not any(t.is_alive() for t in self._threads):
                log.error("every syncer stopped; exiting")
                break

    def stop(self) -> None:
        """Stop syncers after their current step, then the triggers."""
        self.stop_event.set()
        for syncer in self.syncers.values():
            syncer.stop()
        for thread in self._threads:
            thread.join(timeout=SYNCER_JOIN_SECONDS)
        for trigger in self.triggers:
            trigger.stop()
        for syncer in self.syncers.values():
            log.info(
                "db %s: hints by source: first to announce %s; received %s",
                syncer.db,
                _counts(syncer.queue.first),
                _counts(syncer.queue.received),
            )

    def run_once(self) -> bool:
        """Merge every instance's newest object into every db, upload if needed."""
        ok = True
        for syncer in self.syncers.values():
            ok = syncer.run_once() and ok
        return ok

    def close(self) -> None:
        """Release the LMDBs and the storage client."""
        for syncer in self.syncers.values():
            syncer.close()
        self.store.close()

    def status(self) -> dict[str, object]:
        """Status of every db."""
        return {
            "instance": self.config.instance,
            "storage": self.store.describe(),
            "dbs": {name: s.status() for name, s in self.syncers.items()},
            "push_sources": {name: p.status() for name, p in self.push_sources.items()},
        }
