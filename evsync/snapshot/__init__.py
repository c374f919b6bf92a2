"""Snapshot objects: their names and the evs.zst stream format."""

from evsync.snapshot.codec import (
    KIND_DELTA,
    KIND_FULL,
    DbiEntries,
    DbiInfo,
    Entry,
    SnapshotHeader,
    SnapshotReader,
    read_header,
    verify_snapshot,
    write_snapshot,
)
from evsync.snapshot.name import SnapshotName, db_prefix, format_timestamp, try_parse

__all__ = [
    "KIND_DELTA",
    "KIND_FULL",
    "DbiEntries",
    "DbiInfo",
    "Entry",
    "SnapshotHeader",
    "SnapshotName",
    "SnapshotReader",
    "db_prefix",
    "format_timestamp",
    "read_header",
    "try_parse",
    "verify_snapshot",
    "write_snapshot",
]
