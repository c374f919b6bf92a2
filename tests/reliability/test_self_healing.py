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
