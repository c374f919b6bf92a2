"""Push sources: MQTT announcements and S3 events over SQS wake the syncer at once."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import AwsServer, Instance, Mosquitto, wait_for

pytestmark = pytest.mark.integration

Make = Callable[..., Instance]
# Long enough that only a push source can explain a fast update.
SLOW_LISTING = "1h"
PUSH_DEADLINE = 5.0


def mqtt_notify(broker: Mosquitto, topic: str, **extra: Any) -> dict[str, Any]:
    return {"listing_interval": SLOW_LISTING,
            "mqtt": {"url": broker.url, "topic": topic, "publish": True, **extra}}


class TestMqttAnnouncements:
    """Instances announce stored objects on MQTT; peers fetch them without listing."""

    def test_put_travels_by_announcement(self, instances: Make, s3_storage: dict[str, Any],
                                         mosquitto: Mosquitto, topic: str) -> None:
        """With a 60 s listing, a put on A reaches B within seconds via MQTT."""
        a = instances("a", s3_storage, notify=mqtt_notify(mosquitto, topic)).start()
        b = instances("b", s3_storage, notify=mqtt_notify(mosquitto, topic)).start()
        wait_for(lambda: "mqtt: connected" in a.log() and "mqtt: connected" in b.log(),
                 what="both to connect")
        for i in range(3):
            a.writer.put("www", f"v{i}")
            wait_for(lambda i=i: b.writer.get("www") == f"v{i}", timeout=PUSH_DEADLINE,
                     what=f"b to read v{i}")
        b.writer.put("back", "1")
        wait_for(lambda: a.writer.get("back") == "1", timeout=PUSH_DEADLINE, what="a to read")
        b.stop()
        assert "first to announce" in b.log()
        summary = b.log().split("first to announce", 1)[1].splitlines()[0]
        assert "mqtt=" in summary, summary

    def test_mqtt5_session(self, instances: Make, s3_storage: dict[str, Any],
                           mosquitto: Mosquitto, topic: str) -> None:
        """The MQTT 5 protocol option works the same way."""
        a = instances("a", s3_storage, notify=mqtt_notify(mosquitto, topic, protocol=5)).start()
        b = instances("b", s3_storage, notify=mqtt_notify(mosquitto, topic, protocol=5)).start()
        wait_for(lambda: "mqtt: connected" in b.log(), what="b to connect")
        a.writer.put("k", "v")
        wait_for(lambda: b.writer.get("k") == "v", timeout=PUSH_DEADLINE, what="b to read")

    def test_malformed_messages_are_ignored(self, instances: Make, s3_storage: dict[str, Any],
                                            mosquitto: Mosquitto, topic: str) -> None:
        """Garbage on the topic is logged and ignored; sync goes on."""
        a = instances("a", s3_storage, notify=mqtt_notify(mosquitto, topic)).start()
        b = instances("b", s3_storage, notify=mqtt_notify(mosquitto, topic)).start()
        wait_for(lambda: "mqtt: connected" in b.log(), what="b to connect")
        for payload in (b"not json", b"[1,2]", b'{"Records": "x"}', b"{" * 5000,
                        json.dumps({"Records": [{"eventName": 5}]}).encode()):
            mosquitto.publish(topic, payload)
        wait_for(lambda: "ignoring malformed message" in b.log(), what="malformed log")
        a.writer.put("k", "still works")
        wait_for(lambda: b.writer.get("k") == "still works", timeout=PUSH_DEADLINE,
                 what="b to read")
        assert b.proc is not None and b.proc.poll() is None

    def test_three_instances_converge_by_announcements(
        self, instances: Make, s3_storage: dict[str, Any], mosquitto: Mosquitto, topic: str
    ) -> None:
        """Three instances, listing once an hour: every write reaches the other two."""
        insts = [instances(n, s3_storage, notify=mqtt_notify(mosquitto, topic)).start()
                 for n in ("a", "b", "c")]
        wait_for(lambda: all("mqtt: connected" in i.log() for i in insts), what="connect")
        for inst in insts:
            inst.writer.put(f"from-{inst.name}", inst.name)
        for inst in insts:
            for other in insts:
                wait_for(lambda i=inst, o=other: i.writer.get(f"from-{o.name}") == o.name,
                         timeout=PUSH_DEADLINE, what=f"{inst.name} to read {other.name}")

    def test_broker_restart_mid_test(self, instances: Make, s3_storage: dict[str, Any],
                                     mosquitto: Mosquitto, topic: str) -> None:
        """After the broker restarts, events drive the sync again (listing once an hour)."""
        a = instances("a", s3_storage, notify=mqtt_notify(mosquitto, topic)).start()
        b = instances("b", s3_storage, notify=mqtt_notify(mosquitto, topic)).start()
        wait_for(lambda: "mqtt: connected" in b.log() and "mqtt: connected" in a.log(),
                 what="both to connect")
        a.writer.put("k", "before")
        wait_for(lambda: b.writer.get("k") == "before", timeout=PUSH_DEADLINE, what="before")
        mosquitto.stop()
        a.writer.put("k", "while the broker was down")
        time.sleep(0.5)
        assert a.proc is not None and a.proc.poll() is None
        assert b.proc is not None and b.proc.poll() is None
        mosquitto.start()
        wait_for(lambda: b.writer.get("k") == "while the broker was down", timeout=30,
                 what="b to get the change announced across the restart")
        a.writer.put("k", "after")
        wait_for(lambda: b.writer.get("k") == "after", timeout=PUSH_DEADLINE, what="after")

    def test_broker_down_falls_back_to_listing(self, instances: Make,
                                               s3_storage: dict[str, Any],
                                               mosquitto: Mosquitto, topic: str) -> None:
        """Without the broker, the listing still carries changes (at its interval)."""
        notify = mqtt_notify(mosquitto, topic)
        notify["listing_interval"] = "500ms"
        a = instances("a", s3_storage, notify=notify).start()
        b = instances("b", s3_storage, notify=notify).start()
        wait_for(lambda: "mqtt: connected" in b.log(), what="b to connect")
        mosquitto.stop()
        a.writer.put("k", "via listing")
        wait_for(lambda: b.writer.get("k") == "via listing", timeout=10, what="b to read")
        assert a.proc is not None and a.proc.poll() is None

    def test_events_queued_while_down_arrive_on_reconnect(
        self, instances: Make, s3_storage: dict[str, Any], mosquitto: Mosquitto, topic: str
    ) -> None:
        """The persistent session delivers announcements published while B was stopped."""
        a = instances("a", s3_storage, notify=mqtt_notify(mosquitto, topic)).start()
        b = instances("b", s3_storage, notify=mqtt_notify(mosquitto, topic)).start()
        wait_for(lambda: "mqtt: connected" in b.log(), what="b to connect")
        b.stop()
        a.writer.put("k", "while b was down")
        time.sleep(0.5)
        b.start()
        wait_for(lambda: b.writer.get("k") == "while b was down", timeout=PUSH_DEADLINE,
                 what="b to catch up")


class TestOnlyOnceAnnounces:
    """`sync --only-once` announces what it stores, as the daemon does."""

    def test_only_once_announces_its_object_and_leaves_no_session(
        self, instances: Make, s3_storage: dict[str, Any], mosquitto: Mosquitto, topic: str
    ) -> None:
        """A one-shot upload is announced (retained, under <topic>/main/<instance>), so a
        running peer merges it at once instead of at its next listing (1 h here). (It
        was not announced at all: peers waited for their listing, up to 60 s.)"""
        b = instances("b", s3_storage, notify=mqtt_notify(mosquitto, topic)).start()
        a = instances("a", s3_storage, notify=mqtt_notify(mosquitto, topic))
        a.writer.put("once", "v")
        res = a.command("sync", "--only-once")
        assert res.returncode == 0, res.stderr
        assert "mqtt: announced 1 object(s)" in res.stderr, res.stderr
        retained = mosquitto.retained(f"{topic}/main/a")
        assert retained is not None
        record = json.loads(retained)["Records"][0]
        assert record["s3"]["object"]["key"].startswith("main__a__")
        wait_for(lambda: b.writer.get("once") == "v", timeout=10,
                 what="b to merge the announced object without a listing")
        assert b.stop() == 0


class TestSqs:
    """S3 -> SQS bucket notifications wake the syncer (moto or LocalStack deliver them)."""

    def test_put_travels_by_s3_event(self, instances: Make, s3_storage: dict[str, Any],
                                     aws: AwsServer, bucket: str) -> None:
        """With a 60 s listing, B learns of A's object through its SQS queue."""
        sqs = aws.boto("sqs")
        queue_url = sqs.create_queue(QueueName=f"{bucket}-b")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        aws.client().put_bucket_notification_configuration(
            Bucket=bucket,
            NotificationConfiguration={"QueueConfigurations": [
                {"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]},
        )
        a = instances("a", s3_storage, notify={"listing_interval": SLOW_LISTING})
        a.start()
        b = instances("b", s3_storage, notify={
            "listing_interval": SLOW_LISTING,
            "sqs": {"queue_url": queue_url, "endpoint_url": aws.endpoint,
                    "region": "us-east-1"}})
        b.start()
        a.writer.put("k", "via sqs")
        wait_for(lambda: b.writer.get("k") == "via sqs", timeout=PUSH_DEADLINE,
                 what="b to read")

    def test_put_travels_by_sns_fanout(self, instances: Make, s3_storage: dict[str, Any],
                                       aws: AwsServer, bucket: str) -> None:
        """S3 -> SNS -> one SQS queue per instance: both peers learn of each other's objects."""
        sns, sqs = aws.boto("sns"), aws.boto("sqs")
        topic_arn = sns.create_topic(Name=f"{bucket}-events")["TopicArn"]
        queue_urls = {}
        for inst in ("a", "b"):
            url = sqs.create_queue(QueueName=f"{bucket}-{inst}")["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
                "Attributes"]["QueueArn"]
            sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=arn)
            queue_urls[inst] = url
        aws.client().put_bucket_notification_configuration(
            Bucket=bucket,
            NotificationConfiguration={"TopicConfigurations": [
                {"TopicArn": topic_arn, "Events": ["s3:ObjectCreated:*"]}]},
        )
        insts = {
            name: instances(name, s3_storage, notify={
                "listing_interval": SLOW_LISTING,
                "sqs": {"queue_url": url, "endpoint_url": aws.endpoint}}).start()
            for name, url in queue_urls.items()
        }
        insts["a"].writer.put("k", "from a")
        wait_for(lambda: insts["b"].writer.get("k") == "from a", timeout=PUSH_DEADLINE,
                 what="b to read")
        insts["b"].writer.put("k2", "from b")
        wait_for(lambda: insts["a"].writer.get("k2") == "from b", timeout=PUSH_DEADLINE,
                 what="a to read")
        insts["b"].stop()
        summary = insts["b"].log().split("first to announce", 1)[1].splitlines()[0]
        assert "sqs=" in summary, summary


class TestOnlyDbProcesses:
    """Processes of one instance that split its dbs each keep their own MQTT session."""

    def test_two_only_db_processes_keep_their_sessions(
        self, instances: Make, s3_storage: dict[str, Any], mosquitto: Mosquitto, topic: str,
        tmp_path: Path,
    ) -> None:
        """`sync --only-db main` and `sync --only-db other` from one config connect once
        each and stay connected (one client id shared, the broker handed the session
        back and forth about once a second and events went to the wrong process)."""
        lmdbs = {
            db: {"path": str(tmp_path / f"lmdb-{db}"), "schema_tracks_changes": True,
                 "options": {"create": True, "map_size": "64MB"}}
            for db in ("main", "other")
        }
        notify = mqtt_notify(mosquitto, topic)
        one = instances("a-main", s3_storage, instance="a", lmdbs=lmdbs, notify=notify)
        two = instances("a-other", s3_storage, instance="a", lmdbs=lmdbs, notify=notify)
        one.start("--only-db", "main")
        two.start("--only-db", "other")
        wait_for(lambda: "mqtt: connected" in one.log() and "mqtt: connected" in two.log(),
                 what="both to connect")
        time.sleep(5)
        for proc in (one, two):
            assert proc.log().count("mqtt: connected") == 1, proc.log()
            assert "mqtt: disconnected" not in proc.log()
        assert "as evsync-a-main" in one.log() and "as evsync-a-other" in two.log()


class TestMessageSizeCap:
    """Messages over the size cap (issue 16 §4), through a real Mosquitto."""

    def test_mqtt5_oversized_messages_never_reach_evsync(
        self, mosquitto: Mosquitto, topic: str
    ) -> None:
        """With MQTT 5 the CONNECT's maximum packet size makes the broker drop a message
        over the cap: evsync never receives (or holds) it, and the next one arrives. It
        used to be delivered whole and then counted as malformed."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from evsync.config import MqttConfig
        from evsync.snapshot.name import SnapshotName
        from evsync.triggers.base import HintQueue
        from evsync.triggers.mqtt import MqttSource
        from evsync.triggers.s3events import MAX_MESSAGE_BYTES, announcement

        cfg = MqttConfig(url=mosquitto.url, topics=(topic,), protocol=5)
        queue = HintQueue("main")
        src = MqttSource(cfg, "node-z", {"main": queue}, bucket=None)
        src.start()
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        try:
            wait_for(src.connected.is_set, what="evsync connected")
            pub.connect("127.0.0.1", mosquitto.port)
            pub.loop_start()
            time.sleep(0.3)  # the subscription is in place
            big = b"x" * (4 * MAX_MESSAGE_BYTES)
            pub.publish(f"{topic}/big", big, qos=1).wait_for_publish()
            name = SnapshotName.build("main", "node-a", time.time_ns()).name
            good = announcement("", name, 1, db="main", instance="node-a")
            pub.publish(f"{topic}/main/node-a", good, qos=1).wait_for_publish()
            wait_for(lambda: queue.received, what="the small message")
            assert (src.messages, src.malformed) == (1, 0)
        finally:
            pub.loop_stop()
            pub.disconnect()
            src.stop()
