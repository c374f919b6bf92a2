"""Last-writer-wins merge of remote entries into the LMDB (DESIGN §3), in batched write txns."""

from __future__ import annotations

import functools
import logging
import operator
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, NamedTuple

import lmdb

from evsync import faults
from evsync.errors import HeaderError, LmdbError, PermanentLmdbError, SyncInterruptedError
from evsync.lmdb.env import (
    DUP_FLAGS,
    MDB_INTEGERKEY,
    MDB_REVERSEKEY,
    LmdbEnv,
    is_sync_dbi,
)
from evsync.lmdb.header import (
    FLAG_DELETED,
    HEADER_SIZE,
    SYNC_FLAG_MASK,
    encode_header,
    timestamp_and_offset,
)
from evsync.snapshot.base import STAMP_BYTES, Columns, DbiInfo, Entry

# what a batch is: the entries of a reader's list, or a version-3 block's column run
Batch = list[Entry] | Columns

log = logging.getLogger(__name__)

# A write txn is committed after this many entries or this long, whichever comes first,
# so that the application's writers never wait long for the LMDB write lock. The
# entries of a batch are decoded and checked before its txn begins; inside the txn they
# are merged in slices of TXN_SLICE (one getmulti, or a range probe, and one putmulti
# each), the clock is read after each slice, and the txn ends once its time is up.
BATCH_MAX_ENTRIES = 10_000
BATCH_MAX_SECONDS = 0.05
# 256, not more: a slice whose lookups miss a cold page cache can take ~100 µs per key,
# and the clock is only read between slices (1,024 merged ~5% faster, measured)
TXN_SLICE = 256
# Stored runs (a live receiver's periodic full object from a peer) are compared a window
# of this many entries at a time, read in order without lookups: ~6% less CPU than by
# slices of 256 (docs/benchmarks.md). A window with a difference costs its read twice.
RUN_WINDOW = 1024
MAX_MAP_GROWTHS = 16
# A slice's stored values are compared column-wise only while they add up to this
# much: the compare joins them, and 256 big values must not be held twice
RUN_COMPARE_MAX_BYTES = 4 << 20


def merge_entry(
    local: bytes | None,
    entry: Entry,
    txn_id: int,
    deleted_cutoff_ns: int = 0,
) -> bytes | None:
    """The value to write for a remote entry, or None to keep the local one.

    Rules, as Lightning Stream: a missing local entry is inserted (except a tombstone
    older than the cutoff); an older remote loses; at equal timestamps the byte-wise
    smaller application value wins, so a delete (empty value) wins a tie; a newer
    remote is written with the current txn id. Raises HeaderError on a corrupt local value.

    A tie must be decided by a total order on what travels — (application value,
    deleted flag) with a tombstone's value taken as empty — or instances that see the
    same two entries in different orders keep different ones for good. So a tombstone
    beats a live empty value at the same timestamp, whichever arrives first.
    """
    _key, ts, flags, value = entry
    flags &= SYNC_FLAG_MASK
    if flags:
        value = b""
    if not local:
        if flags and ts < deleted_cutoff_ns:
            return None
        return encode_header(ts, txn_id, flags) + value
    local_ts, offset = timestamp_and_offset(local)
    if ts < local_ts:
        return None
    if ts == local_ts and _tie_keeps_local(local, offset, value, flags):
        return None
    new = encode_header(ts, txn_id, flags) + value
    return None if new == local else new


def _tie_keeps_local(local: bytes, offset: int, value: bytes, remote_flags: int) -> bool:
    """At equal timestamps, True when the local entry orders first: smaller value, then
    deleted before live. The caller validated the local header, so its flags byte is
    read directly: a caught-up receiver meets a tie on every entry of a full object."""
    local_deleted = bool(local[_FLAGS_BYTE] & FLAG_DELETED)
    local_value = b"" if local_deleted else local[offset:]
    if local_value != value:
        return local_value < value
    return local_deleted or not remote_flags


@dataclass
class MergeResult:
    """What one object's merge did."""

    entries: int = 0
    written: int = 0
    txns: int = 0
    #: ids of committed txns that wrote something, in order
    txn_ids: list[int] = field(default_factory=list)
    dbis_created: list[bytes] = field(default_factory=list)
    longest_txn_seconds: float = 0.0


class Merger:
    """Merges a stream of (DbiInfo, entries) into one LMDB in short write transactions.

    The syncer verifies an object completely before it hands it over, so a batch
    never fails half-way because of the object; a corrupt *local* value aborts the
    current batch and raises LmdbError naming the DBI and key. Once ``stop`` is set, the
    next batch raises SyncInterruptedError instead of starting: batches committed before
    stay, which last-writer-wins makes safe, and the object is merged again later.
    """

    def __init__(
        self,
        lenv: LmdbEnv,
        *,
        deleted_cutoff_ns: int = 0,
        create_flags: Callable[[DbiInfo], int] | None = None,
        max_entries: int = BATCH_MAX_ENTRIES,
        max_seconds: float = BATCH_MAX_SECONDS,
        stop: threading.Event | None = None,
        result: MergeResult | None = None,
    ) -> None:
        self.lenv = lenv
        self.deleted_cutoff_ns = deleted_cutoff_ns
        self.create_flags = create_flags or (lambda info: info.flags)
        self.max_entries = max_entries
        self.max_seconds = max_seconds
        self.stop = stop
        #: what the merge did so far: pass one in to keep it when the merge raises
        self.result = MergeResult() if result is None else result

    def merge(self, dbis: Iterable[tuple[DbiInfo, Iterable[Entry]]]) -> MergeResult:
        """Merge every DBI; returns the counts."""
        for info, entries in dbis:
            if is_sync_dbi(info.name):
                log.warning(
                    "lmdb %s: ignoring remote DBI %r (reserved _sync prefix)",
                    self.lenv.name,
                    info.name,
                )
                continue
            if info.flags & DUP_FLAGS or info.transform:
                log.error(
                    "lmdb %s: cannot merge DBI %r: DUPSORT/transform %r needs shadow "
                    "mode with dupsort_hack",
                    self.lenv.name,
                    info.name,
                    info.transform,
                )
                continue
            self._merge_dbi(info, entries)
        return self.result

    def _merge_dbi(self, info: DbiInfo, entries: Iterable[Entry]) -> None:
        applied = False
        for batch in _batches(entries, self.max_entries):
            if self.stop is not None and self.stop.is_set():
                raise SyncInterruptedError(f"lmdb {self.lenv.name}: merge interrupted by shutdown")
            self._apply_batch(info, batch)
            applied = True
            del batch  # not kept alive beside the next batch while that one is decoded
        if not applied:
            self._create_empty(info)

    def _create_empty(self, info: DbiInfo) -> None:
        """A DBI the object holds without entries is created, as Lightning Stream does
        (an application may expect it to exist); nothing is written when it exists."""
        with self.lenv.begin() as txn:
            if self.lenv.has_dbi(txn, info.name):
                return
        for _growth in range(MAX_MAP_GROWTHS):
            try:
                with self.lenv.begin(write=True) as txn:
                    if self.lenv.has_dbi(txn, info.name):
                        return
                    flags = self.create_flags(info) & ~DUP_FLAGS
                    self.lenv.open_dbi(info.name, txn, create_flags=flags)
                    txn_id = txn.id()
            except lmdb.MapFullError:
                self.lenv.forget_dbi(info.name)
                self.lenv.grow_map()
                continue
            self.result.dbis_created.append(info.name)
            self.result.txns += 1
            self.result.txn_ids.append(txn_id)
            return
        raise PermanentLmdbError(
            f"lmdb {self.lenv.name}: map still full after {MAX_MAP_GROWTHS} growths"
        )

    def _apply_batch(self, info: DbiInfo, batch: Batch) -> None:
        done = 0
        growths = 0
        while done < len(batch):
            try:
                done += self._write_batch(info, batch, done)
            except lmdb.MapFullError:
                growths += 1
                if growths > MAX_MAP_GROWTHS:
                    raise PermanentLmdbError(
                        f"lmdb {self.lenv.name}: map still full after {MAX_MAP_GROWTHS} growths"
                    ) from None
                self.lenv.forget_dbi(info.name)
                self.lenv.grow_map()

    def _write_batch(self, info: DbiInfo, batch: Batch, start: int) -> int:
        """One write txn over ``batch[start:]``, ended early when its time is up; returns
        how many entries it covered."""
        t0 = time.monotonic()
        created = False
        with self.lenv.begin(write=True) as txn:
            if self.lenv.has_dbi(txn, info.name):
                handle = self.lenv.open_dbi(info.name, txn)
            else:
                flags = self.create_flags(info) & ~DUP_FLAGS
                handle = self.lenv.open_dbi(info.name, txn, create_flags=flags)
                created = True
            txn_id = txn.id()
            bytewise = not self.lenv.dbi_flags(txn, handle) & _OTHER_ORDER
            if isinstance(batch, Columns):
                covered, written = self._put_columns(
                    txn, handle, info, batch, start, txn_id, t0, bytewise=bytewise
                )
            else:
                covered, written = self._put_entries(
                    txn, handle, info, batch, start, txn_id, t0, bytewise=bytewise
                )
            faults.point("merge")
        if created:
            self.result.dbis_created.append(info.name)
        self.result.entries += covered
        self.result.written += written
        self.result.txns += 1
        if written or created:
            self.result.txn_ids.append(txn_id)
        self.result.longest_txn_seconds = max(
            self.result.longest_txn_seconds, time.monotonic() - t0
        )
        return covered

    def _put_entries(  # noqa: PLR0917 - the txn's state, passed once per txn
        self,
        txn: Any,
        handle: Any,
        info: DbiInfo,
        batch: list[Entry],
        start: int,
        txn_id: int,
        t0: float,
        *,
        bytewise: bool,
    ) -> tuple[int, int]:
        """Slices of ``batch[start:]`` until the batch or the txn's time is used up;
        ``bytewise`` says the DBI orders its keys as plain bytes."""
        cursor = txn.cursor(db=handle)
        deadline = t0 + self.max_seconds
        index, written = start, 0
        while index < len(batch):
            window = batch[index : index + RUN_WINDOW]
            if len(window) > TXN_SLICE and _window_unchanged(cursor, window):
                index += len(window)  # a peer's full object already merged: nothing to do
            else:
                piece = batch[index : index + TXN_SLICE]
                written += self._put_slice(cursor, info, piece, txn_id, bytewise=bytewise)
                index += len(piece)
            if time.monotonic() > deadline:
                break
        return index - start, written

    def _put_columns(  # noqa: PLR0917 - the txn's state, passed once per txn
        self,
        txn: Any,
        handle: Any,
        info: DbiInfo,
        run: Columns,
        start: int,
        txn_id: int,
        t0: float,
        *,
        bytewise: bool,
    ) -> tuple[int, int]:
        """:meth:`_put_entries` over a version-3 column run: a window already stored is
        compared blob to blob, a slice of new live keys is put from the blobs, and only
        any other slice is made into entries for the entry-by-entry merge."""
        cursor = txn.cursor(db=handle)
        deadline = t0 + self.max_seconds
        index, written = start, 0
        while index < len(run):
            stop = min(index + RUN_WINDOW, len(run))
            if stop - index > TXN_SLICE and _columns_unchanged(cursor, run, index, stop):
                index = stop
            else:
                stop = min(index + TXN_SLICE, len(run))
                written += self._put_column_slice(
                    cursor, info, run.sub(index, stop), txn_id, bytewise=bytewise
                )
                index = stop
            if time.monotonic() > deadline:
                break
        return index - start, written

    def _put_column_slice(
        self, cursor: Any, info: DbiInfo, piece: Columns, txn_id: int, *, bytewise: bool
    ) -> int:
        """:meth:`_put_slice` for a column slice: keys all new and live (the bulk of a
        first merge) are put with values joined from the blobs; anything else goes
        through the entry path. The reader checked that the keys strictly increase in
        the object's DBI order."""
        keys = piece.keys
        if piece.flags == _ZEROS[: len(keys)]:
            ascending = all(map(operator.lt, keys, islice(keys, 1, None)))
            stored = _stored_values(cursor, keys, probe=bytewise and ascending)
            if stored.run is None and not stored.values and ascending:
                pairs = _new_live_column_pairs(piece, txn_id)
                if stored.after_all:
                    _consumed, added = cursor.putmulti(pairs, append=True)
                    if added == len(keys):
                        return len(keys)
                    pairs = _new_live_column_pairs(piece, txn_id)  # never expected
                cursor.putmulti(pairs)
                return len(keys)
        return self._put_slice(cursor, info, piece.entries(), txn_id, bytewise=bytewise)

    def _put_slice(
        self, cursor: Any, info: DbiInfo, piece: list[Entry], txn_id: int, *, bytewise: bool
    ) -> int:
        """Merge one slice: one ``getmulti`` (or a range probe) for what exists, one
        ``putmulti`` for what changes. Returns how many entries were written."""
        keys = list(map(_KEY, piece))
        ascending = all(map(operator.lt, keys, islice(keys, 1, None)))
        stored = _stored_values(cursor, keys, probe=bytewise and ascending)
        if stored.run is not None:
            if _unchanged(stored.run, piece):
                return 0  # the periodic full object of a peer already merged: all equal
            stored = _Stored(dict(zip(keys, stored.run, strict=True)), after_all=False)
        # a key twice in one slice (only from a caller's own list: the reader refuses
        # that) must meet its first copy's result, so only distinct keys take the
        # fast path
        distinct = ascending or len(set(keys)) == len(keys)
        if distinct and not stored.values and not any(map(_FLAGS, piece)):
            # all new and live, the bulk of a first merge: built and put without a
            # Python step per entry
            pairs = _new_live_pairs(piece, keys, txn_id)
            if stored.after_all:
                _consumed, added = cursor.putmulti(pairs, append=True)
                if added == len(piece):
                    return len(piece)
                pairs = _new_live_pairs(piece, keys, txn_id)  # never expected; stay correct
            cursor.putmulti(pairs)
            return len(piece)
        puts = self._merged(piece, stored.values, txn_id, info)
        if puts:
            cursor.putmulti(puts)
        return len(puts)

    def _merged(
        self, piece: list[Entry], local: dict[bytes, bytes], txn_id: int, info: DbiInfo
    ) -> list[tuple[bytes, bytes]]:
        """The (key, value) pairs to write, entry by entry through :func:`merge_entry`.
        ``local`` is updated as entries are merged, so a repeated key meets its
        earlier copy's result."""
        puts = []
        cutoff = self.deleted_cutoff_ns
        for entry in piece:
            key = entry[0]
            try:
                new = merge_entry(local.get(key), entry, txn_id, cutoff)
            except HeaderError as exc:
                raise LmdbError(
                    f"lmdb {self.lenv.name}: DBI {info.name.decode(errors='replace')!r} "
                    f"key {key[:64]!r}: corrupt local value: {exc}"
                ) from None
            if new is not None:
                puts.append((key, new))
                local[key] = new
        return puts


class _Stored(NamedTuple):
    """What a slice's keys hold in the DBI before the slice is written."""

    #: the stored value of each key that has one
    values: dict[bytes, bytes]
    #: every key sorts after every stored key, so MDB_APPEND may write them
    after_all: bool
    #: when the DBI holds exactly the slice's keys, one after the other: their stored
    #: values in the slice's order (``values`` is then empty)
    run: list[bytes] | None = None


def _stored_values(cursor: Any, keys: list[bytes], *, probe: bool) -> _Stored:
    """The stored values of ``keys``.

    ``probe`` says the keys strictly increase in the DBI's own order; then one
    ``set_range`` can show the DBI holds nothing between the first and the last, and no
    key needs a lookup: the usual case when a new instance merges its first full object.

    Otherwise the stored entries from the first key on are read in cursor order, as
    many as the slice has: when their keys are the slice's keys, those are the stored
    values (a live receiver merging a peer's periodic full object, where nearly every
    key exists), read without a lookup per key. Any other slice is looked up.
    """
    if probe:
        if not cursor.set_range(keys[0]):
            return _Stored({}, after_all=True)
        if cursor.key() > keys[-1]:
            return _Stored({}, after_all=False)
        positioned = True
    else:
        positioned = cursor.set_range(keys[0])
    if positioned:
        run = list(islice(cursor.iternext(), len(keys)))
        if list(map(_KEY, run)) == keys:
            return _Stored({}, after_all=False, run=list(map(_RUN_VALUE, run)))
    return _Stored(dict(cursor.getmulti(keys)), after_all=False)


def _window_unchanged(cursor: Any, window: list[Entry]) -> bool:
    """True when the DBI holds exactly the window's keys one after the other, each with
    what its entry says (see :func:`_unchanged`): the window writes nothing. Reading a
    run of stored entries in order needs no lookup per key, so a window may be longer
    than a slice; when it answers False, its slices are merged one by one."""
    keys = list(map(_KEY, window))
    if not cursor.set_range(keys[0]):
        return False
    run = list(islice(cursor.iternext(), len(keys)))
    return list(map(_KEY, run)) == keys and _unchanged(list(map(_RUN_VALUE, run)), window)


def _unchanged(stored: list[bytes], piece: list[Entry]) -> bool:
    """True when every stored value already says what its remote entry says: the same
    timestamp, live on both sides, the same application value, and a canonical header
    (version 0, no flags, reserved bytes 0, no extension blocks), so that the merge rule
    (DESIGN §3: equal timestamps, equal values) writes nothing for any of them.

    Column-wise, so the loops run in C: the stored values are cut into (timestamp,
    rest of the header, application value) by one ``struct`` unpack over their
    concatenation, and each column is compared with the slice's at once. Anything
    else (a tombstone, a value shorter than a header, any difference) answers False
    and the slice takes the entry-by-entry merge."""
    if any(map(_FLAGS, piece)):
        return False
    lengths = list(map(len, stored))
    shortest = min(lengths)
    if shortest < HEADER_SIZE or sum(lengths) > RUN_COMPARE_MAX_BYTES:
        return False
    if shortest == max(lengths):
        layout = _uniform_layout(shortest, len(stored))
    else:
        layout = struct.Struct(">" + "".join(map(_field_format, lengths)))
    fields = layout.unpack(b"".join(stored))
    # the packed tail (version, flags, reserved, extension count) is 0 exactly when the
    # header is canonical and live
    return (
        not any(fields[1::3])
        and fields[0::3] == tuple(map(_STAMP, piece))
        and fields[2::3] == tuple(map(_VALUE, piece))
    )


@functools.lru_cache(maxsize=64)
def _uniform_layout(length: int, count: int) -> struct.Struct:
    """The unpacking of ``count`` stored values of ``length`` bytes each (fixed-size
    records are common, and compiling a layout costs as much as using it)."""
    return struct.Struct(">" + _field_format(length) * count)


@functools.lru_cache(maxsize=4096)
def _field_format(length: int) -> str:
    """One stored value of ``length`` bytes as (timestamp, txn id skipped, the rest of
    the header as one integer, application value)."""
    return f"Q8xQ{length - HEADER_SIZE}s"


def _columns_unchanged(cursor: Any, run: Columns, start: int, stop: int) -> bool:
    """:func:`_window_unchanged` for entries ``start`` to ``stop`` of a column run: the
    stored values are cut by one ``struct`` unpack into (timestamp bytes, the rest of
    the header, application value), and the joined timestamps and values are compared
    with the run's blobs, so the object side needs no Python object per entry."""
    if run.flags[start:stop] != _ZEROS[: stop - start]:
        return False  # a tombstone: the entry-by-entry rule decides
    keys = run.keys[start:stop]
    if not cursor.set_range(keys[0]):
        return False
    got = list(islice(cursor.iternext(), len(keys)))
    if list(map(_KEY, got)) != keys:
        return False
    stored = list(map(_RUN_VALUE, got))
    del got
    lengths = list(map(len, stored))
    alike = lengths.count(lengths[0]) == len(lengths)  # one pass, not a min and a max
    shortest = lengths[0] if alike else min(lengths)
    total = shortest * len(lengths) if alike else sum(lengths)
    if shortest < HEADER_SIZE or total > RUN_COMPARE_MAX_BYTES:
        return False
    if alike:
        if run.value_length != shortest - HEADER_SIZE:
            return False  # the run's values have other lengths (or not all one length)
        layout = _uniform_stamp_layout(shortest, len(stored))
    else:
        layout = struct.Struct(">" + "".join(map(_stamp_field_format, lengths)))
    fields = layout.unpack(b"".join(stored))
    values = fields[2::3]
    if not alike:
        offsets = run.offsets[start : stop + 1]
        if list(map(len, values)) != list(map(operator.sub, offsets[1:], offsets)):
            return False
    # the packed tail (version, flags, reserved, extension count) is 0 exactly when the
    # header is canonical and live
    return (
        not any(fields[1::3])
        and b"".join(fields[0::3]) == run.stamps[start * STAMP_BYTES : stop * STAMP_BYTES]
        and b"".join(values) == run.values[run.offsets[start] : run.offsets[stop]]
    )


@functools.lru_cache(maxsize=64)
def _uniform_stamp_layout(length: int, count: int) -> struct.Struct:
    """:func:`_uniform_layout` with each timestamp kept as its 8 bytes."""
    return struct.Struct(">" + _stamp_field_format(length) * count)


@functools.lru_cache(maxsize=4096)
def _stamp_field_format(length: int) -> str:
    """:func:`_field_format` with the timestamp kept as its 8 bytes."""
    return f"8s8xQ{length - HEADER_SIZE}s"


def _new_live_column_pairs(piece: Columns, txn_id: int) -> Iterator[Any]:
    """:func:`_new_live_pairs` from a column slice: each value is its 8 timestamp bytes,
    cut from the blob by one ``struct`` unpack, and its application value, joined by
    the 16 header bytes common to the slice."""
    join = encode_header(0, txn_id, 0)[_STAMP_BYTES:].join
    n = len(piece.keys)
    stamps = _stamp_cut(n).unpack(piece.stamps)
    if piece.value_length is not None:
        first = piece.offsets[0]
        values: Any = _value_cut(piece.value_length, n).unpack_from(piece.values, first)
    else:
        values = piece.value_list()
    return zip(piece.keys, map(join, zip(stamps, values, strict=True)), strict=True)


@functools.lru_cache(maxsize=16)
def _stamp_cut(count: int) -> struct.Struct:
    """The cut of a timestamp column of ``count`` entries into 8-byte strings."""
    return struct.Struct("8s" * count)


@functools.lru_cache(maxsize=64)
def _value_cut(length: int, count: int) -> struct.Struct:
    """The cut of ``count`` joined values of ``length`` bytes each."""
    return struct.Struct(f"{length}s" * count)


def _new_live_pairs(piece: list[Entry], keys: list[bytes], txn_id: int) -> Iterator[Any]:
    """(key, header + value) of entries new to the DBI and live. Their headers differ
    only in the timestamp, the first 8 bytes, so each value is the packed timestamp and
    the application value joined by the 16 header bytes common to the slice."""
    join = encode_header(0, txn_id, 0)[_STAMP_BYTES:].join
    stamps = map(_PACK_STAMP, map(_STAMP, piece))
    values = map(join, zip(stamps, map(_VALUE, piece), strict=True))
    return zip(keys, values, strict=True)


def _batches(entries: Iterable[Entry], size: int) -> Iterator[Batch]:
    """Lists of up to ``size`` entries: the reader's checked chunks where it has them,
    the column runs of a version-3 reader first."""
    columns = getattr(entries, "column_chunks", None)
    if columns is not None:
        yield from columns(size)
        return
    chunks = getattr(entries, "chunks", None)  # a format's EntryStream
    if chunks is not None:
        yield from chunks(size)
        return
    it = iter(entries)
    while batch := list(islice(it, size)):
        yield batch


# reverse or integer keys: LMDB's order is not the bytes' order
_OTHER_ORDER = MDB_REVERSEKEY | MDB_INTEGERKEY
_STAMP_BYTES = 8
# a flags column of live entries, to compare a run's flags with at once
_ZEROS = bytes(BATCH_MAX_ENTRIES)
_FLAGS_BYTE = 17  # the header's flags: after timestamp (8), txn id (8) and version (1)
_PACK_STAMP = struct.Struct(">Q").pack  # the first field of HEADER_STRUCT
_KEY = operator.itemgetter(0)
_RUN_VALUE = operator.itemgetter(1)
_STAMP = operator.itemgetter(1)
_FLAGS = operator.itemgetter(2)
_VALUE = operator.itemgetter(3)
