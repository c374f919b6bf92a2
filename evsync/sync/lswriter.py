"""Full ``.pb.gz`` snapshots for Lightning Stream instances (``lightningstream.write``).

Owns: when a ``.pb.gz`` is due, its dump, and its store (docs/lightningstream.md).

- **Due** when the LMDB changed since the last one (merges of ``.pb.gz`` objects and
  evsync's own txns excepted, as LS does not upload merged data again), or when
  ``storage_force_snapshot_interval`` passed; at most one per
  ``lightningstream.write_interval``, so changes in between coalesce into the next one.
  A restart writes one as soon as the own history is merged, as LS does; an empty LMDB
  never writes.
- **Dump**: the same path as a full ``.evs.zst`` object (:mod:`evsync.lmdb.dump`), in
  shadow mode from the shadow DBIs after a main -> shadow pass, named from the sender's
  clock so that the names of one instance never go back, whatever their format.
- **Store**: in a worker thread, so that a slow or failing bucket never holds up the
  ``.evs.zst`` deltas, which the loop keeps sending. A failed store is not retried as
  it is: after the backoff the next attempt dumps afresh and so also carries every
  change made meanwhile. While one store is in flight no other dump starts.

Beside an ``.evs.zst`` chain the objects carry the copy marker
(:data:`~evsync.snapshot.name.COPY_EXTRA`), so evsync peers follow the chain instead;
``lightningstream.only`` (an LS imitation) writes plain LS names.

May call: the LMDB dumps, the shadow pass (through the sender), the ``.pb.gz`` format,
the bucket's ``store`` (from the worker), :class:`~evsync.sync.state.Peers` (reads),
the metrics and the recorder's log streaks. Must not: merge, list, or touch the
``.evs.zst`` chain.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO

from evsync import faults
from evsync.config import Config
from evsync.errors import EvsyncError, LmdbError
from evsync.lmdb.dump import DumpResult, dump_native, dump_shadow
from evsync.lmdb.env import LmdbEnv
from evsync.lmdb.shadow import Shadow
from evsync.metrics import Metrics
from evsync.snapshot import format_for
from evsync.snapshot.base import SnapshotFormat
from evsync.snapshot.name import COPY_EXTRA, EXT_LIGHTNINGSTREAM, SnapshotName
from evsync.storage.base import BlobStore
from evsync.sync.backoff import RETRY_BACKOFF_START, Backoff
from evsync.sync.recorder import Recorder
from evsync.sync.sender import DUMP_SPOOL_BYTES, SOURCE_SELF, CommittedCallback, Sender
from evsync.sync.state import Peers, TxnLedger
from evsync.triggers.base import Hint, HintQueue

log = logging.getLogger(__name__)

# How long shutdown (or ``--only-once``) waits for a store in flight.
STORE_WAIT_SECONDS = 30.0
STAGE_DUMP = "dump"
STAGE_STORE = "store"


@dataclass
class _InFlight:
    """A dumped snapshot being stored by the worker."""

    future: Future[None]
    name: SnapshotName
    dumped: DumpResult
    size: int
    started: float
    #: the other instances' merged positions when it was dumped: what it proves merged
    merged: Mapping[str, int]


class LsWriter:
    """Writes this LMDB's full ``.pb.gz`` snapshots; driven by the loop thread."""

    def __init__(  # noqa: PLR0917 - the parts it works with, named once
        self,
        config: Config,
        lenv: LmdbEnv,
        shadow: Shadow | None,
        store: BlobStore,
        peers: Peers,
        sender: Sender,
        recorder: Recorder,
        metrics: Metrics,
        queue: HintQueue,
    ) -> None:
        self.config = config
        self.cfg = config.lightningstream
        self.db = lenv.name
        self.lenv = lenv
        self.shadow = shadow
        self.store = store
        self.peers = peers
        self.sender = sender
        self.recorder = recorder
        self.metrics = metrics
        self.queue = queue
        #: evsync copies carry the marker; an LS imitation writes LS's plain names
        self.extras: tuple[str, ...] = () if self.cfg.only else (COPY_EXTRA,)
        #: txns a .pb.gz need not carry: up to the last one stored, merges of .pb.gz
        #: objects and evsync's own txns right after it
        self.ledger = TxnLedger(track_merges=False)
        retry = config.storage_retry_interval
        self.backoff = Backoff(min(RETRY_BACKOFF_START, retry), retry)
        self.last_store_mono = time.monotonic()
        self._not_before = 0.0  # monotonic: no dump starts earlier (write_interval)
        self._inflight: _InFlight | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # the executor is made and shut down once
        self.on_committed: list[CommittedCallback] = []
        self.stored = 0

    # ------------------------------------------------------------------ inputs

    def merged(self, name: SnapshotName, txn_ids: list[int]) -> None:
        """A merge committed ``txn_ids``: merged LS data needs no ``.pb.gz`` again (LS
        instances have it already), nor the data of an evsync peer that writes copies of
        its own (its copies carry it to them); other merged ``.evs.zst`` data does."""
        st = self.peers.instances.get(name.instance)
        if name.is_ls or (st is not None and st.writes_copies):
            self.ledger.advance(txn_ids)

    def own_txn(self, txn_id: int) -> None:
        """A txn of evsync's own that changed no application data."""
        self.ledger.advance([txn_id])

    # ------------------------------------------------------------------ deciding

    def _forced(self, now: float) -> bool:
        force = self.config.storage_force_snapshot_interval
        return bool(force) and now - self.last_store_mono >= force

    def _wanted(self, now: float) -> bool:
        return self.lenv.last_txn_id() > self.ledger.last_synced or self._forced(now)

    def due_in(self, now: float) -> float | None:
        """Seconds until the loop should come back for a ``.pb.gz`` (None: nothing
        pending; a store in flight wakes the loop itself when it ends)."""
        if self._inflight is not None or self.peers.own in self.peers.waiting_for:
            return None  # a store ends with a hint; startup's end is a step anyway
        if not self._wanted(now):
            force = self.config.storage_force_snapshot_interval
            return self.last_store_mono + force - now if force else None
        return max(0.0, self._not_before - now, self.backoff.not_before - now)

    def maybe_write(self) -> None:
        """The loop's turn: collect a finished store, then start the next one if due."""
        self._collect()
        now = time.monotonic()
        if (
            self._inflight is not None
            or self.peers.own in self.peers.waiting_for  # own history first (DESIGN §5)
            or now < self._not_before
            or not self.backoff.ready()
            or not self._wanted(now)
        ):
            return
        self._not_before = now + self.cfg.write_interval
        self._start(forced=self._forced(now))

    def flush(self, timeout: float = STORE_WAIT_SECONDS) -> bool:
        """``--only-once``: write one now if due and wait for its store; False on failure."""
        self._not_before = 0.0
        self.backoff.succeeded()
        self.maybe_write()
        inflight = self._inflight
        if inflight is not None:
            try:
                inflight.future.exception(timeout=timeout)
            except TimeoutError:
                return False
        self._collect()
        return self._inflight is None and not self.backoff.delay

    def close(self) -> None:
        """Wait (bounded) for a store in flight, then end the worker."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is None:
            return
        inflight = self._inflight
        if inflight is not None:
            try:
                inflight.future.exception(timeout=STORE_WAIT_SECONDS)
            except TimeoutError:
                log.warning("db %s: a .pb.gz store is still running at shutdown", self.db)
        executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ dumping

    def _format(self) -> SnapshotFormat:
        fmt = format_for("x." + EXT_LIGHTNINGSTREAM)
        if fmt is None:
            raise LmdbError(f"lmdb {self.db}: no {EXT_LIGHTNINGSTREAM} writer is built in")
        return fmt

    def _start(self, *, forced: bool) -> None:
        """Dump into a spool and hand it to the worker."""
        t0 = time.monotonic()
        spool = tempfile.SpooledTemporaryFile(max_size=DUMP_SPOOL_BYTES)  # noqa: SIM115
        try:
            if self.shadow is not None:
                self.sender.stamp_local_changes()  # main -> shadow first
            merged = self.peers.others_ns("merged")
            name, dumped = self._dump(spool)
        except (EvsyncError, OSError) as exc:
            spool.close()
            self._failed(STAGE_DUMP, None, exc)
            return
        if dumped.header.total_entries == 0:  # an empty LMDB never uploads
            spool.close()
            self.ledger.synced_up_to(dumped.header.txn_id)
            return
        size = spool.tell()
        spool.seek(0)
        future = self._worker().submit(self._store_in_worker, name, spool)
        self._inflight = _InFlight(future, name, dumped, size, t0, merged)
        log.debug("db %s: storing %s%s", self.db, name, " (forced)" if forced else "")

    def _dump(self, spool: IO[bytes]) -> tuple[SnapshotName, DumpResult]:
        fmt = self._format()
        ts = self.sender.next_timestamp()
        own = self.peers.own
        if self.shadow is not None:
            dumped = dump_shadow(
                self.lenv,
                spool,
                db=self.db,
                instance=own,
                timestamp_ns=ts,
                txn_id=self.shadow.synced_txn,
                fmt=fmt,
            )
        else:
            dumped = dump_native(
                self.lenv, spool, db=self.db, instance=own, timestamp_ns=ts, fmt=fmt
            )
        name = SnapshotName.build(self.db, own, ts, extras=self.extras, ext=fmt.extension)
        return name, dumped

    def _worker(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix=f"evsync-pbgz-{self.db}"
                )
            return self._executor

    def _store_in_worker(self, name: SnapshotName, spool: IO[bytes]) -> None:
        """The worker thread: one store attempt, then wake the loop to collect it."""
        try:
            self.store.store(name.name, faults.reading(spool, "upload"))
            faults.point("stored")
        finally:
            spool.close()
            self.queue.put(Hint(SOURCE_SELF, local=True))

    # ------------------------------------------------------------------ outcomes

    def _collect(self) -> None:
        """A store that ended: record it (loop thread)."""
        inflight = self._inflight
        if inflight is None or not inflight.future.done():
            return
        self._inflight = None
        exc = inflight.future.exception()
        if exc is not None:
            self._failed(STAGE_STORE, inflight.name, exc)
            return
        header = inflight.dumped.header
        self.backoff.succeeded()
        self.recorder.recovered("ls-write", "writing .pb.gz snapshots")
        self.ledger.synced_up_to(header.txn_id)
        self.last_store_mono = time.monotonic()
        self.peers.own_named(inflight.name)  # ours: never checked as another writer's
        self.stored += 1
        self.metrics.ls_snapshots_stored.labels(self.db).inc()
        self.metrics.bytes_uploaded.labels(self.db).inc(inflight.size)
        log.info(
            "db %s: stored %s (lightningstream, %d entries, %d bytes, txn %d, %.1f ms)",
            self.db,
            inflight.name,
            inflight.dumped.stats.entries,
            inflight.size,
            header.txn_id,
            (time.monotonic() - inflight.started) * 1000,
        )
        for callback in self.on_committed:
            callback(inflight.merged)

    def _failed(self, stage: str, name: SnapshotName | None, exc: BaseException) -> None:
        self.backoff.failed()
        self.metrics.ls_snapshot_failures.labels(self.db, stage).inc()
        what = f"store of {name}" if name is not None else "dump"
        self.recorder.log_limited(
            "ls-write",
            logging.WARNING,
            "db %s: .pb.gz %s failed: %s; the next one dumps afresh in %.1fs",
            self.db,
            what,
            exc,
            self.backoff.delay,
        )
