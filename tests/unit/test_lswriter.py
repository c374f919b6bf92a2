"""The .pb.gz writer (issue 17): full snapshots for LS beside the .evs.zst chain, with
real LMDB files and the in-memory store."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

from evsync.config import LightningStreamConfig
from evsync.snapshot import format_for
from evsync.snapshot.name import SnapshotName
from evsync.storage.memory import MemoryStore
from evsync.sync import Syncer
from evsync.tools import lmdb_write
from evsync.triggers.base import Batch, HintQueue
from tests.unit.test_syncer import make_config

NS = 1_000_000_000
WAIT = 5.0


def make_syncer(
    instance: str, tmp_path: Path, store: MemoryStore, ls: LightningStreamConfig
) -> Syncer:
    """A native-mode syncer writing .pb.gz as ``ls`` says."""
    cfg, lcfg = make_config(
        instance, tmp_path / instance, storage_retry_interval=0.05, lightningstream=ls
    )
    return Syncer(cfg, lcfg, store, HintQueue("main"), stop_event=threading.Event())


def put(syncer: Syncer, key: bytes, value: bytes) -> None:
    """An application write."""
    lmdb_write.put(syncer.lenv.env, "records", key, value, time.time_ns())


def names(store: MemoryStore, ext: str) -> list[SnapshotName]:
    """The store's objects of one extension, oldest first."""
    out = [SnapshotName.parse(o.name) for o in store.list("main__")]
    return [n for n in out if n.ext == ext]


def settle(syncer: Syncer) -> None:
    """Steps until the .pb.gz writer has nothing in flight."""
    deadline = time.monotonic() + WAIT
    while True:
        syncer.step(Batch())
        writer = syncer.ls_writer
        if writer is None or writer._inflight is None or time.monotonic() > deadline:
            return
        time.sleep(0.01)


def records(store: MemoryStore, name: SnapshotName) -> dict[bytes, bytes]:
    """The live records of a stored object."""
    fmt = format_for(name)
    assert fmt is not None
    with store.fetch(name.name) as data:
        stream = fmt.reader(data)
        return {k: v for _info, entries in stream.dbis() for k, _ts, fl, v in entries if not fl}


class TestWrite:
    """``lightningstream.write``: copies beside the chain."""

    def test_startup_writes_a_marked_copy(self, tmp_path: Path) -> None:
        """At startup with data, as LS would, a full .pb.gz is stored beside the first
        .evs.zst object; it carries every record and evsync's copy marker."""
        store = MemoryStore()
        s = make_syncer("a", tmp_path, store, LightningStreamConfig(write=True))
        put(s, b"k1", b"v1")
        s.startup(retry_forever=True)
        settle(s)
        [copy] = names(store, "pb.gz")
        assert copy.is_copy
        assert names(store, "evs.zst")
        assert records(store, copy) == {b"k1": b"v1"}

    def test_changes_coalesce_within_the_interval(self, tmp_path: Path) -> None:
        """Many changes inside one write_interval give many deltas but one more .pb.gz,
        which holds them all."""
        store = MemoryStore()
        s = make_syncer("a", tmp_path, store, LightningStreamConfig(write=True,
                                                                   write_interval=0.5))
        put(s, b"k0", b"v")
        s.startup(retry_forever=True)
        settle(s)
        for i in range(1, 5):
            put(s, f"k{i}".encode(), b"v")
            settle(s)
        assert len(names(store, "pb.gz")) == 1
        assert len(names(store, "evs.zst")) >= 5
        time.sleep(0.5)
        settle(s)
        pbs = names(store, "pb.gz")
        assert len(pbs) == 2
        assert set(records(store, pbs[-1])) == {f"k{i}".encode() for i in range(5)}

    def test_a_failing_pb_gz_store_does_not_hold_up_deltas(self, tmp_path: Path) -> None:
        """While every .pb.gz store fails, .evs.zst deltas keep being stored; the .pb.gz
        comes once the bucket takes it, with the latest data (a fresh dump)."""
        store = MemoryStore()
        s = make_syncer("a", tmp_path, store, LightningStreamConfig(write=True,
                                                                   write_interval=0.01))
        put(s, b"k0", b"v")
        s.startup(retry_forever=True)
        settle(s)
        real_store = store.store

        def refuse_pb_gz(name: str, data: object) -> None:
            if name.endswith(".pb.gz"):
                raise OSError("simulated .pb.gz failure")
            real_store(name, data)  # type: ignore[arg-type]

        store.store = refuse_pb_gz  # type: ignore[method-assign]
        before = len(names(store, "evs.zst"))
        for i in range(1, 4):
            put(s, f"k{i}".encode(), b"v")
            time.sleep(0.02)  # past write_interval and the backoff's first step
            settle(s)
            settle(s)
        assert len(names(store, "evs.zst")) == before + 3
        assert s.metrics.ls_snapshot_failures.labels("main", "store")._value.get() >= 1
        store.store = real_store  # type: ignore[method-assign]
        deadline = time.monotonic() + WAIT
        while len(names(store, "pb.gz")) < 2 and time.monotonic() < deadline:
            settle(s)
            time.sleep(0.02)
        assert set(records(store, names(store, "pb.gz")[-1])) == {b"k0", b"k1", b"k2", b"k3"}

    def test_merged_ls_data_is_not_written_again(self, tmp_path: Path) -> None:
        """A merge of an LS instance's .pb.gz is no local change: no new .pb.gz."""
        store = MemoryStore()
        ls = make_syncer("ls-1", tmp_path, store, LightningStreamConfig(only=True))
        put(ls, b"from-ls", b"v")
        ls.startup(retry_forever=True)
        settle(ls)
        ev = make_syncer("ev", tmp_path, store, LightningStreamConfig(write=True))
        put(ev, b"own", b"v")
        ev.startup(retry_forever=True)
        settle(ev)
        copies = [n for n in names(store, "pb.gz") if n.instance == "ev"]
        put(ls, b"from-ls-2", b"v")
        settle(ls)
        ev.receiver.list_bucket(startup=False)
        settle(ev)
        time.sleep(ev.config.lightningstream.write_interval)
        settle(ev)
        assert [n for n in names(store, "pb.gz") if n.instance == "ev"] == copies


class TestReviewedStates:
    """States a review of the .pb.gz writer found, each pinned."""

    def test_a_peer_that_writes_copies_makes_no_copy_due(self, tmp_path: Path) -> None:
        """Merging an evsync peer that stores copies of its own is no reason to write a
        copy: its copies carry its data to LS. (Every migrated instance used to dump
        and upload its whole LMDB about once a second, for each other's changes.)"""
        store = MemoryStore()
        ls = LightningStreamConfig(write=True)
        a = make_syncer("a", tmp_path, store, ls)
        put(a, b"from-a", b"v")
        a.startup(retry_forever=True)
        settle(a)
        b = make_syncer("b", tmp_path, store, ls)
        put(b, b"own", b"v")
        b.startup(retry_forever=True)
        settle(b)
        listed = [SnapshotName.parse(o.name) for o in store.list("main__")]
        b.on_listing(True, listed, time.monotonic())
        settle(b)
        copies = [n for n in names(store, "pb.gz") if n.instance == "b"]
        put(a, b"from-a-2", b"v")
        a.step(Batch(local=True))
        settle(a)
        newest_a = [n for n in names(store, "evs.zst") if n.instance == "a"][-1]
        b.step(Batch(remote={"a": newest_a}))
        assert lmdb_write.get(b.lenv.env, "records", b"from-a-2") is not None
        time.sleep(b.config.lightningstream.write_interval)
        settle(b)
        assert [n for n in names(store, "pb.gz") if n.instance == "b"] == copies

    def test_no_busy_loop_while_the_own_history_is_unmerged(self, tmp_path: Path) -> None:
        """While startup still waits for this instance's own history (S3 down, say), the
        writer asks the loop for no wake-up; it used to say "due now" and spin the loop
        at 100 % CPU."""
        s = make_syncer("a", tmp_path, MemoryStore(), LightningStreamConfig(write=True))
        put(s, b"k", b"v")
        assert s.ls_writer is not None
        s.peers.waiting_for.add("a")
        assert s.ls_writer.due_in(time.monotonic()) is None


class TestLsOnly:
    """``lightningstream.only``: an LS imitation for tests and rehearsals."""

    def test_writes_plain_pb_gz_and_no_evs(self, tmp_path: Path) -> None:
        """Only unmarked .pb.gz objects, as LS writes them; no .evs.zst at all."""
        store = MemoryStore()
        s = make_syncer("ls-1", tmp_path, store, LightningStreamConfig(only=True))
        put(s, b"k", b"v")
        s.startup(retry_forever=True)
        settle(s)
        [obj] = names(store, "pb.gz")
        assert not obj.is_copy and names(store, "evs.zst") == []

    def test_reads_copies_not_chains(self, tmp_path: Path) -> None:
        """It merges an evsync instance's copy (LS cannot read .evs.zst)."""
        store = MemoryStore()
        ev = make_syncer("ev", tmp_path, store, LightningStreamConfig(write=True))
        put(ev, b"from-ev", b"v")
        ev.startup(retry_forever=True)
        settle(ev)
        ls = make_syncer("ls-1", tmp_path, store, LightningStreamConfig(only=True))
        ls.startup(retry_forever=True)
        settle(ls)
        assert lmdb_write.get(ls.lenv.env, "records", b"from-ev") is not None
        merged = ls.peers.instances["ev"].merged
        assert merged is not None and merged.is_copy

    def test_empty_lmdb_writes_nothing(self, tmp_path: Path) -> None:
        """An empty LMDB never uploads, in either format."""
        store = MemoryStore()
        s = make_syncer("ls-1", tmp_path, store, dataclasses.replace(
            LightningStreamConfig(), only=True))
        s.startup(retry_forever=True)
        settle(s)
        assert store.list("main__") == []
