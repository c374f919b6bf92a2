"""Local changes into the bucket: decide an upload, dump, store with retries, announce.

Owns: the upload decision (never before the own history is merged; then when the LMDB
changed since the last synced txn, or when a forced snapshot is due), the delta chain
(:class:`~evsync.sync.chain.SenderChain`: a delta or a full object), when a checkpoint
begins and what its outcome moves on (:mod:`evsync.sync.checkpoint` runs it), object names
(timestamps never repeat or go back within a run), the store with its retries and
backoff, and the callbacks after a store (MQTT announcements, the cleaner's
"committed" mark). When a commit raced an upload it queues a hint for itself, so the
loop runs it again.

Rules (DESIGN §5): an empty LMDB never uploads; merged remote data is not uploaded
again when nothing changed locally; a store that fails is retried with backoff and the
change stays pending, so a storage outage makes the daemon unhealthy, never makes it
exit or lose a change. In shadow mode an upload first runs a main -> shadow pass and
dumps the shadow DBIs (always a full object).

May call: the LMDB dumps (read txns; the shadow pass is the one write), the object
format's writer, the bucket's ``store``, :class:`~evsync.sync.state.Peers` (to record
its own uploads), the txn ledger and the recorder. Must not: merge, or list the bucket.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO

import tenacity

from evsync import faults
from evsync.config import Config
from evsync.errors import LmdbError, StorageError, StorageUnavailableError
from evsync.lmdb.dump import DumpResult, dump_native, dump_native_delta, dump_shadow
from evsync.lmdb.env import LmdbEnv
from evsync.lmdb.pagewalk import ChangeFinder
from evsync.lmdb.shadow import Shadow
from evsync.snapshot.base import KIND_DELTA, KIND_FULL, SnapshotFormat
from evsync.snapshot.evs import EVS_ZST
from evsync.snapshot.name import SnapshotName, checkpoint_extra, delta_extra, format_timestamp
from evsync.storage.base import BlobStore
from evsync.sync import chain
from evsync.sync.backoff import RETRY_BACKOFF_START, Backoff, StopOnEvent
from evsync.sync.checkpoint import STAGE_DUMP, Begun, Checkpointer, Failed, Stored
from evsync.sync.recorder import Recorder
from evsync.sync.state import NS, Peers, TxnLedger
from evsync.triggers.base import Hint, HintQueue

log = logging.getLogger(__name__)

# Objects up to this size are built in memory; larger dumps spill to a temp file.
DUMP_SPOOL_BYTES = 8 << 20
# A read txn begun right after a commit can still see the previous one for a moment:
# dump again, this many times at most, this long apart.
DUMP_CATCH_UP_ATTEMPTS = 5
DUMP_CATCH_UP_SECONDS = 0.001
# The hint source of the sender's own "look again": a commit raced an upload.
SOURCE_SELF = "self"
# While a store is retried, local-change hints are looked for in slices this long, so a
# shutdown ends the wait promptly.
RETRY_WAKE_SECONDS = 0.1
# Below this many entries in the newest full object, a full object is dumped on the
# syncer thread as before: it takes a few milliseconds, less than starting the
# checkpoint's child interpreter (~0.5 s of CPU).
CHECKPOINT_MIN_ENTRIES = 1000
# After a checkpoint is stored, the next one begins no sooner than this many times its
# duration later: at a high write rate the child would otherwise dump without pause,
# taking a core from the deltas; the chain grows meanwhile, which costs only new
# receivers a few more deltas.
CHECKPOINT_REST_FACTOR = 1.0
# A checkpoint still unfinished after this long counts as failed and is stopped (its
# child runs only on otherwise idle CPU, so a host that is never idle would starve it);
# the chain then falls back to its bounds (chain.CHECKPOINT_OVERDUE_FACTOR).
CHECKPOINT_TIMEOUT_SECONDS = 1800.0

#: called as (db, object name, size) after every successful store
StoredCallback = Callable[[str, str, int], None]
#: called as (db, object name, bytes) for a delta small enough to travel inline, after
#: it is encoded and before it is stored (DESIGN §7)
EncodedCallback = Callable[[str, str, bytes], None]
#: called with {instance: newest merged object's timestamp} of the other instances after
#: a full object is stored: their data is now proven to be in our own object
CommittedCallback = Callable[[Mapping[str, int]], None]


class Sender:
    """Turns the LMDB's local changes into stored, announced objects."""

    def __init__(  # noqa: PLR0917 - the parts it works with, named once
        self,
        config: Config,
        lenv: LmdbEnv,
        shadow: Shadow | None,
        store: BlobStore,
        peers: Peers,
        ledger: TxnLedger,
        recorder: Recorder,
        queue: HintQueue,
        stop_event: threading.Event,
        clock_ns: Callable[[], int],
        fmt: SnapshotFormat = EVS_ZST,
    ) -> None:
        self.config = config
        self.db = lenv.name
        self.lenv = lenv
        self.shadow = shadow
        self.store = store
        self.peers = peers
        self.ledger = ledger
        self.recorder = recorder
        self.queue = queue
        self.stop_event = stop_event
        self.clock_ns = clock_ns
        self.format = fmt
        self.chain = chain.SenderChain(config.deltas)
        #: finds a delta's changes from the snapshot of the last stored object (native
        #: mode only: shadow mode stores full objects)
        self.finder = ChangeFinder(lenv, observer=recorder) if shadow is None else None
        retry = config.storage_retry_interval
        self.backoff = Backoff(retry, retry)
        self.last_store_mono = time.monotonic()
        #: when the last checkpoint's store completed (monotonic): a listing begun before
        #: it may lack the chain's first member
        self.last_checkpoint_store_mono = 0.0
        #: timestamp of the newest object this run stored (0: none yet)
        self.last_stored_ts = 0
        #: the next upload is a full object even without a local change (own objects
        #: went missing from the bucket)
        self.full_requested = False
        self._last_name_ts = 0
        #: shadow mode: local changes were stamped after the object being stored was
        #: dumped, so the shadow stays dirty once it is stored
        self._stamped_after_dump = False
        self.on_stored: list[StoredCallback] = []
        self.on_encoded: list[EncodedCallback] = []
        #: deltas up to this size go to ``on_encoded`` before their store (0: none)
        self.inline_max_bytes = 0
        self.on_committed: list[CommittedCallback] = []
        #: writes the chain's full objects in a child process (native mode with deltas;
        #: shadow mode stores full objects on the syncer thread, as before)
        self.checkpointer = (
            Checkpointer(lenv.cfg, store, queue)
            if shadow is None and config.deltas.enabled and fmt is EVS_ZST
            else None
        )
        self.checkpoint_min_entries = CHECKPOINT_MIN_ENTRIES
        self.checkpoint_backoff = Backoff(min(RETRY_BACKOFF_START, retry), retry)
        self._checkpoint_not_before = 0.0  # on the chain's clock (CHECKPOINT_REST_FACTOR)

    # ------------------------------------------------------------------ deciding

    def forced_due_in(self, now: float) -> float | None:
        """Seconds until a forced snapshot is due, or None when none is configured."""
        force = self.config.storage_force_snapshot_interval
        return self.last_store_mono + force - now if force else None

    def maybe_upload(self, *, only_once: bool = False) -> bool:
        """Upload when the LMDB changed (or a forced snapshot is due); False on failure.
        Then the checkpoint's turn (not with ``only_once``).

        ``only_once``: the store is tried at once (not after the backoff) and its
        failure is the run's. Nothing is uploaded while this instance's own newest
        object is not merged (startup, DESIGN §5): a wiped instance would overwrite
        its own history.
        """
        ok = self._maybe_upload(only_once=only_once)
        if not only_once:
            self._checkpoint_turn()
        return ok

    def _maybe_upload(self, *, only_once: bool) -> bool:
        if self.peers.own in self.peers.waiting_for:
            self.recorder.log_limited(
                "wait-own",
                logging.INFO,
                "db %s: waiting to load own old snapshot before writing a new one",
                self.db,
            )
            return not only_once
        txn_id = self.lenv.last_txn_id()
        if self.finder is not None:
            self.finder.expire(txn_id)  # a pin behind the LMDB is released past its age
        force_every = self.config.storage_force_snapshot_interval
        forced = self.full_requested or (
            bool(force_every) and time.monotonic() - self.last_store_mono >= force_every
        )
        if txn_id <= self.ledger.last_synced and not forced:
            if self.finder is not None:
                self.finder.follow(txn_id)  # merges only: LMDB may reuse their pages
            return True
        if not only_once and not self.backoff.ready():
            self.stamp_local_changes()  # stamped now, not at 1 ns by a restart's seed
            return False
        return self._upload(forced=forced and txn_id <= self.ledger.last_synced, want_txn=txn_id)

    def _upload(self, *, forced: bool, want_txn: int) -> bool:
        """Dump into a spool and store it: True when stored or nothing needed storing."""
        t0 = time.monotonic()
        self._stamped_after_dump = False
        with tempfile.SpooledTemporaryFile(max_size=DUMP_SPOOL_BYTES) as spool:
            try:
                if self.shadow is not None and not self._shadow_has_news(forced):
                    return True
                name, dumped = self._dump_object(spool, want_txn, forced=forced)
            except LmdbError as exc:
                self._finder_discard()
                self.recorder.dump_failed(exc)
                self.backoff.failed()
                return False
            header = dumped.header
            self.recorder.dumped(empty=header.kind == KIND_FULL and header.total_entries == 0)
            if header.total_entries == 0:  # an empty LMDB never uploads
                if header.kind == KIND_DELTA:  # the commits were evsync's own merges
                    self.ledger.synced_up_to(header.txn_id)
                    if self.finder is not None:
                        # nothing in it passes the filter: as good a base as a stored one
                        self.finder.stored()
                else:
                    self._finder_discard()
                return True
            size = spool.tell()
            t_dump = time.monotonic() - t0
            if header.kind == KIND_DELTA and size <= self.inline_max_bytes:
                self._send_inline(name, spool)
            try:
                self._store_with_retry(name.name, spool)
            except StorageError as exc:
                self._finder_discard()  # the old pin stays the base, up to its age limit
                self.recorder.store_failed(name, exc)
                self.backoff.failed()
                return False
        self._stored(name, dumped, size, t_dump, t0, forced)
        return True

    def _send_inline(self, name: SnapshotName, spool: IO[bytes]) -> None:
        """Hand a small delta's bytes to ``on_encoded`` (MQTT) before it is stored, so
        receivers can merge it meanwhile. Safe if the store then fails or this process
        dies: DESIGN §7 says why."""
        if not self.on_encoded:
            return
        spool.seek(0)
        data = spool.read()
        for callback in self.on_encoded:
            try:
                callback(self.db, name.name, data)
            except Exception as exc:  # noqa: BLE001 - an announcement must never break the sync
                self.recorder.announce_failed(name, exc)
        faults.point("published")

    def _finder_discard(self) -> None:
        if self.finder is not None:
            self.finder.discard()

    def close(self) -> None:
        """Stop a checkpoint in flight; release the change finder's snapshots (before the
        LMDB closes)."""
        if self.checkpointer is not None:
            self.checkpointer.close()
        if self.finder is not None:
            self.finder.close()

    def _stored(  # noqa: PLR0917 - one event, told in full
        self,
        name: SnapshotName,
        dumped: DumpResult,
        size: int,
        t_dump: float,
        t0: float,
        forced: bool,
    ) -> None:
        """Everything a successful store moves on: backoff, txns, chain, peers, callbacks."""
        header = dumped.header
        self.backoff.succeeded()
        if self.finder is not None:
            self.finder.stored()  # this object's snapshot is the next delta's base
        self.full_requested = self.full_requested and header.kind != KIND_FULL
        self.last_stored_ts = header.timestamp_ns
        if self.shadow is not None and not self._stamped_after_dump:
            self.shadow.dirty = False
        self.ledger.synced_up_to(header.txn_id)
        self.last_store_mono = time.monotonic()
        if header.kind == KIND_DELTA:
            self.chain.stored_delta(header.timestamp_ns, header.txn_id, size)
        elif self.shadow is None:
            self.chain.stored_full(header.timestamp_ns, header.txn_id, size, header.total_entries)
            if self.checkpointer is not None:
                self.checkpointer.cancel()  # begun on the chain this full object ends
        self.ledger.shipped(self.chain.shipped_txn)
        self.peers.stored_own(name)
        total = time.monotonic() - t0
        self.recorder.stored(name, header, dumped.stats.entries, size, t_dump, total, forced)
        if header.kind == KIND_FULL:
            self._notify_committed()  # a delta does not carry what was merged
        if self.lenv.last_txn_id() > self.ledger.last_synced:
            self.queue.put(Hint(SOURCE_SELF, local=True))  # committed during the upload
        for callback in self.on_stored:
            try:
                callback(self.db, name.name, size)
            except Exception as exc:  # noqa: BLE001 - an announcement must never break the sync
                self.recorder.announce_failed(name, exc)

    def check_listed(self, started: float, own_timestamps: frozenset[int]) -> None:
        """A listing that began at ``started`` (monotonic) found these objects of ours. If
        one that receivers need is missing (a wiped or recreated bucket, an object removed
        by hand), the next upload is a full object, whether or not anything changed."""
        if (
            started <= max(self.last_store_mono, self.last_checkpoint_store_mono)
            or not self.last_stored_ts
        ):
            return  # the listing may predate our newest store; or we stored nothing yet
        needed = set(self.chain.members) | {self.last_stored_ts}
        missing = needed - own_timestamps
        if not missing:
            self.recorder.end_streak("own-missing")
            return
        self.recorder.log_limited(
            "own-missing",
            logging.WARNING,
            "db %s: %d of this instance's objects are gone from the bucket (the newest "
            "stamped %s); uploading a full object",
            self.db,
            len(missing),
            format_timestamp(max(missing)),
        )
        self.chain.broken()
        self.full_requested = True

    def _notify_committed(self, merged: Mapping[str, int] | None = None) -> None:
        """Our object now carries every merged object's data (as of ``merged``, the
        positions when it was dumped; default: now): tell the cleaner."""
        if merged is None:
            merged = self.peers.others_ns("merged")
        for callback in self.on_committed:
            callback(merged)

    # ------------------------------------------------------------------ checkpoints

    def _checkpoints_on(self) -> bool:
        """True when the chain's full objects are checkpoints (a big enough LMDB)."""
        return (
            self.checkpointer is not None and self.chain.full_entries >= self.checkpoint_min_entries
        )

    def _delta_ok(self) -> bool:
        """The chain takes a delta: within its bounds; beyond them while checkpoints catch
        it up (each stored one restarts the count), or, while they fail, up to a few times
        the bounds (DESIGN §7)."""
        if self.chain.delta_allowed():
            return True
        if not self._checkpoints_on():
            return False
        if not self.checkpoint_backoff.delay:
            return True  # checkpoints get stored: each one restarts the count
        return self.chain.delta_allowed_beside_checkpoint()

    def _checkpoint_turn(self) -> None:
        """Collect a checkpoint that ended; begin one when the chain is due for a full
        object, none is in flight and the last attempt's backoff has passed."""
        cp = self.checkpointer
        if cp is None:
            return
        outcome = cp.poll(self.ledger.last_synced)
        if isinstance(outcome, Stored):
            self._checkpoint_stored(outcome)
        elif isinstance(outcome, Failed):
            self._checkpoint_failed(outcome)
        begun = cp.begun
        if begun is not None and begun.epoch != self.chain.epoch:
            cp.cancel()  # the chain restarted (a full object, or own objects went missing)
        elif begun is not None and self.chain.clock() - begun.began_at > CHECKPOINT_TIMEOUT_SECONDS:
            cp.cancel("unfinished for too long")
            self._checkpoint_failed(
                Failed(begun, STAGE_DUMP, f"unfinished after {CHECKPOINT_TIMEOUT_SECONDS:.0f}s")
            )
        point = self.chain.base_ns
        if (
            cp.running
            or point is None
            or not self._checkpoints_on()
            or not self.chain.checkpoint_due()
            or not self.checkpoint_backoff.ready()
            or self.chain.clock() < self._checkpoint_not_before
            or self.backoff.delay  # stores fail: the checkpoint's would too
        ):
            return
        ts = self._next_timestamp()  # right after the chain's tip: nothing sorts between
        name = SnapshotName.build(
            self.db,
            self.peers.own,
            ts,
            extras=(checkpoint_extra(point),),
            ext=self.format.extension,
        )
        cp.start(
            Begun(name, point, self.chain.epoch, self.chain.clock(), self.peers.others_ns("merged"))
        )
        log.debug("db %s: checkpoint %s begun", self.db, name)

    def _checkpoint_stored(self, outcome: Stored) -> None:
        begun = outcome.begun
        self.checkpoint_backoff.succeeded()
        now = self.chain.clock()
        self._checkpoint_not_before = now + (now - begun.began_at) * CHECKPOINT_REST_FACTOR
        if begun.epoch != self.chain.epoch:
            return  # older than the full object that restarted the chain: harmless, unused
        header = outcome.dumped.header
        # the checkpoint is the chain's first member from now on: a listing begun before
        # its store completed may lack it
        self.last_checkpoint_store_mono = max(self.last_checkpoint_store_mono, outcome.stored_at)
        self.chain.stored_checkpoint(
            begun.name.timestamp_ns, outcome.size, header.total_entries, begun.began_at
        )
        self.peers.own_named(begun.name)
        self.recorder.checkpoint_stored(begun.name, header, outcome.size, outcome.dump_seconds)
        self._notify_committed(begun.merged)  # what was merged when it began, not later
        for callback in self.on_stored:
            try:
                callback(self.db, begun.name.name, outcome.size)
            except Exception as exc:  # noqa: BLE001 - an announcement must never break the sync
                self.recorder.announce_failed(begun.name, exc)

    def _checkpoint_failed(self, outcome: Failed) -> None:
        self.checkpoint_backoff.failed()
        self.recorder.checkpoint_failed(
            outcome.begun.name, outcome.stage, outcome.error, self.checkpoint_backoff.delay
        )

    def stamp_local_changes(self) -> None:
        """Shadow mode: run main -> shadow now if the application committed since the last
        pass, so its changes carry the time they were found (DESIGN §6). Used while a store
        is retried or backs off: the shadow is in the LMDB, so a restart meanwhile keeps
        these stamps instead of seeding the changes at 1 ns, where any remote value,
        however old, would beat them."""
        shadow = self.shadow
        if shadow is None or self.lenv.last_txn_id() <= shadow.synced_txn:
            return
        t0 = time.monotonic()
        try:
            update = shadow.update_from_main(self.clock_ns())
        except LmdbError as exc:
            self.recorder.dump_failed(exc)  # the upload's own pass will meet it again
            return
        if not update.skipped:
            self.recorder.write_lock(time.monotonic() - t0)
        if update.changes:
            self._stamped_after_dump = True
            log.info(
                "db %s: stamped %d local change(s) while the store is retried",
                self.db,
                update.changes,
            )

    def _shadow_has_news(self, forced: bool) -> bool:
        """Shadow mode: run main -> shadow; False when there is nothing new to upload."""
        assert self.shadow is not None
        t0 = time.monotonic()
        update = self.shadow.update_from_main(self.clock_ns())
        if not update.skipped:
            self.recorder.write_lock(time.monotonic() - t0)
        if update.changes or self.shadow.dirty or forced:
            return True
        # The commits since the last upload changed no value (or were our own merges).
        self.ledger.synced_up_to(self.shadow.synced_txn)
        return False

    # ------------------------------------------------------------------ dumping

    def _dump_object(
        self, spool: IO[bytes], want_txn: int, *, forced: bool
    ) -> tuple[SnapshotName, DumpResult]:
        """A delta when the chain allows one and it is small enough, else a full object."""
        base = self.chain.base_ns
        if not forced and self.shadow is None and base is not None and self._delta_ok():
            delta = self._dump_caught_up(
                spool,
                want_txn,
                lambda ts: dump_native_delta(
                    self.lenv,
                    spool,
                    db=self.db,
                    instance=self.peers.own,
                    timestamp_ns=ts,
                    base_timestamp_ns=base,
                    # txns up to last_synced hold no local change (merges and
                    # evsync's own): the ledger keeps only merge txns after it
                    since_txn=max(self.chain.shipped_txn, self.ledger.last_synced),
                    skip_txns=self.ledger.merge_txns,
                    max_entries=chain.MAX_DELTA_ENTRIES,
                    fmt=self.format,
                    finder=self.finder,
                ),
            )
            if delta is not None:
                return self._name(delta, extras=(delta_extra(base),)), delta
        dumped = self._dump_full(spool, want_txn)
        return self._name(dumped), dumped

    def _name(self, dumped: DumpResult, extras: tuple[str, ...] = ()) -> SnapshotName:
        ts = dumped.header.timestamp_ns
        return SnapshotName.build(
            self.db, self.peers.own, ts, extras=extras, ext=self.format.extension
        )

    def _dump_full(self, spool: IO[bytes], want_txn: int) -> DumpResult:
        """Write a full object into ``spool``."""
        if self.shadow is not None:
            return dump_shadow(
                self.lenv,
                spool,
                db=self.db,
                instance=self.peers.own,
                timestamp_ns=self._next_timestamp(),
                txn_id=self.shadow.synced_txn,
                fmt=self.format,
            )
        dumped = self._dump_caught_up(
            spool,
            want_txn,
            lambda ts: dump_native(
                self.lenv,
                spool,
                db=self.db,
                instance=self.peers.own,
                timestamp_ns=ts,
                fmt=self.format,
                finder=self.finder,
            ),
        )
        assert dumped is not None  # dump_native always writes an object
        return dumped

    def _dump_caught_up(
        self, spool: IO[bytes], want_txn: int, dump: Callable[[int], DumpResult | None]
    ) -> DumpResult | None:
        """``dump(timestamp)`` into an emptied ``spool`` until it reflects ``want_txn``.

        A read txn begun right after a commit can still see the previous one for a
        moment; dump again rather than store an object that misses it.
        """
        dumped = None
        for _attempt in range(DUMP_CATCH_UP_ATTEMPTS):
            spool.seek(0)
            spool.truncate()
            dumped = dump(self._next_timestamp())
            if dumped is None or dumped.header.txn_id >= want_txn:
                break
            time.sleep(DUMP_CATCH_UP_SECONDS)
        return dumped

    def next_timestamp(self) -> int:
        """A name timestamp after every object of this instance (see below); the
        ``.pb.gz`` writer names its objects from the same clock."""
        return self._next_timestamp()

    def _next_timestamp(self) -> int:
        """The clock, but after every object name of this instance: receivers take the
        newest name as the newest state, and the cleaner deletes what sorts below it.

        A clock behind this instance's newest object (stepped back across a restart, or
        a previous run's clock was ahead) is logged, and names continue from that object.
        """
        now = self.clock_ns()
        floor = max(self._last_name_ts, self.peers.own_newest_ns)
        if now < floor:
            self.recorder.log_limited(
                "own-clock",
                logging.WARNING,
                "db %s: this host's clock is %.3fs behind this instance's newest object in "
                "the bucket; naming new objects after it (check NTP)",
                self.db,
                (floor - now) / NS,
            )
        else:
            self.recorder.end_streak("own-clock")
        ts = max(now, floor + 1)
        self._last_name_ts = ts
        return ts

    # ------------------------------------------------------------------ storing

    def _store_with_retry(self, name: str, spool: IO[bytes]) -> None:
        """Store, retrying while the bucket is unavailable (forever, or the configured
        count); shutdown ends the retries."""
        cfg = self.config
        attempts: tenacity.stop.stop_base = (
            tenacity.stop_never
            if cfg.storage_retry_forever
            else tenacity.stop_after_attempt(cfg.storage_retry_count)
        )

        def attempt() -> None:
            spool.seek(0)
            self.store.store(name, faults.reading(spool, "upload"))
            faults.point("stored")

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.recorder.store_retrying(name, state.attempt_number, exc)
            if self.finder is not None:
                # a long outage must not pin snapshots (and grow the LMDB file) forever
                self.finder.expire(self.lenv.last_txn_id())

        retrying = tenacity.Retrying(
            stop=attempts | StopOnEvent(self.stop_event),
            wait=tenacity.wait_exponential(
                multiplier=RETRY_BACKOFF_START,
                min=RETRY_BACKOFF_START,
                max=cfg.storage_retry_interval,
            ),
            retry=tenacity.retry_if_exception_type(StorageUnavailableError),
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        retrying(attempt)

    def _sleep(self, seconds: float) -> None:
        """Retry sleeps end early on shutdown; in shadow mode each local-change hint
        meanwhile is stamped at once (:meth:`stamp_local_changes`)."""
        if self.shadow is None:
            self.stop_event.wait(seconds)
            return
        deadline = time.monotonic() + seconds
        while not self.stop_event.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self.queue.take_local(min(left, RETRY_WAKE_SECONDS)):
                self.stamp_local_changes()
