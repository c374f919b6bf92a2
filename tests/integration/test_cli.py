"""The command line as a user runs it: inspection commands, receive, version, errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, AwsServer, Instance, wait_for

pytestmark = pytest.mark.integration

Make = Callable[..., Instance]


LS_VECTOR = (REPO / "tests" / "fixtures" / "lightningstream" / "native" / "bucket"
             / "main__inst-a__20261201-182857-758476663__GX.pb.gz")


class TestSnapshotsCommands:
    """`evsync snapshots …` lists, fetches, shows, uploads and removes objects."""

    def test_dump_reads_a_lightning_stream_object(self, instances: Make,
                                                  s3_storage: dict[str, Any]) -> None:
        """`snapshots dump --local` of a .pb.gz written by real Lightning Stream names its
        format, its instance, every DBI with its entries and their count, in text and in
        JSON (it used to print evsync's format name and no DBIs)."""
        a = instances("a", s3_storage)
        text = a.command("snapshots", "dump", "--local", str(LS_VECTOR))
        assert text.returncode == 0, text.stderr
        assert '"format": "lightningstream"' in text.stdout
        assert '"instance": "inst-a"' in text.stdout
        assert "### data (transform='', flags=0x0)" in text.stdout
        assert "alpha = value-a" in text.stdout
        assert "# 7 entries" in text.stdout and "# 0 entries" in text.stdout
        # human times beside the nanoseconds, for the object and for each entry
        assert '"time": "2026-12-01T18:28:57.758476663Z"' in text.stdout
        assert "ts=1700000000000000001 (2023-11-14T22:13:20.000000001Z)" in text.stdout
        dumped = a.command("snapshots", "dump", "--local", str(LS_VECTOR), "-f", "json")
        data = json.loads(dumped.stdout)
        assert data["header"]["format"] == "lightningstream"
        assert data["header"]["dbis"] == ["data", "empty", "second"]
        assert [e["key"] for e in data["dbis"]["second"]] == ["k1"]
        only = a.command("snapshots", "dump", "--local", str(LS_VECTOR), "-d", "second")
        assert "### second" in only.stdout and "### data" not in only.stdout

    def test_put_refuses_a_pb_gz_that_would_stop_lightning_stream(
        self, instances: Make, s3_storage: dict[str, Any], tmp_path: Path
    ) -> None:
        """`snapshots put` verifies a file in the format its name says first: the crafted
        .pb.gz with an empty KV message (which makes real LS exit) is refused with one
        line and not uploaded; a real LS object is uploaded."""
        a = instances("a", s3_storage)
        probe = next((REPO / "tests" / "fixtures" / "lightningstream" / "probes"
                      / "M_empty_kv").glob("*.pb.gz"))
        res = a.command("snapshots", "put", str(probe))
        assert res.returncode == 1
        lines = res.stderr.splitlines()
        assert len(lines) == 1 and "not a valid .pb.gz object" in lines[0], res.stderr
        assert probe.name not in a.command("snapshots", "list").stdout
        ok = a.command("snapshots", "put", str(LS_VECTOR))
        assert ok.returncode == 0, ok.stderr
        assert LS_VECTOR.name in a.command("snapshots", "list").stdout

    def test_a_missing_local_file_is_one_line(self, instances: Make,
                                             s3_storage: dict[str, Any]) -> None:
        """`snapshots dump --local` of a file that does not exist exits 1 with one line
        naming the file (it printed a FileNotFoundError traceback)."""
        res = instances("a", s3_storage).command("snapshots", "dump", "-l", "/nonexistent")
        assert res.returncode == 1
        assert res.stderr.splitlines() == [
            "evsync: error: /nonexistent: No such file or directory"
        ], res.stderr
        assert "Traceback" not in res.stderr

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
        _name, size, kind, when, instance = listing.stdout.splitlines()[0].split("\t")
        assert int(size) > 0 and kind == "evs.zst full" and instance == "a"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", when), when

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
        refused = a.command("snapshots", "put", str(out), "-n", renamed)
        assert refused.returncode == 1 and "the name" in refused.stderr, refused.stderr
        put = a.command("snapshots", "put", str(out), "-n", renamed, "--force")
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


def evsync(*args: str, env: dict[str, str] | None = None, timeout: float = 60
           ) -> subprocess.CompletedProcess[str]:
    """Run `python -m evsync ARGS` to completion."""
    return subprocess.run([sys.executable, "-m", "evsync", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


# enough output to fill a pipe's buffer (64 KiB) several times over
MANY_OBJECTS = 4000


class TestCommandLineSurface:
    """Flags and help any command line tool is expected to have (issue 19)."""

    def test_version_flag(self) -> None:
        """`evsync --version` prints the version and exits 0, like `evsync version`."""
        res = evsync("--version")
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == evsync("version").stdout.strip()

    def test_every_option_has_help(self) -> None:
        """Every option and argument of every command has help text (`receive --help`
        showed none for --only-once and --only-db)."""
        import argparse

        from evsync.cli import build_parser

        missing: list[str] = []

        def walk(parser: argparse.ArgumentParser, where: str) -> None:
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    for name, child in action.choices.items():
                        walk(child, f"{where} {name}")
                elif not action.help:
                    missing.append(f"{where}: {'/'.join(action.option_strings) or action.dest}")

        walk(build_parser(), "evsync")
        assert not missing
        receive = evsync("receive", "--help").stdout
        assert "merge every instance's newest object" in receive
        assert "sync only this db" in receive

    def test_bash_completion_is_generated_from_the_parser(self) -> None:
        """`evsync completion bash` prints a script that bash loads and that registers a
        completion for evsync, naming every command."""
        res = evsync("completion", "bash")
        assert res.returncode == 0, res.stderr
        for command in ("sync", "receive", "snapshots", "dump", "drop-shadow", "status"):
            assert command in res.stdout
        loaded = subprocess.run(["bash", "-c", "source /dev/stdin; complete -p evsync"],
                                input=res.stdout, capture_output=True, text=True, check=False)
        assert loaded.returncode == 0, loaded.stderr
        assert "evsync" in loaded.stdout

    def test_zsh_completion(self) -> None:
        """`evsync completion zsh` prints a #compdef script naming the commands."""
        res = evsync("completion", "zsh")
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("#compdef evsync")
        assert "drop-shadow" in res.stdout and "--only-once" in res.stdout


class TestQuietPipes:
    """Output piped into a reader that stops early (`| head`) ends without a traceback."""

    def _head_one(self, *args: str) -> tuple[int, str]:
        proc = subprocess.Popen([sys.executable, "-m", "evsync", *args], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace")
        return proc.wait(timeout=60), err

    def test_snapshots_list_into_head(self, tmp_path: Path) -> None:
        """`snapshots list | head -1` exits as SIGPIPE would (141), with nothing on stderr
        (it printed a BrokenPipeError traceback)."""
        bucket = tmp_path / "bucket"
        bucket.mkdir()
        for i in range(MANY_OBJECTS):
            (bucket / f"main__x__20300101-000000-{i:09d}__G{i:x}.evs.zst").write_bytes(b"")
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"lmdbs:\n  main:\n    path: {tmp_path}/lmdb\n"
                       f"storage:\n  type: fs\n  options: {{root_path: {bucket}}}\n")
        code, err = self._head_one("-c", str(cfg), "snapshots", "list", "-l")
        assert err == "" and code == 141

    def test_dump_into_head(self, instances: Make, s3_storage: dict[str, Any]) -> None:
        """`dump | head -1` ends quietly too."""
        a = instances("a", s3_storage)
        subprocess.run([sys.executable, "-m", "evsync.tools.lmdb_write", str(a.lmdb_path),
                        "fill", "records", str(MANY_OBJECTS)], cwd=REPO, check=True)
        code, err = self._head_one("-c", str(a.config_path), "dump")
        assert err == "" and code == 141


class TestLocalOnlyCommands:
    """Commands that read only local files need only the config's LMDB section."""

    def test_dump_ignores_unset_storage_secrets(self, tmp_path: Path) -> None:
        """`dump` with `${S3_ACCESS_KEY}` unset in the storage section still dumps (it
        failed: "environment variable S3_ACCESS_KEY is not set")."""
        lmdb = tmp_path / "lmdb"
        subprocess.run([sys.executable, "-m", "evsync.tools.lmdb_write", str(lmdb), "put",
                        "records", "k", "v"], cwd=REPO, check=True)
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"lmdbs:\n  main:\n    path: {lmdb}\n    schema_tracks_changes: true\n"
                       "storage:\n  type: s3\n  options:\n    bucket: b\n"
                       "    access_key: ${EVSYNC_TEST_UNSET_KEY}\n")
        res = evsync("-c", str(cfg), "dump", "-f", "json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["main"]["records"][0]["value"] == "v"

    def test_lmdb_write_get_on_a_missing_path(self, tmp_path: Path) -> None:
        """`lmdb_write PATH get` where PATH holds no LMDB says so (exit 1) and creates
        nothing (it created an empty LMDB and printed "(missing)")."""
        path = tmp_path / "nothing-here"
        res = subprocess.run([sys.executable, "-m", "evsync.tools.lmdb_write", str(path),
                              "get", "records", "k"], cwd=REPO, capture_output=True,
                             text=True, check=False)
        assert res.returncode == 1
        assert res.stderr.strip() == f"lmdb_write: no LMDB at {path}"
        assert not path.exists()


class TestOnlyOnceSummary:
    """`sync --only-once` ends with one line saying what it did."""

    def test_summary_line(self, instances: Make, s3_storage: dict[str, Any]) -> None:
        """The last line counts objects merged and stored, their bytes and the time."""
        a = instances("a", s3_storage)
        a.writer.put("k", "v")
        res = a.command("sync", "--only-once")
        assert res.returncode == 0, res.stderr
        last = res.stderr.strip().splitlines()[-1]
        assert "only-once: merged 0 object(s)" in last, last
        assert "stored 1 object(s) (" in last and " bytes) in " in last
        b = instances("b", s3_storage)
        res = b.command("receive", "--only-once")
        last = res.stderr.strip().splitlines()[-1]
        assert "only-once: merged 1 object(s)" in last and "stored 0 object(s)" in last, last


class TestMessages:
    """Log lines say what happened."""

    def test_mqtt_drop_is_named(self, instances: Make, s3_storage: dict[str, Any],
                                tmp_path: Path) -> None:
        """A broker that goes away is logged as a dropped connection, not as paho's
        "Unspecified error"."""
        from tests.helpers import Mosquitto

        broker = Mosquitto(tmp_path / "mosquitto").start()
        try:
            a = instances("a", s3_storage, notify={
                "listing_interval": "1s",
                "mqtt": {"url": broker.url, "topic": "evsync-drop", "publish": True}}).start()
            wait_for(lambda: "mqtt: connected" in a.log(), what="a to connect")
        finally:
            broker.stop()
        wait_for(lambda: "mqtt: disconnected" in a.log(), what="the drop to be logged")
        line = next(x for x in a.log().splitlines() if "mqtt: disconnected" in x)
        assert "the connection dropped" in line and "Unspecified error" not in line, line


# enough records that the dump takes several redraw intervals
PROGRESS_RECORDS = 200_000


class TestProgress:
    """Long work shows progress on stderr when that is a terminal, and nothing otherwise."""

    def _run(self, args: list[str], *, tty: bool) -> tuple[int, str]:
        """Run evsync with stdout to a file and stderr to a pty (or a pipe)."""
        import os
        import pty

        if not tty:
            res = subprocess.run([sys.executable, "-m", "evsync", *args], cwd=REPO,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 check=False, timeout=120)
            return res.returncode, res.stderr.decode(errors="replace")
        leader, follower = pty.openpty()
        proc = subprocess.Popen([sys.executable, "-m", "evsync", *args], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=follower)
        os.close(follower)
        chunks: list[bytes] = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the pty
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(leader)
        return proc.wait(timeout=120), b"".join(chunks).decode(errors="replace")

    def _config(self, tmp_path: Path) -> Path:
        lmdb = tmp_path / "lmdb"
        subprocess.run([sys.executable, "-m", "evsync.tools.lmdb_write", str(lmdb), "fill",
                        "records", str(PROGRESS_RECORDS)], cwd=REPO, check=True)
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"lmdbs:\n  main:\n    path: {lmdb}\n    schema_tracks_changes: true\n"
                       f"storage:\n  type: fs\n  options: {{root_path: {tmp_path}/bucket}}\n")
        return cfg

    def test_dump_progress_on_a_terminal_only(self, tmp_path: Path) -> None:
        """`dump -f json > file` with stderr on a terminal draws records, rate and a
        total; with --quiet, or stderr not a terminal, stderr stays empty."""
        cfg = self._config(tmp_path)
        code, err = self._run(["-c", str(cfg), "dump", "-f", "json"], tty=True)
        assert code == 0, err
        assert "dump main" in err and f"/{PROGRESS_RECORDS}" in err and "records/s" in err
        code, err = self._run(["-c", str(cfg), "--quiet", "dump", "-f", "json"], tty=True)
        assert code == 0 and err == "", err
        code, err = self._run(["-c", str(cfg), "dump", "-f", "json"], tty=False)
        assert code == 0 and err == "", err

    def test_put_and_get_progress(self, tmp_path: Path) -> None:
        """`snapshots put` and `get` count bytes on a terminal; piped they add nothing."""
        cfg = self._config(tmp_path)
        assert evsync("-c", str(cfg), "sync", "--only-once").returncode == 0
        name = evsync("-c", str(cfg), "snapshots", "list").stdout.split()[0]
        local = tmp_path / "copy.evs.zst"
        code, err = self._run(["-c", str(cfg), "snapshots", "get", name, "-o", str(local)],
                              tty=True)
        assert code == 0, err
        assert f"get {name}" in err and "%|" in err
        renamed = "copy-of-the-object"
        code, err = self._run(["-c", str(cfg), "snapshots", "put", str(local), "-n", renamed,
                               "--force"], tty=True)
        assert code == 0, err
        assert f"put {renamed}" in err and "%|" in err
        code, err = self._run(["-c", str(cfg), "snapshots", "get", name, "-o", str(local)],
                              tty=False)
        assert code == 0 and err == "", err

    def test_only_once_merge_progress_on_a_terminal(self, tmp_path: Path) -> None:
        """A first `sync --only-once` of a bucket holding a big object draws the entries
        merged, their rate, and the objects and MiB fetched on a terminal; piped, stderr
        holds only the log lines."""
        cfg = self._config(tmp_path)
        assert evsync("-c", str(cfg), "sync", "--only-once").returncode == 0
        lmdb2 = tmp_path / "lmdb2"
        other = tmp_path / "other.yaml"
        other.write_text(cfg.read_text().replace(f"{tmp_path}/lmdb", str(lmdb2))
                         + "instance: other\n")
        other.write_text(other.read_text().replace("schema_tracks_changes: true",
                                                   "schema_tracks_changes: true\n"
                                                   "    options: {create: true}"))
        code, err = self._run(["-c", str(other), "sync", "--only-once"], tty=True)
        assert code == 0, err
        assert "merging" in err and "entries" in err and "MiB fetched" in err, err
        code, err = self._run(["-c", str(other), "sync", "--only-once"], tty=False)
        assert code == 0 and "merging" not in err, err
