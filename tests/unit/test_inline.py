"""Deltas carried inside MQTT notifications (issue 18 §2): the companion message, the
queue's store of carried objects, and the receiver's rules, with real LMDB files and
the in-memory store."""

from __future__ import annotations

import binascii
import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from paho.mqtt.client import topic_matches_sub

from evsync.config import MqttConfig, load_config_text
from evsync.config.schema import DEFAULT_MQTT_INLINE_MAX_BYTES, MAX_MQTT_INLINE_BYTES
from evsync.errors import ConfigError, LmdbError, PermanentLmdbError
from evsync.metrics import Metrics
from evsync.snapshot.name import SnapshotName, checkpoint_extra, delta_extra
from evsync.storage.memory import MemoryStore
from evsync.sync import Syncer
from evsync.sync import receiver as receiver_mod
from evsync.sync.state import Peers
from evsync.triggers.base import Batch, Hint, HintQueue
from evsync.triggers.carried import CarriedObjects
from evsync.triggers.mqtt import MqttSource, stale_subscriptions, subscriptions
from evsync.triggers.s3events import (
    MAX_MESSAGE_BYTES,
    MalformedInlineError,
    inline_companion,
    parse_announcement,
    parse_message,
)
from tests.unit.test_syncer import app_put, fill, make_syncer, read, stored

NS = 1_000_000_000
INLINE = 64 << 10


def companion(data: bytes = b"object bytes", key: str = "main__a__x.evs.zst") -> bytes:
    return inline_companion("bkt", key, data, db="main", instance="a", origin="s3://bkt/")


def sample(syncer: Syncer, result: str) -> float:
    value = syncer.metrics.registry.get_sample_value(
        "evsync_inline_objects_total", {"db": "main", "result": result}
    )
    return value or 0.0


class TestCompanionMessage:
    """The message that carries a small object: S3-event-shaped, read back exactly."""

    def test_round_trip(self) -> None:
        """What inline_companion writes, parse_announcement hands back byte for byte."""
        data = bytes(range(256)) * 3
        events, obj = parse_announcement(companion(data), INLINE)
        assert events == []
        assert obj is not None
        assert (obj.data, obj.key, obj.bucket, obj.db, obj.instance, obj.origin) == (
            data, "main__a__x.evs.zst", "bkt", "main", "a", "s3://bkt/"
        )

    def test_readers_of_s3_events_find_no_record(self) -> None:
        """Older evsync (and any S3-event reader) sees a message without records."""
        assert parse_message(companion()) == []

    def test_own_echoes_are_not_decoded(self) -> None:
        """A companion of this instance (the broker's echo of our own) hands out nothing."""
        assert parse_announcement(companion(), INLINE, own_instance="a") == ([], None)
        assert parse_announcement(companion(), INLINE, own_instance="b")[1] is not None

    def test_inline_off_ignores_the_object(self) -> None:
        """inline_max_bytes 0: the companion is the empty message it looks like."""
        assert parse_announcement(companion(), 0) == ([], None)

    def test_the_largest_allowed_object_fits_a_message(self) -> None:
        """The config's upper bound, base64-encoded with its envelope, stays under the
        parser's message cap, so every object a sender may inline is readable."""
        payload = inline_companion(
            "b" * 63, "p/" * 100 + "main__a__x.evs.zst", b"\xff" * MAX_MQTT_INLINE_BYTES,
            db="main", instance="a" * 64, origin="s3://" + "b" * 63 + "/" + "p/" * 100,
        )
        assert len(payload) < MAX_MESSAGE_BYTES
        _events, obj = parse_announcement(payload, MAX_MQTT_INLINE_BYTES)
        assert obj is not None and len(obj.data) == MAX_MQTT_INLINE_BYTES

    def test_base64_overhead_of_the_default_fits(self) -> None:
        """The default limit leaves room: 64 KiB in base64 is about a third of a message."""
        encoded = binascii.b2a_base64(b"\0" * DEFAULT_MQTT_INLINE_MAX_BYTES)
        assert len(encoded) < MAX_MESSAGE_BYTES / 2

    @pytest.mark.parametrize(
        ("mutate", "reason"),
        [
            (lambda m: m["inline"].update(data="***"), "is not base64"),
            (lambda m: m["inline"].update(size=3), "holds 12 bytes, its message says 3"),
            (lambda m: m["inline"].update(size="12"), "without an integer size"),
            (lambda m: m["inline"].pop("key"), "without db, instance, bucket, key or data"),
            (lambda m: m.update(inline=[1]), "without db, instance, bucket, key or data"),
            (lambda m: m["inline"].update(size=INLINE + 1), "a companion may carry"),
        ],
    )
    def test_unusable_objects_raise_a_one_line_reason(self, mutate: object, reason: str) -> None:
        """Each broken field is named; the db comes along for the metric."""
        message = json.loads(companion())
        mutate(message["evsync"])  # type: ignore[operator]
        with pytest.raises(MalformedInlineError, match=reason) as info:
            parse_announcement(json.dumps(message), INLINE)
        assert info.value.db == "main"
        assert "\n" not in str(info.value)


class TestCarriedObjects:
    """The bounded store of carried objects and the queue in front of it."""

    def test_bounded_by_count_and_bytes_oldest_first(self) -> None:
        """Past either bound the oldest objects go, and each one is counted unused."""
        dropped: list[int] = []
        store = CarriedObjects(max_objects=2, max_bytes=10)
        store.on_unused = dropped.append
        names = [SnapshotName.build("main", "a", (i + 1) * NS) for i in range(4)]
        assert store.add(names[0], b"1234")
        assert store.add(names[1], b"1234")
        assert store.add(names[2], b"1234")  # count bound: names[0] goes
        assert names[0].name not in store and len(store) == 2
        assert store.add(names[3], b"123456789")  # byte bound: names[1] and [2] go
        assert len(store) == 1 and sum(dropped) == 3
        assert not store.add(names[0], b"x" * 11)  # bigger than the whole store

    def test_bytes_are_handed_out_once(self) -> None:
        """A carried object is taken once; the next fetch of it is a GET."""
        store = CarriedObjects()
        name = SnapshotName.build("main", "a", NS)
        store.add(name, b"data")
        assert store.take(name) == b"data"
        assert store.take(name) is None

    def test_queue_takes_objects_of_known_instances_only(self) -> None:
        """Own objects, foreign dbs, rejected names and instances no hint or listing
        named are not held; a known instance's object is, and wakes the syncer."""
        queue = HintQueue("main", own_instance="b")
        name = SnapshotName.build("main", "a", NS)
        assert not queue.put_carried("mqtt", name.name, b"x")  # a not known yet
        queue.listed(["a"])
        assert not queue.put_carried("mqtt", SnapshotName.build("main", "b", NS).name, b"x")
        assert not queue.put_carried("mqtt", "other__a__20240101-000000-000000000__G.evs.zst",
                                     b"x")
        assert queue.put_carried("mqtt", name.name, b"x")
        assert queue.wait(0).carried == [name]

    def test_names_waiting_for_the_syncer_are_bounded(self) -> None:
        """A flood of companions while the syncer is busy keeps at most as many names
        waiting as the store holds objects, the newest."""
        queue = HintQueue("main")
        queue.listed(["a"])
        names = [SnapshotName.build("main", "a", (i + 1) * NS) for i in range(100)]
        for name in names:
            queue.put_carried("mqtt", name.name, b"x")
        assert queue.wait(0).carried == names[-queue.carried.max_objects :]

    def test_a_carried_name_leaves_the_announcement_news(self) -> None:
        """The announcement after the store still passes the queue: it tells the
        receiver the carried object is in the bucket."""
        queue = HintQueue("main")
        queue.listed(["a"])
        name = SnapshotName.build("main", "a", NS)
        queue.put_carried("mqtt", name.name, b"x")
        assert queue.put(Hint("mqtt", name=name.name))
        batch = queue.wait(0)
        assert batch.carried == [name] and batch.remote == {"a": name}

    def test_every_carried_name_reaches_the_batch(self) -> None:
        """Unlike hints, carried names are not coalesced to the newest per instance: a
        receiver may need each one to follow the chain without a GET."""
        queue = HintQueue("main")
        queue.listed(["a"])
        names = [SnapshotName.build("main", "a", (i + 1) * NS) for i in range(3)]
        for name in names:
            queue.put_carried("mqtt", name.name, b"x")
        assert queue.wait(0).carried == names


def mqtt_source(queues: dict[str, HintQueue], inline_max_bytes: int = INLINE) -> MqttSource:
    """An MqttSource of instance b on bucket bkt that never connects."""
    cfg = MqttConfig(url="mqtt://127.0.0.1:1", inline_max_bytes=inline_max_bytes)
    return MqttSource(cfg, "b", queues, bucket="bkt", origin="s3://bkt/", metrics=Metrics())


def message(payload: bytes) -> SimpleNamespace:
    """Something shaped like paho's MQTTMessage."""
    return SimpleNamespace(topic="evsync/main/a", payload=payload)


class TestMqttSourceCarried:
    """The MQTT thread's part: a companion's object to its db's queue, or a counted line."""

    NAME = SnapshotName.build("main", "a", NS).name

    def queues(self) -> dict[str, HintQueue]:
        queue = HintQueue("main", own_instance="b")
        queue.listed(["a"])
        return {"main": queue}

    def test_reaches_its_db_queue(self) -> None:
        """A companion of this bucket puts its bytes in the db's queue."""
        queues = self.queues()
        mqtt_source(queues)._on_message(None, None, message(companion(b"obj", self.NAME)))
        assert queues["main"].carried.take(SnapshotName.parse(self.NAME)) == b"obj"

    def test_another_bucket_is_ignored(self) -> None:
        """A companion of another bucket (or of one reached elsewhere) holds nothing."""
        queues = self.queues()
        src = mqtt_source(queues)
        other = inline_companion("bkt", self.NAME, b"obj", db="main", instance="a",
                                 origin="s3://elsewhere/")
        src._on_message(None, None, message(other))
        assert len(queues["main"].carried) == 0

    def test_off_holds_nothing(self) -> None:
        """inline_max_bytes 0 on the receiver: companions are ignored."""
        queues = self.queues()
        mqtt_source(queues, 0)._on_message(None, None, message(companion(b"obj", self.NAME)))
        assert len(queues["main"].carried) == 0

    def test_malformed_is_counted_and_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        """An unusable companion: one line naming what is wrong, the metric, no object."""
        queues = self.queues()
        src = mqtt_source(queues)
        payload = json.loads(companion(b"obj", self.NAME))
        payload["evsync"]["inline"]["size"] = 99
        src._on_message(None, None, message(json.dumps(payload).encode()))
        assert len(queues["main"].carried) == 0
        assert src.metrics is not None
        assert src.metrics.registry.get_sample_value(
            "evsync_inline_objects_total", {"db": "main", "result": "malformed"}
        ) == 1
        (line,) = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
        assert "holds 3 bytes, its message says 99" in line


def named(ts_s: int, base_s: int | None = None) -> SnapshotName:
    extras = () if base_s is None else (delta_extra(base_s * NS),)
    return SnapshotName.build("main", "a", ts_s * NS, extras=extras)


class TestProvisionalPosition:
    """Peers: a position reached through carried objects until the bucket confirms it."""

    def merged_carried(self) -> Peers:
        """Merged full 10 (fetched), then deltas 20 and 30 from their messages."""
        peers = Peers("b")
        peers.merged("a", named(10), 0)
        peers.merged("a", named(20, 10), 0, carried=True)
        peers.merged("a", named(30, 20), 0, carried=True)
        return peers

    def test_an_announcement_confirms(self) -> None:
        """The name of a carried object, seen again, is no news and confirms it and the
        ones before it."""
        peers = self.merged_carried()
        assert not peers.note("a", named(30, 20), own_done=True)
        st = peers.instances["a"]
        assert st.stored == named(30, 20) and not st.provisional
        assert peers.pending(include_own=False) == []

    def test_an_unmerged_name_inside_the_stretch_falls_back(self) -> None:
        """A full object named between the stored and the provisional position that was
        never merged (a restarted sender with its clock behind): the position falls back
        to the stored object and the new one is pending."""
        peers = self.merged_carried()
        restart = named(25)
        peers.note("a", restart, own_done=True)
        st = peers.instances["a"]
        assert st.merged == named(10) and not st.provisional
        assert peers.pending(include_own=False) == [("a", restart)]

    def test_names_before_the_stored_position_are_no_news(self) -> None:
        """Old names (before the stored object) change nothing, provisional or not."""
        peers = self.merged_carried()
        peers.note("a", named(5), own_done=True)
        assert peers.instances["a"].merged == named(30, 20)
        assert peers.pending(include_own=False) == []

    def test_fetched_positions_are_final(self) -> None:
        """Without carried merges, a name at or before the position is never news."""
        peers = Peers("b")
        peers.merged("a", named(10), 0)
        peers.merged("a", named(30, 10), 0)
        peers.note("a", named(25), own_done=True)
        assert peers.instances["a"].merged == named(30, 10)
        assert peers.pending(include_own=False) == []


def checkpoint(ts_s: int, point_s: int) -> SnapshotName:
    return SnapshotName.build("main", "a", ts_s * NS, extras=(checkpoint_extra(point_s * NS),))


class TestProvisionalRules:
    """Peers: what confirms a provisional position and what never does (reviewer
    findings A, B and D)."""

    def merged_carried(self) -> Peers:
        """Merged full 10 (fetched), then deltas 20, 30 and 40 from their messages."""
        peers = Peers("b")
        peers.merged("a", named(10), 0)
        for ts in (20, 30, 40):
            peers.merged("a", named(ts, ts - 10), 0, carried=True)
        return peers

    def test_a_checkpoint_inside_the_stretch_does_not_fall_back(self) -> None:
        """A checkpoint named just after its point (21, point 20), noted while the
        position (40) is past it and the stored one (10) before it, is no sign of a
        divergent sender: the position stays, nothing is pending again, and the stored
        checkpoint confirms the provisional names up to its point."""
        peers = self.merged_carried()
        assert not peers.note("a", checkpoint(21, 20), own_done=True)
        st = peers.instances["a"]
        assert st.merged == named(40, 30)
        assert st.stored == named(20, 10) and st.provisional == {
            named(30, 20).name, named(40, 30).name
        }
        assert peers.pending(include_own=False) == []

    def test_a_checkpoint_whose_point_is_not_merged_confirms_nothing(self) -> None:
        """A checkpoint at or below the position whose point is the stored one or older
        moves nothing: no fallback, no confirmation."""
        peers = self.merged_carried()
        assert not peers.note("a", checkpoint(11, 10), own_done=True)
        st = peers.instances["a"]
        assert st.merged == named(40, 30) and st.stored == named(10)
        assert len(st.provisional) == 3

    def test_an_announcement_before_the_merge_confirms_it(self) -> None:
        """A name announced (or listed) before its carried bytes are merged, in the same
        drain say, is in the bucket: the merge makes it the stored position."""
        peers = Peers("b")
        peers.merged("a", named(10), 0)
        peers.note("a", named(20, 10), own_done=True, carried=True)
        peers.note("a", named(20, 10), own_done=True)
        st = peers.merged("a", named(20, 10), 0, carried=True)
        assert st.stored == named(20, 10) and not st.provisional

    def test_a_carried_name_alone_stays_provisional(self) -> None:
        """Noted only from the notification that carried it, a merged name stays
        provisional."""
        peers = Peers("b")
        peers.merged("a", named(10), 0)
        peers.note("a", named(20, 10), own_done=True, carried=True)
        st = peers.merged("a", named(20, 10), 0, carried=True)
        assert st.stored == named(10) and st.provisional == {named(20, 10).name}

    def test_a_carried_name_never_confirms(self) -> None:
        """A carried name at or below the position (a redelivered companion) is no news
        and confirms nothing; it does not make the position fall back either."""
        peers = self.merged_carried()
        assert not peers.note("a", named(30, 20), own_done=True, carried=True)
        assert not peers.note("a", named(25), own_done=True, carried=True)
        st = peers.instances["a"]
        assert st.stored == named(10) and st.merged == named(40, 30)
        assert len(st.provisional) == 3


class TestConfig:
    """notify.mqtt.inline_max_bytes: a size, validated at load."""

    def load(self, extra: str) -> object:
        text = (
            "instance: a\nlmdbs: {main: {path: /tmp/x}}\nstorage: {type: memory}\n"
            "notify: {mqtt: {url: 'mqtt://localhost', publish: true" + extra + "}}\n"
        )
        cfg = load_config_text(text)
        assert cfg.notify.mqtt is not None
        return cfg.notify.mqtt.inline_max_bytes

    def test_default_and_values(self) -> None:
        """64 KiB by default; sizes and 0 (off) are taken."""
        assert self.load("") == DEFAULT_MQTT_INLINE_MAX_BYTES == 64 << 10
        assert self.load(", inline_max_bytes: 16KB") == 16 << 10
        assert self.load(", inline_max_bytes: 0") == 0

    def test_too_large_is_named(self) -> None:
        """A limit a message cannot carry is refused, naming the key and the bound."""
        with pytest.raises(ConfigError, match=r"notify\.mqtt\.inline_max_bytes: must be at "
                                              r"most 128KB"):
            self.load(", inline_max_bytes: 1MB")


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def no_relist_pause(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(receiver_mod, "RELIST_MIN_SECONDS", 0.0)
    yield


def wire(sender: Syncer, receiver: Syncer) -> list[str]:
    """The sender's small deltas go to the receiver's queue as MQTT would carry them;
    returns the names carried."""
    carried: list[str] = []

    def carry(_db: str, name: str, data: bytes) -> None:
        carried.append(name)
        receiver.queue.put_carried("mqtt", name, data)

    sender.sender.inline_max_bytes = INLINE
    sender.sender.on_encoded.append(carry)
    return carried


def fail_merge_once(
    monkeypatch: pytest.MonkeyPatch, syncer: Syncer, error: Exception
) -> list[int]:
    """The syncer's next merge raises ``error``, later ones merge; returns the calls."""
    real = syncer.receiver._apply
    calls: list[int] = []

    def failing_once(*args: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise error
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(syncer.receiver, "_apply", failing_once)
    return calls


def committed_delta(
    a: Syncer, store: MemoryStore, key: bytes, value: bytes, ts: int
) -> SnapshotName:
    """One record committed on A and A's step for it: the delta it stored."""
    app_put(a, key, value, ts)
    a.step(Batch(local=True))
    delta = stored(store, "a")[-1]
    assert delta.is_delta
    return delta


def started_pair(tmp_path: Path, store: MemoryStore) -> tuple[Syncer, Syncer]:
    """A with a full object stored, B having merged it, A's small deltas wired to B."""
    a = make_syncer("a", tmp_path, store)
    b = make_syncer("b", tmp_path, store)
    fill(a)
    app_put(a, b"k", b"v0", 1000)
    assert a.run_once()
    assert b.run_once()
    return a, b


class TestSenderInline:
    """Which objects the sender hands out before their store."""

    def test_only_deltas_within_the_limit(self, tmp_path: Path, store: MemoryStore) -> None:
        """Full objects never travel inline; a delta does, before its store; a delta over
        the limit does not."""
        a, b = started_pair(tmp_path, store)
        carried = wire(a, b)
        stores_before: list[int] = []
        a.sender.on_encoded.append(lambda *_: stores_before.append(store.calls["store"]))
        app_put(a, b"k", b"v1", 2000)
        a.step(Batch(local=True))
        delta = stored(store, "a")[-1]
        assert delta.is_delta and carried == [delta.name]
        assert stores_before == [store.calls["store"] - 1]  # handed out before the PUT
        a.sender.inline_max_bytes = 10
        app_put(a, b"k", b"v2", 3000)
        a.step(Batch(local=True))
        assert len(carried) == 1


class TestReceiverInline:
    """What a receiver does with carried objects (DESIGN §7)."""

    def test_merged_without_a_get_and_not_fetched_again(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """A carried delta is merged while the bucket is unreachable; its announcement
        and the listing afterwards cost no GET."""
        a, b = started_pair(tmp_path, store)
        wire(a, b)
        app_put(a, b"k", b"v1", 2000)
        a.step(Batch(local=True))
        delta = stored(store, "a")[-1]
        store.fail = True  # no GET can succeed
        b.step(b.queue.wait(0))
        assert read(b, b"k") == (b"v1", 2000, False)
        assert sample(b, "merged") == 1
        store.fail = False
        opens = store.calls["open"]
        b.step(Batch(remote={"a": delta}))
        b.receiver.list_bucket(startup=False)
        b.step(Batch())
        assert store.calls["open"] == opens
        assert b.instances["a"].stored == delta and not b.instances["a"].provisional

    def test_the_announcement_of_a_carried_merge_confirms_without_a_wake_up(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """Once a carried delta is merged, its announcement is queued as a confirmation
        (no wake-up of the loop, which would step for nothing); drained later, it
        confirms the position with no GET. Carried bytes that failed do not make their
        announcement a confirmation: it still wakes the loop to fetch the object."""
        a, b = started_pair(tmp_path, store)
        wire(a, b)
        delta = committed_delta(a, store, b"k", b"v1", 2000)
        b.step(b.queue.wait(0))
        assert b.instances["a"].provisional == {delta.name}
        assert b.queue.put(Hint("mqtt", name=delta.name))
        assert b.queue.confirmations == 1
        opens = store.calls["open"]
        b.step(b.queue.wait(0.05))
        assert store.calls["open"] == opens
        assert b.instances["a"].stored == delta and not b.instances["a"].provisional
        a.sender.on_encoded.clear()  # the next delta's bytes arrive broken instead
        bad = committed_delta(a, store, b"k", b"v2", 3000)
        good = store.open(bad.name).read()
        b.queue.put_carried("mqtt", bad.name, good[:-1] + bytes([good[-1] ^ 0xFF]))
        b.step(b.queue.wait(0))
        assert b.queue.put(Hint("mqtt", name=bad.name))
        assert b.queue.confirmations == 1  # news, not a confirmation

    def test_news_after_a_fallback_still_wakes_the_loop(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """A carried merge that the position then falls back from (a name between the
        stored position and it turned up, DESIGN §7) is no longer a confirmation: its
        announcement is news, wakes the loop at once and brings the object by GET."""
        a, b = started_pair(tmp_path, store)
        wire(a, b)
        x = committed_delta(a, store, b"k1", b"v1", 2000)
        b.step(b.queue.wait(0))
        assert b.instances["a"].provisional == {x.name}
        z = SnapshotName.build("main", "a", x.timestamp_ns - 1000)
        assert b.queue.put(Hint("mqtt", name=z.name))
        b.step(b.queue.wait(0))  # falls back; Z answers 404
        st = b.instances["a"]
        assert st.merged is not None and st.merged.name < x.name and not st.provisional
        assert b.queue.put(Hint("mqtt", name=x.name))
        start = time.monotonic()
        batch = b.queue.wait(3)
        assert time.monotonic() - start < 1
        opens = store.calls["open"]
        b.step(batch)
        assert store.calls["open"] > opens
        assert b.instances["a"].stored == x

    def test_a_merge_confirmed_at_once_leaves_nothing_to_confirm(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """A carried delta whose announcement came in before (or with) its merge is
        confirmed by that merge: the queue keeps no confirmation for it."""
        a, b = started_pair(tmp_path, store)
        wire(a, b)
        x = committed_delta(a, store, b"k1", b"v1", 2000)
        b.queue.put(Hint("mqtt", name=x.name))
        b.step(b.queue.wait(0))
        assert not b.instances["a"].provisional
        assert x.name not in b.queue._confirmable

    def test_a_run_of_carried_deltas_chains_without_a_get(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """Several carried deltas drained at once are merged in chain order from the
        messages alone (each name is noted, not only the newest)."""
        a, b = started_pair(tmp_path, store)
        wire(a, b)
        for i in range(3):
            app_put(a, b"k", b"v%d" % i, 2000 + i)
            a.step(Batch(local=True))
        opens = store.calls["open"]
        b.step(b.queue.wait(0))
        assert store.calls["open"] == opens
        assert read(b, b"k") == (b"v2", 2002, False)
        assert sample(b, "merged") == 3

    def test_unusable_carried_bytes_wait_for_the_bucket_copy(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """Carried bytes that fail verification (here the v2 entries frame, after the
        header frame passed) prove nothing about the bucket: they are dropped and
        counted invalid, with no GET (the companion precedes the PUT: a 404 would count
        the object gone), the position stays, and the object is neither marked bad nor
        gone; its announcement is still news and brings it from the bucket."""
        a, b = started_pair(tmp_path, store)
        base = stored(store, "a")[-1]
        app_put(a, b"k", b"v1", 2000)
        a.step(Batch(local=True))
        delta = stored(store, "a")[-1]
        good = store.open(delta.name).read()
        b.queue.put_carried("mqtt", delta.name, good[:-1] + bytes([good[-1] ^ 0xFF]))
        opens = store.calls["open"]
        b.step(b.queue.wait(0))
        assert store.calls["open"] == opens
        assert read(b, b"k") == (b"v0", 1000, False)
        assert sample(b, "invalid") == 1 and sample(b, "merged") == 0
        assert delta.name not in b.bad_objects
        assert b.instances["a"].merged == base
        assert b.queue.put(Hint("mqtt", name=delta.name))  # neither gone nor rejected
        b.step(b.queue.wait(0))
        assert store.calls["open"] == opens + 1
        assert read(b, b"k") == (b"v1", 2000, False)
        assert b.instances["a"].stored == delta and not b.instances["a"].provisional

    def test_unusable_carried_bytes_of_an_announced_object_are_fetched(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """When the announcement came in the same drain, the bucket holds the object:
        bad carried bytes are followed by one GET, and the bucket's copy is merged."""
        a, b = started_pair(tmp_path, store)
        app_put(a, b"k", b"v1", 2000)
        a.step(Batch(local=True))
        delta = stored(store, "a")[-1]
        good = store.open(delta.name).read()
        b.queue.put_carried("mqtt", delta.name, good[:-1] + bytes([good[-1] ^ 0xFF]))
        b.queue.put(Hint("mqtt", name=delta.name))
        opens = store.calls["open"]
        b.step(b.queue.wait(0))
        assert store.calls["open"] == opens + 1
        assert read(b, b"k") == (b"v1", 2000, False)
        assert sample(b, "invalid") == 1 and delta.name not in b.bad_objects
        assert b.instances["a"].stored == delta

    @pytest.mark.parametrize("error", [PermanentLmdbError, LmdbError])
    def test_carried_bytes_the_lmdb_refuses_are_not_fetched_early(
        self,
        tmp_path: Path,
        store: MemoryStore,
        monkeypatch: pytest.MonkeyPatch,
        error: type[Exception],
    ) -> None:
        """A merge of carried bytes that the LMDB refuses (for good, or for now) costs no
        GET before the announcement (the bytes are taken: a retry would GET a name not
        stored yet); the object is not marked bad, and its announcement brings it."""
        a, b = started_pair(tmp_path, store)
        wire(a, b)
        app_put(a, b"k", b"v1", 2000)
        a.step(Batch(local=True))
        delta = stored(store, "a")[-1]
        calls = fail_merge_once(monkeypatch, b, error("refused"))
        opens = store.calls["open"]
        b.step(b.queue.wait(0))
        b.receiver._load_backoff.clear()  # past the backoff: a retry may run
        b.step(Batch())
        assert store.calls["open"] == opens and len(calls) == 1
        assert delta.name not in b.bad_objects
        assert b.queue.put(Hint("mqtt", name=delta.name))
        b.step(b.queue.wait(0))
        assert store.calls["open"] == opens + 1
        assert read(b, b"k") == (b"v1", 2000, False)

    def test_an_announcement_in_the_same_drain_confirms(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """A syncer busy longer than one PUT drains the companion and its announcement
        together: the merge from the carried bytes is confirmed, so ``stored`` keeps up."""
        a, b = started_pair(tmp_path, store)
        wire(a, b)
        app_put(a, b"k", b"v1", 2000)
        a.step(Batch(local=True))
        delta = stored(store, "a")[-1]
        assert b.queue.put(Hint("mqtt", name=delta.name))
        opens = store.calls["open"]
        b.step(b.queue.wait(0))
        assert store.calls["open"] == opens and sample(b, "merged") == 1
        assert b.instances["a"].stored == delta and not b.instances["a"].provisional

    def test_a_redelivered_companion_confirms_nothing(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """A companion delivered again (QoS 1) after its bytes were merged is no news:
        its bytes are not held, and ``stored`` does not move to an object never known
        to be in the bucket."""
        a, b = started_pair(tmp_path, store)
        base = stored(store, "a")[-1]
        store.fail = True  # the PUT never happens
        carried = wire(a, b)
        app_put(a, b"k", b"v1", 2000)
        a.step(Batch(local=True))
        b.step(b.queue.wait(0))
        assert read(b, b"k") == (b"v1", 2000, False)
        (name,) = carried
        b.queue.put_carried("mqtt", name, b"again")
        b.step(b.queue.wait(0))
        st = b.instances["a"]
        assert st.stored == base and st.provisional == {name}
        assert len(b.queue.carried) == 0

    def test_a_checkpoint_announced_inside_the_stretch_costs_no_get(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """A checkpoint (named just after its point) announced while the position is
        provisional past it: no fallback, so nothing is fetched again, and the point is
        confirmed."""
        a, b = started_pair(tmp_path, store)
        base = stored(store, "a")[-1]
        carried = wire(a, b)
        for i in range(3):
            app_put(a, b"k", b"v%d" % i, 2000 + i)
            a.step(Batch(local=True))
        b.step(b.queue.wait(0))
        first, second, third = (SnapshotName.parse(n) for n in carried)
        st = b.instances["a"]
        assert st.stored == base and st.merged == third
        cp = SnapshotName.build(
            "main", "a", first.timestamp_ns + 1, extras=(checkpoint_extra(first.timestamp_ns),)
        )
        assert cp.is_checkpoint and first.name < cp.name < second.name
        opens = store.calls["open"]
        b.step(Batch(remote={"a": cp}))
        assert store.calls["open"] == opens
        assert st.merged == third and st.stored == first
        assert st.provisional == {second.name, third.name}

    def test_a_delta_whose_base_is_missing_takes_the_normal_plan(
        self, tmp_path: Path, store: MemoryStore, no_relist_pause: None
    ) -> None:
        """A carried delta on a base this receiver has not got: the base is found by a
        listing and fetched, the carried delta then merged from its message."""
        a, b = started_pair(tmp_path, store)
        app_put(a, b"k1", b"v", 2000)
        a.step(Batch(local=True))  # a delta b hears nothing of
        wire(a, b)
        app_put(a, b"k2", b"v", 3000)
        a.step(Batch(local=True))
        b.step(b.queue.wait(0))  # cannot chain: asks for a listing
        b.step(Batch())
        assert read(b, b"k1") == (b"v", 2000, False)
        assert read(b, b"k2") == (b"v", 3000, False)
        assert sample(b, "merged") == 1

    def test_a_store_that_fails_after_publishing(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """The delta's store fails after its message went out: the receiver has merged an
        object the bucket never holds; the sender's next attempt, a new delta on the same
        base, carries the change again and the receiver follows it."""
        a, b = started_pair(tmp_path, store)
        carried = wire(a, b)
        base = stored(store, "a")[-1]
        store.fail = True
        app_put(a, b"k", b"v1", 2000)
        a.step(Batch(local=True))
        b.step(b.queue.wait(0))
        assert read(b, b"k") == (b"v1", 2000, False)
        store.fail = False
        app_put(a, b"k2", b"v", 2500)
        while stored(store, "a")[-1] == base:
            a.step(Batch(local=True))  # after the backoff
        retry = stored(store, "a")[-1]
        assert retry.delta_base_ns == base.timestamp_ns and carried[0] != retry.name
        assert carried[0] not in [n.name for n in stored(store, "a")]
        b.step(b.queue.wait(0))
        assert read(b, b"k2") == (b"v", 2500, False)
        b.step(Batch(remote={"a": retry}))
        assert b.instances["a"].stored == retry and not b.instances["a"].provisional

    def test_a_restarted_sender_with_its_clock_behind(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """The sender dies after publishing a delta (never stored) and restarts with a
        clock behind it: its restart full object sorts below the receiver's position.
        That position was only provisional, so the receiver falls back to the stored
        one and merges the full object: the change committed after the publish, just
        before the crash, is not lost, and later deltas arrive too."""
        a, b = started_pair(tmp_path, store)
        carried = wire(a, b)
        store.fail = True  # the PUT never happens: the process died
        app_put(a, b"k1", b"published", 2000)
        a.step(Batch(local=True))
        (lost,) = carried
        b.step(b.queue.wait(0))
        assert read(b, b"k1") == (b"published", 2000, False)
        app_put(a, b"k2", b"after the publish", 2100)
        a.close()
        store.fail = False
        behind = SnapshotName.parse(lost).timestamp_ns - 5 * NS
        ticks = iter(range(behind, behind + NS, 1000))
        a2 = make_syncer("a", tmp_path, store, clock_ns=lambda: next(ticks))
        assert a2.run_once()
        restart = stored(store, "a")[-1]
        assert not restart.is_delta and restart.name < lost
        b.step(Batch(remote={"a": restart}))
        assert read(b, b"k2") == (b"after the publish", 2100, False)
        assert b.instances["a"].merged == restart and not b.instances["a"].provisional
        wire(a2, b)
        app_put(a2, b"k3", b"later", 2200)
        a2.step(Batch(local=True))
        b.step(b.queue.wait(0))
        assert read(b, b"k3") == (b"later", 2200, False)

    def test_the_clock_behind_case_loses_data_without_the_rule(
        self, tmp_path: Path, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The case above fails when carried merges count as stored ones: proof that the
        test exercises the provisional position."""
        from evsync.sync import state

        real = state.Peers.merged

        def as_stored(self: state.Peers, *args: object, carried: bool = False) -> object:
            return real(self, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(state.Peers, "merged", as_stored)
        with pytest.raises(AssertionError):
            self.test_a_restarted_sender_with_its_clock_behind(tmp_path, store)



def published(src: MqttSource, *, taken: bool = True) -> list[tuple[str, bytes, bool]]:
    """Connect ``src`` to a stand-in for paho's publish: (topic, payload, retain) of each
    message, in order; ``taken``: whether the broker acknowledges them."""
    sent: list[tuple[str, bytes, bool]] = []

    def publish(topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Any:
        sent.append((topic, payload, retain))
        return SimpleNamespace(
            mid=len(sent), wait_for_publish=lambda _timeout: None, is_published=lambda: taken
        )

    src._client.publish = publish
    src.connected.set()
    return sent


class TestOneMessagePerCarriedDelta:
    """A receiver that takes companions hears a small delta once (DESIGN §7): the
    companion names the sender's last stored object, and the object's own announcement
    goes to a ``carried`` topic such receivers do not subscribe to."""

    TOPIC = "evsync/events"
    TIP = SnapshotName.build("main", "a", NS).name
    DELTA = SnapshotName.build("main", "a", 2 * NS, extras=(delta_extra(NS),)).name

    def sender(self) -> MqttSource:
        cfg = MqttConfig(url="mqtt://127.0.0.1:1", topics=(self.TOPIC,))
        return MqttSource(cfg, "a", {}, bucket="bkt", prefix="p/", origin="s3://bkt/p/")

    def test_the_companion_names_the_last_stored_object(self) -> None:
        """After the tip is stored and announced, the next delta's companion says the
        tip is stored (with the prefix, as an S3 key)."""
        src = self.sender()
        sent = published(src)
        src.announce("main", self.TIP, 10)
        src.announce_carried("main", self.DELTA, b"delta bytes")
        meta = json.loads(sent[1][1])["evsync"]
        assert meta["stored"] == {"key": "p/" + self.TIP}
        assert meta["inline"]["key"] == "p/" + self.DELTA

    def test_a_first_companion_names_nothing(self) -> None:
        """Before anything was stored the companion has no ``stored``."""
        src = self.sender()
        sent = published(src)
        src.announce_carried("main", self.DELTA, b"delta bytes")
        assert "stored" not in json.loads(sent[0][1])["evsync"]

    def test_a_carried_object_is_announced_on_the_carried_topic(self) -> None:
        """The announcement of an object whose companion the broker took goes below the
        instance's topic, retained; the next object, not carried, goes to the topic."""
        src = self.sender()
        sent = published(src)
        src.announce_carried("main", self.DELTA, b"delta bytes")
        src.announce("main", self.DELTA, 10)
        later = SnapshotName.build("main", "a", 3 * NS).name
        src.announce("main", later, 10)
        topics = [(t, r) for t, _p, r in sent[1:]]
        assert topics == [(f"{self.TOPIC}/main/a/carried", True), (f"{self.TOPIC}/main/a", True)]

    def test_a_companion_the_broker_did_not_take_leaves_the_announcement_heard(self) -> None:
        """No acknowledgement in time (broker slow or gone): receivers may lack the
        bytes, so the announcement goes where every receiver hears it."""
        src = self.sender()
        sent = published(src, taken=False)
        src.announce_carried("main", self.DELTA, b"delta bytes")
        src.announce("main", self.DELTA, 10)
        assert sent[1][0] == f"{self.TOPIC}/main/a"

    def test_receivers_parse_the_stored_name_as_a_hint(self) -> None:
        """The companion's ``stored`` reaches the queue as the name of a stored object,
        beside the carried bytes."""
        queue = HintQueue("main", own_instance="b")
        queue.listed(["a"])
        payload = inline_companion("bkt", self.DELTA, b"obj", db="main", instance="a",
                                   origin="s3://bkt/", stored=self.TIP)
        mqtt_source({"main": queue})._on_message(None, None, message(payload))
        batch = queue.wait(0)
        assert [n.name for n in batch.carried] == [self.DELTA]
        assert {n.name for n in (*batch.remote.values(), *batch.superseded)} >= {self.TIP}

    def test_a_stored_field_without_a_key_is_malformed(self) -> None:
        """``stored`` that names nothing: the companion is malformed, as any field."""
        message_ = json.loads(companion())
        message_["evsync"]["stored"] = {"key": 3}
        with pytest.raises(MalformedInlineError, match=r"evsync\.stored without a key"):
            parse_announcement(json.dumps(message_).encode(), INLINE)

    def test_a_receiver_takes_companions_over_its_own_limit(self) -> None:
        """A receiver whose own inline_max_bytes is smaller than the sender's still takes
        the companion (up to the protocol's limit): it does not hear the announcement."""
        queue = HintQueue("main", own_instance="b")
        queue.listed(["a"])
        data = b"x" * 4096
        mqtt_source({"main": queue}, 1024)._on_message(
            None, None, message(inline_companion("bkt", self.DELTA, data, db="main",
                                                 instance="a", origin="s3://bkt/"))
        )
        assert queue.carried.take(SnapshotName.parse(self.DELTA)) == data

    @pytest.mark.parametrize(
        ("inline", "topics", "carried_heard"),
        [
            (INLINE, ("evsync/events",), False),
            (INLINE, ("evsync/events/",), False),
            (0, ("evsync/events",), True),
            (INLINE, ("evsync/events/#",), True),
            (INLINE, ("other", "evsync/events"), True),
        ],
    )
    def test_who_hears_what(
        self, inline: int, topics: tuple[str, ...], carried_heard: bool
    ) -> None:
        """Every receiver hears companions, announcements and S3 events on the topic and
        one level below; only a receiver that takes companions on its first topic (no
        wildcard given) does not hear the carried announcements."""
        cfg = MqttConfig(url="mqtt://127.0.0.1:1", topics=topics, inline_max_bytes=inline)
        filters = [f for f, _qos in subscriptions(cfg)]

        def heard(topic: str) -> bool:
            return any(topic_matches_sub(f, topic) for f in filters)

        assert all(heard(t) for t in ("evsync/events", "evsync/events/x", "evsync/events/main/a"))
        assert heard("evsync/events/main/a/carried") is carried_heard
        assert len(filters) == len(set(filters))

    def test_an_older_versions_subscription_is_dropped(self) -> None:
        """The persistent session keeps the filters of an earlier run (an older evsync's
        ``t/#``, or the split ones before companions were turned off): each run drops
        the form it does not make, else it would hear everything twice."""
        on = MqttConfig(url="mqtt://127.0.0.1:1", topics=("evsync/events",))
        off = MqttConfig(url="mqtt://127.0.0.1:1", topics=("evsync/events",), inline_max_bytes=0)
        assert stale_subscriptions(on) == ["evsync/events/#"]
        assert stale_subscriptions(off) == ["evsync/events", "evsync/events/+", "evsync/events/+/+"]
        given = MqttConfig(url="mqtt://127.0.0.1:1", topics=("evsync/#",))
        assert stale_subscriptions(given) == []


class Broker:
    """A stand-in for the broker between MqttSources: a message goes, in order, to every
    receiver one of whose subscriptions matches its topic; counts what each heard."""

    def __init__(self) -> None:
        self.receivers: list[tuple[MqttSource, list[str]]] = []
        self.heard: dict[str, list[str]] = {}

    def sender(self, instance: str, syncer: Syncer) -> MqttSource:
        cfg = MqttConfig(url="mqtt://127.0.0.1:1", inline_max_bytes=INLINE)
        src = MqttSource(cfg, instance, {}, bucket="bkt")

        def publish(topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Any:
            for receiver, filters in self.receivers:
                if any(topic_matches_sub(f, topic) for f in filters):
                    self.heard[receiver.instance].append(topic)
                    receiver._on_message(None, None, SimpleNamespace(topic=topic, payload=payload))
            return SimpleNamespace(
                mid=0, wait_for_publish=lambda _t: None, is_published=lambda: True
            )

        src._client.publish = publish
        src.connected.set()
        syncer.sender.inline_max_bytes = INLINE
        syncer.sender.on_encoded.append(src.announce_carried)
        syncer.sender.on_stored.append(src.announce)
        return src

    def receiver(
        self, instance: str, syncer: Syncer, inline: int = INLINE, filters: list[str] | None = None
    ) -> None:
        """A receiver subscribed as its config says, or to ``filters``."""
        cfg = MqttConfig(url="mqtt://127.0.0.1:1", inline_max_bytes=inline)
        src = MqttSource(cfg, instance, {"main": syncer.queue}, bucket="bkt")
        syncer.queue.listed(["a"])
        made = [f for f, _q in subscriptions(cfg)]
        self.receivers.append((src, made if filters is None else filters))
        self.heard[instance] = []


class TestThroughTheBroker:
    """Sender and receiver syncers with their MqttSources and the subscriptions they
    make: what a receiver hears per delta, and that the provisional rules still hold."""

    def test_a_delta_is_one_message_and_its_predecessor_is_confirmed(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """Five one-record deltas: B hears one message each (the companion), merges each
        without a GET, and each companion confirms the delta before it, so at most the
        newest merge is provisional. A receiver with companions off hears the carried
        announcements and fetches the deltas."""
        a, b = started_pair(tmp_path, store)
        c = make_syncer("c", tmp_path, store)
        assert c.run_once()
        broker = Broker()
        broker.sender("a", a)
        broker.receiver("b", b)
        broker.receiver("c", c, inline=0)
        gets = store.calls["open"]
        deltas = []
        for i in range(5):
            deltas.append(committed_delta(a, store, b"k", f"v{i + 1}".encode(), 2000 + i))
            b.step(b.queue.wait(0))
            assert read(b, b"k") == (f"v{i + 1}".encode(), 2000 + i, False)
            st = b.instances["a"]
            assert st.merged == deltas[-1]
            assert st.provisional <= {deltas[-1].name}
            if i:
                assert st.stored == deltas[-2]
        assert store.calls["open"] == gets  # B fetched nothing
        assert len(broker.heard["b"]) == 5
        assert not any(t.endswith("/carried") for t in broker.heard["b"])
        assert len(broker.heard["c"]) == 10  # companion and announcement, each
        c.step(c.queue.wait(0))
        assert read(c, b"k") == (b"v5", 2004, False)
        assert store.calls["open"] > gets  # C did

    def test_a_restarted_sender_with_its_clock_behind_is_still_heard(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """The sender dies after publishing a companion (never stored) and restarts with
        its clock behind: the restart full object is not carried, so its announcement
        reaches B on the instance's topic, B's provisional position falls back and the
        change committed just before the crash arrives."""
        a, b = started_pair(tmp_path, store)
        broker = Broker()
        broker.sender("a", a)
        broker.receiver("b", b)
        store.fail = True  # the PUT never happens: the process died
        app_put(a, b"k1", b"published", 2000)
        a.step(Batch(local=True))
        b.step(b.queue.wait(0))
        assert read(b, b"k1") == (b"published", 2000, False)
        lost = b.instances["a"].merged
        assert lost is not None and b.instances["a"].provisional == {lost.name}
        app_put(a, b"k2", b"after the publish", 2100)
        a.close()
        store.fail = False
        behind = lost.timestamp_ns - 5 * NS
        ticks = iter(range(behind, behind + NS, 1000))
        a2 = make_syncer("a", tmp_path, store, clock_ns=lambda: next(ticks))
        broker.sender("a", a2)
        assert a2.run_once()
        b.step(b.queue.wait(0))
        assert read(b, b"k2") == (b"after the publish", 2100, False)
        assert not b.instances["a"].provisional


# For the tests below: the listing after lost carried bytes, soon enough to wait for.
SHORT_RELIST_DELAY = 0.05


class TestLostCarriedBytesAreNamedByAListing:
    """A receiver that takes companions does not hear a carried object's announcement:
    when the bytes are lost it asks for a listing once the store has likely completed
    (found by the review of cc4d9d4)."""

    @pytest.mark.parametrize("hears_carried", [False, True])
    def test_carried_bytes_that_fail_before_the_put_are_fetched_after_it(
        self,
        tmp_path: Path,
        store: MemoryStore,
        monkeypatch: pytest.MonkeyPatch,
        no_relist_pause: None,
        hears_carried: bool,
    ) -> None:
        """B merges the companion while A's PUT is still in flight and the merge fails
        for now: the listing asked for at once runs before the PUT and cannot show the
        object; the one CARRIED_RELIST_DELAY_SECONDS later does, and B fetches it. The
        same with B on a wildcard topic (it hears the carried announcement too)."""
        monkeypatch.setattr(receiver_mod, "CARRIED_RELIST_DELAY_SECONDS", SHORT_RELIST_DELAY)
        a, b = started_pair(tmp_path, store)
        broker = Broker()
        broker.sender("a", a)
        broker.receiver("b", b, filters=["evsync/#"] if hears_carried else None)
        a.sender.on_encoded.append(lambda *_args: b.step(b.queue.wait(0)))  # before the PUT
        calls = fail_merge_once(monkeypatch, b, LmdbError("transient"))
        committed_delta(a, store, b"k", b"v1", 2000)
        assert len(calls) == 1  # tried, and failed, before the PUT
        time.sleep(SHORT_RELIST_DELAY * 2)
        for _ in range(3):  # the loop's wake-ups, past the backoff
            b.receiver._load_backoff.clear()
            b.step(b.queue.wait(0))
        assert read(b, b"k") == (b"v1", 2000, False)
        assert b.receiver.relist_at is None

    def test_a_companion_of_an_unknown_instance_asks_for_a_listing(self) -> None:
        """Carried bytes of an instance no listing or hint named yet are not taken; the
        queue hands the loop a request for a listing instead of dropping it silently."""
        queue = HintQueue("main", own_instance="b")
        name = SnapshotName.build("main", "a", NS).name
        assert not queue.put_carried("mqtt", name, b"obj")
        assert queue.wait(0).relist
        assert not queue.wait(0).relist  # once

    def test_a_malformed_companion_asks_for_a_listing(self) -> None:
        """A companion that cannot be read: its object is not announced where this
        receiver listens, so the loop is asked for a listing."""
        queue = HintQueue("main", own_instance="b")
        payload = json.loads(companion(b"obj", SnapshotName.build("main", "a", NS).name))
        payload["evsync"]["inline"]["size"] = 99
        mqtt_source({"main": queue})._on_message(
            None, None, message(json.dumps(payload).encode())
        )
        assert queue.wait(0).relist

    def test_the_listing_waits_for_the_delay(
        self, tmp_path: Path, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A batch asking for a listing sets its time CARRIED_RELIST_DELAY_SECONDS ahead:
        not due at once, due after, and the loop's idle timeout wakes it then; a listing
        begun after that time clears it."""
        monkeypatch.setattr(receiver_mod, "CARRIED_RELIST_DELAY_SECONDS", SHORT_RELIST_DELAY)
        b = make_syncer("b", tmp_path, store)
        assert b.run_once()
        b.step(Batch(relist=True))
        assert b.receiver.relist_at is not None and not b.receiver.relist_due()
        assert b._idle_timeout() <= SHORT_RELIST_DELAY
        time.sleep(SHORT_RELIST_DELAY * 2)
        assert b.receiver.relist_due()
        b.step(Batch())
        assert b.receiver.relist_at is None

    def test_the_stored_hint_makes_the_instance_known_for_the_bytes(self) -> None:
        """A companion whose ``stored`` is the first name of its instance this receiver
        hears: the hint makes the instance known, so the carried bytes are taken; the
        bytes, offered twice, count as received once (and the hint once)."""
        queue = HintQueue("main", own_instance="b")
        tip = SnapshotName.build("main", "a", NS).name
        delta = SnapshotName.build("main", "a", 2 * NS, extras=(delta_extra(NS),)).name
        payload = inline_companion("bkt", delta, b"obj", db="main", instance="a",
                                   origin="s3://bkt/", stored=tip)
        mqtt_source({"main": queue})._on_message(None, None, message(payload))
        assert queue.carried.take(SnapshotName.parse(delta)) == b"obj"
        assert queue.received["mqtt"] == 2

    def test_a_failing_bucket_does_not_spin_the_loop(
        self, tmp_path: Path, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The listing asked for after lost carried bytes fails: the loop's idle timeout
        waits for the listing's backoff instead of coming back at once, again and again."""
        monkeypatch.setattr(receiver_mod, "CARRIED_RELIST_DELAY_SECONDS", SHORT_RELIST_DELAY)
        b = make_syncer("b", tmp_path, store)
        assert b.run_once()
        b.step(Batch(relist=True))
        time.sleep(SHORT_RELIST_DELAY * 2)
        store.fail = True
        b.step(Batch())  # the listing fails: backoff
        assert b.receiver.relist_at is not None
        assert not b.receiver.list_backoff.ready()
        assert b._idle_timeout() > SHORT_RELIST_DELAY


    def test_the_delayed_listing_respects_the_backoff_while_the_bucket_fails(
        self, tmp_path: Path, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The delayed listing is due, the bucket is down and another object is pending
        (its GET fails): the first failed listing starts the backoff, and the steps after
        it (companions waking the loop) do not list again, once per pending instance,
        until it ends (found by a review)."""
        monkeypatch.setattr(receiver_mod, "CARRIED_RELIST_DELAY_SECONDS", SHORT_RELIST_DELAY)
        a, b = started_pair(tmp_path, store)
        delta = committed_delta(a, store, b"k", b"v1", 2000)  # stored, not carried
        b.receiver.relist_later()
        time.sleep(SHORT_RELIST_DELAY * 2)
        store.fail = True
        before = store.calls["list"]
        b.queue.put(Hint("mqtt", name=delta.name))
        b.step(b.queue.wait(0))
        for _ in range(5):
            b.step(Batch())
        assert store.calls["list"] - before <= 1

    def test_a_steady_stream_of_losses_does_not_put_the_listing_off_for_ever(
        self, tmp_path: Path, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Carried bytes lost at every wake-up, closer together than the delay (forged
        companions, say): the first loss's listing still comes when due, and the losses
        after it ask for one more, RELIST_MIN_SECONDS later (found by a review: each
        loss pushed the listing on, and none ever ran)."""
        monkeypatch.setattr(receiver_mod, "CARRIED_RELIST_DELAY_SECONDS", SHORT_RELIST_DELAY)
        monkeypatch.setattr(receiver_mod, "RELIST_MIN_SECONDS", SHORT_RELIST_DELAY * 4)
        _a, b = started_pair(tmp_path, store)
        before = store.calls["list"]
        t0 = time.monotonic()
        b.step(Batch(relist=True))
        while time.monotonic() - t0 < SHORT_RELIST_DELAY * 10:
            time.sleep(SHORT_RELIST_DELAY / 2)
            b.step(Batch(relist=True))
        listings = store.calls["list"] - before
        assert 1 <= listings <= 3  # one when due, then at most one per RELIST_MIN_SECONDS

class TestWhenTheBrokerDidNotTakeTheCompanion:
    """The announcement goes to the ``carried`` topic only when the broker acknowledged
    the companion (found by the review of cc4d9d4)."""

    def test_at_qos_0_the_announcement_stays_heard(self) -> None:
        """At ``qos: 0`` nothing acknowledges a companion, and the broker does not queue
        it for a receiver away for a moment: the announcement goes to the instance's
        topic."""
        cfg = MqttConfig(url="mqtt://127.0.0.1:1", qos=0)
        src = MqttSource(cfg, "a", {}, bucket="bkt")
        sent = published(src)
        delta = TestOneMessagePerCarriedDelta.DELTA
        src.announce_carried("main", delta, b"delta bytes")
        src.announce("main", delta, 10)
        assert [t for t, _p, _r in sent] == ["evsync/main/a", "evsync/main/a"]

    def test_a_refusing_acknowledgement_leaves_the_announcement_heard(self) -> None:
        """An MQTT 5 PUBACK with a failure reason (quota, size, not authorised): paho
        counts the companion as published, evsync does not."""
        src = TestOneMessagePerCarriedDelta().sender()
        sent = published(src)
        refused = SimpleNamespace(is_failure=True)
        src._on_publish(None, None, 1, refused, None)  # the companion's mid (the 1st message)
        delta = TestOneMessagePerCarriedDelta.DELTA
        src.announce_carried("main", delta, b"delta bytes")
        src.announce("main", delta, 10)
        assert sent[1][0] == f"{TestOneMessagePerCarriedDelta.TOPIC}/main/a"
        later = SnapshotName.build("main", "a", 3 * NS, extras=(delta_extra(2 * NS),)).name
        src.announce_carried("main", later, b"delta bytes")  # mid 3: acknowledged
        src.announce("main", later, 10)
        assert sent[3][0].endswith("/carried")


class TestConfirmationsAfterTheMerges:
    """The loop notes names that only confirm carried merges after its merges (the
    change that woke it is not kept waiting), with the same effect as before them."""

    def test_a_confirmation_noted_after_the_merge_confirms(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """A batch with delta 2's carried bytes and the confirmation of delta 1: both
        merged, delta 1 the stored position, only delta 2 provisional."""
        a, b = started_pair(tmp_path, store)
        carried = wire(a, b)
        d1 = committed_delta(a, store, b"k", b"v1", 2000)
        b.step(b.queue.wait(0))
        b.queue.put(Hint("mqtt", name=d1.name))  # d1's confirmation, queued unparsed
        d2 = committed_delta(a, store, b"k", b"v2", 2100)
        batch = b.queue.wait(0)
        assert batch.confirmed == [d1.name] and [n.name for n in batch.carried] == carried[1:]
        b.step(batch)
        st = b.instances["a"]
        assert st.merged == d2 and st.stored == d1 and st.provisional == {d2.name}

    def test_one_that_turns_out_to_be_news_is_merged_in_the_same_step(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """A confirmation whose name this receiver has not merged (its position fell back
        meanwhile, say) is news: merged in the step that noted it, from the bucket."""
        a, b = started_pair(tmp_path, store)
        d1 = committed_delta(a, store, b"k", b"v1", 2000)
        b.step(Batch(confirmed=[d1.name]))
        assert read(b, b"k") == (b"v1", 2000, False)
        assert b.instances["a"].merged == d1
