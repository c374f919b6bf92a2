"""Trigger sources, one module each, all feeding a per-db HintQueue."""

from evsync.triggers.base import (
    SOURCES,
    Batch,
    Hint,
    HintQueue,
    Trigger,
)
from evsync.triggers.fs_watch import FsBucketWatcher
from evsync.triggers.listing import Lister, newest_per_instance
from evsync.triggers.lmdb_watch import LmdbWatcher, TxnObserver, TxnPoller

__all__ = [
    "SOURCES",
    "Batch",
    "FsBucketWatcher",
    "Hint",
    "HintQueue",
    "Lister",
    "LmdbWatcher",
    "Trigger",
    "TxnObserver",
    "TxnPoller",
    "newest_per_instance",
]
