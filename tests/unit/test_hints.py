"""The hint queue (coalescing, counters, wake-ups) and the listing's newest-per-instance pick."""

from __future__ import annotations

import io
import threading
import time

from evsync.snapshot.name import SnapshotName
from evsync.storage.base import ObjectInfo
from evsync.storage.memory import MemoryStore
from evsync.triggers.base import (
    IGNORED_SUPERSEDED,
    MAX_REJECTED_NAMES,
    MAX_SUPERSEDED_NAMES,
    MAX_UNLISTED_INSTANCES,
    Batch,
    Hint,
    HintQueue,
)
from evsync.triggers.listing import Lister, newest_per_instance

T = 1_700_000_000_000_000_000


def name(instance: str, ts: int, db: str = "main", ext: str = "evs.zst") -> str:
    """An object name."""
    return SnapshotName.build(db, instance, ts, ext=ext).name


class TestLocalHints:
    """Local-change hints coalesce into one flag."""

    def test_many_local_hints_one_batch(self) -> None:
        """Many local hints give one batch with local=True and nothing remote."""
        q = HintQueue("main")
        results = [q.put(Hint("watcher", local=True)) for _ in range(50)]
        batch = q.wait(0)
        assert batch.local
        assert batch.remote == {}
        assert not batch.stop
        assert results == [True] + [False] * 49

    def test_drain_resets_local(self) -> None:
        """After a drain, the next batch is empty until a new hint arrives."""
        q = HintQueue("main")
        q.put(Hint("watcher", local=True))
        assert q.wait(0).local
        assert not q.wait(0).local
        assert q.put(Hint("poll", local=True))
        assert q.wait(0).local


class TestRemoteHints:
    """Remote hints keep the newest name per instance."""

    def test_newest_per_instance(self) -> None:
        """Of several names per instance, only the newest is in the batch."""
        q = HintQueue("main")
        for ts in (T + 5, T + 1, T + 9, T + 3):
            q.put(Hint("mqtt", name=name("a", ts)))
        q.put(Hint("mqtt", name=name("b", T + 2)))
        q.put(Hint("sqs", name=name("b", T + 1)))
        batch = q.wait(0)
        assert set(batch.remote) == {"a", "b"}
        assert batch.remote["a"].timestamp_ns == T + 9
        assert batch.remote["b"].timestamp_ns == T + 2
        assert not batch.local

    def test_superseded_names_stay_in_the_batch_oldest_first(self) -> None:
        """Names that a newer name of their instance replaced before the drain come with
        the batch, oldest first (links of a delta chain); the next batch is empty."""
        q = HintQueue("main")
        for ts in (T + 1, T + 2, T + 3):
            q.put(Hint("mqtt", name=name("a", ts)))
        q.put(Hint("mqtt", name=name("b", T + 5)))
        batch = q.wait(0)
        assert batch.remote["a"].timestamp_ns == T + 3
        assert [n.timestamp_ns for n in batch.superseded] == [T + 1, T + 2]
        assert q.wait(0).superseded == []

    def test_superseded_names_are_bounded_per_drain(self) -> None:
        """Past MAX_SUPERSEDED_NAMES per drain the older names are dropped and counted;
        the newest still goes through."""
        q = HintQueue("main")
        count = MAX_SUPERSEDED_NAMES + 6
        for i in range(count):
            q.put(Hint("mqtt", name=name("a", T + i)))
        batch = q.wait(0)
        assert batch.remote["a"].timestamp_ns == T + count - 1
        assert len(batch.superseded) == MAX_SUPERSEDED_NAMES
        assert q.ignored_by_reason[IGNORED_SUPERSEDED] == count - 1 - MAX_SUPERSEDED_NAMES

    def test_older_after_newer_not_first(self) -> None:
        """An older name after a newer one returns False and does not count as first."""
        q = HintQueue("main")
        assert q.put(Hint("mqtt", name=name("a", T + 10)))
        assert not q.put(Hint("listing", name=name("a", T + 5)))
        assert not q.put(Hint("sqs", name=name("a", T + 10)))
        assert q.first["mqtt"] == 1
        assert q.first["listing"] == 0
        assert q.first["sqs"] == 0
        assert q.wait(0).remote["a"].timestamp_ns == T + 10

    def test_old_name_after_drain_not_requeued(self) -> None:
        """A name no newer than one already seen is not queued again after a drain."""
        q = HintQueue("main")
        q.put(Hint("mqtt", name=name("a", T + 10)))
        q.wait(0)
        assert not q.put(Hint("listing", name=name("a", T + 10)))
        assert not q.put(Hint("listing", name=name("a", T + 1)))
        assert q.wait(0).remote == {}
        assert q.put(Hint("listing", name=name("a", T + 11)))

    def test_forget_instance(self) -> None:
        """After forget_instance, an older name of that instance counts as new again."""
        q = HintQueue("main")
        q.put(Hint("mqtt", name=name("a", T + 10)))
        q.wait(0)
        q.forget_instance("a")
        assert q.put(Hint("listing", name=name("a", T + 5)))
        assert q.wait(0).remote["a"].timestamp_ns == T + 5

    def test_local_and_remote_in_one_batch(self) -> None:
        """Local and remote hints queued together come out in one batch."""
        q = HintQueue("main")
        q.put(Hint("watcher", local=True))
        q.put(Hint("mqtt", name=name("a", T)))
        batch = q.wait(0)
        assert batch.local
        assert list(batch.remote) == ["a"]


class TestIgnored:
    """Hints that are not for this db's evsync objects are ignored and counted."""

    def test_ignored_hints(self) -> None:
        """Other dbs, foreign extensions, unparseable and missing names are ignored."""
        q = HintQueue("main")
        bad = [
            name("a", T, db="other"),
            name("a", T, ext="pb.xz"),
            "not-a-snapshot.txt",
            "main__a__garbage__GX.evs.zst",
            "",
        ]
        for n in bad:
            assert not q.put(Hint("mqtt", name=n))
        assert not q.put(Hint("sqs"))
        assert q.ignored["mqtt"] == len(bad)
        assert q.ignored["sqs"] == 1
        assert sum(q.first.values()) == 0
        assert q.wait(0) == Batch()

    def test_ignored_do_not_block_real_hints(self) -> None:
        """A good name after ignored ones is queued normally."""
        q = HintQueue("main")
        q.put(Hint("mqtt", name=name("a", T + 100, db="other")))
        assert q.put(Hint("mqtt", name=name("a", T)))
        assert q.ignored["mqtt"] == 1
        assert q.wait(0).remote["a"].timestamp_ns == T


class TestOwnEchoes:
    """Hints about this instance's own uploads are not news."""

    def test_own_objects_are_counted_apart(self) -> None:
        """An echo of an own upload neither wakes the syncer nor counts as first."""
        queue = HintQueue("main", own_instance="me")
        assert queue.put(Hint("mqtt", name=name("me", 1))) is False
        assert queue.own_echoes["mqtt"] == 1
        assert queue.first["mqtt"] == 0
        assert queue.wait(0).remote == {}
        assert queue.put(Hint("mqtt", name=name("peer", 1))) is True


class TestCounters:
    """received and first are counted per source."""

    def test_received_and_first_per_source(self) -> None:
        """Every hint counts in received; only news counts in first."""
        q = HintQueue("main")
        q.put(Hint("watcher", local=True))
        q.put(Hint("poll", local=True))
        q.put(Hint("mqtt", name=name("a", T + 1)))
        q.put(Hint("listing", name=name("a", T + 1)))
        q.put(Hint("listing", name=name("b", T + 1)))
        q.put(Hint("mqtt", name="junk"))
        assert dict(q.received) == {"watcher": 1, "poll": 1, "mqtt": 2, "listing": 2}
        assert dict(q.first) == {"watcher": 1, "mqtt": 1, "listing": 1}
        assert dict(q.ignored) == {"mqtt": 1}


class TestWaiting:
    """wait() blocks until a hint, a timeout or stop."""

    def test_timeout_gives_empty_batch(self) -> None:
        """wait(timeout) with nothing queued returns an empty batch after about the timeout."""
        q = HintQueue("main")
        start = time.monotonic()
        batch = q.wait(0.05)
        elapsed = time.monotonic() - start
        assert batch == Batch()
        assert elapsed >= 0.04

    def test_queued_hint_returns_at_once(self) -> None:
        """wait() returns immediately when something is already queued."""
        q = HintQueue("main")
        q.put(Hint("watcher", local=True))
        start = time.monotonic()
        assert q.wait(10).local
        assert time.monotonic() - start < 1

    def test_hint_wakes_waiter(self) -> None:
        """A hint put from another thread wakes a waiter long before its timeout."""
        q = HintQueue("main")
        result: list[Batch] = []
        waiter = threading.Thread(target=lambda: result.append(q.wait(10)))
        waiter.start()
        time.sleep(0.02)
        q.put(Hint("mqtt", name=name("a", T)))
        waiter.join(2)
        assert not waiter.is_alive()
        assert list(result[0].remote) == ["a"]

    def test_stop_wakes_waiter(self) -> None:
        """stop() wakes a waiter, whose batch has stop=True."""
        q = HintQueue("main")
        result: list[Batch] = []
        waiter = threading.Thread(target=lambda: result.append(q.wait(10)))
        waiter.start()
        time.sleep(0.02)
        start = time.monotonic()
        q.stop()
        waiter.join(2)
        assert not waiter.is_alive()
        assert time.monotonic() - start < 2
        assert result[0].stop

    def test_stop_is_sticky(self) -> None:
        """After stop(), every later wait returns at once with stop=True."""
        q = HintQueue("main")
        q.stop()
        assert q.wait(10).stop
        start = time.monotonic()
        assert q.wait(10).stop
        assert time.monotonic() - start < 1


class TestConfirmations:
    """An announcement of an object merged from its companion only confirms it."""

    def test_a_confirming_announcement_does_not_wake_the_loop(self) -> None:
        """After merged_carried(name), the hint naming it is queued without a wake-up:
        wait() returns only at its timeout, with the name among the batch's
        confirmations (unparsed: the loop notes them after its merges), not its news."""
        q = HintQueue("main")
        n = name("a", T)
        q.merged_carried(n)
        assert q.put(Hint("mqtt", name=n))
        start = time.monotonic()
        batch = q.wait(0.2)
        assert time.monotonic() - start >= 0.15
        assert batch.confirmed == [n] and not batch.remote
        assert q.confirmations == 1

    def test_a_confirmation_rides_with_the_next_news(self) -> None:
        """A queued confirmation is drained with the next hint that wakes the loop."""
        q = HintQueue("main")
        q.merged_carried(name("a", T))
        q.put(Hint("mqtt", name=name("a", T)))
        q.put(Hint("mqtt", name=name("b", T + 1)))
        start = time.monotonic()
        batch = q.wait(10)
        assert time.monotonic() - start < 1
        assert set(batch.remote) == {"b"} and batch.confirmed == [name("a", T)]

    def test_other_names_still_wake_the_loop(self) -> None:
        """Only the merged name is a confirmation: a newer name of the same instance,
        or a carried name that was not merged (its bytes failed, say), wakes the loop."""
        q = HintQueue("main")
        q.merged_carried(name("a", T))
        q.put(Hint("mqtt", name=name("a", T + 1)))
        start = time.monotonic()
        assert list(q.wait(10).remote) == ["a"]
        assert time.monotonic() - start < 1
        assert q.confirmations == 0

    def test_a_name_confirms_once(self) -> None:
        """A name stops being a confirmation once its hint came: the instance forgotten
        and the name hinted again, it wakes the loop as news."""
        q = HintQueue("main")
        n = name("a", T)
        q.merged_carried(n)
        q.put(Hint("mqtt", name=n))
        q.wait(0)
        q.forget_instance("a")
        q.put(Hint("mqtt", name=n))
        start = time.monotonic()
        assert list(q.wait(10).remote) == ["a"]
        assert time.monotonic() - start < 1


class TestNewestPerInstance:
    """The listing picks each instance's newest evsync object of the db."""

    def test_newest_per_instance(self) -> None:
        """Each instance maps to its newest readable object (.evs.zst or LS's .pb.gz);
        foreign objects are skipped."""
        names = [
            name("a", T + 1),
            name("a", T + 3),
            name("a", T + 2),
            name("b", T + 1),
            name("b", T + 5, ext="pb.gz"),
            name("b", T + 9, ext="pb.xz"),
            name("c", T + 9, db="other"),
            "main__junk",
            ".main__a__tmp",
        ]
        objects = [ObjectInfo(n, 1) for n in names]
        newest = newest_per_instance(objects, "main")
        assert {i: n.timestamp_ns for i, n in newest.items()} == {"a": T + 3, "b": T + 5}

    def test_newest_across_seconds(self) -> None:
        """Newest is by time even when nanoseconds of the older name are larger."""
        objects = [
            ObjectInfo(name("a", T + 999_999_999), 1),
            ObjectInfo(name("a", T + 1_000_000_000), 1),
        ]
        assert newest_per_instance(objects, "main")["a"].timestamp_ns == T + 1_000_000_000

    def test_empty_listing(self) -> None:
        """No objects give no instances."""
        assert newest_per_instance([], "main") == {}

    def test_lister_hints_newest(self) -> None:
        """One listing puts one hint per instance, for its newest object."""
        store = MemoryStore()
        for n in (name("a", T + 1), name("a", T + 2), name("b", T + 1), name("x", T, db="z")):
            store.put_bytes(n, b"")
        q = HintQueue("main")
        lister = Lister(store, "main", q, interval=60)
        assert lister.list_once()
        assert q.received["listing"] == 2
        batch = q.wait(0)
        assert {i: n.timestamp_ns for i, n in batch.remote.items()} == {"a": T + 2, "b": T + 1}

    def test_lister_reports_failure(self) -> None:
        """A failing listing returns False, reports it, and queues nothing."""
        store = MemoryStore()
        store.fail = True
        results: list[bool] = []
        q = HintQueue("main")
        lister = Lister(
            store, "main", q, interval=60, on_result=lambda ok, _objs, _at: results.append(ok)
        )
        assert not lister.list_once()
        assert results == [False]
        assert q.wait(0) == Batch()

    def test_lister_reports_what_it_listed_and_when(self) -> None:
        """A listing reports the readable names it found and the monotonic time its LIST
        began, so the syncer can tell its own objects are still there."""
        store = MemoryStore()
        store.put_bytes("main__a__20260101-000000-000000000__GX.evs.zst", b"x")
        results: list[tuple[bool, list[str], float]] = []
        lister = Lister(
            store,
            "main",
            HintQueue("main"),
            interval=60,
            on_result=lambda ok, objs, at: results.append((ok, [o.name for o in objs], at)),
        )
        before = time.monotonic()
        assert lister.list_once()
        ((ok, names, at),) = results
        assert ok and names == ["main__a__20260101-000000-000000000__GX.evs.zst"]
        assert before <= at <= time.monotonic()


class TestRejectedNames:
    """A name the syncer rejected neither counts as news nor hides its instance."""

    def test_a_rejected_newest_lets_older_names_through(self) -> None:
        """After the junk newest of `a` is rejected, an older real name of `a` is news
        again, and the junk name never is."""
        q = HintQueue("main")
        junk = SnapshotName.parse(name("a", T + 100))
        assert q.put(Hint("listing", name=junk.name))
        q.wait(0)
        assert not q.put(Hint("mqtt", name=name("a", T + 2)))  # hidden below the junk
        q.reject(junk)
        assert q.put(Hint("mqtt", name=name("a", T + 3)))
        assert not q.put(Hint("listing", name=junk.name))

    def test_the_lister_hints_the_newest_usable_name(self) -> None:
        """A listing whose newest object of `a` was rejected hints `a`'s next newest."""
        store = MemoryStore()
        for ts in (T + 1, T + 2, T + 100):
            store.store(name("a", ts), io.BytesIO(b"x"))
        q = HintQueue("main")
        q.reject(SnapshotName.parse(name("a", T + 100)))
        assert Lister(store, "main", q, 60).list_once()
        assert q.wait(0).remote["a"].timestamp_ns == T + 2

    def test_rejected_names_are_bounded(self) -> None:
        """The queue remembers a bounded number of rejected names, oldest forgotten first."""
        q = HintQueue("main")
        for i in range(MAX_REJECTED_NAMES + 10):
            q.reject(SnapshotName.parse(name("a", T + i)))
        assert not q.is_rejected(name("a", T))
        assert q.is_rejected(name("a", T + MAX_REJECTED_NAMES + 9))


class TestUnlistedSlots:
    """Slots for instances known from hints only free up with every listing."""

    def test_a_listing_frees_the_slots_of_instances_it_did_not_name(self) -> None:
        """Forged instances fill every slot and their hints go nowhere (the rejoin guard
        dropped them, say); the next listing frees the slots, so a real new instance's
        hint is news again. (The slots used to stay taken for the life of the process.)"""
        q = HintQueue("main")
        for i in range(MAX_UNLISTED_INSTANCES):
            assert q.put(Hint("mqtt", name=name(f"forged{i}", T)))
        assert not q.put(Hint("mqtt", name=name("real", T)))
        store = MemoryStore()
        store.store(name("a", T), io.BytesIO(b"x"))
        assert Lister(store, "main", q, 60).list_once()
        assert q.put(Hint("mqtt", name=name("real", T)))
