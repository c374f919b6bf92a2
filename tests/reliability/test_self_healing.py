"""Self-healing: states of the bucket from which evsync recovers without an operator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import AwsServer, Instance, wait_for

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
        aws.client().delete_object(Bucket=bucket, Key=JUNK)
        one.writer.put("k2", "v")
        wait_for(lambda: two.writer.get("k2") == "v", timeout=20, what="k2 on two")
        names = [o["Key"] for o in aws.client().list_objects_v2(Bucket=bucket)["Contents"]]
        assert not [n for n in names if "__one__2099" in n], names  # one's names stay on time
        line = f"db main: rejecting corrupt object {JUNK}: foreign format: not a zstd frame"
        assert two.log().count(line) == 1, two.log()
        assert one.log().count(line) == 1, one.log()  # its own name: checked once, too
        assert "clock skew" not in two.log()  # a junk name says nothing of a clock
        assert one.stop() == 0
        assert two.stop() == 0
