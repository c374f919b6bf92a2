"""The command line as a user runs it: inspection commands, receive, version, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, AwsServer, Instance, wait_for

pytestmark = pytest.mark.integration

Make = Callable[..., Instance]


class TestSnapshotsCommands:
    """`evsync snapshots …` lists, fetches, shows, uploads and removes objects."""

    def test_list_get_dump_put_remove(self, instances: Make, s3_storage: dict[str, Any],
                                      tmp_path: Path) -> None:
        """Every snapshots subcommand works against a real bucket."""
        a = instances("a", s3_storage)
        a.writer.put("www", "192.0.2.1")
        a.writer.delete("gone")
        assert a.command("sync", "--only-once").returncode == 0

        listing = a.command("snapshots", "list", "-l")
        assert listing.returncode == 0, listing.stderr
        names = [line.split("\t")[0] for line in listing.stdout.splitlines()]
        assert len(names) == 1 and names[0].startswith("main__a__")
        assert int(listing.stdout.split("\t")[1]) > 0

        dumped = a.command("snapshots", "dump", names[0], "-f", "json")
        assert dumped.returncode == 0, dumped.stderr
        data = json.loads(dumped.stdout)
        entries = {e["key"]: e for e in data["dbis"]["records"]}
        assert entries["www"]["value"] == "192.0.2.1" and entries["www"]["flags"] == 0
        assert entries["gone"]["flags"] == 1
        assert data["header"]["instance"] == "a"

        text = a.command("snapshots", "dump", names[0])
        assert "### records" in text.stdout and "www = 192.0.2.1" in text.stdout

        out = tmp_path / "copy.evs.zst"
        assert a.command("snapshots", "get", names[0], "-o", str(out)).returncode == 0
        local = a.command("snapshots", "dump", "--local", str(out), "-f", "json")
        assert json.loads(local.stdout)["dbis"] == data["dbis"]

        renamed = names[0].replace("main__a__", "main__copy__")
        put = a.command("snapshots", "put", str(out), "-n", renamed)
        assert put.returncode == 0, put.stderr
        bad = a.command("snapshots", "put", str(out), "-n", "not-a-snapshot-name")
        assert bad.returncode != 0 and "not-a-snapshot-name" in bad.stderr
        assert renamed in a.command("snapshots", "list").stdout

        assert a.command("snapshots", "remove", renamed).returncode == 0
        assert renamed not in a.command("snapshots", "list").stdout

    def test_dump_of_a_corrupt_object_fails_with_one_line(
        self, instances: Make, s3_storage: dict[str, Any], aws: AwsServer, bucket: str
    ) -> None:
        """Dumping a corrupt object exits non-zero with a one-line reason."""
        name = "main__x__20300101-000000-000000000__GX.evs.zst"
        aws.client().put_object(Bucket=bucket, Key=name, Body=b"junk")
        res = instances("a", s3_storage).command("snapshots", "dump", name)
        assert res.returncode == 1
        assert res.stderr.strip().count("\n") == 0 and "zstd" in res.stderr


class TestOtherCommands:
    """dump, receive, version and config errors."""

    def test_dump_shows_decoded_headers(self, instances: Make, s3_storage: dict[str, Any]
                                        ) -> None:
        """`evsync dump -f json` shows every record with its timestamp and deleted flag."""
        a = instances("a", s3_storage)
        ts = a.writer.put("k", "v")
        a.writer.delete("d")
        res = a.command("dump", "-f", "json")
        assert res.returncode == 0, res.stderr
        rows = {r["key"]: r for r in json.loads(res.stdout)["main"]["records"]}
        assert rows["k"]["value"] == "v" and rows["k"]["ts"] == ts
        assert rows["d"]["deleted"] is True

    def test_receive_never_uploads(self, instances: Make, s3_storage: dict[str, Any],
                                   aws: AwsServer, bucket: str) -> None:
        """`receive --only-once` merges remote data but writes no object."""
        a = instances("a", s3_storage)
        a.writer.put("k", "from a")
        assert a.command("sync", "--only-once").returncode == 0
        b = instances("b", s3_storage)
        b.writer.put("local", "only")
        res = b.command("receive", "--only-once")
        assert res.returncode == 0, res.stderr
        assert b.writer.get("k") == "from a"
        keys = [o["Key"] for o in aws.client().list_objects_v2(Bucket=bucket)["Contents"]]
        assert not any("__b__" in k for k in keys)

    def test_version(self) -> None:
        """`evsync version` and `python -m evsync version` print the version."""
        res = subprocess.run([sys.executable, "-m", "evsync", "version"], cwd=REPO,
                             capture_output=True, text=True, check=False)
        assert res.returncode == 0 and res.stdout.startswith("evsync ")

    def test_config_error_is_one_line_naming_the_key(self, tmp_path: Path) -> None:
        """A wrong config exits 2 with one line naming the key."""
        cfg = tmp_path / "bad.yaml"
        cfg.write_text("lmdbs:\n  main:\n    schema_tracks_changes: true\n"
                       "storage:\n  type: fs\n  options: {root_path: /tmp/x}\n")
        res = subprocess.run([sys.executable, "-m", "evsync", "-c", str(cfg), "sync"],
                             cwd=REPO, capture_output=True, text=True, check=False)
        assert res.returncode == 2
        assert res.stderr.strip() == "evsync: config error: lmdbs.main.path: missing"

    def test_instance_flag_overrides_and_is_validated(self, instances: Make,
                                                      s3_storage: dict[str, Any]) -> None:
        """-i renames the instance; an invalid name is refused."""
        a = instances("a", s3_storage)
        a.writer.put("k", "v")
        res = subprocess.run(
            [sys.executable, "-m", "evsync", "-c", str(a.config_path), "-i", "renamed",
             "sync", "--only-once"], cwd=REPO, capture_output=True, text=True, check=False)
        assert res.returncode == 0, res.stderr
        listing = a.command("snapshots", "list").stdout
        assert "main__renamed__" in listing
        bad = subprocess.run(
            [sys.executable, "-m", "evsync", "-c", str(a.config_path), "-i", "bad_name",
             "sync", "--only-once"], cwd=REPO, capture_output=True, text=True, check=False)
        assert bad.returncode == 2 and "--instance" in bad.stderr

    def test_secrets_never_logged(self, instances: Make, s3_storage: dict[str, Any]) -> None:
        """--log-config prints the config with the S3 keys masked."""
        storage = {**s3_storage, "options": {**s3_storage["options"],
                                             "secret_key": "s3cr3t-value"}}
        a = instances("a", storage)
        res = a.command("--log-config", "sync", "--only-once")
        assert res.returncode == 0, res.stderr
        assert "effective config" in res.stderr
        assert "s3cr3t-value" not in res.stderr and "***" in res.stderr

    def test_sigterm_exits_zero(self, instances: Make, s3_storage: dict[str, Any]) -> None:
        """A running daemon stops cleanly on SIGTERM."""
        a = instances("a", s3_storage).start()
        a.writer.put("k", "v")
        wait_for(lambda: "stored main__a__" in a.log(), what="an upload")
        assert a.stop() == 0


class TestDropShadow:
    """`evsync drop-shadow` deletes the shadow DBIs, and only after confirmation."""

    def test_refuses_without_yes_then_drops(self, instances: Make,
                                             s3_storage: dict[str, Any]) -> None:
        """Without a terminal and without --yes nothing is dropped (exit 1, says how);
        with --yes every _sync_shadow_* DBI goes and the data DBI stays."""
        a = instances("a", s3_storage)
        a.config_path.write_text(
            a.config_path.read_text().replace("schema_tracks_changes: true",
                                              "schema_tracks_changes: false"))
        a.writer.put("k", "v")
        assert a.command("sync", "--only-once").returncode == 0

        def dbis() -> list[str]:
            res = a.command("dump", "-f", "json")
            assert res.returncode == 0, res.stderr
            return sorted(json.loads(res.stdout)["main"])

        assert dbis() == ["_sync_shadow_records", "records"]
        refused = a.command("drop-shadow")
        assert refused.returncode == 1
        assert "pass --yes" in refused.stderr
        assert dbis() == ["_sync_shadow_records", "records"]

        dropped = a.command("drop-shadow", "--yes")
        assert dropped.returncode == 0, dropped.stderr
        assert "dropped 1 shadow DBI" in dropped.stdout
        assert dbis() == ["records"]
