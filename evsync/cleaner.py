"""Keeps the bucket bounded: deletes superseded snapshots under Lightning Stream's safety rules."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from evsync.config import CleanupConfig
from evsync.errors import StorageError
from evsync.metrics import Metrics
from evsync.snapshot.name import (
    EXT_EVSYNC,
    EXT_LIGHTNINGSTREAM,
    SnapshotName,
    db_prefix,
    try_parse,
)
from evsync.storage.base import BlobStore, ObjectInfo

log = logging.getLogger(__name__)

NS = 1_000_000_000
# Each pass waits interval × uniform(JITTER_MIN, JITTER_MAX) (LS: ±20 %), so the
# cleaners of many instances do not list the bucket in lockstep.
JITTER_MIN = 0.8
JITTER_MAX = 1.2
# Label values of metrics.cleaner_deleted.
REASON_NEWER = "newer_snapshot"
REASON_STALE = "stale_instance"


@dataclass
class CleanResult:
    """What one pass did; ``listed == kept + len(deleted) + len(stale_deleted) + len(failed)``.

    ``listed`` counts only valid snapshot names of this db; ``failed`` holds the names whose
    delete raised (they stay, and the next pass tries again).
    """

    listed: int = 0
    kept: int = 0
    deleted: list[str] = field(default_factory=list)
    stale_deleted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


@dataclass
class _Plan:
    """The decisions of one pass, before any delete."""

    superseded: list[SnapshotName] = field(default_factory=list)
    stale: list[SnapshotName] = field(default_factory=list)


class Cleaner:
    """The cleaner of one db: :meth:`run` in its own thread, :meth:`run_once` in tests.

    It cleans every instance's objects, not only ours, as LS does; several cleaners may
    work on one bucket at once because deleting a missing object is not an error.
    """

    def __init__(
        self,
        store: BlobStore,
        db: str,
        cfg: CleanupConfig,
        *,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        rejected: Callable[[str], bool] | None = None,
    ) -> None:
        self.store = store
        #: names the syncer rejected as corrupt: never an instance's newest here either,
        #: or a junk object named far ahead would get the instance's real objects deleted
        self.rejected = rejected or (lambda _name: False)
        self.db = db
        self.cfg = cfg
        self.metrics = metrics
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter only
        # name -> when this process first listed it; the object's own timestamp cannot be
        # used, because multi-site replication may make an old name appear late.
        self._first_seen: dict[str, float] = {}
        self._ignored: set[str] = set()  # invalid names, logged once each
        self._committed: dict[str, int] = {}  # instance -> newest merge-proven timestamp_ns
        self._committed_lock = threading.Lock()  # set_committed comes from the syncer thread
        self._pass_lock = threading.Lock()  # _first_seen belongs to one pass at a time
        self.last_result: CleanResult | None = None
        self.last_run_at: float | None = None

    # ------------------------------------------------------------------ inputs

    def set_committed(self, merged: Mapping[str, int]) -> None:
        """Record that our latest stored object carries these instances' data up to these
        timestamps (LS ``SetCommitted``); a lower value never lowers what was recorded."""
        with self._committed_lock:
            for instance, ts in merged.items():
                # Data merged once stays in our LMDB, so a proof never expires.
                if ts > self._committed.get(instance, -1):
                    self._committed[instance] = ts

    def _committed_snapshot(self) -> dict[str, int]:
        with self._committed_lock:
            return dict(self._committed)

    # ------------------------------------------------------------------ one pass

    def run_once(self) -> CleanResult:
        """List, decide and delete once; raises StorageError when the listing fails.

        A failed delete is counted and logged (once per pass) and the pass goes on.
        """
        with self._pass_lock:
            objects = self.store.list(db_prefix(self.db))
            now = self.clock()
            names = self._own_snapshots(objects)
            plan = self._plan(names, now)
            result = CleanResult(listed=len(names))
            self._execute(plan, result)
            result.kept = len(names) - len(plan.superseded) - len(plan.stale)
            self.metrics.cleaner_runs.labels(self.db).inc()
            self.last_result, self.last_run_at = result, now
        self._log_result(result)
        return result

    def _own_snapshots(self, objects: list[ObjectInfo]) -> list[SnapshotName]:
        """Valid snapshot names of this db; other names are never touched."""
        names: list[SnapshotName] = []
        present: set[str] = set()
        for obj in objects:
            parsed = try_parse(obj.name)
            # The prefix already excludes "main-2__…" for db "main"; the db check guards
            # against a backend whose listing is looser than asked.
            if parsed is None or parsed.db != self.db:
                self._note_ignored(obj.name, "not a snapshot of this db")
                continue
            if self.rejected(parsed.name):
                self._note_ignored(obj.name, "rejected as corrupt, never counted as newest")
                continue
            names.append(parsed)
            present.add(parsed.name)
        self._forget_missing(present, {o.name for o in objects})
        return names

    def _note_ignored(self, name: str, why: str) -> None:
        if name not in self._ignored:
            self._ignored.add(name)
            log.debug("db %s: cleaner: ignoring %s, %s", self.db, name, why)

    def _forget_missing(self, present: set[str], listed: set[str]) -> None:
        """Drop state of names gone from the listing, so memory follows the bucket."""
        for gone in set(self._first_seen) - present:
            del self._first_seen[gone]
        self._ignored &= listed

    def _plan(self, names: list[SnapshotName], now: float) -> _Plan:
        """Apply LS's rules to this pass's listing (newest first per group: an instance's
        objects, or, for an instance writing both formats, its ``.evs.zst`` chain and its
        ``.pb.gz`` snapshots apart; see :func:`_groups`)."""
        group = _groups(names)
        newest_first = sorted(names, key=lambda n: (n.timestamp_ns, n.name), reverse=True)
        marked: set[str] = set()  # groups whose newest object is already kept
        candidates = self._skip_recent(newest_first, now, marked, group)
        chains = _chains(names, group)
        plan = _Plan()
        too_old: list[SnapshotName] = []
        stale_before_ns = int(now * NS) - int(self.cfg.remove_old_instances_interval * NS)
        for name in candidates:
            if group[name.name] in marked:
                if name.name not in chains:  # a newcomer needs the newest full object and
                    plan.superseded.append(name)  # the deltas after it
                continue
            marked.add(group[name.name])  # the newest candidate of its group stays...
            if name.timestamp_ns < stale_before_ns:
                too_old.append(name)  # ...unless the instance is dead and merged into ours
        committed = self._committed_snapshot()
        stale_groups = {
            group[n.name] for n in too_old if committed.get(n.instance, -1) >= n.timestamp_ns
        }
        superseded = set(plan.superseded)
        plan.stale = [
            n for n in candidates if group[n.name] in stale_groups and n not in superseded
        ]
        return plan

    def _skip_recent(
        self,
        newest_first: list[SnapshotName],
        now: float,
        marked: set[str],
        group: Mapping[str, str],
    ) -> list[SnapshotName]:
        """Drop names that are new or inside must_keep; the latter mark their instance."""
        candidates: list[SnapshotName] = []
        for name in newest_first:
            first = self._first_seen.get(name.name)
            if first is None:
                # A peer that has just listed it may be fetching it; and it must not count
                # as the newest yet, so the previous newest survives one more interval.
                self._first_seen[name.name] = now
            elif now - first <= self.cfg.must_keep_interval:
                marked.add(group[name.name])
            else:
                candidates.append(name)
        return candidates

    def _execute(self, plan: _Plan, result: CleanResult) -> None:
        """Delete what the plan says; failures are collected, never raised."""
        first_error: StorageError | None = None
        for reason, names, done in (
            (REASON_NEWER, plan.superseded, result.deleted),
            (REASON_STALE, plan.stale, result.stale_deleted),
        ):
            for name in names:
                error = self._delete(name, reason)
                if error is None:
                    done.append(name.name)
                else:
                    result.failed.append(name.name)
                    first_error = first_error or error
        if first_error is not None:
            # One line per pass: a bucket refusing deletes must not flood the log.
            log.warning(
                "db %s: cleaner: %d delete(s) failed, first %s: %s; the next pass retries",
                self.db,
                len(result.failed),
                result.failed[0],
                first_error,
            )

    def _delete(self, name: SnapshotName, reason: str) -> StorageError | None:
        try:
            self.store.delete(name.name)
        except StorageError as exc:
            self.metrics.cleaner_failures.labels(self.db).inc()
            return exc
        self._first_seen.pop(name.name, None)
        self.metrics.cleaner_deleted.labels(self.db, reason).inc()
        if reason == REASON_STALE:
            # Rare and irreversible: an instance's last object goes, so say whose and why.
            log.info(
                "db %s: cleaner: deleted %s of stale instance %s (merge proven)",
                self.db,
                name.name,
                name.instance,
            )
        return None

    def _log_result(self, result: CleanResult) -> None:
        if result.deleted or result.stale_deleted:
            log.info(
                "db %s: cleaner: deleted %d older and %d stale-instance object(s), kept %d",
                self.db,
                len(result.deleted),
                len(result.stale_deleted),
                result.kept,
            )

    # ------------------------------------------------------------------ the loop

    def next_interval(self) -> float:
        """The jittered wait before the next pass, in seconds."""
        return self.cfg.interval * self.rng.uniform(JITTER_MIN, JITTER_MAX)

    def run(self, stop_event: threading.Event) -> None:
        """Clean every jittered interval until ``stop_event`` is set; never raises."""
        while not stop_event.wait(self.next_interval()):
            self._guarded_pass()

    def _guarded_pass(self) -> None:
        try:
            self.run_once()
        except StorageError as exc:
            self.metrics.cleaner_failures.labels(self.db).inc()
            log.warning(
                "db %s: cleaner: listing %s* failed: %s; the next pass retries",
                self.db,
                db_prefix(self.db),
                exc,
            )
        except Exception:
            # A bug in one pass must not end the cleaner thread; the traceback finds it.
            self.metrics.cleaner_failures.labels(self.db).inc()
            log.exception("db %s: cleaner pass failed unexpectedly", self.db)

    def status(self) -> dict[str, Any]:
        """Plain data for /status."""
        r = self.last_result
        return {
            "last_run_at": self.last_run_at,
            "last_listed": r.listed if r else None,
            "last_deleted": len(r.deleted) + len(r.stale_deleted) if r else None,
            "last_failed": len(r.failed) if r else None,
        }


def _groups(names: list[SnapshotName]) -> dict[str, str]:
    """name -> the group whose newest object (and, for ``.evs.zst``, whose chain) cleanup
    keeps: the instance, except that an instance writing both formats keeps its
    ``.evs.zst`` chain (what evsync peers follow) and its newest ``.pb.gz`` (what LS
    instances read) apart. An instance whose newest ``.pb.gz`` is LS's own (no evsync
    copy marker) and newer than all its ``.evs.zst`` went back to LS: one group again,
    so the stale chain goes as any superseded object (docs/lightningstream.md)."""
    newest_evs: dict[str, int] = {}
    newest_ls: dict[str, SnapshotName] = {}
    for n in names:
        if n.is_ls:
            if n.instance not in newest_ls or n.name > newest_ls[n.instance].name:
                newest_ls[n.instance] = n
        else:
            newest_evs[n.instance] = max(newest_evs.get(n.instance, -1), n.timestamp_ns)
    rolled_back = {
        inst
        for inst, ls in newest_ls.items()
        if not ls.is_copy and ls.timestamp_ns > newest_evs.get(inst, -1)
    }
    return {
        n.name: n.instance
        if n.instance in rolled_back
        else f"{n.instance}.{EXT_LIGHTNINGSTREAM if n.is_ls else EXT_EVSYNC}"
        for n in names
    }


def _chains(names: list[SnapshotName], group: Mapping[str, str]) -> set[str]:
    """Per group, the newest full object and every object after it (DESIGN §7): what a
    new instance needs to reach the newest state, which cleanup therefore keeps."""
    newest_full: dict[str, int] = {}
    for name in names:
        g = group[name.name]
        if not name.is_delta and name.timestamp_ns > newest_full.get(g, -1):
            newest_full[g] = name.timestamp_ns
    return {
        n.name
        for n in names
        if group[n.name] in newest_full and n.timestamp_ns >= newest_full[group[n.name]]
    }
