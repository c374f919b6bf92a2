"""Pausing Python's cyclic garbage collector while a large object is verified and merged."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

# Pauses of several syncers may overlap for good; cycles made meanwhile are then
# collected at the end of any pause once the collector has been off this long.
MAX_PAUSE_SECONDS = 10.0

_lock = threading.Lock()
_holders = 0
_was_enabled = False
_off_since = 0.0


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run the body with the cyclic collector off, then restore it as it was.

    Reading an object makes a tuple per entry and keeps a batch of them alive, so the
    collector would run every few hundred allocations and scan the survivors again:
    about a seventh of a 1 M-record verify and merge (docs/benchmarks.md). Reference
    counting still frees every entry; only garbage cycles made meanwhile, by any
    thread, wait for the end of the last pause (or MAX_PAUSE_SECONDS). Pauses may nest
    and overlap across threads (one syncer per db): the collector comes back when the
    last one ends.
    """
    global _holders, _was_enabled, _off_since  # noqa: PLW0603 - one process-wide switch, like gc's own
    with _lock:
        if _holders == 0:
            _was_enabled = gc.isenabled()
            _off_since = time.monotonic()
            gc.disable()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                if _was_enabled:
                    gc.enable()
            elif _was_enabled and time.monotonic() - _off_since > MAX_PAUSE_SECONDS:
                gc.collect()
                _off_since = time.monotonic()
