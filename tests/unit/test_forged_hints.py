"""Forged, foreign or stale notifications (issue 16 §4): what a hint for a name that
does not exist may cost a running syncer, with the in-memory store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from evsync.snapshot.name import SnapshotName, checkpoint_extra
from evsync.storage.memory import MemoryStore
from evsync.sync import Syncer
from evsync.sync.receiver import RELIST_MIN_SECONDS
from evsync.triggers.base import (
    IGNORED_GONE,
    IGNORED_UNLISTED,
    MAX_UNLISTED_INSTANCES,
    SOURCE_LISTING,
    SOURCE_MQTT,
    Batch,
    Hint,
    HintQueue,
)
from tests.unit.test_syncer import app_put, make_syncer, read, stored

T = 1_700_000_000_000_000_000


@pytest.fixture
def store() -> MemoryStore:
    """One in-memory bucket shared by the syncers of a test."""
    return MemoryStore()


def forged(instance: str, n: int = 0) -> SnapshotName:
    """A readable name no object carries."""
    return SnapshotName.build("main", instance, T + n)


def hint(syncer: Syncer, *names: SnapshotName, source: str = SOURCE_MQTT) -> None:
    """Hints through the syncer's queue, then one step on what it drained."""
    for name in names:
        syncer.queue.put(Hint(source, name=name.name))
    syncer.step(syncer.queue.wait(0))


def started(tmp_path: Path, store: MemoryStore) -> Syncer:
    """A syncer whose startup is done (an own object stored)."""
    a = make_syncer("a", tmp_path, store)
    app_put(a, b"k", b"v", 1000)
    assert a.run_once()
    return a


class TestHintsForMissingNames:
    """A name that does not exist costs one GET, and listings stay rate-limited."""

    def test_a_missing_name_costs_at_most_one_get(self, tmp_path: Path, store: MemoryStore) -> None:
        """The same forged hint five times: one GET (404), then the name is no news. It
        used to cost a GET and a listing every time."""
        a = started(tmp_path, store)
        gets = store.calls["open"]
        for _ in range(5):
            hint(a, forged("x"))
        assert store.calls["open"] - gets == 1
        assert a.queue.ignored_by_reason[IGNORED_GONE] == 4
        assert (
            a.metrics.registry.get_sample_value("evsync_objects_vanished_total", {"db": "main"})
            == 1
        )

    def test_listings_after_404s_are_rate_limited(self, tmp_path: Path, store: MemoryStore) -> None:
        """Twenty forged names in a row (each a GET and a 404) list the bucket at most
        once per RELIST_MIN_SECONDS; they used to list once each."""
        a = started(tmp_path, store)
        time.sleep(0.01)
        lists = store.calls["list"]
        t0 = time.monotonic()
        for n in range(20):
            hint(a, forged("x", n))
        allowed = 1 + int((time.monotonic() - t0) / RELIST_MIN_SECONDS)
        assert store.calls["list"] - lists <= allowed

    def test_only_once_still_lists_at_once(self, tmp_path: Path, store: MemoryStore) -> None:
        """``--only-once`` is not rate-limited: an object that vanishes is replaced by
        the older one a listing finds, within the run."""
        a = make_syncer("a", tmp_path, store)
        app_put(a, b"k", b"v1", 1000)
        a.run_once()
        b = make_syncer("b", tmp_path, store)
        b.receiver.note_name("a", forged("a", 10**18))  # newer than a's real object
        assert b.run_once()
        assert read(b, b"k") == (b"v1", 1000, False)

    def test_a_real_object_after_forged_names_still_merges(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """Forged hints for an instance cost nothing once its real object is announced."""
        a = started(tmp_path, store)
        b = make_syncer("b", tmp_path, store)
        app_put(b, b"theirs", b"b", 2000)
        b.run_once()
        hint(a, forged("b", 1))
        hint(a, stored(store, "b")[-1])
        assert read(a, b"theirs") == (b"b", 2000, False)


class TestForgedCheckpointNames:
    """A checkpoint is stepped over without a GET only once the bucket is known to hold
    it (DESIGN §7): a name from a hint alone moves no position."""

    def test_a_forged_checkpoint_named_far_ahead_moves_no_position(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """b merged a's newest object; a hint names a checkpoint of a stamped a day ahead
        whose point is that object: b asks the bucket (a HEAD, no GET), finds nothing, its
        position stays, and a's next delta is merged. The name alone used to move the
        position a day ahead, past every real object of a until then (never merged)."""
        a = started(tmp_path, store)
        b = make_syncer("b", tmp_path, store)
        app_put(b, b"theirs", b"b", 500)
        assert b.run_once()
        position = b.peers.instances["a"].merged
        assert position == stored(store, "a")[-1]
        day = 86_400 * 10**9
        fake = SnapshotName.build(
            "main", "a", time.time_ns() + day, extras=(checkpoint_extra(position.timestamp_ns),)
        )
        gets, heads = store.calls["open"], store.calls["head"]
        hint(b, fake)
        assert b.peers.instances["a"].merged == position
        assert b.peers.instances["a"].stored == position
        assert store.calls["open"] == gets and store.calls["head"] == heads + 1
        app_put(a, b"k", b"v2", 2000)
        a.step(Batch(local=True))
        delta = stored(store, "a")[-1]
        assert delta.is_delta
        hint(b, delta)
        assert read(b, b"k") == (b"v2", 2000, False)


class TestHintOnlyInstances:
    """Instances named only by hints are bounded in number, in /status and in metrics."""

    def test_forged_instances_leave_no_trace(self, tmp_path: Path, store: MemoryStore) -> None:
        """200 forged instances, each with a name stamped a day ahead (a clock-skew
        warning each): at most MAX_UNLISTED_INSTANCES reach the syncer, each costs one
        GET, and afterwards /status and the clock-skew series hold none of them. They
        used to stay in both for good."""
        a = started(tmp_path, store)
        gets = store.calls["open"]
        day = 86_400 * 10**9
        names = [SnapshotName.build("main", f"x{i}", time.time_ns() + day) for i in range(200)]
        hint(a, *names)
        assert store.calls["open"] - gets == MAX_UNLISTED_INSTANCES
        assert a.queue.ignored_by_reason[IGNORED_UNLISTED] == 200 - MAX_UNLISTED_INSTANCES
        assert set(a.status()["instances"]) == {"a"}  # type: ignore[arg-type]
        skew = [
            s
            for metric in a.metrics.registry.collect()
            if metric.name == "evsync_clock_skew_seconds"
            for s in metric.samples
        ]
        assert skew == []
        assert not [k for k in a.recorder._logged_once if k.startswith("skew-x")]

    def test_a_listed_instance_is_never_capped(self) -> None:
        """With every unlisted slot taken, a listing's hint for a new instance is still
        news, and so are later hints for it: the cap only holds back the unlisted."""
        queue = HintQueue("main", own_instance="a")
        for i in range(MAX_UNLISTED_INSTANCES):
            assert queue.put(Hint(SOURCE_MQTT, name=forged(f"x{i}").name))
        assert not queue.put(Hint(SOURCE_MQTT, name=forged("real").name))
        assert queue.put(Hint(SOURCE_LISTING, name=forged("real").name))
        assert queue.put(Hint(SOURCE_MQTT, name=forged("real", 1).name))

    def test_a_forgotten_instance_frees_its_slot(self) -> None:
        """An unlisted instance forgotten after its 404 makes room for another."""
        queue = HintQueue("main", own_instance="a")
        for i in range(MAX_UNLISTED_INSTANCES):
            queue.put(Hint(SOURCE_MQTT, name=forged(f"x{i}").name))
        queue.forget_instance("x0")
        assert queue.put(Hint(SOURCE_MQTT, name=forged("y").name))

    def test_the_syncers_listing_marks_instances_listed(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """An instance the syncer's own listing found is not counted as unlisted."""
        b = make_syncer("b", tmp_path, store)
        app_put(b, b"theirs", b"b", 2000)
        b.run_once()
        a = started(tmp_path, store)  # its startup listing names b
        for i in range(MAX_UNLISTED_INSTANCES):
            a.queue.put(Hint(SOURCE_MQTT, name=forged(f"x{i}").name))
        assert a.queue.put(Hint(SOURCE_MQTT, name=forged("b", 10**17).name))


class TestDroppedHintsAreShown:
    """What the bounds drop is counted where an operator looks."""

    def test_dropped_hints_in_status_and_metrics(self, tmp_path: Path, store: MemoryStore) -> None:
        """/status and evsync_hints_dropped_total count the hints dropped, by reason."""
        a = started(tmp_path, store)
        hint(a, forged("x"))
        hint(a, forged("x"))
        assert a.status()["hints"] == {  # type: ignore[comparison-overlap]
            "received": {SOURCE_MQTT: 2},
            "first": {SOURCE_MQTT: 1},
            "dropped": {IGNORED_GONE: 1},
        }
        a.metrics.add_state_collector(lambda: {"dbs": {"main": a.metrics_state()}})
        value = a.metrics.registry.get_sample_value(
            "evsync_hints_dropped_total", {"db": "main", "reason": IGNORED_GONE}
        )
        assert value == 1
