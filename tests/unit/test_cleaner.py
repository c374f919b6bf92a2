"""The snapshot cleaner's safety rules (DESIGN §11, LS's cleaner test) in simulated time."""

from __future__ import annotations

import io
import random
import threading
from typing import Any

import pytest

from evsync.cleaner import Cleaner
from evsync.config import CleanupConfig
from evsync.errors import StorageUnavailableError
from evsync.metrics import Metrics
from evsync.snapshot.name import SnapshotName
from evsync.storage.memory import MemoryStore

NS = 1_000_000_000
MIN = 60.0
HOUR = 3600.0
T0 = 1_800_000_000.0
CFG = CleanupConfig(
    enabled=True, interval=5 * MIN, must_keep_interval=10 * MIN, remove_old_instances_interval=HOUR
)


class Clock:
    """Simulated wall time in seconds."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def put(store: MemoryStore, instance: str, at: float, db: str = "main") -> str:
    """An object of ``instance`` written at ``at`` (seconds)."""
    name = SnapshotName.build(db, instance, int(at * NS)).name
    store.store(name, io.BytesIO(b"x"))
    return name


def names(store: MemoryStore) -> set[str]:
    return {o.name for o in store.list("")}


def deleted(m: Metrics, reason: str) -> float:
    value = m.registry.get_sample_value(
        "evsync_cleaner_deleted_objects_total", {"db": "main", "reason": reason}
    )
    return value or 0.0


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(store: MemoryStore, clock: Clock, metrics: Metrics | None = None) -> Cleaner:
    return Cleaner(store, "main", CFG, metrics=metrics or Metrics(), clock=clock)


class TestTimeline:
    """LS's TestWorker, step by step."""

    def test_first_seen_objects_survive_their_first_pass(
        self, store: MemoryStore, clock: Clock
    ) -> None:
        """A snapshot seen for the first time is never deleted in that pass, even when a
        newer one of the same instance exists."""
        old = put(store, "a", T0 - 2 * HOUR)
        new = put(store, "a", T0 - HOUR)
        result = make(store, clock).run_once()
        assert result.deleted == [] and names(store) == {old, new}

    def test_must_keep_protects_for_ten_minutes(self, store: MemoryStore, clock: Clock) -> None:
        """An object known for less than must_keep_interval stays; after it, an older object
        of an instance with a newer one is deleted."""
        c = make(store, clock)
        old = put(store, "a", T0 - 2 * HOUR)
        new = put(store, "a", T0 - HOUR)
        c.run_once()
        clock.now += 9 * MIN
        assert c.run_once().deleted == []
        clock.now += 2 * MIN
        assert c.run_once().deleted == [old]
        assert names(store) == {new}

    def test_a_new_snapshot_protects_the_previous_one_for_a_pass(
        self, store: MemoryStore, clock: Clock
    ) -> None:
        """When a new object appears, the previous newest is kept by the pass that first sees
        the new one (which does not count as the newest yet), and goes in the pass after."""
        c = make(store, clock)
        first = put(store, "a", T0)
        c.run_once()
        clock.now += 11 * MIN
        second = put(store, "a", clock.now)
        assert c.run_once().deleted == []
        assert names(store) == {first, second}
        clock.now += 5 * MIN
        assert c.run_once().deleted == [first]
        assert names(store) == {second}

    def test_newest_of_each_instance_is_kept(self, store: MemoryStore, clock: Clock) -> None:
        """Each instance keeps its newest object; only older ones of the same instance go."""
        c = make(store, clock)
        a1, a2 = put(store, "a", T0 - 3 * MIN), put(store, "a", T0 - 2 * MIN)
        b1 = put(store, "b", T0 - 5 * MIN)
        c.run_once()
        clock.now += 11 * MIN
        result = c.run_once()
        assert result.deleted == [a1]
        assert names(store) == {a2, b1}

    def test_stale_instance_goes_only_after_a_proven_merge(
        self, store: MemoryStore, clock: Clock
    ) -> None:
        """An instance silent for longer than remove_old_instances_interval loses its newest
        object only after set_committed shows it merged into an object of ours."""
        m = Metrics()
        c = make(store, clock, m)
        stale = put(store, "dead", T0 - 2 * HOUR)
        c.run_once()
        clock.now += 11 * MIN
        assert c.run_once().stale_deleted == []
        c.set_committed({"dead": int((T0 - 3 * HOUR) * NS)})  # an older object: not enough
        assert c.run_once().stale_deleted == []
        c.set_committed({"dead": int((T0 - 2 * HOUR) * NS)})
        assert c.run_once().stale_deleted == [stale]
        assert names(store) == set()
        assert deleted(m, "stale_instance") == 1

    def test_late_older_snapshot_of_committed_stale_instance(
        self, store: MemoryStore, clock: Clock
    ) -> None:
        """An older object of a committed stale instance that shows up late is deleted once
        it is past must_keep, as a superseded or stale object."""
        c = make(store, clock)
        stale = put(store, "dead", T0 - 2 * HOUR)
        c.set_committed({"dead": int((T0 - 2 * HOUR) * NS)})
        c.run_once()
        clock.now += 11 * MIN
        assert c.run_once().stale_deleted == [stale]
        late = put(store, "dead", T0 - 3 * HOUR)
        assert c.run_once().stale_deleted == []
        clock.now += 11 * MIN
        assert c.run_once().stale_deleted == [late]

    def test_other_dbs_and_foreign_names_are_untouched(
        self, store: MemoryStore, clock: Clock
    ) -> None:
        """Objects of another db (even one whose name starts like ours) and names that are
        not snapshots are never deleted."""
        c = make(store, clock)
        other = [
            put(store, "a", T0 - 3 * HOUR, db="main-2"),
            put(store, "a", T0 - HOUR, db="main-2"),
        ]
        store.store("main__garbage", io.BytesIO(b"x"))
        ours = [put(store, "a", T0 - 3 * HOUR), put(store, "a", T0 - HOUR)]
        c.run_once()
        clock.now += 11 * MIN
        c.run_once()
        assert names(store) == {*other, "main__garbage", ours[1]}


class TestFailures:
    """Storage failures are counted and never end the cleaner."""

    def test_a_failed_delete_is_counted_and_the_rest_proceeds(self, clock: Clock) -> None:
        """One object that cannot be deleted bumps cleaner_failures; the others go."""

        class Flaky(MemoryStore):
            def delete(self, name: str) -> None:
                if "__a__" in name:
                    raise StorageUnavailableError("simulated")
                super().delete(name)

        store, m = Flaky(), Metrics()
        a_old = put(store, "a", T0 - 2 * HOUR)
        put(store, "a", T0 - HOUR)
        b_old = put(store, "b", T0 - 2 * HOUR)
        put(store, "b", T0 - HOUR)
        c = make(store, clock, m)
        c.run_once()
        clock.now += 11 * MIN
        result = c.run_once()
        assert result.failed == [a_old] and result.deleted == [b_old]
        assert m.registry.get_sample_value("evsync_cleaner_failures_total", {"db": "main"}) == 1

    def test_listing_failure_raises_from_run_once_and_is_survived_by_run(
        self, clock: Clock
    ) -> None:
        """run_once propagates a failed listing; the run loop counts it and keeps going."""

        class Down(MemoryStore):
            calls = 0

            def list(self, prefix: str = "") -> Any:
                Down.calls += 1
                raise StorageUnavailableError("down")

        store, m = Down(), Metrics()
        c = Cleaner(store, "main", CleanupConfig(interval=0.001), metrics=m, clock=clock)
        with pytest.raises(StorageUnavailableError):
            c.run_once()
        stop = threading.Event()
        t = threading.Thread(target=c.run, args=(stop,))
        t.start()
        try:
            for _ in range(200):
                if Down.calls >= 4:
                    break
                threading.Event().wait(0.01)
        finally:
            stop.set()
            t.join(5)
        assert not t.is_alive()
        assert Down.calls >= 4
        failures = m.registry.get_sample_value("evsync_cleaner_failures_total", {"db": "main"})
        assert (failures or 0) >= 3


class TestConcurrencyAndJitter:
    """Several cleaners at once, and the randomised interval."""

    def test_two_cleaners_never_delete_an_instances_newest(
        self, store: MemoryStore, clock: Clock
    ) -> None:
        """Two instances cleaning one bucket in turns never remove any instance's newest
        object and never fail on each other's deletes."""
        c1, c2 = make(store, clock), make(store, clock)
        newest = {}
        for step in range(6):
            for inst in ("a", "b", "c"):
                newest[inst] = put(store, inst, clock.now)
            for c in (c1, c2):
                assert c.run_once().failed == []
            assert set(newest.values()) <= names(store), step
            clock.now += 6 * MIN
        for c in (c1, c2, c1, c2):
            clock.now += 11 * MIN
            c.run_once()
        assert names(store) == set(newest.values())

    def test_interval_is_jittered_within_twenty_percent(self, store: MemoryStore) -> None:
        """next_interval() stays within 0.8-1.2 x interval and actually varies."""
        c = Cleaner(store, "main", CFG, metrics=Metrics(), rng=random.Random(7))
        values = [c.next_interval() for _ in range(200)]
        assert all(0.8 * CFG.interval <= v <= 1.2 * CFG.interval for v in values)
        assert max(values) - min(values) > 0.2 * CFG.interval
