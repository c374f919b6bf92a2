"""Tombstones would pile up forever: remove those older than the retention, in short write txns."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lmdb

from evsync.config import SweeperConfig
from evsync.errors import HeaderError, LmdbError
from evsync.lmdb.env import SHADOW_PREFIX, LmdbEnv, is_sync_dbi
from evsync.lmdb.header import parse_header

log = logging.getLogger(__name__)

NS = 1_000_000_000
# Look at the clock this often (entries): often enough that a txn overruns lock_duration
# by little, seldom enough that the clock costs nothing next to the scan.
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


@dataclass
class _Scan:
    """What one txn saw and where it stopped; it becomes the pass's only once the txn ended
    as intended, so a txn that fails (map full, ...) is redone from the same place."""

    index: int  # into the pass's DBI list: the DBI being swept
    resume: bytes | None  # first key of that DBI not yet looked at; None: from its start
    live: int = 0
    deleted: int = 0
    removed: int = 0
    invalid: int = 0


class _NothingRemovedError(Exception):
    """Leave a write txn that removed nothing without committing it (the txn id stays)."""


class Sweeper:
    """One LMDB's tombstone sweeper, driven step by step by its syncer thread.

    The syncer thread is the only LMDB writer, so the sweeper owns no thread: the syncer
    calls :meth:`step` between its other work, one write txn of about ``lock_duration``
    at a time, and waits ``release_duration`` in between (LS's limit scanner, in steps).
    """

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
        self._active = False
        self._cutoff_ns = 0
        self._dbis: list[bytes] = []
        self._index = 0
        self._resume: bytes | None = None
        self._handles: dict[bytes, Any] = {}
        self._started = 0.0
        self._invalid_logged: set[bytes] = set()
        self._commits: deque[float] = deque(maxlen=RECENT_COMMITS)

    @property
    def in_progress(self) -> bool:
        """True between :meth:`begin` and the step that finishes the pass."""
        return self._active

    def begin(self) -> None:
        """Start a pass: fix the cutoff, list the DBIs to sweep, reset position and stats."""
        self.stats = SweepStats(started_ns=self.clock_ns())
        self._cutoff_ns = self.stats.started_ns - int(self.cfg.retention * NS)
        with self.lenv.begin() as txn:
            names = self.lenv.dbi_names(txn, include_sync=True)
        self._dbis = [n for n in names if self._swept(n)]
        self._index, self._resume = 0, None
        self._handles.clear()
        self._invalid_logged.clear()
        self._started = time.monotonic()
        self._active = True

    def _swept(self, name: bytes) -> bool:
        # Shadow mode: the data DBIs have no headers; only their shadows carry tombstones.
        if self.shadow_mode:
            return name.startswith(SHADOW_PREFIX)
        return not is_sync_dbi(name)

    def step(self) -> SweepStep:
        """One write txn of at most about ``lock_duration``; resumes where the last stopped."""
        if not self._active:
            return SweepStep(done=True, removed=0, txn_id=None, txn_seconds=0.0)
        self._open_handles()
        t0 = time.monotonic()
        try:
            scan, txn_id = self._sweep_txn(t0 + self._scan_budget())
        except lmdb.MapFullError:
            # Deleting dirties pages too; the txn was aborted, so redo it in a bigger map.
            self.lenv.grow_map()
            scan, txn_id = _Scan(self._index, self._resume), None
        elapsed = time.monotonic() - t0
        self._record(scan, elapsed)
        return SweepStep(
            done=not self._active, removed=scan.removed, txn_id=txn_id, txn_seconds=elapsed
        )

    def _open_handles(self) -> None:
        # Outside any txn: a handle opened in the sweep txn would die when it aborts.
        for name in self._dbis[self._index :]:
            if name in self._handles:
                continue
            try:
                self._handles[name] = self.lenv.open_dbi(name)
            except LmdbError:
                self._handles[name] = None  # dropped since begin(): nothing left to sweep

    def _scan_budget(self) -> float:
        # The commit (writing and syncing the dirty pages) holds the lock too, and varies
        # a lot: leave it the slowest recent one with headroom, so that the whole txn
        # stays within lock_duration.
        lock = self.cfg.lock_duration
        if self._commits:
            allowance = COMMIT_HEADROOM * max(self._commits)
        else:
            allowance = FIRST_COMMIT_SHARE * lock
        return max(lock - allowance, MIN_SCAN_FRACTION * lock)

    def _sweep_txn(self, deadline: float) -> tuple[_Scan, int | None]:
        """The scan of one write txn, and the id of that txn if it was committed."""
        scan: _Scan | None = None
        try:
            with self.lenv.begin(write=True) as txn:
                scan = self._scan(txn, deadline)
                if not scan.removed:
                    raise _NothingRemovedError
                txn_id = int(txn.id())
                committing = time.monotonic()
            self._commits.append(time.monotonic() - committing)
            return scan, txn_id
        except _NothingRemovedError:
            assert scan is not None
            return scan, None

    def _scan(self, txn: Any, deadline: float) -> _Scan:
        """Sweep DBIs from the resume point until all are done or ``deadline`` passed."""
        scan = _Scan(self._index, self._resume)
        while scan.index < len(self._dbis):
            name = self._dbis[scan.index]
            handle = self._handles.get(name)
            # has_dbi: another process may have dropped the DBI since its handle was opened
            present = handle is not None and self.lenv.has_dbi(txn, name)
            if present and not self._sweep_dbi(txn, name, handle, scan, deadline):
                break
            scan.index += 1
            scan.resume = None
            if time.monotonic() >= deadline:
                break
        return scan

    def _sweep_dbi(self, txn: Any, name: bytes, handle: Any, scan: _Scan, deadline: float) -> bool:
        """Sweep one DBI from ``scan.resume``; False when out of time, with ``scan.resume``
        the next key to look at (never one already looked at, nor one after it)."""
        cursor = txn.cursor(db=handle)
        # set_range: the resume key itself, or the next one if it went away in between
        positioned = cursor.first() if scan.resume is None else cursor.set_range(scan.resume)
        live = deleted = removed = invalid = seen = 0
        cutoff = self._cutoff_ns
        finished = True
        while positioned:
            if seen and seen % SWEEP_CHECK_EVERY == 0 and time.monotonic() >= deadline:
                # The cursor sits on an entry not yet looked at: start there next time.
                scan.resume = bytes(cursor.key())
                finished = False
                break
            seen += 1
            try:
                header = parse_header(cursor.value())
            except HeaderError as exc:
                invalid += 1
                self._log_invalid(name, bytes(cursor.key()), exc)
            else:
                if not header.deleted:
                    live += 1
                elif header.timestamp >= cutoff:
                    deleted += 1
                else:
                    # delete() already moves to the next entry; past the last one the
                    # cursor is unpositioned and its key empty (LMDB keys never are).
                    cursor.delete()
                    removed += 1
                    positioned = bool(cursor.key())
                    continue
            positioned = cursor.next()
        scan.live += live
        scan.deleted += deleted
        scan.removed += removed
        scan.invalid += invalid
        return finished

    def _record(self, scan: _Scan, elapsed: float) -> None:
        """Make a txn's scan the pass's position and add its counts to the stats."""
        self._index, self._resume = scan.index, scan.resume
        st = self.stats
        st.live += scan.live
        st.deleted += scan.deleted
        st.removed += scan.removed
        st.invalid += scan.invalid
        st.txns += 1
        st.longest_txn_seconds = max(st.longest_txn_seconds, elapsed)
        if self._index >= len(self._dbis):
            self._active = False
            self._handles.clear()
            st.seconds = time.monotonic() - self._started

    def _log_invalid(self, name: bytes, key: bytes, exc: HeaderError) -> None:
        # Once per DBI and pass: a DBI of the wrong kind would otherwise log every entry.
        if name in self._invalid_logged:
            return
        self._invalid_logged.add(name)
        log.warning(
            "lmdb %s (%s): sweeper: DBI %r holds values without a valid header, e.g. key %r"
            " (%s); left alone",
            self.lenv.name,
            self.lenv.cfg.path,
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
