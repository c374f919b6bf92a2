"""Operational behaviour of the syncer and daemon: metrics, health, clock skew, the rejoin
guard, sweeping between steps and shutdown during a merge — real LMDB files, memory store."""

from __future__ import annotations

import dataclasses
import io
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from prometheus_client import generate_latest

from evsync.config import (
    Config,
    HealthCheckConfig,
    HealthConfig,
    LmdbConfig,
    LmdbOptions,
    StartHealthConfig,
    SweeperConfig,
    config_from_dict,
)
from evsync.daemon import Daemon
from evsync.errors import ConfigError
from evsync.lmdb.env import LmdbEnv
from evsync.lmdb.state import read_last_sync_ns, write_last_sync_ns
from evsync.metrics import Metrics
from evsync.rejoin import RejoinGuard
from evsync.snapshot import DbiInfo, SnapshotHeader, write_snapshot
from evsync.snapshot.name import SnapshotName
from evsync.storage.memory import MemoryStore
from evsync.sync import Syncer
from evsync.triggers.base import Batch, Hint, HintQueue
from tests.unit.test_syncer import app_put, make_config, objects, read

NS = 1_000_000_000
DAY = 86400 * NS
NOW = 1_800_000_000 * NS


class Clock:
    """A settable wall clock in ns."""

    def __init__(self, now: int = NOW) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def syncer(
    instance: str,
    tmp_path: Path,
    store: MemoryStore,
    *,
    clock: Clock | None = None,
    metrics: Metrics | None = None,
    **changes: Any,
) -> Syncer:
    cfg, lcfg = make_config(instance, tmp_path / instance)
    cfg = dataclasses.replace(cfg, **changes)
    kwargs: dict[str, Any] = {}
    if clock is not None:
        kwargs["clock_ns"] = clock
    force = bool(kwargs.pop("force_rejoin", False))
    return Syncer(
        cfg,
        lcfg,
        store,
        HintQueue("main", own_instance=instance),
        stop_event=threading.Event(),
        metrics=metrics or Metrics(),
        force_rejoin=force,
        **kwargs,
    )


def put_object(store: MemoryStore, instance: str, ts: int, items: dict[bytes, bytes]) -> str:
    """Another instance's object with live entries stamped ``ts``."""
    name = SnapshotName.build("main", instance, ts).name
    entries = [(k, ts, 0, v) for k, v in sorted(items.items())]
    header = SnapshotHeader(
        "main", instance, "h", ts, 1, (DbiInfo(b"records", 0, "", len(entries)),)
    )
    buf = io.BytesIO()
    write_snapshot(buf, header, [entries])
    buf.seek(0)
    store.store(name, buf)
    return name


def value(m: Metrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


class TestMetrics:
    """Counters and gauges move with what the syncer does."""

    def test_store_and_load_are_counted(self, tmp_path: Path, store: MemoryStore) -> None:
        """An upload counts an object stored and its bytes; a merge on the peer counts an
        object loaded from that instance, entries merged and a propagation-lag sample."""
        ma, mb = Metrics(), Metrics()
        a = syncer("a", tmp_path, store, metrics=ma)
        app_put(a, b"k", b"v", 1000)
        assert a.run_once()
        assert value(ma, "evsync_objects_stored_total", db="main") == 1
        assert value(ma, "evsync_uploaded_bytes_total", db="main") > 0
        assert value(ma, "evsync_dump_duration_seconds_count", db="main") == 1
        b = syncer("b", tmp_path, store, metrics=mb)
        assert b.run_once()
        assert value(mb, "evsync_objects_loaded_total", db="main", instance="a") == 1
        assert value(mb, "evsync_entries_merged_total", db="main") == 1
        assert value(mb, "evsync_entries_written_total", db="main") == 1
        assert value(mb, "evsync_propagation_lag_seconds_count", db="main") == 1
        assert value(mb, "evsync_write_lock_longest_seconds", db="main") > 0

    def test_corrupt_object_is_counted_as_rejected(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """A corrupt object bumps the rejected counter for its instance; the LMDB stays empty."""
        m = Metrics()
        name = SnapshotName.build("main", "x", NOW).name
        store.store(name, io.BytesIO(b"not an object"))
        b = syncer("b", tmp_path, store, metrics=m)
        b.run_once()
        assert value(m, "evsync_objects_rejected_total", db="main", instance="x") == 1
        assert read(b, b"k") is None

    def test_state_collector_exports_lmdb_and_hint_figures(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """The scrape-time gauges show entries per DBI, the txn id and hints by source."""
        m = Metrics()
        a = syncer("a", tmp_path, store, metrics=m)
        m.add_state_collector(lambda: {"dbs": {"main": a.metrics_state()}})
        app_put(a, b"k1", b"v", 1000)
        app_put(a, b"k2", b"v", 1000)
        a.queue.put(Hint("watcher", local=True))
        a.run_once()
        a.refresh_lmdb_stats(force=True)
        text = generate_latest(m.registry).decode()
        assert 'evsync_lmdb_entries{db="main",dbi="records"} 2.0' in text
        assert value(m, "evsync_lmdb_last_txn_id", db="main") == a.lenv.last_txn_id()
        assert value(m, "evsync_hints_total", db="main", source="watcher") == 1
        assert value(m, "evsync_startup_done", db="main") == 1


class TestFailuresInHealth:
    """A dump or merge that fails shows in the health checks, not only in the log."""

    def test_a_failing_dump_fails_the_store_check_until_fixed(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """A value without a native header makes every dump fail: the store check fails
        (so /healthz turns 503 after its error duration), evsync_dump_failures_total
        counts, the error names the DBI and key; once the value is fixed it is stored."""
        m = Metrics()
        a = syncer("a", tmp_path, store, metrics=m)
        app_put(a, b"good", b"v", 1000)
        assert a.run_once()
        stored = objects(store, "a")
        env = a.lenv.env
        with env.begin(write=True) as txn:
            txn.put(b"bad", b"no header", db=env.open_db(b"records", txn=txn))
        a.step(Batch(local=True))
        assert a.health.failing("store")
        assert "'records' key b'bad'" in a.health.snapshot()["store"]["last_error"]
        assert value(m, "evsync_dump_failures_total", db="main") == 1
        assert objects(store, "a") == stored
        app_put(a, b"bad", b"fixed", 2000)
        a.sender.backoff.succeeded()  # skip the retry delay
        a.step(Batch(local=True))
        assert not a.health.failing("store")
        assert len(objects(store, "a")) == len(stored) + 1


class TestClockSkew:
    """Objects stamped ahead of the local clock are reported."""

    def test_object_from_the_future_warns_and_counts(
        self, tmp_path: Path, store: MemoryStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An object 5 s ahead of this host's clock (threshold 1 s) logs one warning naming
        the object and bumps the skew counter; the gauge shows +5 s."""
        m = Metrics()
        put_object(store, "x", NOW + 5 * NS, {b"k": b"v"})
        b = syncer("b", tmp_path, store, clock=Clock(), metrics=m)
        b.run_once()
        assert value(m, "evsync_clock_skew_warnings_total", db="main", instance="x") == 1
        assert value(m, "evsync_clock_skew_seconds", db="main", instance="x") == pytest.approx(5)
        warnings = [r for r in caplog.records if "clock skew" in r.getMessage()]
        assert len(warnings) == 1 and "main__x__" in warnings[0].getMessage()

    def test_object_from_the_past_is_fine(self, tmp_path: Path, store: MemoryStore) -> None:
        """An object written 2 s ago is normal: no warning, a negative skew gauge."""
        m = Metrics()
        put_object(store, "x", NOW - 2 * NS, {b"k": b"v"})
        b = syncer("b", tmp_path, store, clock=Clock(), metrics=m)
        b.run_once()
        assert value(m, "evsync_clock_skew_warnings_total", db="main", instance="x") == 0
        assert value(m, "evsync_clock_skew_seconds", db="main", instance="x") == pytest.approx(-2)


    def test_a_forgotten_instance_is_exported_again_when_it_returns(self, tmp_path: Path) -> None:
        """The recorder makes each metric child once; forgetting an instance drops its
        series and the child, so a later object of it shows up again (a stale child
        would count into nothing)."""
        from evsync.snapshot.name import SnapshotName
        from evsync.sync.recorder import Recorder
        from tests.unit.test_syncer import make_config

        m = Metrics()
        rec = Recorder("main", make_config("b", tmp_path)[0], m)
        name = SnapshotName.build("main", "x", NOW)
        rec.clock_skew("x", name, 3.0)
        rec.forget_instance("x")
        labels = {"db": "main", "instance": "x"}
        assert m.registry.get_sample_value("evsync_clock_skew_seconds", labels) is None
        rec.clock_skew("x", name, 4.0)
        assert value(m, "evsync_clock_skew_seconds", db="main", instance="x") == pytest.approx(4)


class TestOwnNames:
    """A sender's new objects always sort after its objects already in the bucket."""

    def test_a_clock_behind_the_own_newest_object_names_after_it(
        self, tmp_path: Path, store: MemoryStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        """After a restart with the clock an hour behind the instance's newest object, the
        next object is named 1 ns after that object (so receivers take it as newest and
        the cleaner keeps it), the skew is logged, and a receiver gets the new record."""
        hour = 3600 * NS
        put_object(store, "a", NOW + hour, {b"old": b"v"})  # a previous run, clock ahead
        a = syncer("a", tmp_path, store, clock=Clock())
        app_put(a, b"new", b"v2", NOW)
        with caplog.at_level("WARNING"):
            assert a.run_once()
        newest = max(objects(store, "a"))
        assert SnapshotName.parse(newest).timestamp_ns == NOW + hour + 1
        assert any("behind this instance's newest object" in r.getMessage() for r in caplog.records)
        b = syncer("b", tmp_path, store, clock=Clock())
        assert b.run_once()
        assert read(b, b"new") is not None


class TestRejoinGuard:
    """An LMDB away longer than the tombstone retention must not sync (LS issue #90)."""

    SWEEPER = SweeperConfig(enabled=True, retention_days=2)

    def test_stale_lmdb_with_data_is_refused(self, tmp_path: Path, store: MemoryStore) -> None:
        """Last in sync 3 days ago with a 2-day retention: run_once fails, nothing is merged
        or uploaded, and the reason says how to rejoin."""
        clock = Clock()
        put_object(store, "x", NOW - DAY, {b"remote": b"v"})
        a = syncer("a", tmp_path, store, clock=clock, sweeper=self.SWEEPER)
        app_put(a, b"local", b"v", 1000)
        write_last_sync_ns(a.lenv, NOW - 3 * DAY)
        assert not a.run_once()
        assert objects(store, "a") == []
        assert read(a, b"remote") is None
        reason = a.guard.blocked_reason or ""
        assert "3.0 days ago" in reason and "--force-rejoin" in reason
        assert a.metrics_state()["rejoin_blocked"] is True

    def test_absence_within_the_retention_syncs_and_refreshes_the_state(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """Last in sync 1 day ago: the instance syncs and records now as its in-sync time."""
        clock = Clock()
        a = syncer("a", tmp_path, store, clock=clock, sweeper=self.SWEEPER)
        app_put(a, b"local", b"v", 1000)
        write_last_sync_ns(a.lenv, NOW - DAY)
        assert a.run_once()
        assert read_last_sync_ns(a.lenv) == NOW
        assert len(objects(store, "a")) == 1

    def test_wiped_lmdb_is_allowed(self, tmp_path: Path, store: MemoryStore) -> None:
        """An LMDB holding no data cannot resurrect anything, whatever its recorded state."""
        put_object(store, "x", NOW - DAY, {b"remote": b"v"})
        a = syncer("a", tmp_path, store, clock=Clock(), sweeper=self.SWEEPER)
        write_last_sync_ns(a.lenv, NOW - 30 * DAY)
        assert a.run_once()
        assert read(a, b"remote") is not None

    def test_force_rejoin_overrides_once(self, tmp_path: Path, store: MemoryStore) -> None:
        """--force-rejoin syncs a stale LMDB and rewrites its in-sync time."""
        a = syncer("a", tmp_path, store, clock=Clock(), sweeper=self.SWEEPER)
        a.guard.override = True
        app_put(a, b"local", b"v", 1000)
        write_last_sync_ns(a.lenv, NOW - 3 * DAY)
        assert a.run_once()
        assert read_last_sync_ns(a.lenv) == NOW
        assert a.guard.override is False

    def test_a_blocked_syncer_idles_and_logs_the_refusal_once(
        self, tmp_path: Path, store: MemoryStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A blocked syncer whose sweep and forced-snapshot deadlines have passed waits
        for hints instead of waking again at once, and logs the refusal once, not on every
        wake-up (it used to spin at 100 % CPU, ~16,000 ERROR lines a second)."""
        sweeper = dataclasses.replace(self.SWEEPER, first_interval=0.0)
        a = syncer(
            "a",
            tmp_path,
            store,
            clock=Clock(),
            sweeper=sweeper,
            storage_force_snapshot_interval=60.0,
        )
        app_put(a, b"local", b"v", 1000)
        write_last_sync_ns(a.lenv, NOW - 3 * DAY)
        a.sender.last_store_mono -= 120.0  # a forced snapshot is overdue
        steps = 0
        real_step = a.step

        def counting_step(batch: Batch) -> None:
            nonlocal steps
            steps += 1
            real_step(batch)

        a.step = counting_step  # type: ignore[method-assign]
        thread = threading.Thread(target=a.run)
        with caplog.at_level("ERROR"):
            thread.start()
            time.sleep(1.5)
            a.stop()
            thread.join(10)
        assert not thread.is_alive()
        refusals = [r for r in caplog.records if "refusing to sync" in r.getMessage()]
        assert len(refusals) == 1
        assert 1 <= steps <= 4  # a wake-up a second, not a busy loop
        assert a.guard.blocked
        assert objects(store, "a") == []

    def test_guard_is_off_without_the_sweeper(self, tmp_path: Path, store: MemoryStore) -> None:
        """Without sweeping nothing is forgotten, so the guard never blocks or writes state."""
        a = syncer("a", tmp_path, store, clock=Clock())
        app_put(a, b"local", b"v", 1000)
        write_last_sync_ns(a.lenv, NOW - 300 * DAY)
        assert a.run_once()
        assert read_last_sync_ns(a.lenv) == NOW - 300 * DAY

    def test_state_write_does_not_cause_an_upload(self, tmp_path: Path, store: MemoryStore) -> None:
        """Recording the in-sync time is evsync's own txn: no upload follows it."""
        clock = Clock()
        a = syncer("a", tmp_path, store, clock=clock, sweeper=self.SWEEPER)
        app_put(a, b"local", b"v", 1000)
        assert a.run_once()
        first = objects(store, "a")
        clock.now += DAY  # the next in-sync write is due
        a.on_listing(True)  # the lister thread listed the bucket ...
        a.gate.promote()  # ... and run() drained its hints
        txn = a.lenv.last_txn_id()
        a.step(Batch())
        assert a.lenv.last_txn_id() == txn + 1  # the state was written ...
        a.step(Batch())
        assert objects(store, "a") == first  # ... and not uploaded

    def test_failing_listings_do_not_advance_the_in_sync_time(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """While the bucket cannot be listed, the recorded in-sync time stays at the last
        successful listing, however long the daemon keeps running."""
        clock = Clock()
        a = syncer("a", tmp_path, store, clock=clock, sweeper=self.SWEEPER)
        app_put(a, b"local", b"v", 1000)
        assert a.run_once()
        assert read_last_sync_ns(a.lenv) == NOW
        for _ in range(3):
            clock.now += DAY // 2
            a.on_listing(False)
            a.gate.promote()
            a.step(Batch())
        assert read_last_sync_ns(a.lenv) == NOW

    def test_state_travels_with_the_lmdb_not_in_objects(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """The state DBI is never shipped: a peer merging our object has no state of ours."""
        a = syncer("a", tmp_path, store, clock=Clock(), sweeper=self.SWEEPER)
        app_put(a, b"local", b"v", 1000)
        write_last_sync_ns(a.lenv, NOW)
        assert a.run_once()
        b = syncer("b", tmp_path, store, clock=Clock())
        assert b.run_once()
        assert read_last_sync_ns(b.lenv) is None

    def test_limit_is_the_retention_minus_the_load_cutoff(self, tmp_path: Path) -> None:
        """The guard trips once the absence passes retention minus the 1% load cutoff."""
        lenv = LmdbEnv(
            LmdbConfig(
                name="g",
                path=str(tmp_path / "g"),
                options=LmdbOptions(create=True, map_size=1 << 22),
            )
        )
        guard = RejoinGuard(lenv, SweeperConfig(enabled=True, retention_days=100))
        assert guard.limit_seconds == pytest.approx(99 * 86400)
        lenv.close()


class TestSweeperInTheSyncer:
    """The syncer thread sweeps in short txns between its other work."""

    def test_old_tombstones_are_removed_by_steps(self, tmp_path: Path, store: MemoryStore) -> None:
        """With a due sweep, steps remove tombstones older than the retention, keep newer
        ones and live values, count the removal, and upload nothing because of it."""
        m = Metrics()
        clock = Clock()
        sweeper = SweeperConfig(enabled=True, retention_days=2, first_interval=0.0)
        a = syncer("a", tmp_path, store, clock=clock, metrics=m, sweeper=sweeper)
        app_put(a, b"live", b"v", NOW - 10 * DAY)
        app_put(a, b"old-del", b"", NOW - 3 * DAY, deleted=True)
        app_put(a, b"new-del", b"", NOW - DAY, deleted=True)
        assert a.run_once()
        uploaded = objects(store, "a")
        for _ in range(20):
            a.step(Batch())
            if value(m, "evsync_sweeper_runs_total", db="main"):
                break
        assert value(m, "evsync_sweeper_removed_tombstones_total", db="main") == 1
        assert read(a, b"old-del") is None
        assert read(a, b"new-del") is not None
        assert read(a, b"live") is not None
        a.step(Batch())
        assert objects(store, "a") == uploaded

    def test_a_receive_only_instance_sweeps_too(self, tmp_path: Path, store: MemoryStore) -> None:
        """A receive-only instance sweeps its LMDB as Lightning Stream does in receive mode,
        so its tombstones do not pile up for ever; it still uploads nothing."""
        m = Metrics()
        sweeper = SweeperConfig(enabled=True, retention_days=2, first_interval=0.0)
        cfg, lcfg = make_config("r", tmp_path / "r")
        r = Syncer(
            dataclasses.replace(cfg, sweeper=sweeper),
            lcfg,
            store,
            HintQueue("main", own_instance="r"),
            receive_only=True,
            stop_event=threading.Event(),
            clock_ns=Clock(),
            metrics=m,
        )
        app_put(r, b"old-del", b"", NOW - 3 * DAY, deleted=True)
        app_put(r, b"live", b"v", NOW - 10 * DAY)
        assert r.run_once()
        for _ in range(20):
            r.step(Batch())
            if value(m, "evsync_sweeper_runs_total", db="main"):
                break
        assert read(r, b"old-del") is None
        assert read(r, b"live") is not None
        assert objects(store, "r") == []


class TestShutdown:
    """Shutdown interrupts a merge cleanly."""

    def test_stop_during_merge_aborts_and_keeps_the_object_pending(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """A stop asked while an object is being merged (after its download) aborts the
        merge: the object is not marked merged, and the next run merges all of it."""
        put_object(store, "x", NOW, {f"k{i:05d}".encode(): b"v" for i in range(5000)})
        b = syncer("b", tmp_path, store)
        fetch = store.fetch

        def fetch_then_stop(name: str) -> Any:
            data = fetch(name)
            b.stop_event.set()  # shutdown arrives while the object is in hand
            return data

        store.fetch = fetch_then_stop  # type: ignore[method-assign]
        assert not b.run_once()
        assert b.instances["x"].merged is None
        assert read(b, b"k04999") is None
        b.close()
        store.fetch = fetch  # type: ignore[method-assign]
        b2 = syncer("b", tmp_path, store)
        assert b2.run_once()
        assert read(b2, b"k04999") is not None


class TestDaemonHealth:
    """/healthz's verdict from the checks the daemon aggregates."""

    def config(self, tmp_path: Path, **health: Any) -> Config:
        cfg, _ = make_config("a", tmp_path / "a")
        return dataclasses.replace(cfg, health=HealthConfig(**health))

    def test_healthy_after_startup(self, tmp_path: Path) -> None:
        """A daemon whose syncer finished startup and never failed is healthy."""
        d = Daemon(self.config(tmp_path), store=MemoryStore())
        try:
            d.syncers["main"].run_once()
            healthy, body = d.health()
            assert healthy and body["status"] == "ok"
            assert body["checks"]["main_startup"]["status"] == "ok"
            assert body["meta"]["startup_main"] is True
        finally:
            d.close()

    def test_continuous_listing_failure_is_an_error(self, tmp_path: Path) -> None:
        """Listing failing for longer than error_duration makes /healthz unhealthy and names
        the check; a success clears it."""
        zero = HealthCheckConfig(warn_duration=0.0, error_duration=0.0)
        d = Daemon(self.config(tmp_path, storage_list=zero), store=MemoryStore())
        try:
            d.syncers["main"].run_once()
            d.syncers["main"].on_listing(False)
            healthy, body = d.health()
            assert not healthy and body["failing"] == ["main_storage_list"]
            d.syncers["main"].on_listing(True)
            assert d.health()[0]
        finally:
            d.close()

    def test_unfinished_startup_turns_into_an_error(self, tmp_path: Path) -> None:
        """A startup that has not completed within health.start.error_duration is an error."""
        start = StartHealthConfig(warn_duration=0.0, error_duration=0.0)
        d = Daemon(self.config(tmp_path, start=start), store=MemoryStore())
        try:
            time.sleep(0.01)
            healthy, body = d.health()
            assert not healthy and "main_startup" in body["failing"]
        finally:
            d.close()

    def test_rejoin_guard_is_a_failing_check(self, tmp_path: Path) -> None:
        """A blocked rejoin guard shows as an error check with its reason."""
        d = Daemon(self.config(tmp_path), store=MemoryStore())
        try:
            d.syncers["main"].guard.blocked_reason = "away too long"
            healthy, body = d.health()
            assert not healthy
            assert body["checks"]["main_rejoin_guard"]["last_error"] == "away too long"
        finally:
            d.close()


class TestMissingLmdbInTheDaemon:
    """A db whose LMDB is missing (create: false) waits; the others run."""

    def config(self, tmp_path: Path) -> Config:
        cfg, main = make_config("a", tmp_path / "a")
        other = LmdbConfig(
            name="other",
            path=str(tmp_path / "other"),
            schema_tracks_changes=True,
            options=LmdbOptions(create=False, map_size=1 << 24),
        )
        return dataclasses.replace(cfg, lmdbs={"main": main, "other": other})

    def test_only_the_missing_db_waits_and_it_starts_once_it_exists(self, tmp_path: Path) -> None:
        """The daemon builds `main`, reports `other_lmdb` as an error with the path, keeps
        waiting even with no syncer running (it used to raise at start), and opens
        `other` once its LMDB exists; --only-once fails while one is missing."""
        d = Daemon(self.config(tmp_path), store=MemoryStore())
        try:
            assert list(d.syncers) == ["main"] and list(d.missing) == ["other"]
            healthy, body = d.health()
            assert not healthy and "other_lmdb" in body["failing"]
            assert str(tmp_path / "other") in body["checks"]["other_lmdb"]["last_error"]
            assert "does not exist" in d.status()["dbs"]["other"]["lmdb_missing"]
            assert not d.run_once()  # main syncs; other is not there
            assert d.open_appeared() == []
            LmdbEnv(LmdbConfig(name="other", path=str(tmp_path / "other"),
                               options=LmdbOptions(create=True))).close()
            assert d.open_appeared() == ["other"]
            assert set(d.syncers) == {"main", "other"} and not d.missing
            assert d.run_once()
            assert "other_lmdb" not in d.health()[1]["checks"]
        finally:
            d.close()

    def test_a_daemon_whose_only_db_is_missing_keeps_waiting(self, tmp_path: Path) -> None:
        """With no db running yet, wait() does not report every syncer stopped: it returns
        only when asked to stop."""
        cfg = self.config(tmp_path)
        cfg = dataclasses.replace(cfg, lmdbs={"other": cfg.lmdbs["other"]})
        d = Daemon(cfg, store=MemoryStore())
        try:
            timer = threading.Timer(1.2, d.stop_event.set)
            timer.start()
            assert d.wait() is True
            timer.join()
        finally:
            d.close()


class TestOperationsConfig:
    """The operations keys load with their defaults and reject bad values."""

    BASE: ClassVar[dict[str, Any]] = {
        "instance": "a",
        "lmdbs": {"main": {"path": "/tmp/x"}},
        "storage": {"type": "memory"},
    }

    def test_defaults(self) -> None:
        """Cleanup is on, the sweeper off, skew warns at 1 s, startup is reported."""
        cfg = config_from_dict(self.BASE)
        assert cfg.storage.cleanup.enabled is True
        assert cfg.sweeper.enabled is False
        assert cfg.clock_skew_threshold == 1.0
        assert cfg.health.start.report_healthz is True
        assert cfg.health.notify.error_duration == 300.0

    def test_health_error_shorter_than_warning_is_rejected(self) -> None:
        """error_duration below warn_duration is a config error naming the key."""
        data = {
            **self.BASE,
            "health": {"storage_list": {"warn_duration": "2m", "error_duration": "1m"}},
        }
        with pytest.raises(ConfigError, match=r"health\.storage_list\.error_duration"):
            config_from_dict(data)

    def test_start_and_skew_keys(self) -> None:
        """health.start takes LS's keys; clock_skew_threshold takes a duration."""
        data = {
            **self.BASE,
            "clock_skew_threshold": "250ms",
            "health": {"start": {"report_healthz": False, "error_duration": "10m"}},
        }
        cfg = config_from_dict(data)
        assert cfg.clock_skew_threshold == 0.25
        assert cfg.health.start.report_healthz is False
        assert cfg.health.start.error_duration == 600.0


class TestRetentionConfig:
    """The sweeper's retention must outlast the cleaner's stale-instance removal."""

    BASE: ClassVar[dict[str, Any]] = TestOperationsConfig.BASE

    def test_a_retention_shorter_than_stale_instance_removal_is_rejected(self) -> None:
        """retention_days 2 (48h) against the default remove_old_instances_interval (168h)
        is a config error naming both keys."""
        data = {**self.BASE, "sweeper": {"enabled": True, "retention_days": 2}}
        with pytest.raises(ConfigError, match=r"^sweeper\.retention_days: 2 days is shorter "
                           r"than storage\.cleanup\.remove_old_instances_interval \(168h\)"):
            config_from_dict(data)

    def test_defaults_and_allowed_combinations_load(self) -> None:
        """The shipped defaults (370 days vs 168h) load; so do a shorter removal interval,
        the sweeper off, and the sweeper without cleanup (objects older than the retention
        are never merged, so leftovers stay inert)."""
        sweeper = {"enabled": True, "retention_days": 2}
        ok = [
            {**self.BASE, "sweeper": {"enabled": True}},
            {**self.BASE, "sweeper": {"enabled": False, "retention_days": 2}},
            {
                **self.BASE,
                "sweeper": sweeper,
                "storage": {"type": "memory", "cleanup": {"remove_old_instances_interval": "48h"}},
            },
            {**self.BASE, "sweeper": sweeper,
             "storage": {"type": "memory", "cleanup": {"enabled": False}}},
        ]
        for data in ok:
            config_from_dict(data)


def sweeping(retention_days: float = 2) -> SweeperConfig:
    return SweeperConfig(enabled=True, retention_days=retention_days)


class TestObjectsOlderThanTheRetention:
    """With the sweeper on, objects stamped before the retention (minus the load cutoff)
    are never merged: deletes made after them may have lost their tombstones."""

    def test_a_dead_instances_leftover_object_is_not_merged(
        self, tmp_path: Path, store: MemoryStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A new instance skips a dead instance's 3-day-old object (retention 2 days) with
        one line naming it, counts it, is not kept waiting for it, and merges a fresh one."""
        m = Metrics()
        old = put_object(store, "dead", NOW - 3 * DAY, {b"deleted-since": b"v"})
        put_object(store, "live", NOW - DAY, {b"fresh": b"v"})
        a = syncer("a", tmp_path, store, clock=Clock(), metrics=m, sweeper=sweeping())
        assert a.run_once()
        assert read(a, b"deleted-since") is None
        assert read(a, b"fresh") is not None
        assert a.waiting_for == set()
        assert value(m, "evsync_objects_too_old_total", db="main", instance="dead") == 1
        lines = [r.getMessage() for r in caplog.records if "not merging" in r.getMessage()]
        assert len(lines) == 1 and old in lines[0] and "3.00 days old" in lines[0], lines
        assert a.stats.objects_too_old == 1

    def test_the_own_object_is_not_restored_into_a_moved_away_lmdb(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """The rejoin guard's remedy (a fresh LMDB restored from the bucket) does not merge
        the instance's own 3-day-old object, and startup does not wait for it."""
        put_object(store, "a", NOW - 3 * DAY, {b"deleted-since": b"v"})
        put_object(store, "b", NOW - DAY, {b"kept": b"v"})
        a = syncer("a", tmp_path, store, clock=Clock(), sweeper=sweeping())
        assert a.run_once()
        assert read(a, b"deleted-since") is None
        assert read(a, b"kept") is not None
        assert a.waiting_for == set()

    def test_skipped_once_and_logged_once_across_listings_and_hints(
        self, tmp_path: Path, store: MemoryStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Listings and hints naming the same too-old object again log and count nothing
        more."""
        m = Metrics()
        old = put_object(store, "dead", NOW - 3 * DAY, {b"k": b"v"})
        a = syncer("a", tmp_path, store, clock=Clock(), metrics=m, sweeper=sweeping())
        assert a.run_once()
        a.receiver.list_bucket(startup=False)
        a.queue.put(Hint("mqtt", name=old))
        a.step(a.queue.wait(0))
        assert read(a, b"k") is None
        assert value(m, "evsync_objects_too_old_total", db="main", instance="dead") == 1
        assert sum("not merging" in r.getMessage() for r in caplog.records) == 1

    def test_a_name_noted_while_young_is_not_merged_once_too_old(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """A name noted within the retention but still unmerged when it ages past it (a
        long outage, say) is not merged then either."""
        clock = Clock()
        name = put_object(store, "dead", NOW - DAY, {b"k": b"v"})
        a = syncer("a", tmp_path, store, clock=clock, sweeper=sweeping())
        a.receiver.note_name("dead", SnapshotName.parse(name))
        clock.now = NOW + 2 * DAY
        a.receiver.merge_pending(include_own=False, retry=False)
        assert read(a, b"k") is None

    def test_without_the_sweeper_old_objects_merge(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """With the sweeper off, age does not matter (nothing is ever swept)."""
        put_object(store, "dead", NOW - 300 * DAY, {b"k": b"v"})
        a = syncer("a", tmp_path, store, clock=Clock())
        assert a.run_once()
        assert read(a, b"k") is not None


class TestOnlyOnceSummary:
    """The line `sync --only-once` ends with counts every object it stored."""

    def test_lightning_stream_snapshots_count_as_stored(self) -> None:
        """A run that stored one .evs.zst object and one .pb.gz for Lightning Stream says
        it stored 2 objects, and their bytes (it said 0 objects beside the .pb.gz's
        bytes when only a .pb.gz was stored)."""
        from evsync.cli.sync import once_summary

        m = Metrics()
        m.objects_stored.labels("main").inc()
        m.ls_snapshots_stored.labels("main").inc()
        m.bytes_uploaded.labels("main").inc(300)
        line = once_summary(m, 0.5)
        assert "stored 2 object(s) (300 bytes)" in line, line


class TestStatusLagColumn:
    """`evsync status` shows a lag that fits its column."""

    def test_short_lags_in_ms_long_ones_as_an_age(self) -> None:
        """12 ms stays "12ms"; a lag of 1.8 days reads "1.8d" (it was 156884498ms, which
        broke the table)."""
        from evsync.cli.status import _lag

        assert _lag(0.012) == "12ms"
        assert _lag(1.8 * 86400) == "1.8d"
        assert _lag(None) == "-"


class TestStatusNamesTheInstance:
    """`evsync status` says so when the daemon that answered is another instance."""

    def test_another_instance_is_named_on_stderr(self) -> None:
        """The daemon at the address says it is `one`, the config is `two`'s: one note
        naming both and the variable to set; nothing for the config's own instance or
        a reply without an instance."""
        from evsync.cli.status import other_instance_note

        url = "http://127.0.0.1:8500/status"
        note = other_instance_note("two", {"instance": "one"}, url)
        assert note is not None
        assert "'one', not 'two'" in note and "EVSYNC_HTTP" in note and url in note
        assert other_instance_note("one", {"instance": "one"}, url) is None
        assert other_instance_note("one", {}, url) is None
