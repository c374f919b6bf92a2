"""The tombstone sweeper on real LMDB files: what it removes, and in how short txns."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from evsync.config import SweeperConfig
from evsync.lmdb.env import LmdbEnv
from evsync.lmdb.header import FLAG_DELETED, encode_header
from evsync.sweeper import Sweeper

EnvFactory = Callable[..., LmdbEnv]
NS = 1_000_000_000
HOUR = 3600 * NS
NOW = 1_800_000_000 * NS
CFG = SweeperConfig(enabled=True, retention_days=2)


def put(lenv: LmdbEnv, dbi: bytes, items: dict[bytes, tuple[int, bool]], raw: bool = False) -> None:
    """Write entries ``key -> (timestamp, deleted)`` with native headers (or raw values)."""
    handle = lenv.env.open_db(dbi, create=True)
    with lenv.env.begin(write=True) as txn:
        for key, (ts, deleted) in items.items():
            value = b"raw" if raw else encode_header(ts, 1, FLAG_DELETED if deleted else 0)
            txn.put(key, value if deleted or raw else value + b"v", db=handle)


def keys(lenv: LmdbEnv, dbi: bytes) -> list[bytes]:
    handle = lenv.env.open_db(dbi)
    with lenv.env.begin() as txn:
        return [bytes(k) for k in txn.cursor(db=handle).iternext(values=False)]


def sweeper(lenv: LmdbEnv, cfg: SweeperConfig = CFG, *, shadow: bool = False) -> Sweeper:
    return Sweeper(lenv, cfg, shadow_mode=shadow, clock_ns=lambda: NOW)


def mix(n: int) -> dict[bytes, tuple[int, bool]]:
    """LS's mix: a third live and old, a third recently deleted, a third deleted 50 h ago."""
    items: dict[bytes, tuple[int, bool]] = {}
    for i in range(n):
        kind = i % 3
        ts, deleted = [(NOW - 100 * HOUR, False), (NOW - HOUR, True), (NOW - 50 * HOUR, True)][kind]
        items[f"k{i:06d}".encode()] = (ts, deleted)
    return items


class TestWhatIsRemoved:
    """Only tombstones older than the retention go."""

    def test_empty_lmdb(self, make_env: EnvFactory) -> None:
        """An LMDB without DBIs finishes at once with nothing counted."""
        stats = sweeper(make_env()).run_pass(pause=lambda _s: None)
        assert (stats.live, stats.deleted, stats.removed) == (0, 0, 0)

    def test_empty_dbi(self, make_env: EnvFactory) -> None:
        """An empty DBI is swept without error."""
        lenv = make_env()
        lenv.env.open_db(b"records", create=True)
        stats = sweeper(lenv).run_pass(pause=lambda _s: None)
        assert stats.removed == 0

    def test_ls_mix_of_3000(self, make_env: EnvFactory) -> None:
        """3000 entries, retention 2 days: 1000 live and 1000 recent tombstones stay, the 1000
        tombstones 50 h old are removed."""
        lenv = make_env()
        items = mix(3000)
        put(lenv, b"records", items)
        stats = sweeper(lenv).run_pass(pause=lambda _s: None)
        assert (stats.live, stats.deleted, stats.removed) == (1000, 1000, 1000)
        expected = sorted(k for k, (ts, d) in items.items() if not d or ts > NOW - 48 * HOUR)
        assert keys(lenv, b"records") == expected

    def test_old_live_values_are_never_removed(self, make_env: EnvFactory) -> None:
        """A live value far older than the retention stays."""
        lenv = make_env()
        put(lenv, b"records", {b"ancient": (1, False)})
        sweeper(lenv).run_pass(pause=lambda _s: None)
        assert keys(lenv, b"records") == [b"ancient"]

    def test_nothing_to_remove_leaves_the_txn_id(self, make_env: EnvFactory) -> None:
        """A pass that removes nothing commits nothing: the LMDB txn id does not move, so no
        upload is triggered by a sweep."""
        lenv = make_env()
        put(lenv, b"records", {b"a": (NOW, False), b"b": (NOW - HOUR, True)})
        before = lenv.last_txn_id()
        sweeper(lenv).run_pass(pause=lambda _s: None)
        assert lenv.last_txn_id() == before

    def test_unparsable_values_are_counted_and_kept(self, make_env: EnvFactory) -> None:
        """A value without a header is counted invalid and left alone."""
        lenv = make_env()
        put(lenv, b"records", {b"junk": (0, False)}, raw=True)
        stats = sweeper(lenv).run_pass(pause=lambda _s: None)
        assert stats.invalid == 1 and keys(lenv, b"records") == [b"junk"]

    def test_a_dbi_added_between_passes_is_swept_next(self, make_env: EnvFactory) -> None:
        """DBIs are listed at each pass's start."""
        lenv = make_env()
        s = sweeper(lenv)
        s.run_pass(pause=lambda _s: None)
        put(lenv, b"later", {b"gone": (NOW - 50 * HOUR, True)})
        assert s.run_pass(pause=lambda _s: None).removed == 1


class TestWhichDbis:
    """Native mode sweeps data DBIs; shadow mode only the shadows."""

    def test_native_mode_leaves_sync_dbis(self, make_env: EnvFactory) -> None:
        """evsync's own _sync* DBIs are not swept in native mode."""
        lenv = make_env()
        put(lenv, b"_sync_evsync", {b"x": (NOW - 50 * HOUR, True)})
        put(lenv, b"records", {b"y": (NOW - 50 * HOUR, True)})
        sweeper(lenv).run_pass(pause=lambda _s: None)
        assert keys(lenv, b"_sync_evsync") == [b"x"]
        assert keys(lenv, b"records") == []

    def test_shadow_mode_sweeps_only_shadow_dbis(self, make_env: EnvFactory) -> None:
        """In shadow mode the raw data DBIs are neither touched nor counted invalid."""
        lenv = make_env()
        put(lenv, b"records", {b"raw": (0, False)}, raw=True)
        put(lenv, b"_sync_shadow_records", {b"old": (NOW - 50 * HOUR, True), b"new": (NOW, False)})
        stats = sweeper(lenv, shadow=True).run_pass(pause=lambda _s: None)
        assert stats.invalid == 0 and stats.removed == 1
        assert keys(lenv, b"records") == [b"raw"]
        assert keys(lenv, b"_sync_shadow_records") == [b"new"]


class TestShortTransactions:
    """The write lock is released between short txns, and nothing is skipped across them."""

    def test_tiny_lock_duration_takes_many_txns_and_misses_nothing(
        self, make_env: EnvFactory
    ) -> None:
        """With lock_duration ~0 every txn stops at the first clock check (256 entries):
        the pass spans many txns, each resuming exactly where the last stopped, and removes
        exactly the old tombstones — including those right at a txn boundary."""
        lenv = make_env()
        items = mix(3000)
        put(lenv, b"a", items)
        put(lenv, b"b", items)
        cfg = dataclasses.replace(CFG, lock_duration=1e-9, release_duration=0.0)
        s = sweeper(lenv, cfg)
        s.begin()
        steps = []
        while True:
            step = s.step()
            steps.append(step)
            if step.done:
                break
        assert len(steps) > 10
        assert sum(st.removed for st in steps) == 2000
        assert s.stats.live == 2000 and s.stats.deleted == 2000
        expected = sorted(k for k, (ts, d) in items.items() if not d or ts > NOW - 48 * HOUR)
        assert keys(lenv, b"a") == expected and keys(lenv, b"b") == expected
        assert all(st.txn_seconds >= 0 for st in steps)
        assert s.stats.longest_txn_seconds == max(st.txn_seconds for st in steps)

    def test_each_committed_step_reports_its_txn_id(self, make_env: EnvFactory) -> None:
        """A step that removed something returns the id of the txn it committed."""
        lenv = make_env()
        put(lenv, b"records", {b"old": (NOW - 50 * HOUR, True)})
        s = sweeper(lenv)
        s.begin()
        step = s.step()
        assert step.done and step.removed == 1
        assert step.txn_id == lenv.last_txn_id()
