"""MQTT push source: S3 events, MinIO events and peer announcements arrive as hints.

One paho-mqtt client per process, with a stable client id derived from the
instance name (and the dbs, for a process started with ``--only-db``) and a
persistent session (MQTT 3.1.1 clean_session=False, or MQTT 5 session expiry), so
the broker queues events while evsync is down. paho reconnects with backoff by
itself; while the broker is away the listing keeps the sync going.
With ``publish: true`` the same client announces every stored object, retained, on
``<topic>/<db>/<instance>``, so any S3 works without bucket notifications. An
announcement is a hint, and the one of the greatest name (the newest object) says
everything an older one did: while the broker is away only that one per db waits, sent
on reconnect; and one whose name sorts below a name already announced for its db (a
checkpoint, stored after the deltas made during its dump, DESIGN §7) is published
without the retain flag, so the retained message stays the newest name.
A delta up to ``inline_max_bytes`` also goes out before its store, inside an inline
companion on the same topic (not retained, never queued while disconnected), naming the
sender's newest stored object; once the broker acknowledged a companion, its object's
announcement goes one level down, to ``<topic>/<db>/<instance>/carried``, which
instances that take companions do not subscribe to (:func:`subscriptions`): they hear
a small delta once. Received companions hand their object to the db's queue
(:meth:`HintQueue.put_carried`).

Message size: with MQTT 5 (``protocol: 5``) the CONNECT carries a maximum packet size
just above the parser's cap, so the broker drops a larger message instead of sending
it, and evsync never holds it. MQTT 3.1.1 has no such field: paho reads a packet whole
before evsync sees it, so there the cap belongs on the broker (Mosquitto's
``message_size_limit`` / ``max_packet_size``); evsync drops what exceeds its cap after
reading it (docs/operations.md).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import ssl
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from evsync import faults
from evsync.bounded import BoundedNames
from evsync.config import MAX_MQTT_INLINE_BYTES, MqttConfig
from evsync.metrics import INLINE_MALFORMED, Metrics
from evsync.triggers.base import SOURCE_MQTT, HintQueue, Trigger, hint_names
from evsync.triggers.s3events import (
    MAX_MESSAGE_BYTES,
    InlineObject,
    MalformedEventError,
    MalformedInlineError,
    ObjectEvent,
    announcement,
    inline_companion,
    is_foreign,
    object_names,
    parse_announcement,
)

log = logging.getLogger(__name__)

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
KEEPALIVE_SECONDS = 30
RECONNECT_MIN_SECONDS = 1
# paho doubles its wait after each failed attempt up to this: a broker that comes back
# is found within 5 s, and an attempt every 5 s costs a down broker nothing.
RECONNECT_MAX_SECONDS = 5
SESSION_EXPIRY_SECONDS = 7 * 24 * 3600  # MQTT 5: keep queued events for a week
# paho's own queue of unsent messages (announcements caught by a disconnect); past it a
# publish is dropped, which costs a hint, never data
MAX_QUEUED_MESSAGES = 100
MALFORMED_LOG_INTERVAL = 60.0
# The syncer waits up to this long for the broker to take a companion before it goes on
# to the store: paho writes from its own thread, which needs the GIL, and the store's
# request would hold it for up to the interpreter's switch interval (5 ms) at a time,
# so the message would leave late. On loopback the broker answers in well under 1 ms;
# a slow broker delays the store by this much at most.
COMPANION_SEND_SECONDS = 0.02
# Names whose companion went out, kept until their announcement (which follows the
# store at once); past this the oldest are forgotten (their store failed).
MAX_CARRIED_NAMES = 64
# Below ``<topic>/<db>/<instance>``: the announcements of objects a companion carried.
CARRIED_SUBTOPIC = "/carried"
# With the ``published`` fault armed, the companion is waited for this long (the broker
# takes it) before the process may die: the test means "died after publishing".
FAULT_PUBLISH_WAIT_SECONDS = 5.0
# MQTT 5 maximum packet size: the parser's message cap plus room for the fixed header,
# the topic and the properties, so every message the parser accepts still arrives.
PACKET_OVERHEAD_BYTES = 4096
MAX_PACKET_BYTES = MAX_MESSAGE_BYTES + PACKET_OVERHEAD_BYTES

# What a DISCONNECT reason means for evsync. paho reports a dropped connection (the
# broker stopped, the network went away, a TLS error) as "Unspecified error" (128), the
# same name MQTT 5 gives a broker's own vague DISCONNECT; both read best as a drop.
CONNECTION_DROPPED = "the connection dropped (broker stopped or restarted, or network lost)"
DISCONNECT_MEANINGS: Mapping[str, str] = {
    "Success": "the broker closed the connection",
    "Normal disconnection": "the broker closed the connection",
    "Unspecified error": CONNECTION_DROPPED,
    "Keep alive timeout": f"no answer from the broker within the {KEEPALIVE_SECONDS}s keepalive",
    "Session taken over": "another client connected with the same client id (two instances "
    "with one instance name?)",
    "Server shutting down": "the broker is shutting down",
    "Not authorized": "the broker no longer authorises this client",
    "Protocol error": "the broker reported a protocol error",
    "Server busy": "the broker is busy",
    "Quota exceeded": "the broker's quota for this client was exceeded",
    "Message rate too high": "the broker's message rate limit was exceeded",
    "Packet too large": "a packet was larger than the broker accepts",
    "Administrative action": "an administrator disconnected this client",
}


def disconnect_reason(reason_code: Any) -> str:
    """A DISCONNECT reason code in words: what happened, with the code's name when that
    adds something ("Unspecified error" alone says nothing)."""
    name = str(getattr(reason_code, "getName", lambda: reason_code)())
    meaning = DISCONNECT_MEANINGS.get(name)
    if meaning is None:
        return f"broker reason {name!r}"
    if name in ("Unspecified error", "Success", "Normal disconnection"):
        return meaning
    return f"{meaning} ({name})"


def client_id_for(instance: str, only_dbs: Iterable[str] | None = None) -> str:
    """A stable client id, so the broker finds the persistent session again.

    A process that syncs only some of the config's dbs (``--only-db``) adds them: two
    such processes of one instance would otherwise take the session from each other
    about once a second, and the events the broker gave the other one would be lost.
    """
    if only_dbs is None:
        return f"evsync-{instance}"
    return f"evsync-{instance}-" + "-".join(sorted(only_dbs))


def subscription_for(topic: str) -> str:
    """``t/#`` matches ``t`` itself and the announcements under it (MQTT 3.1.1 §4.7.1.2)."""
    if topic.endswith("#") or topic.endswith("+"):
        return topic
    return topic.rstrip("/") + "/#"


class MqttSource(Trigger):
    """Subscribes to the configured topics and turns object-created messages into hints."""

    source = SOURCE_MQTT

    def __init__(
        self,
        cfg: MqttConfig,
        instance: str,
        queues: Mapping[str, HintQueue],
        *,
        bucket: str | None,
        prefix: str = "",
        only_dbs: Iterable[str] | None = None,
        origin: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__()
        self.metrics = metrics
        self.cfg = cfg
        self.instance = instance
        self.client_id = client_id_for(instance, only_dbs)
        self.queues = dict(queues)
        self.bucket = bucket
        self.prefix = prefix
        #: the bucket as this instance reaches it (s3events.bucket_origin)
        self.origin = origin
        self.connected = threading.Event()
        self.malformed = 0
        #: events and announcements of another bucket, ignored
        self.other_bucket = 0
        self._last_other_log = -math.inf
        self.messages = 0
        self.failing_since: float | None = time.monotonic()
        self.last_error = "not connected yet"
        #: an attempt failed since the last connection (not merely "not connected yet")
        self.failed = False
        self._last_malformed_log = -math.inf  # the first one is always logged
        # While disconnected only the announcement of the greatest name per db is kept
        # (announcements are hints: the newest object's says everything an older one did).
        self._pending: dict[str, tuple[str, bytes]] = {}
        #: the greatest name announced (or pending) per db: an older one is not retained
        self._newest_announced: dict[str, str] = {}
        #: names whose companion the broker took: their announcement goes to the
        #: ``carried`` topic, which receivers that take companions do not hear
        self._carried_names = BoundedNames(MAX_CARRIED_NAMES)
        #: message ids (as text) an MQTT 5 broker acknowledged with a failure
        self._refused_mids = BoundedNames(MAX_CARRIED_NAMES)
        self._pending_lock = threading.Lock()
        #: companions are merged up to the protocol's limit, whatever this instance's
        #: own: it does not hear their objects' announcements (DESIGN §7)
        self._accepted = MAX_MQTT_INLINE_BYTES if cfg.inline_max_bytes else 0
        self._client = self._make_client()

    # ------------------------------------------------------------------ client set-up

    def _make_client(self) -> Any:
        cfg = self.cfg
        v5 = cfg.protocol == 5
        kwargs: dict[str, Any] = {
            "callback_api_version": CallbackAPIVersion.VERSION2,
            "client_id": self.client_id,
            "protocol": mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        }
        if not v5:
            kwargs["clean_session"] = False
        client = mqtt.Client(**kwargs)
        _set_credentials(client, cfg)
        client.reconnect_delay_set(RECONNECT_MIN_SECONDS, RECONNECT_MAX_SECONDS)
        client.max_queued_messages_set(MAX_QUEUED_MESSAGES)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def _address(self) -> tuple[str, int]:
        return _address_of(self.cfg)

    def start(self) -> None:
        host, port = self._address()
        connect_kwargs: dict[str, Any] = {"keepalive": KEEPALIVE_SECONDS}
        if self.cfg.protocol == 5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = SESSION_EXPIRY_SECONDS
            props.MaximumPacketSize = MAX_PACKET_BYTES  # the broker drops larger ones
            connect_kwargs.update(clean_start=False, properties=props)
        try:
            self._client.connect_async(host, port, **connect_kwargs)
        except (OSError, ValueError) as exc:
            self._fail(f"cannot connect to {host}:{port}: {exc}")
        self._client.loop_start()
        log.info("mqtt: connecting to %s:%d as %s", host, port, self.client_id)

    def run(self) -> None:  # paho runs its own network thread
        pass

    def stop(self) -> None:
        self._stop.set()  # before disconnecting, so the callback knows it was asked to
        self._client.disconnect()
        self._client.loop_stop()

    # ------------------------------------------------------------------ callbacks

    def _on_connect(
        self, client: Any, _userdata: Any, flags: Any, reason_code: Any, _properties: Any
    ) -> None:
        if reason_code.is_failure:
            self._fail(f"broker refused the connection: {reason_code}")
            return
        subs = subscriptions(self.cfg)
        client.subscribe(subs)
        stale = stale_subscriptions(self.cfg)
        if stale:  # an older version's, kept by the persistent session: heard twice
            client.unsubscribe(stale)
        self.connected.set()  # before taking the pending ones: see announce()
        self.failing_since = None
        self.failed = False
        self.last_error = ""
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        for topic, payload in pending.values():
            client.publish(topic, payload, qos=self.cfg.qos, retain=True)
        log.info(
            "mqtt: connected (session present: %s), subscribed to %s",
            getattr(flags, "session_present", None),
            ", ".join(s for s, _ in subs),
        )

    def _on_disconnect(
        self, _client: Any, _userdata: Any, _flags: Any, reason_code: Any, _properties: Any
    ) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            self._fail(f"disconnected: {disconnect_reason(reason_code)}; reconnecting")

    def _on_connect_fail(self, _client: Any, _userdata: Any) -> None:
        host, port = self._address()
        self._fail(f"cannot connect to {host}:{port}; retrying every {RECONNECT_MAX_SECONDS}s")

    def _fail(self, error: str) -> None:
        """A failed attempt: logged once per outage, and the health check shows it."""
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        if not self.failed:
            log.warning("mqtt: %s", error)
        self.failed = True
        self.last_error = error

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        self.messages += 1
        try:
            events, carried = parse_announcement(msg.payload, self._accepted, self.instance)
        except MalformedInlineError as exc:
            self._malformed(msg.topic, str(exc))
            queue = self.queues.get(exc.db)
            if queue is not None:
                queue.want_listing()  # its object is not announced where we listen
                if self.metrics is not None:
                    self.metrics.inline_objects.labels(exc.db, INLINE_MALFORMED).inc()
            return
        except MalformedEventError as exc:
            self._malformed(msg.topic, str(exc))
            return
        # the carried bytes first: they wake the loop, and the hints (a companion's
        # ``stored``, a confirmation) are read while it merges
        held = self._carried(carried) if carried is not None else True
        foreign = [e for e in events if is_foreign(e, self.bucket, self.origin)]
        if foreign:
            self._other_bucket(msg.topic, foreign[0].origin or foreign[0].bucket, len(foreign))
        hint_names(
            self.queues.values(),
            SOURCE_MQTT,
            object_names(events, self.bucket, self.prefix, self.origin),
        )
        if not held and events:
            assert carried is not None
            # the ``stored`` hint may have made its instance known
            self._carried(carried, again=True)

    def _on_publish(
        self, _client: Any, _userdata: Any, mid: int, reason_code: Any, _properties: Any
    ) -> None:
        """An MQTT 5 broker may acknowledge a message it refused (quota, size, ACL): such a
        companion was not taken (paho counts it as published all the same)."""
        if getattr(reason_code, "is_failure", False):
            with self._pending_lock:
                self._refused_mids.add(str(mid))

    def _carried(self, obj: InlineObject, *, again: bool = False) -> bool:
        """A companion's object, to its db's queue when it is of our bucket and prefix;
        False when the queue did not take it."""
        event = ObjectEvent(obj.bucket, obj.key, "ObjectCreated:Put", origin=obj.origin)
        queue = self.queues.get(obj.db)
        names = object_names([event], self.bucket, self.prefix, self.origin)
        if queue is not None and names and names[0].startswith(obj.db + "__"):
            return queue.put_carried(SOURCE_MQTT, names[0], obj.data, again=again)
        return True  # not ours: nothing to take again

    def _other_bucket(self, topic: str, theirs: str, count: int) -> None:
        """Counted; said once a minute (a shared broker carries them all the time)."""
        self.other_bucket += count
        now = time.monotonic()
        if now - self._last_other_log >= MALFORMED_LOG_INTERVAL:
            self._last_other_log = now
            log.info(
                "mqtt: ignoring events for another bucket on %s: %s (this instance syncs "
                "%s; %d ignored so far)",
                topic,
                theirs,
                self.origin or self.bucket,
                self.other_bucket,
            )

    def _malformed(self, topic: str, reason: str) -> None:
        self.malformed += 1
        now = time.monotonic()
        if now - self._last_malformed_log >= MALFORMED_LOG_INTERVAL:
            self._last_malformed_log = now
            log.warning(
                "mqtt: ignoring malformed message on %s: %s (%d so far)",
                topic,
                reason,
                self.malformed,
            )

    # ------------------------------------------------------------------ announcements

    def announce(self, db: str, name: str, size: int) -> None:
        """Publish an S3-event-shaped message for a stored object: retained unless its
        name sorts at or below one announced before for ``db``."""
        topic = announcement_topic(self.cfg, db, self.instance)
        with self._pending_lock:
            if name in self._carried_names:
                self._carried_names.discard(name)
                topic += CARRIED_SUBTOPIC
        payload = announcement(
            self.bucket or "",
            self.prefix + name,
            size,
            db=db,
            instance=self.instance,
            origin=self.origin,
        )
        with self._pending_lock:
            newest = self._newest_announced.get(db)
            retain = newest is None or name > newest
            if retain:
                self._newest_announced[db] = name
            if not self.connected.is_set():
                if retain:
                    self._pending[db] = (topic, payload)  # replaces an older one of this db
                return  # an older name than one pending or retained: nothing to add
        self._client.publish(topic, payload, qos=self.cfg.qos, retain=retain)

    def announce_carried(self, db: str, name: str, data: bytes) -> None:
        """Publish a small object's inline companion, before its store, if connected
        (never queued: the announcement after the store still comes, heard at least by
        those that do not take companions); not retained, so the retained message stays
        the announcement of a stored object. It names the
        newest object stored before it (``evsync.stored``), and once the broker took it
        the object's announcement goes to the ``carried`` topic (DESIGN §7)."""
        if len(data) > self.cfg.inline_max_bytes or not self.connected.is_set():
            return
        with self._pending_lock:
            stored = self._newest_announced.get(db)
        payload = inline_companion(
            self.bucket or "",
            self.prefix + name,
            data,
            db=db,
            instance=self.instance,
            origin=self.origin,
            stored=None if stored is None else self.prefix + stored,
        )
        topic = announcement_topic(self.cfg, db, self.instance)
        info = self._client.publish(topic, payload, qos=self.cfg.qos, retain=False)
        armed = faults.armed("published")
        with contextlib.suppress(RuntimeError, ValueError):  # lost connection, queue full
            info.wait_for_publish(FAULT_PUBLISH_WAIT_SECONDS if armed else COMPANION_SEND_SECONDS)
        with self._pending_lock:
            refused = str(info.mid) in self._refused_mids
            self._refused_mids.discard(str(info.mid))
            # at QoS 0 nothing says the broker took it (nor queues it for a receiver away
            # for a moment): its announcement stays where every receiver hears it
            if info.is_published() and not refused and self.cfg.qos > 0:
                self._carried_names.add(name)

    def status(self) -> dict[str, object]:
        """Connection state and counters."""
        return {
            "connected": self.connected.is_set(),
            "pending_announcements": len(self._pending),
            "messages": self.messages,
            "malformed": self.malformed,
            "other_bucket": self.other_bucket,
            "last_error": self.last_error,
        }


def _set_credentials(client: Any, cfg: MqttConfig) -> None:
    """Username and password, and TLS for ``mqtts://``, as the config says."""
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password)
    if urlparse(cfg.url).scheme == "mqtts":
        client.tls_set(
            ca_certs=cfg.tls.ca_file,
            certfile=cfg.tls.cert_file,
            keyfile=cfg.tls.key_file,
            cert_reqs=ssl.CERT_NONE if cfg.tls.insecure else ssl.CERT_REQUIRED,
        )
        if cfg.tls.insecure:
            client.tls_insecure_set(True)


def _address_of(cfg: MqttConfig) -> tuple[str, int]:
    url = urlparse(cfg.url)
    default = DEFAULT_TLS_PORT if url.scheme == "mqtts" else DEFAULT_PORT
    return url.hostname or "localhost", url.port or default


def announcement_topic(cfg: MqttConfig, db: str, instance: str) -> str:
    """Where an instance announces the objects of one db: under the first topic."""
    return f"{cfg.topics[0].rstrip('/#+').rstrip('/')}/{db}/{instance}"


def takes_companions(cfg: MqttConfig) -> bool:
    """Whether this instance merges companions, and so hears its peers' small deltas
    from them alone: its first topic, when given without a wildcard, is then subscribed
    down to the announcement level only, not to the ``carried`` topics below it."""
    first = cfg.topics[0]
    return cfg.inline_max_bytes > 0 and not first.endswith(("#", "+"))


def subscriptions(cfg: MqttConfig) -> list[tuple[str, int]]:
    """The topic filters this instance subscribes to, with the configured QoS.

    Every topic ``t`` is subscribed as ``t/#`` (``t`` and everything under it); for an
    instance that takes companions the first one is ``t``, ``t/+`` and ``t/+/+``
    instead: S3 events on ``t`` (or one level below) and the announcements and
    companions on ``t/<db>/<instance>``, but not ``t/<db>/<instance>/carried``, where a
    sender announces the objects whose companion already went out (DESIGN §7)."""
    topics = [subscription_for(t) for t in cfg.topics]
    if takes_companions(cfg):
        topics[0:1] = _down_to_announcements(cfg.topics[0])
    return [(t, cfg.qos) for t in dict.fromkeys(topics)]


def _down_to_announcements(topic: str) -> list[str]:
    """``t``, ``t/+`` and ``t/+/+``: a plain topic down to the announcement level."""
    plain = topic.rstrip("/")
    return [plain, f"{plain}/+", f"{plain}/+/+"]


def stale_subscriptions(cfg: MqttConfig) -> list[str]:
    """Filters of the first topic that the persistent session may keep from a run with
    another setting (or an older evsync) and this one does not make: ``t/#`` when
    :func:`subscriptions` splits it, the split ones when it does not (both would deliver
    every message twice)."""
    first = cfg.topics[0]
    if first.endswith(("#", "+")):
        return []
    made = {t for t, _ in subscriptions(cfg)}
    forms = [subscription_for(first), *_down_to_announcements(first)]
    return [t for t in forms if t not in made]


# ``--only-once`` waits this long for the broker to take its announcements.
ONCE_PUBLISH_SECONDS = 10.0


def publish_once(
    cfg: MqttConfig,
    instance: str,
    messages: list[tuple[str, bytes]],
    timeout: float = ONCE_PUBLISH_SECONDS,
) -> bool:
    """Publish ``(topic, payload)`` announcements from a short-lived client and wait for
    the broker to take them; False (with one warning) when it did not in ``timeout``.

    For ``sync --only-once``: its own client id and a clean session, so it neither takes
    the daemon's persistent session (and the events queued there) nor leaves one behind.
    """
    host, port = _address_of(cfg)
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"{client_id_for(instance)}-once-{os.getpid()}",
        protocol=mqtt.MQTTv5 if cfg.protocol == 5 else mqtt.MQTTv311,
    )
    _set_credentials(client, cfg)
    deadline = time.monotonic() + timeout
    try:
        client.connect(host, port)
        client.loop_start()
        infos = [client.publish(t, p, qos=cfg.qos, retain=True) for t, p in messages]
        for info in infos:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        ok = all(info.is_published() for info in infos)
    except (OSError, ValueError, RuntimeError) as exc:
        log.warning(
            "mqtt: could not announce %d object(s) at %s:%d: %s", len(messages), host, port, exc
        )
        return False
    finally:
        client.disconnect()
        client.loop_stop()
    if not ok:
        log.warning(
            "mqtt: the broker at %s:%d did not take %d announcement(s) in %gs",
            host,
            port,
            len(messages),
            timeout,
        )
    return ok
