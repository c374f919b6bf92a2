"""Dump the synced DBIs of an LMDB into a snapshot object, in one read txn.

The object is written by a :class:`~evsync.snapshot.base.SnapshotFormat` (``.evs.zst``
unless the caller passes another); this module only decides which entries go in.

Native mode dumps the data DBIs themselves; shadow mode dumps each data DBI's
``_sync_shadow_*`` copy under the data DBI's name, flags and transform.
"""

from __future__ import annotations

import functools
import itertools
import operator
import socket
import struct
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from evsync.errors import HeaderError, LmdbError
from evsync.lmdb.dupsort import TRANSFORM_NAME
from evsync.lmdb.env import DUP_FLAGS, MDB_DUPSORT, SHADOW_PREFIX, LmdbEnv, is_sync_dbi
from evsync.lmdb.header import (
    BLOCK_SIZE,
    HEADER_SIZE,
    HEADER_STRUCT,
    HEADER_VERSION,
    SYNC_FLAG_MASK,
    parse_header,
)
from evsync.lmdb.pagewalk import ChangeFinder, Leaf
from evsync.snapshot.base import (
    KIND_DELTA,
    KIND_FULL,
    DbiInfo,
    Entry,
    SnapshotFormat,
    SnapshotHeader,
    WriteStats,
)
from evsync.snapshot.evs import EVS_ZST

# Said with a value that carries no valid header: nothing of the db uploads until it goes.
HEADER_ADVICE = (
    "with schema_tracks_changes: true every value must start with the 24-byte header of "
    "docs/design.md §2; rewrite or delete this key, or set schema_tracks_changes: false "
    "for an application that writes plain values"
)
_TXN_ID = struct.Struct(">Q").unpack_from  # the header's txn id, at offset 8


@dataclass(frozen=True)
class DumpResult:
    """A written dump: its header (with the txn id it reflects) and sizes."""

    header: SnapshotHeader
    stats: WriteStats


# A full dump reads a DBI in lists of this many entries and cuts their values column-wise
DUMP_CHUNK = 1024


class NativeEntries:
    """Entries of one native DBI in key order; a value without a valid header is an error.

    Iterate for single entries, or take lists with :meth:`chunks` (what the ``.evs.zst``
    writer does): each list is cut from the cursor's values by one ``struct`` unpack
    over their concatenation instead of a header parse per entry, which was most of a
    full dump's time."""

    def __init__(self, lenv: LmdbEnv, txn: Any, handle: Any, dbi: bytes) -> None:
        self._lenv = lenv
        self._cursor = txn.cursor(db=handle)
        self._dbi = dbi
        # A value too big for a leaf node lives in overflow pages; without any, a chunk
        # of 1,024 values holds a few MiB at most. With them, a chunk could hold 1,024
        # values of up to 64 MiB, so such a DBI is read one entry at a time, as before.
        stat = txn.stat(handle)
        self._chunk = DUMP_CHUNK if not stat["overflow_pages"] else 1

    def __iter__(self) -> Iterator[Entry]:
        for chunk in self.chunks():
            yield from chunk

    def chunks(self) -> Iterator[list[Entry]]:
        """The entries in lists of up to :data:`DUMP_CHUNK` (of one for a DBI that holds
        values in overflow pages)."""
        items = self._cursor.iternext(keys=True, values=True)
        while chunk := list(itertools.islice(items, self._chunk)):
            yield self._entries(chunk)

    def column_parts(
        self,
    ) -> Iterator[tuple[list[bytes], bytes, bytes, list[bytes] | tuple[bytes, ...], list[int]]]:
        """The entries column-wise, what a format-version-3 writer packs: per cursor
        chunk (keys, timestamps joined 8 bytes big-endian each, flags a byte each,
        values, their lengths), cut by one ``struct`` unpack that keeps each timestamp
        as its 8 stored bytes, so that no integer, entry tuple or msgpack call is made
        per entry."""
        items = self._cursor.iternext(keys=True, values=True)
        while chunk := list(itertools.islice(items, self._chunk)):
            keys = list(map(_FIRST, chunk))
            values = list(map(_SECOND, chunk))
            del chunk
            lengths = list(map(len, values))
            uniform = lengths.count(lengths[0]) == len(lengths)  # one pass, not min and max
            shortest = lengths[0] if uniform else min(lengths)
            if shortest >= HEADER_SIZE:
                if uniform:
                    layout = _uniform_column_layout(shortest, len(values))
                else:
                    layout = struct.Struct(">" + "".join(map(_column_format, lengths)))
                fields = layout.unpack(b"".join(values))
                flags = fields[2::5]
                if (
                    not any(fields[1::5])
                    and not any(fields[3::5])
                    and set(flags) <= _SYNCED_FLAGS
                ):
                    # fixed-size records (the common case) need no length per value
                    value_lengths = (
                        [shortest - HEADER_SIZE] * len(lengths)
                        if uniform
                        else [length - HEADER_SIZE for length in lengths]
                    )
                    yield keys, b"".join(fields[0::5]), bytes(flags), fields[4::5], value_lengths
                    continue
            entries = [self._entry(key, value) for key, value in zip(keys, values, strict=True)]
            stamps = struct.pack(f">{len(entries)}Q", *map(_STAMP, entries))
            app_values = list(map(_VALUE, entries))
            yield keys, stamps, bytes(map(_FLAGS, entries)), app_values, list(map(len, app_values))

    def _entries(self, chunk: list[tuple[bytes, bytes]]) -> list[Entry]:
        keys = list(map(_FIRST, chunk))
        values = list(map(_SECOND, chunk))
        lengths = list(map(len, values))
        shortest = min(lengths)
        if shortest >= HEADER_SIZE:
            if shortest == max(lengths):
                layout = _uniform_layout(shortest, len(values))
            else:
                layout = struct.Struct(">" + "".join(map(_field_format, lengths)))
            fields = layout.unpack(b"".join(values))
            flags = fields[2::5]
            # header version 0 and no extension blocks everywhere, and only the flag that
            # travels: the usual chunk, taken as it is
            if not any(fields[1::5]) and not any(fields[3::5]) and set(flags) <= _SYNCED_FLAGS:
                return list(zip(keys, fields[0::5], flags, fields[4::5], strict=True))
        return [self._entry(key, value) for key, value in chunk]

    def _entry(self, key: bytes, value: bytes) -> Entry:
        unpack = HEADER_STRUCT.unpack_from
        if len(value) >= HEADER_SIZE:
            ts, _txn, version, flags, _reserved, extra = unpack(value)
            offset = HEADER_SIZE + BLOCK_SIZE * extra
            if version == HEADER_VERSION and len(value) >= offset:
                return key, ts, flags & SYNC_FLAG_MASK, value[offset:]
        # not a valid header: the full parser names why
        return _entry(self._lenv, key, value, self._dbi)


def native_entries(lenv: LmdbEnv, txn: Any, handle: Any, dbi: bytes) -> NativeEntries:
    """Entries of one native DBI in key order; a value without a valid header is an error."""
    return NativeEntries(lenv, txn, handle, dbi)


@functools.lru_cache(maxsize=64)
def _uniform_layout(length: int, count: int) -> struct.Struct:
    """The unpacking of ``count`` values of ``length`` bytes each (fixed-size records are
    common, and compiling a layout costs about as much as using it)."""
    return struct.Struct(">" + _field_format(length) * count)


@functools.lru_cache(maxsize=4096)
def _field_format(length: int) -> str:
    """One stored value of ``length`` bytes as (timestamp, txn id skipped, version,
    flags, reserved skipped, extension count, the rest)."""
    return f"Q8xBB4xH{length - HEADER_SIZE}s"


@functools.lru_cache(maxsize=64)
def _uniform_column_layout(length: int, count: int) -> struct.Struct:
    """:func:`_uniform_layout`, with each timestamp kept as its 8 big-endian bytes."""
    return struct.Struct(">" + _column_format(length) * count)


@functools.lru_cache(maxsize=4096)
def _column_format(length: int) -> str:
    """:func:`_field_format` with the timestamp kept as its 8 bytes."""
    return f"8s8xBB4xH{length - HEADER_SIZE}s"


_FIRST = operator.itemgetter(0)
_SECOND = operator.itemgetter(1)
_STAMP = operator.itemgetter(1)
_FLAGS = operator.itemgetter(2)
_VALUE = operator.itemgetter(3)
_SYNCED_FLAGS = frozenset({0, SYNC_FLAG_MASK})


def dump_native(
    lenv: LmdbEnv,
    out: IO[bytes],
    *,
    db: str,
    instance: str,
    timestamp_ns: int,
    fmt: SnapshotFormat = EVS_ZST,
    finder: ChangeFinder | None = None,
) -> DumpResult:
    """Write a full object of every synced DBI as of one read txn; its snapshot is
    offered to ``finder`` (the next delta's changes are found from it)."""
    with lenv.read_synced_dbis() as (txn, named_handles):
        dbis = []
        handles = []
        for name, handle in named_handles:
            flags = lenv.dbi_flags(txn, handle)
            if flags & DUP_FLAGS:
                raise LmdbError(
                    f"lmdb {lenv.name}: DBI {name!r} is DUPSORT, which native mode cannot sync "
                    "(use schema_tracks_changes: false with dupsort_hack: true)"
                )
            dbis.append(DbiInfo(name, flags, "", int(txn.stat(handle)["entries"])))
            handles.append(handle)
        result = _write(
            lenv,
            out,
            txn,
            dbis,
            handles,
            db=db,
            instance=instance,
            timestamp_ns=timestamp_ns,
            txn_id=int(txn.id()),
            fmt=fmt,
        )
        if finder is not None:
            finder.offer(txn, [name for name, _handle in named_handles])
        return result


def dump_native_delta(
    lenv: LmdbEnv,
    out: IO[bytes],
    *,
    db: str,
    instance: str,
    timestamp_ns: int,
    base_timestamp_ns: int,
    since_txn: int,
    skip_txns: Container[int],
    max_entries: int,
    fmt: SnapshotFormat = EVS_ZST,
    finder: ChangeFinder | None = None,
) -> DumpResult | None:
    """Write a delta (DESIGN §7): the entries whose header txn id is after ``since_txn``
    and not one of ``skip_txns`` (evsync's own merges), as of one read txn.

    The header counts each DBI's entries before they are written, so the changed
    entries are collected first; None when more than ``max_entries`` changed (a full
    object is then the better upload). DBIs without changes are left out.

    With a ``finder`` only the leaf pages written since its pinned snapshot are read
    (:mod:`evsync.lmdb.pagewalk`); without one, or when it cannot tell, every entry is.
    Either way the same filter picks the same entries. The dump's snapshot is offered
    to the finder for the next delta.
    """
    with lenv.read_synced_dbis() as (txn, named_handles):
        dbis: list[DbiInfo] = []
        changed: list[list[Entry]] = []
        total = 0
        names = [name for name, _handle in named_handles]
        for _name, handle in named_handles:
            if lenv.dbi_flags(txn, handle) & DUP_FLAGS:
                return None  # dump_native names the problem
        leaves = finder.changed(txn, names, since_txn=since_txn) if finder is not None else None
        for name, handle in named_handles:
            flags = lenv.dbi_flags(txn, handle)
            if leaves is None:
                entries = _changed_entries(
                    lenv, txn, handle, name, since_txn=since_txn, skip_txns=skip_txns
                )
            else:
                entries = _entries_in_leaves(
                    lenv,
                    txn,
                    handle,
                    name,
                    leaves.get(name, ()),
                    since_txn=since_txn,
                    skip_txns=skip_txns,
                )
            total += len(entries)
            if total > max_entries:
                return None
            if entries:
                dbis.append(DbiInfo(name, flags, "", len(entries)))
                changed.append(entries)
        header = SnapshotHeader(
            db=db,
            instance=instance,
            hostname=socket.gethostname(),
            timestamp_ns=timestamp_ns,
            txn_id=int(txn.id()),
            dbis=tuple(dbis),
            kind=KIND_DELTA,
            base_timestamp_ns=base_timestamp_ns,
        )
        result = DumpResult(header, fmt.write(out, header, changed))
        if finder is not None:
            finder.offer(txn, names)
        return result


def _changed_entries(
    lenv: LmdbEnv, txn: Any, handle: Any, dbi: bytes, *, since_txn: int, skip_txns: Container[int]
) -> list[Entry]:
    # Values only, then the key of the few that changed: a scan of 1 M records costs
    # ~0.3 s this way against ~0.45 s with keys (docs/benchmarks.md).
    cursor = txn.cursor(db=handle)
    out: list[Entry] = []
    values = cursor.iternext(keys=False, values=True)
    _keep_changed(lenv, cursor, values, dbi, out, since_txn=since_txn, skip_txns=skip_txns)
    return out


def _keep_changed(
    lenv: LmdbEnv,
    cursor: Any,
    values: Iterable[bytes],
    dbi: bytes,
    out: list[Entry],
    *,
    since_txn: int,
    skip_txns: Container[int],
) -> None:
    """Append to ``out`` the entries among ``values`` (read through ``cursor``) that a
    txn after ``since_txn`` wrote, evsync's own merge txns (``skip_txns``) left out."""
    for value in values:
        if len(value) >= HEADER_SIZE:
            txn_id = _TXN_ID(value, 8)[0]
            if txn_id <= since_txn or txn_id in skip_txns:
                continue
        out.append(_entry(lenv, cursor.key(), value, dbi))


def _entries_in_leaves(
    lenv: LmdbEnv,
    txn: Any,
    handle: Any,
    dbi: bytes,
    leaves: Iterable[Leaf],
    *,
    since_txn: int,
    skip_txns: Container[int],
) -> list[Entry]:
    """:func:`_changed_entries`, over the entries of some leaf pages only."""
    cursor = txn.cursor(db=handle)
    out: list[Entry] = []
    for leaf in leaves:
        # The leaf's entries are the ``entries`` from its first key on, in the cursor's
        # order, whatever the DBI's comparator (reverse or integer keys).
        if not cursor.set_key(leaf.first_key):
            raise LmdbError(f"lmdb {lenv.name}: a changed leaf's first key is not in its txn")
        values = itertools.islice(cursor.iternext(keys=False, values=True), leaf.entries)
        _keep_changed(lenv, cursor, values, dbi, out, since_txn=since_txn, skip_txns=skip_txns)
    return out


def _entry(lenv: LmdbEnv, key: bytes, value: bytes, dbi: bytes) -> Entry:
    """One stored value as an entry; a value without a valid header is an error."""
    try:
        header = parse_header(value)
    except HeaderError as exc:
        raise LmdbError(
            f"lmdb {lenv.name}: DBI {dbi.decode(errors='replace')!r} key {bytes(key)[:64]!r}: "
            f"{exc} ({HEADER_ADVICE})"
        ) from None
    return key, header.timestamp, header.flags & SYNC_FLAG_MASK, value[header.offset :]


def dump_shadow(
    lenv: LmdbEnv,
    out: IO[bytes],
    *,
    db: str,
    instance: str,
    timestamp_ns: int,
    txn_id: int,
    fmt: SnapshotFormat = EVS_ZST,
) -> DumpResult:
    """Write a full object of the shadow DBIs; ``txn_id`` is the main txn they reflect.

    The read txn may see later commits to *main*; those are not in the shadow yet, so
    the header names the txn of the last main -> shadow pass, not the read txn.
    """
    with lenv.read_synced_dbis(include_sync=True) as (txn, named_handles):
        by_name = dict(named_handles)
        dbis = []
        handles = []
        for name, handle in named_handles:
            shadow = by_name.get(SHADOW_PREFIX + name)
            if is_sync_dbi(name) or shadow is None:
                continue  # a DBI newer than the last main -> shadow pass waits for the next
            flags = lenv.dbi_flags(txn, handle)
            transform = TRANSFORM_NAME if flags & MDB_DUPSORT else ""
            dbis.append(DbiInfo(name, flags, transform, int(txn.stat(shadow)["entries"])))
            handles.append(shadow)
        return _write(
            lenv,
            out,
            txn,
            dbis,
            handles,
            db=db,
            instance=instance,
            timestamp_ns=timestamp_ns,
            txn_id=txn_id,
            fmt=fmt,
        )


def _write(
    lenv: LmdbEnv,
    out: IO[bytes],
    txn: Any,
    dbis: list[DbiInfo],
    handles: list[Any],
    *,
    db: str,
    instance: str,
    timestamp_ns: int,
    txn_id: int,
    fmt: SnapshotFormat,
) -> DumpResult:
    header = SnapshotHeader(
        db=db,
        instance=instance,
        hostname=socket.gethostname(),
        timestamp_ns=timestamp_ns,
        txn_id=txn_id,
        dbis=tuple(dbis),
        kind=KIND_FULL,
    )
    stats = fmt.write(
        out,
        header,
        (native_entries(lenv, txn, h, d.name) for h, d in zip(handles, dbis, strict=True)),
    )
    return DumpResult(header, stats)
