"""Retry pacing for the loop's failing operations: a backoff per operation, and a tenacity stop.

Owned by the loop thread like everything in this package; nothing here sleeps except
through the stop event, so shutdown never waits for a backoff.
"""

from __future__ import annotations

import threading
import time

import tenacity

# Backoff between attempts of a failing load or listing, doubling up to the retry interval.
RETRY_BACKOFF_START = 0.1


class Backoff:
    """Exponential backoff for one failing operation, reset by a success."""

    def __init__(self, start: float, cap: float) -> None:
        self.start = start
        self.cap = max(cap, start)
        self.delay = 0.0
        self.not_before = 0.0

    def failed(self) -> None:
        """One more failure: the next attempt waits twice as long, up to the cap."""
        self.delay = self.start if self.delay == 0 else min(self.delay * 2, self.cap)
        self.not_before = time.monotonic() + self.delay

    def failed_for_good(self) -> None:
        """A failure that retrying soon will not fix: wait the longest from now on."""
        self.delay = self.cap
        self.not_before = time.monotonic() + self.delay

    def succeeded(self) -> None:
        """The operation works again: no wait."""
        self.delay = 0.0
        self.not_before = 0.0

    def ready(self) -> bool:
        """True when the backoff since the last failure has passed."""
        return time.monotonic() >= self.not_before


class StopOnEvent(tenacity.stop.stop_base):
    """Stop retrying once shutdown was requested."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self.event.is_set()
