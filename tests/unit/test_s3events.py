"""The notification parser (S3, SNS, MinIO, moto, LocalStack, evsync shapes) and its users."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote_plus

import pytest

from evsync.config import MqttConfig, SqsConfig
from evsync.snapshot.name import SnapshotName, checkpoint_extra, delta_extra
from evsync.triggers.base import SOURCE_MQTT, SOURCE_SQS, HintQueue
from evsync.triggers.mqtt import MqttSource, client_id_for, subscription_for
from evsync.triggers.s3events import (
    ANNOUNCEMENT_SOURCE,
    MAX_MESSAGE_BYTES,
    MAX_RECORDS,
    MalformedEventError,
    ObjectEvent,
    announcement,
    object_names,
    parse_message,
)
from evsync.triggers.sqs import SqsSource

EVENTS = Path(__file__).resolve().parent.parent / "fixtures" / "events"

BUCKET = "evsync-bkt"
PREFIX = "evsync/"
NAME_A = "main__node-a__20231114-221320-000000000__GX.evs.zst"
NAME_B = "main__node-b__20231114-221321-500000000__GX.evs.zst"
NAME_O = "other__node-a__20231114-221322-000000000__GX.evs.zst"
NAME_DELTA = "main__node-a__20231114-221323-000000000__GX__D20231114-221320-000000000.evs.zst"
T = 1_700_000_000_000_000_000


def raw(fixture: str) -> bytes:
    """The bytes of one fixture file."""
    return (EVENTS / fixture).read_bytes()


def loaded(fixture: str) -> Any:
    """The decoded JSON of one fixture file."""
    return json.loads(raw(fixture))


def pairs(events: list[ObjectEvent]) -> list[tuple[str, str]]:
    """(bucket, key) of each event, in order."""
    return [(e.bucket, e.key) for e in events]


def put_record(bucket: Any = BUCKET, key: Any = "k", name: Any = "ObjectCreated:Put") -> Any:
    """A minimal S3 record."""
    return {"eventName": name, "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}


def records(*recs: Any) -> bytes:
    """A ``{"Records": [...]}`` message."""
    return json.dumps({"Records": list(recs)}).encode()


def sns(inner: Any) -> bytes:
    """An SNS envelope whose Message is ``inner`` (JSON-encoded unless already a string)."""
    message = inner if isinstance(inner, str) else json.dumps(inner)
    return json.dumps(
        {"Type": "Notification", "MessageId": "m-1", "TopicArn": "arn:t", "Message": message}
    ).encode()


def snapshot(db: str, instance: str, ts: int = T) -> str:
    """A valid evsync object name."""
    return SnapshotName.build(db, instance, ts).name


# --------------------------------------------------------------------------- shapes


SHAPES: list[tuple[str, list[tuple[str, str]]]] = [
    ("aws_put.json", [(BUCKET, PREFIX + NAME_A)]),
    ("aws_multipart.json", [(BUCKET, PREFIX + NAME_B)]),
    ("sns_put.json", [(BUCKET, PREFIX + NAME_A)]),
    ("minio_mqtt_put.json", [(BUCKET, PREFIX + NAME_A)]),
    ("moto_put.json", [(BUCKET, PREFIX + NAME_A)]),
    ("moto_multipart_put.json", [(BUCKET, PREFIX + NAME_B)]),
    ("moto_multipart_complete.json", [(BUCKET, PREFIX + NAME_B)]),
    ("moto_sns_put.json", [(BUCKET, PREFIX + NAME_A)]),
    ("localstack_put.json", [(BUCKET, PREFIX + NAME_A)]),
    ("localstack_multipart.json", [(BUCKET, PREFIX + NAME_B)]),
    ("localstack_sns_put.json", [(BUCKET, PREFIX + NAME_A)]),
    (
        "multi_bucket.json",
        [
            (BUCKET, PREFIX + NAME_A),
            ("someone-elses-bkt", PREFIX + NAME_B),
            (BUCKET, PREFIX + NAME_O),
            ("archive-bkt", "backups/" + NAME_DELTA),
        ],
    ),
]

EMPTY_SHAPES = [
    "aws_delete.json",
    "aws_test_event.json",
    "sns_test_event.json",
    "minio_mqtt_delete.json",
    "moto_test_event.json",
    "sns_subscription_confirmation.json",
]


class TestShapes:
    """Every notification shape yields the right (bucket, key) list."""

    @pytest.mark.parametrize(("fixture", "expected"), SHAPES, ids=[s[0] for s in SHAPES])
    def test_fixture_yields_bucket_and_key(
        self, fixture: str, expected: list[tuple[str, str]]
    ) -> None:
        """Each object-created fixture parses to exactly its (bucket, decoded key) pairs."""
        assert pairs(parse_message(raw(fixture))) == expected

    @pytest.mark.parametrize("fixture", [s[0] for s in SHAPES])
    def test_str_and_bytes_parse_alike(self, fixture: str) -> None:
        """A payload given as str (SQS body) parses like the same payload as bytes (MQTT)."""
        assert parse_message(raw(fixture).decode()) == parse_message(raw(fixture))

    def test_aws_put_fields(self) -> None:
        """An AWS PUT record keeps its eventName and eventSource on the ObjectEvent."""
        (event,) = parse_message(raw("aws_put.json"))
        assert event == ObjectEvent(BUCKET, PREFIX + NAME_A, "ObjectCreated:Put", "aws:s3")

    def test_multipart_event_name(self) -> None:
        """A CompleteMultipartUpload record counts as object-created and keeps its name."""
        (event,) = parse_message(raw("aws_multipart.json"))
        assert event.event_name == "ObjectCreated:CompleteMultipartUpload"

    def test_minio_prefixed_event_name(self) -> None:
        """MinIO's 's3:'-prefixed eventName is accepted and its source is minio:s3."""
        (event,) = parse_message(raw("minio_mqtt_put.json"))
        assert event.event_name == "s3:ObjectCreated:Put"
        assert event.source == "minio:s3"

    def test_minio_record_key_matches_top_level_key(self) -> None:
        """MinIO's decoded top-level Key equals bucket/ plus the parsed record key."""
        data = loaded("minio_mqtt_put.json")
        (event,) = parse_message(raw("minio_mqtt_put.json"))
        assert data["Key"] == f"{event.bucket}/{event.key}"

    def test_sns_envelope_equals_raw_delivery(self) -> None:
        """An SNS envelope parses to the same events as its raw-delivered Message."""
        envelope = loaded("sns_put.json")
        assert parse_message(raw("sns_put.json")) == parse_message(envelope["Message"])

    def test_moto_record_without_sequencer_or_version(self) -> None:
        """moto's record (no sequencer, versionId, userIdentity) is a valid object-created event."""
        obj = loaded("moto_put.json")["Records"][0]
        assert "sequencer" not in obj["s3"]["object"]
        assert "userIdentity" not in obj
        (event,) = parse_message(raw("moto_put.json"))
        assert event.source == "aws:s3"

    def test_localstack_constant_sequencer_is_irrelevant(self) -> None:
        """LocalStack's constant fake sequencer does not stop two different keys from parsing."""
        events = parse_message(raw("localstack_special_keys.json"))
        assert len(events) == 2
        assert len({e.key for e in events}) == 2

    def test_copy_and_post_are_object_created(self) -> None:
        """ObjectCreated:Copy and ObjectCreated:Post records yield events."""
        names = [e.event_name for e in parse_message(raw("multi_bucket.json"))]
        assert "ObjectCreated:Copy" in names
        assert "ObjectCreated:Post" in names

    def test_missing_event_source_gives_empty_source(self) -> None:
        """A record without eventSource gets source ''."""
        (event,) = parse_message(records(put_record()))
        assert event.source == ""

    def test_non_string_event_source_gives_empty_source(self) -> None:
        """A record whose eventSource is not a string gets source '' rather than an error."""
        rec = put_record()
        rec["eventSource"] = ["aws:s3"]
        (event,) = parse_message(records(rec))
        assert event.source == ""

    def test_empty_records_list(self) -> None:
        """An empty Records list is valid and yields nothing."""
        assert parse_message(b'{"Records": []}') == []

    def test_exactly_max_records(self) -> None:
        """MAX_RECORDS records are accepted."""
        msg = records(*[put_record(key=f"k{i}") for i in range(MAX_RECORDS)])
        assert len(parse_message(msg)) == MAX_RECORDS


# --------------------------------------------------------------------------- keys


class TestKeyDecoding:
    """Keys are URL-decoded with unquote_plus, whichever S3 encoded them."""

    @pytest.mark.parametrize(
        ("encoded", "decoded"),
        [
            ("my+file.bin", "my file.bin"),
            ("my%20file.bin", "my file.bin"),
            ("a%2Bb.bin", "a+b.bin"),
            ("dir%2Fobj.bin", "dir/obj.bin"),
            ("dir/obj.bin", "dir/obj.bin"),
            ("a%252F.bin", "a%2F.bin"),
            ("caf%C3%A9.bin", "caf\u00e9.bin"),
            ("100%25+done", "100% done"),
            ("plain.bin", "plain.bin"),
        ],
    )
    def test_unquote_plus(self, encoded: str, decoded: str) -> None:
        """An encoded key decodes as unquote_plus would."""
        (event,) = parse_message(records(put_record(key=encoded)))
        assert event.key == decoded

    def test_aws_special_keys(self) -> None:
        """AWS keys: '+' is a space, %2B a plus, '/' kept, UTF-8 percent-decoded."""
        assert [e.key for e in parse_message(raw("aws_special_keys.json"))] == [
            "evsync/my file (1).bin",
            "evsync/a+b=c.bin",
            "evsync/caf\u00e9 \u2603.bin",
            "evsync/dir/nested.bin",
        ]

    def test_moto_special_keys(self) -> None:
        """moto keys (quote_plus with safe='': %2F for '/') decode to the real key."""
        assert [e.key for e in parse_message(raw("moto_special_keys.json"))] == [
            "evsync/my file (1).bin",
            "evsync/a+b=c.bin",
        ]

    def test_localstack_special_keys(self) -> None:
        """LocalStack keys (%20 for a space, '/' kept) decode to the real key."""
        assert [e.key for e in parse_message(raw("localstack_special_keys.json"))] == [
            "evsync/my file (1).bin",
            "evsync/a+b=c.bin",
        ]

    def test_minio_slash_encoded_key(self) -> None:
        """MinIO's %2F-encoded record key decodes to prefix/name."""
        obj = loaded("minio_mqtt_put.json")["Records"][0]["s3"]["object"]
        assert "%2F" in obj["key"]
        (event,) = parse_message(raw("minio_mqtt_put.json"))
        assert event.key == PREFIX + NAME_A

    def test_bucket_name_is_not_decoded(self) -> None:
        """Only the key is decoded; a bucket name is taken verbatim."""
        (event,) = parse_message(records(put_record(bucket="b+1", key="k")))
        assert event.bucket == "b+1"


# --------------------------------------------------------------------------- ignored


class TestIgnored:
    """Removals, test events and SNS confirmations yield nothing and are not errors."""

    @pytest.mark.parametrize("fixture", EMPTY_SHAPES)
    def test_fixture_yields_nothing(self, fixture: str) -> None:
        """Each non-creation fixture parses to an empty list without raising."""
        assert parse_message(raw(fixture)) == []

    @pytest.mark.parametrize(
        "name",
        [
            "ObjectRemoved:Delete",
            "ObjectRemoved:DeleteMarkerCreated",
            "s3:ObjectRemoved:Delete",
            "ObjectRestore:Completed",
            "s3:ObjectAccessed:Get",
            "LifecycleExpiration:Delete",
            "",
        ],
    )
    def test_other_event_names_ignored(self, name: str) -> None:
        """Records whose eventName is not an ObjectCreated one yield nothing."""
        assert parse_message(records(put_record(name=name))) == []

    def test_removal_without_s3_is_not_an_error(self) -> None:
        """A removal record needs no s3 section: it is skipped before being inspected."""
        assert parse_message(records({"eventName": "ObjectRemoved:Delete"})) == []

    def test_removal_among_creations(self) -> None:
        """A removal record between creations is dropped and the creations kept."""
        msg = records(
            put_record(key="a"),
            put_record(key="b", name="ObjectRemoved:Delete"),
            put_record(key="c"),
        )
        assert [e.key for e in parse_message(msg)] == ["a", "c"]

    def test_test_event_minimal(self) -> None:
        """A TestEvent without Records is not an error."""
        assert parse_message(b'{"Event": "s3:TestEvent"}') == []

    def test_sns_subscription_confirmation_minimal(self) -> None:
        """An SNS SubscriptionConfirmation is ignored."""
        assert parse_message(b'{"Type": "SubscriptionConfirmation", "Message": "hi"}') == []


# --------------------------------------------------------------------------- object_names


def ev(key: str, bucket: str = BUCKET) -> ObjectEvent:
    """An ObjectEvent for object_names tests."""
    return ObjectEvent(bucket, key, "ObjectCreated:Put")


class TestObjectNames:
    """object_names keeps this bucket's names directly under the global prefix."""

    def test_strips_prefix(self) -> None:
        """The global prefix is stripped from matching keys."""
        assert object_names([ev(PREFIX + NAME_A)], BUCKET, PREFIX) == [NAME_A]

    def test_filters_other_buckets(self) -> None:
        """Events of other buckets are dropped."""
        events = [ev(PREFIX + NAME_A, "other"), ev(PREFIX + NAME_B)]
        assert object_names(events, BUCKET, PREFIX) == [NAME_B]

    def test_bucket_none_accepts_any_bucket(self) -> None:
        """bucket=None accepts events of every bucket."""
        events = [ev(PREFIX + NAME_A, "x"), ev(PREFIX + NAME_B, "y"), ev(PREFIX + NAME_O, "")]
        assert object_names(events, None, PREFIX) == [NAME_A, NAME_B, NAME_O]

    def test_filters_keys_outside_prefix(self) -> None:
        """Keys not starting with the prefix are dropped."""
        events = [ev("backups/" + NAME_A), ev(NAME_A), ev("evsync" + NAME_A), ev(PREFIX + NAME_B)]
        assert object_names(events, BUCKET, PREFIX) == [NAME_B]

    def test_drops_keys_in_subdirectories(self) -> None:
        """Keys with a '/' after the prefix are dropped."""
        events = [ev(PREFIX + "sub/" + NAME_A), ev(PREFIX + "/" + NAME_A), ev(PREFIX + NAME_B)]
        assert object_names(events, BUCKET, PREFIX) == [NAME_B]

    def test_drops_the_prefix_itself(self) -> None:
        """A key equal to the prefix (empty name) is dropped."""
        assert object_names([ev(PREFIX)], BUCKET, PREFIX) == []

    def test_empty_prefix(self) -> None:
        """With an empty prefix, top-level keys are names and nested keys dropped."""
        events = [ev(NAME_A), ev(PREFIX + NAME_B), ev("")]
        assert object_names(events, BUCKET, "") == [NAME_A]

    def test_prefix_without_slash(self) -> None:
        """A prefix without a trailing slash is stripped as a plain string prefix."""
        assert object_names([ev("pre-" + NAME_A)], BUCKET, "pre-") == [NAME_A]

    def test_keeps_order_and_duplicates(self) -> None:
        """Names come out in event order; duplicates are kept (hints are idempotent)."""
        events = [ev(PREFIX + NAME_B), ev(PREFIX + NAME_A), ev(PREFIX + NAME_B)]
        assert object_names(events, BUCKET, PREFIX) == [NAME_B, NAME_A, NAME_B]

    def test_slash_decoded_from_moto_key(self) -> None:
        """moto's %2F-encoded prefix separator matches the prefix after decoding."""
        assert object_names(parse_message(raw("moto_put.json")), BUCKET, PREFIX) == [NAME_A]

    def test_encoded_slash_in_name_dropped(self) -> None:
        """A %2F inside the name decodes to '/' and the key is dropped as nested."""
        events = parse_message(records(put_record(key="evsync/sub%2F" + NAME_A)))
        assert object_names(events, BUCKET, PREFIX) == []

    def test_multi_bucket_fixture(self) -> None:
        """Of several buckets' records only this bucket's names under the prefix remain."""
        events = parse_message(raw("multi_bucket.json"))
        assert object_names(events, BUCKET, PREFIX) == [NAME_A, NAME_O]
        assert object_names(events, None, PREFIX) == [NAME_A, NAME_B, NAME_O]
        assert object_names(events, "archive-bkt", "backups/") == [NAME_DELTA]


# --------------------------------------------------------------------------- announcement


class TestAnnouncement:
    """evsync's own announcement is S3-shaped and round-trips through the parser."""

    def test_shape(self) -> None:
        """The announcement is one ObjectCreated:Put record with evsync metadata."""
        data = json.loads(announcement(BUCKET, PREFIX + NAME_A, 42, db="main", instance="node-a"))
        (rec,) = data["Records"]
        assert rec["eventSource"] == ANNOUNCEMENT_SOURCE
        assert rec["eventName"] == "ObjectCreated:Put"
        assert rec["s3"]["bucket"]["name"] == BUCKET
        assert rec["s3"]["object"]["size"] == 42
        assert data["evsync"] == {"db": "main", "instance": "node-a"}

    def test_round_trip(self) -> None:
        """parse_message + object_names recover the announced name and bucket."""
        payload = announcement(BUCKET, PREFIX + NAME_A, 42, db="main", instance="node-a")
        events = parse_message(payload)
        assert events == [ObjectEvent(BUCKET, PREFIX + NAME_A, "ObjectCreated:Put", "evsync")]
        assert object_names(events, BUCKET, PREFIX) == [NAME_A]

    @pytest.mark.parametrize(
        "name",
        [
            "a b.bin",
            "a+b.bin",
            "a%2Bb.bin",
            "100%.bin",
            "caf\u00e9 \u2603.bin",
            "q?x=1&y=2#frag.bin",
            "tab\there.bin",
            "~!@$^*()[]{};:'\",<>.bin",
            NAME_DELTA,
        ],
    )
    def test_round_trip_quoting(self, name: str) -> None:
        """Names with characters that need quoting survive the round trip unchanged."""
        payload = announcement(BUCKET, PREFIX + name, 1, db="main", instance="node-a")
        assert object_names(parse_message(payload), BUCKET, PREFIX) == [name]

    def test_prefix_slash_is_not_encoded(self) -> None:
        """The prefix's '/' stays literal in the announced key, like AWS keys."""
        data = json.loads(announcement(BUCKET, PREFIX + "a b", 1, db="main", instance="n"))
        assert data["Records"][0]["s3"]["object"]["key"] == "evsync/a+b"

    def test_empty_bucket_announcement(self) -> None:
        """An announcement with bucket '' (no bucket configured) is accepted by bucket=None."""
        events = parse_message(announcement("", PREFIX + NAME_A, 1, db="main", instance="n"))
        assert object_names(events, None, PREFIX) == [NAME_A]
        assert object_names(events, BUCKET, PREFIX) == []

    def test_random_names_round_trip(self) -> None:
        """Random printable and non-ASCII names without '/' round-trip."""
        rng = random.Random(1234)
        alphabet = [chr(c) for c in range(32, 127) if chr(c) != "/"] + list(
            "\u00e9\u00df\u4e2d\u2603"
        )
        for _ in range(500):
            name = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
            payload = announcement(BUCKET, PREFIX + name, 1, db="main", instance="n")
            assert object_names(parse_message(payload), BUCKET, PREFIX) == [name], name


# --------------------------------------------------------------------------- malformed


def wrap_records(recs: Any) -> bytes:
    """A message whose Records value is ``recs``."""
    return json.dumps({"Records": recs}).encode()


MALFORMED: list[tuple[str, bytes | str]] = [
    ("empty", b""),
    ("whitespace", b"   \n"),
    ("not-json", b"hello"),
    ("truncated", raw("aws_put.json")[:-5]),
    ("invalid-utf8", b'{"Records": ["\xff\xfe"]}'),
    ("binary", bytes(range(256))),
    ("bom-str", "\ufeff" + raw("aws_put.json").decode()),
    ("list", b"[]"),
    ("list-of-event", b"[" + raw("aws_put.json") + b"]"),
    ("number", b"42"),
    ("float", b"1.5e3"),
    ("nan", b"NaN"),
    ("string", b'"{\\"Records\\": []}"'),
    ("null", b"null"),
    ("true", b"true"),
    ("object-no-records", b'{"foo": 1}'),
    ("records-null", b'{"Records": null}'),
    ("records-object", b'{"Records": {"0": {}}}'),
    ("records-string", b'{"Records": "[]"}'),
    ("records-number", b'{"Records": 3}'),
    ("record-number", wrap_records([1])),
    ("record-string", wrap_records(["ObjectCreated:Put"])),
    ("record-list", wrap_records([[put_record()]])),
    ("record-null", wrap_records([None])),
    ("bad-after-good", wrap_records([put_record(), 7])),
    ("no-event-name", wrap_records([{"s3": put_record()["s3"]}])),
    ("event-name-number", wrap_records([put_record(name=1)])),
    ("event-name-list", wrap_records([put_record(name=["ObjectCreated:Put"])])),
    ("event-name-null", wrap_records([put_record(name=None)])),
    ("event-name-object", wrap_records([put_record(name={"ObjectCreated": 1})])),
    ("no-s3", wrap_records([{"eventName": "ObjectCreated:Put"}])),
    ("s3-string", wrap_records([{"eventName": "ObjectCreated:Put", "s3": "x"}])),
    ("s3-null", wrap_records([{"eventName": "ObjectCreated:Put", "s3": None}])),
    (
        "no-bucket",
        wrap_records([{"eventName": "ObjectCreated:Put", "s3": {"object": {"key": "k"}}}]),
    ),
    (
        "no-object",
        wrap_records([{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}}}]),
    ),
    (
        "bucket-string",
        wrap_records(
            [{"eventName": "ObjectCreated:Put", "s3": {"bucket": "b", "object": {"key": "k"}}}]
        ),
    ),
    (
        "object-list",
        wrap_records(
            [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": ["k"]}}]
        ),
    ),
    (
        "key-missing",
        wrap_records(
            [
                {
                    "eventName": "ObjectCreated:Put",
                    "s3": {"bucket": {"name": "b"}, "object": {"size": 1}},
                }
            ]
        ),
    ),
    ("key-number", wrap_records([put_record(key=123)])),
    ("key-null", wrap_records([put_record(key=None)])),
    ("key-list", wrap_records([put_record(key=["k"])])),
    ("bucket-name-number", wrap_records([put_record(bucket=5)])),
    ("bucket-name-null", wrap_records([put_record(bucket=None)])),
    ("sns-message-number", json.dumps({"Type": "Notification", "Message": 1}).encode()),
    ("sns-message-null", json.dumps({"Type": "Notification", "Message": None}).encode()),
    (
        "sns-message-object",
        json.dumps({"Type": "Notification", "Message": {"Records": []}}).encode(),
    ),
    ("sns-message-not-json", sns("You have a new object")),
    ("sns-message-empty", sns("")),
    ("sns-message-list", sns("[]")),
    ("sns-message-number-json", sns("12")),
    ("sns-message-truncated", sns(raw("aws_put.json").decode()[:-3])),
    ("sns-message-deep", sns("[" * 100_000)),
    ("sns-nested", sns(sns(json.loads(raw("aws_put.json"))).decode())),
    ("sns-nested-test-event", sns(raw("sns_test_event.json").decode())),
    ("sns-bad-record", sns({"Records": [put_record(key=1)]})),
    ("deep-list", b"[" * 100_000),
    ("deep-object", b'{"a":' * 50_000),
    ("deep-in-records", b'{"Records": ' + b"[" * 100_000),
    ("deep-closed", b"[" * 100_000 + b"]" * 100_000),
    ("deep-str", "[" * 100_000),
    ("huge-int", b'{"Records": [' + b"9" * 5000 + b"]}"),
    ("too-many-records", wrap_records([put_record() for _ in range(MAX_RECORDS + 1)])),
    (
        "too-many-removals",
        wrap_records([{"eventName": "ObjectRemoved:Delete"}] * (MAX_RECORDS + 1)),
    ),
    ("too-large-bytes", b'{"Records": [], "pad": "' + b"x" * MAX_MESSAGE_BYTES + b'"}'),
    ("too-large-str", '{"Records": [], "pad": "' + "x" * MAX_MESSAGE_BYTES + '"}'),
]


class TestMalformed:
    """Hostile inputs raise MalformedEventError and nothing else."""

    @pytest.mark.parametrize(("payload"), [m[1] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
    def test_raises_malformed(self, payload: bytes | str) -> None:
        """The payload is rejected with MalformedEventError (not ValueError, RecursionError…)."""
        with pytest.raises(MalformedEventError) as info:
            parse_message(payload)
        assert type(info.value) is MalformedEventError
        assert str(info.value)

    def test_reason_is_short(self) -> None:
        """The error message stays short even for huge bad inputs (for log lines)."""
        with pytest.raises(MalformedEventError) as info:
            parse_message(b"[" * 100_000)
        assert len(str(info.value)) < 200

    def test_size_limit_boundary(self) -> None:
        """A valid message of exactly MAX_MESSAGE_BYTES is accepted; one byte more is not."""
        head, tail = b'{"Records": [], "pad": "', b'"}'
        fill = MAX_MESSAGE_BYTES - len(head) - len(tail)
        assert parse_message(head + b"x" * fill + tail) == []
        with pytest.raises(MalformedEventError):
            parse_message(head + b"x" * (fill + 1) + tail)

    def test_size_limit_counts_utf8_bytes_of_str(self) -> None:
        """A str payload whose UTF-8 encoding exceeds MAX_MESSAGE_BYTES is rejected."""
        payload = '{"Records": [], "pad": "' + "\u20ac" * (MAX_MESSAGE_BYTES // 2) + '"}'
        assert len(payload) < MAX_MESSAGE_BYTES < len(payload.encode())
        with pytest.raises(MalformedEventError):
            parse_message(payload)

    def test_nested_sns_envelope_message(self) -> None:
        """An SNS envelope inside an SNS envelope is rejected as nested."""
        with pytest.raises(MalformedEventError, match="nested"):
            parse_message(sns(raw("sns_put.json").decode()))

    def test_too_many_records_reason(self) -> None:
        """MAX_RECORDS + 1 records are rejected naming the count."""
        with pytest.raises(MalformedEventError, match=str(MAX_RECORDS + 1)):
            parse_message(wrap_records([put_record()] * (MAX_RECORDS + 1)))

    def test_too_many_records_inside_sns(self) -> None:
        """The record limit also applies to an SNS-wrapped message."""
        with pytest.raises(MalformedEventError):
            parse_message(sns({"Records": [put_record()] * (MAX_RECORDS + 1)}))


# --------------------------------------------------------------------------- property tests


KEYS = [
    "Records", "eventName", "eventSource", "s3", "bucket", "object", "name", "key",
    "Type", "Message", "Event", "EventName", "Key", "size", "sequencer", "x",
]  # fmt: skip
NAMES = ["ObjectCreated:Put", "s3:ObjectCreated:Copy", "ObjectRemoved:Delete", "s3:TestEvent"]
TYPES = ["Notification", "SubscriptionConfirmation"]


def random_scalar(rng: random.Random) -> Any:
    """A random JSON scalar, biased towards values the parser looks at."""
    choice = rng.randrange(10)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.randint(-(2**70), 2**70)
    if choice == 3:
        return rng.uniform(-1e300, 1e300)
    if choice == 4:
        return rng.choice(NAMES + TYPES)
    if choice == 5:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(12)))
    if choice == 6:
        return "".join(rng.choice("%+/2BF0ab") for _ in range(rng.randrange(12)))
    return rng.choice(KEYS)


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value whose dict keys mostly come from the S3 event vocabulary."""
    kind = rng.randrange(10) if depth < 6 else 9
    if kind <= 3:
        return {
            (rng.choice(KEYS) if rng.random() < 0.9 else str(random_scalar(rng))): random_json(
                rng, depth + 1
            )
            for _ in range(rng.randrange(5))
        }
    if kind <= 5:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 6:
        return json.dumps(random_json(rng, depth + 1))  # a JSON string, as in SNS Message
    if kind == 7:
        return put_record(
            random_json(rng, depth + 1), random_json(rng, depth + 1), rng.choice(NAMES)
        )
    return random_scalar(rng)


def mutate(rng: random.Random, data: Any) -> Any:
    """``data`` with one randomly chosen node replaced by random JSON."""
    data = copy.deepcopy(data)
    parent: Any = None
    slot: Any = None
    node = data
    while isinstance(node, (dict, list)) and node and rng.random() < 0.8:
        parent = node
        slot = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        node = node[slot]
    if parent is None:
        return random_json(rng)
    if rng.random() < 0.2 and isinstance(parent, dict):
        del parent[slot]
    else:
        parent[slot] = random_json(rng)
    return data


FIXTURE_NAMES = sorted(p.name for p in EVENTS.glob("*.json"))


def check_parse(payload: bytes | str) -> list[ObjectEvent] | None:
    """parse_message's result, or None for MalformedEventError; any other outcome fails."""
    try:
        events = parse_message(payload)
    except MalformedEventError:
        return None
    assert isinstance(events, list)
    for event in events:
        assert isinstance(event, ObjectEvent)
        assert isinstance(event.bucket, str)
        assert isinstance(event.key, str)
        assert "ObjectCreated" in event.event_name
        assert isinstance(event.source, str)
    for name in object_names(events, None, ""):
        assert name
        assert "/" not in name
    return events


class TestProperties:
    """For any input, parse_message returns ObjectEvents or raises MalformedEventError."""

    def test_random_bytes(self) -> None:
        """Thousands of random byte strings never raise anything but MalformedEventError."""
        rng = random.Random(20231114)
        for _ in range(2000):
            check_parse(rng.randbytes(rng.randrange(64)))
            check_parse(rng.choice([b"{", b"[", b'{"Records":[']) + rng.randbytes(16))

    def test_random_json(self) -> None:
        """Thousands of random JSON structures, raw and SNS-wrapped, behave."""
        rng = random.Random(42)
        parsed = 0
        for _ in range(3000):
            value = random_json(rng)
            if check_parse(json.dumps(value)) is not None:
                parsed += 1
            check_parse(json.dumps({"Records": [value]}))
            check_parse(sns(value))
        assert parsed  # the generator reaches the accepting paths too

    def test_mutated_fixtures(self) -> None:
        """Fixtures with a random node replaced or removed never raise anything else."""
        rng = random.Random(7)
        for _ in range(3000):
            data = loaded(rng.choice(FIXTURE_NAMES))
            if data.get("Type") == "Notification" and rng.random() < 0.5:
                data["Message"] = json.dumps(mutate(rng, json.loads(data["Message"])))
            else:
                data = mutate(rng, data)
            check_parse(json.dumps(data))

    def test_byte_flipped_fixtures(self) -> None:
        """Fixtures with random bytes overwritten or truncated never raise anything else."""
        rng = random.Random(99)
        blobs = [raw(name) for name in FIXTURE_NAMES]
        for _ in range(2000):
            blob = bytearray(rng.choice(blobs))
            for _ in range(rng.randint(1, 4)):
                blob[rng.randrange(len(blob))] = rng.randrange(256)
            check_parse(bytes(blob[: rng.randint(0, len(blob))]))

    def test_random_key_round_trip(self) -> None:
        """Any key quoted by quote_plus decodes back to itself through a record."""
        rng = random.Random(5)
        for _ in range(1000):
            key = "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.randrange(1, 30)))
            msg = records(put_record(key=quote_plus(key, safe=rng.choice(["", "/"]))))
            assert [e.key for e in parse_message(msg)] == [key]


# --------------------------------------------------------------------------- sources


def mqtt_msg(payload: bytes, topic: str = "evsync/events") -> SimpleNamespace:
    """Something shaped like paho's MQTTMessage."""
    return SimpleNamespace(topic=topic, payload=payload)


def make_queues(*dbs: str) -> dict[str, HintQueue]:
    """One HintQueue per db."""
    return {db: HintQueue(db) for db in dbs}


def make_mqtt(
    queues: dict[str, HintQueue], bucket: str | None = BUCKET, prefix: str = PREFIX
) -> MqttSource:
    """An MqttSource that never connects."""
    cfg = MqttConfig(url="mqtt://127.0.0.1:1", topics=("evsync/events",))
    return MqttSource(cfg, "node-z", queues, bucket=bucket, prefix=prefix)


def make_sqs(
    queues: dict[str, HintQueue], bucket: str | None = BUCKET, prefix: str = PREFIX
) -> SqsSource:
    """An SqsSource whose boto3 client never connects."""
    cfg = SqsConfig(queue_url="http://127.0.0.1:1/q", endpoint_url="http://127.0.0.1:1")
    return SqsSource(cfg, queues, bucket=bucket, prefix=prefix)


def received(queues: dict[str, HintQueue]) -> dict[str, int]:
    """Total hints received per db."""
    return {db: sum(q.received.values()) for db, q in queues.items()}


class TestMqttSource:
    """MqttSource._on_message turns messages into hints for the right db, without a broker."""

    @pytest.mark.parametrize(
        "fixture", ["aws_put.json", "sns_put.json", "minio_mqtt_put.json", "moto_put.json"]
    )
    def test_hint_reaches_its_db(self, fixture: str) -> None:
        """An object-created message for db 'main' queues one mqtt hint on main only."""
        queues = make_queues("main", "other")
        src = make_mqtt(queues)
        src._on_message(None, None, mqtt_msg(raw(fixture)))
        assert queues["main"].first[SOURCE_MQTT] == 1
        batch = queues["main"].wait(0)
        assert set(batch.remote) == {"node-a"}
        assert batch.remote["node-a"].name == NAME_A
        assert received(queues) == {"main": 1, "other": 0}
        assert src.messages == 1
        assert src.malformed == 0

    def test_announcement_reaches_its_db(self) -> None:
        """A peer's announcement queues a hint on the announced db."""
        queues = make_queues("main", "other")
        src = make_mqtt(queues)
        name = snapshot("other", "node-q")
        payload = announcement(BUCKET, PREFIX + name, 9, db="other", instance="node-q")
        src._on_message(None, None, mqtt_msg(payload, "evsync/events/other/node-q"))
        assert queues["other"].wait(0).remote["node-q"].name == name
        assert received(queues) == {"main": 0, "other": 1}

    def test_other_db_goes_nowhere(self) -> None:
        """A name of a db this instance does not sync reaches no queue."""
        queues = make_queues("main", "other")
        src = make_mqtt(queues)
        payload = announcement(
            BUCKET, PREFIX + snapshot("audit", "node-a"), 1, db="a", instance="n"
        )
        src._on_message(None, None, mqtt_msg(payload))
        assert received(queues) == {"main": 0, "other": 0}
        assert src.malformed == 0

    def test_db_name_prefix_of_another(self) -> None:
        """A name of db 'main-2' is not delivered to db 'main'."""
        queues = make_queues("main", "main-2")
        src = make_mqtt(queues)
        name = snapshot("main-2", "node-a")
        src._on_message(None, None, mqtt_msg(records(put_record(key=PREFIX + name))))
        assert received(queues) == {"main": 0, "main-2": 1}

    def test_other_bucket_goes_nowhere(self) -> None:
        """An event of another bucket queues nothing."""
        queues = make_queues("main")
        src = make_mqtt(queues)
        src._on_message(None, None, mqtt_msg(records(put_record("elsewhere", PREFIX + NAME_A))))
        assert received(queues) == {"main": 0}

    def test_bucket_none_accepts_any(self) -> None:
        """With bucket=None an event of any bucket queues a hint."""
        queues = make_queues("main")
        src = make_mqtt(queues, bucket=None)
        src._on_message(None, None, mqtt_msg(records(put_record("elsewhere", PREFIX + NAME_A))))
        assert queues["main"].first[SOURCE_MQTT] == 1

    def test_outside_prefix_goes_nowhere(self) -> None:
        """An event outside the global prefix queues nothing."""
        queues = make_queues("main")
        src = make_mqtt(queues)
        src._on_message(None, None, mqtt_msg(records(put_record(key="backups/" + NAME_A))))
        assert received(queues) == {"main": 0}

    def test_multi_bucket_message(self) -> None:
        """Of a multi-bucket message only this bucket's names reach their dbs."""
        queues = make_queues("main", "other")
        src = make_mqtt(queues)
        src._on_message(None, None, mqtt_msg(raw("multi_bucket.json")))
        assert received(queues) == {"main": 1, "other": 1}
        assert queues["main"].wait(0).remote["node-a"].name == NAME_A
        assert queues["other"].wait(0).remote["node-a"].name == NAME_O

    @pytest.mark.parametrize("fixture", EMPTY_SHAPES)
    def test_ignored_shapes_are_not_malformed(self, fixture: str) -> None:
        """Removals and test events queue nothing and are not counted malformed."""
        queues = make_queues("main")
        src = make_mqtt(queues)
        src._on_message(None, None, mqtt_msg(raw(fixture)))
        assert received(queues) == {"main": 0}
        assert src.malformed == 0
        assert src.messages == 1

    def test_malformed_counted_not_raised(self) -> None:
        """Every malformed payload increments .malformed and raises nothing."""
        queues = make_queues("main")
        src = make_mqtt(queues)
        bad = [m[1] for m in MALFORMED if isinstance(m[1], bytes)]
        for payload in bad:
            src._on_message(None, None, mqtt_msg(payload))
        assert src.malformed == len(bad)
        assert src.messages == len(bad)
        assert received(queues) == {"main": 0}
        assert src.status()["malformed"] == len(bad)

    def test_malformed_then_good(self) -> None:
        """A good message after a malformed one is still delivered."""
        queues = make_queues("main")
        src = make_mqtt(queues)
        src._on_message(None, None, mqtt_msg(b"garbage"))
        src._on_message(None, None, mqtt_msg(raw("aws_put.json")))
        assert src.malformed == 1
        assert queues["main"].first[SOURCE_MQTT] == 1

    def test_fuzzed_messages_never_raise(self) -> None:
        """Mutated fixtures and random names go through _on_message without raising."""
        rng = random.Random(11)
        queues = make_queues("main", "other")
        src = make_mqtt(queues, bucket=None, prefix="")
        for i in range(1500):
            if i % 2:
                data = mutate(rng, loaded(rng.choice(FIXTURE_NAMES)))
                payload = json.dumps(data).encode()
            else:
                junk = "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(40)))
                payload = records(put_record(key=quote_plus(rng.choice(["main__", ""]) + junk)))
            src._on_message(None, None, mqtt_msg(payload))
        assert src.messages == 1500


class TestSqsSource:
    """SqsSource._handle turns message bodies into hints for the right db, without a queue."""

    @pytest.mark.parametrize(
        "fixture",
        [
            "aws_put.json",
            "sns_put.json",
            "moto_put.json",
            "moto_sns_put.json",
            "localstack_sns_put.json",
        ],
    )
    def test_hint_reaches_its_db(self, fixture: str) -> None:
        """An object-created body for db 'main' queues one sqs hint on main only."""
        queues = make_queues("main", "other")
        src = make_sqs(queues)
        src._handle(raw(fixture).decode())
        assert queues["main"].first[SOURCE_SQS] == 1
        assert queues["main"].wait(0).remote["node-a"].name == NAME_A
        assert received(queues) == {"main": 1, "other": 0}
        assert src.malformed == 0

    def test_other_db_goes_nowhere(self) -> None:
        """A name of a db this instance does not sync reaches no queue."""
        queues = make_queues("main")
        src = make_sqs(queues)
        src._handle(records(put_record(key=PREFIX + snapshot("audit", "node-a"))).decode())
        assert received(queues) == {"main": 0}

    def test_other_bucket_goes_nowhere(self) -> None:
        """An event of another bucket queues nothing."""
        queues = make_queues("main")
        src = make_sqs(queues)
        src._handle(records(put_record("elsewhere", PREFIX + NAME_A)).decode())
        assert received(queues) == {"main": 0}

    @pytest.mark.parametrize("fixture", EMPTY_SHAPES)
    def test_ignored_shapes_are_not_malformed(self, fixture: str) -> None:
        """Removals, test events and SNS confirmations queue nothing and are not malformed."""
        queues = make_queues("main")
        src = make_sqs(queues)
        src._handle(raw(fixture).decode())
        assert received(queues) == {"main": 0}
        assert src.malformed == 0

    def test_malformed_counted_not_raised(self) -> None:
        """Every malformed body increments .malformed and raises nothing."""
        queues = make_queues("main")
        src = make_sqs(queues)
        bad = [
            m[1] if isinstance(m[1], str) else m[1].decode("utf-8", "replace") for m in MALFORMED
        ]
        for body in bad:
            src._handle(body)
        assert src.malformed == len(bad)
        assert received(queues) == {"main": 0}
        assert src.status()["malformed"] == len(bad)

    def test_empty_body_is_malformed(self) -> None:
        """An empty body (a message without Body) counts as malformed."""
        src = make_sqs(make_queues("main"))
        src._handle("")
        assert src.malformed == 1

    def test_moto_multipart_pair_is_idempotent(self) -> None:
        """moto's Put + CompleteMultipartUpload pair for one object announces it once."""
        queues = make_queues("main")
        src = make_sqs(queues)
        src._handle(raw("moto_multipart_put.json").decode())
        src._handle(raw("moto_multipart_complete.json").decode())
        assert queues["main"].received[SOURCE_SQS] == 2
        assert queues["main"].first[SOURCE_SQS] == 1


class TestMqttHelpers:
    """Topic subscriptions and client ids."""

    @pytest.mark.parametrize(
        ("topic", "expected"),
        [
            ("evsync", "evsync/#"),
            ("evsync/events", "evsync/events/#"),
            ("evsync/events/", "evsync/events/#"),
            ("evsync/#", "evsync/#"),
            ("#", "#"),
            ("evsync/+", "evsync/+"),
            ("+", "+"),
            ("a/+/b", "a/+/b/#"),
        ],
    )
    def test_subscription_for(self, topic: str, expected: str) -> None:
        """A plain topic gains '/#'; a topic already ending in a wildcard is kept."""
        assert subscription_for(topic) == expected

    def test_client_id_stable(self) -> None:
        """The client id depends only on the instance, so the session is found again."""
        assert client_id_for("node-a") == "evsync-node-a"
        assert client_id_for("node-a") == client_id_for("node-a")
        assert client_id_for("node-a") != client_id_for("node-b")

    def test_client_id_names_the_dbs_of_an_only_db_process(self) -> None:
        """Two processes of one instance with --only-db main and --only-db other get ids
        of their own, each stable across restarts (the order of the dbs does not count)."""
        assert client_id_for("node-a", ["main"]) == "evsync-node-a-main"
        assert client_id_for("node-a", ["main"]) != client_id_for("node-a", ["other"])
        assert client_id_for("node-a", ["b", "a"]) == client_id_for("node-a", ["a", "b"])
        assert client_id_for("node-a", ["main"]) != client_id_for("node-a")

    def test_source_uses_client_id(self) -> None:
        """The paho client is created with client_id_for(instance)."""
        src = make_mqtt(make_queues("main"))
        assert src._client._client_id == client_id_for("node-z").encode()


class TestMqttAnnouncementsWhileDisconnected:
    """Announcements made while the broker is away are bounded."""

    def test_only_the_newest_announcement_per_db_waits(self) -> None:
        """20,000 uploads while the broker is down keep one announcement per db waiting
        (the newest: retained hints, so it says all the older ones did) and nothing in
        paho's own queue; they used to pile up, 40 MB of them."""
        src = make_mqtt(make_queues("main", "other"))
        for i in range(20_000):
            src.announce("main", f"main__node-z__20260101-000000-{i:09d}__GX.evs.zst", 10)
        src.announce("other", "other__node-z__20260101-000000-000000001__GX.evs.zst", 10)
        assert src.status()["pending_announcements"] == 2
        assert len(src._client._out_messages) == 0
        topic, payload = src._pending["main"]
        assert topic == "evsync/events/main/node-z"
        assert b"20260101-000000-000019999" in payload


def _checkpoint_and_deltas() -> tuple[str, str, str]:
    """A chain tip at 1 ns, a checkpoint begun right after it (2 ns) and the delta made
    during its dump (3 ns), stored before the checkpoint: names in store order
    (tip, delta, checkpoint); the checkpoint's sorts below the delta's."""
    tip = SnapshotName.build("main", "node-z", 1).name
    delta = SnapshotName.build("main", "node-z", 3, extras=(delta_extra(1),)).name
    ckpt = SnapshotName.build("main", "node-z", 2, extras=(checkpoint_extra(1),)).name
    assert tip < ckpt < delta
    return tip, delta, ckpt


class TestCheckpointAnnouncements:
    """A checkpoint is announced after the deltas made during its dump, with an older
    name: it never stands in for the newest delta's announcement."""

    def test_while_disconnected_the_newest_name_waits(self) -> None:
        """The checkpoint announced after a newer delta leaves the delta's announcement
        pending. It used to replace it, so peers heard of the older name on reconnect."""
        src = make_mqtt(make_queues("main"))
        tip, delta, ckpt = _checkpoint_and_deltas()
        for name in (tip, delta, ckpt):
            src.announce("main", name, 10)
        _topic, payload = src._pending["main"]
        assert delta.encode() in payload

    def test_an_older_name_is_not_retained(self) -> None:
        """Connected: the tip and the delta are published retained, the checkpoint after
        them is published but not retained, so the retained message stays the newest
        name. It used to become the retained message."""
        src = make_mqtt(make_queues("main"))
        sent: list[tuple[bytes, bool]] = []

        def publish(_topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
            sent.append((payload, retain))

        src._client.publish = publish
        src.connected.set()
        tip, delta, ckpt = _checkpoint_and_deltas()
        for name in (tip, delta, ckpt):
            src.announce("main", name, 10)
        names = (tip, delta, ckpt)
        flags = [(n.encode() in p, r) for (p, r), n in zip(sent, names, strict=True)]
        assert flags == [(True, True), (True, True), (True, False)]


class TestOtherBucket:
    """Announcements of a cluster that shares the broker and the bucket name, but not the
    bucket, are ignored (issue 16 §4)."""

    ORIGIN = "s3://evsync-bkt/evsync/"

    def test_the_announcement_carries_the_bucket_it_was_stored_in(self) -> None:
        """The evsync map names the bucket as the announcer reaches it."""
        payload = announcement(
            BUCKET, PREFIX + NAME_A, 1, db="main", instance="node-a", origin=self.ORIGIN
        )
        assert json.loads(payload)["evsync"]["bucket"] == self.ORIGIN
        (event,) = parse_message(payload)
        assert event.origin == self.ORIGIN

    def test_another_clusters_announcement_is_ignored_and_counted(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Same S3 bucket name, another prefix: no hint (so no GET and no "vanished"
        line), one line naming both buckets, and a counter in /status."""
        queues = make_queues("main")
        src = make_mqtt(queues)
        src.origin = self.ORIGIN
        theirs = "s3://evsync-bkt/other-cluster/"
        payload = announcement(
            BUCKET, PREFIX + NAME_A, 1, db="main", instance="node-a", origin=theirs
        )
        with caplog.at_level("INFO", logger="evsync.triggers.mqtt"):
            src._on_message(None, None, mqtt_msg(payload, "evsync/main/node-a"))
            src._on_message(None, None, mqtt_msg(payload, "evsync/main/node-a"))
        assert received(queues) == {"main": 0}
        assert src.status()["other_bucket"] == 2
        assert [r.getMessage() for r in caplog.records] == [
            f"mqtt: ignoring events for another bucket on evsync/main/node-a: {theirs} "
            f"(this instance syncs {self.ORIGIN}; 1 ignored so far)"
        ]

    def test_an_announcement_of_the_same_bucket_counts(self) -> None:
        """An announcement naming this instance's bucket is a hint as before."""
        queues = make_queues("main")
        src = make_mqtt(queues)
        src.origin = self.ORIGIN
        payload = announcement(
            BUCKET, PREFIX + NAME_A, 1, db="main", instance="node-a", origin=self.ORIGIN
        )
        src._on_message(None, None, mqtt_msg(payload))
        assert received(queues) == {"main": 1}

    def test_an_old_announcement_without_the_bucket_counts(self) -> None:
        """Announcements of older evsync versions (no evsync.bucket) are read as before:
        only the S3 bucket name is compared."""
        queues = make_queues("main")
        src = make_mqtt(queues)
        src.origin = self.ORIGIN
        payload = announcement(BUCKET, PREFIX + NAME_A, 1, db="main", instance="node-a")
        src._on_message(None, None, mqtt_msg(payload))
        assert received(queues) == {"main": 1}
        assert src.other_bucket == 0

    def test_fs_clusters_on_one_broker_keep_apart(self, tmp_path: Path) -> None:
        """Two fs buckets (no S3 bucket name to compare) differ by their directory: one
        cluster's announcements never reach the other. They used to reach it all."""
        from evsync.config import FsOptions
        from evsync.triggers.s3events import bucket_origin

        mine = bucket_origin(FsOptions(root_path=str(tmp_path / "a")))
        theirs = bucket_origin(FsOptions(root_path=str(tmp_path / "b")))
        same = bucket_origin(FsOptions(root_path=str(tmp_path / "x" / ".." / "a")))
        assert mine == same != theirs
        queues = make_queues("main")
        src = make_mqtt(queues, bucket=None, prefix="")
        src.origin = mine
        other = announcement("", NAME_A, 1, db="main", instance="node-a", origin=theirs)
        own = announcement("", NAME_B, 1, db="main", instance="node-b", origin=same)
        src._on_message(None, None, mqtt_msg(other))
        src._on_message(None, None, mqtt_msg(own))
        assert set(queues["main"].wait(0).remote) == {"node-b"}

    def test_s3_origin_names_bucket_and_prefix_only(self) -> None:
        """The S3 origin is bucket and prefix: instances reaching one bucket through
        different endpoints (a gateway per site) hear each other; no secret in it."""
        from evsync.config import S3Options
        from evsync.triggers.s3events import bucket_origin

        opts = S3Options(
            bucket="b",
            global_prefix="p/",
            endpoint_url="http://h:1",
            access_key="AK",
            secret_key="SECRET",
        )
        assert bucket_origin(opts) == "s3://b/p/"
        assert bucket_origin(S3Options(bucket="b", global_prefix="p/")) == "s3://b/p/"
