"""The recorder: one call per sync event moves stats, metrics, health and the log together."""

from __future__ import annotations

import logging

import pytest

from evsync.config import Config, LmdbConfig, MemoryOptions, StorageConfig
from evsync.errors import LmdbError, StorageUnavailableError
from evsync.lmdb.merge import MergeResult
from evsync.metrics import Metrics
from evsync.snapshot.name import SnapshotName
from evsync.sync.recorder import STATUS_REJECTED, Recorder

NAME = SnapshotName.build("main", "b", 1_800_000_000_000_000_000)


def recorder() -> Recorder:
    cfg = Config(
        instance="a",
        lmdbs={"main": LmdbConfig(name="main", path="/nonexistent")},
        storage=StorageConfig(type="memory", options=MemoryOptions()),
    )
    return Recorder("main", cfg, Metrics())


def sample(rec: Recorder, name: str, **labels: str) -> float:
    return rec.metrics.registry.get_sample_value(name, {"db": "main", **labels}) or 0.0


class TestEvents:
    """Each event updates every place that reports it."""

    def test_a_failed_store_is_counted_everywhere(self, caplog: pytest.LogCaptureFixture) -> None:
        """A store that fails for good flips the store health check, counts in the stats
        and the metric, and logs one error line naming the object."""
        rec = recorder()
        with caplog.at_level(logging.ERROR):
            rec.store_failed(NAME, StorageUnavailableError("s3 down"))
        assert rec.health.failing("store")
        assert rec.stats.store_failures == 1
        assert sample(rec, "evsync_store_failures_total") == 1
        assert [r.getMessage() for r in caplog.records] == [
            f"db main: could not store {NAME}: s3 down; the change stays pending"
        ]

    def test_a_rejected_object_is_counted_and_listed(self) -> None:
        """A rejected object counts in stats and per instance in the metric, and /status
        keeps the most recent names only."""
        rec = recorder()
        for _ in range(STATUS_REJECTED + 5):
            rec.rejected("b", NAME, "bad checksum")
        assert rec.stats.objects_rejected == STATUS_REJECTED + 5
        assert sample(rec, "evsync_objects_rejected_total", instance="b") == STATUS_REJECTED + 5
        assert len(rec.stats.rejected) == STATUS_REJECTED

    def test_a_fetch_after_failures_recovers_health_and_says_so(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Failed fetches log one warning per streak; the next fetch counts its bytes and
        logs "works again" once; the load check clears when the object is merged."""
        rec = recorder()
        with caplog.at_level(logging.INFO, logger="evsync.sync"):
            rec.fetch_failed("b", NAME, StorageUnavailableError("timeout"))
            rec.fetch_failed("b", NAME, StorageUnavailableError("timeout"))
            assert rec.health.failing("load")
            rec.fetched("b", 100)
            rec.fetched("b", 50)
            assert rec.health.failing("load")
            rec.merged("b", NAME, MergeResult(entries=1), 0.001, 0.01, own=False)
        lines = [r.getMessage() for r in caplog.records]
        assert lines[:2] == [
            f"db main: cannot fetch {NAME}: timeout",
            "db main: loading objects of b works again",
        ]
        assert lines[2].startswith(f"db main: merged {NAME}")
        assert not rec.health.failing("load")
        assert rec.stats.load_failures == 2
        assert rec.stats.bytes_down == 150
        assert sample(rec, "evsync_downloaded_bytes_total") == 150

    def test_a_failing_merge_keeps_the_load_check_failing(self) -> None:
        """A merge that fails (a full disk, say) counts against the load check and in
        evsync_merge_failures_total; fetches that work meanwhile do not clear it."""
        rec = recorder()
        for _ in range(3):
            rec.fetched("b", 10)
            rec.merge_failed("b", NAME, LmdbError("lmdb main: mdb_txn_commit: No space left"))
        assert rec.health.failing("load")
        assert sample(rec, "evsync_merge_failures_total") == 3
        rec.fetched("b", 10)
        rec.merged("b", NAME, MergeResult(entries=1), 0.001, 0.01, own=False)
        assert not rec.health.failing("load")

    def test_a_failing_dump_counts_against_the_store_check(self) -> None:
        """A dump that fails counts against the store check and in
        evsync_dump_failures_total, naming the cause; a later store clears it."""
        rec = recorder()
        rec.dump_failed(LmdbError("lmdb main: DBI 'records' key b'k': no header"))
        assert rec.health.failing("store")
        assert "DBI 'records' key b'k'" in rec.health.snapshot()["store"]["last_error"]
        assert sample(rec, "evsync_dump_failures_total") == 1
