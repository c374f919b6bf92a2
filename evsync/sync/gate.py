"""The rejoin guard in the loop: whether this LMDB may sync, and when it was last in sync.

The guard itself (:mod:`evsync.rejoin`) decides and records; this module feeds it. The
in-sync time it records is that of the newest listing whose names are all noted and
merged: a listing the loop made itself counts at once; one the lister thread made counts
once the loop has drained the hints it queued (:meth:`RejoinGate.promote`, called
before each drain). A listing that fails teaches nothing, so it never moves the time.

May call: the guard and the recorder; reads the receiver's last listing time and the
peers' pending set. Must not: merge or upload. Owned by the loop thread, except
:meth:`RejoinGate.lister_listed`, which the lister thread calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from evsync.errors import LmdbError
from evsync.rejoin import RejoinGuard
from evsync.sync.recorder import Recorder
from evsync.sync.state import Peers

# A refusal lasts until an operator acts: say it at once, then this often (seconds).
REFUSAL_LOG_INTERVAL = 300.0


class RejoinGate:
    """Asks the rejoin guard before each step and tells it when the LMDB is in sync."""

    def __init__(
        self,
        db: str,
        guard: RejoinGuard,
        peers: Peers,
        recorder: Recorder,
        loop_listed_ns: Callable[[], int | None],
    ) -> None:
        self.db = db
        self.guard = guard
        self.peers = peers
        self.recorder = recorder
        self._loop_listed_ns = loop_listed_ns
        self._lister_ok_ns: int | None = None
        self._lister_drained_ns: int | None = None

    def blocks(self) -> bool:
        """True while the guard refuses to sync; the reason is logged at once, then at
        most every :data:`REFUSAL_LOG_INTERVAL` (it lasts until an operator acts)."""
        try:
            reason = self.guard.check()
        except LmdbError as exc:
            self.recorder.log_every(
                "guard",
                REFUSAL_LOG_INTERVAL,
                logging.ERROR,
                "db %s: rejoin guard: %s",
                self.db,
                exc,
            )
            return True
        if reason is None:
            self.recorder.end_streak("guard")
            return False
        self.recorder.log_every(
            "guard",
            REFUSAL_LOG_INTERVAL,
            logging.ERROR,
            "db %s: refusing to sync: %s",
            self.db,
            reason,
        )
        return True

    def lister_listed(self, now_ns: int) -> None:
        """The lister thread listed the bucket and queued what it found."""
        self._lister_ok_ns = now_ns

    def promote(self) -> None:
        """The lister's newest listing counts from now: call before draining the queue,
        so that listing's hints are in the batch drained next."""
        lister = self._lister_ok_ns
        if lister is not None and (
            self._lister_drained_ns is None or lister > self._lister_drained_ns
        ):
            self._lister_drained_ns = lister

    def mark_in_sync(self) -> int | None:
        """Every instance's newest object is merged: record the listing's time. Returns
        the txn that recorded it, if one was written (evsync's own: no upload needed)."""
        if self.peers.pending(include_own=False):
            return None
        times = [t for t in (self._lister_drained_ns, self._loop_listed_ns()) if t is not None]
        if not times:
            return None
        try:
            return self.guard.mark_in_sync(max(times))
        except LmdbError as exc:
            self.recorder.log_limited(
                "state", logging.ERROR, "db %s: cannot record sync state: %s", self.db, exc
            )
            return None
