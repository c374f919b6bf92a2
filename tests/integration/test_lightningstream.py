"""Lightning Stream interop against a real S3 server (issue 17): .pb.gz read and written,
the update marker, and the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import AwsServer, Instance

pytestmark = pytest.mark.integration


def keys(aws: AwsServer, bucket: str) -> list[str]:
    """Every object key in the bucket."""
    listing = aws.client().list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in listing.get("Contents", []))


class TestMixedOnlyOnce:
    """An LS imitation and an evsync instance writing .pb.gz exchange data."""

    def test_each_side_reads_the_other(
        self, instances: Callable[..., Instance], s3_storage: dict[str, Any],
        aws: AwsServer, bucket: str,
    ) -> None:
        """The LS imitation writes only plain .pb.gz; evsync merges it, and stores a
        marked .pb.gz copy beside its .evs.zst, which the LS imitation merges."""
        ls = instances("ls-1", s3_storage, lightningstream={"only": True})
        ev = instances("ev", s3_storage, lightningstream={"write": True})
        ls.writer.put("from-ls", "1")
        assert ls.command("sync", "--only-once").returncode == 0
        assert next(k for k in keys(aws, bucket) if "__ls-1__" in k).endswith("__GX.pb.gz")
        ev.writer.put("from-ev", "2")
        res = ev.command("sync", "--only-once")
        assert res.returncode == 0, res.stderr
        assert ev.writer.get("from-ls") == "1"
        ev_keys = [k for k in keys(aws, bucket) if "__ev__" in k]
        assert any(k.endswith(".evs.zst") for k in ev_keys)
        assert any(k.endswith("__Eevsync.pb.gz") for k in ev_keys)
        assert ls.command("sync", "--only-once").returncode == 0
        assert ls.writer.get("from-ev") == "2"
        assert not any("__ls-1__" in k and k.endswith(".evs.zst") for k in keys(aws, bucket))


class TestUpdateMarker:
    """``storage.options.use_update_marker``: as LS writers, evsync rewrites the marker."""

    def test_marker_follows_stores(
        self, instances: Callable[..., Instance], s3_storage: dict[str, Any],
        aws: AwsServer, bucket: str,
    ) -> None:
        """After a .pb.gz store the marker names that object, its ETag, a time and false;
        a store of an .evs.zst object alone (which LS never reads) leaves it untouched,
        so LS does not list again for every delta."""
        storage = {**s3_storage, "options": {**s3_storage["options"], "use_update_marker": True}}
        plain = instances("plain", storage)
        plain.writer.put("k", "v")
        assert plain.command("sync", "--only-once").returncode == 0
        assert "update-marker" not in keys(aws, bucket)
        a = instances("a", storage, lightningstream={"write": True})
        a.writer.put("k", "v")
        assert a.command("sync", "--only-once").returncode == 0
        body = aws.client().get_object(Bucket=bucket, Key="update-marker")["Body"].read()
        name, etag, nanos, deleted = body.decode().split(":")
        assert name in keys(aws, bucket) and name.startswith("main__a__")
        assert name.endswith(".pb.gz")
        assert etag and int(nanos) > 0 and deleted == "false"
        assert etag == aws.client().head_object(Bucket=bucket, Key=name)["ETag"].strip('"')

    def test_no_marker_by_default(
        self, instances: Callable[..., Instance], s3_storage: dict[str, Any],
        aws: AwsServer, bucket: str,
    ) -> None:
        """Without the option, no update-marker object appears (as LS)."""
        a = instances("a", s3_storage)
        a.writer.put("k", "v")
        assert a.command("sync", "--only-once").returncode == 0
        assert "update-marker" not in keys(aws, bucket)


class TestCli:
    """``snapshots list -l`` shows the format; ``dump`` reads .pb.gz."""

    def test_list_and_dump(
        self, instances: Callable[..., Instance], s3_storage: dict[str, Any],
    ) -> None:
        """An LS object and an evsync copy are told apart, and dump prints a .pb.gz."""
        a = instances("a", s3_storage, lightningstream={"write": True})
        a.writer.put("www", "192.0.2.1")
        assert a.command("sync", "--only-once").returncode == 0
        listing = a.command("snapshots", "list", "-l")
        assert listing.returncode == 0, listing.stderr
        rows = [line.split("\t") for line in listing.stdout.splitlines()]
        formats = {row[2] for row in rows}
        assert formats == {"evs.zst full", "pb.gz evsync-copy"}
        copy = next(row[0] for row in rows if row[2] == "pb.gz evsync-copy")
        dumped = a.command("snapshots", "dump", copy, "-f", "json")
        assert dumped.returncode == 0, dumped.stderr
        data = json.loads(dumped.stdout)
        assert data["dbis"]["records"][0]["value"] == "192.0.2.1"
        assert data["header"]["instance"] == "a"
