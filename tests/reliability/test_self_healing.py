"""Self-healing: states of the bucket from which evsync recovers without an operator."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from evsync.triggers.s3events import announcement
from tests.helpers import REPO, AwsServer, Instance, Mosquitto, free_port, require_tool, wait_for
from tests.reliability.proxy import ChaosProxy
from tests.reliability.test_bad_input import metric

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

Make = Callable[..., Instance]
KEYS = [f"k{i}" for i in range(5)]


def holds_every_key(newcomer: Instance) -> bool:
    """One `receive --only-once` of a fresh instance; True when it then holds every key."""
    newcomer.command("receive", "--only-once", timeout=60)
    return all(newcomer.writer.get(key) == "v" for key in KEYS)


def wipe(aws: AwsServer, bucket: str) -> int:
    """Delete every object in the bucket, as a restarted LocalStack or an operator would."""
    client = aws.client()
    listing = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    for obj in listing:
        client.delete_object(Bucket=bucket, Key=obj["Key"])
    return len(listing)


class TestWipedBucket:
    """A writer whose objects vanish from the bucket stores a full object again."""

    def test_after_a_wipe_a_newcomer_gets_every_record(
        self, instances: Make, s3_storage: dict[str, Any], aws: AwsServer, bucket: str
    ) -> None:
        """Every object is deleted while a writer runs with nothing new to upload: within
        a listing interval it notices its objects are gone and stores a full object, so a
        new instance's `receive --only-once` holds every record. (It used to wait for the
        next local change, and even then upload only a delta whose base was gone.)"""
        a = instances("a", s3_storage).start()
        for key in KEYS:
            a.writer.put(key, "v")  # one commit each: a full object, then deltas
        before = instances("before", s3_storage)
        wait_for(lambda: holds_every_key(before), timeout=30,
                 what="a newcomer to get every key before the wipe")
        assert wipe(aws, bucket) > 0
        after = instances("after", s3_storage)
        wait_for(lambda: holds_every_key(after), timeout=30,
                 what="a newcomer to get every key after the wipe")
        assert "objects are gone from the bucket" in a.log()
        assert a.stop() == 0


JUNK = "main__one__20991201-000000-000000000__GX.evs.zst"


class TestUnusableObjects:
    """An object that cannot be merged never becomes an instance's position."""

    def test_a_junk_object_named_far_ahead_does_not_halt_replication(
        self, instances: Make, s3_storage: dict[str, Any], aws: AwsServer, bucket: str
    ) -> None:
        """A junk file named as instance `one`'s newest object (year 2099) is rejected
        once by a receiver; `one`'s later objects keep merging there while the junk is in
        the bucket and after it is deleted, and `one` does not name its objects after it.
        (It used to halt replication from `one` until a restart.)"""
        one = instances("one", s3_storage).start()
        two = instances("two", s3_storage).start()
        one.writer.put("k0", "v")
        wait_for(lambda: two.writer.get("k0") == "v", timeout=20, what="k0 on two")
        aws.client().put_object(Bucket=bucket, Key=JUNK, Body=b"junk")
        wait_for(lambda: JUNK in two.log(), timeout=20, what="two to see the junk object")
        one.writer.put("k1", "v")
        wait_for(lambda: two.writer.get("k1") == "v", timeout=20, what="k1 on two")
        line = f"db main: rejecting corrupt object {JUNK}: foreign format: not a zstd frame"
        # its own name: `one` checks the object once too (at its next step after a listing)
        wait_for(lambda: line in one.log(), timeout=20, what="one to check the junk object")
        aws.client().delete_object(Bucket=bucket, Key=JUNK)
        one.writer.put("k2", "v")
        wait_for(lambda: two.writer.get("k2") == "v", timeout=20, what="k2 on two")
        names = [o["Key"] for o in aws.client().list_objects_v2(Bucket=bucket)["Contents"]]
        assert not [n for n in names if "__one__2099" in n], names  # one's names stay on time
        assert two.log().count(line) == 1, two.log()
        assert one.log().count(line) == 1, one.log()
        assert "clock skew" not in two.log()  # a junk name says nothing of a clock
        assert one.stop() == 0
        assert two.stop() == 0


def object_names(aws: AwsServer, bucket: str, instance: str) -> list[str]:
    """The instance's object names in the bucket, oldest first."""
    listing = aws.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return sorted(o["Key"] for o in listing if o["Key"].startswith(f"main__{instance}__"))


def fulls(names: list[str]) -> list[str]:
    return [n for n in names if "__D" not in n]


# Tiny objects: a delta is as large as the full object, so allow deltas that large.
SMALL_DELTAS = {"max_chain_ratio": 100}


class TestOwnNewestUnusable:
    """An instance whose own newest full object is corrupt or gone starts anyway."""

    @pytest.mark.parametrize("damage", ["corrupt", "removed"])
    def test_restart_merges_what_it_can_reach_and_uploads_a_full_object(
        self, instances: Make, s3_storage: dict[str, Any], aws: AwsServer, bucket: str,
        damage: str,
    ) -> None:
        """`one` stored a full object and deltas on it, then stopped; its full object is
        overwritten with junk (or deleted). Restarted, `one` logs the unreachable chain
        once, stops waiting for its own history and uploads a full object; an instance
        started after it finishes its startup and holds every record. (It used to log
        "waiting to load own old snapshot" for ever, and so did every newcomer.)"""
        one = instances("one", s3_storage, deltas=SMALL_DELTAS).start()
        for n, key in enumerate(KEYS, 1):
            one.writer.put(key, "v")
            wait_for(lambda n=n: len(object_names(aws, bucket, "one")) == n, timeout=20,  # type: ignore[misc]
                     what=f"one's object {n}")
        assert one.stop() == 0
        names = object_names(aws, bucket, "one")
        assert len(fulls(names)) == 1 and len(names) > 1, names
        damaged = fulls(names)[0]
        if damage == "corrupt":
            aws.client().put_object(Bucket=bucket, Key=damaged, Body=b"junk")
        else:
            aws.client().delete_object(Bucket=bucket, Key=damaged)
        one.start()
        wait_for(lambda: len(fulls(object_names(aws, bucket, "one"))) == 2 - (damage == "removed"),
                 timeout=20, what="one to upload a new full object")
        newcomer = instances("two", s3_storage).start()
        wait_for(lambda: all(newcomer.writer.get(k) == "v" for k in KEYS), timeout=20,
                 what="the newcomer to hold every record")
        log = one.log()
        assert log.count(f"db main: cannot reach {names[-1]}: an object it builds on is "
                         "missing or unusable; nothing of it merged") == 1, log
        if damage == "corrupt":
            assert log.count(f"rejecting corrupt object {damaged}") == 1, log
        assert one.stop() == 0
        assert newcomer.stop() == 0


class TestFailedListing:
    """A listing that fails when a plan needs it does not leave the instance stuck."""

    def test_a_plan_short_of_its_base_resumes_once_listing_works(
        self, instances: Make, s3_storage: dict[str, Any], aws: AwsServer, bucket: str,
        mosquitto: Mosquitto, topic: str,
    ) -> None:
        """B hears of A's newest delta while its S3 is unreachable and does not know the
        delta before it, so its plan falls short and the listing it asks for fails. Once
        S3 answers, B lists and merges both deltas without A uploading again. (B used to
        wait as "stuck" until A's next upload.)"""
        proxy = ChaosProxy(int(aws.endpoint.rsplit(":", 1)[1])).up()
        try:
            a = instances("a", s3_storage, notify={"listing_interval": "1h"},
                          deltas=SMALL_DELTAS).start()
            b_storage = {**s3_storage,
                         "options": {**s3_storage["options"], "endpoint_url": proxy.endpoint}}
            b = instances("b", b_storage, notify={
                "listing_interval": "1h",
                "mqtt": {"url": mosquitto.url, "topic": topic, "publish": False}}).start()

            def announce(name: str) -> None:
                mosquitto.publish(f"{topic.rstrip('/#')}/main/a",
                                  announcement(bucket, name, 1, db="main", instance="a"))

            a.writer.put("k0", "v")
            wait_for(lambda: object_names(aws, bucket, "a"), timeout=20, what="a's full object")
            announce(object_names(aws, bucket, "a")[0])
            wait_for(lambda: b.writer.get("k0") == "v", timeout=20, what="k0 on b")
            a.writer.put("k1", "v")
            wait_for(lambda: len(object_names(aws, bucket, "a")) == 2, timeout=20, what="delta 1")
            a.writer.put("k2", "v")
            wait_for(lambda: len(object_names(aws, bucket, "a")) == 3, timeout=20, what="delta 2")
            proxy.down()
            announce(object_names(aws, bucket, "a")[-1])
            wait_for(lambda: "listing failed" in b.log(), timeout=20, what="b's listing to fail")
            time.sleep(2)  # several steps with the listing down: long enough to get stuck
            proxy.up()
            wait_for(lambda: b.writer.get("k2") == "v", timeout=20, what="k2 on b")
            assert b.writer.get("k1") == "v"
            assert a.stop() == 0
            assert b.stop() == 0
        finally:
            proxy.close()


OTHER_HOST = "evsync-other-host"


class TestSharedInstanceName:
    """Two hosts configured with one instance name are told apart and reported."""

    def test_objects_of_our_name_from_another_host_are_reported(
        self, instances: Make, s3_storage: dict[str, Any], aws: AwsServer, bucket: str,
    ) -> None:
        """A second evsync named `one`, on a host called evsync-other-host, stores an
        object: the first logs an error naming both hosts and counts it on /metrics, and
        its own next object sorts after the other's."""
        unshare = require_tool("unshare")
        port = free_port()
        here = instances("one", s3_storage, http={"address": f"127.0.0.1:{port}"}).start()
        there = instances("one-there", s3_storage, instance="one")
        script = f'hostname {OTHER_HOST} && exec "$@"'
        there.proc = subprocess.Popen(
            [unshare, "--uts", "sh", "-c", script, "sh", sys.executable, "-m", "evsync",
             "-c", str(there.config_path), "sync"],
            cwd=REPO, stdout=there.log_path.open("ab"), stderr=subprocess.STDOUT)
        wait_for(lambda: "startup listing" in there.log(), timeout=30, what="the other one")
        there.writer.put("k0", "v")
        line = ("under this instance's name 'one': two evsync instances share one name; "
                "give each its own `instance`")
        wait_for(lambda: f"was stored by host '{OTHER_HOST}' (this host is "
                 f"'{socket.gethostname()}') {line}" in here.log(), timeout=20,
                 what="the conflict line")
        assert metric(port, "evsync_instance_name_conflicts_total", db="main") == 1
        theirs = object_names(aws, bucket, "one")[-1]
        here.writer.put("k1", "v")
        wait_for(lambda: object_names(aws, bucket, "one")[-1] > theirs, timeout=20,
                 what="here's next object, named after theirs")
        assert here.stop() == 0
        assert there.stop() == 0
