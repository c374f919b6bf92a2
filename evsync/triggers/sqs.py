"""SQS push source: S3 -> SQS or S3 -> SNS -> SQS object-created events arrive as hints.

Long polls (20 s) for batches of up to 10 messages. A message is deleted once its
hints are queued — hints are idempotent, and the listing repairs anything lost —
and a malformed message is deleted and counted, never retried for ever.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from evsync.config import SqsConfig
from evsync.triggers.base import SOURCE_SQS, HintQueue, Trigger, hint_names
from evsync.triggers.s3events import MalformedEventError, object_names, parse_message

log = logging.getLogger(__name__)

LONG_POLL_SECONDS = 20
MAX_MESSAGES = 10
ERROR_BACKOFF_MAX = 30.0
MALFORMED_LOG_INTERVAL = 60.0
STOP_JOIN_SECONDS = 0.2


class SqsSource(Trigger):
    """Receives S3 events from one SQS queue (one queue per instance)."""

    source = SOURCE_SQS

    def __init__(
        self,
        cfg: SqsConfig,
        queues: Mapping[str, HintQueue],
        *,
        bucket: str | None,
        prefix: str = "",
        credentials: Mapping[str, str] | None = None,
        wait_seconds: int = LONG_POLL_SECONDS,
    ) -> None:
        super().__init__()
        import boto3

        self.cfg = cfg
        self.queues = dict(queues)
        self.bucket = bucket
        self.prefix = prefix
        self.wait_seconds = wait_seconds
        self.messages = 0
        self.malformed = 0
        self.failing_since: float | None = None
        self.last_error = ""
        self._last_malformed_log = -math.inf  # the first one is always logged
        self._client: Any = boto3.session.Session(**dict(credentials or {})).client(
            "sqs", region_name=cfg.region, endpoint_url=cfg.endpoint_url
        )

    @property
    def failed(self) -> bool:
        """True while receiving fails (since the last successful poll)."""
        return self.failing_since is not None

    def run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            try:
                self.poll_once()
                backoff = 0.0
            except Exception as exc:  # noqa: BLE001 - a queue outage must not end the source
                backoff = min(max(backoff * 2, 1.0), ERROR_BACKOFF_MAX)
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
                    log.warning(
                        "sqs: receiving from %s failed: %s; retrying", self.cfg.queue_url, exc
                    )
                self.last_error = str(exc)
                self._stop.wait(backoff)

    def poll_once(self) -> int:
        """One long poll; returns the number of messages handled."""
        resp = self._client.receive_message(
            QueueUrl=self.cfg.queue_url,
            MaxNumberOfMessages=MAX_MESSAGES,
            WaitTimeSeconds=self.wait_seconds,
        )
        self.failing_since = None
        self.last_error = ""
        messages = resp.get("Messages", [])
        done = []
        for msg in messages:
            if self._stop.is_set():
                break  # undeleted messages come back after their visibility timeout
            self.messages += 1
            self._handle(msg.get("Body", ""))
            done.append({"Id": msg["MessageId"], "ReceiptHandle": msg["ReceiptHandle"]})
        if done:
            self._client.delete_message_batch(QueueUrl=self.cfg.queue_url, Entries=done)
        return len(messages)

    def _handle(self, body: str) -> None:
        try:
            events = parse_message(body)
        except MalformedEventError as exc:
            self.malformed += 1
            now = time.monotonic()
            if now - self._last_malformed_log >= MALFORMED_LOG_INTERVAL:
                self._last_malformed_log = now
                log.warning("sqs: deleting malformed message: %s (%d so far)", exc, self.malformed)
            return
        hint_names(self.queues.values(), SOURCE_SQS, object_names(events, self.bucket, self.prefix))

    def stop(self) -> None:
        """Don't wait out a long poll: messages it receives come back after their
        visibility timeout, and hints are idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_JOIN_SECONDS)

    def status(self) -> dict[str, object]:
        """Counters and the last error."""
        return {
            "messages": self.messages,
            "malformed": self.malformed,
            "failing": self.failing_since is not None,
            "last_error": self.last_error,
        }
