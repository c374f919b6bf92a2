"""One loop per LMDB: hints in, then it decides what runs. Its thread is the only LMDB writer.

Owns: the thread (:meth:`Syncer.run`), the order of work in a step (names from the
hints, a listing when one is due, merges, the upload, a sweeper txn), the deadlines it
wakes for (forced snapshots, sweeps), retries of a failed step, and the LMDB gauges.
It builds the parts and wires them together:

    triggers -> HintQueue -> Syncer (this loop) -> Sender   -> storage -> announcements
                                                -> Receiver <- storage / sources

May call: everything in this package. Must not: be called from another thread, except
:meth:`Syncer.stop`, :meth:`Syncer.on_listing`, and the read-only :meth:`Syncer.status`
and :meth:`Syncer.metrics_state`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import lmdb

from evsync.config import Config, LmdbConfig
from evsync.errors import LmdbError
from evsync.health import HealthTracker
from evsync.lmdb.env import LmdbEnv
from evsync.lmdb.shadow import Shadow
from evsync.metrics import Metrics
from evsync.rejoin import RejoinGuard
from evsync.snapshot.name import SnapshotName
from evsync.storage.base import BlobStore
from evsync.sweeper import Sweeper
from evsync.sync.backoff import RETRY_BACKOFF_START, Backoff
from evsync.sync.gate import RejoinGate
from evsync.sync.lswriter import LsWriter
from evsync.sync.receiver import Receiver
from evsync.sync.recorder import Recorder, SyncStats
from evsync.sync.sender import SOURCE_SELF, CommittedCallback, Sender, StoredCallback
from evsync.sync.sources import CarriedSource, ObjectSource, StorageSource
from evsync.sync.startup import Startup
from evsync.sync.state import NS, InstanceState, Peers, TxnLedger
from evsync.triggers.base import Batch, Hint, HintQueue

log = logging.getLogger(__name__)

# The loop wakes at least this often even when nothing is queued (deadlines, stop).
MAX_IDLE_SECONDS = 1.0
# LMDB gauges (map, entries per DBI ...) are refreshed by the loop thread this often.
LMDB_STATS_INTERVAL = 5.0


class Syncer:
    """Keeps one LMDB and the bucket in sync; call :meth:`run` in its own thread."""

    def __init__(
        self,
        config: Config,
        lmdb_cfg: LmdbConfig,
        store: BlobStore,
        queue: HintQueue,
        *,
        lenv: LmdbEnv | None = None,
        receive_only: bool = False,
        stop_event: threading.Event | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        metrics: Metrics | None = None,
        force_rejoin: bool = False,
        source: ObjectSource | None = None,
    ) -> None:
        self.config = config
        self.cfg = lmdb_cfg
        self.db = lmdb_cfg.name
        self.instance = config.instance
        self.store = store
        self.queue = queue
        self.lenv = lenv or LmdbEnv(lmdb_cfg)
        self.shadow = (
            None
            if lmdb_cfg.schema_tracks_changes
            else Shadow(self.lenv, dupsort_hack=lmdb_cfg.dupsort_hack)
        )
        self.receive_only = receive_only
        self.stop_event = stop_event or threading.Event()
        self.clock_ns = clock_ns
        self.metrics = metrics or Metrics()
        self.recorder = Recorder(self.db, config, self.metrics)
        self.peers = Peers(config.instance)
        # merge txns matter only to deltas, which receive-only and shadow mode never write
        self.ledger = TxnLedger(
            track_merges=not receive_only and self.shadow is None and config.deltas.enabled
        )
        self.guard = RejoinGuard(
            self.lenv, config.sweeper, override=force_rejoin, clock_ns=clock_ns
        )
        self.receiver = Receiver(
            config,
            lmdb_cfg,
            self.lenv,
            self.shadow,
            store,
            source or CarriedSource(queue.carried, StorageSource(store)),
            self.peers,
            self.ledger,
            self.recorder,
            queue,
            self.stop_event,
            clock_ns,
        )
        self.receiver.carried = queue.carried
        queue.carried.on_unused = self.recorder.carried_unused
        self.sender = Sender(
            config,
            self.lenv,
            self.shadow,
            store,
            self.peers,
            self.ledger,
            self.recorder,
            queue,
            self.stop_event,
            clock_ns,
        )
        self.ls_only = config.lightningstream.only
        self.ls_writer = (
            LsWriter(
                config,
                self.lenv,
                self.shadow,
                store,
                self.peers,
                self.sender,
                self.recorder,
                self.metrics,
                queue,
            )
            if config.lightningstream.writes and not receive_only
            else None
        )
        #: called with the txn ids of commits this loop made itself and decides an upload
        #: after in the same step (merges, the in-sync mark; not the sweeper's, which
        #: come after the decision), right after each: the LMDB watcher's observer takes
        #: them as seen, so they do not wake the loop for a step with nothing to do
        self.on_own_commits: list[Callable[[list[int]], None]] = []
        #: entered around the part of each step that merges and records the in-sync
        #: mark (the LMDB watcher's observer: it holds what it notices until those own
        #: commits are reported); not around the upload, whose retries wait for the
        #: application's commits (shadow mode stamps them, ``Sender._sleep``)
        self.merge_windows: list[Callable[[], AbstractContextManager[None]]] = []
        self.receiver.on_merged.append(lambda _name, txn_ids: self._own_commits(txn_ids))
        if self.ls_writer is not None:
            self.receiver.on_merged.append(self.ls_writer.merged)
            if self.ls_only:
                # an LS imitation has no chain: its .pb.gz is what carries merged data.
                # Beside a chain the copy proves nothing to evsync peers (they follow
                # the chain, whose deltas leave merged entries out).
                self.ls_writer.on_committed = self.sender.on_committed
        self.gate = RejoinGate(
            self.db, self.guard, self.peers, self.recorder, lambda: self.receiver.listed_ok_ns
        )
        self.startup_rules = Startup(
            config,
            self.lenv,
            self.shadow,
            self.gate,
            self.receiver,
            self.peers,
            self.stop_event,
        )
        self.sweeper = (
            Sweeper(
                self.lenv, config.sweeper, shadow_mode=self.shadow is not None, clock_ns=clock_ns
            )
            if config.sweeper.enabled  # receive-only too, as LS: tombstones age there alike
            else None
        )
        self._next_sweep = time.monotonic() + config.sweeper.first_interval
        self._sweep_resume_at = 0.0
        # the lister thread's latest (LIST start, own object timestamps), for the loop
        self._own_listed: tuple[float, tuple[SnapshotName, ...]] | None = None
        # ... and the newest copy of each instance that has nothing but copies listed
        self._copy_only: tuple[SnapshotName, ...] = ()
        # ... and the instances that store .pb.gz copies (their data reaches LS itself)
        self._copy_writers: frozenset[str] = frozenset()
        self.lmdb_stats: dict[str, Any] = {}
        self._lmdb_stats_at = 0.0

    # ------------------------------------------------------------------ the parts' faces

    @property
    def stats(self) -> SyncStats:
        """Counters of this db (the recorder's)."""
        return self.recorder.stats

    @property
    def health(self) -> HealthTracker:
        """Storage health of this db (the recorder's)."""
        return self.recorder.health

    @property
    def instances(self) -> dict[str, InstanceState]:
        """What is known of each instance (the peers')."""
        return self.peers.instances

    @property
    def bad_objects(self) -> set[str]:
        """Names rejected as corrupt (the peers')."""
        return self.peers.bad_objects

    @property
    def waiting_for(self) -> set[str]:
        """Instances whose newest object startup still waits for (the peers')."""
        return self.peers.waiting_for

    @property
    def on_stored(self) -> list[StoredCallback]:
        """Called as (db, object name, size) after every store (the sender's)."""
        return self.sender.on_stored

    @property
    def on_committed(self) -> list[CommittedCallback]:
        """Called with the other instances' merged timestamps after a full object is
        stored (the sender's; the ``.pb.gz`` writer's, which shares the list)."""
        return self.sender.on_committed

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        """Startup, then serve hints until stopped."""
        self.refresh_lmdb_stats()
        step_backoff = Backoff(RETRY_BACKOFF_START, self.config.storage_retry_interval)
        while not self.stop_event.is_set():
            try:
                self.startup(retry_forever=True)
                break
            except Exception as exc:  # noqa: BLE001 - a full disk, say: report, start over
                self._failed("startup", exc, step_backoff)
        while not self.stop_event.is_set():
            # Read before draining: the lister queued a listing's hints before it
            # reported it, so they are all in the batch drained below.
            self.gate.promote()
            batch = self.queue.wait(self._idle_timeout())
            if batch.stop or self.stop_event.is_set():
                break
            try:
                self.step(batch)
                step_backoff.succeeded()
            except Exception as exc:  # noqa: BLE001 - the daemon keeps serving whatever hit
                self._failed("sync step", exc, step_backoff)
                self.queue.put(Hint(SOURCE_SELF, local=True))

    def _failed(self, what: str, exc: Exception, backoff: Backoff) -> None:
        """One error line, then wait the backoff."""
        backoff.failed()
        self.recorder.step_failed(what, exc, backoff.delay)
        self.stop_event.wait(backoff.delay)

    def run_once(self) -> bool:
        """``sync --only-once``: merge every instance's newest object, upload if needed.

        Returns True when everything completed; False (with a logged reason) otherwise.
        """
        if not self.startup(retry_forever=False):
            return False
        ok = self.receiver.merge_pending(include_own=True, retry=True)
        ok = self._maybe_upload(only_once=True) and ok
        if self.ls_writer is not None:
            ok = self.ls_writer.flush() and ok
        if ok and not self.waiting_for:
            self._mark_in_sync()
        if self.waiting_for:
            log.error(
                "db %s: could not merge the newest object of: %s",
                self.db,
                ", ".join(sorted(self.waiting_for)),
            )
            ok = False
        return ok

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current step."""
        self.stop_event.set()
        self.queue.stop()

    def close(self) -> None:
        """Wait for a ``.pb.gz`` store in flight, then close the LMDB."""
        if self.ls_writer is not None:
            self.ls_writer.close()
        self.sender.close()
        self.lenv.close()

    def startup(self, *, retry_forever: bool) -> bool:
        """Initial listing, then merge every instance's newest object, own first; then the
        first upload. ``retry_forever=False`` (``--only-once``) stops after the checks."""
        if not self.startup_rules.begin(retry_forever=retry_forever):
            return False
        if retry_forever:
            self.receiver.merge_pending(include_own=True, retry=False)
            self._maybe_upload()
            self._maybe_write_ls()
        self.stats.startup_done = not self.waiting_for
        return True

    # ------------------------------------------------------------------ one step

    def step(self, batch: Batch) -> None:
        """Handle one drained batch of hints, then whatever deadlines are due."""
        self.refresh_lmdb_stats()
        if self.gate.blocks():
            return
        with contextlib.ExitStack() as windows:
            for window in self.merge_windows:
                windows.enter_context(window())
            self._receive(batch)
        self._maybe_upload()
        self._maybe_write_ls()
        self._maybe_sweep()

    def _receive(self, batch: Batch) -> None:
        """The step's receiving part: the batch's names noted, what they bring merged, the
        in-sync mark recorded."""
        if batch.relist:
            self.receiver.relist_later()
        for name in batch.carried:
            self.receiver.note_carried(name)
        for name in batch.superseded:  # links of a chain that a newer name hid
            self.receiver.note_name(name.instance, name)
        for instance, name in batch.remote.items():
            self.receiver.note_name(instance, name)
        copies, self._copy_only = self._copy_only, ()
        for name in copies:
            self.receiver.note_name(name.instance, name)
        writers, self._copy_writers = self._copy_writers, frozenset()
        for instance in writers:
            if instance != self.instance:
                self.peers.get(instance).writes_copies = True
        if self.receiver.relist_due() and self.receiver.list_backoff.ready():
            self.receiver.list_bucket(startup=False)
        self.startup_rules.resume_if_unblocked()
        self._check_own_objects()
        self.receiver.merge_pending(include_own=bool(self.waiting_for), retry=False)
        self._note_confirmations(batch.confirmed)
        if not self.waiting_for:
            self.stats.startup_done = True
            self._mark_in_sync()

    def _note_confirmations(self, names: list[str]) -> None:
        """Names that only confirm carried merges: noted after the merges, so the change
        that woke the loop is not kept waiting for them (any confirmation may come that
        late, DESIGN §7). One that turns out to be news after all (a fallback dropped its
        merge meanwhile) is merged at once, as a name noted before the merges would be."""
        if not names:
            return
        for raw in names:
            name = SnapshotName.parse(raw)
            self.receiver.note_name(name.instance, name)
        if self.peers.pending(include_own=False):
            self.receiver.merge_pending(include_own=bool(self.waiting_for), retry=False)

    def _maybe_upload(self, *, only_once: bool = False) -> bool:
        """The sender's turn, unless this instance only receives (or, imitating LS, writes
        only ``.pb.gz``); False when it failed."""
        if self.receive_only or self.ls_only:
            return True
        return self.sender.maybe_upload(only_once=only_once)

    def _maybe_write_ls(self) -> None:
        """The ``.pb.gz`` writer's turn, after the ``.evs.zst`` upload: it never delays it."""
        if self.ls_writer is not None:
            self.ls_writer.maybe_write()

    def _idle_timeout(self) -> float:
        if self.guard.blocked:
            # nothing runs while the guard refuses, so no deadline is due: a passed one
            # would wake the loop at once, again and again
            return MAX_IDLE_SECONDS
        now = time.monotonic()
        deadlines = [MAX_IDLE_SECONDS]
        if self.receiver.relist_at is not None:
            # not before the listing's backoff ends: a failing bucket must not spin the loop
            at = max(self.receiver.relist_at, self.receiver.list_backoff.not_before)
            deadlines.append(at - now)
        forced_in = self.sender.forced_due_in(now)
        if forced_in is not None and not (self.receive_only or self.ls_only):
            deadlines.append(forced_in)
        ls_in = self.ls_writer.due_in(now) if self.ls_writer is not None else None
        if ls_in is not None:
            deadlines.append(ls_in)
        if self.sweeper is not None:
            due = self._sweep_resume_at if self.sweeper.in_progress else self._next_sweep
            deadlines.append(due - now)
        return max(0.0, min(deadlines))

    # ------------------------------------------------------------------ rejoin guard

    def on_listing(
        self, ok: bool, names: list[SnapshotName] | None = None, started: float = 0.0
    ) -> None:
        """Callback for the lister trigger, which lists from its own thread: the readable
        ``names`` of the LIST begun at ``started`` (monotonic)."""
        if ok:
            self.gate.lister_listed(self.clock_ns())
            if names is not None:
                own = tuple(n for n in names if n.instance == self.instance)
                self._own_listed = (started, own)  # one assignment: the loop takes it whole
                if not self.ls_only:  # hints never carry copies (sync/interop.py)
                    self._copy_only = copy_only_newest(names, self.instance)
                self._copy_writers = frozenset(n.instance for n in names if n.is_copy)
        self.recorder.lister_result(ok)

    def _check_own_objects(self) -> None:
        """The lister's newest listing against what the sender stored (wiped buckets),
        and for objects of our name that another process stored."""
        listed, self._own_listed = self._own_listed, None
        if listed is None:
            return
        started, own = listed
        self.receiver.check_own_names(own)
        if not (self.receive_only or self.ls_only):
            self.sender.check_listed(started, frozenset(n.timestamp_ns for n in own))

    def _mark_in_sync(self) -> None:
        """Every instance's newest object is merged: record it for the rejoin guard."""
        txn_id = self.gate.mark_in_sync()
        if txn_id is not None:
            self._own_txn(txn_id)
            self._own_commits([txn_id])  # the step's upload decision comes after it

    def _own_commits(self, txn_ids: list[int]) -> None:
        for callback in self.on_own_commits:
            callback(txn_ids)

    def _own_txn(self, txn_id: int) -> None:
        """A txn of evsync's that changed no application data needs no upload."""
        self.ledger.advance([txn_id])
        if self.ls_writer is not None:
            self.ls_writer.own_txn(txn_id)
        if self.shadow is not None:
            self.shadow.note_own_txn(txn_id)

    # ------------------------------------------------------------------ sweeping

    def _maybe_sweep(self) -> None:
        """One sweeper txn when a pass is due or under way; the lock is released in between."""
        sweeper = self.sweeper
        if sweeper is None or self.guard.blocked:
            return
        now = time.monotonic()
        if not sweeper.in_progress:
            if now < self._next_sweep:
                return
            sweeper.begin()
        elif now < self._sweep_resume_at:
            return
        step = sweeper.step()
        self.recorder.sweep_step(step)
        if step.txn_id is not None:
            self._own_txn(step.txn_id)
        if not step.done:
            self._sweep_resume_at = time.monotonic() + self.config.sweeper.release_duration
            return
        self._next_sweep = time.monotonic() + self.config.sweeper.interval
        self.recorder.sweep_done(sweeper.stats)

    # ------------------------------------------------------------------ reporting

    def refresh_lmdb_stats(self, *, force: bool = False) -> None:
        """Publish LMDB figures for /metrics; only this thread opens DBI handles."""
        now = time.monotonic()
        if not force and now - self._lmdb_stats_at < LMDB_STATS_INTERVAL:
            return
        self._lmdb_stats_at = now
        try:
            info = self.lenv.info()
            entries: dict[str, int] = {}
            with self.lenv.read_synced_dbis(include_sync=True) as (txn, handles):
                for name, handle in handles:
                    entries[name.decode(errors="replace")] = int(txn.stat(handle)["entries"])
            psize = int(self.lenv.env.stat()["psize"])
        except (LmdbError, lmdb.Error) as exc:
            self.recorder.log_limited(
                "lmdb-stats", logging.WARNING, "db %s: cannot read LMDB stats: %s", self.db, exc
            )
            return
        self.lmdb_stats = {
            "map_size": int(info["map_size"]),
            "used_bytes": (int(info["last_pgno"]) + 1) * psize,
            "last_txn_id": int(info["last_txnid"]),
            "readers": int(info["num_readers"]),
            "max_readers": int(info["max_readers"]),
            "entries": entries,
        }

    def metrics_state(self) -> dict[str, Any]:
        """What the scrape-time collector exports; cheap, and safe from another thread."""
        return {
            "lmdb": self.lmdb_stats,
            "last_synced_txn_id": self.ledger.last_synced,
            "last_store_at": self.stats.last_store_at,
            "newest_seen_ts": _seconds(self.peers.others_ns("newest_seen")),
            "merged_ts": _seconds(self.peers.others_ns("merged")),
            "startup_done": self.stats.startup_done,
            "rejoin_blocked": self.guard.blocked,
            "hints_received": dict(self.queue.received),
            "hints_first": dict(self.queue.first),
            "hints_dropped": dict(self.queue.ignored_by_reason),
        }

    def status(self) -> dict[str, object]:
        """Plain data describing this db's sync state."""
        return {
            "db": self.db,
            "instance": self.instance,
            "last_txn_id": self.lenv.last_txn_id(),
            "last_synced_txn_id": self.ledger.last_synced,
            "last_upload": self.stats.last_store_name,
            "startup_done": self.stats.startup_done,
            "rejoin_blocked": self.guard.blocked_reason,
            "waiting_for": sorted(self.waiting_for),
            "instances": self.peers.status(self.clock_ns()),
            "hints": {
                "received": dict(self.queue.received),
                "first": dict(self.queue.first),
                "dropped": dict(self.queue.ignored_by_reason),
            },
            "health": self.health.snapshot(),
            "stats": {k: v for k, v in vars(self.stats).items() if k != "rejected"},
            "rejected_objects": list(self.stats.rejected),  # the recorder keeps the last 20
        }


def copy_only_newest(names: list[SnapshotName], own: str) -> tuple[SnapshotName, ...]:
    """The newest ``.pb.gz`` copy of every other instance that has only copies in this
    listing (its ``.evs.zst`` chain is gone): no hint carries a copy, so the listing
    must hand these to the receiver itself."""
    chained = {n.instance for n in names if not n.is_ls}
    newest: dict[str, SnapshotName] = {}
    for name in names:
        if name.is_copy and name.instance != own and name.instance not in chained:
            current = newest.get(name.instance)
            if current is None or name.name > current.name:
                newest[name.instance] = name
    return tuple(newest.values())


def _seconds(stamps: dict[str, int]) -> dict[str, float]:
    return {inst: ns / NS for inst, ns in stamps.items()}
