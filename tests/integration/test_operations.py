"""Operations: /metrics, /healthz and /status of running daemons, cleanup, the rejoin guard."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from evsync.config import load_config
from evsync.lmdb.env import LmdbEnv
from evsync.lmdb.state import write_last_sync_ns
from tests.helpers import (
    AwsServer,
    Instance,
    Mosquitto,
    MotoServer,
    Writer,
    free_port,
    wait_for,
)

pytestmark = pytest.mark.integration

Make = Callable[..., Instance]
DAY_NS = 86400 * 1_000_000_000


def http_on(port: int) -> dict[str, Any]:
    return {"address": f"127.0.0.1:{port}"}


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def healthz_code(port: int) -> int:
    """/healthz's status code; 0 while nothing listens yet (the daemon is starting)."""
    try:
        return get(port, "/healthz")[0]
    except urllib.error.URLError:
        return 0


def sample(port: int, name: str, **labels: str) -> float | None:
    """One sample of a metric from a live /metrics page, or None when absent."""
    _code, text = get(port, "/metrics")
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        got = ",".join(sorted((match.group(2) or "").split(","))) if match.group(2) else ""
        if got == want:
            return float(match.group(3))
    return None


def status(port: int) -> dict[str, Any]:
    code, text = get(port, "/status")
    assert code == 200, text
    result: dict[str, Any] = json.loads(text)
    return result


class TestMetricsAndStatus:
    """A running daemon's /metrics and /status move with what it does."""

    def test_hints_are_counted_by_the_source_that_delivered_them(
        self, instances: Make, s3_storage: dict[str, Any], mosquitto: Mosquitto, topic: str
    ) -> None:
        """A commit on A is counted as a watcher hint on A; its announcement as an mqtt hint
        on B, which then counts the object loaded, the bytes and the propagation lag."""
        pa, pb = free_port(), free_port()
        notify = {"listing_interval": "1h",
                  "mqtt": {"url": mosquitto.url, "topic": topic, "publish": True}}
        a = instances("a", s3_storage, notify=notify, http=http_on(pa)).start()
        b = instances("b", s3_storage, notify=notify, http=http_on(pb)).start()
        wait_for(lambda: status(pb)["push_sources"]["mqtt"]["connected"], what="b on mqtt")
        before = sample(pb, "evsync_hints_total", db="main", source="mqtt") or 0.0
        a.writer.put("k1", "v1")
        wait_for(lambda: b.writer.get("k1") == "v1", what="k1 on b")

        assert (sample(pa, "evsync_hints_total", db="main", source="watcher") or 0) >= 1
        assert (sample(pa, "evsync_objects_stored_total", db="main") or 0) >= 1
        assert (sample(pa, "evsync_uploaded_bytes_total", db="main") or 0) > 0
        assert (sample(pb, "evsync_hints_total", db="main", source="mqtt") or 0) > before
        assert sample(pb, "evsync_hints_total", db="main", source="listing") in (None, 0.0)
        assert (sample(pb, "evsync_objects_loaded_total", db="main", instance="a") or 0) >= 1
        assert (sample(pb, "evsync_downloaded_bytes_total", db="main") or 0) > 0
        assert (sample(pb, "evsync_propagation_lag_seconds_count", db="main") or 0) >= 1
        assert sample(pb, "evsync_push_source_connected", source="mqtt") == 1.0
        assert sample(pb, "evsync_remote_merged_object_age_seconds",
                      db="main", instance="a") is not None
        wait_for(lambda: sample(pb, "evsync_lmdb_entries", db="main", dbi="records") == 1.0,
                 what="LMDB gauges refreshed on b")
        assert (sample(pb, "evsync_lmdb_map_size_bytes", db="main") or 0) > 0
        assert (sample(pb, "evsync_write_lock_longest_seconds", db="main") or 0) > 0

    def test_status_shows_each_instance_and_the_cli_prints_it(
        self, instances: Make, s3_storage: dict[str, Any]
    ) -> None:
        """/status names each remote instance with its newest merged object and lag;
        `evsync status` prints it, and `--bucket` summarises the bucket alone."""
        pa, pb = free_port(), free_port()
        a = instances("a", s3_storage, http=http_on(pa)).start()
        b = instances("b", s3_storage, http=http_on(pb)).start()
        a.writer.put("k1", "v1")
        wait_for(lambda: b.writer.get("k1") == "v1", what="k1 on b")
        wait_for(lambda: status(pb)["dbs"]["main"]["instances"].get("a", {}).get("merged"),
                 what="b's status to show a's object merged")
        st = status(pb)["dbs"]["main"]
        assert st["instances"]["a"]["merged"].startswith("main__a__")
        assert st["instances"]["a"]["lag_seconds"] is not None
        assert st["startup_done"] is True
        assert status(pa)["dbs"]["main"]["last_upload"].startswith("main__a__")

        out = b.command("status")
        assert out.returncode == 0, out.stderr
        assert "db main:" in out.stdout and "main__a__" in out.stdout
        bucket = b.command("status", "--bucket")
        assert bucket.returncode == 0, bucket.stderr
        assert re.search(r"^\s+a\s+\d+\s+\d+", bucket.stdout, re.M), bucket.stdout
        as_json = json.loads(b.command("status", "--bucket", "--json").stdout)
        assert as_json["dbs"]["main"]["a"]["objects"] >= 1

    def test_status_without_a_daemon_fails_with_one_line(
        self, instances: Make, s3_storage: dict[str, Any]
    ) -> None:
        """`evsync status` against a port nobody serves exits 1 with one clear line."""
        a = instances("a", s3_storage, http=http_on(free_port()))
        out = a.command("status")
        assert out.returncode == 1
        assert out.stderr.strip().count("\n") == 0
        assert "cannot reach the daemon" in out.stderr


class TestHealthz:
    """/healthz follows the storage: 503 while it is down, 200 again once it is back."""

    def test_healthz_fails_while_s3_is_stopped_and_recovers(self, instances: Make) -> None:
        """With a 1 s error threshold, stopping the S3 server turns /healthz into a 503
        naming the listing check; restarting it brings back a 200."""
        server = MotoServer().start()
        try:
            storage = {"type": "s3", "options": {
                "bucket": "health", "endpoint_url": server.endpoint, "create_bucket": True,
                "region": "us-east-1", "access_key": "test", "secret_key": "test"}}
            port = free_port()
            fast = {"warn_duration": "300ms", "error_duration": "1s"}
            a = instances("a", storage, http=http_on(port),
                          health={"storage_list": fast, "storage_load": fast,
                                  "storage_store": fast}).start()
            wait_for(lambda: healthz_code(port) == 200, what="healthy at start")
            server.stop()
            _code, body = wait_for(lambda: (r := get(port, "/healthz"))[0] == 503 and r,
                                  what="503 while S3 is down")
            report = json.loads(body)
            assert "main_storage_list" in report["failing"]
            assert report["checks"]["main_storage_list"]["last_error"]
            assert sample(port, "evsync_health_check", check="main_storage_list") == 2.0
            assert a.proc is not None and a.proc.poll() is None  # still serving
            server.start()
            server.client().create_bucket(Bucket="health")
            wait_for(lambda: healthz_code(port) == 200, timeout=20,
                     what="healthy again after S3 returns")
            assert a.stop() == 0
        finally:
            server.stop()


class TestMissingLmdb:
    """A db whose LMDB does not exist (create: false) does not stop the others."""

    def test_a_missing_lmdb_is_reported_and_picked_up_when_it_appears(
        self, instances: Make, s3_storage: dict[str, Any], aws: AwsServer, tmp_path: Path
    ) -> None:
        """With `other`'s LMDB missing, the daemon starts and syncs `main`; /healthz is 503
        naming `other_lmdb`, /status and `evsync status` say it is not synced; once the
        LMDB appears (the application creates it), its data reaches the bucket and
        /healthz turns 200."""
        port = free_port()
        other_path = tmp_path / "a" / "other-lmdb"
        other = {"path": str(other_path), "schema_tracks_changes": True,
                 "options": {"create": False}}
        a = instances("a", s3_storage, http=http_on(port), lmdbs={"other": other}).start()
        bucket = s3_storage["options"]["bucket"]

        def keys() -> list[str]:
            listing = aws.client().list_objects_v2(Bucket=bucket).get("Contents", [])
            return [obj["Key"] for obj in listing]

        a.writer.put("k", "v")
        wait_for(lambda: any(k.startswith("main__a__") for k in keys()), what="main synced")
        code, body = get(port, "/healthz")
        assert code == 503, body
        report = json.loads(body)
        assert report["failing"] == ["other_lmdb"]
        assert f"{other_path} does not exist" in report["checks"]["other_lmdb"]["last_error"]
        assert "does not exist" in status(port)["dbs"]["other"]["lmdb_missing"]
        assert "NOT SYNCED" in a.command("status", "--url", f"http://127.0.0.1:{port}").stdout
        assert a.log().count(f"{other_path} does not exist") == 1

        app = Writer(other_path)  # the application creates its LMDB
        try:
            app.put("o", "v")
            wait_for(lambda: any(k.startswith("other__a__") for k in keys()), timeout=20,
                     what="other synced once its LMDB appeared")
        finally:
            app.close()
        wait_for(lambda: healthz_code(port) == 200, what="healthy once it appeared")
        assert "db other: its LMDB appeared" in a.log()
        assert a.stop() == 0


class TestS3AtStart:
    """S3 that is down at start is waited for; a bucket that cannot work is named at once."""

    def test_s3_down_at_start_is_waited_for_not_fatal(self, instances: Make) -> None:
        """S3 unreachable when `sync` starts, with create_bucket on (as config/s3.yaml
        ships): the daemon stays up and says so, the listing check fails, and once S3
        answers it creates the bucket and stores what was written meanwhile. (It used to
        exit 1 at once.)"""
        server = MotoServer()  # not started yet
        storage = {"type": "s3", "options": {
            "bucket": "late", "endpoint_url": server.endpoint, "create_bucket": True,
            "region": "us-east-1", "access_key": "test", "secret_key": "test"}}
        port = free_port()
        fast = {"warn_duration": "300ms", "error_duration": "1s"}
        a = instances("a", storage, http=http_on(port), health={"storage_list": fast})
        a.start(wait=False)
        try:
            wait_for(lambda: "trying again before each listing" in a.log(), timeout=30,
                     what="the warning")
            # the warning comes from opening the store, before the HTTP server starts
            wait_for(lambda: healthz_code(port) == 503, timeout=30,
                     what="503 while S3 is down")
            assert a.proc is not None and a.proc.poll() is None
            a.writer.put("k", "v")
            server.start()

            def stored() -> bool:
                try:
                    listing = server.client().list_objects_v2(Bucket="late")
                except server.client().exceptions.NoSuchBucket:
                    return False  # evsync has not created it yet
                return any(o["Key"].startswith("main__a__") for o in listing.get("Contents", []))

            wait_for(stored, timeout=60, what="a's object in the bucket it created")
            wait_for(lambda: healthz_code(port) == 200, timeout=30, what="healthy")
            assert a.stop() == 0
        except AssertionError as exc:  # say what the daemon saw
            raise AssertionError(f"{exc}\n--- evsync log ---\n{a.log()[-4000:]}") from None
        finally:
            server.stop()

    def test_only_once_against_a_missing_bucket_fails_at_once(
        self, instances: Make, aws: AwsServer
    ) -> None:
        """`sync --only-once` against a bucket that does not exist (create_bucket off)
        exits 1 within seconds, with one line naming NoSuchBucket (it used to retry in
        silence for about 8 minutes with the default retry settings)."""
        storage = {"type": "s3", "options": {
            "bucket": "no-such-bucket-evsync", "endpoint_url": aws.endpoint,
            "region": "us-east-1", "access_key": "test", "secret_key": "test"}}
        a = instances("a", storage, storage_retry_count=100, storage_retry_interval="5s")
        started = time.monotonic()
        res = a.command("sync", "--only-once", timeout=120)
        assert res.returncode == 1, res.stderr
        assert time.monotonic() - started < 30
        named = [line for line in res.stderr.splitlines() if "NoSuchBucket" in line]
        assert len(named) == 1, res.stderr
        assert "no-such-bucket-evsync" in named[0]


class TestBrokerOutage:
    """A broker that is down is reported at once and found again quickly."""

    def test_broker_down_at_start_warns_and_is_found_when_it_comes_back(
        self, instances: Make, s3_storage: dict[str, Any], tmp_path: Any
    ) -> None:
        """With the broker down at start, the first failed attempt logs one warning and
        turns the mqtt check to a warning (not "ok" for its first minute); the sync goes on
        by listing; once the broker is up, evsync connects within about 5 s although it
        had been failing for 16 s (paho's doubling backoff used to wait up to 30 s)."""
        broker = Mosquitto(tmp_path / "late-broker")  # not started yet
        port = free_port()
        notify = {"listing_interval": "1s",
                  "mqtt": {"url": broker.url, "topic": "evsync-late", "publish": True}}
        a = instances("a", s3_storage, notify=notify, http=http_on(port)).start()
        wait_for(lambda: "mqtt: cannot connect" in a.log(), timeout=10, what="a warning")
        checks = json.loads(get(port, "/healthz")[1])["checks"]
        assert checks["mqtt"]["status"] == "warning", checks["mqtt"]
        assert "cannot connect" in checks["mqtt"]["last_error"]
        for i in range(3):  # stored while the broker is away: announcements wait
            a.writer.put("k", f"v{i}")
            wait_for(lambda i=i: a.log().count("db main: stored") >= i + 1, what="a store")
        time.sleep(16)  # failing long enough for the old backoff to reach 16 s
        assert a.log().count("mqtt: cannot connect") == 1
        newest = re.findall(r"db main: stored (\S+)", a.log())[-1]
        broker.start()
        try:
            started = time.monotonic()
            wait_for(lambda: "mqtt: connected" in a.log(), timeout=20, what="a to connect")
            assert time.monotonic() - started < 8.0
            # the newest announcement was kept and is sent once connected
            announced = wait_for(lambda: broker.retained("evsync-late/main/a"),
                                 what="the retained announcement")
            assert newest.encode() in announced
            wait_for(
                lambda: json.loads(get(port, "/healthz")[1])["checks"]["mqtt"]["status"] == "ok",
                what="the mqtt check to clear",
            )
        finally:
            assert a.stop() == 0
            broker.stop()


class TestLifecycle:
    """Signals end the daemon cleanly; --only-once says why it failed."""

    def test_sigterm_during_uploads_exits_zero_and_loses_nothing(
        self, instances: Make, s3_storage: dict[str, Any]
    ) -> None:
        """SIGTERM while changes are being uploaded exits 0; what was committed is in the
        bucket once a restarted instance has caught up."""
        a = instances("a", s3_storage).start()
        for i in range(20):
            a.writer.put(f"k{i}", "v")
        assert a.stop() == 0
        assert "stopped" in a.log()
        a.start()  # whatever the stop left pending is uploaded now
        b = instances("b", s3_storage).start()
        wait_for(lambda: all(b.writer.get(f"k{i}") == "v" for i in range(20)), timeout=20,
                 what="every key on b")


    def test_sighup_stops_as_sigterm_does(
        self, instances: Make, s3_storage: dict[str, Any]
    ) -> None:
        """SIGHUP (a closed terminal, or a reload sent by habit) ends the daemon as SIGTERM
        does: a clean stop that says so and exits 0, instead of dying at once."""
        a = instances("a", s3_storage).start()
        a.writer.put("k", "v")
        assert a.stop(signal.SIGHUP) == 0
        assert "received SIGHUP" in a.log() and "stopped" in a.log()


class TestCleanup:
    """Three instances cleaning at once keep the bucket bounded and lose nothing."""

    def test_three_instances_keep_the_bucket_bounded(
        self, instances: Make, s3_storage: dict[str, Any], aws: AwsServer
    ) -> None:
        """With a 1 s cleanup interval, many uploads from three instances leave at most a
        few objects per instance, and every instance ends with every key."""
        cleanup = {"interval": "1s", "must_keep_interval": "1s"}
        storage = {**s3_storage, "cleanup": cleanup}
        insts = [instances(n, storage).start() for n in ("a", "b", "c")]
        for round_ in range(12):
            for inst in insts:
                inst.writer.put(f"{inst.name}{round_}", f"v{round_}")
            time.sleep(0.25)
        keys = {f"{i.name}{r}" for i in insts for r in range(12)}
        for inst in insts:
            wait_for(lambda inst=inst: all(inst.writer.get(k) for k in keys), timeout=30,
                     what=f"every key on {inst.name}")
        bucket = s3_storage["options"]["bucket"]

        def per_instance() -> Counter[str]:
            listing = aws.client().list_objects_v2(Bucket=bucket).get("Contents", [])
            return Counter(obj["Key"].split("__")[1] for obj in listing)

        wait_for(lambda: max(per_instance().values()) <= 3, timeout=20,
                 what="the cleaners to bound the bucket")
        counts = per_instance()
        assert set(counts) == {"a", "b", "c"}, counts
        assert sum(i.log().count("cleaner: deleted") for i in insts) > 0


class TestRejoinGuard:
    """An instance away longer than the tombstone retention refuses to sync."""

    def test_stale_instance_refuses_until_forced(
        self, instances: Make, s3_storage: dict[str, Any]
    ) -> None:
        """With the sweeper on, an LMDB last in sync 3 days ago (retention 2 days) makes
        `sync --only-once` exit 1 with one line saying why and how to rejoin, uploading
        nothing; --force-rejoin syncs and records the rejoin."""
        sweeper = {"enabled": True, "retention_days": 2}
        # a retention shorter than the cleaner's stale-instance removal is refused
        storage = {**s3_storage, "cleanup": {"remove_old_instances_interval": "24h"}}
        a = instances("a", storage, sweeper=sweeper)
        a.writer.put("old", "value")
        a.writer.close()
        a._writer = None
        cfg = load_config(a.config_path)
        lenv = LmdbEnv(cfg.lmdbs["main"])
        write_last_sync_ns(lenv, time.time_ns() - 3 * DAY_NS)
        lenv.close()

        refused = a.command("sync", "--only-once")
        assert refused.returncode == 1
        assert "refusing to sync" in refused.stderr
        assert "--force-rejoin" in refused.stderr
        assert "3.0 days ago" in refused.stderr
        listing = a.command("snapshots", "list")
        assert "main__a__" not in listing.stdout

        forced = a.command("sync", "--only-once", "--force-rejoin")
        assert forced.returncode == 0, forced.stderr
        assert "main__a__" in a.command("snapshots", "list").stdout
        again = a.command("sync", "--only-once")
        assert again.returncode == 0, again.stderr

    def test_the_remedy_does_not_bring_back_a_swept_delete(
        self, instances: Make, s3_storage: dict[str, Any]
    ) -> None:
        """docs/operations.md's safe rejoin, after a tombstone was swept: A's own newest
        object (still in the bucket, holding the deleted key as live) is not merged into
        the moved-away LMDB, nor into a new instance C; A's next upload does not bring the
        key back to B. Retention 8.64 s (0.0001 days); the cleaner does not run meanwhile."""
        sweeper = {"enabled": True, "retention_days": 0.0001, "first_interval": "0s",
                   "interval": "1s"}
        storage = {**s3_storage, "cleanup": {"interval": "1h",
                                             "remove_old_instances_interval": "5s"}}
        a = instances("a", storage, sweeper=sweeper)
        a.writer.put("gone", "v")
        a.writer.close()
        a._writer = None
        assert a.command("sync", "--only-once").returncode == 0

        b = instances("b", storage, sweeper=sweeper, deltas={"enabled": False}).start()
        wait_for(lambda: b.writer.get("gone") == "v", what="b to merge a's object")
        b.writer.delete("gone")
        wait_for(lambda: b.writer.get("gone") is None, timeout=30,
                 what="b's sweeper to remove the tombstone")
        stores = b.log().count(": stored ")
        b.writer.put("after", "v")  # b's next full object no longer knows the key
        wait_for(lambda: b.log().count(": stored ") > stores, what="b to upload")

        refused = a.command("sync", "--only-once")
        assert refused.returncode == 1 and "refusing to sync" in refused.stderr
        a.lmdb_path.rename(a.dir / "lmdb.moved-away")  # the remedy
        restored = a.command("sync", "--only-once")
        assert restored.returncode == 0, restored.stderr
        assert a.writer.get("after") == "v"
        assert a.writer.get("gone") is None
        assert "not merging main__a__" in restored.stderr

        c = instances("c", storage, sweeper=sweeper)
        assert c.command("sync", "--only-once").returncode == 0
        assert c.writer.get("after") == "v"
        assert c.writer.get("gone") is None

        a.writer.put("a-again", "v")
        assert a.command("sync", "--only-once").returncode == 0
        wait_for(lambda: b.writer.get("a-again") == "v", what="b to merge a's new object")
        assert b.writer.get("gone") is None
