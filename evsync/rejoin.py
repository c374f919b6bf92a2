"""The rejoin guard Lightning Stream lacks (its issue #90): never resurrect swept deletes.

With the tombstone sweeper on, a delete is forgotten ``retention_days`` after it
happened. An instance that was away longer than that still holds the deleted
records, with no tombstone left anywhere to beat them, so merging or uploading
would bring them back everywhere. Each instance therefore records (in its LMDB,
see :mod:`evsync.lmdb.state`) when it was last in sync, and refuses to merge or
upload after a longer absence until an operator wipes it or overrides the guard.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from evsync.config import SweeperConfig
from evsync.lmdb.env import LmdbEnv
from evsync.lmdb.state import has_synced_data, read_last_sync_ns, write_last_sync_ns

log = logging.getLogger(__name__)

NS = 1_000_000_000
# The in-sync time is rewritten at most this often (a write txn each time) ...
STATE_WRITE_INTERVAL = 3600.0
# ... and at least this often as a fraction of the retention, so short test retentions work.
STATE_WRITE_FRACTION = 0.01


class RejoinGuard:
    """Decides whether this LMDB may sync, and keeps its in-sync time up to date.

    Used only by the syncer thread (it writes the LMDB).
    """

    def __init__(
        self,
        lenv: LmdbEnv,
        sweeper: SweeperConfig,
        *,
        override: bool = False,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.lenv = lenv
        self.enabled = sweeper.enabled
        # Tombstones younger than retention - cutoff are still in every object; an
        # absence shorter than that cannot have missed one.
        self.limit_seconds = sweeper.retention - sweeper.load_cutoff
        self.write_every_ns = int(
            min(STATE_WRITE_INTERVAL, STATE_WRITE_FRACTION * sweeper.retention) * NS
        )
        self.override = override
        self.clock_ns = clock_ns
        self.last_sync_ns: int | None = None
        self.blocked_reason: str | None = None

    @property
    def blocked(self) -> bool:
        """True while the guard refuses merges and uploads."""
        return self.blocked_reason is not None

    def check(self) -> str | None:
        """Evaluate the guard; returns the reason it blocks, or None."""
        self.blocked_reason = self._reason() if self.enabled else None
        return self.blocked_reason

    def _reason(self) -> str | None:
        if self.last_sync_ns is None:
            self.last_sync_ns = read_last_sync_ns(self.lenv)
        if self.last_sync_ns is None or self.override:
            return None  # never recorded (first run, or an LS-synced LMDB), or overridden
        away = (self.clock_ns() - self.last_sync_ns) / NS
        if away <= self.limit_seconds:
            return None
        if not has_synced_data(self.lenv):
            return None  # a wiped LMDB holds nothing to resurrect
        return (
            f"lmdb {self.lenv.name}: last in sync {away / 86400:.1f} days ago, longer than the "
            f"tombstone retention ({self.limit_seconds / 86400:.1f} days); records deleted "
            "elsewhere meanwhile would come back. To rejoin safely, stop the application, "
            "move this LMDB away and let evsync restore it from the bucket; or run once "
            "with --force-rejoin to accept the risk"
        )

    def mark_in_sync(self, listed_at_ns: int) -> int | None:
        """Record that everything listed at ``listed_at_ns`` is merged; returns the txn id.

        The time recorded is that of the listing, not now: while the bucket cannot be
        listed nothing new is learnt, so the recorded time must not move either.
        """
        if not self.enabled or self.blocked:
            return None
        last = self.last_sync_ns
        if last is not None and listed_at_ns - last < self.write_every_ns:
            return None
        txn_id = write_last_sync_ns(self.lenv, listed_at_ns)
        if self.override and last is not None:
            log.warning("lmdb %s: rejoined with --force-rejoin", self.lenv.name)
        self.last_sync_ns = listed_at_ns
        self.override = False
        return txn_id
