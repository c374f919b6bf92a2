"""The syncer's rules (DESIGN §5) with real LMDB files and the in-memory store."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest

from evsync.config import Config, LmdbConfig, LmdbOptions, MemoryOptions, StorageConfig
from evsync.errors import StorageUnavailableError
from evsync.snapshot.codec import DbiInfo, SnapshotHeader, write_snapshot
from evsync.snapshot.name import SnapshotName
from evsync.storage.memory import MemoryStore
from evsync.syncer import Syncer
from evsync.tools import lmdb_write
from evsync.triggers.base import Batch, HintQueue


def make_config(instance: str, path: Path) -> tuple[Config, LmdbConfig]:
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
    )
    return cfg, lcfg


def make_syncer(instance: str, tmp_path: Path, store: MemoryStore, **kw: object) -> Syncer:
    cfg, lcfg = make_config(instance, tmp_path / instance)
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
        a._store_backoff.succeeded()  # skip the wait between attempts
        a.step(Batch())
        assert len(objects(store, "a")) == 1
        assert not a.health.failing("store")


class TestRemoteObjects:
    """How remote objects are chosen and checked."""

    def test_only_the_newest_object_is_merged(self, tmp_path: Path, store: MemoryStore) -> None:
        """Of several objects of one instance only the newest is fetched."""
        a = make_syncer("a", tmp_path, store)
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
