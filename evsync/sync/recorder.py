"""One db's bookkeeping: every sync event updates stats, metrics, health and the log here.

The receiver, the sender and the loop say *what happened* (stored, merged, rejected,
a fetch failed ...) with one call each; this module decides which counter moves, which
health check flips, and which line is logged, so the pipeline stays free of it. (Lines
that only narrate, such as the startup listing's summary, are logged where they arise.)

Repeating conditions are logged once per streak (:meth:`Recorder.log_limited`); the
success that ends a streak logs "... works again" once (:meth:`Recorder.recovered`).
The loop thread makes every call except :meth:`Recorder.lister_result`, which the
lister thread makes; the counters it moves are only read for display.

May call: the metrics registry, the health tracker and logging. Must not: decide
anything about the sync (it only reports what happened).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from evsync.config import Config
from evsync.errors import (
    EvsyncError,
    ObjectTooLargeError,
    PermanentLmdbError,
    StorageConfigError,
)
from evsync.health import HealthTracker
from evsync.metrics import INLINE_INVALID, INLINE_MERGED, INLINE_UNUSED, Metrics
from evsync.snapshot.base import KIND_DELTA, SnapshotHeader
from evsync.snapshot.name import SnapshotName

if TYPE_CHECKING:
    from evsync.lmdb.merge import MergeResult
    from evsync.sweeper import SweepStats, SweepStep

# event lines name the package ("evsync.sync"), not this bookkeeping module
log = logging.getLogger("evsync.sync")

# /status lists this many of the most recently rejected objects
STATUS_REJECTED = 20
# Two instances sharing a name collide on every upload; one line per this many seconds.
NAME_CONFLICT_LOG_INTERVAL = 300.0
# "vanished before fetched" is said at most this often (the metric counts every one)
VANISHED_LOG_SECONDS = 60.0

# an unusable carried copy is said again for the same object at most this often
CARRIED_LOG_INTERVAL = 60.0

# Why an object was rejected, the word its log line gives: "rejecting <kind> object"
REJECT_CORRUPT = "corrupt"  # fails verification (truncated, bad checksum, bad order ...)
REJECT_TOO_LARGE = "oversized"  # an entry over the entry cap, or inflates past the cap
REJECT_UNMERGEABLE = "unmergeable"  # verified, but this LMDB can never take it


def rejection_kind(exc: Exception) -> str:
    """The REJECT_* word for the error that rejects an object."""
    if isinstance(exc, ObjectTooLargeError):
        return REJECT_TOO_LARGE
    if isinstance(exc, PermanentLmdbError):
        return REJECT_UNMERGEABLE
    return REJECT_CORRUPT


@dataclass
class SyncStats:
    """Counters for /status (the metrics count the same events for Prometheus)."""

    objects_stored: int = 0
    objects_loaded: int = 0
    objects_rejected: int = 0
    objects_too_old: int = 0
    store_failures: int = 0
    load_failures: int = 0
    list_failures: int = 0
    name_conflicts: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    entries_merged: int = 0
    entries_written: int = 0
    last_store_name: str | None = None
    last_store_at: float | None = None
    startup_done: bool = False
    rejected: list[str] = field(default_factory=list)


class Recorder:
    """Stats, metrics, health and rate-limited log lines of one db, one method per event."""

    def __init__(self, db: str, config: Config, metrics: Metrics) -> None:
        self.db = db
        self.metrics = metrics
        self.stats = SyncStats()
        self.health = HealthTracker(
            {
                "list": config.health.storage_list,
                "load": config.health.storage_load,
                "store": config.health.storage_store,
            }
        )
        self._clock_skew_threshold = config.clock_skew_threshold
        self._logged_once: set[str] = set()
        self._last_logged: dict[str, tuple[float, str]] = {}
        self._vanished = 0
        self._vanished_logged_at = -math.inf
        #: metric children of this db, made once: ``labels()`` costs more than the
        #: update, and a received delta updates eight (docs/benchmarks.md)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _child(self, family: Any, *labels: str) -> Any:
        """``family.labels(self.db, *labels)``, made once."""
        key = (id(family), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(self.db, *labels)
        return child

    # ------------------------------------------------------------------ log streaks

    def log_limited(self, key: str, level: int, msg: str, *args: object) -> None:
        """Log a repeating condition once per streak (errors every time)."""
        if key in self._logged_once and level < logging.ERROR:
            log.debug(msg, *args)
            return
        self._logged_once.add(key)
        log.log(level, msg, *args)

    def recovered(self, key: str, what: str) -> None:
        """End a streak started by :meth:`log_limited`, saying so once."""
        if key in self._logged_once:
            self._logged_once.discard(key)
            log.info("db %s: %s works again", self.db, what)

    def log_every(self, key: str, interval: float, level: int, msg: str, *args: object) -> None:
        """Log a condition that lasts: at once, then at most every ``interval`` seconds
        while the line stays the same (a new line is logged at once)."""
        line = msg % args
        last = self._last_logged.get(key)
        now = time.monotonic()
        if last is not None and last[1] == line and now - last[0] < interval:
            log.debug(msg, *args)
            return
        self._last_logged[key] = (now, line)
        log.log(level, msg, *args)

    def end_streak(self, key: str) -> None:
        """End a streak quietly (the condition is gone; nothing worth a line)."""
        self._logged_once.discard(key)
        self._last_logged.pop(key, None)

    def step_failed(self, what: str, exc: Exception, delay: float) -> None:
        """A loop step raised: one error line, a traceback only for what is a bug."""
        log.error(
            "db %s: %s failed (%s); retrying in %.1fs",
            self.db,
            what,
            exc,
            delay,
            exc_info=not isinstance(exc, EvsyncError),
        )

    # ------------------------------------------------------------------ listing

    def listed(self) -> None:
        """A listing by the loop succeeded."""
        self.health.success("list")
        self.end_streak("list-config")
        self.recovered("list", "listing")

    def list_failed(self, exc: Exception) -> None:
        """A listing by the loop failed: a warning once per streak, or an error once when
        only an operator can fix it (no such bucket, access denied, bad credentials)."""
        self.health.failure("list", str(exc))
        self._count_list_failure()
        if isinstance(exc, StorageConfigError):
            # only an operator fixes it: said once, at error level, however long it lasts
            self.log_every(
                "list-config",
                math.inf,
                logging.ERROR,
                "db %s: cannot list the bucket: %s",
                self.db,
                exc,
            )
            self._logged_once.add("list")  # its end is said as "listing works again"
            return
        self.log_limited("list", logging.WARNING, "db %s: listing failed: %s", self.db, exc)

    def lister_result(self, ok: bool) -> None:
        """The lister thread's periodic listing succeeded or failed (it logs itself)."""
        if ok:
            self.health.success("list")
        else:
            self.health.failure("list", "listing failed")
            self._count_list_failure()

    def _count_list_failure(self) -> None:
        self.stats.list_failures += 1
        self.metrics.list_failures.labels(self.db).inc()

    def clock_skew(self, instance: str, name: SnapshotName, ahead: float) -> None:
        """A remote object's timestamp is ``ahead`` seconds past this host's clock."""
        self._child(self.metrics.clock_skew, instance).set(ahead)
        threshold = self._clock_skew_threshold
        if threshold and ahead > threshold:
            self.metrics.clock_skew_warnings.labels(self.db, instance).inc()
            self.log_limited(
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
            self.end_streak(f"skew-{instance}")

    # ------------------------------------------------------------------ receiving

    def fetched(self, instance: str, size: int) -> None:
        """An object of ``instance`` was fetched (``size`` bytes). The load check turns
        healthy once it is merged or rejected: a merge that keeps failing keeps it failing."""
        self.recovered(f"load-{instance}", f"loading objects of {instance}")
        self.stats.bytes_down += size
        self.metrics.bytes_downloaded.labels(self.db).inc(size)

    def carried_merged(self) -> None:
        """An object was merged from the notification that carried it, without a GET."""
        self._child(self.metrics.inline_objects, INLINE_MERGED).inc()

    def carried_invalid(self, name: SnapshotName, exc: Exception) -> None:
        """Bytes a notification carried for ``name`` failed verification (or the LMDB can
        never take them); they are dropped, and the bucket's copy, once a listing or its
        announcement names it, decides what is corrupt."""
        self.metrics.inline_objects.labels(self.db, INLINE_INVALID).inc()
        self.log_every(
            "carried-invalid",
            CARRIED_LOG_INTERVAL,
            logging.WARNING,
            "db %s: the copy of %s carried by a notification is unusable (%s); dropped, "
            "the bucket's copy is fetched once it is named",
            self.db,
            name,
            exc,
        )

    def carried_unused(self, count: int) -> None:
        """Carried objects dropped unmerged (pushed out, or passed by the position)."""
        self.metrics.inline_objects.labels(self.db, INLINE_UNUSED).inc(count)

    def fetch_failed(self, instance: str, name: SnapshotName, exc: Exception) -> None:
        """Fetching an object failed; it is tried again after a backoff."""
        self.health.failure("load", str(exc))
        self.stats.load_failures += 1
        self.metrics.load_failures.labels(self.db, instance).inc()
        self.log_limited(
            f"load-{instance}", logging.WARNING, "db %s: cannot fetch %s: %s", self.db, name, exc
        )

    def vanished(self, name: SnapshotName) -> None:
        """A listed or announced object was gone when fetched (cleaned up, say, or a
        forged hint): counted, and said at most once a minute (forged hints come fast)."""
        self.metrics.objects_vanished.labels(self.db).inc()
        self._vanished += 1
        now = time.monotonic()
        if now - self._vanished_logged_at < VANISHED_LOG_SECONDS:
            return
        self._vanished_logged_at = now
        log.info(
            "db %s: %s vanished before it was fetched; listing again (%d vanished so far)",
            self.db,
            name,
            self._vanished,
        )

    def forget_instance(self, instance: str) -> None:
        """An instance known from hints only turned out not to exist: drop its metric
        series and log streaks, so forged names cannot grow either."""
        m = self.metrics
        for family in (m.clock_skew, m.clock_skew_warnings, m.load_failures):
            with contextlib.suppress(KeyError):
                family.remove(self.db, instance)
            self._children.pop((id(family), (instance,)), None)
        for key in (f"skew-{instance}", f"load-{instance}", f"merge-{instance}"):
            self.end_streak(key)

    def rejected(
        self, instance: str, name: SnapshotName, reason: str, kind: str = REJECT_CORRUPT
    ) -> None:
        """An object failed verification, or can never merge (``kind``, a REJECT_* word):
        it is marked bad and never fetched again by this process."""
        log.error("db %s: rejecting %s object %s: %s", self.db, kind, name, reason)
        if kind == REJECT_CORRUPT:
            self.health.success("load")  # loading works; this object is bad
        else:
            # too large or unmergeable *here* (a cap, max_dbs, shadow limits): this
            # host's settings, so every peer's object may share its fate
            self.health.failure("load", f"cannot merge {name}: {reason}")
        self.stats.objects_rejected += 1
        self.metrics.objects_rejected.labels(self.db, instance).inc()
        self.stats.rejected.append(name.name)
        del self.stats.rejected[:-STATUS_REJECTED]

    def name_conflict(self, name: SnapshotName, their_host: str, our_host: str) -> None:
        """A valid object under this instance's name that this process did not store."""
        self.metrics.name_conflicts.labels(self.db).inc()
        self.stats.name_conflicts += 1
        where = f"by host {their_host!r} (this host is {our_host!r})"
        self.log_every(
            "name-conflict",
            NAME_CONFLICT_LOG_INTERVAL,
            logging.ERROR,
            "db %s: %s was stored %s under this instance's name %r: two evsync instances "
            "share one name; give each its own `instance`",
            self.db,
            name,
            where,
            name.instance,
        )

    def too_old(self, name: SnapshotName, age_days: float, limit_days: float) -> None:
        """An object older than the tombstone retention is never merged (told once per object)."""
        log.warning(
            "db %s: not merging %s: it is %.2f days old, older than the tombstone retention "
            "minus the load cutoff (%.2f days); records deleted since may have lost their "
            "tombstones, and it would bring them back",
            self.db,
            name,
            age_days,
            limit_days,
        )
        self.stats.objects_too_old += 1
        self.metrics.objects_too_old.labels(self.db, name.instance).inc()

    def merge_failed(self, instance: str, name: SnapshotName, exc: Exception) -> None:
        """Writing a verified object into the LMDB failed (a full disk, say). It counts
        against the load check: nothing of the bucket reaches the LMDB while it lasts."""
        self.health.failure("load", f"merge of {name} failed: {exc}")
        self.metrics.merge_failures.labels(self.db).inc()
        self.log_limited(
            f"merge-{instance}", logging.ERROR, "db %s: merge of %s failed: %s", self.db, name, exc
        )

    def merge_interrupted(self, name: SnapshotName) -> None:
        """Shutdown stopped a merge; its open txn was aborted."""
        log.info("db %s: merge of %s interrupted by shutdown", self.db, name)

    def merged(  # noqa: PLR0917 - one event, told in full
        self,
        instance: str,
        name: SnapshotName,
        result: MergeResult,
        seconds: float,
        lag_seconds: float,
        own: bool,
    ) -> None:
        """An object was merged into the LMDB."""
        self.health.success("load")
        self.recovered(f"merge-{instance}", f"merging objects of {instance}")
        self.end_streak(f"chain-{instance}")
        self.stats.objects_loaded += 1
        self.stats.entries_merged += result.entries
        self.stats.entries_written += result.written
        m = self.metrics
        self._child(m.objects_loaded, instance).inc()
        self._child(m.entries_merged).inc(result.entries)
        self._child(m.entries_written).inc(result.written)
        self._child(m.merge_seconds).observe(seconds)
        m.observe_write_lock(self.db, result.longest_txn_seconds)
        if not own:
            self._child(m.propagation_lag).observe(lag_seconds)
        log.info(
            "db %s: merged %s (%d entries, %d written, %d txns, %.1f ms, lag %.1f ms)",
            self.db,
            name,
            result.entries,
            result.written,
            result.txns,
            seconds * 1000,
            lag_seconds * 1000,
        )

    def chain_stuck(self, instance: str, newest: SnapshotName, merged: SnapshotName | None) -> None:
        """A delta chain cannot be followed to ``newest``: a delta it builds on is gone."""
        self.log_limited(
            f"chain-{instance}",
            logging.WARNING,
            "db %s: cannot reach %s: an object it builds on is missing or unusable; %s, "
            "waiting for the next full object of %s",
            self.db,
            newest,
            f"merged up to {merged}" if merged is not None else "nothing of it merged",
            instance,
        )

    # ------------------------------------------------------------------ sending

    def dump_failed(self, exc: Exception) -> None:
        """The LMDB could not be dumped; the change stays pending. It counts against the
        store check: nothing reaches the bucket while it lasts."""
        self.health.failure("store", f"cannot dump: {exc}")
        self.metrics.dump_failures.labels(self.db).inc()
        self.log_limited("dump", logging.ERROR, "db %s: cannot dump: %s", self.db, exc)

    def dumped(self, *, empty: bool) -> None:
        """A dump worked; ``empty``: the LMDB holds nothing, so nothing is uploaded."""
        self.end_streak("dump")
        if empty:
            self.log_limited(
                "empty", logging.INFO, "db %s: LMDB is empty, waiting for data", self.db
            )
        else:
            self.end_streak("empty")

    def change_finder_served(self, path: str) -> None:
        """A delta's changes were found by ``path`` (pagewalk or scan)."""
        self.metrics.change_finder_deltas.labels(self.db, path).inc()

    def change_finder_fallback(self, reason: str) -> None:
        """The page walk could not serve a delta (the finder logs each reason once)."""
        self.metrics.change_finder_fallbacks.labels(self.db, reason).inc()

    def store_retrying(self, name: str, attempt: int, exc: BaseException | None) -> None:
        """A store attempt failed; it is retried."""
        self._count_store_failure(exc)
        self.log_limited(
            "store",
            logging.WARNING,
            "db %s: store of %s failed (attempt %d): %s; retrying",
            self.db,
            name,
            attempt,
            exc,
        )

    def store_failed(self, name: SnapshotName, exc: Exception) -> None:
        """A store failed for good; the change stays pending and is tried again later."""
        self._count_store_failure(exc)
        log.error("db %s: could not store %s: %s; the change stays pending", self.db, name, exc)

    def _count_store_failure(self, exc: BaseException | None) -> None:
        self.health.failure("store", str(exc))
        self.stats.store_failures += 1
        self.metrics.store_failures.labels(self.db).inc()

    def stored(  # noqa: PLR0917 - one event, told in full
        self,
        name: SnapshotName,
        header: SnapshotHeader,
        entries: int,
        size: int,
        dump_seconds: float,
        total_seconds: float,
        forced: bool,
    ) -> None:
        """An object was stored in the bucket."""
        self.health.success("store")
        self.recovered("store", "storing")
        self.stats.objects_stored += 1
        self.stats.bytes_up += size
        self.stats.last_store_name = name.name
        self.stats.last_store_at = time.time()
        m = self.metrics
        m.objects_stored.labels(self.db).inc()
        m.bytes_uploaded.labels(self.db).inc(size)
        m.dump_seconds.labels(self.db).observe(dump_seconds)
        if header.kind == KIND_DELTA:
            m.deltas_stored.labels(self.db).inc()
        log.info(
            "db %s: stored %s (%s, %d entries, %d bytes, txn %d, dump %.1f ms, total %.1f ms%s)",
            self.db,
            name,
            header.kind,
            entries,
            size,
            header.txn_id,
            dump_seconds * 1000,
            total_seconds * 1000,
            ", forced" if forced else "",
        )

    def checkpoint_stored(
        self, name: SnapshotName, header: SnapshotHeader, size: int, dump_seconds: float
    ) -> None:
        """A checkpoint was stored (its dump ran in a child process)."""
        self.recovered("checkpoint", "writing checkpoints")
        self.stats.bytes_up += size
        self.metrics.checkpoints_stored.labels(self.db).inc()
        self.metrics.bytes_uploaded.labels(self.db).inc(size)
        log.info(
            "db %s: stored checkpoint %s (%d entries, %d bytes, txn %d, dump %.1f ms in a "
            "child process)",
            self.db,
            name,
            header.total_entries,
            size,
            header.txn_id,
            dump_seconds * 1000,
        )

    def checkpoint_failed(self, name: SnapshotName, stage: str, error: str, delay: float) -> None:
        """A checkpoint failed; the chain goes on and a later one dumps afresh."""
        self.metrics.checkpoint_failures.labels(self.db, stage).inc()
        self.log_limited(
            "checkpoint",
            logging.WARNING,
            "db %s: checkpoint %s failed (%s): %s; the delta chain goes on, the next "
            "checkpoint dumps afresh in %.1fs",
            self.db,
            name,
            stage,
            error,
            delay,
        )

    def checkpoint_skipped(self, instance: str, name: SnapshotName) -> None:
        """A checkpoint of ``instance`` was stepped over without a fetch."""
        self.metrics.checkpoints_skipped.labels(self.db, instance).inc()
        log.debug("db %s: stepped over checkpoint %s: at or past its point", self.db, name)

    def announce_failed(self, name: SnapshotName, exc: Exception) -> None:
        """A stored-object callback (an MQTT announcement) raised; the sync goes on."""
        self.log_limited(
            "on-stored", logging.WARNING, "db %s: announcing %s failed: %s", self.db, name, exc
        )

    # ------------------------------------------------------------------ the local LMDB

    def write_lock(self, seconds: float) -> None:
        """evsync held the LMDB write lock this long in one txn."""
        self.metrics.observe_write_lock(self.db, seconds)

    def sweep_step(self, step: SweepStep) -> None:
        """One sweeper txn ran."""
        self.write_lock(step.txn_seconds)
        if step.removed:
            self.metrics.sweeper_removed.labels(self.db).inc(step.removed)

    def sweep_done(self, st: SweepStats) -> None:
        """A sweeper pass over every DBI finished."""
        m = self.metrics
        m.sweeper_runs.labels(self.db).inc()
        m.sweeper_seconds.labels(self.db).observe(st.seconds)
        m.sweeper_entries.labels(self.db, "live").set(st.live)
        m.sweeper_entries.labels(self.db, "deleted").set(st.deleted)
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
