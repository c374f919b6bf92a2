"""The syncer's rules (DESIGN §5) with real LMDB files and the in-memory store."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import pytest

from evsync.config import (
    Config,
    DeltasConfig,
    LmdbConfig,
    LmdbOptions,
    MemoryOptions,
    StorageConfig,
)
from evsync.errors import ObjectNotFoundError, StorageUnavailableError
from evsync.snapshot import (
    EVS_ZST,
    FORMATS,
    LS_PB_GZ,
    DbiInfo,
    Entry,
    SnapshotFormat,
    SnapshotHeader,
    SnapshotReader,
    SnapshotStream,
    WriteStats,
    format_for,
    write_snapshot,
)
from evsync.snapshot.name import SnapshotName, delta_extra
from evsync.storage.memory import MemoryStore
from evsync.sync import ObjectSource, Syncer
from evsync.sync import receiver as receiver_mod
from evsync.sync.receiver import MAX_RELIST_PASSES
from evsync.tools import lmdb_write
from evsync.triggers import base as base_mod
from evsync.triggers.base import Batch, Hint, HintQueue


def make_config(
    instance: str, path: Path, deltas: DeltasConfig | None = None, **overrides: Any
) -> tuple[Config, LmdbConfig]:
    lcfg = LmdbConfig(
        name="main",
        path=str(path),
        schema_tracks_changes=True,
        options=LmdbOptions(create=True, map_size=1 << 24),
    )
    cfg = Config(
        instance=instance,
        lmdbs={"main": lcfg},
        storage=StorageConfig(type="memory", options=MemoryOptions()),
        storage_retry_interval=0.01,
        storage_retry_count=2,
        storage_force_snapshot_interval=0,
        deltas=deltas or DeltasConfig(),
    )
    return dataclasses.replace(cfg, **overrides), lcfg


def make_syncer(
    instance: str,
    tmp_path: Path,
    store: MemoryStore,
    deltas: DeltasConfig | None = None,
    **kw: object,
) -> Syncer:
    cfg, lcfg = make_config(instance, tmp_path / instance, deltas)
    return Syncer(cfg, lcfg, store, HintQueue("main"), stop_event=threading.Event(), **kw)


def app_put(syncer: Syncer, key: bytes, value: bytes, ts: int, *, deleted: bool = False) -> None:
    """Write as the application would (through the syncer's own env, for brevity)."""
    lmdb_write.put(syncer.lenv.env, "records", key, value, ts, deleted=deleted)


def read(syncer: Syncer, key: bytes) -> tuple[bytes, int, bool] | None:
    return lmdb_write.get(syncer.lenv.env, "records", key)


def objects(store: MemoryStore, instance: str) -> list[str]:
    return [o.name for o in store.list("main__") if f"__{instance}__" in o.name]


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


class TestUploadRules:
    """When the syncer uploads, and when it must not."""

    def test_empty_lmdb_never_uploads(self, tmp_path: Path, store: MemoryStore) -> None:
        """An instance with an empty LMDB writes no object, even when forced to try."""
        a = make_syncer("a", tmp_path, store)
        assert a.run_once()
        assert objects(store, "a") == []

    def test_local_data_uploads_when_bucket_is_empty(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """An LMDB with data and an empty bucket uploads at once."""
        a = make_syncer("a", tmp_path, store)
        app_put(a, b"k", b"v", 1000)
        assert a.run_once()
        assert len(objects(store, "a")) == 1

    def test_merged_data_is_not_reuploaded(self, tmp_path: Path, store: MemoryStore) -> None:
        """A receiver whose only changes are merges uploads nothing."""
        a = make_syncer("a", tmp_path, store)
        app_put(a, b"k", b"v", 1000)
        a.run_once()
        b = make_syncer("b", tmp_path, store)
        assert b.run_once()
        assert read(b, b"k") == (b"v", 1000, False)
        b.step(Batch())
        assert objects(store, "b") == []

    def test_own_commits_are_reported_after_a_merge(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """Each merge's txn ids go to on_own_commits (the LMDB watcher's observer takes
        them as seen), and the step that merged decided the upload after them: nothing
        is left for a wake-up on the merge's own commit to do."""
        a = make_syncer("a", tmp_path, store)
        app_put(a, b"k", b"v", 1000)
        a.run_once()
        b = make_syncer("b", tmp_path, store)
        b.run_once()
        reported: list[int] = []
        b.on_own_commits.append(reported.extend)
        app_put(a, b"k", b"v2", 2000)
        a.step(Batch(local=True))
        b.step(Batch(remote={"a": stored(store, "a")[-1]}))
        assert read(b, b"k") == (b"v2", 2000, False)
        assert reported and reported[-1] == b.lenv.last_txn_id()
        assert b.ledger.last_synced == b.lenv.last_txn_id()
        assert objects(store, "b") == []

    def test_local_change_after_merge_is_uploaded(self, tmp_path: Path, store: MemoryStore) -> None:
        """A local write after a merge makes the next step upload."""
        a = make_syncer("a", tmp_path, store)
        app_put(a, b"k", b"v", 1000)
        a.run_once()
        b = make_syncer("b", tmp_path, store)
        b.run_once()
        app_put(b, b"k2", b"v2", 2000)
        b.step(Batch(local=True))
        assert len(objects(store, "b")) == 1

    def test_waits_for_own_history_before_uploading(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """A restarted instance whose own object cannot be loaded yet does not upload."""
        a = make_syncer("a", tmp_path, store)
        app_put(a, b"k", b"old", 1000)
        a.run_once()
        a.close()
        # The own object exists but fetching it fails: no upload may happen meanwhile.
        wiped = make_syncer("a", tmp_path / "wiped", store)
        app_put(wiped, b"k", b"reset", 500)
        original_open = store.open

        def failing_open(name: str) -> io.BytesIO:
            raise StorageUnavailableError("simulated")

        store.open = failing_open  # type: ignore[method-assign]
        assert not wiped.run_once()
        assert len(objects(store, "a")) == 1
        store.open = original_open  # type: ignore[method-assign]
        assert wiped.run_once()
        assert read(wiped, b"k") == (b"old", 1000, False)


class TestStorageFailures:
    """Storage failures make the syncer retry; no change is lost."""

    def test_store_failure_keeps_change_pending(self, tmp_path: Path, store: MemoryStore) -> None:
        """A failed store is reported, and the next attempt after recovery uploads it."""
        a = make_syncer("a", tmp_path, store)
        a.run_once()
        app_put(a, b"k", b"v", 1000)
        store.fail = True
        a.step(Batch(local=True))
        assert a.health.failing("store")
        assert a.stats.store_failures >= 1
        store.fail = False
        a.sender.backoff.succeeded()  # skip the wait between attempts
        a.step(Batch())
        assert len(objects(store, "a")) == 1
        assert not a.health.failing("store")


class TestRemoteObjects:
    """How remote objects are chosen and checked."""

    def test_only_the_newest_object_is_merged(self, tmp_path: Path, store: MemoryStore) -> None:
        """Of several full objects of one instance only the newest is fetched."""
        a = make_syncer("a", tmp_path, store, DeltasConfig(enabled=False))
        app_put(a, b"k", b"v1", 1000)
        a.run_once()
        app_put(a, b"k", b"v2", 2000)
        a.step(Batch(local=True))
        b = make_syncer("b", tmp_path, store)
        before = store.calls["open"]
        b.run_once()
        assert store.calls["open"] - before == 1
        assert read(b, b"k") == (b"v2", 2000, False)

    def test_older_hint_is_a_no_op(self, tmp_path: Path, store: MemoryStore) -> None:
        """A hint naming an object older than the merged one fetches nothing."""
        a = make_syncer("a", tmp_path, store)
        app_put(a, b"k", b"v1", 1000)
        a.run_once()
        old = objects(store, "a")[0]
        app_put(a, b"k", b"v2", 2000)
        a.step(Batch(local=True))
        b = make_syncer("b", tmp_path, store)
        b.run_once()
        before = store.calls["open"]
        b.step(Batch(remote={"a": SnapshotName.parse(old)}))
        assert store.calls["open"] == before

    def test_corrupt_object_leaves_lmdb_unchanged(self, tmp_path: Path, store: MemoryStore) -> None:
        """A truncated object is rejected and nothing of it is applied."""
        header = SnapshotHeader("main", "x", "h", 5_000, 1, (DbiInfo(b"records", 0, "", 2),))
        buf = io.BytesIO()
        write_snapshot(buf, header, [[(b"a", 5_000, 0, b"1"), (b"b", 5_000, 0, b"2")]])
        name = SnapshotName.build("main", "x", 5_000).name
        store.put_bytes(name, buf.getvalue()[:-6])
        b = make_syncer("b", tmp_path, store)
        app_put(b, b"a", b"local", 100)
        b.run_once()
        assert read(b, b"a") == (b"local", 100, False)
        assert read(b, b"b") is None
        assert name in b.bad_objects
        assert b.stats.objects_rejected == 1

    def test_object_whose_header_disagrees_with_its_name_is_rejected(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """An object renamed to another instance is refused."""
        header = SnapshotHeader("main", "x", "h", 5_000, 1, (DbiInfo(b"records", 0, "", 1),))
        buf = io.BytesIO()
        write_snapshot(buf, header, [[(b"a", 5_000, 0, b"1")]])
        store.put_bytes(SnapshotName.build("main", "y", 5_000).name, buf.getvalue())
        b = make_syncer("b", tmp_path, store)
        b.run_once()
        assert b.stats.objects_rejected == 1
        assert read(b, b"a") is None


def fill(syncer: Syncer, n: int = 100) -> None:
    """Records enough that a one-record delta is small next to the full object (the
    chain ends when its deltas add up to half the full object)."""
    for i in range(n):
        app_put(syncer, b"fill-%d" % i, hashlib.sha256(b"%d" % i).digest(), 500)


def stored(store: MemoryStore, instance: str) -> list[SnapshotName]:
    return sorted(SnapshotName.parse(n) for n in objects(store, instance))


class TestDeltas:
    """Deltas (DESIGN §7): what a sender ships after a change, and what a receiver merges."""

    def test_a_local_change_after_a_full_object_ships_a_delta_of_it_alone(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """The first upload is full; a one-record change then uploads a delta holding only
        that record, named __D<base> after the full object."""
        a = make_syncer("a", tmp_path, store)
        for i in range(50):
            app_put(a, b"k%d" % i, b"v", 1000 + i)
        a.run_once()
        app_put(a, b"k7", b"changed", 5000)
        a.step(Batch(local=True))
        first, second = stored(store, "a")
        assert not first.is_delta
        assert second.delta_base_ns == first.timestamp_ns
        reader = SnapshotReader(store.open(second.name))
        assert [list(e) for _, e in reader.dbis()] == [[(b"k7", 5000, 0, b"changed")]]

    def test_merged_entries_are_not_reshipped_in_a_delta(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """What a merge wrote is another instance's data: the next delta leaves it out."""
        a = make_syncer("a", tmp_path, store)
        b = make_syncer("b", tmp_path, store)
        app_put(a, b"mine", b"a", 1000)
        a.run_once()
        app_put(b, b"theirs", b"b", 2000)
        b.run_once()
        a.step(Batch(remote={"b": stored(store, "b")[-1]}))
        assert read(a, b"theirs") == (b"b", 2000, False)
        app_put(a, b"mine", b"a2", 3000)
        a.step(Batch(local=True))
        delta = stored(store, "a")[-1]
        assert delta.is_delta
        reader = SnapshotReader(store.open(delta.name))
        assert [[e[0] for e in es] for _, es in reader.dbis()] == [[b"mine"]]

    def test_a_receiver_applies_each_delta_on_its_position(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """A receiver that merged the full object merges each new delta alone."""
        a = make_syncer("a", tmp_path, store)
        b = make_syncer("b", tmp_path, store)
        app_put(a, b"k", b"v1", 1000)
        a.run_once()
        b.run_once()
        app_put(a, b"k", b"v2", 2000)
        a.step(Batch(local=True))
        before = store.calls["open"]
        b.step(Batch(remote={"a": stored(store, "a")[-1]}))
        assert store.calls["open"] - before == 1
        assert read(b, b"k") == (b"v2", 2000, False)

    def test_a_new_receiver_merges_the_full_object_then_the_deltas(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """Every change of the chain reaches an instance that starts after it was written."""
        a = make_syncer("a", tmp_path, store)
        fill(a)
        app_put(a, b"k0", b"v", 1000)
        a.run_once()
        for i in range(1, 4):
            app_put(a, b"k%d" % i, b"v", 1000 + i)
            a.step(Batch(local=True))
        assert [n.is_delta for n in stored(store, "a")] == [False, True, True, True]
        b = make_syncer("b", tmp_path, store)
        assert b.run_once()
        assert all(read(b, b"k%d" % i) == (b"v", 1000 + i, False) for i in range(4))

    def test_deltas_announced_before_one_drain_are_merged_without_a_listing(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """Three deltas announced while the receiver was busy reach it in one batch: the
        newest as the instance's name, the others as superseded links, so one step
        merges the whole chain and lists nothing (a gap would wait for a listing, which
        is rate-limited)."""
        a = make_syncer("a", tmp_path, store)
        b = make_syncer("b", tmp_path, store)
        fill(a)
        app_put(a, b"k0", b"v", 1000)
        a.run_once()
        b.run_once()
        for i in range(1, 4):
            app_put(a, b"k%d" % i, b"v", 1000 + i)
            a.step(Batch(local=True))
        deltas = stored(store, "a")[-3:]
        assert all(n.is_delta for n in deltas)
        for n in deltas:
            b.queue.put(Hint("mqtt", name=n.name))
        lists = store.calls["list"]
        b.step(b.queue.wait(0))
        assert all(read(b, b"k%d" % i) == (b"v", 1000 + i, False) for i in range(4))
        assert store.calls["list"] == lists

    def test_a_missing_delta_falls_back_to_the_newest_full_object(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """With a delta's base gone from the bucket, the receiver merges what it can reach,
        says so once, and reaches the newest data when the next full object appears."""
        a = make_syncer("a", tmp_path, store, DeltasConfig(max_chain=2))
        b = make_syncer("b", tmp_path, store)
        fill(a)
        app_put(a, b"k0", b"v", 1000)
        a.run_once()
        app_put(a, b"k1", b"v", 1001)
        a.step(Batch(local=True))
        app_put(a, b"k2", b"v", 1002)
        a.step(Batch(local=True))
        names = stored(store, "a")
        store.delete(names[1].name)  # the first delta
        b.run_once()
        assert read(b, b"k2") is None  # its delta builds on the missing one
        assert read(b, b"k0") == (b"v", 1000, False)
        assert read(b, b"k1") is None
        app_put(a, b"k3", b"v", 1003)
        a.step(Batch(local=True))  # the chain is full: a new full object
        assert not stored(store, "a")[-1].is_delta
        b.step(Batch(remote={"a": stored(store, "a")[-1]}))
        assert all(read(b, b"k%d" % i) == (b"v", 1000 + i, False) for i in range(4))

    def test_disabled_deltas_upload_full_objects(self, tmp_path: Path, store: MemoryStore) -> None:
        """deltas.enabled: false: every change uploads a full object, as Lightning Stream."""
        a = make_syncer("a", tmp_path, store, DeltasConfig(enabled=False))
        app_put(a, b"k", b"v1", 1000)
        a.run_once()
        app_put(a, b"k", b"v2", 2000)
        a.step(Batch(local=True))
        assert [n.is_delta for n in stored(store, "a")] == [False, False]

    def test_a_delta_whose_header_is_full_is_rejected(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """A name that says delta on an object whose header says full is corrupt."""
        a = make_syncer("a", tmp_path, store)
        app_put(a, b"k", b"v1", 1000)
        a.run_once()
        full_name = stored(store, "a")[0]
        forged = SnapshotName.build(
            "main", "a", full_name.timestamp_ns + 1, extras=(delta_extra(full_name.timestamp_ns),)
        )
        header = SnapshotHeader(
            db="main", instance="a", hostname="h", timestamp_ns=forged.timestamp_ns, txn_id=1,
            dbis=(DbiInfo(b"records", 0, "", 0),),
        )
        out = io.BytesIO()
        write_snapshot(out, header, [[]])
        store.store(forged.name, io.BytesIO(out.getvalue()))
        b = make_syncer("b", tmp_path, store)
        b.run_once()
        assert forged.name in b.bad_objects


class TestStartupRetry:
    """run() retries a failed startup; what the first attempt did must not block the next."""

    def test_an_own_object_merged_by_a_failed_startup_does_not_block_uploads(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """The first startup merges the own newest object, then its upload blows up; the
        retried startup must not wait for that object again, or the instance never uploads."""
        a = make_syncer("a", tmp_path, store)
        app_put(a, b"k", b"v1", 1000)
        a.run_once()
        a.close()
        again = make_syncer("a", tmp_path, store)
        app_put(again, b"k2", b"v2", 2000)
        original_store = store.store
        calls = {"n": 0}

        def store_once_broken(name: str, data: io.BytesIO) -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                raise ValueError("I/O operation on closed file.")
            original_store(name, data)

        store.store = store_once_broken  # type: ignore[method-assign,assignment]
        with pytest.raises(ValueError):
            again.startup(retry_forever=True)
        assert again.startup(retry_forever=True)
        assert "a" not in again.waiting_for
        assert len(objects(store, "a")) == 2


class TestOwnObjectsMissing:
    """A sender whose objects vanish from the bucket stores a full object again."""

    def test_a_listing_without_our_objects_brings_a_full_object(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """A listing begun after our last store that lacks our objects makes the next
        step store a full object although nothing changed; a listing begun before that
        store proves nothing and changes nothing."""
        a = make_syncer("a", tmp_path, store)
        app_put(a, b"k", b"v", 1000)
        assert a.run_once()
        stored = objects(store, "a")
        a.sender.check_listed(a.sender.last_store_mono - 1.0, frozenset())
        a.step(Batch())
        assert objects(store, "a") == stored
        for name in stored:
            store.delete(name)
        a.sender.check_listed(time.monotonic(), frozenset())
        a.step(Batch())
        (again,) = objects(store, "a")
        assert not SnapshotName.parse(again).is_delta
        b = make_syncer("b", tmp_path, store)
        assert b.run_once()
        assert read(b, b"k") == (b"v", 1000, False)


class _CountingSource(ObjectSource):
    """Serves objects from its own copy, counting fetches (the bucket only lists)."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.fetched: list[str] = []

    def fetch(self, name: SnapshotName) -> io.BytesIO:
        self.fetched.append(name.name)
        try:
            return io.BytesIO(self.objects[name.name])
        except KeyError:
            raise ObjectNotFoundError(name.name) from None


class _TwiceFormat(SnapshotFormat):
    """A test format: evs.zst bytes under another extension, counting reads and writes."""

    extension = "twice.zst"

    def __init__(self) -> None:
        self.reads = 0
        self.writes = 0

    def reader(
        self, source: IO[bytes], *, verified: bool = False, max_inflated: int | None = None
    ) -> SnapshotStream:
        self.reads += 1
        return EVS_ZST.reader(source, verified=verified, max_inflated=max_inflated)

    def write(
        self, out: IO[bytes], header: SnapshotHeader, dbi_entries: Iterable[Iterable[Entry]]
    ) -> WriteStats:
        self.writes += 1
        return EVS_ZST.write(out, header, dbi_entries)


class TestSeams:
    """The receiver reads through an ObjectSource and the object's format; the sender
    writes through a format; neither knows which."""

    def test_objects_come_from_the_source(self, tmp_path: Path, store: MemoryStore) -> None:
        """A receiver with its own ObjectSource merges what the source serves: the bucket
        is listed, never read."""
        a = make_syncer("a", tmp_path, store)
        app_put(a, b"k", b"from-a", 1000)
        assert a.run_once()
        (name,) = objects(store, "a")
        source = _CountingSource({name: store.fetch(name).read()})
        reads = store.calls["open"]
        b = make_syncer("b", tmp_path, store, source=source)
        assert b.run_once()
        assert source.fetched == [name]
        assert store.calls["open"] == reads
        assert read(b, b"k") == (b"from-a", 1000, False)

    def test_a_gone_object_from_the_source_is_forgotten(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """An object the source cannot serve is not corrupt: it is not marked bad, the
        bucket is listed again, and an only-once run that keeps being told it exists ends
        (unsuccessful) instead of listing forever."""
        a = make_syncer("a", tmp_path, store)
        app_put(a, b"k", b"v", 1000)
        assert a.run_once()
        source = _CountingSource({})
        b = make_syncer("b", tmp_path, store, source=source)
        assert not b.run_once()
        assert read(b, b"k") is None
        assert b.stats.objects_rejected == 0
        assert b.bad_objects == set()
        assert 1 < len(source.fetched) <= MAX_RELIST_PASSES

    def test_a_new_format_plugs_in_by_extension(
        self, tmp_path: Path, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A format registered for an extension is written by a sender given it and read
        by every receiver for names with that extension; an unregistered one is ignored."""
        fmt = _TwiceFormat()
        off = DeltasConfig(enabled=False)
        a = make_syncer("a", tmp_path, store, off)
        a.sender.format = fmt
        app_put(a, b"k", b"v", 1000)
        assert a.run_once()
        (name,) = objects(store, "a")
        assert name.endswith(".twice.zst") and fmt.writes == 1

        b = make_syncer("b", tmp_path, store, off)
        assert b.run_once()  # not registered: nothing evsync reads
        assert read(b, b"k") is None and fmt.reads == 0

        monkeypatch.setitem(FORMATS, fmt.extension, fmt)
        assert format_for(name) is fmt
        c = make_syncer("c", tmp_path, store, off)
        assert c.run_once()
        assert read(c, b"k") == (b"v", 1000, False)
        assert fmt.reads == 2  # verified, then merged


class TestFormatFor:
    """Object names map to the format that reads them by extension."""

    def test_evs_zst_names(self) -> None:
        """A name or string ending in .evs.zst is read by the evs.zst format."""
        name = SnapshotName.build("main", "a", 1)
        assert format_for(name) is EVS_ZST
        assert format_for(name.name) is EVS_ZST

    def test_pb_gz_is_lightning_streams(self) -> None:
        """A .pb.gz name is read by the Lightning Stream format (issue 17)."""
        assert format_for(SnapshotName.build("main", "a", 1, ext="pb.gz")) is LS_PB_GZ

    def test_other_extensions_have_no_format(self) -> None:
        """Foreign and extensionless names have no format, so the receiver skips them
        (Lightning Stream's .pb.gz has one since issue 17)."""
        assert format_for(SnapshotName.build("main", "a", 1, ext="pb.gz")) is not None
        assert format_for("main__a__20260101-000000-000000000__GX.txt") is None
        assert format_for("no-extension") is None


class TestRejectionKinds:
    """What a rejection means depends on whose fault it is: the object's, or this host's."""

    def _objects(self, store: MemoryStore) -> tuple[str, str]:
        """A truncated object of x, and a valid object of y inflating past 1 MiB."""
        header = SnapshotHeader("main", "x", "h", 5_000, 1, (DbiInfo(b"records", 0, "", 1),))
        buf = io.BytesIO()
        write_snapshot(buf, header, [[(b"a", 5_000, 0, b"1")]])
        corrupt = SnapshotName.build("main", "x", 5_000).name
        store.put_bytes(corrupt, buf.getvalue()[:-6])
        header = SnapshotHeader("main", "y", "h", 6_000, 1, (DbiInfo(b"records", 0, "", 1),))
        buf = io.BytesIO()
        write_snapshot(buf, header, [[(b"big", 6_000, 0, b"v" * (2 << 20))]])
        oversized = SnapshotName.build("main", "y", 6_000).name
        store.put_bytes(oversized, buf.getvalue())
        return corrupt, oversized

    def test_only_corrupt_objects_are_hidden_from_the_cleaner(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """Both objects are rejected and never fetched again, but only the corrupt one is
        kept from the cleaner: an object too large for this host is a valid link of its
        instance's chain for every other host."""
        corrupt, oversized = self._objects(store)
        cfg, lcfg = make_config("b", tmp_path / "b")
        cfg = dataclasses.replace(cfg, storage_max_inflated_size=1 << 20)
        b = Syncer(cfg, lcfg, store, HintQueue("main"), stop_event=threading.Event())
        b.run_once()
        assert {corrupt, oversized} <= b.bad_objects
        assert b.peers.corrupt_objects == {corrupt}

    def test_an_object_too_large_here_fails_the_load_check(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """Rejecting an object that only this host's cap refuses fails the load check
        (every peer's object may share its fate); a corrupt object alone does not."""
        _corrupt, _oversized = self._objects(store)
        cfg, lcfg = make_config("b", tmp_path / "b")
        cfg = dataclasses.replace(cfg, storage_max_inflated_size=1 << 20)
        b = Syncer(cfg, lcfg, store, HintQueue("main"), stop_event=threading.Event())
        b.run_once()
        load = b.health.snapshot()["load"]
        assert load["failing_for_seconds"] is not None, load
        assert "cannot merge main__y__" in str(load["last_error"])
        assert "storage_max_inflated_size" in str(load["last_error"])

    def test_a_corrupt_object_alone_leaves_the_load_check_healthy(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """A corrupt object is its sender's fault: loading works, the check stays ok."""
        corrupt, oversized = self._objects(store)
        store.delete(oversized)
        b = make_syncer("b", tmp_path, store)
        b.run_once()
        assert corrupt in b.bad_objects
        assert b.health.snapshot()["load"]["failing_for_seconds"] is None


class TestReviewedStates:
    """States a review of the self-healing work found, each pinned."""

    def test_a_short_plan_is_not_stuck_before_its_listing_runs(
        self, tmp_path: Path, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A receiver hears only of the newest delta while its re-listing is held back by
        the rate limit: it is not marked stuck meanwhile, and once the listing runs it
        merges the delta it did not know and the newest. (It was marked stuck at the next
        step, before any listing, and waited for the sender's next full object.)"""
        monkeypatch.setattr(receiver_mod, "RELIST_MIN_SECONDS", 0.3)
        a = make_syncer("a", tmp_path, store)
        fill(a)
        app_put(a, b"k0", b"v", 1000)
        a.run_once()
        b = make_syncer("b", tmp_path, store)
        b.run_once()
        b.receiver.list_bucket(startup=False)  # a listing just ran: the next one waits
        for i in (1, 2):
            app_put(a, b"k%d" % i, b"v", 1000 + i)
            a.step(Batch(local=True))
        newest = stored(store, "a")[-1]
        assert newest.is_delta
        b.step(Batch(remote={"a": newest}))
        b.step(Batch())
        assert b.instances["a"].stuck is None
        time.sleep(0.35)
        b.step(Batch())
        assert read(b, b"k1") == (b"v", 1001, False)
        assert read(b, b"k2") == (b"v", 1002, False)

    def test_a_rejected_name_the_queue_forgot_cannot_hide_its_instance(
        self, tmp_path: Path, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The queue remembers a bounded number of rejected names; when a junk name it
        forgot is hinted again, the receiver rejects it in the queue once more, so the
        instance's real later names are still news."""
        monkeypatch.setattr(base_mod, "MAX_REJECTED_NAMES", 1)
        junk = SnapshotName.build("main", "x", 4_000_000_000_000_000_000)
        store.put_bytes(junk.name, b"junk")
        b = make_syncer("b", tmp_path, store)
        b.run_once()
        assert junk.name in b.bad_objects
        q = b.queue
        q.reject(SnapshotName.build("main", "z", 1))  # pushes the junk name out
        assert q.put(Hint("listing", name=junk.name))  # news to the queue again
        b.step(q.wait(0))
        real = SnapshotName.build("main", "x", 5_000)
        assert q.put(Hint("mqtt", name=real.name))


class TestCopyOnlyInstances:
    """An instance with nothing but .pb.gz copies left is found by a running syncer."""

    def test_a_running_syncer_merges_a_copy_only_instance_from_the_listing(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """Hints never carry copies, so the lister's listing hands the newest copy of an
        instance without any .evs.zst object to the receiver: it merges it at the next
        step. (Only a startup listing found one; a running daemon never did.)"""
        from evsync.snapshot.lightningstream import LS_PB_GZ
        from evsync.snapshot.name import COPY_EXTRA

        b = make_syncer("b", tmp_path, store)
        assert b.run_once()
        header = SnapshotHeader("main", "x", "h", 5_000, 7, (DbiInfo(b"records", 0, "", 1),))
        buf = io.BytesIO()
        LS_PB_GZ.write(buf, header, [[(b"k", 5_000, 0, b"from-copy")]])
        name = SnapshotName.build("main", "x", 5_000, extras=(COPY_EXTRA,), ext="pb.gz")
        store.put_bytes(name.name, buf.getvalue())
        listed = [SnapshotName.parse(o.name) for o in store.list("main__")]
        b.on_listing(True, listed, time.monotonic())
        b.step(Batch())
        assert read(b, b"k") == (b"from-copy", 5_000, False)
