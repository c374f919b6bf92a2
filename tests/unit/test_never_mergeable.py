"""Objects that can never apply, and values that could never be read back (issue 16 §4).

A verified object that this LMDB can never take (a DBI name that is a plain key of the
main DBI, more DBIs than ``max_dbs``, DBI flags shadow mode cannot create, a map still
full after growing) is rejected once, with one line and a count, and never fetched
again; a failure that may pass (a full disk) is still retried. On the sending side a
value over the entry cap fails the dump with a line naming the DBI and key, so no
receiver is ever handed an object it cannot read. Real LMDB files, the memory store.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import threading
from pathlib import Path

import pytest

from evsync.config import LmdbOptions
from evsync.errors import EntryTooLargeError, PermanentLmdbError
from evsync.lmdb.env import MDB_REVERSEKEY, LmdbEnv
from evsync.lmdb.merge import Merger
from evsync.metrics import Metrics
from evsync.snapshot import DbiInfo, Entry, SnapshotHeader, write_snapshot
from evsync.snapshot.evs import MAX_ENTRY_DATA
from evsync.snapshot.name import SnapshotName
from evsync.storage.memory import MemoryStore
from evsync.sync import Syncer
from evsync.triggers.base import Batch, HintQueue
from tests.unit.test_syncer import app_put, make_config, objects

TS = 5_000
# steps after the first: each would fetch the object again if it were not marked bad
MORE_STEPS = 3
# a map big enough for one value at the entry cap, and the dump of it
BIG_MAP = 256 << 20
# DBIs in an object meant to overflow the receiver's max_dbs
TOO_MANY_DBIS = 12
SMALL_MAX_DBIS = 8


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def put_dbis(store: MemoryStore, instance: str, dbis: dict[bytes, int]) -> str:
    """An object of ``instance`` with one live entry in each DBI (name -> flags)."""
    name = SnapshotName.build("main", instance, TS).name
    infos = tuple(DbiInfo(dbi, flags, "", 1) for dbi, flags in sorted(dbis.items()))
    buf = io.BytesIO()
    write_snapshot(buf, SnapshotHeader("main", instance, "h", TS, 1, infos),
                   [[(b"k", TS, 0, b"v")] for _ in infos])
    store.put_bytes(name, buf.getvalue())
    return name


def syncer(tmp_path: Path, store: MemoryStore, metrics: Metrics, *, shadow: bool = False,
           max_dbs: int | None = None, map_size: int | None = None) -> Syncer:
    cfg, lcfg = make_config("b", tmp_path / "b")
    options = lcfg.options
    if max_dbs is not None:
        options = dataclasses.replace(options, max_dbs=max_dbs)
    if map_size is not None:
        options = dataclasses.replace(options, map_size=map_size)
    lcfg = dataclasses.replace(lcfg, options=options, schema_tracks_changes=not shadow)
    cfg = dataclasses.replace(cfg, lmdbs={"main": lcfg})
    return Syncer(cfg, lcfg, store, HintQueue("main", own_instance="b"),
                  stop_event=threading.Event(), metrics=metrics)


def rejected_lines(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if f"rejecting unmergeable object {name}: " in r.getMessage()]


def step_again(b: Syncer, name: str) -> None:
    """Steps as a running daemon takes them: listings, and a hint for the object."""
    for _ in range(MORE_STEPS):
        b.receiver._backoff("x").succeeded()  # no retry delay stands in the way
        b.receiver.list_bucket(startup=False)
        b.step(Batch(remote={"x": SnapshotName.parse(name)}))


def rejected_count(m: Metrics) -> float:
    return m.registry.get_sample_value(
        "evsync_objects_rejected_total", {"db": "main", "instance": "x"}
    ) or 0.0


class TestRejectedOnce:
    """An object the LMDB can never take is rejected on its first merge, with one line
    naming it and why, one count on evsync_objects_rejected_total, and no more fetches."""

    def test_a_dbi_name_that_is_a_plain_key_is_rejected_once(
        self, tmp_path: Path, store: MemoryStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The main DBI holds b"plain" as a plain key; an object with a DBI of that name is
        rejected once ("is not a DBI") instead of failing its merge every few seconds."""
        m = Metrics()
        b = syncer(tmp_path, store, m)
        with b.lenv.env.begin(write=True) as txn:
            txn.put(b"plain", b"an application's key in the main DBI")
        name = put_dbis(store, "x", {b"plain": 0})
        with caplog.at_level(logging.ERROR):
            b.run_once()
            opened = store.calls["open"]
            step_again(b, name)
        assert store.calls["open"] == opened, "fetched again"
        lines = rejected_lines(caplog, name)
        assert len(lines) == 1, lines
        assert "root key b'plain' is not a DBI" in lines[0]
        assert rejected_count(m) == 1
        assert name in b.bad_objects
        assert not m.registry.get_sample_value("evsync_merge_failures_total", {"db": "main"})

    def test_more_dbis_than_max_dbs_is_rejected_once(
        self, tmp_path: Path, store: MemoryStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An object with more DBIs than the LMDB's max_dbs allows: rejected once, the line
        naming the DBI that could not be created and the limit."""
        m = Metrics()
        b = syncer(tmp_path, store, m, max_dbs=SMALL_MAX_DBIS)
        name = put_dbis(store, "x", {b"d%02d" % i: 0 for i in range(TOO_MANY_DBIS)})
        with caplog.at_level(logging.ERROR):
            b.run_once()
            opened = store.calls["open"]
            step_again(b, name)
        assert store.calls["open"] == opened, "fetched again"
        lines = rejected_lines(caplog, name)
        assert len(lines) == 1, lines
        assert f"max_dbs ({SMALL_MAX_DBIS})" in lines[0]
        assert rejected_count(m) == 1

    def test_dbi_flags_shadow_mode_cannot_create_are_rejected_once(
        self, tmp_path: Path, store: MemoryStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Shadow mode cannot create a MDB_REVERSEKEY DBI: an object holding one is rejected
        once, the line naming the DBI and the flag."""
        m = Metrics()
        b = syncer(tmp_path, store, m, shadow=True)
        name = put_dbis(store, "x", {b"reversed": MDB_REVERSEKEY})
        with caplog.at_level(logging.ERROR):
            b.run_once()
            opened = store.calls["open"]
            step_again(b, name)
        assert store.calls["open"] == opened, "fetched again"
        lines = rejected_lines(caplog, name)
        assert len(lines) == 1, lines
        assert "'reversed' uses MDB_REVERSEKEY" in lines[0]
        assert rejected_count(m) == 1


class _MapAtItsLimit(LmdbEnv):
    """An LMDB whose map cannot grow any more (a grow that changes nothing)."""

    def grow_map(self) -> int:
        return int(self.env.info()["map_size"])


class TestMapFullAfterGrowth:
    """A merge whose map stays full however often it grows raises the permanent error
    (the receiver then rejects the object once) rather than a retryable LmdbError."""

    def test_a_map_that_stays_full_is_permanent(self, tmp_path: Path) -> None:
        """20,000 entries into a 1 MiB map that cannot grow: PermanentLmdbError."""
        _cfg, lcfg = make_config("b", tmp_path / "b")
        lcfg = dataclasses.replace(lcfg, options=LmdbOptions(create=True, map_size=1 << 20))
        lenv = _MapAtItsLimit(lcfg)
        try:
            entries: list[Entry] = [(b"k%06d" % i, TS, 0, b"v" * 200) for i in range(20_000)]
            with pytest.raises(PermanentLmdbError, match="map still full after 16 growths"):
                Merger(lenv).merge([(DbiInfo(b"records", 0, "", len(entries)), entries)])
        finally:
            lenv.close()


class TestValueOverTheEntryCap:
    """The sender never uploads an object receivers cannot read."""

    def test_the_writer_refuses_a_value_over_the_cap(self) -> None:
        """write_snapshot raises EntryTooLargeError naming the DBI and key."""
        big = bytes(MAX_ENTRY_DATA)  # with its one-byte key, one byte over the cap
        header = SnapshotHeader("main", "a", "h", TS, 1, (DbiInfo(b"records", 0, "", 1),))
        with pytest.raises(EntryTooLargeError, match=r"DBI 'records' key b'k': its value of"):
            write_snapshot(io.BytesIO(), header, [[(b"k", TS, 0, big)]])

    def test_a_value_without_a_header_fails_the_dump_saying_what_to_do(
        self, tmp_path: Path, store: MemoryStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A plain value (no native header) in a schema_tracks_changes LMDB: the dump
        fails with one line naming the DBI and key and saying how to fix it (rewrite or
        delete the key, or shadow mode), the store check fails and nothing is
        uploaded."""
        m = Metrics()
        a = syncer(tmp_path, store, m)
        with a.lenv.begin(write=True) as txn:
            txn.put(b"raw", b"no header", db=a.lenv.open_dbi(b"records", txn, create_flags=0))
        with caplog.at_level(logging.ERROR):
            a.run_once()
        lines = [r.getMessage() for r in caplog.records if "cannot dump" in r.getMessage()]
        assert len(lines) == 1, lines
        assert "DBI 'records' key b'raw': value too short for a header" in lines[0]
        assert "rewrite or delete this key" in lines[0]
        assert "schema_tracks_changes: false" in lines[0]
        assert a.health.failing("store")
        assert objects(store, "b") == []

    def test_a_value_over_the_cap_fails_the_dump_with_one_line(
        self, tmp_path: Path, store: MemoryStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A value over the entry cap in the LMDB: the dump fails with one line naming the
        DBI and key, evsync_dump_failures_total counts it, the store check fails and
        nothing is uploaded."""
        m = Metrics()
        a = syncer(tmp_path, store, m, map_size=BIG_MAP)
        app_put(a, b"huge", bytes(MAX_ENTRY_DATA), TS)
        with caplog.at_level(logging.ERROR):
            a.run_once()
        lines = [r.getMessage() for r in caplog.records if "cannot dump" in r.getMessage()]
        assert len(lines) == 1, lines
        assert "DBI 'records' key b'huge': its value of" in lines[0]
        assert m.registry.get_sample_value("evsync_dump_failures_total", {"db": "main"}) == 1
        assert a.health.failing("store")
        assert objects(store, "b") == []
