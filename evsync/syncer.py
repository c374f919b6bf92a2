"""One loop per LMDB: hints in, uploads and merges out. The syncer thread is the only LMDB writer.

Rules that protect data (DESIGN §5, as Lightning Stream):

- at startup, list the bucket and merge the newest object of every instance, the own
  one included, before uploading anything, so a wiped instance never overwrites its
  own history;
- an empty LMDB never uploads; merged remote data is not re-uploaded when nothing
  changed locally (the merge txns right after the last synced txn count as synced);
- a store that fails is retried with backoff and the change stays pending: a storage
  outage makes the daemon unhealthy, never makes it exit or lose a change;
- an object is verified completely before any of it is applied, so a corrupt object
  leaves the LMDB exactly as it was; it is marked bad and skipped.

In shadow mode (``schema_tracks_changes: false``) uploads dump the shadow DBIs after a
main -> shadow pass, and merges go through :class:`~evsync.lmdb.shadow.Shadow` in one
write txn; see that module for why.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import lmdb
import tenacity

from evsync import chain, faults
from evsync.config import Config, LmdbConfig
from evsync.errors import (
    CorruptObjectError,
    EvsyncError,
    LmdbError,
    ObjectNotFoundError,
    StorageError,
    StorageUnavailableError,
    SyncInterruptedError,
)
from evsync.gcpause import collector_paused
from evsync.health import HealthTracker
from evsync.lmdb.dump import DumpResult, dump_native, dump_native_delta, dump_shadow
from evsync.lmdb.env import LmdbEnv
from evsync.lmdb.merge import MAX_MAP_GROWTHS, Merger, MergeResult
from evsync.lmdb.shadow import SEED_TIMESTAMP_NS, Shadow
from evsync.metrics import Metrics
from evsync.rejoin import RejoinGuard
from evsync.snapshot.codec import (
    KIND_DELTA,
    KIND_FULL,
    DbiInfo,
    Entry,
    SnapshotHeader,
    SnapshotReader,
    verify_snapshot,
)
from evsync.snapshot.name import SnapshotName, db_prefix, delta_extra, try_parse
from evsync.storage.base import BlobStore
from evsync.sweeper import Sweeper
from evsync.triggers.base import Batch, Hint, HintQueue

log = logging.getLogger(__name__)

# Objects up to this size are built in memory; larger dumps spill to a temp file.
DUMP_SPOOL_BYTES = 8 << 20
# Backoff between attempts of a failing load or listing, doubling up to the retry interval.
RETRY_BACKOFF_START = 0.1
# The loop wakes at least this often even when nothing is queued (deadlines, stop).
MAX_IDLE_SECONDS = 1.0
NS = 1_000_000_000
DUMP_CATCH_UP_ATTEMPTS = 5
DUMP_CATCH_UP_SECONDS = 0.001
SOURCE_SELF = "self"  # the syncer re-queues itself when a commit raced an upload
# LMDB gauges (map, entries per DBI ...) are refreshed by the syncer thread this often.
LMDB_STATS_INTERVAL = 5.0
# A merge looks at the stop flag this often (entries), so shutdown never waits for a big one.
STOP_CHECK_EVERY = 1024


@dataclass
class InstanceState:
    """What this syncer knows about one remote (or its own) instance."""

    newest_seen: SnapshotName | None = None
    merged: SnapshotName | None = None
    merged_at: float | None = None  # wall clock
    lag_seconds: float | None = None  # object timestamp -> merged
    #: names newer than ``merged`` known to exist: the deltas a plan may need
    known: dict[str, SnapshotName] = field(default_factory=dict)
    #: the newest name a plan fell short of once (a listing is tried), then for good
    relisted_for: str | None = None
    stuck: str | None = None


@dataclass
class SyncStats:
    """Counters for status output and, later, metrics."""

    objects_stored: int = 0
    objects_loaded: int = 0
    objects_rejected: int = 0
    store_failures: int = 0
    load_failures: int = 0
    list_failures: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    entries_merged: int = 0
    entries_written: int = 0
    last_store_name: str | None = None
    last_store_at: float | None = None
    startup_done: bool = False
    rejected: list[str] = field(default_factory=list)


class Backoff:
    """Exponential backoff for one failing operation, reset by a success."""

    def __init__(self, start: float, cap: float) -> None:
        self.start = start
        self.cap = max(cap, start)
        self.delay = 0.0
        self.not_before = 0.0

    def failed(self) -> None:
        self.delay = self.start if self.delay == 0 else min(self.delay * 2, self.cap)
        self.not_before = time.monotonic() + self.delay

    def succeeded(self) -> None:
        self.delay = 0.0
        self.not_before = 0.0

    def ready(self) -> bool:
        return time.monotonic() >= self.not_before


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
        self.health = HealthTracker(
            {
                "list": config.health.storage_list,
                "load": config.health.storage_load,
                "store": config.health.storage_store,
            }
        )
        self.stats = SyncStats()
        self.metrics = metrics or Metrics()
        self.guard = RejoinGuard(
            self.lenv, config.sweeper, override=force_rejoin, clock_ns=clock_ns
        )
        self.sweeper = (
            Sweeper(
                self.lenv, config.sweeper, shadow_mode=self.shadow is not None, clock_ns=clock_ns
            )
            if config.sweeper.enabled and not receive_only
            else None
        )
        self._next_sweep = time.monotonic() + config.sweeper.first_interval
        self._sweep_resume_at = 0.0
        self._startup_blocked = False
        # Wall time of the last successful listing whose hints are drained (the rejoin
        # guard's in-sync time); the lister thread's own time is promoted in run().
        self._listed_ok_ns: int | None = None
        self._lister_ok_ns: int | None = None
        self.lmdb_stats: dict[str, Any] = {}
        self._lmdb_stats_at = 0.0
        self.instances: dict[str, InstanceState] = {}
        self.bad_objects: set[str] = set()
        self.waiting_for: set[str] = set()
        self.last_synced_txn = 0
        self.chain = chain.SenderChain(config.deltas)
        # txns of evsync's own merges since the last upload: their entries are not local
        # changes, so deltas leave them out
        self._merge_txns: set[int] = set()
        self._last_name_ts = 0
        self._last_store_mono = time.monotonic()
        self._relist = False
        self._list_backoff = Backoff(RETRY_BACKOFF_START, config.storage_retry_interval)
        self._load_backoff: dict[str, Backoff] = {}
        self._store_backoff = Backoff(config.storage_retry_interval, config.storage_retry_interval)
        self._logged_once: set[str] = set()
        #: called as (db, object name, size) after every successful store
        self.on_stored: list[Callable[[str, str, int], None]] = []
        #: called after every successful store with {instance: newest merged object ts}
        #: of the other instances: their data is now proven to be in our own object
        self.on_committed: list[Callable[[Mapping[str, int]], None]] = []

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        """Startup, then serve hints until stopped."""
        self._refresh_lmdb_stats()
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
            self._promote_listing_time()
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
        """One error line (a traceback only for what is not an evsync error: a bug), then
        wait the backoff."""
        backoff.failed()
        log.error(
            "db %s: %s failed (%s); retrying in %.1fs",
            self.db,
            what,
            exc,
            backoff.delay,
            exc_info=not isinstance(exc, EvsyncError),
        )
        self.stop_event.wait(backoff.delay)

    def _promote_listing_time(self) -> None:
        lister = self._lister_ok_ns
        if lister is not None and (self._listed_ok_ns is None or lister > self._listed_ok_ns):
            self._listed_ok_ns = lister

    def run_once(self) -> bool:
        """``sync --only-once``: merge every instance's newest object, upload if needed.

        Returns True when everything completed; False (with a logged reason) otherwise.
        """
        if not self.startup(retry_forever=False):
            return False
        ok = self._merge_pending(include_own=True, retry=True)
        ok = self._maybe_upload(only_once=True) and ok
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
        """Close the LMDB."""
        self.lenv.close()

    # ------------------------------------------------------------------ startup

    def startup(self, *, retry_forever: bool) -> bool:
        """Initial listing, then merge every instance's newest object, own first."""
        attempts = 0
        while not self._list_and_note(startup=True):
            attempts += 1
            if self.stop_event.is_set():
                return False
            if not retry_forever and attempts >= self.config.storage_retry_count:
                log.error("db %s: cannot list the bucket after %d attempts", self.db, attempts)
                return False
            self.stop_event.wait(self._list_backoff.delay)
        # A retried startup may have merged some newest objects already.
        self.waiting_for = {
            i
            for i, st in self.instances.items()
            if st.newest_seen is not None
            and (st.merged is None or st.merged.name < st.newest_seen.name)
        }
        log.info(
            "db %s: startup listing found %d instance(s)%s",
            self.db,
            len(self.waiting_for),
            (": " + ", ".join(sorted(self.waiting_for))) if self.waiting_for else "",
        )
        if self._guard_blocks():
            self._startup_blocked = True
            return False
        self._seed_shadow()
        if retry_forever:
            self._merge_pending(include_own=True, retry=False)
            self._maybe_upload()
        self.stats.startup_done = not self.waiting_for
        return True

    def _guard_blocks(self) -> bool:
        """True (with one error line) while the rejoin guard refuses to sync."""
        try:
            reason = self.guard.check()
        except LmdbError as exc:
            self._log_limited("guard", logging.ERROR, "db %s: rejoin guard: %s", self.db, exc)
            return True
        if reason is None:
            return False
        self._log_limited("guard", logging.ERROR, "db %s: refusing to sync: %s", self.db, reason)
        return True

    def _seed_shadow(self) -> None:
        """Capture data written while evsync was down at 1 ns, so it never beats remote data."""
        if self.shadow is None or self.lenv.last_txn_id() == 0:
            return
        try:
            update = self.shadow.update_from_main(SEED_TIMESTAMP_NS, seed=True)
        except LmdbError as exc:
            log.error("db %s: cannot seed the shadow DBIs: %s", self.db, exc)
            return
        log.info(
            "db %s: shadow seeded (%d DBIs, %d new or changed, %d vanished since the last run)",
            self.db,
            update.dbis,
            update.changed,
            update.deleted,
        )

    # ------------------------------------------------------------------ main loop

    def step(self, batch: Batch) -> None:
        """Handle one drained batch of hints, then whatever deadlines are due."""
        self._refresh_lmdb_stats()
        if self._guard_blocks():
            return
        for instance, name in batch.remote.items():
            self._note_name(instance, name)
        if self._relist and self._list_backoff.ready():
            self._list_and_note(startup=False)
        if self._startup_blocked:  # the guard let go (the LMDB was wiped): finish startup
            self._startup_blocked = False
            self._seed_shadow()
        self._merge_pending(include_own=bool(self.waiting_for), retry=False)
        if not self.waiting_for:
            self.stats.startup_done = True
            self._mark_in_sync()
        self._maybe_upload()
        self._maybe_sweep()

    def _idle_timeout(self) -> float:
        now = time.monotonic()
        deadlines = [MAX_IDLE_SECONDS]
        force = self.config.storage_force_snapshot_interval
        if force and not self.receive_only:
            deadlines.append(self._last_store_mono + force - now)
        if self.sweeper is not None:
            due = self._sweep_resume_at if self.sweeper.in_progress else self._next_sweep
            deadlines.append(due - now)
        return max(0.0, min(deadlines))

    def _mark_in_sync(self) -> None:
        """Every instance's newest object is merged: record it for the rejoin guard."""
        if self._pending(include_own=False):
            return
        if self._listed_ok_ns is None:
            return
        try:
            txn_id = self.guard.mark_in_sync(self._listed_ok_ns)
        except LmdbError as exc:
            self._log_limited(
                "state", logging.ERROR, "db %s: cannot record sync state: %s", self.db, exc
            )
            return
        if txn_id is not None:
            self._own_txn(txn_id)

    def _own_txn(self, txn_id: int) -> None:
        """A txn of evsync's that changed no application data needs no upload."""
        self._advance_synced([txn_id])
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
        self.metrics.observe_write_lock(self.db, step.txn_seconds)
        if step.removed:
            self.metrics.sweeper_removed.labels(self.db).inc(step.removed)
        if step.txn_id is not None:
            self._own_txn(step.txn_id)
        if not step.done:
            self._sweep_resume_at = time.monotonic() + self.config.sweeper.release_duration
            return
        self._next_sweep = time.monotonic() + self.config.sweeper.interval
        st = sweeper.stats
        self.metrics.sweeper_runs.labels(self.db).inc()
        self.metrics.sweeper_seconds.labels(self.db).observe(st.seconds)
        self.metrics.sweeper_entries.labels(self.db, "live").set(st.live)
        self.metrics.sweeper_entries.labels(self.db, "deleted").set(st.deleted)
        total = st.live + st.deleted
        log.info(
            "db %s: swept tombstones: %d entries, %d deleted (%.1f%%), %d removed, "
            "%d txns, longest %.1f ms, %.2fs",
            self.db,
            total,
            st.deleted,
            100.0 * st.deleted / total if total else 0.0,
            st.removed,
            st.txns,
            st.longest_txn_seconds * 1000,
            st.seconds,
        )

    # ------------------------------------------------------------------ LMDB gauges

    def _refresh_lmdb_stats(self, *, force: bool = False) -> None:
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
            self._log_limited(
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
        instances = list(self.instances.items())
        return {
            "lmdb": self.lmdb_stats,
            "last_synced_txn_id": self.last_synced_txn,
            "last_store_at": self.stats.last_store_at,
            "newest_seen_ts": {
                inst: st.newest_seen.timestamp_ns / NS
                for inst, st in instances
                if st.newest_seen is not None and inst != self.instance
            },
            "merged_ts": {
                inst: st.merged.timestamp_ns / NS
                for inst, st in instances
                if st.merged is not None and inst != self.instance
            },
            "startup_done": self.stats.startup_done,
            "rejoin_blocked": self.guard.blocked,
            "hints_received": dict(self.queue.received),
            "hints_first": dict(self.queue.first),
        }

    # ------------------------------------------------------------------ listing

    def _list_and_note(self, *, startup: bool) -> bool:
        try:
            objects = self.store.list(db_prefix(self.db))
        except StorageError as exc:
            self.health.failure("list", str(exc))
            self.stats.list_failures += 1
            self.metrics.list_failures.labels(self.db).inc()
            self._list_backoff.failed()
            self._log_limited("list", logging.WARNING, "db %s: listing failed: %s", self.db, exc)
            return False
        self.health.success("list")
        self._listed_ok_ns = self.clock_ns()
        self._list_backoff.succeeded()
        self._recovered("list", "listing")
        self._relist = False
        present: set[str] = set()
        for obj in objects:
            name = try_parse(obj.name)
            if name is None or name.db != self.db or not name.is_evsync:
                continue
            if name.name in self.bad_objects:
                continue
            present.add(name.instance)
            if name.instance == self.instance and not startup:
                continue
            self._note_name(name.instance, name)
        # An instance with nothing (valid) left in the bucket is no longer waited for.
        self.waiting_for.intersection_update(present)
        return True

    def on_listing(self, ok: bool) -> None:
        """Callback for the lister trigger, which lists from its own thread."""
        if ok:
            self.health.success("list")
            self._lister_ok_ns = self.clock_ns()
        else:
            self.health.failure("list", "listing failed")
            self.stats.list_failures += 1
            self.metrics.list_failures.labels(self.db).inc()

    def _note_name(self, instance: str, name: SnapshotName) -> None:
        if name.name in self.bad_objects:
            return
        if instance == self.instance and self.stats.startup_done:
            return  # our own uploads; only merged at startup
        st = self.instances.setdefault(instance, InstanceState())
        if st.merged is not None and name.name <= st.merged.name:
            return
        st.known[name.name] = name
        if st.newest_seen is None or name.name > st.newest_seen.name:
            st.newest_seen = name
            if instance != self.instance:
                self._check_clock_skew(instance, name)

    def _check_clock_skew(self, instance: str, name: SnapshotName) -> None:
        """An object from the future means its writer's clock is ahead: its writes win unfairly."""
        ahead = (name.timestamp_ns - self.clock_ns()) / NS
        self.metrics.clock_skew.labels(self.db, instance).set(ahead)
        threshold = self.config.clock_skew_threshold
        if threshold and ahead > threshold:
            self.metrics.clock_skew_warnings.labels(self.db, instance).inc()
            self._log_limited(
                f"skew-{instance}",
                logging.WARNING,
                "db %s: clock skew: %s is stamped %.2fs ahead of this host's clock "
                "(threshold %gs); check NTP on both hosts",
                self.db,
                name,
                ahead,
                threshold,
            )
        else:
            self._logged_once.discard(f"skew-{instance}")

    # ------------------------------------------------------------------ merging

    def _pending(self, include_own: bool) -> list[tuple[str, SnapshotName]]:
        out = []
        for instance, st in self.instances.items():
            if st.newest_seen is None:
                continue
            if st.merged is not None and st.newest_seen.name <= st.merged.name:
                continue
            if st.stuck == st.newest_seen.name:
                continue  # waits for a newer name (the sender's next full object)
            if instance == self.instance and not include_own:
                continue
            out.append((instance, st.newest_seen))
        out.sort(key=lambda item: item[0] != self.instance)  # own history first
        return out

    def _merge_pending(self, *, include_own: bool, retry: bool) -> bool:
        """Take each instance to its newest object (a full one, or the deltas after our
        position); True when no merge failed."""
        ok = True
        for instance, newest in self._pending(include_own):
            if self.stop_event.is_set():
                return False
            st = self.instances[instance]
            position = st.merged.timestamp_ns if st.merged is not None else None
            for name in chain.plan(st.known.values(), position, newest):
                outcome = self._merge_with_retries(instance, name, retry)
                if outcome == "stopped":
                    return False
                if outcome != "done":
                    ok = ok and outcome != "retry"
                    break
            self._check_reached(instance, newest)
            if self._relist:
                self._list_and_note(startup=not self.stats.startup_done)
                if retry:
                    return self._merge_pending(include_own=include_own, retry=retry) and ok
        return ok

    def _merge_with_retries(self, instance: str, name: SnapshotName, retry: bool) -> str:
        """:meth:`_merge_object` with the instance's backoff: ``done``, ``skipped``,
        ``retry`` (given up for now) or ``stopped``."""
        backoff = self._load_backoff.setdefault(
            instance, Backoff(RETRY_BACKOFF_START, self.config.storage_retry_interval)
        )
        attempts = 0
        while True:
            if not retry and not backoff.ready():
                return "retry"
            outcome = self._merge_object(instance, name)
            if outcome != "retry":
                return outcome
            attempts += 1
            if not retry or attempts >= self.config.storage_retry_count:
                return "retry"
            self.stop_event.wait(backoff.delay)
            if self.stop_event.is_set():
                return "stopped"

    def _check_reached(self, instance: str, newest: SnapshotName) -> None:
        """A plan that fell short of the newest object (a delta's base is missing): list
        again once; if that does not help, wait for the sender's next full object."""
        st = self.instances[instance]
        if st.merged is not None and st.merged.name >= newest.name:
            st.relisted_for = None
            return
        backoff = self._load_backoff.get(instance)
        if st.newest_seen != newest or (backoff is not None and backoff.delay):
            return  # rejected or failing: handled where that happened
        if st.relisted_for != newest.name:
            st.relisted_for = newest.name
            self._relist = True
            return
        st.stuck = newest.name
        if st.merged is not None:
            self.waiting_for.discard(instance)  # what can be reached is merged
        self._log_limited(
            f"chain-{instance}",
            logging.WARNING,
            "db %s: cannot reach %s: a delta it builds on is missing; merged up to %s, "
            "waiting for the next full object of %s",
            self.db,
            newest,
            st.merged,
            instance,
        )

    def _merge_object(self, instance: str, name: SnapshotName) -> str:
        """Fetch, verify and merge one object: returns ``done``, ``skipped`` or ``retry``."""
        backoff = self._load_backoff[instance]
        t0 = time.monotonic()
        try:
            data = self.store.fetch(name.name)
        except ObjectNotFoundError:
            log.info("db %s: %s vanished before it was fetched; listing again", self.db, name)
            self._forget_newest(instance, name)
            return "skipped"
        except StorageError as exc:
            self.health.failure("load", str(exc))
            self.stats.load_failures += 1
            self.metrics.load_failures.labels(self.db, instance).inc()
            backoff.failed()
            self._log_limited(
                f"load-{instance}",
                logging.WARNING,
                "db %s: cannot fetch %s: %s",
                self.db,
                name,
                exc,
            )
            return "retry"
        self.health.success("load")
        backoff.succeeded()
        self._recovered(f"load-{instance}", f"loading objects of {instance}")
        with data, collector_paused():
            size = _stream_size(data)
            self.stats.bytes_down += size
            self.metrics.bytes_downloaded.labels(self.db).inc(size)
            try:
                header = verify_snapshot(data)
                self._check_header(header, name)
            except CorruptObjectError as exc:
                self._reject(instance, name, str(exc))
                return "skipped"
            try:
                result = self._apply(data)
            except CorruptObjectError as exc:  # only if the temp file changed under us
                self._reject(instance, name, str(exc))
                return "skipped"
            except SyncInterruptedError:
                log.info("db %s: merge of %s interrupted by shutdown", self.db, name)
                return "skipped"
            except LmdbError as exc:
                self.metrics.merge_failures.labels(self.db).inc()
                backoff.failed()
                self._log_limited(
                    f"merge-{instance}",
                    logging.ERROR,
                    "db %s: merge of %s failed: %s",
                    self.db,
                    name,
                    exc,
                )
                return "retry"
        self._record_merge(instance, name, result, t0)
        return "done"

    def _record_merge(
        self, instance: str, name: SnapshotName, result: MergeResult, t0: float
    ) -> None:
        self._advance_synced(result.txn_ids)
        self._merge_txns.update(result.txn_ids)
        st = self.instances.setdefault(instance, InstanceState())
        st.merged = name
        st.known = {n: v for n, v in st.known.items() if n > name.name}
        self._logged_once.discard(f"chain-{instance}")
        st.merged_at = time.time()
        st.lag_seconds = max(0.0, self.clock_ns() / NS - name.timestamp_ns / NS)
        self.waiting_for.discard(instance)
        self.stats.objects_loaded += 1
        self.stats.entries_merged += result.entries
        self.stats.entries_written += result.written
        m = self.metrics
        m.objects_loaded.labels(self.db, instance).inc()
        m.entries_merged.labels(self.db).inc(result.entries)
        m.entries_written.labels(self.db).inc(result.written)
        m.merge_seconds.labels(self.db).observe(time.monotonic() - t0)
        m.observe_write_lock(self.db, result.longest_txn_seconds)
        if instance != self.instance:
            m.propagation_lag.labels(self.db).observe(st.lag_seconds)
        log.info(
            "db %s: merged %s (%d entries, %d written, %d txns, %.1f ms, lag %.1f ms)",
            self.db,
            name,
            result.entries,
            result.written,
            result.txns,
            (time.monotonic() - t0) * 1000,
            st.lag_seconds * 1000,
        )

    def _apply(self, data: IO[bytes]) -> MergeResult:
        """Merge a verified object: batched txns in native mode, one txn in shadow mode."""
        if self.shadow is None:
            data.seek(0)
            merger = Merger(
                self.lenv,
                deleted_cutoff_ns=self._deleted_cutoff_ns(),
                create_flags=self._create_flags,
                stop=self.stop_event,
            )
            return merger.merge(SnapshotReader(data, verified=True).dbis())
        for _attempt in range(MAX_MAP_GROWTHS):
            data.seek(0)
            try:
                result, update = self.shadow.merge(
                    self._until_stopped(SnapshotReader(data, verified=True).dbis()),
                    timestamp_ns=self.clock_ns(),
                    deleted_cutoff_ns=self._deleted_cutoff_ns(),
                    create_flags=self._create_flags,
                )
            except lmdb.MapFullError:
                self.lenv.grow_map()
                continue
            if update.changes:
                log.info(
                    "db %s: stamped %d local change(s) before merging",
                    self.db,
                    update.changes,
                )
            return result
        raise LmdbError(f"lmdb {self.db}: map still full after {MAX_MAP_GROWTHS} growths")

    def _until_stopped(
        self, dbis: Iterable[tuple[DbiInfo, Iterable[Entry]]]
    ) -> Iterator[tuple[DbiInfo, Iterable[Entry]]]:
        """The object's DBIs, raising SyncInterruptedError inside the merge once shutdown is asked.

        For the shadow merge, which runs in one write txn: raised from within it, it
        aborts that txn, and the object is merged again later. (The native Merger takes
        the stop event itself and checks it between batches.)
        """
        stop = self.stop_event

        def entries(items: Iterable[Entry]) -> Iterator[Entry]:
            for n, entry in enumerate(items):
                if n % STOP_CHECK_EVERY == 0 and stop.is_set():
                    raise SyncInterruptedError(f"db {self.db}: merge interrupted by shutdown")
                yield entry

        for info, items in dbis:
            yield info, entries(items)

    def _check_header(self, header: SnapshotHeader, name: SnapshotName) -> None:
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

    def _reject(self, instance: str, name: SnapshotName, reason: str) -> None:
        log.error("db %s: rejecting corrupt object %s: %s", self.db, name, reason)
        self.bad_objects.add(name.name)
        self.stats.objects_rejected += 1
        self.metrics.objects_rejected.labels(self.db, instance).inc()
        self.stats.rejected.append(name.name)
        self._forget_newest(instance, name)

    def _forget_newest(self, instance: str, name: SnapshotName) -> None:
        """Drop a name that cannot be merged, so a listing can promote an older one."""
        st = self.instances.get(instance)
        if st is not None:
            st.known.pop(name.name, None)
            if st.newest_seen == name:
                st.newest_seen = None
        self.queue.forget_instance(instance)
        self._relist = True  # a listing decides whether an older object of it exists

    def _advance_synced(self, txn_ids: list[int]) -> None:
        """Merge txns that directly follow the last synced txn hold no local change."""
        for txn_id in txn_ids:
            if txn_id == self.last_synced_txn + 1:
                self.last_synced_txn = txn_id
            else:
                break

    def _deleted_cutoff_ns(self) -> int:
        sweeper = self.config.sweeper
        if not sweeper.enabled:
            return 0
        return self.clock_ns() - int((sweeper.retention - sweeper.load_cutoff) * NS)

    def _create_flags(self, info: DbiInfo) -> int:
        opt = self.cfg.dbi_options.get(info.name.decode(errors="replace"))
        if opt is not None and opt.override_create_flags is not None:
            return opt.override_create_flags
        return info.flags

    # ------------------------------------------------------------------ uploading

    def _maybe_upload(self, *, only_once: bool = False) -> bool:
        """Upload when the LMDB changed (or a forced snapshot is due); False on failure."""
        if self.receive_only:
            return True
        if self.instance in self.waiting_for:
            self._log_limited(
                "wait-own",
                logging.INFO,
                "db %s: waiting to load own old snapshot before writing a new one",
                self.db,
            )
            return not only_once
        txn_id = self.lenv.last_txn_id()
        force_every = self.config.storage_force_snapshot_interval
        forced = bool(force_every) and (time.monotonic() - self._last_store_mono >= force_every)
        if txn_id <= self.last_synced_txn and not forced:
            return True
        if not only_once and not self._store_backoff.ready():
            return False
        return self._upload(
            only_once=only_once, forced=forced and txn_id <= self.last_synced_txn, want_txn=txn_id
        )

    def _next_timestamp(self) -> int:
        ts = max(self.clock_ns(), self._last_name_ts + 1)
        self._last_name_ts = ts
        return ts

    def _upload(self, *, only_once: bool, forced: bool, want_txn: int = 0) -> bool:
        t0 = time.monotonic()
        with tempfile.SpooledTemporaryFile(max_size=DUMP_SPOOL_BYTES) as spool:
            try:
                if self.shadow is not None and not self._shadow_has_news(forced):
                    return True
                name, dumped = self._dump_object(spool, want_txn, forced=forced)
            except LmdbError as exc:
                self._log_limited("dump", logging.ERROR, "db %s: cannot dump: %s", self.db, exc)
                self._store_backoff.failed()
                return False
            self._logged_once.discard("dump")
            if dumped.header.kind == KIND_DELTA and dumped.header.total_entries == 0:
                # the commits since the last upload were evsync's own merges
                self.last_synced_txn = max(self.last_synced_txn, dumped.header.txn_id)
                return True
            if dumped.header.total_entries == 0:  # an empty LMDB never uploads
                self._log_limited(
                    "empty", logging.INFO, "db %s: LMDB is empty, waiting for data", self.db
                )
                return True
            self._logged_once.discard("empty")
            size = spool.tell()
            t_dump = time.monotonic() - t0
            try:
                self._store_with_retry(name.name, spool)
            except StorageError as exc:
                self.health.failure("store", str(exc))
                self.stats.store_failures += 1
                self.metrics.store_failures.labels(self.db).inc()
                self._store_backoff.failed()
                log.error(
                    "db %s: could not store %s: %s; the change stays pending", self.db, name, exc
                )
                return False
        self.health.success("store")
        self._store_backoff.succeeded()
        self._recovered("store", "storing")
        if self.shadow is not None:
            self.shadow.dirty = False
        self.last_synced_txn = max(self.last_synced_txn, dumped.header.txn_id)
        self._last_store_mono = time.monotonic()
        self._chain_stored(dumped.header, size)
        self.stats.objects_stored += 1
        self.stats.bytes_up += size
        self.metrics.objects_stored.labels(self.db).inc()
        self.metrics.bytes_uploaded.labels(self.db).inc(size)
        self.metrics.dump_seconds.labels(self.db).observe(t_dump)
        self.stats.last_store_name = name.name
        self.stats.last_store_at = time.time()
        own = self.instances.setdefault(self.instance, InstanceState())
        own.merged = own.newest_seen = name
        if dumped.header.kind == KIND_FULL:
            self._notify_committed()  # a delta does not carry what was merged
        if self.lenv.last_txn_id() > self.last_synced_txn:
            self.queue.put(Hint(SOURCE_SELF, local=True))  # committed during the upload
        for callback in self.on_stored:
            try:
                callback(self.db, name.name, size)
            except Exception as exc:  # noqa: BLE001 - an announcement must never break the sync
                self._log_limited(
                    "on-stored",
                    logging.WARNING,
                    "db %s: announcing %s failed: %s",
                    self.db,
                    name,
                    exc,
                )
        log.info(
            "db %s: stored %s (%s, %d entries, %d bytes, txn %d, dump %.1f ms, total %.1f ms%s)",
            self.db,
            name,
            dumped.header.kind,
            dumped.stats.entries,
            size,
            dumped.header.txn_id,
            t_dump * 1000,
            (time.monotonic() - t0) * 1000,
            ", forced" if forced else "",
        )
        return True

    def _notify_committed(self) -> None:
        """Our object now carries every merged object's data: tell the cleaner."""
        merged = {
            inst: st.merged.timestamp_ns
            for inst, st in list(self.instances.items())
            if st.merged is not None and inst != self.instance
        }
        for callback in self.on_committed:
            callback(merged)

    def _shadow_has_news(self, forced: bool) -> bool:
        """Shadow mode: run main -> shadow; False when there is nothing new to upload."""
        assert self.shadow is not None
        t0 = time.monotonic()
        update = self.shadow.update_from_main(self.clock_ns())
        if not update.skipped:
            self.metrics.observe_write_lock(self.db, time.monotonic() - t0)
        if update.changes or self.shadow.dirty or forced:
            return True
        # The commits since the last upload changed no value (or were our own merges).
        self.last_synced_txn = max(self.last_synced_txn, self.shadow.synced_txn)
        return False

    def _dump_object(
        self, spool: IO[bytes], want_txn: int, *, forced: bool
    ) -> tuple[SnapshotName, DumpResult]:
        """A delta when the chain allows one and it is small enough, else a full object."""
        base = self.chain.base_ns
        if not forced and self.shadow is None and base is not None and self.chain.delta_allowed():
            delta = self._dump_caught_up(
                spool,
                want_txn,
                lambda ts: dump_native_delta(
                    self.lenv,
                    spool,
                    db=self.db,
                    instance=self.instance,
                    timestamp_ns=ts,
                    base_timestamp_ns=base,
                    since_txn=self.chain.shipped_txn,
                    skip_txns=self._merge_txns,
                    max_entries=chain.MAX_DELTA_ENTRIES,
                ),
            )
            if delta is not None:
                ts = delta.header.timestamp_ns
                extras = (delta_extra(base),)
                return SnapshotName.build(self.db, self.instance, ts, extras=extras), delta
        dumped = self._dump_full(spool, want_txn)
        return SnapshotName.build(self.db, self.instance, dumped.header.timestamp_ns), dumped

    def _chain_stored(self, header: SnapshotHeader, size: int) -> None:
        """Move the delta chain on; merge txns the new object covers are forgotten."""
        if header.kind == KIND_DELTA:
            self.chain.stored_delta(header.timestamp_ns, header.txn_id, size)
            self.metrics.deltas_stored.labels(self.db).inc()
        elif self.shadow is None:
            self.chain.stored_full(header.timestamp_ns, header.txn_id, size)
        self._merge_txns = {t for t in self._merge_txns if t > self.chain.shipped_txn}

    def _dump_full(self, spool: IO[bytes], want_txn: int) -> DumpResult:
        """Write a full object into ``spool``."""
        if self.shadow is not None:
            return dump_shadow(
                self.lenv,
                spool,
                db=self.db,
                instance=self.instance,
                timestamp_ns=self._next_timestamp(),
                txn_id=self.shadow.synced_txn,
            )
        dumped = self._dump_caught_up(
            spool,
            want_txn,
            lambda ts: dump_native(
                self.lenv, spool, db=self.db, instance=self.instance, timestamp_ns=ts
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

    def _store_with_retry(self, name: str, spool: IO[bytes]) -> None:
        cfg = self.config
        attempts: tenacity.stop.stop_base = (
            tenacity.stop_never
            if cfg.storage_retry_forever
            else tenacity.stop_after_attempt(cfg.storage_retry_count)
        )
        stop = attempts | _StopOnEvent(self.stop_event)

        def attempt() -> None:
            spool.seek(0)
            self.store.store(name, faults.reading(spool, "upload"))
            faults.point("stored")

        def before_sleep(state: tenacity.RetryCallState) -> None:
            self.stats.store_failures += 1
            self.metrics.store_failures.labels(self.db).inc()
            exc = state.outcome.exception() if state.outcome else None
            self.health.failure("store", str(exc))
            self._log_limited(
                "store",
                logging.WARNING,
                "db %s: store of %s failed (attempt %d): %s; retrying",
                self.db,
                name,
                state.attempt_number,
                exc,
            )

        retrying = tenacity.Retrying(
            stop=stop,
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
        """Retry sleeps end early on shutdown."""
        self.stop_event.wait(seconds)

    # ------------------------------------------------------------------ helpers

    def _log_limited(self, key: str, level: int, msg: str, *args: object) -> None:
        """Log a repeating condition once per streak; a success clears it elsewhere."""
        if key in self._logged_once and level < logging.ERROR:
            log.debug(msg, *args)
            return
        self._logged_once.add(key)
        log.log(level, msg, *args)

    def _recovered(self, key: str, what: str) -> None:
        """End a streak started by :meth:`_log_limited`, saying so once."""
        if key in self._logged_once:
            self._logged_once.discard(key)
            log.info("db %s: %s works again", self.db, what)

    def status(self) -> dict[str, object]:
        """Plain data describing this db's sync state."""
        now_ns = self.clock_ns()
        return {
            "db": self.db,
            "instance": self.instance,
            "last_txn_id": self.lenv.last_txn_id(),
            "last_synced_txn_id": self.last_synced_txn,
            "last_upload": self.stats.last_store_name,
            "startup_done": self.stats.startup_done,
            "rejoin_blocked": self.guard.blocked_reason,
            "waiting_for": sorted(self.waiting_for),
            "instances": {
                inst: {
                    "newest_seen": st.newest_seen.name if st.newest_seen else None,
                    "merged": st.merged.name if st.merged else None,
                    "merged_age_seconds": (now_ns - st.merged.timestamp_ns) / NS
                    if st.merged
                    else None,
                    "lag_seconds": st.lag_seconds,
                }
                for inst, st in sorted(self.instances.items())
            },
            "hints": {
                "received": dict(self.queue.received),
                "first": dict(self.queue.first),
            },
            "health": self.health.snapshot(),
            "stats": {k: v for k, v in vars(self.stats).items() if k != "rejected"},
            "rejected_objects": list(self.stats.rejected[-20:]),
        }


class _StopOnEvent(tenacity.stop.stop_base):
    """Stop retrying once shutdown was requested."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self.event.is_set()


def _stream_size(data: IO[bytes]) -> int:
    data.seek(0, 2)
    size = data.tell()
    data.seek(0)
    return size
