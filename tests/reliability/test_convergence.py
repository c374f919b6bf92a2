"""Three instances under load and faults converge to the last-writer-wins result."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability.cluster import ChaosSettings, Cluster

SEED_VAR = "EVSYNC_CHAOS_SEED"


@pytest.mark.integration
@pytest.mark.reliability
class TestConvergenceUnderFaults:
    """The short run of the convergence checker (`make soak` runs it for longer)."""

    @pytest.mark.timeout(300)
    def test_no_acknowledged_write_is_lost(self, tmp_path: Path) -> None:
        """With three writers on overlapping keys, syncers killed at random moments and
        inside uploads and merges, S3 down and slow, the broker restarted and events
        dropped, duplicated and reordered: at every check each value has a valid header
        and no timestamp went back, and in the end all instances hold exactly the
        last-writer-wins result of every acknowledged operation."""
        settings = ChaosSettings(seed=int(os.environ.get(SEED_VAR, "1")))
        with Cluster(tmp_path, settings) as cluster:
            summary = cluster.run()
        report = summary.render()
        print(report)
        assert not summary.failures, report
        assert summary.converged_after is not None, report
        for kind in ("kill -9", "s3 outage", "s3 slow", "mqtt restart"):
            assert summary.faults[kind] >= 1, f"no {kind} was injected:\n{report}"
        for point in ("upload", "merge"):
            assert summary.faults[f"crash at {point}"] >= 1, f"no crash in {point}:\n{report}"
        assert summary.notifications["dropped"] and summary.notifications["duplicated"], report
        assert summary.operations > 100, report


@pytest.mark.integration
@pytest.mark.reliability
class TestMixedClusterUnderFaults:
    """Lightning Stream instances and evsync instances in one bucket (issue 17)."""

    @pytest.mark.timeout(300)
    def test_ls_and_evsync_instances_converge(self, tmp_path: Path) -> None:
        """Two evsync instances (writing .pb.gz beside their .evs.zst) and one that writes
        only .pb.gz as LS would, under the same random writes, kills, S3 outages and
        dropped events: no write is undone, and all three end equal to the
        last-writer-wins model, so LS sees evsync's writes and evsync sees LS's."""
        settings = ChaosSettings(
            seed=int(os.environ.get(SEED_VAR, "1")), seconds=15.0, ls_only_nodes=1
        )
        with Cluster(tmp_path, settings) as cluster:
            summary = cluster.run()
        report = summary.render()
        print(report)
        assert not summary.failures, report
        assert summary.converged_after is not None, report
        assert summary.faults["kill -9"] >= 1, report
        assert summary.operations > 50, report
