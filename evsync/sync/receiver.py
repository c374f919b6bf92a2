"""Remote objects into the LMDB: names -> plan per instance -> fetch -> verify -> merge.

Owns: the listing of the bucket, the plan that takes each instance from its position
to its newest object (:func:`~evsync.sync.chain.plan`), fetch retries per instance,
verification, handing a verified object to the LMDB merge, and bad-object bookkeeping.
An object's header is checked against its name before any of it is applied; then a
format that checks each part before handing it out (``.evs.zst`` version 2) is merged
as it is read, and any other object is verified completely first. A corrupt object is
marked bad and skipped; one read in checked parts may have had its parts before the
bad one applied (true data, which last-writer-wins makes safe: DESIGN §4), and its
instance's position stays where it was. Bytes carried by a notification that fail are
dropped instead, the object not marked bad (DESIGN §7).

May call: the bucket (its listing, and a HEAD before stepping over a checkpoint no
listing showed), an :class:`~evsync.sync.sources.ObjectSource`,
the object's :class:`~evsync.snapshot.base.SnapshotFormat`, the LMDB merge
(:class:`~evsync.lmdb.merge.Merger`, or :class:`~evsync.lmdb.shadow.Shadow` in shadow
mode), :class:`~evsync.sync.state.Peers`, the txn ledger and the recorder.
Must not: upload, or decide when it runs (the loop does); it writes the LMDB only from
the loop's thread.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO

import lmdb

from evsync.bounded import BoundedNames
from evsync.config import Config, LmdbConfig
from evsync.errors import (
    CorruptObjectError,
    EvsyncError,
    LmdbError,
    ObjectNotFoundError,
    PermanentLmdbError,
    StorageConfigError,
    StorageError,
    SyncInterruptedError,
)
from evsync.gcpause import collector_paused
from evsync.lmdb.env import LmdbEnv
from evsync.lmdb.merge import MAX_MAP_GROWTHS, Merger, MergeResult
from evsync.lmdb.shadow import Shadow
from evsync.snapshot import format_for, readable_name
from evsync.snapshot.base import (
    KIND_DELTA,
    KIND_FULL,
    DbiInfo,
    Entry,
    SnapshotFormat,
    SnapshotHeader,
    SnapshotStream,
)
from evsync.snapshot.name import SnapshotName, db_prefix
from evsync.storage.base import BlobStore
from evsync.sync import chain
from evsync.sync.backoff import RETRY_BACKOFF_START, Backoff
from evsync.sync.interop import name_filter
from evsync.sync.recorder import REJECT_CORRUPT, Recorder, rejection_kind
from evsync.sync.sources import CarriedStream, ObjectSource
from evsync.sync.state import NS, Peers, TxnLedger
from evsync.triggers.base import HintQueue
from evsync.triggers.carried import CarriedObjects

log = logging.getLogger(__name__)

# A shadow merge looks at the stop flag this often (entries), so shutdown never waits
# for a big one. (The native Merger checks between its batches.)
STOP_CHECK_EVERY = 1024

# A listing asked for by a vanished or rejected object runs at most this often (outside
# ``--only-once``): forged hints for names that do not exist must not list the bucket
# once each. The periodic listing runs regardless.
RELIST_MIN_SECONDS = 5.0
# Carried bytes lost before anything named their object (refused, failed, unreadable):
# the sender's PUT is likely still running, so a listing now would not show the object,
# and receivers that take companions do not hear its announcement. A listing this long
# after the loss names it (DESIGN §7).
CARRIED_RELIST_DELAY_SECONDS = 2.0

# ``--only-once`` starts over after a listing at most this often: a bucket that keeps
# listing an object it cannot serve (an inconsistent store) must not loop forever.
MAX_RELIST_PASSES = 16

DAY_SECONDS = 86400.0

# Too-old names remembered so each is logged once; past this many the oldest are forgotten
# (and logged again while they are still listed).
MAX_TOO_OLD_NAMES = 4096

# What one attempt to merge an object came to.
DONE = "done"  # merged
SKIPPED = "skipped"  # rejected, vanished or interrupted: not to be retried as it is
RETRY = "retry"  # failed for now (fetch or write); tried again after the backoff
STOPPED = "stopped"  # shutdown


class Receiver:
    """Merges what other instances (and, at startup, this one) stored into the LMDB."""

    def __init__(  # noqa: PLR0917 - the parts it works with, named once
        self,
        config: Config,
        lmdb_cfg: LmdbConfig,
        lenv: LmdbEnv,
        shadow: Shadow | None,
        store: BlobStore,
        source: ObjectSource,
        peers: Peers,
        ledger: TxnLedger,
        recorder: Recorder,
        queue: HintQueue,
        stop_event: threading.Event,
        clock_ns: Callable[[], int],
    ) -> None:
        self.config = config
        self.cfg = lmdb_cfg
        self.db = lmdb_cfg.name
        self.lenv = lenv
        self.shadow = shadow
        self.store = store
        self.source = source
        self.peers = peers
        # merges the position fell back from: their announcements are news again
        peers.on_fallback = queue.not_confirmable
        self.ledger = ledger
        self.recorder = recorder
        self.queue = queue
        self.stop_event = stop_event
        self.clock_ns = clock_ns
        #: which formats this instance reads (the lightningstream section)
        self.accepts = name_filter(config.lightningstream)
        #: called as (object name, merge txn ids) after each merged object
        self.on_merged: list[Callable[[SnapshotName, list[int]], None]] = []
        #: a listing is needed to decide what exists (set after a name turned out gone)
        self.relist = False
        #: monotonic time after which a listing is needed (carried bytes were lost)
        self.relist_at: float | None = None
        self._lost_at = -math.inf  # monotonic time carried bytes were last lost
        self.list_backoff = Backoff(RETRY_BACKOFF_START, config.storage_retry_interval)
        self._load_backoff: dict[str, Backoff] = {}
        #: wall time (ns) of this thread's last successful listing
        self.listed_ok_ns: int | None = None
        #: why the last listing failed (None after a success)
        self.last_list_error: StorageError | None = None
        #: the own-instance object :meth:`check_own_names` verified last
        self._own_checked: str | None = None
        self._listed_at = -RELIST_MIN_SECONDS  # monotonic time of the last listing
        #: objects skipped as older than the retention (each is logged once)
        self._too_old_names = BoundedNames(MAX_TOO_OLD_NAMES)
        #: objects carried by notifications (the queue's), dropped once passed
        self.carried: CarriedObjects | None = None
        #: checkpoint names this thread's last listing showed: stepped over without a HEAD
        self._listed_checkpoints: frozenset[str] = frozenset()

    # ------------------------------------------------------------------ names

    def relist_later(self) -> None:
        """A listing once the store of a carried object that was lost has likely
        completed, CARRIED_RELIST_DELAY_SECONDS from now. One already asked for keeps its
        time (a stream of losses must not put it off for ever); a loss it may come too
        early for asks again after it, at most every RELIST_MIN_SECONDS."""
        now = time.monotonic()
        self._lost_at = now
        if self.relist_at is None:
            self.relist_at = now + CARRIED_RELIST_DELAY_SECONDS

    def list_bucket(self, *, startup: bool) -> bool:
        """List the db's objects and note every name; False when the listing failed.

        Outside startup the own instance's names are not noted (they are our uploads),
        but they still count as present: an instance with nothing valid left in the
        bucket is no longer waited for.
        """
        self._listed_at = started = time.monotonic()
        try:
            objects = self.store.list(db_prefix(self.db))
        except StorageError as exc:
            self.last_list_error = exc
            self.peers.list_failed()
            if isinstance(exc, StorageConfigError):
                self.list_backoff.failed_for_good()
            else:
                self.list_backoff.failed()
            self.recorder.list_failed(exc)
            return False
        self.last_list_error = None
        self.recorder.listed()
        self.listed_ok_ns = self.clock_ns()
        self.list_backoff.succeeded()
        self.relist = False
        if self.relist_at is not None and self.relist_at <= started:
            self.relist_at = None
            if self._lost_at + CARRIED_RELIST_DELAY_SECONDS > started:  # too early for it
                self.relist_at = max(
                    self._lost_at + CARRIED_RELIST_DELAY_SECONDS, started + RELIST_MIN_SECONDS
                )
        present: set[str] = set()
        checkpoints: set[str] = set()
        for obj in objects:
            name = readable_name(obj.name, self.db)
            if name is None or not self.accepts(name):
                continue
            if name.is_checkpoint:
                checkpoints.add(name.name)
            if name.name in self.peers.bad_objects or self.too_old(name):
                continue  # an instance with nothing mergeable left is not waited for
            present.add(name.instance)
            if name.instance == self.peers.own and not startup:
                continue
            self.note_name(name.instance, name)
        self._listed_checkpoints = frozenset(checkpoints)
        self.peers.waiting_for.intersection_update(present)
        self.queue.listed(present)
        return True

    def relist_due(self, *, retry: bool = False) -> bool:
        """A listing is asked for and may run now (``retry``: ``--only-once``, at once)."""
        now = time.monotonic()
        if self.relist_at is not None and now >= self.relist_at and self.list_backoff.ready():
            return True
        return self.relist and (retry or now - self._listed_at >= RELIST_MIN_SECONDS)

    def note_name(self, instance: str, name: SnapshotName, *, carried: bool = False) -> None:
        """A name from a hint or a listing (``carried``: from a notification that carried
        its bytes): remembered if it is news."""
        if not self.accepts(name):
            return
        if name.name in self.peers.bad_objects:
            # the queue forgets old rejections; it must not keep this as the newest
            self.queue.reject(name)
            return
        if self.too_old(name):
            self.queue.forget_instance(instance)  # frees a hint-only instance's slot
            return
        self.peers.note(
            instance, name, own_done=self.recorder.stats.startup_done, carried=carried
        )

    def check_own_names(self, names: Iterable[SnapshotName]) -> None:
        """Listed objects of this instance: the newest one that this process neither
        stored nor merged (nor checked) is fetched and verified once. A valid one was
        stored by another process under our name (two hosts configured alike): logged
        and counted, and new names sort after it; a corrupt one is rejected."""
        usable = [
            n
            for n in names
            if n.name not in self.peers.bad_objects
            and self.accepts(n)
            and not (n.is_copy and self.peers.get(self.peers.own).follows_chain)
        ]
        newest = max(usable, key=lambda n: n.name, default=None)
        if (
            newest is None
            or newest.timestamp_ns <= self.peers.own_newest_ns
            or newest.name == self._own_checked
            or self.peers.own in self.peers.waiting_for  # startup merges it anyway
            or newest.timestamp_ns < self._deleted_cutoff_ns()  # too old to matter
        ):
            return
        fmt = format_for(newest)
        assert fmt is not None  # readable names only
        try:
            data = self.source.fetch(newest)
        except ObjectNotFoundError:
            return  # gone again; nothing to sort after
        except CorruptObjectError as exc:  # refused unread (fs: not a regular file, too big)
            self._reject(self.peers.own, newest, exc)
            return
        except StorageError as exc:
            self.recorder.fetch_failed(self.peers.own, newest, exc)
            return  # the next listing tries again
        self._own_checked = newest.name
        with data:
            try:
                header = fmt.verify(data, max_inflated=self.config.storage_max_inflated_size)
                _check_header(header, newest)
            except CorruptObjectError as exc:
                self._reject(self.peers.own, newest, exc)
                return
        self.peers.own_named(newest)
        if header.hostname != socket.gethostname():
            self.recorder.name_conflict(newest, header.hostname, socket.gethostname())
        else:  # an earlier run of ours that startup did not merge (a wiped LMDB, say)
            log.info(
                "db %s: %s is an earlier object of this host; naming after it", self.db, newest
            )

    # ------------------------------------------------------------------ plans

    def merge_pending(self, *, include_own: bool, retry: bool) -> bool:
        """Take each instance to its newest object (a full one, or the deltas after our
        position); True when no merge failed. ``retry`` (``--only-once``): retry a failing
        fetch or merge in place, and start over after a listing that a vanished or
        rejected object asked for, instead of leaving both to the next step."""
        ok = True
        for _pass in range(MAX_RELIST_PASSES):
            finished, pass_ok = self._merge_pass(include_own=include_own, retry=retry)
            ok = ok and pass_ok
            if finished:
                return ok
        log.error(
            "db %s: gave up after %d listings in one run: objects listed could not be "
            "fetched, or the listing failed",
            self.db,
            MAX_RELIST_PASSES,
        )
        return False

    def _merge_pass(self, *, include_own: bool, retry: bool) -> tuple[bool, bool]:
        """One pass over the pending instances: (finished, no merge failed); not finished
        when ``retry`` asks to start over after a listing."""
        ok = True
        for instance, newest in self.peers.pending(include_own=include_own):
            if self.stop_event.is_set():
                return True, False
            st = self.peers.instances[instance]
            position = st.merged.timestamp_ns if st.merged is not None else None
            for name in chain.plan(st.known.values(), position, newest):
                step_over = chain.covered(name, st.merged.timestamp_ns if st.merged else None)
                outcome = self._merge_with_retries(instance, name, retry, step_over=step_over)
                if outcome == STOPPED:
                    return True, False
                if outcome != DONE:
                    ok = ok and outcome != RETRY
                    break
            self._check_reached(instance, newest)
            if self.relist_due(retry=retry):
                self.list_bucket(startup=not self.recorder.stats.startup_done)
                if retry:
                    return False, ok
        return True, ok

    def _step_over(self, instance: str, name: SnapshotName) -> str:
        """A checkpoint whose point the position has reached holds nothing of its
        instance's own that this LMDB lacks (DESIGN §7): the position moves to it, no GET.

        Only once the bucket is known to hold it (the last listing showed it, or a HEAD
        says so): a name alone, from a hint, proves nothing, and stepping over a forged
        one named far ahead would put the position past every real object of the
        instance. A name the bucket lacks is handled as a vanished object."""
        if name.name not in self._listed_checkpoints:
            backoff = self._backoff(instance)
            try:
                held = self.store.exists(name.name)
            except StorageError as exc:
                backoff.failed()
                self.recorder.fetch_failed(instance, name, exc)
                return RETRY
            backoff.succeeded()
            if not held:
                self.recorder.vanished(name)
                self.queue.gone(name.name)  # a hint naming it again costs nothing
                self._forget_newest(instance, name)
                return SKIPPED
        self.peers.merged(instance, name, self.clock_ns())
        self.recorder.checkpoint_skipped(instance, name)
        return DONE

    def _merge_with_retries(
        self, instance: str, name: SnapshotName, retry: bool, *, step_over: bool = False
    ) -> str:
        """:meth:`merge_object` (or, ``step_over``, :meth:`_step_over`) paced by the
        instance's backoff."""
        backoff = self._backoff(instance)
        attempts = 0
        while True:
            if not retry and not backoff.ready():
                return RETRY
            if step_over:
                outcome = self._step_over(instance, name)
            else:
                outcome = self.merge_object(instance, name)
            if outcome != RETRY:
                return outcome
            attempts += 1
            if not retry or attempts >= self.config.storage_retry_count:
                return RETRY
            self.stop_event.wait(backoff.delay)
            if self.stop_event.is_set():
                return STOPPED

    def _backoff(self, instance: str) -> Backoff:
        return self._load_backoff.setdefault(
            instance, Backoff(RETRY_BACKOFF_START, self.config.storage_retry_interval)
        )

    def _check_reached(self, instance: str, newest: SnapshotName) -> None:
        """A plan that fell short of the newest object (a delta's base is missing): list
        again once; if that does not help, wait for the sender's next full object."""
        st = self.peers.instances.get(instance)
        if st is None:
            return  # dropped: nothing of it exists
        if st.merged is not None and st.merged.name >= newest.name:
            st.relisted_for = None
            return
        backoff = self._load_backoff.get(instance)
        if st.newest_seen != newest or (backoff is not None and backoff.delay):
            return  # rejected or failing: handled where that happened
        if st.relisted_for != newest.name:
            st.relisted_for = newest.name
            self.relist = True
            return
        if self.relist:
            return  # the listing asked for has not run (rate-limited, or it failed)
        st.stuck = newest.name
        # What can be reached is merged; startup waits no longer for the rest (an own
        # newest full object that is corrupt or gone must not stop every upload).
        self.peers.waiting_for.discard(instance)
        self.recorder.chain_stuck(instance, newest, st.merged)

    # ------------------------------------------------------------------ one object

    def merge_object(self, instance: str, name: SnapshotName) -> str:
        """Fetch, verify and merge one object: ``done``, ``skipped`` or ``retry``."""
        backoff = self._backoff(instance)
        if self.too_old(name):  # noted while it was younger (a long outage, say)
            self._forget_newest(instance, name)
            return SKIPPED
        fmt = format_for(name)
        assert fmt is not None  # only readable names get past hints and listings
        t0 = time.monotonic()
        try:
            data = self.source.fetch(name)
        except ObjectNotFoundError:
            self.recorder.vanished(name)
            self.queue.gone(name.name)  # a hint naming it again costs no GET
            self._forget_newest(instance, name)
            return SKIPPED
        except CorruptObjectError as exc:  # refused unread (fs: not a regular file, too big)
            self._reject(instance, name, exc)
            return SKIPPED
        except StorageError as exc:
            backoff.failed()
            self.recorder.fetch_failed(instance, name, exc)
            return RETRY
        backoff.succeeded()
        carried = isinstance(data, CarriedStream)
        with data, collector_paused():
            if not carried:
                self.recorder.fetched(instance, _stream_size(data))
            try:
                stream = self._open_checked(fmt, data, name)
            except CorruptObjectError as exc:
                return self._refused(instance, name, exc, carried=carried)
            if instance != self.peers.own:
                # only a checked header's name says what a peer's clock read
                ahead = (name.timestamp_ns - self.clock_ns()) / NS
                self.recorder.clock_skew(instance, name, ahead)
            partial = MergeResult()
            try:
                result = self._apply(fmt, data, stream, partial)
            except CorruptObjectError as exc:
                # a frame after the applied ones failed its checks (or the temp file
                # changed under us): what was applied is true data, and its txns are
                # evsync's own; the object is marked bad and the position stays
                self.ledger.merged(partial.txn_ids)
                return self._refused(instance, name, exc, carried=carried)
            except SyncInterruptedError:
                self.ledger.merged(partial.txn_ids)
                self.recorder.merge_interrupted(name)
                return SKIPPED
            except PermanentLmdbError as exc:  # fetching it again would fail the same way
                self.ledger.merged(partial.txn_ids)
                return self._refused(instance, name, exc, carried=carried)
            except LmdbError as exc:
                self.ledger.merged(partial.txn_ids)
                backoff.failed()
                self.recorder.merge_failed(instance, name, exc)
                if carried:
                    self._carried_dropped(instance, name)  # taken: a retry would GET
                return RETRY
        self._merged(instance, name, result, t0, carried=carried)
        return DONE

    def _refused(
        self, instance: str, name: SnapshotName, exc: EvsyncError, *, carried: bool
    ) -> str:
        """An object that failed its checks, or that this LMDB can never take, is marked
        bad: ``skipped``. Carried bytes are no proof of what the bucket holds: they are
        dropped, counted and logged, and the object is not marked bad; it is fetched
        (and judged) from the bucket at once only when a listing, hint or announcement
        has named it, else once one does (a GET before its store would answer 404 and
        count it gone, DESIGN §7)."""
        if not carried:
            self._reject(instance, name, exc)
            return SKIPPED
        self.recorder.carried_invalid(name, exc)
        st = self.peers.instances.get(instance)
        if st is not None and name.name in st.announced:
            return self.merge_object(instance, name)  # in the bucket: its bytes are taken
        self._carried_dropped(instance, name)
        return SKIPPED

    def _carried_dropped(self, instance: str, name: SnapshotName) -> None:
        """Carried bytes of ``name`` were taken and not merged. A name no listing, hint or
        announcement has named yet is forgotten until one does (the announcement after
        its store is news again: the name is above the position, neither gone nor bad),
        and a listing is asked for in case that announcement is lost; one already named
        stays known, and the next plan fetches it from the bucket."""
        st = self.peers.instances.get(instance)
        if st is None or name.name in st.announced:
            return
        self.peers.forget_newest(instance, name)
        self.relist = True
        self.relist_later()  # the listing just asked for may run before the store ends

    def _open_checked(
        self, fmt: SnapshotFormat, data: IO[bytes], name: SnapshotName
    ) -> SnapshotStream | None:
        """Check an object before any of it is applied: an open reader that checks each
        part before handing it out (its header checked against the name), or None
        once the whole object verified (it is then read again to merge)."""
        cap = self.config.storage_max_inflated_size
        stream = fmt.open_checked(data, max_inflated=cap)
        if stream is not None:
            _check_header(stream.header, name)
            return stream
        data.seek(0)
        _check_header(fmt.verify(data, max_inflated=cap), name)
        return None

    def note_carried(self, name: SnapshotName) -> None:
        """An object carried by a notification exists, provisionally: a plan may use it
        (every carried name is noted, not only the newest, so a run of them chains).
        One at or below the position (a redelivered companion, say) is no news and
        confirms nothing: its bytes are dropped."""
        st = self.peers.instances.get(name.instance)
        if st is not None and st.merged is not None and name.name <= st.merged.name:
            if self.carried is not None:
                self.carried.drop_through(name.instance, st.merged.name)
            return
        self.note_name(name.instance, name, carried=True)

    def _merged(
        self, instance: str, name: SnapshotName, result: MergeResult, t0: float, *, carried: bool
    ) -> None:
        self.ledger.merged(result.txn_ids)
        for callback in self.on_merged:
            callback(name, result.txn_ids)
        st = self.peers.merged(instance, name, self.clock_ns(), carried=carried)
        if self.carried is not None:
            self.carried.drop_through(instance, name.name)  # older ones are not needed
        if carried:
            self.recorder.carried_merged()
            if name.name in st.provisional:  # not confirmed yet: its announcement will
                self.queue.merged_carried(name.name)
        self.recorder.merged(
            instance,
            name,
            result,
            time.monotonic() - t0,
            st.lag_seconds or 0.0,
            own=instance == self.peers.own,
        )

    def _apply(
        self,
        fmt: SnapshotFormat,
        data: IO[bytes],
        stream: SnapshotStream | None,
        partial: MergeResult,
    ) -> MergeResult:
        """Merge an object: batched txns in native mode, one txn in shadow mode.

        ``stream`` is an open reader that checks as it reads (the object is then read
        once); None for an object verified whole, which is read again. ``partial``
        collects the txns committed so far, for a merge that ends early."""

        one_pass = stream is not None

        def open_dbis() -> Iterator[tuple[DbiInfo, Iterable[Entry]]]:
            nonlocal stream
            if stream is not None:
                opened, stream = stream, None
                return opened.dbis()
            data.seek(0)  # again, after a map growth: checked again if it was never verified
            return fmt.reader(data, verified=not one_pass).dbis()

        if self.shadow is None:
            merger = Merger(
                self.lenv,
                deleted_cutoff_ns=self._deleted_cutoff_ns(),
                create_flags=self._create_flags,
                stop=self.stop_event,
                result=partial,
            )
            return merger.merge(open_dbis())
        for _attempt in range(MAX_MAP_GROWTHS):
            try:
                result, update = self.shadow.merge(
                    self._until_stopped(open_dbis()),
                    timestamp_ns=self.clock_ns(),
                    deleted_cutoff_ns=self._deleted_cutoff_ns(),
                    create_flags=self._create_flags,
                )
            except lmdb.MapFullError:
                self.lenv.grow_map()
                continue
            if update.changes:
                log.info(
                    "db %s: stamped %d local change(s) before merging", self.db, update.changes
                )
            return result
        raise PermanentLmdbError(f"lmdb {self.db}: map still full after {MAX_MAP_GROWTHS} growths")

    def _until_stopped(
        self, dbis: Iterable[tuple[DbiInfo, Iterable[Entry]]]
    ) -> Iterator[tuple[DbiInfo, Iterable[Entry]]]:
        """The object's DBIs, raising SyncInterruptedError inside the merge once shutdown is asked.

        For the shadow merge, which runs in one write txn: raised from within it, it
        aborts that txn, and the object is merged again later.
        """
        stop = self.stop_event

        def entries(items: Iterable[Entry]) -> Iterator[Entry]:
            for n, entry in enumerate(items):
                if n % STOP_CHECK_EVERY == 0 and stop.is_set():
                    raise SyncInterruptedError(f"db {self.db}: merge interrupted by shutdown")
                yield entry

        for info, items in dbis:
            yield info, entries(items)

    def too_old(self, name: SnapshotName) -> bool:
        """With the sweeper on, an object stamped before the retention (minus the load
        cutoff) is never merged (DESIGN §11): deletes made after it may have lost their
        tombstones to the sweeper, so its live values would come back everywhere (a dead
        instance's leftover object, or this instance's own after its LMDB was moved
        away). Logged once per object and counted."""
        if not self.config.sweeper.enabled or name.timestamp_ns >= self._deleted_cutoff_ns():
            return False
        if name.name not in self._too_old_names:
            self._too_old_names.add(name.name)
            sweeper = self.config.sweeper
            self.recorder.too_old(
                name,
                (self.clock_ns() - name.timestamp_ns) / NS / DAY_SECONDS,
                (sweeper.retention - sweeper.load_cutoff) / DAY_SECONDS,
            )
        return True

    def _deleted_cutoff_ns(self) -> int:
        """Tombstones older than this are not inserted (the sweeper would remove them)."""
        sweeper = self.config.sweeper
        if not sweeper.enabled:
            return 0
        return self.clock_ns() - int((sweeper.retention - sweeper.load_cutoff) * NS)

    def _create_flags(self, info: DbiInfo) -> int:
        opt = self.cfg.dbi_options.get(info.name.decode(errors="replace"))
        if opt is not None and opt.override_create_flags is not None:
            return opt.override_create_flags
        return info.flags

    # ------------------------------------------------------------------ bad objects

    def _reject(self, instance: str, name: SnapshotName, exc: EvsyncError) -> None:
        kind = rejection_kind(exc)
        self.peers.bad_objects.add(name.name)
        if kind == REJECT_CORRUPT:
            self.peers.corrupt_objects.add(name.name)
        self.recorder.rejected(instance, name, str(exc), kind)
        self._forget_newest(instance, name)
        self.queue.reject(name)

    def _forget_newest(self, instance: str, name: SnapshotName) -> None:
        self.peers.forget_newest(instance, name)
        self.queue.forget_instance(instance)
        self.relist = True  # a listing decides whether an older object of it exists
        if self.peers.drop_if_unknown(instance):  # a forged name's instance, say
            self._load_backoff.pop(instance, None)
            self.recorder.forget_instance(instance)


def _check_header(header: SnapshotHeader, name: SnapshotName) -> None:
    """The object must say what its name says: db, instance, time, kind and base."""
    if (header.db, header.instance, header.timestamp_ns) != (
        name.db,
        name.instance,
        name.timestamp_ns,
    ):
        raise CorruptObjectError(
            f"header ({header.db}, {header.instance}, {header.timestamp_ns}) does not match "
            "the object name"
        )
    base = name.delta_base_ns
    kind = KIND_FULL if base is None else KIND_DELTA
    if header.kind != kind or (base is not None and header.base_timestamp_ns != base):
        raise CorruptObjectError(
            f"header kind {header.kind!r} (base {header.base_timestamp_ns}) does not match "
            "the object name"
        )


def _stream_size(data: IO[bytes]) -> int:
    data.seek(0, 2)
    size = data.tell()
    data.seek(0)
    return size
