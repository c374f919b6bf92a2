"""Pausing Python's cyclic garbage collector while a large object is verified and merged."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_holders = 0
_was_enabled = False


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run the body with the cyclic collector off, then restore it as it was.

    Reading an object makes a tuple per entry and keeps a batch of them alive, so the
    collector would run every few hundred allocations and scan the survivors again:
    about a seventh of a 1 M-record verify and merge (docs/benchmarks.md). Reference
    counting still frees every entry; only garbage cycles made meanwhile, by any
    thread, wait for the end of the last pause. Pauses may nest and overlap across
    threads (one syncer per db): the collector comes back when the last one ends.
    """
    global _holders, _was_enabled  # noqa: PLW0603 - one process-wide switch, like gc's own
    with _lock:
        if _holders == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _was_enabled:
                gc.enable()
