"""Snapshot objects: their names, and the formats they are written in, chosen by extension.

- ``name.py``: ``<db>__<instance>__<ts>__<gen>[__extra].<ext>`` (DESIGN §4);
- ``base.py``: header and entry types, and the :class:`SnapshotFormat` interface;
- ``evs.py``: ``.evs.zst``, evsync's own format;
- ``lightningstream.py``: ``.pb.gz``, Lightning Stream's format (read and written).

:func:`format_for` is the one place that maps a name to the format that reads it; an
object whose extension no format claims is not evsync's to merge.
"""

from evsync.snapshot.base import (
    KIND_DELTA,
    KIND_FULL,
    DbiInfo,
    Entry,
    EntryStream,
    SnapshotFormat,
    SnapshotHeader,
    SnapshotStream,
    WriteStats,
)
from evsync.snapshot.evs import (
    EVS_ZST,
    DbiEntries,
    SnapshotReader,
    read_header,
    verify_snapshot,
    write_snapshot,
)
from evsync.snapshot.lightningstream import LS_PB_GZ
from evsync.snapshot.name import SnapshotName, db_prefix, format_timestamp, try_parse

#: every format evsync reads, by name extension
FORMATS: dict[str, SnapshotFormat] = {EVS_ZST.extension: EVS_ZST, LS_PB_GZ.extension: LS_PB_GZ}


def format_for(name: SnapshotName | str) -> SnapshotFormat | None:
    """The format that reads an object of this name, or None when evsync reads none."""
    if isinstance(name, SnapshotName):
        return FORMATS.get(name.ext)
    _base, dot, ext = name.partition(".")
    return FORMATS.get(ext) if dot else None


def readable_name(name: str, db: str) -> SnapshotName | None:
    """``name`` parsed, when it names an object of ``db`` that evsync reads; else None."""
    parsed = try_parse(name)
    if parsed is None or parsed.db != db or format_for(parsed) is None:
        return None
    return parsed


__all__ = [
    "EVS_ZST",
    "FORMATS",
    "KIND_DELTA",
    "KIND_FULL",
    "LS_PB_GZ",
    "DbiEntries",
    "DbiInfo",
    "Entry",
    "EntryStream",
    "SnapshotFormat",
    "SnapshotHeader",
    "SnapshotName",
    "SnapshotReader",
    "SnapshotStream",
    "WriteStats",
    "db_prefix",
    "format_for",
    "format_timestamp",
    "read_header",
    "readable_name",
    "try_parse",
    "verify_snapshot",
    "write_snapshot",
]
