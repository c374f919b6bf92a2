"""Wire config, storage, syncers and triggers together and run them until told to stop."""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from evsync._version import __version__
from evsync.cleaner import Cleaner
from evsync.config import Config, FsOptions, HealthCheckConfig, LmdbConfig, S3Options
from evsync.errors import ConfigError, HttpError
from evsync.health import ERROR, OK, WARNING
from evsync.http import HttpServer
from evsync.lmdb.lock import SyncLock
from evsync.metrics import Metrics
from evsync.storage import BlobStore, open_store
from evsync.sync import Syncer
from evsync.sync.interop import hint_filter
from evsync.triggers.base import HintQueue, Trigger
from evsync.triggers.fs_watch import FsBucketWatcher
from evsync.triggers.listing import Lister
from evsync.triggers.lmdb_watch import LmdbWatcher, TxnObserver, TxnPoller
from evsync.triggers.mqtt import MqttSource, announcement_topic, publish_once
from evsync.triggers.s3events import announcement, bucket_origin
from evsync.triggers.sqs import SqsSource

log = logging.getLogger(__name__)

SYNCER_JOIN_SECONDS = 30.0
# what to do when http.address is taken, most often by a second instance on this host
HTTP_IN_USE_HINT = (
    "another evsync on this host? give each instance its own http.address; "
    "the shipped example configs take it from $EVSYNC_HTTP"
)
# A db whose LMDB does not exist (with ``create: false``) is looked for this often; the
# other dbs are served meanwhile.
MISSING_LMDB_POLL_SECONDS = 2.0


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
        force_rejoin: bool = False,
    ) -> None:
        self.config = config
        self.started_mono = time.monotonic()
        names = list(only_dbs or config.lmdbs)
        for name in names:
            if name not in config.lmdbs:
                raise ConfigError(f"--only-db: {name!r} is not configured under lmdbs")
        self.stop_event = threading.Event()
        self.store = store or open_store(config.storage)
        self.receive_only = receive_only
        # the dbs a process started with --only-db syncs (None: all of the config's)
        self._only_dbs = names if only_dbs else None
        self.metrics = Metrics()
        self.metrics.info.labels(__version__).set(1)
        self.metrics.add_state_collector(self._metrics_state)
        self._force_rejoin = force_rejoin
        # every db's queue exists from the start, so push sources feed a db whose LMDB
        # appears later too
        accepts = hint_filter(config.lightningstream)
        self.queues = {
            name: HintQueue(name, own_instance=config.instance, accepts=accepts)
            for name in names
        }
        # copy-on-write (replaced, never changed in place): the HTTP thread reads them
        # while the missing-LMDB watcher adds a db
        self.syncers: dict[str, Syncer] = {}
        #: dbs whose LMDB does not exist yet: {db: the reason, for health and status}
        self.missing: dict[str, str] = {}
        self._started = False
        self.triggers: list[Trigger] = []
        self.push_sources: dict[str, MqttSource | SqsSource] = {}
        self.cleaners: dict[str, Cleaner] = {}
        self.http: HttpServer | None = None
        self._missing_watcher: threading.Thread | None = None
        self._threads: list[threading.Thread] = []
        self._locks: list[SyncLock] = []
        try:
            for name in names:
                reason = _missing_reason(config.lmdbs[name])
                if reason is None:
                    self._open_syncer(name)
                else:
                    self.missing = {**self.missing, name: reason}
                    log.error(
                        "%s; serving the other dbs and looking for it every %gs",
                        reason,
                        MISSING_LMDB_POLL_SECONDS,
                    )
        except Exception:
            self.close()
            raise

    def _open_syncer(self, name: str) -> Syncer:
        """Open one db's LMDB and syncer and take its lock; the syncer is not started."""
        cfg = self.config
        syncer = Syncer(
            cfg,
            cfg.lmdbs[name],
            self.store,
            self.queues[name],
            receive_only=self.receive_only,
            stop_event=self.stop_event,
            metrics=self.metrics,
            force_rejoin=self._force_rejoin,
        )
        try:
            # after the syncer opened the LMDB (and created its directory), before
            # anything is read or written
            lock = SyncLock(cfg.lmdbs[name])
            if lock.acquire():
                self._locks.append(lock)
        except Exception:
            syncer.close()
            raise
        self.syncers = {**self.syncers, name: syncer}
        return syncer

    def _db_triggers(self, syncer: Syncer) -> list[Trigger]:
        """The triggers of one db: its LMDB watcher and poller, its lister."""
        cfg = self.config
        observer = TxnObserver(syncer.lenv, syncer.queue)
        syncer.on_own_commits.append(observer.own)
        syncer.merge_windows.append(observer.merging)
        triggers: list[Trigger] = []
        if cfg.notify.watch_lmdb:
            triggers.append(LmdbWatcher(syncer.cfg.data_file, observer))
        triggers.append(TxnPoller(observer, cfg.lmdb_poll_interval))
        triggers.append(
            Lister(
                self.store,
                syncer.db,
                syncer.queue,
                cfg.listing_interval,
                on_result=syncer.on_listing,
            )
        )
        return triggers

    def _build_triggers(self) -> None:
        cfg = self.config
        for syncer in self.syncers.values():
            self.triggers.extend(self._db_triggers(syncer))
        opts = cfg.storage.options
        if cfg.notify.mqtt is not None:
            mqtt = MqttSource(
                cfg.notify.mqtt,
                cfg.instance,
                dict(self.queues),
                bucket=opts.bucket if isinstance(opts, S3Options) else None,
                prefix=opts.global_prefix if isinstance(opts, S3Options) else "",
                only_dbs=self._only_dbs,
                origin=bucket_origin(opts),
                metrics=self.metrics,
            )
            self.triggers.append(mqtt)
            self.push_sources["mqtt"] = mqtt
            for syncer in self.syncers.values():
                self._announce_stores(syncer)
        if cfg.notify.sqs is not None:
            creds = {}
            if isinstance(opts, S3Options) and opts.access_key and opts.secret_key:
                creds = {
                    "aws_access_key_id": opts.access_key,
                    "aws_secret_access_key": opts.secret_key,
                }
            sqs = SqsSource(
                cfg.notify.sqs,
                dict(self.queues),
                bucket=opts.bucket if isinstance(opts, S3Options) else None,
                prefix=opts.global_prefix if isinstance(opts, S3Options) else "",
                credentials=creds,
            )
            self.triggers.append(sqs)
            self.push_sources["sqs"] = sqs
        if isinstance(opts, FsOptions) and opts.watch:
            queues = list(self.queues.values())
            self.triggers.append(FsBucketWatcher(Path(opts.root_path), queues))

    def _announce_stores(self, syncer: Syncer) -> None:
        """Announce the syncer's stores over MQTT when configured to."""
        mqtt = self.push_sources.get("mqtt")
        mqtt_cfg = self.config.notify.mqtt
        publish = mqtt_cfg is not None and mqtt_cfg.publish and not self.receive_only
        if isinstance(mqtt, MqttSource) and publish:
            syncer.on_stored.append(mqtt.announce)
            assert mqtt_cfg is not None
            if mqtt_cfg.inline_max_bytes:
                syncer.sender.inline_max_bytes = mqtt_cfg.inline_max_bytes
                syncer.sender.on_encoded.append(mqtt.announce_carried)

    def _build_cleaners(self) -> None:
        for syncer in self.syncers.values():
            self._build_cleaner(syncer)

    def _build_cleaner(self, syncer: Syncer) -> Cleaner | None:
        cleanup = self.config.storage.cleanup
        if not cleanup.enabled or self.receive_only:
            return None  # as LS: a receive-only instance never deletes
        cleaner = Cleaner(
            self.store,
            syncer.db,
            cleanup,
            metrics=self.metrics,
            rejected=syncer.peers.corrupt_objects.__contains__,
        )
        syncer.on_committed.append(cleaner.set_committed)
        self.cleaners = {**self.cleaners, syncer.db: cleaner}
        return cleaner

    def _start_db(self, syncer: Syncer, cleaner: Cleaner | None) -> None:
        """One db's sync thread and its cleaner's."""
        thread = threading.Thread(target=syncer.run, name=f"syncer-{syncer.db}", daemon=True)
        thread.start()
        self._threads.append(thread)
        if cleaner is not None:
            threading.Thread(
                target=cleaner.run,
                args=(self.stop_event,),
                name=f"cleaner-{syncer.db}",
                daemon=True,
            ).start()

    # ------------------------------------------------------------------ missing LMDBs

    def _watch_missing(self) -> None:
        """Look for the missing LMDBs until each exists, then start its sync."""
        while self.missing and not self.stop_event.wait(MISSING_LMDB_POLL_SECONDS):
            self.open_appeared()

    def open_appeared(self) -> list[str]:
        """Start the sync of every missing db whose LMDB exists now; the dbs started.

        Runs on the watcher thread; :meth:`stop` joins it before stopping the syncers,
        so a db started here is stopped with the others.
        """
        started = []
        for name in list(self.missing):
            if self.stop_event.is_set():
                break
            if _missing_reason(self.config.lmdbs[name]) is not None:
                continue
            try:
                syncer = self._open_syncer(name)
            except Exception as exc:  # noqa: BLE001 - a half-written LMDB, say: next poll
                if self.missing.get(name) != str(exc):  # one line per new reason
                    log.warning("db %s: its LMDB appeared but cannot be opened yet: %s", name, exc)
                self.missing = {**self.missing, name: str(exc)}
                continue
            self.missing = {k: v for k, v in self.missing.items() if k != name}
            log.info("db %s: its LMDB appeared at %s; starting its sync", name, syncer.cfg.path)
            if self._started:
                self._announce_stores(syncer)
                triggers = self._db_triggers(syncer)
                self.triggers.extend(triggers)
                for trigger in triggers:
                    trigger.start()
                self._start_db(syncer, self._build_cleaner(syncer))
            started.append(name)
        return started

    def start(self) -> None:
        """Start triggers first (so no commit is missed), then one thread per syncer."""
        log.info(
            "evsync starting: instance %s, dbs %s, storage %s, listing every %gs",
            self.config.instance,
            ", ".join(self.syncers),
            self.store.describe(),
            self.config.listing_interval,
        )
        if self.config.http_address:
            try:
                self.http = HttpServer(
                    self.config.http_address, self.metrics.registry, self.health, self.status
                )
            except HttpError as exc:
                # the address is valid; that it is taken now is a runtime failure
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise HttpError(f"{exc} ({HTTP_IN_USE_HINT})") from None
            self.http.start()
        self._build_triggers()
        self._build_cleaners()
        for trigger in self.triggers:
            trigger.start()
        for name, syncer in self.syncers.items():
            self._start_db(syncer, self.cleaners.get(name))
        self._started = True
        if self.missing:
            self._missing_watcher = threading.Thread(
                target=self._watch_missing, name="missing-lmdbs", daemon=True
            )
            self._missing_watcher.start()

    def wait(self) -> bool:
        """Block until asked to stop (True), or until every syncer died (False)."""
        while not self.stop_event.wait(0.5):
            # a db still missing is waited for, even when no other db runs
            if not self.missing and not any(t.is_alive() for t in self._threads):
                log.error("every syncer stopped; exiting")
                return False
        return True

    def stop(self) -> None:
        """Stop syncers after their current step, then the triggers."""
        self.stop_event.set()
        if self._missing_watcher is not None:
            self._missing_watcher.join(timeout=SYNCER_JOIN_SECONDS)
        for syncer in self.syncers.values():
            syncer.stop()
        for thread in self._threads:
            thread.join(timeout=SYNCER_JOIN_SECONDS)
        for trigger in self.triggers:
            trigger.stop()
        if self.http is not None:
            self.http.stop()
        for syncer in self.syncers.values():
            log.info(
                "db %s: hints by source: first to announce %s; received %s",
                syncer.db,
                _counts(syncer.queue.first),
                _counts(syncer.queue.received),
            )

    def run_once(self) -> bool:
        """Merge every instance's newest object into every db, upload if needed, and
        announce what was stored as the daemon would (peers need not wait for a LIST)."""
        stored: dict[str, tuple[str, int]] = {}  # db -> its newest stored object, size
        for syncer in self.syncers.values():
            syncer.on_stored.append(lambda db, name, size: stored.__setitem__(db, (name, size)))
        ok = True
        for syncer in self.syncers.values():
            ok = syncer.run_once() and ok
        for name in self.missing:
            log.error("db %s: not synced: its LMDB does not exist", name)
        self._announce_once(stored)
        return ok and not self.missing

    def _announce_once(self, stored: dict[str, tuple[str, int]]) -> None:
        """``--only-once``: one short-lived MQTT client publishes the newest object of
        each db stored (a failure is a warning: the objects are in the bucket)."""
        cfg = self.config.notify.mqtt
        if cfg is None or not cfg.publish or self.receive_only or not stored:
            return
        opts = self.config.storage.options
        bucket = opts.bucket if isinstance(opts, S3Options) else ""
        prefix = opts.global_prefix if isinstance(opts, S3Options) else ""
        instance = self.config.instance
        messages = [
            (
                announcement_topic(cfg, db, instance),
                announcement(
                    bucket, prefix + name, size, db=db, instance=instance,
                    origin=bucket_origin(opts),
                ),
            )
            for db, (name, size) in sorted(stored.items())
        ]
        if publish_once(cfg, instance, messages):
            log.info("mqtt: announced %d object(s)", len(messages))

    def close(self) -> None:
        """Release the LMDBs, their locks and the storage client."""
        for syncer in self.syncers.values():
            syncer.close()
        for lock in self._locks:
            lock.release()
        self._locks.clear()
        self.store.close()

    def status(self) -> dict[str, Any]:
        """Status of every db (the /status page and ``evsync status``)."""
        return {
            "instance": self.config.instance,
            "version": __version__,
            "hostname": socket.gethostname(),
            "storage": self.store.describe(),
            "uptime_seconds": time.monotonic() - self.started_mono,
            "dbs": {
                **{name: s.status() for name, s in self.syncers.items()},
                **{name: {"db": name, "lmdb_missing": why} for name, why in self.missing.items()},
            },
            "push_sources": {name: p.status() for name, p in self.push_sources.items()},
            "triggers": [t.source for t in self.triggers],
            "cleanup": {
                "enabled": bool(self.cleaners),
                "dbs": {name: c.status() for name, c in self.cleaners.items()},
            },
        }

    # ------------------------------------------------------------------ health

    def health_checks(self) -> dict[str, dict[str, Any]]:
        """Every check by name: ``status`` (ok/warning/error) plus what explains it."""
        checks: dict[str, dict[str, Any]] = {}
        start_cfg = self.config.health.start
        for name, why in self.missing.items():
            checks[f"{name}_lmdb"] = {"status": ERROR, "last_error": why}
        for name, syncer in self.syncers.items():
            for op, entry in syncer.health.snapshot().items():
                checks[f"{name}_storage_{op}"] = entry
            if start_cfg.report_healthz:
                checks[f"{name}_startup"] = self._startup_check(syncer.stats.startup_done)
            reason = syncer.guard.blocked_reason
            checks[f"{name}_rejoin_guard"] = {
                "status": ERROR if reason else OK,
                "last_error": reason or "",
            }
        for source, push in self.push_sources.items():
            check = _duration_check(push.failing_since, push.last_error, self.config.health.notify)
            if push.failed and check["status"] == OK:
                # a failed attempt is news at once (not only after warn_duration); a
                # source that is merely still connecting stays ok
                check["status"] = WARNING
            checks[source] = check
        return checks

    def _startup_check(self, done: bool) -> dict[str, Any]:
        if done:
            return {"status": OK, "last_error": ""}
        check = _duration_check(self.started_mono, "startup not done", self.config.health.start)
        return check

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, body) for /healthz: unhealthy when any check is an error."""
        checks = self.health_checks()
        levels = {c["status"] for c in checks.values()}
        overall = ERROR if ERROR in levels else WARNING if WARNING in levels else OK
        meta: dict[str, Any] = {
            "hostname": socket.gethostname(),
            "version": __version__,
            "instance": self.config.instance,
        }
        if self.config.health.start.report_metadata:
            for name, syncer in self.syncers.items():
                meta[f"startup_{name}"] = syncer.stats.startup_done
            for name in self.missing:
                meta[f"startup_{name}"] = False
        failing = sorted(name for name, c in checks.items() if c["status"] == ERROR)
        body = {"status": overall, "failing": failing, "checks": checks, "meta": meta}
        return overall != ERROR, body

    def _metrics_state(self) -> dict[str, Any]:
        return {
            "dbs": {name: s.metrics_state() for name, s in self.syncers.items()},
            "checks": {name: c["status"] for name, c in self.health_checks().items()},
            "push": {
                name: {
                    "connected": p.failing_since is None,
                    "messages": p.messages,
                    "malformed": p.malformed,
                    "other_bucket": getattr(p, "other_bucket", 0),
                }
                for name, p in self.push_sources.items()
            },
        }


def _missing_reason(cfg: LmdbConfig) -> str | None:
    """Why a db cannot start yet (its LMDB does not exist and may not be created), or None."""
    if cfg.options.create or cfg.data_file.exists():
        return None
    return (
        f"db {cfg.name}: lmdbs.{cfg.name}.path: {cfg.path} does not exist (options.create is false)"
    )


def _duration_check(
    failing_since: float | None, error: str, cfg: HealthCheckConfig
) -> dict[str, Any]:
    """A check that warns, then errs, after a continuous failure of the configured durations."""
    if failing_since is None:
        return {"status": OK, "last_error": "", "failing_for_seconds": None}
    failing_for = time.monotonic() - failing_since
    status = (
        ERROR
        if failing_for >= cfg.error_duration
        else WARNING
        if failing_for >= cfg.warn_duration
        else OK
    )
    return {"status": status, "last_error": error, "failing_for_seconds": failing_for}
