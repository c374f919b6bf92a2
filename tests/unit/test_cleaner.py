"""The snapshot cleaner's safety rules (DESIGN §11, LS ``cleaner_test.go``) in simulated time."""

from __future__ import annotations

import calendar
import io
import logging
import random
import threading
import time
from collections.abc import Callable

import pytest

from evsync.cleaner import JITTER_MAX, JITTER_MIN, Cleaner, CleanResult
from evsync.config import CleanupConfig
from evsync.errors import StorageUnavailableError
from evsync.metrics import Metrics
from evsync.snapshot.name import COPY_EXTRA, SnapshotName, checkpoint_extra, delta_extra
from evsync.storage.base import ObjectInfo
from evsync.storage.memory import MemoryStore

NS = 1_000_000_000
MINUTE = 60.0
HOUR = 3600.0
DAY = 24 * HOUR
DB = "test"
# LS TestWorker's settings; interval is unused in simulated time.
LS_CFG = CleanupConfig(
    enabled=True,
    interval=MINUTE,
    must_keep_interval=10 * MINUTE,
    remove_old_instances_interval=7 * DAY,
)
WAIT_LIMIT = 5.0  # seconds a threaded test may wait for the cleaner thread


def mt(text: str) -> float:
    """Seconds since the epoch of a UTC ``YYYY-MM-DD HH:MM:SS``, as LS's test helper."""
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S")))


def snap(db: str, instance: str, text: str) -> str:
    """The object name of ``instance``'s snapshot of ``db`` taken at ``text`` (UTC)."""
    return SnapshotName.build(db, instance, int(mt(text) * NS)).name


def add(store: MemoryStore, name: str) -> str:
    """Store a one-byte object under ``name`` and return the name."""
    store.store(name, io.BytesIO(b"x"))
    return name


def names(store: MemoryStore) -> list[str]:
    """Every object name in the store, sorted."""
    return [o.name for o in store.list("")]


def sample(metrics: Metrics, metric: str, **labels: str) -> float:
    """A metric sample's value, 0 when the series does not exist yet."""
    return metrics.registry.get_sample_value(metric, labels) or 0.0


def deleted_metric(metrics: Metrics, reason: str, db: str = DB) -> float:
    """evsync_cleaner_deleted_objects_total for ``db`` and ``reason``."""
    return sample(metrics, "evsync_cleaner_deleted_objects_total", db=db, reason=reason)


def failures_metric(metrics: Metrics, db: str = DB) -> float:
    """evsync_cleaner_failures_total for ``db``."""
    return sample(metrics, "evsync_cleaner_failures_total", db=db)


def wait_until(condition: Callable[[], bool]) -> bool:
    """Poll ``condition`` until it holds or WAIT_LIMIT passes (only for real threads)."""
    deadline = time.monotonic() + WAIT_LIMIT
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.002)
    return condition()


class Clock:
    """Simulated wall time in seconds, safe to read from several threads."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def set(self, text: str) -> None:
        """Jump to a UTC ``YYYY-MM-DD HH:MM:SS``."""
        self.now = mt(text)


# LS's initial bucket: "ignored"/"test-2" are other dbs, "old" is an instance silent for weeks.
IGNORED = [
    snap("ignored", "old", "2020-01-01 01:00:00"),
    snap("ignored", "old", "2020-01-01 01:01:00"),
    snap("test-2", "a", "2020-01-30 08:00:00"),
    snap("test-2", "a", "2020-01-30 08:01:00"),
]
A = [snap(DB, "a", f"2020-01-30 08:0{m}:00") for m in range(4)]
OLD = [snap(DB, "old", "2020-01-01 06:00:00"), snap(DB, "old", "2020-01-01 07:00:00")]
A_NEW = snap(DB, "a", "2020-01-30 10:10:50")
OLD_LATE = snap(DB, "old", "2020-01-01 05:00:00")


class Timeline:
    """LS TestWorker's bucket and cleaner; each ``step_*`` runs one of its passes."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.metrics = Metrics()
        self.clock = Clock(mt("2020-01-30 10:00:00"))
        self.cleaner = Cleaner(self.store, DB, LS_CFG, metrics=self.metrics, clock=self.clock)
        for name in [*IGNORED, *A, *OLD]:
            add(self.store, name)

    def run_at(self, text: str) -> CleanResult:
        """One pass at simulated time ``text``."""
        self.clock.set(text)
        return self.cleaner.run_once()

    def expect(self, *kept: str) -> None:
        """The bucket holds exactly the other dbs' objects plus ``kept``."""
        assert names(self.store) == sorted([*IGNORED, *kept])

    def step_first_pass(self) -> CleanResult:
        return self.run_at("2020-01-30 10:00:00")

    def step_one_minute_later(self) -> CleanResult:
        return self.run_at("2020-01-30 10:01:00")

    def step_after_must_keep(self) -> CleanResult:
        return self.run_at("2020-01-30 10:10:01")

    def step_new_snapshot_arrives(self) -> CleanResult:
        add(self.store, A_NEW)
        return self.run_at("2020-01-30 10:11:00")

    def step_pass_after_new_snapshot(self) -> CleanResult:
        return self.run_at("2020-01-30 10:12:00")

    def step_commit_stale(self) -> CleanResult:
        self.cleaner.set_committed({"old": int(mt("2020-01-01 07:00:00") * NS)})
        return self.run_at("2020-01-30 10:13:00")

    def step_late_older_arrives(self) -> CleanResult:
        add(self.store, OLD_LATE)
        return self.run_at("2020-01-30 10:20:00")

    def step_late_older_past_must_keep(self) -> CleanResult:
        return self.run_at("2020-01-30 10:30:01")

    def replay_until_commit(self) -> None:
        """Steps up to (not including) set_committed, as LS's test runs them."""
        self.step_first_pass()
        self.step_one_minute_later()
        self.step_after_must_keep()
        self.step_new_snapshot_arrives()
        self.step_pass_after_new_snapshot()


@pytest.fixture
def timeline() -> Timeline:
    return Timeline()


class TestLightningStreamTimeline:
    """LS's TestWorker, pass by pass, with the same times and the same expected buckets."""

    def test_first_pass_deletes_nothing(self, timeline: Timeline) -> None:
        """A snapshot seen for the first time is never deleted in that pass, however old."""
        result = timeline.step_first_pass()
        timeline.expect(*A, *OLD)
        assert result == CleanResult(listed=6, kept=6)

    def test_must_keep_protects_for_ten_minutes(self, timeline: Timeline) -> None:
        """A snapshot first seen no more than must_keep_interval ago is kept."""
        timeline.step_first_pass()
        result = timeline.step_one_minute_later()
        timeline.expect(*A, *OLD)
        assert result.deleted == [] and result.kept == 6

    def test_older_snapshots_go_once_must_keep_has_passed(self, timeline: Timeline) -> None:
        """Past must_keep, each instance keeps only its newest snapshot; the stale instance
        "old" keeps its newest too, because no merge of it is proven."""
        timeline.step_first_pass()
        timeline.step_one_minute_later()
        result = timeline.step_after_must_keep()
        timeline.expect(A[3], OLD[1])
        assert sorted(result.deleted) == sorted([*A[:3], OLD[0]])
        assert result.kept == 2 and result.stale_deleted == [] and result.failed == []
        assert deleted_metric(timeline.metrics, "newer_snapshot") == 4

    def test_a_new_snapshot_protects_the_previous_one_for_one_pass(
        self, timeline: Timeline
    ) -> None:
        """A snapshot seen for the first time does not count as its instance's newest, so the
        previous newest survives that pass and goes in the next one."""
        timeline.step_first_pass()
        timeline.step_one_minute_later()
        timeline.step_after_must_keep()
        assert timeline.step_new_snapshot_arrives().deleted == []
        timeline.expect(A[3], A_NEW, OLD[1])
        assert timeline.step_pass_after_new_snapshot().deleted == [A[3]]
        timeline.expect(A_NEW, OLD[1])

    def test_stale_instance_goes_only_after_set_committed(self, timeline: Timeline) -> None:
        """The newest snapshot of an instance silent longer than remove_old_instances_interval
        is deleted only once set_committed proves its merge into one of our objects."""
        timeline.replay_until_commit()
        timeline.expect(A_NEW, OLD[1])
        result = timeline.step_commit_stale()
        timeline.expect(A_NEW)
        assert result.stale_deleted == [OLD[1]] and result.deleted == []
        assert deleted_metric(timeline.metrics, "stale_instance") == 1

    def test_late_older_snapshot_of_committed_stale_instance(self, timeline: Timeline) -> None:
        """An older snapshot of a committed stale instance that appears late is kept for
        must_keep_interval, then deleted as stale."""
        timeline.replay_until_commit()
        timeline.step_commit_stale()
        assert timeline.step_late_older_arrives().stale_deleted == []
        timeline.expect(A_NEW, OLD_LATE)
        assert timeline.step_late_older_past_must_keep().stale_deleted == [OLD_LATE]
        timeline.expect(A_NEW)
        assert deleted_metric(timeline.metrics, "stale_instance") == 2

    def test_other_db_prefixes_are_left_alone(self, timeline: Timeline) -> None:
        """Objects of other dbs ("ignored", and "test-2" whose name starts like ours) survive
        the whole timeline, and no metric is counted for them."""
        timeline.replay_until_commit()
        timeline.step_commit_stale()
        timeline.step_late_older_arrives()
        timeline.step_late_older_past_must_keep()
        assert set(IGNORED) <= set(names(timeline.store))
        for db in ("ignored", "test-2"):
            assert deleted_metric(timeline.metrics, "newer_snapshot", db) == 0
            assert deleted_metric(timeline.metrics, "stale_instance", db) == 0

    def test_every_completed_pass_is_counted(self, timeline: Timeline) -> None:
        """cleaner_runs counts each pass whose listing succeeded."""
        timeline.replay_until_commit()
        assert sample(timeline.metrics, "evsync_cleaner_runs_total", db=DB) == 5


def make(
    store: MemoryStore,
    clock: Clock,
    metrics: Metrics | None = None,
    cfg: CleanupConfig = LS_CFG,
) -> Cleaner:
    """A cleaner of DB on ``store`` with simulated time."""
    return Cleaner(store, DB, cfg, metrics=metrics or Metrics(), clock=clock)


@pytest.fixture
def clock() -> Clock:
    return Clock(mt("2020-01-30 10:00:00"))


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


class TestNames:
    """Which names the cleaner considers, and what it remembers about them."""

    def test_invalid_names_are_never_touched(self, store: MemoryStore, clock: Clock) -> None:
        """Objects under the db prefix whose names do not parse as snapshots are never
        deleted and are not counted as listed."""
        invalid = [
            add(store, f"{DB}__garbage"),
            add(store, f"{DB}__a__not-a-timestamp__G.evs.zst"),
            add(store, f"{DB}__a__20200130-080000-000000000__X.evs.zst"),  # bad generation
            add(store, f"{DB}__a__20200130-080000-000000000__G"),  # no extension
            add(store, f"{DB}__a_b__20200130-080000-000000000__G.evs.zst"),  # bad instance
        ]
        valid = [add(store, snap(DB, "a", "2020-01-30 08:00:00"))]
        cleaner = make(store, clock)
        for _ in range(3):
            result = cleaner.run_once()
            clock.now += DAY
        assert names(store) == sorted([*invalid, *valid])
        assert result.listed == 1

    def test_a_rejected_name_never_supersedes_its_instance(
        self, store: MemoryStore, clock: Clock
    ) -> None:
        """A junk object the syncer rejected, named far ahead as `a`'s newest, is neither
        deleted nor taken as `a`'s newest: `a`'s real newest object stays."""
        junk = add(store, snap(DB, "a", "2099-12-01 00:00:00"))
        real = [add(store, snap(DB, "a", f"2020-01-30 0{h}:00:00")) for h in (7, 8)]
        cleaner = Cleaner(
            store, DB, LS_CFG, metrics=Metrics(), clock=clock, rejected={junk}.__contains__
        )
        for _ in range(3):
            cleaner.run_once()
            clock.now += DAY
        assert names(store) == sorted([junk, real[1]])

    def test_other_dbs_are_skipped_even_if_the_listing_is_loose(self, clock: Clock) -> None:
        """Names of another db are never deleted even by a backend that ignores the prefix."""

        class LooseListingStore(MemoryStore):
            def list(self, prefix: str = "") -> list[ObjectInfo]:
                return super().list("")

        store = LooseListingStore()
        other = [add(store, snap("other", "a", f"2020-01-30 0{h}:00:00")) for h in (7, 8)]
        cleaner = make(store, clock)
        cleaner.run_once()
        clock.now += 11 * MINUTE
        assert cleaner.run_once() == CleanResult()
        assert names(store) == other

    def test_must_keep_boundary_is_inclusive(self, store: MemoryStore, clock: Clock) -> None:
        """A snapshot first seen exactly must_keep_interval ago is still kept; one second
        later it may go."""
        older = add(store, snap(DB, "a", "2020-01-30 08:00:00"))
        add(store, snap(DB, "a", "2020-01-30 09:00:00"))
        cleaner = make(store, clock)
        cleaner.run_once()
        clock.now += LS_CFG.must_keep_interval
        assert cleaner.run_once().deleted == []
        clock.now += 1
        assert cleaner.run_once().deleted == [older]

    def test_a_name_that_disappears_is_forgotten(self, store: MemoryStore, clock: Clock) -> None:
        """When a name leaves the listing its first-seen time is dropped, so if it comes
        back it is new again and survives its next first pass."""
        older = add(store, snap(DB, "a", "2020-01-30 08:00:00"))
        add(store, snap(DB, "a", "2020-01-30 09:00:00"))
        cleaner = make(store, clock)
        cleaner.run_once()
        store.delete(older)  # e.g. another instance's cleaner
        clock.now += 11 * MINUTE
        cleaner.run_once()
        add(store, older)  # e.g. replication delivers it again
        clock.now += 11 * MINUTE
        assert cleaner.run_once().deleted == []
        assert older in names(store)

    def test_snapshots_are_ordered_by_timestamp_not_by_name(
        self, store: MemoryStore, clock: Clock
    ) -> None:
        """Per instance, the newest by name timestamp is kept whatever the name's suffix
        (an LS .pb.gz next to an evsync .evs.zst)."""
        ls_newer = SnapshotName.build(DB, "a", int(mt("2020-01-30 09:00:00") * NS), ext="pb.gz")
        add(store, ls_newer.name)
        ours_older = add(store, snap(DB, "a", "2020-01-30 08:00:00"))
        cleaner = make(store, clock)
        cleaner.run_once()
        clock.now += 11 * MINUTE
        assert cleaner.run_once().deleted == [ours_older]
        assert names(store) == [ls_newer.name]


def ls_snap(instance: str, text: str, *, copy: bool = False) -> str:
    """A .pb.gz name of ``instance`` at ``text``; ``copy``: evsync's marked copy."""
    extras = (COPY_EXTRA,) if copy else ()
    return SnapshotName.build(DB, instance, int(mt(text) * NS), extras=extras, ext="pb.gz").name


class TestBothFormats:
    """An instance writing .evs.zst and .pb.gz keeps both its chain and its newest
    .pb.gz; one that went back to LS loses its stale chain (issue 17)."""

    def test_chain_and_newest_copy_both_kept(self, store: MemoryStore, clock: Clock) -> None:
        """The copies are newer than the chain (they are coalesced after the deltas), but
        the chain evsync peers follow stays; only older copies go, as LS would delete."""
        full = add(store, snap(DB, "a", "2020-01-30 08:00:00"))
        base = int(mt("2020-01-30 08:00:00") * NS)
        delta = add(store, SnapshotName.build(
            DB, "a", int(mt("2020-01-30 08:30:00") * NS), extras=(delta_extra(base),)).name)
        old_copy = add(store, ls_snap("a", "2020-01-30 08:00:01", copy=True))
        new_copy = add(store, ls_snap("a", "2020-01-30 08:30:01", copy=True))
        cleaner = make(store, clock)
        cleaner.run_once()
        clock.now += 11 * MINUTE
        assert cleaner.run_once().deleted == [old_copy]
        assert names(store) == sorted([full, delta, new_copy])

    def test_an_older_chain_goes_once_a_newer_full_object_is_in(
        self, store: MemoryStore, clock: Clock
    ) -> None:
        """Within the .evs.zst group the usual rule holds: a newer full object supersedes
        the chain before it, whatever the copies."""
        old_full = add(store, snap(DB, "a", "2020-01-30 08:00:00"))
        new_full = add(store, snap(DB, "a", "2020-01-30 08:30:00"))
        copy = add(store, ls_snap("a", "2020-01-30 08:30:01", copy=True))
        cleaner = make(store, clock)
        cleaner.run_once()
        clock.now += 11 * MINUTE
        assert cleaner.run_once().deleted == [old_full]
        assert names(store) == sorted([new_full, copy])

    def test_back_to_ls_the_chain_is_superseded(self, store: MemoryStore, clock: Clock) -> None:
        """An instance rolled back to LS writes unmarked .pb.gz newer than its chain: the
        chain is no one's to follow any more and goes like any older object."""
        chain = add(store, snap(DB, "a", "2020-01-30 08:00:00"))
        copy = add(store, ls_snap("a", "2020-01-30 08:00:01", copy=True))
        ls_own = add(store, ls_snap("a", "2020-01-30 09:00:00"))
        cleaner = make(store, clock)
        cleaner.run_once()
        clock.now += 11 * MINUTE
        assert sorted(cleaner.run_once().deleted) == sorted([chain, copy])
        assert names(store) == [ls_own]

    def test_ls_instances_keep_their_newest(self, store: MemoryStore, clock: Clock) -> None:
        """An LS instance's objects: the newest stays, older ones go (LS's own rule)."""
        old = add(store, ls_snap("ls-1", "2020-01-30 08:00:00"))
        new = add(store, ls_snap("ls-1", "2020-01-30 08:00:01"))
        cleaner = make(store, clock)
        cleaner.run_once()
        clock.now += 11 * MINUTE
        assert cleaner.run_once().deleted == [old]
        assert names(store) == [new]


class TestStaleInstances:
    """The merge-proven rule for instances silent longer than remove_old_instances_interval."""

    def setup_stale(self, store: MemoryStore, clock: Clock, metrics: Metrics) -> Cleaner:
        """A stale instance "old" whose only object is past must_keep."""
        add(store, snap(DB, "old", "2020-01-01 07:00:00"))
        cleaner = make(store, clock, metrics)
        cleaner.run_once()
        clock.now += 11 * MINUTE
        return cleaner

    def test_an_older_committed_timestamp_does_not_allow_the_delete(
        self, store: MemoryStore, clock: Clock
    ) -> None:
        """set_committed with a timestamp older than the stale object's proves nothing about
        it, so the object stays."""
        metrics = Metrics()
        cleaner = self.setup_stale(store, clock, metrics)
        cleaner.set_committed({"old": int(mt("2020-01-01 06:59:59") * NS)})
        assert cleaner.run_once().stale_deleted == []
        assert names(store) == [snap(DB, "old", "2020-01-01 07:00:00")]
        assert deleted_metric(metrics, "stale_instance") == 0

    def test_a_commit_for_another_instance_does_not_allow_the_delete(
        self, store: MemoryStore, clock: Clock
    ) -> None:
        """A merge proof is per instance: another instance's commit does not count."""
        cleaner = self.setup_stale(store, clock, Metrics())
        cleaner.set_committed({"other": int(mt("2020-01-30 10:00:00") * NS)})
        assert cleaner.run_once().stale_deleted == []

    def test_a_newer_committed_timestamp_allows_the_delete(
        self, store: MemoryStore, clock: Clock
    ) -> None:
        """A committed timestamp newer than the stale object (we merged a later one that has
        since gone) proves its data is in ours too."""
        cleaner = self.setup_stale(store, clock, Metrics())
        cleaner.set_committed({"old": int(mt("2020-01-02 00:00:00") * NS)})
        assert cleaner.run_once().stale_deleted == [snap(DB, "old", "2020-01-01 07:00:00")]

    def test_a_later_older_commit_does_not_revoke_a_proof(
        self, store: MemoryStore, clock: Clock
    ) -> None:
        """Merged data stays merged: a later set_committed with a lower timestamp for the
        instance does not undo the earlier proof."""
        cleaner = self.setup_stale(store, clock, Metrics())
        cleaner.set_committed({"old": int(mt("2020-01-01 07:00:00") * NS)})
        cleaner.set_committed({"old": int(mt("2020-01-01 01:00:00") * NS)})
        assert len(cleaner.run_once().stale_deleted) == 1

    def test_a_recent_instance_is_never_stale(self, store: MemoryStore, clock: Clock) -> None:
        """An instance whose newest object is younger than remove_old_instances_interval keeps
        it even when its merge is proven."""
        newest = add(store, snap(DB, "a", "2020-01-25 10:00:00"))
        cleaner = make(store, clock)
        cleaner.set_committed({"a": int(mt("2020-01-30 10:00:00") * NS)})
        cleaner.run_once()
        clock.now += 11 * MINUTE
        result = cleaner.run_once()
        assert result.stale_deleted == [] and result.kept == 1
        assert names(store) == [newest]


class FlakyDeleteStore(MemoryStore):
    """A MemoryStore whose delete of one name fails as if the bucket refused it."""

    def __init__(self, refuse: str) -> None:
        super().__init__()
        self.refuse = refuse

    def delete(self, name: str) -> None:
        if name == self.refuse:
            raise StorageUnavailableError(f"simulated: cannot delete {name}")
        super().delete(name)


class TestFailures:
    """Storage failures are counted and logged, and never end the cleaner."""

    def test_a_failed_delete_is_counted_and_the_rest_proceeds(
        self, clock: Clock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A delete that raises StorageError is counted in cleaner_failures, logged once,
        reported in ``failed``, and the other deletes of the pass still happen."""
        a_old = snap(DB, "a", "2020-01-30 07:00:00")
        store, metrics = FlakyDeleteStore(refuse=a_old), Metrics()
        add(store, a_old)
        add(store, snap(DB, "a", "2020-01-30 08:00:00"))
        b_old = add(store, snap(DB, "b", "2020-01-30 07:00:00"))
        add(store, snap(DB, "b", "2020-01-30 08:00:00"))
        cleaner = make(store, clock, metrics)
        cleaner.run_once()
        clock.now += 11 * MINUTE
        with caplog.at_level(logging.WARNING, logger="evsync.cleaner"):
            result = cleaner.run_once()
        assert result.failed == [a_old] and result.deleted == [b_old]
        assert result.listed == result.kept + len(result.deleted) + len(result.failed)
        assert a_old in names(store) and b_old not in names(store)
        assert failures_metric(metrics) == 1
        assert deleted_metric(metrics, "newer_snapshot") == 1
        assert len(caplog.records) == 1 and a_old in caplog.records[0].getMessage()

    def test_a_failed_delete_is_retried_by_the_next_pass(self, clock: Clock) -> None:
        """An object whose delete failed stays a candidate and goes once the bucket allows."""
        a_old = snap(DB, "a", "2020-01-30 07:00:00")
        store = FlakyDeleteStore(refuse=a_old)
        add(store, a_old)
        add(store, snap(DB, "a", "2020-01-30 08:00:00"))
        cleaner = make(store, clock)
        cleaner.run_once()
        clock.now += 11 * MINUTE
        assert cleaner.run_once().failed == [a_old]
        store.refuse = ""
        clock.now += MINUTE
        assert cleaner.run_once().deleted == [a_old]

    def test_a_failed_listing_raises_from_run_once(self, store: MemoryStore, clock: Clock) -> None:
        """run_once propagates the StorageError of a failed listing and counts no pass."""
        metrics = Metrics()
        cleaner = make(store, clock, metrics)
        store.fail = True
        with pytest.raises(StorageUnavailableError):
            cleaner.run_once()
        assert sample(metrics, "evsync_cleaner_runs_total", db=DB) == 0

    def test_run_logs_and_counts_a_failed_listing_and_goes_on(
        self, store: MemoryStore, clock: Clock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """In the loop, each failed listing logs one line naming the db and the listing,
        bumps cleaner_failures, and the next pass runs normally once storage is back."""
        metrics = Metrics()
        cleaner = make(store, clock, metrics, CleanupConfig(interval=0.001))
        store.fail = True
        stop = threading.Event()
        thread = threading.Thread(target=cleaner.run, args=(stop,), daemon=True)
        with caplog.at_level(logging.WARNING, logger="evsync.cleaner"):
            thread.start()
            try:
                assert wait_until(lambda: failures_metric(metrics) >= 3)
                store.fail = False
                assert wait_until(lambda: sample(metrics, "evsync_cleaner_runs_total", db=DB) >= 1)
            finally:
                stop.set()
                thread.join(WAIT_LIMIT)
        assert not thread.is_alive()
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) >= 3
        assert all(f"db {DB}" in line and "listing" in line for line in lines)
        assert all("\n" not in line for line in lines)

    def test_run_returns_at_once_when_stop_is_already_set(
        self, store: MemoryStore, clock: Clock
    ) -> None:
        """A set stop_event ends run() without waiting an interval or listing."""
        cleaner = make(store, clock, cfg=CleanupConfig(interval=3600.0))
        stop = threading.Event()
        stop.set()
        started = time.monotonic()
        cleaner.run(stop)
        assert time.monotonic() - started < 1.0
        assert store.calls["list"] == 0


class NewestGuardStore(MemoryStore):
    """Records any delete of an object that is, at that moment, its instance's newest."""

    def __init__(self) -> None:
        super().__init__()
        self.violations: list[str] = []

    def delete(self, name: str) -> None:
        doomed = SnapshotName.parse(name)
        # The trailing separator keeps instance "a" from matching "a-b".
        mine = [SnapshotName.parse(o.name) for o in self.list(f"{DB}__{doomed.instance}__")]
        if mine and max(n.timestamp_ns for n in mine) == doomed.timestamp_ns:
            self.violations.append(name)
        super().delete(name)


class TestConcurrentCleaners:
    """Two processes' cleaners on one bucket, as when every instance cleans."""

    def test_cleaners_in_turns_keep_every_newest(self, clock: Clock) -> None:
        """Two cleaners taking turns while instances keep writing never delete an instance's
        newest object, never fail on each other's deletes, and end with one per instance."""
        store = NewestGuardStore()
        first, second = make(store, clock), make(store, clock)
        newest: dict[str, str] = {}
        for _ in range(6):
            for instance in ("a", "b", "c"):
                newest[instance] = add(
                    store, SnapshotName.build(DB, instance, int(clock.now * NS)).name
                )
            for cleaner in (first, second):
                assert cleaner.run_once().failed == []
            assert set(newest.values()) <= set(names(store))
            clock.now += 6 * MINUTE
        for cleaner in (first, second, first, second):
            clock.now += 11 * MINUTE
            cleaner.run_once()
        assert names(store) == sorted(newest.values())
        assert store.violations == []

    def test_cleaners_in_threads_keep_every_newest(self, clock: Clock) -> None:
        """Two cleaners running in threads while a writer adds objects never delete an
        instance's newest object and never raise."""
        store = NewestGuardStore()
        cleaners = [make(store, clock), make(store, clock)]
        errors: list[Exception] = []
        done = threading.Event()

        def clean(cleaner: Cleaner) -> None:
            try:
                while not done.is_set():
                    assert cleaner.run_once().failed == []
            except Exception as exc:  # noqa: BLE001 - reported by the main thread's assert
                errors.append(exc)

        threads = [threading.Thread(target=clean, args=(c,), daemon=True) for c in cleaners]
        for thread in threads:
            thread.start()
        try:
            for step in range(200):
                clock.now += MINUTE  # simulated: must_keep passes every 10 steps
                add(store, SnapshotName.build(DB, "abc"[step % 3], int(clock.now * NS)).name)
                time.sleep(0.001)  # let the cleaners interleave with the writer
        finally:
            done.set()
            for thread in threads:
                thread.join(WAIT_LIMIT)
        assert errors == [] and store.violations == []
        assert {SnapshotName.parse(n).instance for n in names(store)} == {"a", "b", "c"}
        assert len(names(store)) < 200  # they did clean


class TestInterval:
    """The randomised wait between passes."""

    def test_next_interval_stays_within_the_jitter_bounds(self, store: MemoryStore) -> None:
        """next_interval() is always within 0.8-1.2 × interval, and it varies."""
        cfg = CleanupConfig(interval=300.0)
        cleaner = Cleaner(store, DB, cfg, metrics=Metrics(), rng=random.Random(7))
        values = [cleaner.next_interval() for _ in range(1000)]
        assert (JITTER_MIN, JITTER_MAX) == (0.8, 1.2)
        assert all(0.8 * cfg.interval <= v <= 1.2 * cfg.interval for v in values)
        assert max(values) - min(values) > 0.3 * cfg.interval


def dsnap(instance: str, text: str, base_text: str) -> str:
    """A delta of ``instance`` at ``text`` building on its object at ``base_text``."""
    base = delta_extra(int(mt(base_text) * NS))
    return SnapshotName.build(DB, instance, int(mt(text) * NS), extras=(base,)).name


class TestDeltaChains:
    """With deltas, the newest full object and the deltas after it are what a new instance
    needs (DESIGN §7): cleanup keeps them, and deletes everything older."""

    def test_the_chain_of_the_newest_full_object_is_kept(
        self, store: MemoryStore, clock: Clock
    ) -> None:
        """Older full objects and their deltas go; the newest full object and every delta
        after it stay, though only the newest object of the instance is 'the newest'."""
        old_full = add(store, snap(DB, "a", "2020-01-30 08:00:00"))
        old_delta = add(store, dsnap("a", "2020-01-30 08:01:00", "2020-01-30 08:00:00"))
        full = add(store, snap(DB, "a", "2020-01-30 08:02:00"))
        d1 = add(store, dsnap("a", "2020-01-30 08:03:00", "2020-01-30 08:02:00"))
        d2 = add(store, dsnap("a", "2020-01-30 08:04:00", "2020-01-30 08:03:00"))
        cleaner = make(store, clock)
        cleaner.run_once()
        clock.now += 11 * MINUTE
        result = cleaner.run_once()
        assert sorted(result.deleted) == sorted([old_full, old_delta])
        assert names(store) == sorted([full, d1, d2])

    def test_a_stale_instance_loses_its_whole_chain(
        self, store: MemoryStore, clock: Clock
    ) -> None:
        """Once a silent instance's newest object is proven merged, its full object and
        deltas all go: nothing of a dead chain is left behind."""
        full = add(store, snap(DB, "old", "2020-01-01 06:00:00"))
        delta = add(store, dsnap("old", "2020-01-01 07:00:00", "2020-01-01 06:00:00"))
        cleaner = make(store, clock)
        cleaner.run_once()
        clock.now += 11 * MINUTE
        cleaner.set_committed({"old": int(mt("2020-01-01 07:00:00") * NS)})
        result = cleaner.run_once()
        assert sorted(result.stale_deleted) == sorted([full, delta])
        assert names(store) == []


class TestCheckpoints:
    """A checkpoint (DESIGN §7) is the newest full object of its chain: the cleaner keeps it
    and everything named after it (the deltas after its point), and the older chain goes."""

    def test_the_checkpoint_and_the_deltas_after_its_point_are_kept(
        self, store: MemoryStore, clock: Clock
    ) -> None:
        """Chain F, D1, D2; a checkpoint began at D2 (so named right after it), D3 and D4
        were stored during its dump, D3 building on D2: F, D1 and D2 go, the checkpoint,
        D3 and D4 stay."""

        def ns(text: str) -> int:
            return int(mt(text) * NS)

        def delta(text: str, base: str) -> str:
            return SnapshotName.build(DB, "a", ns(text), extras=(delta_extra(ns(base)),)).name

        t_f, t1, t2 = "2020-01-30 08:00:00", "2020-01-30 08:00:01", "2020-01-30 08:00:02"
        t_c, t3, t4 = "2020-01-30 08:00:03", "2020-01-30 08:00:04", "2020-01-30 08:00:05"
        old = [
            add(store, snap(DB, "a", t_f)),
            add(store, delta(t1, t_f)),
            add(store, delta(t2, t1)),
        ]
        ckpt = SnapshotName.build(DB, "a", ns(t_c), extras=(checkpoint_extra(ns(t2)),)).name
        kept = [add(store, ckpt), add(store, delta(t3, t2)), add(store, delta(t4, t3))]
        cleaner = make(store, clock)
        cleaner.run_once()
        clock.now += 11 * MINUTE
        assert sorted(cleaner.run_once().deleted) == sorted(old)
        assert names(store) == sorted(kept)
