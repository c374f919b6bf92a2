"""End to end: `evsync sync` processes converge through moto's S3 server over HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import AwsServer, Instance, MotoServer, wait_for

pytestmark = pytest.mark.integration

Make = Callable[..., Instance]


def objects_of(aws: AwsServer, bucket: str, instance: str | None = None) -> list[str]:
    """Object names in the bucket, optionally of one instance."""
    resp = aws.client().list_objects_v2(Bucket=bucket)
    names = [o["Key"] for o in resp.get("Contents", [])]
    if instance is not None:
        names = [n for n in names if n.split("__")[1:2] == [instance]]
    return sorted(names)


def converges(inst: Instance, key: str, expected: str | None, timeout: float = 15) -> None:
    """Wait until ``inst`` reads ``expected`` for ``key``."""
    wait_for(lambda: inst.writer.get(key) == expected, timeout=timeout,
             what=f"{inst.name} to read {key}={expected!r}")


class TestTwoInstances:
    """Put, change and delete travel both ways between two instances."""

    def test_put_change_delete_both_ways(self, instances: Make, s3_storage: dict[str, Any]
                                         ) -> None:
        """A record put on A appears on B; B's change reaches A; A's delete reaches B."""
        a = instances("a", s3_storage).start()
        b = instances("b", s3_storage).start()
        a.writer.put("www", "192.0.2.1")
        converges(b, "www", "192.0.2.1")
        b.writer.put("www", "192.0.2.2")
        converges(a, "www", "192.0.2.2")
        a.writer.delete("www")
        converges(b, "www", "<deleted>")

    def test_new_dbi_is_created_remotely(self, instances: Make, s3_storage: dict[str, Any]
                                         ) -> None:
        """A DBI that exists only on A is created on B with its records."""
        a = instances("a", s3_storage).start()
        b = instances("b", s3_storage).start()
        a.writer.put("k", "v", dbi="extra")
        wait_for(lambda: b.writer.get("k", dbi="extra") == "v", what="extra DBI on b")

    def test_merged_data_is_not_reuploaded(self, instances: Make, s3_storage: dict[str, Any],
                                           aws: AwsServer, bucket: str) -> None:
        """An instance that only received data writes no object of its own."""
        a = instances("a", s3_storage).start()
        b = instances("b", s3_storage).start()
        for i in range(5):
            a.writer.put(f"k{i}", f"v{i}")
        converges(b, "k4", "v4")
        time.sleep(1.5)  # several listing and poll rounds
        assert objects_of(aws, bucket, "b") == []
        assert objects_of(aws, bucket, "a")


class TestThreeInstances:
    """Three writers converge, and the newest write wins everywhere."""

    def test_all_converge(self, instances: Make, s3_storage: dict[str, Any]) -> None:
        """Each instance's record reaches the two others."""
        insts = [instances(n, s3_storage).start() for n in ("a", "b", "c")]
        for inst in insts:
            inst.writer.put(f"from-{inst.name}", inst.name)
        for inst in insts:
            for other in insts:
                converges(inst, f"from-{other.name}", other.name)

    def test_conflicting_writes_newest_timestamp_wins(
        self, instances: Make, s3_storage: dict[str, Any]
    ) -> None:
        """Conflicting writes made while partitioned settle on the newest timestamp."""
        insts = [instances(n, s3_storage) for n in ("a", "b", "c")]
        base = time.time_ns()
        # c's record is the newest, a's the oldest; the daemons start in the other order
        insts[2].writer.put("soa", "from-c", ts=base + 3_000_000)
        insts[0].writer.put("soa", "from-a", ts=base + 1_000_000)
        insts[1].writer.put("soa", "from-b", ts=base + 2_000_000)
        for inst in reversed(insts):
            inst.start()
        for inst in insts:
            converges(inst, "soa", "from-c")

    def test_delete_wins_a_timestamp_tie(self, instances: Make, s3_storage: dict[str, Any]
                                         ) -> None:
        """At equal timestamps a delete beats a live value on every instance."""
        a = instances("a", s3_storage)
        b = instances("b", s3_storage)
        ts = time.time_ns()
        a.writer.put("tie", "alive", ts=ts)
        b.writer.delete("tie", ts=ts)
        b.start()
        a.start()
        converges(a, "tie", "<deleted>")
        converges(b, "tie", "<deleted>")


class TestStartup:
    """Lightning Stream's startup scenarios: restarts never lose or revert data."""

    def test_startup_sequence(self, instances: Make, s3_storage: dict[str, Any],
                              aws: AwsServer, bucket: str) -> None:
        """Empty start, restart keeping the newest value, and a write made while down."""
        a = instances("a", s3_storage)
        a.writer.put("foo", "v1")
        a.start()
        wait_for(lambda: len(objects_of(aws, bucket, "a")) == 1, what="a's first object")

        # B starts empty: it receives foo=v1 and writes nothing itself.
        b = instances("b", s3_storage).start()
        converges(b, "foo", "v1")
        time.sleep(1.0)
        assert objects_of(aws, bucket, "b") == []

        # A change on B: one object from B, A converges, A writes nothing new.
        b.writer.put("foo", "v2")
        wait_for(lambda: len(objects_of(aws, bucket, "b")) == 1, what="b's object")
        converges(a, "foo", "v2")
        time.sleep(1.0)
        assert len(objects_of(aws, bucket, "a")) == 1

        # Restart A: the value stays v2 and A writes a new object at start.
        a.stop()
        a.start()
        wait_for(lambda: len(objects_of(aws, bucket, "a")) == 2, what="a's restart object")
        assert a.writer.get("foo") == "v2"
        time.sleep(0.5)
        assert a.writer.get("foo") == "v2"

        # A write made while A is down is picked up when it returns.
        a.stop()
        a.writer.put("new", "hello")
        a.start()
        converges(b, "new", "hello")
        wait_for(lambda: len(objects_of(aws, bucket, "a")) == 3, what="a's third object")

    def test_wiped_instance_recovers_its_own_history(
        self, instances: Make, s3_storage: dict[str, Any], tmp_path: Any
    ) -> None:
        """An instance restarted with an empty LMDB gets its data back from its own objects."""
        a = instances("a", s3_storage)
        a.writer.put("keep", "me")
        a.start()
        b = instances("b", s3_storage).start()
        converges(b, "keep", "me")
        a.stop()
        a.writer.close()
        a._writer = None
        for f in a.lmdb_path.iterdir():
            f.unlink()
        a.start()
        converges(a, "keep", "me")
        # and the wipe did not propagate as deletions
        time.sleep(0.5)
        assert b.writer.get("keep") == "me"


class TestCorruptObjects:
    """A corrupt object is rejected and skipped while sync goes on."""

    def test_corrupt_object_is_skipped(self, instances: Make, s3_storage: dict[str, Any],
                                       aws: AwsServer, bucket: str) -> None:
        """Garbage under a valid name is rejected; the LMDB is untouched; sync continues."""
        a = instances("a", s3_storage).start()
        b = instances("b", s3_storage).start()
        a.writer.put("before", "1")
        converges(b, "before", "1")
        name = "main__evil__20300101-000000-000000000__GX.evs.zst"
        aws.client().put_object(Bucket=bucket, Key=name, Body=b"\x28\xb5\x2f\xfd garbage")
        wait_for(lambda: "rejecting corrupt object " + name in b.log(), what="rejection log")
        assert b.proc is not None and b.proc.poll() is None
        a.writer.put("after", "2")
        converges(b, "after", "2")

    def test_truncated_newest_object_falls_back_to_previous(
        self, instances: Make, s3_storage: dict[str, Any], aws: AwsServer, bucket: str
    ) -> None:
        """A truncated newest object of an instance is skipped; its previous one is merged."""
        a = instances("a", s3_storage).start()
        a.writer.put("x", "good")
        wait_for(lambda: objects_of(aws, bucket, "a"), what="a's object")
        a.stop()
        good = objects_of(aws, bucket, "a")[-1]
        body = aws.client().get_object(Bucket=bucket, Key=good)["Body"].read()
        bad = good.replace(good.split("__")[2], "20300101-000000-000000000")
        aws.client().put_object(Bucket=bucket, Key=bad, Body=body[: len(body) // 2])
        b = instances("b", s3_storage).start()
        converges(b, "x", "good")
        assert "rejecting corrupt object " + bad in b.log()


class TestPollFallback:
    """Writers invisible to inotify are still synced by the txn-id poll."""

    def test_writemap_writer_is_synced(self, instances: Make, s3_storage: dict[str, Any]
                                       ) -> None:
        """Commits through a WRITEMAP writer reach the other instance via the poll."""
        from tests.helpers import Writer

        a = instances("a", s3_storage, lmdb_poll_interval="200ms")
        a._writer = Writer(a.lmdb_path, writemap=True)
        a.start()
        b = instances("b", s3_storage).start()
        a.writer.put("wm", "1")
        converges(b, "wm", "1")
        a.writer.put("wm", "2")
        converges(b, "wm", "2")


class TestOnlyOnce:
    """`sync --only-once` is the scriptable form: one pass, then exit."""

    def test_only_once_merges_and_uploads(self, instances: Make, s3_storage: dict[str, Any],
                                          aws: AwsServer, bucket: str) -> None:
        """It merges other instances' newest objects, uploads local data and exits 0."""
        a = instances("a", s3_storage)
        a.writer.put("from-a", "1")
        res = a.command("sync", "--only-once")
        assert res.returncode == 0, res.stderr
        assert len(objects_of(aws, bucket, "a")) == 1
        b = instances("b", s3_storage)
        b.writer.put("from-b", "2")
        res = b.command("sync", "--only-once")
        assert res.returncode == 0, res.stderr
        assert b.writer.get("from-a") == "1"
        res = a.command("sync", "--only-once")
        assert res.returncode == 0, res.stderr
        assert a.writer.get("from-b") == "2"

    def test_only_once_fails_when_storage_is_down(self, instances: Make) -> None:
        """With S3 unreachable it exits non-zero with a reason, after bounded retries."""
        from tests.helpers import free_port

        storage = {"type": "s3", "options": {
            "bucket": "nowhere", "endpoint_url": f"http://127.0.0.1:{free_port()}",
            "access_key": "test", "secret_key": "test"}}
        a = instances("a", storage, storage_retry_count=2)
        a.writer.put("k", "v")
        res = a.command("sync", "--only-once")
        assert res.returncode != 0
        assert "cannot list the bucket" in res.stderr


class TestStorageOutage:
    """A storage outage makes evsync wait and retry; it never exits or loses a change."""

    def test_change_made_during_outage_arrives_after_it(self, instances: Make,
                                                        tmp_path: Any) -> None:
        """With S3 down, a local change stays pending and is uploaded once S3 returns."""
        server = MotoServer().start()
        try:
            storage = {"type": "s3", "options": {
                "bucket": "outage", "endpoint_url": server.endpoint, "create_bucket": True,
                "access_key": "test", "secret_key": "test"}}
            a = instances("a", storage).start()
            b = instances("b", storage).start()
            a.writer.put("k", "before")
            converges(b, "k", "before")
            server.stop()
            a.writer.put("k", "during")
            wait_for(lambda: "could not store" in a.log() or "store of" in a.log(),
                     what="a to notice the outage")
            assert a.proc is not None and a.proc.poll() is None
            server.start()  # same port, empty state: the bucket is gone too
            server.client().create_bucket(Bucket="outage")
            converges(b, "k", "during", timeout=30)
            assert a.proc is not None and a.proc.poll() is None
        finally:
            server.stop()


class TestFsBackend:
    """The fs backend (a directory as the bucket) syncs with its directory watcher."""

    def test_two_instances_on_a_directory(self, instances: Make, tmp_path: Any) -> None:
        """A record written on A appears on B through a shared directory."""
        storage = {"type": "fs", "options": {"root_path": str(tmp_path / "bucket")}}
        a = instances("a", storage, notify={"listing_interval": "30s"}).start()
        b = instances("b", storage, notify={"listing_interval": "30s"}).start()
        a.writer.put("fs", "works")
        converges(b, "fs", "works", timeout=5)
        b.stop()
        summary = b.log().split("first to announce", 1)[1].splitlines()[0]
        assert "fswatch=" in summary, summary
