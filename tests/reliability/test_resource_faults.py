"""Resource faults: a full LMDB map, a full disk, a storage that answers slowly."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import IN_CI, AwsServer, Instance, free_port, wait_for
from tests.integration.test_operations import get, http_on, sample
from tests.reliability.model import read_records
from tests.reliability.proxy import ChaosProxy

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

Make = Callable[..., Instance]


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path``: a disk that really fills up (needs root)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        message = f"cannot mount a tmpfs for the disk-full test: {mounted.stderr.strip()}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Fill the file system at ``path`` to the last byte; returns the ballast file."""
    ballast = path / "ballast"
    with contextlib.suppress(OSError), ballast.open("wb", buffering=0) as out:
        while True:
            out.write(b"\0" * 65536)
    with contextlib.suppress(OSError), ballast.open("ab", buffering=0) as out:
        while True:
            out.write(b"\0")
    return ballast


def fill_records(inst: Instance, count: int, prefix: str = "r") -> None:
    """Write ``count`` records through the application helper, in one txn."""
    subprocess.run(
        [sys.executable, "-m", "evsync.tools.lmdb_write", str(inst.lmdb_path), "fill", "records",
         str(count), "--prefix", prefix],
        check=True, capture_output=True, timeout=120,
    )


def _set_map_size(inst: Instance, size: str) -> str:
    """Rewrite the instance's config with another map_size for its LMDB."""
    import yaml

    config = yaml.safe_load(inst.config_path.read_text())
    config["lmdbs"]["main"]["options"]["map_size"] = size
    inst.config_path.write_text(yaml.safe_dump(config))
    return size


class TestFullLmdbMap:
    """A merge that does not fit the map grows it and retries; nothing is half-merged."""

    def test_merge_into_a_tiny_map_grows_it(self, instances: Make,
                                            s3_storage: dict[str, Any]) -> None:
        """An instance whose LMDB map is 256 KiB merges an object of 20 000 records:
        the map grows (logged), every record arrives, and the daemon keeps serving."""
        port = free_port()
        a = instances("a", s3_storage).start()
        fill_records(a, 20_000)
        b = instances("b", s3_storage, http=http_on(port))
        _set_map_size(b, "256KB")
        b.start()
        wait_for(lambda: len(read_records(b.lmdb_path)) == 20_000, timeout=60,
                 what="b to merge all 20 000 records")
        assert "map full; grew it to" in b.log()
        assert b.proc is not None and b.proc.poll() is None
        assert get(port, "/healthz")[0] == 200


class TestFullDisk:
    """A full disk is a clear error and a metric; the change is stored once there is room."""

    def test_fs_bucket_on_a_full_disk(self, instances: Make, tmp_path: Path) -> None:
        """With the fs bucket's disk full, storing fails with one line naming the object
        and "disk full", the store-failure counter rises, no temp file is left, and once
        space is freed the pending change is stored: nothing is lost."""
        port = free_port()
        with small_filesystem(tmp_path / "disk", "4m") as disk:
            bucket = disk / "bucket"
            bucket.mkdir()
            storage = {"type": "fs", "options": {"root_path": str(bucket)}}
            a = instances("a", storage, http=http_on(port)).start()
            ballast = fill(disk)
            a.writer.put("k", "v1")
            wait_for(lambda: "disk full" in a.log(), timeout=30, what="a disk-full error")
            line = next(x for x in a.log().splitlines() if "disk full" in x)
            assert "fs store: cannot store main__a__" in line
            assert (sample(port, "evsync_store_failures_total", db="main") or 0) >= 1
            assert not [p for p in bucket.iterdir() if p.name.startswith(".")]
            assert a.proc is not None and a.proc.poll() is None
            ballast.unlink()
            wait_for(lambda: any(p.name.startswith("main__a__") for p in bucket.iterdir()),
                     timeout=30, what="the pending change to be stored")

    def test_lmdb_on_a_full_disk(self, instances: Make, s3_storage: dict[str, Any],
                                 tmp_path: Path) -> None:
        """When the disk under the LMDB is full, a merge fails with one clear line (no
        traceback), the LMDB keeps every record it had, and after space is freed the
        merge completes."""
        a = instances("a", s3_storage).start()
        fill_records(a, 5_000)
        port = free_port()
        with small_filesystem(tmp_path / "lmdbdisk", "8m") as disk:
            b = instances("b", s3_storage, http=http_on(port),
                          lmdbs={"main": {"path": str(disk / "lmdb"),
                                          "schema_tracks_changes": True,
                                          "options": {"create": True, "map_size": "64MB"}}})
            b.lmdb_path = disk / "lmdb"
            b.lmdb_path.mkdir()
            b.writer.put("local", "kept")
            ballast = fill(disk)
            b.start()
            wait_for(lambda: "No space left on device" in b.log(), timeout=30,
                     what="b to report the full disk")
            assert "Traceback" not in b.log()
            assert b.proc is not None and b.proc.poll() is None
            assert read_records(b.lmdb_path)[b"local"][2] == b"kept"
            assert (sample(port, "evsync_merge_failures_total", db="main") or 0) >= 1
            ballast.unlink()
            wait_for(lambda: len(read_records(b.lmdb_path)) == 5_001, timeout=60,
                     what="the merge to complete once there is room")
            b.stop()


class TestSlowStorage:
    """A storage that stalls makes requests time out; nothing hangs."""

    def test_stalled_s3_times_out_and_recovers(self, aws: AwsServer, bucket: str,
                                               instances: Make) -> None:
        """With every S3 response held back longer than read_timeout, stores fail with
        a timeout line instead of hanging, /healthz still answers at once, and when S3
        is fast again the change is stored and reaches the other instance."""
        port = int(aws.endpoint.rsplit(":", 1)[1])
        proxy = ChaosProxy(port).up()
        try:
            storage = {"type": "s3", "options": {
                "bucket": bucket, "endpoint_url": proxy.endpoint, "region": "us-east-1",
                "access_key": "test", "secret_key": "test",
                "dial_timeout": "1s", "read_timeout": "1s"}}
            http = free_port()
            a = instances("a", storage, http=http_on(http)).start()
            b = instances("b", storage).start()
            proxy.slow(3.0)
            a.writer.put("k", "slow")
            wait_for(lambda: "Read timeout" in a.log(), timeout=30, what="a read timeout")
            t0 = time.monotonic()
            assert get(http, "/healthz")[0] in (200, 503)
            assert time.monotonic() - t0 < 2
            proxy.slow(0)
            wait_for(lambda: b.writer.get("k") == "slow", timeout=30,
                     what="the change to reach b once S3 is fast again")
        finally:
            proxy.close()
