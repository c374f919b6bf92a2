"""Delete old snapshot objects with Lightning Stream's safety rules, so the bucket stays bounded.

Rules (DESIGN §11, LS ``syncer/cleaner``), per db, every jittered ``interval``:

- an object is never deleted by the pass that first sees it, nor while it has been
  known to this process for less than ``must_keep_interval`` — a peer that has just
  listed it may still be fetching it;
- the newest remaining object of every instance is kept;
- an instance whose newest object is older than ``remove_old_instances_interval``
  loses it too, but only once this instance has merged that object (or a newer one of
  that instance) *and stored an object of its own since* (:meth:`Cleaner.set_committed`),
  so the silent instance's data lives on in ours.

Deleting a missing object is not an error, so several instances may clean at once.
"""

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
from evsync.snapshot.name import SnapshotName, db_prefix, try_parse
from evsync.storage.base import BlobStore

log = logging.getLogger(__name__)

NS = 1_000_000_000
# Each pass waits interval × uniform(JITTER_MIN, JITTER_MAX), so cleaners of many
# instances do not list the bucket in lockstep.
JITTER_MIN = 0.8
JITTER_MAX = 1.2
REASON_NEWER = "newer_snapshot"
REASON_STALE = "stale_instance"


@dataclass
class CleanResult:
    """What one pass did."""

    listed: int = 0
    kept: int = 0
    deleted: list[str] = field(default_factory=list)
    stale_deleted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class Cleaner:
    """The cleaner of one db; :meth:`run` in its own thread, or :meth:`run_once` in tests."""

    def __init__(
        self,
        store: BlobStore,
        db: str,
        cfg: CleanupConfig,
        *,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.db = db
        self.cfg = cfg
        self.metrics = metrics
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._first_seen: dict[str, float] = {}
        self._committed: dict[str, int] = {}
        self._lock = threading.Lock()
        self.last_result: CleanResult | None = None
        self.last_run_at: float | None = None

    # ------------------------------------------------------------------ inputs

    def set_committed(self, merged: Mapping[str, int]) -> None:
        """Our latest stored object carries these instances' data up to these timestamps."""
        with self._lock:
            for instance, ts in merged.items():
                if ts > self._committed.get(instance, 0):
                    self._committed[instance] = ts

    def _committed_ts(self, instance: str) -> int:
        with self._lock:
            return self._committed.get(instance, 0)

    # ------------------------------------------------------------------ one pass

    def run_once(self) -> CleanResult:
        """List, decide, delete. A failed listing raises StorageError; failed deletes are
        counted and retried by the next pass."""
        objects = self.store.list(db_prefix(self.db))
        now = self.clock()
        names = self._valid_names([o.name for o in objects])
        result = CleanResult(listed=len(names))
        to_delete, stale = self._plan(names, now)
        result.kept = len(names) - len(to_delete) - len(stale)
        for name, reason in [(n, REASON_NEWER) for n in to_delete] + [
            (n, REASON_STALE) for n in stale
        ]:
            self._delete(name, reason, result)
        self.metrics.cleaner_runs.labels(self.db).inc()
        self.last_result, self.last_run_at = result, now
        if result.deleted or result.stale_deleted:
            log.info(
                "db %s: cleaner: deleted %d older and %d stale-instance object(s), kept %d",
                self.db,
                len(result.deleted),
                len(result.stale_deleted),
                result.kept,
            )
        return result

    def _valid_names(self, raw: list[str]) -> list[SnapshotName]:
        """This db's snapshot names; first-seen times kept for them, forgotten for the gone."""
        names = [n for n in (try_parse(r) for r in raw) if n is not None and n.db == self.db]
        present = {n.name for n in names}
        for gone in set(self._first_seen) - present:
            del self._first_seen[gone]
        return names

    def _plan(self, names: list[SnapshotName], now: float) -> tuple[list[str], list[str]]:
        """Names to delete as superseded, and stale newest-of-instance names to delete."""
        must_keep = self.cfg.must_keep_interval
        marked: set[str] = set()  # instances whose newest object is decided (kept)
        remaining: list[SnapshotName] = []
        for name in sorted(names, key=lambda n: n.name, reverse=True):
            first = self._first_seen.get(name.name)
            if first is None:
                self._first_seen[name.name] = now  # new: never deleted in this pass
                continue
            if now - first <= must_keep:
                marked.add(name.instance)
                continue
            remaining.append(name)
        delete: list[str] = []
        stale: list[str] = []
        stale_after_ns = int(self.cfg.remove_old_instances_interval * NS)
        for name in remaining:  # newest first, per instance
            if name.instance in marked:
                delete.append(name.name)
                continue
            marked.add(name.instance)
            too_old = int(now * NS) - name.timestamp_ns > stale_after_ns
            if too_old and self._committed_ts(name.instance) >= name.timestamp_ns:
                stale.append(name.name)
        return delete, stale

    def _delete(self, name: str, reason: str, result: CleanResult) -> None:
        try:
            self.store.delete(name)
        except StorageError as exc:
            result.failed.append(name)
            self.metrics.cleaner_failures.labels(self.db).inc()
            if len(result.failed) == 1:  # one line per pass, not per object
                log.warning("db %s: cleaner: cannot delete %s: %s", self.db, name, exc)
            return
        self._first_seen.pop(name, None)
        self.metrics.cleaner_deleted.labels(self.db, reason).inc()
        (result.stale_deleted if reason == REASON_STALE else result.deleted).append(name)

    # ------------------------------------------------------------------ the loop

    def next_interval(self) -> float:
        """The jittered wait before the next pass."""
        return self.cfg.interval * self.rng.uniform(JITTER_MIN, JITTER_MAX)

    def run(self, stop_event: threading.Event) -> None:
        """Clean every jittered interval until ``stop_event`` is set; never raises."""
        while not stop_event.wait(self.next_interval()):
            try:
                self.run_once()
            except StorageError as exc:
                self.metrics.cleaner_failures.labels(self.db).inc()
                log.warning("db %s: cleaner: listing failed: %s; next pass retries", self.db, exc)
            except Exception as exc:  # a cleaner bug must not end the process
                self.metrics.cleaner_failures.labels(self.db).inc()
                log.error("db %s: cleaner pass failed: %s", self.db, exc)
                log.debug("cleaner failure", exc_info=True)

    def status(self) -> dict[str, Any]:
        """Plain data for /status."""
        r = self.last_result
        return {
            "last_run_at": self.last_run_at,
            "last_listed": r.listed if r else None,
            "last_deleted": len(r.deleted) + len(r.stale_deleted) if r else None,
            "last_failed": len(r.failed) if r else None,
        }
