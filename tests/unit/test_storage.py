"""Storage backends (BlobStore contract): the fs directory store and the in-memory store."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from evsync.errors import (
    CorruptObjectError,
    ObjectNotFoundError,
    StorageError,
    StorageUnavailableError,
)
from evsync.snapshot.name import SnapshotName
from evsync.storage import fs as fs_module
from evsync.storage.base import BlobStore, ObjectInfo
from evsync.storage.fs import MAX_OBJECT_BYTES, STALE_TMP_SECONDS, FsStore
from evsync.storage.memory import MemoryStore
from evsync.sync import Syncer
from evsync.triggers.base import Batch, HintQueue
from tests.unit.test_syncer import app_put, make_config, read

NAMES = [
    "main__b__20231114-221320-000000002__GX.evs.zst",
    "main__a__20231114-221320-000000001__GX.evs.zst",
    "other__a__20231114-221320-000000001__GX.evs.zst",
    "main__a__20231114-221320-000000009__GX.evs.zst",
]


class FailingReader(io.RawIOBase):
    """A source stream that yields some bytes, then raises ``exc``."""

    def __init__(self, exc: BaseException, good: int = 3 << 20) -> None:
        self.exc = exc
        self.left = good

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.left <= 0:
            raise self.exc
        n = min(len(buffer), self.left)
        buffer[:n] = b"x" * n
        self.left -= n
        return n


@pytest.fixture(params=["fs", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    """Each backend in turn."""
    backend: BlobStore = FsStore(tmp_path / "bucket") if request.param == "fs" else MemoryStore()
    yield backend
    backend.close()


def put(store: BlobStore, name: str, data: bytes) -> None:
    """Store bytes."""
    store.store(name, io.BytesIO(data))


def get(store: BlobStore, name: str) -> bytes:
    """Read a whole object."""
    with store.open(name) as f:
        return f.read()


class TestContract:
    """store / list / open / delete, common to every backend."""

    def test_store_then_open(self, store: BlobStore) -> None:
        """What is stored is read back byte for byte."""
        payload = bytes(range(256)) * 10
        put(store, NAMES[0], payload)
        assert get(store, NAMES[0]) == payload

    def test_store_reads_from_current_position(self, store: BlobStore) -> None:
        """store copies from the stream's current position to its end."""
        src = io.BytesIO(b"skipKEEP")
        src.seek(4)
        store.store(NAMES[0], src)
        assert get(store, NAMES[0]) == b"KEEP"

    def test_store_overwrites(self, store: BlobStore) -> None:
        """Storing a name again replaces the object."""
        put(store, NAMES[0], b"first")
        put(store, NAMES[0], b"second")
        assert get(store, NAMES[0]) == b"second"
        assert [o.name for o in store.list()] == [NAMES[0]]

    def test_empty_object(self, store: BlobStore) -> None:
        """An empty object can be stored, listed with size 0 and read."""
        put(store, NAMES[0], b"")
        assert store.list() == [ObjectInfo(NAMES[0], 0)]
        assert get(store, NAMES[0]) == b""

    def test_list_sorted_with_sizes(self, store: BlobStore) -> None:
        """list returns every object sorted by name with its size."""
        for i, name in enumerate(NAMES):
            put(store, name, b"x" * (i + 1))
        listing = store.list()
        assert [o.name for o in listing] == sorted(NAMES)
        assert {o.name: o.size for o in listing} == {n: i + 1 for i, n in enumerate(NAMES)}

    def test_list_filters_prefix(self, store: BlobStore) -> None:
        """list(prefix) returns only names starting with the prefix, sorted."""
        for name in NAMES:
            put(store, name, b"x")
        assert [o.name for o in store.list("main__")] == sorted(
            n for n in NAMES if n.startswith("main__")
        )
        assert [o.name for o in store.list("main__a__")] == sorted(
            n for n in NAMES if n.startswith("main__a__")
        )
        assert store.list("nothing") == []

    def test_list_empty(self, store: BlobStore) -> None:
        """An empty store lists nothing."""
        assert store.list() == []

    def test_delete(self, store: BlobStore) -> None:
        """A deleted object is gone from list and open."""
        put(store, NAMES[0], b"x")
        put(store, NAMES[1], b"y")
        store.delete(NAMES[0])
        assert [o.name for o in store.list()] == [NAMES[1]]
        with pytest.raises(ObjectNotFoundError):
            store.open(NAMES[0])

    def test_delete_missing_is_fine(self, store: BlobStore) -> None:
        """Deleting a missing object does not raise (several cleaners may race)."""
        store.delete(NAMES[0])
        put(store, NAMES[0], b"x")
        store.delete(NAMES[0])
        store.delete(NAMES[0])
        assert store.list() == []

    def test_open_missing(self, store: BlobStore) -> None:
        """Opening a missing object raises ObjectNotFoundError."""
        with pytest.raises(ObjectNotFoundError):
            store.open(NAMES[0])

    def test_fetch_is_seekable_at_zero(self, store: BlobStore) -> None:
        """fetch returns a seekable file positioned at 0 holding the object."""
        payload = os.urandom(5000)
        put(store, NAMES[0], payload)
        with store.fetch(NAMES[0]) as f:
            assert f.seekable()
            assert f.tell() == 0
            assert f.read() == payload
            f.seek(100)
            assert f.read(10) == payload[100:110]

    def test_exists_without_a_get(self, store: BlobStore) -> None:
        """exists() says whether the bucket holds a name (what a receiver asks before it
        steps over a hinted checkpoint), without reading the object."""
        put(store, NAMES[0], b"x")
        opened: list[str] = []
        original = store.open
        store.open = lambda name: opened.append(name) or original(name)  # type: ignore[method-assign]
        assert store.exists(NAMES[0])
        assert not store.exists(NAMES[1])
        store.delete(NAMES[0])
        assert not store.exists(NAMES[0])
        assert opened == []

    def test_fetch_missing(self, store: BlobStore) -> None:
        """fetch of a missing object raises ObjectNotFoundError."""
        with pytest.raises(ObjectNotFoundError):
            store.fetch(NAMES[0])


class TestFsStore:
    """The directory backend: atomic stores, hidden temp files."""

    def test_objects_are_files(self, tmp_path: Path) -> None:
        """An object is a plain file named like the object in the root directory."""
        fs = FsStore(tmp_path / "b")
        put(fs, NAMES[0], b"data")
        assert (tmp_path / "b" / NAMES[0]).read_bytes() == b"data"

    def test_creates_root(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        """The root directory is created when missing, and a warning says so (a mistyped
        root_path would otherwise give the instance a bucket of its own, unnoticed)."""
        with caplog.at_level("WARNING", logger="evsync.storage.fs"):
            FsStore(tmp_path / "x" / "y")
        assert (tmp_path / "x" / "y").is_dir()
        assert [r.getMessage() for r in caplog.records] == [
            f"fs store: created {tmp_path / 'x' / 'y'} (a new, empty bucket)"
        ]

    def test_existing_root_opens_quietly(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An existing bucket directory is used without a warning."""
        with caplog.at_level("WARNING", logger="evsync.storage.fs"):
            FsStore(tmp_path)
        assert caplog.records == []

    def test_root_that_is_a_file_is_named(self, tmp_path: Path) -> None:
        """A root_path naming a file is refused with one line naming the config key."""
        file = tmp_path / "bucket"
        file.write_text("not a directory")
        with pytest.raises(StorageError) as err:
            FsStore(file)
        assert str(err.value) == f"storage.options.root_path: {file} is not a directory"

    @pytest.mark.parametrize(
        "name", [".hidden", ".main__a.evs.zst.1234.tmp", "upload.tmp", "x.tmp"]
    )
    def test_temp_names_not_listed(self, tmp_path: Path, name: str) -> None:
        """Files ending in .tmp or starting with '.' are never listed."""
        fs = FsStore(tmp_path / "b")
        (tmp_path / "b" / name).write_bytes(b"partial")
        put(fs, NAMES[0], b"x")
        assert [o.name for o in fs.list()] == [NAMES[0]]

    def test_subdirectories_not_listed(self, tmp_path: Path) -> None:
        """Directories inside the root are not objects."""
        fs = FsStore(tmp_path / "b")
        (tmp_path / "b" / "main__dir").mkdir()
        assert fs.list() == []

    @pytest.mark.parametrize("name", ["a/b", "", ".", ".."])
    def test_invalid_names(self, tmp_path: Path, name: str) -> None:
        """Names that would escape the flat directory are rejected."""
        fs = FsStore(tmp_path / "b")
        with pytest.raises(StorageError):
            put(fs, name, b"x")

    def test_failed_os_error_store_leaves_nothing(self, tmp_path: Path) -> None:
        """A source failing with OSError mid-copy leaves no object and no file behind."""
        fs = FsStore(tmp_path / "b")
        with pytest.raises(StorageUnavailableError):
            fs.store(NAMES[0], io.BufferedReader(FailingReader(OSError(5, "I/O error"))))
        assert fs.list() == []
        assert os.listdir(tmp_path / "b") == []

    def test_failed_store_keeps_previous_object(self, tmp_path: Path) -> None:
        """A failed overwrite leaves the previous object intact under its name."""
        fs = FsStore(tmp_path / "b")
        put(fs, NAMES[0], b"old")
        with pytest.raises(StorageUnavailableError):
            fs.store(NAMES[0], io.BufferedReader(FailingReader(OSError(5, "I/O error"))))
        assert get(fs, NAMES[0]) == b"old"

    def test_failed_store_other_exception_leaves_nothing(self, tmp_path: Path) -> None:
        """A source failing with any exception mid-copy leaves no object and no temp file."""
        fs = FsStore(tmp_path / "b")
        with pytest.raises(RuntimeError):
            fs.store(NAMES[0], io.BufferedReader(FailingReader(RuntimeError("boom"))))
        assert fs.list() == []
        assert not (tmp_path / "b" / NAMES[0]).exists()
        assert os.listdir(tmp_path / "b") == []

    def test_no_partial_file_under_final_name(self, tmp_path: Path) -> None:
        """While a store is in progress the final name does not exist yet."""
        fs = FsStore(tmp_path / "b")
        seen: list[list[str]] = []

        class Spy(io.RawIOBase):
            """Reports what the directory lists while the copy is running."""

            def __init__(self) -> None:
                self.chunks = 3

            def readable(self) -> bool:
                return True

            def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
                seen.append([o.name for o in fs.list()])
                if not self.chunks:
                    return 0
                self.chunks -= 1
                buffer[:1] = b"z"
                return 1

        fs.store(NAMES[0], Spy())
        assert seen
        assert all(s == [] for s in seen)
        assert get(fs, NAMES[0]) == b"zzz"
        assert os.listdir(tmp_path / "b") == [NAMES[0]]


class TestMemoryStore:
    """The in-memory backend's outage switch and helpers."""

    @pytest.mark.parametrize("op", ["list", "open", "store", "delete", "fetch"])
    def test_fail_raises_unavailable(self, op: str) -> None:
        """With fail=True every operation raises StorageUnavailableError."""
        mem = MemoryStore()
        put(mem, NAMES[0], b"x")
        mem.fail = True
        calls = {
            "list": mem.list,
            "open": lambda: mem.open(NAMES[0]),
            "store": lambda: put(mem, NAMES[1], b"y"),
            "delete": lambda: mem.delete(NAMES[0]),
            "fetch": lambda: mem.fetch(NAMES[0]),
        }
        with pytest.raises(StorageUnavailableError):
            calls[op]()

    def test_fail_changes_nothing(self) -> None:
        """Failed calls neither store nor delete; after recovery the old state is there."""
        mem = MemoryStore()
        put(mem, NAMES[0], b"x")
        mem.fail = True
        with pytest.raises(StorageUnavailableError):
            put(mem, NAMES[1], b"y")
        with pytest.raises(StorageUnavailableError):
            mem.delete(NAMES[0])
        mem.fail = False
        assert [o.name for o in mem.list()] == [NAMES[0]]

    def test_calls_counted(self) -> None:
        """Every call is counted by operation, failed ones included."""
        mem = MemoryStore()
        put(mem, NAMES[0], b"x")
        mem.list()
        mem.fail = True
        with pytest.raises(StorageUnavailableError):
            mem.list()
        assert mem.calls["store"] == 1
        assert mem.calls["list"] == 2

    def test_put_bytes(self) -> None:
        """put_bytes places raw bytes under a name."""
        mem = MemoryStore()
        mem.put_bytes(NAMES[0], b"raw")
        assert get(mem, NAMES[0]) == b"raw"

    def test_stored_bytes_are_a_copy(self) -> None:
        """Changing the source buffer after store does not change the object."""
        mem = MemoryStore()
        buf = bytearray(b"abc")
        mem.store(NAMES[0], io.BytesIO(buf))
        buf[0] = ord("z")
        assert get(mem, NAMES[0]) == b"abc"


def unreachable_s3(bucket: str, **options: Any) -> Any:
    """An S3Store whose endpoint is a free loopback port nothing listens on."""
    from evsync.config import S3Options
    from evsync.storage.s3 import S3Store
    from tests.helpers import free_port

    return S3Store(
        S3Options(
            bucket=bucket,
            endpoint_url=f"http://127.0.0.1:{free_port()}",
            access_key="k",
            secret_key="s",
            **options,
        )
    )


class TestS3Store:
    """The s3 backend's own duties, against an endpoint where nothing listens."""

    def test_a_failed_upload_leaves_the_file_open_for_the_retry(self) -> None:
        """boto3's upload closes its body when the PUT fails; the syncer retries with the same
        spooled file, so the store must hand boto3 a body whose close() does nothing."""
        s3 = unreachable_s3("down", dial_timeout=0.5, read_timeout=0.5)
        data = io.BytesIO(b"object")
        with pytest.raises(StorageUnavailableError):
            s3.store(NAMES[0], data)
        assert not data.closed
        s3.close()

    def test_a_small_body_is_one_put_object_of_its_bytes(self) -> None:
        """A body up to SINGLE_PUT_MAX_BYTES goes up as one PutObject whose body is the
        bytes after the current position (not through s3transfer, whose machinery cost
        a small delta's store ~0.4 ms of CPU more)."""
        from botocore.stub import Stubber

        s3 = unreachable_s3("bkt")
        body = io.BytesIO(b"skip" + b"object")
        body.read(4)
        with Stubber(s3._client) as stub:
            stub.add_response(
                "put_object", {}, {"Bucket": "bkt", "Key": NAMES[0], "Body": b"object"}
            )
            s3.store(NAMES[0], body)
            stub.assert_no_pending_responses()
        s3.close()

    def test_the_update_marker_takes_the_etag_the_put_answered(self) -> None:
        """With use_update_marker, a small ``.pb.gz`` store is its PutObject and the
        marker's PutObject naming the ETag that PUT answered: no HEAD in between."""
        from botocore.stub import ANY, Stubber

        from evsync.storage.s3 import UPDATE_MARKER_NAME

        s3 = unreachable_s3("bkt", use_update_marker=True)
        name = "main__a__20231114-221320-000000001.pb.gz"
        markers: list[bytes] = []
        with Stubber(s3._client) as stub:
            stored = {"Bucket": "bkt", "Key": name, "Body": b"gz"}
            marker = {"Bucket": "bkt", "Key": UPDATE_MARKER_NAME, "Body": ANY}
            stub.add_response("put_object", {"ETag": '"abc123"'}, stored)
            stub.add_response("put_object", {}, marker)

            def keep_marker(params: dict[str, Any], **_kw: Any) -> None:
                if params["Key"] == UPDATE_MARKER_NAME:
                    markers.append(params["Body"])

            s3._client.meta.events.register("before-parameter-build.s3.PutObject", keep_marker)
            s3.store(name, io.BytesIO(b"gz"))
            stub.assert_no_pending_responses()
        s3.close()
        assert len(markers) == 1
        marker_name, etag, _ns, deleted = markers[0].decode().split(":")
        assert (marker_name, etag, deleted) == (name, "abc123", "false")

    def test_exists_is_a_head(self) -> None:
        """exists() is one HEAD: True when it answers, False on a 404, and a 5xx raises
        StorageUnavailableError (worth a retry, not "gone")."""
        from botocore.stub import Stubber

        s3 = unreachable_s3("bkt")
        with Stubber(s3._client) as stub:
            stub.add_response("head_object", {"ContentLength": 1})
            stub.add_client_error("head_object", "404", http_status_code=404)
            stub.add_client_error("head_object", "InternalError", http_status_code=500)
            assert s3.exists(NAMES[0])
            assert not s3.exists(NAMES[1])
            with pytest.raises(StorageUnavailableError):
                s3.exists(NAMES[1])
            stub.assert_no_pending_responses()
        s3.close()


class TestFsStoreOpensOnlyRegularFiles:
    """Only regular files inside the root are read, and only within the size cap."""

    def test_a_fifo_is_never_opened(self, tmp_path: Path) -> None:
        """A FIFO named like an object is refused at once (opening it would block until
        a writer came) with a CorruptObjectError naming it."""
        fs = FsStore(tmp_path)
        os.mkfifo(tmp_path / NAMES[0])
        with pytest.raises(CorruptObjectError) as err:
            fs.fetch(NAMES[0])
        assert str(err.value) == f"fs store: {NAMES[0]} is a FIFO, not a regular file; not read"

    def test_a_symlink_is_not_followed(self, tmp_path: Path) -> None:
        """A symlink in the bucket directory is refused, never followed to its target."""
        secret = tmp_path / "secret"
        secret.write_bytes(b"not for the bucket")
        root = tmp_path / "b"
        fs = FsStore(root)
        (root / NAMES[0]).symlink_to(secret)
        with pytest.raises(CorruptObjectError, match="is a symlink, not a regular file"):
            fs.open(NAMES[0])

    def test_a_directory_is_refused(self, tmp_path: Path) -> None:
        """A directory named like an object (a hint can name one) is never read. (A
        device needs root to create; it takes the same path as the FIFO.)"""
        fs = FsStore(tmp_path)
        (tmp_path / NAMES[0]).mkdir()
        with pytest.raises(CorruptObjectError, match="is a directory, not a regular file"):
            fs.open(NAMES[0])

    def test_size_is_checked_before_copying(self, tmp_path: Path) -> None:
        """An 8 GiB sparse file is refused by its size: no byte is copied, so no 8 GiB
        temp file appears."""
        fs = FsStore(tmp_path / "b")
        with (tmp_path / "b" / NAMES[0]).open("wb") as f:
            f.truncate(8 << 30)
        with pytest.raises(CorruptObjectError) as err:
            fs.fetch(NAMES[0])
        assert str(err.value) == (
            f"fs store: {NAMES[0]} is {8 << 30} bytes, over the {MAX_OBJECT_BYTES}-byte "
            "object size cap; not read"
        )

    def test_the_cap_is_inclusive(self, tmp_path: Path) -> None:
        """An object of exactly the cap is read; one byte more is refused."""
        fs = FsStore(tmp_path, max_object_bytes=10)
        put(fs, NAMES[0], b"x" * 10)
        put(fs, NAMES[1], b"x" * 11)
        with fs.fetch(NAMES[0]) as f:
            assert f.read() == b"x" * 10
        with pytest.raises(CorruptObjectError, match="over the 10-byte object size cap"):
            fs.fetch(NAMES[1])


class TestFsStaleTempFiles:
    """Temp files of a store killed half-way (kill -9) do not pile up."""

    @staticmethod
    def _temp(root: Path, age: float) -> Path:
        tmp = root / f".{NAMES[0]}.0123abcd.tmp"
        tmp.write_bytes(b"partial")
        then = time.time() - age
        os.utime(tmp, (then, then))
        return tmp

    def test_stale_temp_files_are_removed_at_start(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A temp file older than STALE_TMP_SECONDS is removed when the store opens, with
        one line; a fresh one (another process's store in progress) is left alone."""
        stale = self._temp(tmp_path, STALE_TMP_SECONDS + 60)
        fresh = tmp_path / f".{NAMES[1]}.89abcdef.tmp"
        fresh.write_bytes(b"being written")
        with caplog.at_level("INFO", logger="evsync.storage.fs"):
            FsStore(tmp_path)
        assert not stale.exists()
        assert fresh.exists()
        assert [r.getMessage() for r in caplog.records] == [
            f"fs store: removed 1 stale temp file(s) of interrupted stores from {tmp_path} at start"
        ]

    def test_objects_and_foreign_files_are_kept(self, tmp_path: Path) -> None:
        """Only evsync's temp names (.<name>.<id>.tmp) are candidates, however old."""
        keep = [tmp_path / NAMES[0], tmp_path / "notes.tmp", tmp_path / ".hidden"]
        then = time.time() - 10 * STALE_TMP_SECONDS
        for path in keep:
            path.write_bytes(b"x")
            os.utime(path, (then, then))
        FsStore(tmp_path)
        assert all(p.exists() for p in keep)

    def test_a_long_running_store_removes_them_while_listing(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A temp file that turns stale while the daemon runs (a restart right after the
        kill found it fresh) is removed by a listing once STALE_TMP_SECONDS passed."""
        fs = FsStore(tmp_path)
        tmp = self._temp(tmp_path, STALE_TMP_SECONDS + 60)
        fs.list()
        assert tmp.exists()  # checked at most every STALE_TMP_SECONDS
        later = time.monotonic() + STALE_TMP_SECONDS
        monkeypatch.setattr(fs_module.time, "monotonic", lambda: later)
        assert fs.list() == []
        assert not tmp.exists()


class TestFsSpecialFilesInASyncer:
    """A running syncer skips what the fs store refuses, and keeps serving."""

    def test_a_fifo_in_the_bucket_is_skipped_with_one_line(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A FIFO in the bucket directory is never opened: a hint naming it (the fs
        watcher sees it appear) ends in one 'rejecting' line and a metric, the name is
        never tried again, and a real object merges afterwards."""
        fs = FsStore(tmp_path / "bucket")
        cfg, lcfg = make_config("a", tmp_path / "a")
        a = Syncer(cfg, lcfg, fs, HintQueue("main"))
        b_cfg, b_lcfg = make_config("b", tmp_path / "b")
        b = Syncer(b_cfg, b_lcfg, fs, HintQueue("main"))
        try:
            assert a.run_once()
            fifo = SnapshotName.build("main", "x", time.time_ns())
            os.mkfifo(tmp_path / "bucket" / fifo.name)
            with caplog.at_level("INFO", logger="evsync.sync"):
                a.step(Batch(remote={"x": fifo}))
                a.step(Batch(remote={"x": fifo}))
            lines = [r.getMessage() for r in caplog.records if "rejecting" in r.getMessage()]
            assert lines == [
                f"db main: rejecting corrupt object {fifo}: fs store: {fifo.name} is a FIFO, "
                "not a regular file; not read"
            ]
            assert a.stats.objects_rejected == 1
            app_put(b, b"k", b"v", 1000)
            assert b.run_once()
            (b_name,) = [o.name for o in fs.list() if "__b__" in o.name]
            a.step(Batch(remote={"b": SnapshotName.parse(b_name)}))
            assert read(a, b"k") == (b"v", 1000, False)
        finally:
            a.close()
            b.close()
