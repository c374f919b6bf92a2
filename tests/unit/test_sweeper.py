"""The tombstone sweeper on real LMDB files: what it removes, where, and in how short txns."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import lmdb
import pytest

from evsync.config import SweeperConfig
from evsync.lmdb.env import LmdbEnv
from evsync.lmdb.header import FLAG_DELETED, encode_header
from evsync.sweeper import SWEEP_CHECK_EVERY, Sweeper, SweepStep

EnvFactory = Callable[..., LmdbEnv]
Items = dict[bytes, tuple[int, bool]]  # key -> (timestamp, deleted)
NS = 1_000_000_000
HOUR = 3600 * NS
NOW = 1_800_000_000 * NS
CUTOFF = NOW - 48 * HOUR  # retention_days=2
OLD = NOW - 50 * HOUR  # past the retention
RECENT = NOW - HOUR
CFG = SweeperConfig(enabled=True, retention_days=2)
# lock_duration ~0: every txn stops at its first clock check, after SWEEP_CHECK_EVERY entries
TINY = dataclasses.replace(CFG, lock_duration=1e-9, release_duration=0.0)


# ------------------------------------------------------------------ helpers


def put(lenv: LmdbEnv, dbi: bytes, items: Items, *, raw: bool = False) -> None:
    """Write native values with the given headers (or values that are not headers)."""
    handle = lenv.env.open_db(dbi, create=True)
    with lenv.env.begin(write=True) as txn:
        for key, (ts, deleted) in items.items():
            if raw:
                txn.put(key, b"raw", db=handle)
            elif deleted:
                txn.put(key, encode_header(ts, 1, FLAG_DELETED), db=handle)
            else:
                txn.put(key, encode_header(ts, 1, 0) + b"v", db=handle)


def keys(lenv: LmdbEnv, dbi: bytes) -> list[bytes]:
    """The keys of a DBI, in LMDB order."""
    handle = lenv.env.open_db(dbi)
    with lenv.env.begin() as txn:
        return [bytes(k) for k in txn.cursor(db=handle).iternext(values=False)]


def kept(items: Items) -> list[bytes]:
    """The keys a sweep at NOW must leave: live ones and tombstones not older than the cutoff."""
    return sorted(k for k, (ts, deleted) in items.items() if not deleted or ts >= CUTOFF)


def sweeper(lenv: LmdbEnv, cfg: SweeperConfig = CFG, *, shadow: bool = False) -> Sweeper:
    """A sweeper whose clock is frozen at NOW."""
    return Sweeper(lenv, cfg, shadow_mode=shadow, clock_ns=lambda: NOW)


def no_pause(_seconds: float) -> None:
    """run_pass's pause, skipped."""


def all_steps(s: Sweeper) -> list[SweepStep]:
    """begin() then step() until the pass is done."""
    s.begin()
    steps = [s.step()]
    while not steps[-1].done:
        steps.append(s.step())
    return steps


def key(i: int) -> bytes:
    """Keys that sort in the order of their number."""
    return f"k{i:06d}".encode()


def mix(n: int) -> Items:
    """LS's mix: a third live and old, a third recently deleted, a third deleted 50 h ago."""
    kinds = [(NOW - 100 * HOUR, False), (RECENT, True), (OLD, True)]
    return {key(i): kinds[i % 3] for i in range(n)}


def old_tombstones_at(n: int, offsets: set[int]) -> Items:
    """n entries, old tombstones where ``i % SWEEP_CHECK_EVERY`` is in ``offsets``, else live."""
    return {
        key(i): (OLD, True) if i % SWEEP_CHECK_EVERY in offsets else (NOW, False) for i in range(n)
    }


# ------------------------------------------------------------------ tests


class TestWhatIsRemoved:
    """Only tombstones older than the retention go; everything else is counted and kept."""

    def test_empty_lmdb(self, make_env: EnvFactory) -> None:
        """An LMDB without DBIs finishes in one step with nothing counted and nothing committed."""
        lenv = make_env()
        before = lenv.last_txn_id()
        s = sweeper(lenv)
        s.begin()
        step = s.step()
        assert step == SweepStep(done=True, removed=0, txn_id=None, txn_seconds=step.txn_seconds)
        assert (s.stats.live, s.stats.deleted, s.stats.removed, s.stats.invalid) == (0, 0, 0, 0)
        assert lenv.last_txn_id() == before

    def test_empty_dbi(self, make_env: EnvFactory) -> None:
        """An empty DBI is swept without error and stays."""
        lenv = make_env()
        lenv.env.open_db(b"records", create=True)
        stats = sweeper(lenv).run_pass(pause=no_pause)
        assert (stats.live, stats.deleted, stats.removed) == (0, 0, 0)
        assert keys(lenv, b"records") == []

    def test_ls_mix_of_3000(self, make_env: EnvFactory) -> None:
        """LS's TestSweeper: 3000 entries, retention 2 days: the 1000 live and 1000 recent
        tombstones stay, the 1000 tombstones 50 h old are removed, and exactly those."""
        lenv = make_env()
        items = mix(3000)
        put(lenv, b"records", items)
        stats = sweeper(lenv).run_pass(pause=no_pause)
        assert (stats.live, stats.deleted, stats.removed, stats.invalid) == (1000, 1000, 1000, 0)
        assert keys(lenv, b"records") == kept(items)
        assert len(kept(items)) == 2000

    def test_old_live_values_are_never_removed(self, make_env: EnvFactory) -> None:
        """A live value far older than the retention stays: only tombstones expire."""
        lenv = make_env()
        put(lenv, b"records", {b"ancient": (1, False)})
        stats = sweeper(lenv).run_pass(pause=no_pause)
        assert keys(lenv, b"records") == [b"ancient"]
        assert (stats.live, stats.removed) == (1, 0)

    def test_the_cutoff_is_strict(self, make_env: EnvFactory) -> None:
        """A tombstone exactly at now − retention stays; one nanosecond older goes."""
        lenv = make_env()
        put(lenv, b"records", {b"at": (CUTOFF, True), b"before": (CUTOFF - 1, True)})
        stats = sweeper(lenv).run_pass(pause=no_pause)
        assert keys(lenv, b"records") == [b"at"]
        assert (stats.deleted, stats.removed) == (1, 1)

    def test_the_cutoff_is_fixed_when_the_pass_begins(self, make_env: EnvFactory) -> None:
        """The clock is read once per pass, at begin(): a pass that runs long does not start
        removing tombstones that were younger than the retention when it began."""
        lenv = make_env()
        put(lenv, b"records", {b"young": (CUTOFF + HOUR, True)})
        now = [NOW]
        s = Sweeper(lenv, CFG, shadow_mode=False, clock_ns=lambda: now[0])
        s.begin()
        now[0] += 10 * HOUR
        assert s.step().removed == 0
        assert keys(lenv, b"records") == [b"young"]
        assert s.run_pass(pause=no_pause).removed == 1

    def test_unparsable_values_are_counted_and_kept(self, make_env: EnvFactory) -> None:
        """A value without a valid header is counted invalid and left alone; its neighbours
        are still swept."""
        lenv = make_env()
        put(lenv, b"records", {b"a": (OLD, True), b"c": (OLD, True)})
        put(lenv, b"records", {b"b": (0, False)}, raw=True)
        stats = sweeper(lenv).run_pass(pause=no_pause)
        assert (stats.invalid, stats.removed) == (1, 2)
        assert keys(lenv, b"records") == [b"b"]

    def test_invalid_values_are_logged_once_per_dbi_and_pass(
        self, make_env: EnvFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Many invalid values log one warning per DBI per pass, naming the db path and DBI."""
        lenv = make_env()
        put(lenv, b"one", {key(i): (0, False) for i in range(50)}, raw=True)
        put(lenv, b"two", {b"x": (0, False)}, raw=True)
        s = sweeper(lenv)
        with caplog.at_level(logging.WARNING, logger="evsync.sweeper"):
            assert s.run_pass(pause=no_pause).invalid == 51
            first = [r.getMessage() for r in caplog.records]
            s.run_pass(pause=no_pause)
        assert len(first) == 2
        assert "'one'" in first[0] and "'two'" in first[1]
        assert all(lenv.cfg.path in m for m in first)
        assert len(caplog.records) == 4

    def test_a_dbi_added_between_passes_is_swept_next(self, make_env: EnvFactory) -> None:
        """DBIs are listed again at each pass's begin()."""
        lenv = make_env()
        s = sweeper(lenv)
        s.run_pass(pause=no_pause)
        put(lenv, b"later", {b"gone": (OLD, True)})
        assert s.run_pass(pause=no_pause).removed == 1
        assert keys(lenv, b"later") == []


class TestTxnIds:
    """A sweep commits only when it removed something, and says which txn it committed."""

    def test_nothing_to_remove_leaves_the_txn_id(self, make_env: EnvFactory) -> None:
        """A pass that removes nothing aborts its txns: the LMDB txn id does not move, so a
        sweep alone never triggers an upload."""
        lenv = make_env()
        put(lenv, b"records", {b"a": (NOW, False), b"b": (RECENT, True)})
        before = lenv.last_txn_id()
        steps = all_steps(sweeper(lenv))
        assert lenv.last_txn_id() == before
        assert [(st.removed, st.txn_id) for st in steps] == [(0, None)]

    def test_a_committed_step_reports_its_txn_id(self, make_env: EnvFactory) -> None:
        """A step that removed something returns the id of the txn it committed."""
        lenv = make_env()
        put(lenv, b"records", {b"old": (OLD, True)})
        before = lenv.last_txn_id()
        steps = all_steps(sweeper(lenv))
        assert [(st.done, st.removed) for st in steps] == [(True, 1)]
        assert steps[0].txn_id == lenv.last_txn_id() == before + 1

    def test_only_steps_that_removed_something_commit(self, make_env: EnvFactory) -> None:
        """Across short txns, the steps with nothing to remove leave the txn id alone and
        those that removed something each commit exactly one txn."""
        lenv = make_env()
        n = 4 * SWEEP_CHECK_EVERY
        # old tombstones only in the 2nd stretch of SWEEP_CHECK_EVERY entries
        items = {
            key(i): (OLD, True) if i // SWEEP_CHECK_EVERY == 1 else (NOW, False) for i in range(n)
        }
        put(lenv, b"records", items)
        before = lenv.last_txn_id()
        steps = all_steps(sweeper(lenv, TINY))
        assert [st.removed for st in steps] == [0, SWEEP_CHECK_EVERY, 0, 0]
        assert [st.txn_id for st in steps] == [None, before + 1, None, None]
        assert lenv.last_txn_id() == before + 1


class TestWhichDbis:
    """Native mode sweeps the data DBIs; shadow mode only the shadows; `_sync*` otherwise never."""

    def test_native_mode_leaves_sync_dbis(self, make_env: EnvFactory) -> None:
        """evsync's own _sync* DBIs are neither swept nor counted in native mode."""
        lenv = make_env()
        put(lenv, b"_sync_evsync", {b"x": (OLD, True)})
        put(lenv, b"_sync_shadow_records", {b"y": (OLD, True)})
        put(lenv, b"records", {b"z": (OLD, True)})
        stats = sweeper(lenv).run_pass(pause=no_pause)
        assert stats.removed == 1
        assert keys(lenv, b"_sync_evsync") == [b"x"]
        assert keys(lenv, b"_sync_shadow_records") == [b"y"]
        assert keys(lenv, b"records") == []

    def test_shadow_mode_sweeps_only_shadow_dbis(self, make_env: EnvFactory) -> None:
        """In shadow mode the raw data DBIs (no headers) are neither touched nor counted
        invalid, other _sync* DBIs are left alone, and the shadows are swept."""
        lenv = make_env()
        put(lenv, b"records", {b"raw": (0, False)}, raw=True)
        put(lenv, b"_sync_evsync", {b"x": (OLD, True)})
        put(lenv, b"_sync_shadow_records", {b"old": (OLD, True), b"new": (NOW, False)})
        stats = sweeper(lenv, shadow=True).run_pass(pause=no_pause)
        assert (stats.invalid, stats.live, stats.removed) == (0, 1, 1)
        assert keys(lenv, b"records") == [b"raw"]
        assert keys(lenv, b"_sync_evsync") == [b"x"]
        assert keys(lenv, b"_sync_shadow_records") == [b"new"]

    def test_a_dbi_dropped_during_a_pass_is_skipped(self, make_env: EnvFactory) -> None:
        """A DBI listed at begin() but dropped before its step is skipped; the others are
        still swept."""
        lenv = make_env()
        put(lenv, b"a", {b"x": (OLD, True)})
        put(lenv, b"b", {b"y": (OLD, True)})
        s = sweeper(lenv)
        s.begin()
        with lenv.env.begin(write=True) as txn:
            txn.drop(lenv.env.open_db(b"a", txn=txn), delete=True)
        steps = [s.step()]
        while not steps[-1].done:
            steps.append(s.step())
        assert sum(st.removed for st in steps) == 1
        assert keys(lenv, b"b") == []

    def test_a_dbi_created_during_a_pass_waits_for_the_next(self, make_env: EnvFactory) -> None:
        """The DBI list is fixed at begin(): a DBI created mid-pass is swept by the next pass."""
        lenv = make_env()
        put(lenv, b"a", old_tombstones_at(2 * SWEEP_CHECK_EVERY, {0}))
        s = sweeper(lenv, TINY)
        s.begin()
        assert not s.step().done
        put(lenv, b"b", {b"y": (OLD, True)})
        while not s.step().done:
            pass
        assert keys(lenv, b"b") == [b"y"]
        assert s.run_pass(pause=no_pause).removed == 1


class TestShortTransactions:
    """The write lock is released between short txns, and nothing is skipped or repeated."""

    def test_tiny_lock_duration_takes_many_txns_and_misses_nothing(
        self, make_env: EnvFactory
    ) -> None:
        """With lock_duration ~0 the LS mix in two DBIs takes many txns, each resuming
        where the last stopped: exactly the old tombstones go, each entry is counted once,
        and every txn's duration is recorded."""
        lenv = make_env()
        items = mix(3000)
        put(lenv, b"a", items)
        put(lenv, b"b", items)
        s = sweeper(lenv, TINY)
        steps = all_steps(s)
        assert len(steps) > 10
        assert not any(st.done for st in steps[:-1])
        assert sum(st.removed for st in steps) == s.stats.removed == 2000
        assert (s.stats.live, s.stats.deleted) == (2000, 2000)
        assert keys(lenv, b"a") == kept(items) and keys(lenv, b"b") == kept(items)
        assert s.stats.txns == len(steps)
        assert all(st.txn_seconds > 0 for st in steps)
        assert s.stats.longest_txn_seconds == max(st.txn_seconds for st in steps)

    @pytest.mark.parametrize(
        "offsets",
        [
            pytest.param({SWEEP_CHECK_EVERY - 1}, id="resume-right-after-a-removed-key"),
            pytest.param({0}, id="resume-on-a-key-to-remove"),
            pytest.param({SWEEP_CHECK_EVERY - 1, 0}, id="resume-between-removed-keys"),
        ],
    )
    def test_txn_boundaries_next_to_removed_keys(
        self, make_env: EnvFactory, offsets: set[int]
    ) -> None:
        """Each tiny txn looks at SWEEP_CHECK_EVERY entries; with removed keys placed right
        before and/or at each resume point, every step removes exactly the old tombstones of
        its own stretch: none skipped (delete() already moved the cursor) and none repeated."""
        lenv = make_env()
        n = 4 * SWEEP_CHECK_EVERY
        items = old_tombstones_at(n, offsets)
        put(lenv, b"records", items)
        s = sweeper(lenv, TINY)
        steps = all_steps(s)
        assert [st.removed for st in steps] == [len(offsets)] * 4
        assert [st.done for st in steps] == [False, False, False, True]
        assert keys(lenv, b"records") == kept(items)
        assert s.stats.live == n - 4 * len(offsets)

    def test_all_tombstones_across_many_txns(self, make_env: EnvFactory) -> None:
        """A DBI of nothing but old tombstones is emptied across txns, whose every resume
        point follows a removed key."""
        lenv = make_env()
        n = 3 * SWEEP_CHECK_EVERY + 7
        put(lenv, b"records", {key(i): (OLD, True) for i in range(n)})
        steps = all_steps(sweeper(lenv, TINY))
        assert [st.removed for st in steps] == [SWEEP_CHECK_EVERY] * 3 + [7]
        assert keys(lenv, b"records") == []

    def test_a_resume_key_deleted_in_between_is_not_a_problem(self, make_env: EnvFactory) -> None:
        """When the application deletes the key a step was to resume at, the next step starts
        at the following key: nothing after it is skipped, nothing before it repeated."""
        lenv = make_env()
        n = 2 * SWEEP_CHECK_EVERY
        items = old_tombstones_at(n, {SWEEP_CHECK_EVERY - 1, 1})
        put(lenv, b"records", items)
        s = sweeper(lenv, TINY)
        s.begin()
        assert s.step().removed == 2
        with lenv.env.begin(write=True) as txn:
            assert txn.delete(key(SWEEP_CHECK_EVERY), db=lenv.env.open_db(b"records", txn=txn))
        last = s.step()
        assert (last.done, last.removed) == (True, 2)
        expected = [k for k in kept(items) if k != key(SWEEP_CHECK_EVERY)]
        assert keys(lenv, b"records") == expected
        assert s.stats.live == len(expected)

    def test_a_failed_txn_is_redone_from_the_same_place(
        self, make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When a txn fails with a full map, its deletes roll back, the map grows, and the
        next step redoes the same stretch: nothing is lost and nothing counted twice."""
        lenv = make_env()
        n = 2 * SWEEP_CHECK_EVERY
        items = old_tombstones_at(n, {0, 5})
        put(lenv, b"records", items)
        s = sweeper(lenv, TINY)
        real_scan = s._scan
        calls = []

        def scan_then_fail(txn: Any, deadline: float) -> Any:
            """The first txn scans (deleting), then fails as a put would on a full map."""
            result = real_scan(txn, deadline)
            calls.append(result)
            if len(calls) == 1:
                raise lmdb.MapFullError("simulated")
            return result

        monkeypatch.setattr(s, "_scan", scan_then_fail)
        map_size = lenv.info()["map_size"]
        steps = all_steps(s)
        assert lenv.info()["map_size"] == 2 * map_size
        assert [(st.removed, st.txn_id is None, st.done) for st in steps] == [
            (0, True, False),
            (2, False, False),
            (2, False, True),
        ]
        assert keys(lenv, b"records") == kept(items)
        assert (s.stats.live, s.stats.removed, s.stats.txns) == (n - 4, 4, 3)


class TestPassLifecycle:
    """How the syncer drives a pass: begin(), step() until done, in_progress in between."""

    def test_in_progress_from_begin_to_the_last_step(self, make_env: EnvFactory) -> None:
        """in_progress is False until begin(), True until the step that reports done."""
        lenv = make_env()
        put(lenv, b"records", old_tombstones_at(2 * SWEEP_CHECK_EVERY, {3}))
        s = sweeper(lenv, TINY)
        assert not s.in_progress
        s.begin()
        assert s.in_progress
        assert not s.step().done
        assert s.in_progress
        assert s.step().done
        assert not s.in_progress

    def test_in_progress_even_for_an_empty_lmdb(self, make_env: EnvFactory) -> None:
        """A pass over nothing still needs its one step, so the syncer sees it finish."""
        s = sweeper(make_env())
        s.begin()
        assert s.in_progress
        assert s.step().done and not s.in_progress

    def test_step_without_a_pass_does_nothing(self, make_env: EnvFactory) -> None:
        """step() outside a pass reports done and touches nothing."""
        lenv = make_env()
        put(lenv, b"records", {b"old": (OLD, True)})
        step = sweeper(lenv).step()
        assert step == SweepStep(done=True, removed=0, txn_id=None, txn_seconds=0.0)
        assert keys(lenv, b"records") == [b"old"]

    def test_begin_restarts_a_pass(self, make_env: EnvFactory) -> None:
        """begin() mid-pass resets the position and the stats: the new pass sees every entry."""
        lenv = make_env()
        n = 3 * SWEEP_CHECK_EVERY
        put(lenv, b"records", old_tombstones_at(n, {7}))
        s = sweeper(lenv, TINY)
        s.begin()
        s.step()
        steps = all_steps(s)
        assert len(steps) == 3
        assert (s.stats.live, s.stats.removed, s.stats.txns) == (n - 3, 2, 3)

    def test_run_pass_pauses_release_duration_between_steps(self, make_env: EnvFactory) -> None:
        """run_pass pauses release_duration after every step but the last, and returns the
        pass's stats with its duration and txn count."""
        lenv = make_env()
        put(lenv, b"records", old_tombstones_at(3 * SWEEP_CHECK_EVERY, {0}))
        pauses: list[float] = []
        s = sweeper(lenv, dataclasses.replace(TINY, release_duration=0.25))
        stats = s.run_pass(pause=pauses.append)
        assert pauses == [0.25, 0.25]
        assert stats is s.stats
        assert (stats.txns, stats.removed, stats.started_ns) == (3, 3, NOW)
        assert stats.seconds >= stats.longest_txn_seconds > 0
