"""Parse every shape of "an object was created" message into object names.

Shapes accepted (see shared/reference/notifications.md):

- AWS S3 event JSON: ``{"Records": [{"eventName": "ObjectCreated:Put", "s3": {...}}]}``;
- MinIO's ``notify_mqtt`` message: ``{"EventName": ..., "Key": "bucket/key", "Records": [...]}``;
- an SNS envelope whose ``Message`` is a JSON string holding one of the above;
- evsync's own announcement, which is S3-event-shaped (``eventSource: "evsync"``); its
  top-level ``evsync`` map names the db, the instance and (since issue 16) the bucket
  as the announcer reaches it (:func:`bucket_origin`), so a cluster sharing a broker
  and a bucket *name* with another one (two LocalStacks, two fs directories) ignores
  the other's announcements. Announcements without it are read as before.

evsync's *inline companion* (issue 18): a delta small enough travels, base64-encoded,
in ``evsync.inline`` of a message whose ``Records`` list is empty, published just
before the object is stored and followed by the announcement above once it is. Any
reader of S3 events (evsync before the companion, too) finds no record in it and
ignores it; :func:`parse_announcement` hands the object out as an
:class:`InlineObject`, or raises :class:`MalformedInlineError` when it is unusable.

``s3:TestEvent`` messages, removals, other buckets and keys outside the global prefix
are ignored, not errors. Keys are URL-decoded (``unquote_plus``) as S3 sends them.
Anything else raises :class:`MalformedEventError` with a short reason.
"""

from __future__ import annotations

import binascii
import json
import os
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote_plus, unquote_plus

from evsync.config import FsOptions, S3Options, StorageOptions
from evsync.errors import EvsyncError

MAX_MESSAGE_BYTES = 256 * 1024  # S3 events are at most 64 KB; SNS adds an envelope
MAX_RECORDS = 1000
ANNOUNCEMENT_SOURCE = "evsync"


class MalformedEventError(EvsyncError):
    """A notification that is not any shape evsync understands."""


class MalformedInlineError(EvsyncError):
    """An inline companion whose object cannot be used; ``db`` is its db when known."""

    def __init__(self, reason: str, db: str = "") -> None:
        super().__init__(reason)
        self.db = db


@dataclass(frozen=True)
class InlineObject:
    """An object carried in an inline companion: its key, as an S3 event would name it,
    and its bytes (their length checked against the size the message states)."""

    bucket: str
    key: str
    data: bytes
    db: str
    instance: str
    #: the announcer's bucket as it reaches it ("" unknown)
    origin: str = ""


@dataclass(frozen=True)
class ObjectEvent:
    """One object-created record."""

    bucket: str
    key: str
    event_name: str
    source: str = ""
    #: the announcer's bucket as it reaches it (evsync announcements only; "" unknown)
    origin: str = ""


def parse_message(payload: bytes | str) -> list[ObjectEvent]:
    """All object-created records of one message (empty for test events and removals)."""
    return _parse(_load(payload), depth=0)


def parse_announcement(
    payload: bytes | str, inline_max_bytes: int, own_instance: str | None = None
) -> tuple[list[ObjectEvent], InlineObject | None]:
    """:func:`parse_message`, plus the object of an inline companion when there is one
    and ``inline_max_bytes`` admits it (0: companions are read as the empty messages
    they are); a companion of ``own_instance`` (an echo of our own) is not decoded.
    Raises :class:`MalformedInlineError` for a companion whose object is unusable (its
    records, none, are lost with it: the sender's next companion, an announcement or a
    listing names the object)."""
    data = _load(payload)
    events = _parse(data, depth=0)
    meta = data.get("evsync") if isinstance(data, dict) else None
    if not inline_max_bytes or not isinstance(meta, dict) or "inline" not in meta:
        return events, None
    if own_instance is not None and meta.get("instance") == own_instance:
        return events, None
    carried = _parse_inline(meta, inline_max_bytes)
    stored = _parse_stored(meta, carried)
    return (events if stored is None else [*events, stored]), carried


def _parse_inline(meta: dict[str, Any], max_bytes: int) -> InlineObject:
    """The companion's ``evsync`` map into an :class:`InlineObject`, every field checked."""
    given = meta.get("db")
    db = given if isinstance(given, str) else ""
    inline = meta["inline"]
    fields = (meta.get("instance"), *(
        inline.get(k) if isinstance(inline, dict) else None for k in ("bucket", "key", "data")
    ))
    if not (db and all(isinstance(f, str) for f in fields)):
        raise MalformedInlineError(
            "inline object without db, instance, bucket, key or data strings", db
        )
    instance, bucket, key, text = fields
    assert isinstance(instance, str) and isinstance(bucket, str)
    assert isinstance(key, str) and isinstance(text, str)
    size = inline.get("size")
    if isinstance(size, bool) or not isinstance(size, int):
        raise MalformedInlineError(f"inline object {key!r} without an integer size", db)
    if size > max_bytes:
        raise MalformedInlineError(
            f"inline object {key!r} of {size} bytes is over the {max_bytes} a companion "
            "may carry",
            db,
        )
    try:
        body = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedInlineError(f"inline object {key!r} is not base64: {exc}", db) from None
    if len(body) != size:
        raise MalformedInlineError(
            f"inline object {key!r} holds {len(body)} bytes, its message says {size}", db
        )
    origin = meta.get("bucket")
    return InlineObject(
        bucket, key, body, db, instance, origin if isinstance(origin, str) else ""
    )


def _parse_stored(meta: dict[str, Any], carried: InlineObject) -> ObjectEvent | None:
    """The companion's ``evsync.stored``: the sender's newest object stored before this
    one, as an event of the carried object's bucket (DESIGN §7: it confirms what an
    announcement would have)."""
    stored = meta.get("stored")
    if stored is None:
        return None
    key = stored.get("key") if isinstance(stored, dict) else None
    if not isinstance(key, str) or not key:
        raise MalformedInlineError(
            f"inline object {carried.key!r}: evsync.stored without a key string", carried.db
        )
    return ObjectEvent(
        carried.bucket, key, "ObjectCreated:Put", ANNOUNCEMENT_SOURCE, origin=carried.origin
    )


def _load(payload: bytes | str) -> Any:
    """The JSON of one message, within the size cap."""
    size = len(payload)
    if isinstance(payload, str) and size <= MAX_MESSAGE_BYTES:
        size = len(payload.encode("utf-8", "surrogatepass"))  # SQS bodies arrive as str
    if size > MAX_MESSAGE_BYTES:
        raise MalformedEventError(f"message too large ({size} bytes)")
    try:
        return json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise MalformedEventError(f"not JSON: {str(exc)[:80]}") from None


def _parse(data: Any, depth: int) -> list[ObjectEvent]:
    if not isinstance(data, dict):
        raise MalformedEventError(f"expected a JSON object, got {type(data).__name__}")
    if data.get("Event") == "s3:TestEvent" or data.get("Type") in (
        "SubscriptionConfirmation",
        "UnsubscribeConfirmation",
    ):
        return []
    if data.get("Type") == "Notification" and "Message" in data:
        if depth > 0:
            raise MalformedEventError("nested SNS envelopes")
        message = data["Message"]
        if not isinstance(message, str):
            raise MalformedEventError("SNS Message is not a string")
        try:
            inner = json.loads(message)
        except (ValueError, RecursionError):
            raise MalformedEventError("SNS Message is not JSON") from None
        return _parse(inner, depth + 1)
    records = data.get("Records")
    if not isinstance(records, list):
        raise MalformedEventError("no Records list")
    if len(records) > MAX_RECORDS:
        raise MalformedEventError(f"too many records ({len(records)})")
    events = []
    for record in records:
        event = _parse_record(record)
        if event is not None:
            events.append(event)
    meta = data.get("evsync")
    origin = meta.get("bucket") if isinstance(meta, dict) else None
    if isinstance(origin, str) and origin:
        events = [replace(e, origin=origin) for e in events]
    return events


def _parse_record(record: Any) -> ObjectEvent | None:
    if not isinstance(record, dict):
        raise MalformedEventError("a record is not an object")
    name = record.get("eventName")
    if not isinstance(name, str):
        raise MalformedEventError("record without eventName")
    if "ObjectCreated" not in name:
        return None  # removals and other events carry nothing to fetch
    s3 = record.get("s3")
    if not isinstance(s3, dict):
        raise MalformedEventError("record without s3")
    bucket = s3.get("bucket")
    obj = s3.get("object")
    if not (isinstance(bucket, dict) and isinstance(obj, dict)):
        raise MalformedEventError("record without s3.bucket or s3.object")
    bucket_name, key = bucket.get("name"), obj.get("key")
    if not (isinstance(bucket_name, str) and isinstance(key, str)):
        raise MalformedEventError("s3.bucket.name or s3.object.key is not a string")
    source = record.get("eventSource")
    return ObjectEvent(
        bucket_name, unquote_plus(key), name, source if isinstance(source, str) else ""
    )


def is_foreign(event: ObjectEvent, bucket: str | None, origin: str | None) -> bool:
    """True for an event of another bucket: another bucket name, or an announcement
    whose announcer reaches another bucket than ``origin`` (this instance's)."""
    if bucket is not None and event.bucket != bucket:
        return True
    return bool(origin and event.origin and event.origin != origin)


def object_names(
    events: list[ObjectEvent], bucket: str | None, prefix: str, origin: str | None = None
) -> list[str]:
    """Names (prefix stripped) of events for ``bucket`` (and ``origin``) under ``prefix``;
    others dropped."""
    names = []
    for event in events:
        if is_foreign(event, bucket, origin):
            continue
        if not event.key.startswith(prefix):
            continue
        name = event.key[len(prefix) :]
        if name and "/" not in name:
            names.append(name)
    return names


def bucket_origin(storage: StorageOptions) -> str | None:
    """The bucket as announcements name it: S3's bucket and prefix, or the fs directory;
    None for the in-memory store (nothing to share).

    The S3 endpoint is left out on purpose: the instances of one cluster often reach the
    bucket under different URLs (a gateway or regional endpoint per site, localhost on
    one host), and their announcements must count. Two clusters that share a broker and
    a bucket name on different S3 services still see each other's hints; a hint never
    trusted as truth, each costs one GET answering 404.
    """
    if isinstance(storage, S3Options):
        return f"s3://{storage.bucket}/{storage.global_prefix}"
    if isinstance(storage, FsOptions):
        return f"fs:{os.path.realpath(storage.root_path)}"
    return None


def announcement(
    bucket: str, key: str, size: int, *, db: str, instance: str, origin: str | None = None
) -> bytes:
    """evsync's S3-event-shaped message announcing a newly stored object."""
    record = {
        "eventVersion": "2.1",
        "eventSource": ANNOUNCEMENT_SOURCE,
        "eventName": "ObjectCreated:Put",
        "s3": {
            "bucket": {"name": bucket},
            "object": {"key": quote_plus(key, safe="/"), "size": size},
        },
    }
    meta = {"db": db, "instance": instance}
    if origin:
        meta["bucket"] = origin
    return json.dumps({"Records": [record], "evsync": meta}).encode()


def inline_companion(
    bucket: str,
    key: str,
    data: bytes,
    *,
    db: str,
    instance: str,
    origin: str | None = None,
    stored: str | None = None,
) -> bytes:
    """The message that carries a small object before it is stored: S3-event-shaped with
    no record (readers of S3 events ignore it), the object in ``evsync.inline``, and in
    ``evsync.stored`` the key of the sender's newest object already stored (the
    confirmation its announcement would bring, DESIGN §7)."""
    meta: dict[str, Any] = {"db": db, "instance": instance}
    if origin:
        meta["bucket"] = origin
    meta["inline"] = {
        "bucket": bucket,
        "key": key,
        "size": len(data),
        "data": binascii.b2a_base64(data, newline=False).decode("ascii"),
    }
    if stored:
        meta["stored"] = {"key": stored}
    return json.dumps({"Records": [], "evsync": meta}).encode()
