"""Deltas carried inside MQTT announcements (issue 18 §2), with moto over HTTP and Mosquitto:
a peer merges them without a GET, and the sync converges when the sender's store fails
or the sender dies right after publishing."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from evsync.triggers.s3events import inline_companion
from tests.helpers import AwsServer, Instance, Mosquitto, free_port, wait_for
from tests.integration.test_notifications import PUSH_DEADLINE, mqtt_notify
from tests.integration.test_operations import http_on, sample, status
from tests.reliability.proxy import ChaosProxy

pytestmark = pytest.mark.integration

Make = Callable[..., Instance]
INLINE_METRIC = "evsync_inline_objects_total"
DOWNLOADED = "evsync_downloaded_bytes_total"
# "db main: stored <name> (delta, ...": the sender's line for each stored object
FILL_BYTES = 4096
# a name no sender wrote, for a forged companion
FORGED = "main__a__20200101-000000-000000000__GX__D20200101-000000-000000000.evs.zst"
# after the last store, long enough for its announcement to reach the peer on loopback
ANNOUNCE_SETTLE = 0.5
STORED_RE = re.compile(r"stored (main__a__\S+) \((full|delta)")


def fill(inst: Instance) -> None:
    """A value that does not compress, so that the full object is some kilobytes and the
    chain's size rule (deltas.max_chain_ratio) lets one-record deltas follow it."""
    inst.writer.put("fill", os.urandom(FILL_BYTES).hex())


def behind_proxy(storage: dict[str, Any], proxy: ChaosProxy) -> dict[str, Any]:
    """The same bucket, reached through the relay."""
    return {**storage, "options": {**storage["options"], "endpoint_url": proxy.endpoint}}


@pytest.fixture
def proxy(aws: AwsServer) -> Any:
    """A relay in front of the S3 server that a test can take down."""
    port = urlsplit(aws.endpoint).port
    assert port is not None, aws.endpoint
    relay = ChaosProxy(port).up()
    try:
        yield relay
    finally:
        relay.close()


def stored_names(inst: Instance) -> list[tuple[str, str]]:
    """(name, kind) of every object the instance logged as stored, oldest first."""
    return STORED_RE.findall(inst.log())


def deltas(inst: Instance) -> int:
    return [kind for _n, kind in stored_names(inst)].count("delta")


def bucket_names(aws: AwsServer, bucket: str) -> list[str]:
    listing = aws.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return [o["Key"] for o in listing]


def metric(port: int, name: str, **labels: str) -> float:
    return sample(port, name, **labels) or 0.0


class TestInlineDeltas:
    """A delta small enough travels in the announcement's companion and is merged from it."""

    def test_a_peer_cut_off_from_the_bucket_still_gets_deltas(
        self, instances: Make, s3_storage: dict[str, Any], mosquitto: Mosquitto, topic: str,
        proxy: ChaosProxy,
    ) -> None:
        """B reaches the bucket through a relay that is taken down: A's deltas still reach
        B within the push deadline, counted as inline merges; once the relay is back, the
        announcements of the stored objects cost B no GET."""
        port = free_port()
        a = instances("a", s3_storage, notify=mqtt_notify(mosquitto, topic)).start()
        b = instances("b", behind_proxy(s3_storage, proxy), notify=mqtt_notify(mosquitto, topic),
                      http=http_on(port)).start()
        wait_for(lambda: "mqtt: connected" in a.log() and "mqtt: connected" in b.log(),
                 what="both to connect")
        fill(a)
        a.writer.put("k", "v0")  # the first object (fill's, or with v0) is full: fetched
        wait_for(lambda: b.writer.get("k") == "v0", timeout=PUSH_DEADLINE, what="b to read v0")
        downloaded = metric(port, DOWNLOADED, db="main")
        assert downloaded > 0
        inline = metric(port, INLINE_METRIC, db="main", result="merged")  # v0 may be a delta
        stored_before = deltas(a)
        proxy.down()
        for i in (1, 2):
            a.writer.put("k", f"v{i}")
            wait_for(lambda i=i: b.writer.get("k") == f"v{i}", timeout=PUSH_DEADLINE,
                     what=f"b to read v{i} with its bucket unreachable")
        proxy.up()
        a.writer.put("k", "v3")
        wait_for(lambda: b.writer.get("k") == "v3", timeout=PUSH_DEADLINE, what="b to read v3")
        wait_for(lambda: metric(port, INLINE_METRIC, db="main", result="merged") == inline + 3,
                 what="three inline merges")
        wait_for(lambda: deltas(a) >= stored_before + 3, what="a to store its deltas")
        time.sleep(ANNOUNCE_SETTLE)  # their announcements reach b
        assert metric(port, DOWNLOADED, db="main") == downloaded

    def test_inline_off_fetches_every_delta(
        self, instances: Make, s3_storage: dict[str, Any], mosquitto: Mosquitto, topic: str
    ) -> None:
        """notify.mqtt.inline_max_bytes: 0 on the sender: B gets the delta by GET."""
        port = free_port()
        a = instances("a", s3_storage,
                      notify=mqtt_notify(mosquitto, topic, inline_max_bytes=0)).start()
        b = instances("b", s3_storage, notify=mqtt_notify(mosquitto, topic),
                      http=http_on(port)).start()
        wait_for(lambda: "mqtt: connected" in b.log(), what="b to connect")
        fill(a)
        a.writer.put("k", "v0")
        wait_for(lambda: b.writer.get("k") == "v0", timeout=PUSH_DEADLINE, what="b to read v0")
        downloaded = metric(port, DOWNLOADED, db="main")
        a.writer.put("k", "v1")
        wait_for(lambda: b.writer.get("k") == "v1", timeout=PUSH_DEADLINE, what="b to read v1")
        assert metric(port, DOWNLOADED, db="main") > downloaded
        assert metric(port, INLINE_METRIC, db="main", result="merged") == 0


    def test_a_malformed_companion_is_counted_and_costs_nothing(
        self, instances: Make, s3_storage: dict[str, Any], mosquitto: Mosquitto, topic: str
    ) -> None:
        """A companion whose object does not decode is one line and a count on B; A's
        real deltas keep arriving (and the forged name is never merged)."""
        port = free_port()
        a = instances("a", s3_storage, notify=mqtt_notify(mosquitto, topic)).start()
        b = instances("b", s3_storage, notify=mqtt_notify(mosquitto, topic),
                      http=http_on(port)).start()
        wait_for(lambda: "mqtt: connected" in b.log(), what="b to connect")
        fill(a)
        a.writer.put("k", "v0")
        wait_for(lambda: b.writer.get("k") == "v0", timeout=PUSH_DEADLINE, what="b to read v0")
        bucket = s3_storage["options"]["bucket"]
        forged = inline_companion(bucket, FORGED, b"not an object", db="main", instance="a")
        broken = forged.replace(b'"data": "', b'"data": "*')
        mosquitto.publish(f"{topic}/main/a", broken)
        wait_for(lambda: metric(port, INLINE_METRIC, db="main", result="malformed") == 1,
                 what="the malformed companion to be counted")
        assert "is not base64" in b.log()
        a.writer.put("k", "v1")
        wait_for(lambda: b.writer.get("k") == "v1", timeout=PUSH_DEADLINE, what="b to read v1")
        assert FORGED not in b.log().split("is not base64", 1)[1]


class Listener:
    """A plain subscriber to ``<topic>/#``, as a reader of S3 events would be: the topic of
    every message it hears."""

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.topics: list[str] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda _c, _u, msg: self.topics.append(msg.topic)
        self.client.on_subscribe = lambda *_args: self.subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(f"{topic}/#", qos=1)
        self.client.loop_start()
        assert self.subscribed.wait(5), "the listener's subscription was not acknowledged"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class TestOneMessagePerDelta:
    """Peers that take companions hear a small delta once; everyone else as before."""

    def test_a_peer_hears_each_small_delta_once(
        self, instances: Make, s3_storage: dict[str, Any], mosquitto: Mosquitto, topic: str
    ) -> None:
        """Three one-record deltas from A: B (companions on) receives one MQTT message
        each and fetches none; C (companions off) fetches each after its announcement; a
        plain ``<topic>/#`` subscriber hears each companion and each announcement, the
        latter on ``<topic>/main/a/carried``."""
        pb, pc = free_port(), free_port()
        a = instances("a", s3_storage, notify=mqtt_notify(mosquitto, topic)).start()
        b = instances("b", s3_storage, notify=mqtt_notify(mosquitto, topic),
                      http=http_on(pb)).start()
        c = instances("c", s3_storage, notify=mqtt_notify(mosquitto, topic, inline_max_bytes=0),
                      http=http_on(pc)).start()
        wait_for(lambda: all("mqtt: connected" in i.log() for i in (a, b, c)),
                 what="all three to connect")
        fill(a)
        a.writer.put("k", "v0")
        for peer in (b, c):
            wait_for(lambda p=peer: p.writer.get("k") == "v0", timeout=PUSH_DEADLINE,
                     what="the peers to read v0")
        listener = Listener(mosquitto, topic)
        try:
            time.sleep(ANNOUNCE_SETTLE)  # v0's messages, and the retained ones, delivered
            listener.topics.clear()
            heard = status(pb)["push_sources"]["mqtt"]["messages"]
            downloaded_b = metric(pb, DOWNLOADED, db="main")
            downloaded_c = metric(pc, DOWNLOADED, db="main")
            stored_before = deltas(a)
            for i in (1, 2, 3):
                a.writer.put("k", f"v{i}")
                for peer in (b, c):
                    wait_for(lambda p=peer, i=i: p.writer.get("k") == f"v{i}",
                             timeout=PUSH_DEADLINE, what=f"the peers to read v{i}")
            wait_for(lambda: deltas(a) >= stored_before + 3, what="a to store its deltas")
            time.sleep(ANNOUNCE_SETTLE)
            assert deltas(a) == stored_before + 3, "each write was one delta"
            assert status(pb)["push_sources"]["mqtt"]["messages"] == heard + 3
            assert metric(pb, DOWNLOADED, db="main") == downloaded_b
            assert metric(pc, DOWNLOADED, db="main") > downloaded_c
            carried = [t for t in listener.topics if t == f"{topic}/main/a/carried"]
            companions = [t for t in listener.topics if t == f"{topic}/main/a"]
            assert (len(carried), len(companions)) == (3, 3), listener.topics
        finally:
            listener.close()


class TestInlineFailures:
    """The message goes out before the store: a failed store or a dead sender loses nothing."""

    def test_the_store_fails_after_publishing(
        self, instances: Make, s3_storage: dict[str, Any], mosquitto: Mosquitto, topic: str,
        proxy: ChaosProxy, aws: AwsServer, bucket: str,
    ) -> None:
        """A's bucket is unreachable: B merges the change from the message while A's store
        fails; when the bucket is back A stores the change again (a delta on the same
        base), and B, already holding it, converges with A on later changes too."""
        port = free_port()
        a = instances("a", behind_proxy(s3_storage, proxy),
                      notify=mqtt_notify(mosquitto, topic)).start()
        b = instances("b", s3_storage, notify=mqtt_notify(mosquitto, topic),
                      http=http_on(port)).start()
        wait_for(lambda: "mqtt: connected" in a.log() and "mqtt: connected" in b.log(),
                 what="both to connect")
        fill(a)
        a.writer.put("k", "v0")
        wait_for(lambda: b.writer.get("k") == "v0", timeout=PUSH_DEADLINE, what="b to read v0")
        a.writer.put("k", "v1")
        wait_for(lambda: b.writer.get("k") == "v1", timeout=PUSH_DEADLINE, what="b to read v1")
        proxy.down()
        a.writer.put("k", "during the outage")
        wait_for(lambda: b.writer.get("k") == "during the outage", timeout=PUSH_DEADLINE,
                 what="b to merge the change its sender cannot store")
        wait_for(lambda: "failed (attempt" in a.log(), what="a's store to fail")
        proxy.up()
        a.writer.put("k2", "after the outage")
        wait_for(lambda: b.writer.get("k2") == "after the outage", timeout=30,
                 what="b to read the change after the outage")
        assert b.writer.get("k") == "during the outage"
        stored = {n for n, _kind in stored_names(a)}
        assert stored <= set(bucket_names(aws, bucket))
        assert metric(port, INLINE_METRIC, db="main", result="merged") >= 2

    def test_the_sender_dies_right_after_publishing(
        self, instances: Make, s3_storage: dict[str, Any], mosquitto: Mosquitto, topic: str,
        aws: AwsServer, bucket: str, monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A is killed once its delta's message is out and before the store: B holds the
        change though the bucket never gets that object; A restarts, stores a full
        object holding the change and one committed while it was down, and B merges it,
        then A's later deltas. (With A's clock behind the lost object, the restart object
        sorts below B's position: tests/unit/test_inline.py pins that case.)"""
        a = instances("a", s3_storage, notify=mqtt_notify(mosquitto, topic)).start()
        b = instances("b", s3_storage, notify=mqtt_notify(mosquitto, topic)).start()
        wait_for(lambda: "mqtt: connected" in b.log(), what="b to connect")
        fill(a)
        a.writer.put("k", "v0")
        wait_for(lambda: b.writer.get("k") == "v0", timeout=PUSH_DEADLINE, what="b to read v0")
        a.stop()
        fulls = [kind for _n, kind in stored_names(a)].count("full")
        monkeypatch.setenv("EVSYNC_FAULTS", "published=1")
        a.start()
        # a restart stores a full object first (never inline), then deltas
        wait_for(lambda: [kind for _n, kind in stored_names(a)].count("full") > fulls,
                 what="a's restart full object")
        wait_for(lambda: "mqtt: connected" in a.log().rsplit("evsync starting", 1)[-1],
                 what="a to reconnect")
        a.writer.put("k", "published, then killed")
        assert a.proc is not None
        wait_for(lambda: a.proc is not None and a.proc.poll() is not None, what="a to die")
        assert "evsync fault: SIGKILL at published" in a.log()
        wait_for(lambda: b.writer.get("k") == "published, then killed", timeout=PUSH_DEADLINE,
                 what="b to merge the published delta")
        (lost,) = re.findall(r"merged (main__a__\S+)", b.log())[-1:]
        assert lost not in bucket_names(aws, bucket)  # merged, never stored
        a.writer.put("k2", "committed while a was down")
        monkeypatch.delenv("EVSYNC_FAULTS")
        a.start()
        wait_for(lambda: b.writer.get("k2") == "committed while a was down", timeout=30,
                 what="b to merge a's restart object")
        a.writer.put("k", "after the restart")
        wait_for(lambda: b.writer.get("k") == "after the restart", timeout=PUSH_DEADLINE,
                 what="b to read a's later delta")
