"""Remove tombstones older than the retention, in write txns short enough not to stall the app.

The syncer thread is the only LMDB writer, so the sweeper owns no thread: the syncer
calls :meth:`Sweeper.step` between its other work, one short write txn at a time,
and waits ``release_duration`` in between (LS's limit scanner, in steps).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from evsync.config import SweeperConfig
from evsync.errors import HeaderError
from evsync.lmdb.env import SHADOW_PREFIX, LmdbEnv
from evsync.lmdb.header import parse_header

log = logging.getLogger(__name__)

NS = 1_000_000_000
# Look at the clock this often (entries), so a txn overruns lock_duration by little.
SWEEP_CHECK_EVERY = 256
# However slow the commits are, a txn scans for at least this share of lock_duration.
MIN_SCAN_FRACTION = 0.2
# Before any commit was timed, leave it this share of lock_duration ...
FIRST_COMMIT_SHARE = 0.3
# ... afterwards the slowest of the last few commits, times this.
RECENT_COMMITS = 8
COMMIT_HEADROOM = 1.5


@dataclass
class SweepStats:
    """What one pass found and did."""

    live: int = 0
    deleted: int = 0  # tombstones younger than the cutoff, kept
    removed: int = 0
    invalid: int = 0  # values without a parsable header, left alone
    txns: int = 0
    started_ns: int = 0
    seconds: float = 0.0
    longest_txn_seconds: float = 0.0


@dataclass
class SweepStep:
    """The outcome of one write txn."""

    done: bool
    removed: int
    txn_id: int | None  # the committed txn; None when nothing was removed (txn aborted)
    txn_seconds: float


class _NothingRemovedError(Exception):
    """Leave a write txn that removed nothing without committing it (the txn id stays)."""


class Sweeper:
    """One LMDB's sweeper; driven step by step by its syncer thread."""

    def __init__(
        self,
        lenv: LmdbEnv,
        cfg: SweeperConfig,
        *,
        shadow_mode: bool,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.lenv = lenv
        self.cfg = cfg
        self.shadow_mode = shadow_mode
        self.clock_ns = clock_ns
        self.stats = SweepStats()
        self._cutoff_ns = 0
        self._dbis: list[bytes] = []
        self._resume: bytes | None = None  # first key not yet looked at in _dbis[0]
        self._started = 0.0
        self._invalid_logged: set[bytes] = set()
        self._commits: deque[float] = deque(maxlen=RECENT_COMMITS)

    @property
    def in_progress(self) -> bool:
        """True between :meth:`begin` and the step that finishes the pass."""
        return bool(self._dbis)

    def begin(self) -> None:
        """Start a pass: fix the cutoff and list the DBIs to sweep."""
        self.stats = SweepStats(started_ns=self.clock_ns())
        self._cutoff_ns = self.stats.started_ns - int(self.cfg.retention * NS)
        with self.lenv.begin() as txn:
            self._dbis = [n for n in self.lenv.dbi_names(txn, include_sync=True) if self._swept(n)]
        self._resume = None
        self._started = time.monotonic()
        self._invalid_logged.clear()

    def _swept(self, name: bytes) -> bool:
        # Shadow mode: the data DBIs have no headers; only their shadows carry tombstones.
        if self.shadow_mode:
            return name.startswith(SHADOW_PREFIX)
        return not name.startswith(b"_sync")

    def step(self) -> SweepStep:
        """One write txn of at most about ``lock_duration``; resumes where the last stopped."""
        if not self._dbis:
            return SweepStep(done=True, removed=0, txn_id=None, txn_seconds=0.0)
        for name in self._dbis:
            self.lenv.open_dbi(name)  # outside the txn: handles opened in it die on abort
        t0 = time.monotonic()
        removed = 0
        txn_id: int | None = None
        # The commit (writing and syncing the dirty pages) holds the lock too, and varies
        # a lot: leave it the slowest recent one with headroom, so that the whole txn
        # stays within lock_duration.
        lock = self.cfg.lock_duration
        allowance = (
            COMMIT_HEADROOM * max(self._commits) if self._commits else FIRST_COMMIT_SHARE * lock
        )
        budget = max(lock - allowance, MIN_SCAN_FRACTION * lock)
        try:
            with self.lenv.begin(write=True) as txn:
                removed = self._sweep_for(txn, t0 + budget)
                if not removed:
                    raise _NothingRemovedError
                txn_id = int(txn.id())
                scanned = time.monotonic()
            self._commits.append(time.monotonic() - scanned)
        except _NothingRemovedError:
            pass
        elapsed = time.monotonic() - t0
        st = self.stats
        st.txns += 1
        st.removed += removed
        st.longest_txn_seconds = max(st.longest_txn_seconds, elapsed)
        done = not self._dbis
        if done:
            st.seconds = time.monotonic() - self._started
        return SweepStep(done=done, removed=removed, txn_id=txn_id, txn_seconds=elapsed)

    def _sweep_for(self, txn: Any, deadline: float) -> int:
        """Sweep DBIs from the resume point until done or past ``deadline``."""
        removed = 0
        while self._dbis:
            name = self._dbis[0]
            if not self.lenv.has_dbi(txn, name):  # dropped since begin()
                self._next_dbi()
                continue
            n, finished = self._sweep_dbi(txn, name, deadline)
            removed += n
            if not finished:
                return removed
            self._next_dbi()
            if time.monotonic() >= deadline:
                break
        return removed

    def _next_dbi(self) -> None:
        self._dbis.pop(0)
        self._resume = None

    def _sweep_dbi(self, txn: Any, name: bytes, deadline: float) -> tuple[int, bool]:
        """Returns (removed, finished); on a deadline ``_resume`` is the next key to read."""
        cursor = txn.cursor(db=self.lenv.open_dbi(name))
        positioned = cursor.set_range(self._resume) if self._resume else cursor.first()
        removed = seen = 0
        st, cutoff = self.stats, self._cutoff_ns
        while positioned:
            if seen % SWEEP_CHECK_EVERY == 0 and seen and time.monotonic() >= deadline:
                self._resume = bytes(cursor.key())
                return removed, False
            seen += 1
            try:
                header = parse_header(cursor.value())
            except HeaderError as exc:
                st.invalid += 1
                self._log_invalid(name, bytes(cursor.key()), exc)
                positioned = cursor.next()
                continue
            if not header.deleted:
                st.live += 1
            elif header.timestamp >= cutoff:
                st.deleted += 1
            else:
                # delete() moves to the next entry; past the last one the cursor is
                # unpositioned and its key is empty (LMDB keys never are).
                cursor.delete()
                removed += 1
                positioned = bool(cursor.key())
                continue
            positioned = cursor.next()
        return removed, True

    def _log_invalid(self, name: bytes, key: bytes, exc: HeaderError) -> None:
        if name in self._invalid_logged:
            return
        self._invalid_logged.add(name)
        log.warning(
            "lmdb %s: sweeper: DBI %r key %r has no valid header (%s); left alone",
            self.lenv.name,
            name.decode(errors="replace"),
            key[:64],
            exc,
        )

    def run_pass(self, *, pause: Callable[[float], None] = time.sleep) -> SweepStats:
        """A whole pass: steps with ``release_duration`` pauses (tests and tools)."""
        self.begin()
        while not self.step().done:
            pause(self.cfg.release_duration)
        return self.stats
