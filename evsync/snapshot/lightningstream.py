"""The ``pb.gz`` object format of PowerDNS Lightning Stream (LS), read and written as
bounded-memory streams, so that evsync and LS instances can share one bucket.

Why a module of its own: LS's objects are one gzip stream holding one protobuf message
``Snapshot`` (docs/design.md §4, ``/work/shared/reference/lightningstream-format.md``).
A DBI message may hold millions of KVs, so neither the payload nor one DBI message is
ever held whole: the reader inflates in pieces and parses the protobuf incrementally;
the writer spools each DBI's encoded KVs (memory first, then a temporary file) because a
DBI's length prefix precedes its entries. No protobuf library: LS's own runtime codec is
hand-written too, and the wire format of four small messages is little code.

Wire schema (proto3), as LS writes it, each zero or empty field left out::

    Snapshot  1 formatVersion varint   4 compatVersion varint   2 meta Meta
              3 databases DBI (repeated)
    Meta      1 generationID  2 instanceID  3 hostname  7 databaseName (strings)
              4 lmdbTxnID varint (int64)  5 timestampNano fixed64  8 fromLmdbTxnID varint
    DBI       1 name  3 flags varint  4 transform string  2 entries KV (repeated)
    KV        1 key  2 value  4 flags varint  3 timestampNano fixed64

Reading rules (LS's, and evsync's where they differ):

* gzip multistream (every member read in turn); anything that is not gzip, a member cut
  off, or bytes after the last member that are not a gzip member: CorruptObjectError.
* formatVersion 1..3, and higher when compatVersion <= 3 (read with the v3 rules);
  formatVersion 0 or missing, or compatVersion > 3: CorruptObjectError. LS *exits* on
  those; evsync never exits on an object, it rejects it once with one line.
* v1: an empty value means deleted, so the entry is handed out with the deleted flag.
  KV flags are masked to 0x01 (Deleted), as LS does.
* format >= 3: MDB_DUPSORT (0x04) and the ``dupsort_hack_v1`` transform go together, both
  ways; any other transform is unknown and rejected; transformed keys must decode.
* unknown fields are skipped at every level, with their wire types checked (groups are
  refused); a known field with the wrong wire type is corrupt. Unlike LS (a skip bug in
  its DBI indexing, probe D2) evsync reads an unknown DBI-level field correctly.
* an empty KV message (LS exits on it, probe M), a KV without a key or with a key over
  511 bytes (LMDB's limit), a KV over the 64 MiB entry cap: rejected.
* entries need not be sorted and a key may repeat (LS merges per key, probe I); the
  merge copes with both. A DBI's name, flags and transform must precede its entries
  (LS writes them first): a DBI that sets them after an entry is rejected, because a
  stream cannot go back to re-read what it handed out.
* formatVersion decides how entries read, so it is wanted before the first DBI (LS
  writes it first). If it only comes later, entries are read with the v3 rules and
  the object is rejected at its end unless the formatVersion then says 3 or more.
  compatVersion and Meta may come anywhere; the header is complete at open in LS's
  wire order, otherwise once the last DBI is read (``verify`` returns that header).
* entry counts are not known up front: a DBI's :class:`DbiInfo` says ``entries=0``
  when it is handed out; the reader's header after the last DBI has the real counts.

:data:`LS_PB_GZ` is this module behind the :class:`~evsync.snapshot.base.SnapshotFormat`
interface, the way the sender and the receiver use it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from itertools import repeat
from typing import IO, Any

from evsync.errors import (
    CorruptObjectError,
    EntryTooLargeError,
    ObjectTooLargeError,
    TransformError,
)
from evsync.lmdb.dupsort import TRANSFORM_NAME, decode_key
from evsync.snapshot.base import (
    KIND_FULL,
    DbiInfo,
    Entry,
    SnapshotFormat,
    SnapshotHeader,
    WriteStats,
)
from evsync.snapshot.evs import CHECK_CHUNK, CHUNK_MAX_BYTES, MAX_ENTRY_BYTES, MAX_KEY_BYTES
from evsync.snapshot.name import EXT_LIGHTNINGSTREAM, GENERATION

log = logging.getLogger(__name__)

# What evsync writes: LS's own current values (LS 5e7215e, snapshot/formatversion.go).
WRITE_FORMAT_VERSION = 3
WRITE_COMPAT_VERSION = 1
# The newest format whose rules evsync knows: a compatVersion above it needs a newer reader.
KNOWN_FORMAT_VERSION = 3
# v2 added KV.flags; before it an empty value meant deleted.
FORMAT_KV_FLAGS = 2
# v3 made DBI.flags those of the original DBI and added the transform pairing rule.
FORMAT_TRANSFORMS = 3
TRANSFORMS = ("", TRANSFORM_NAME)
MDB_DUPSORT = 0x04
# LS reads DBI flags into a 16-bit type (lmdbenv/dbiflags): anything wider is not LMDB's.
MAX_DBI_FLAGS = 0xFFFF
FLAG_DELETED = 0x01
SYNC_FLAG_MASK = FLAG_DELETED  # the only KV flag LS keeps

# protobuf wire types
WT_VARINT = 0
WT_FIXED64 = 1
WT_LEN = 2
WT_FIXED32 = 5
MAX_VARINT_BYTES = 10
U64 = 1 << 64
I64_SIGN = 1 << 63
_FIXED64 = struct.Struct("<Q")

# Bounds of what a reader holds: Meta is a handful of short strings; a transform name
# is one of two known strings; a snapshot of more DBIs than this is no real LMDB's
# (LMDB's max_dbs is set by hand and is small), and the header lists every DBI.
MAX_META_BYTES = 64 << 10
MAX_TRANSFORM_BYTES = 64
MAX_DBIS = 4096

READ_CHUNK = 64 << 10
# zlib.decompress(max_length=...): one call yields at most this much, whatever a bomb
# packs into a few bytes, so the reader's buffer stays small.
INFLATE_PIECE = 1 << 20

# Writer: level 1 is LS's own (BestSpeed); more costs much time for little size.
GZIP_LEVEL = 1
GZIP_WBITS = 31  # zlib writes the gzip header and trailer (one member)
# A DBI's encoded KVs stay in memory up to this size, then go to a temporary file: its
# length prefix needs its size, which is known only after its last entry. 1 MiB costs
# no time against 8 MiB (measured: a 200,000-entry dump 110 ms either way) and keeps
# the writer's heap near 2 MB; the file takes the DBI's protobuf size on disk, beside
# the object being written when that is a file, else in TMPDIR.
SPOOL_MEMORY = 1 << 20
COPY_CHUNK = 1 << 20
# varints below this come from tables (lengths of keys and of most values and KVs)
_TABLE_SIZE = 1 << 14


def _encode_varint(n: int) -> bytes:
    if n < 0:
        n += U64  # int64 as LS writes it: two's complement, not zigzag
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_VARINT = [_encode_varint(n) for n in range(_TABLE_SIZE)]


def _tag(field: int, wire_type: int) -> bytes:
    return _encode_varint(field << 3 | wire_type)


def _len_field(tag: int, data: bytes) -> bytes:
    """A length-delimited field with its (one-byte) tag."""
    return bytes([tag]) + _encode_varint(len(data)) + data


# tags of the fields written (and of the ones the reader's fast paths look for)
TAG_SNAP_FORMAT = 0x08  # 1 varint
TAG_SNAP_META = 0x12  # 2 len
TAG_SNAP_DBI = 0x1A  # 3 len
TAG_SNAP_COMPAT = 0x20  # 4 varint
TAG_DBI_NAME = 0x0A  # 1 len
TAG_DBI_KV = 0x12  # 2 len
TAG_DBI_FLAGS = 0x18  # 3 varint
TAG_DBI_TRANSFORM = 0x22  # 4 len
TAG_KV_KEY = 0x0A  # 1 len
TAG_KV_VALUE = 0x12  # 2 len
TAG_KV_TS = 0x19  # 3 fixed64
TAG_KV_FLAGS = 0x20  # 4 varint

_KEY_PREFIX = [bytes([TAG_KV_KEY]) + v for v in _VARINT]
_VALUE_PREFIX = [bytes([TAG_KV_VALUE]) + v for v in _VARINT]
_KV_PREFIX = [bytes([TAG_DBI_KV]) + v for v in _VARINT]
_KV_DELETED = bytes([TAG_KV_FLAGS, FLAG_DELETED])
_KV_TS = bytes([TAG_KV_TS])
_KV_BYTES_TAGS = frozenset({TAG_KV_KEY, TAG_KV_VALUE})


# ------------------------------------------------------------------ writing


def write_snapshot(
    out: IO[bytes],
    header: SnapshotHeader,
    dbi_entries: Iterable[Iterable[Entry]],
    *,
    level: int = GZIP_LEVEL,
) -> WriteStats:
    """Write one LS snapshot to ``out``: ``dbi_entries`` yields one entry iterable per
    header DBI, in key order; a count that differs from the header raises ValueError.

    The protobuf is byte for byte what LS writes for the same LMDB and Meta values:
    formatVersion 3, compatVersion 1, Meta, then the DBIs in header order, every field in
    LS's order, each zero or empty field left out, no field LS does not write.
    """
    if header.kind != KIND_FULL:
        raise ValueError("a pb.gz object is always full: LS has no deltas")
    comp = zlib.compressobj(level, zlib.DEFLATED, GZIP_WBITS)
    stats = WriteStats()
    out.write(
        comp.compress(
            bytes([TAG_SNAP_FORMAT, WRITE_FORMAT_VERSION, TAG_SNAP_COMPAT, WRITE_COMPAT_VERSION])
            + _len_field(TAG_SNAP_META, _encode_meta(header))
        )
    )
    dbis = iter(dbi_entries)
    for info in header.dbis:
        count, raw = _write_dbi(out, comp, info, next(dbis))
        if count != info.entries:
            raise ValueError(
                f"DBI {info.name!r}: header promised {info.entries} entries, wrote {count}"
            )
        stats.per_dbi.append(count)
        stats.entries += count
        stats.raw_bytes += raw
    out.write(comp.flush())
    return stats


def _encode_meta(header: SnapshotHeader) -> bytes:
    """Meta in LS's field order: 1, 2, 3, 7, 4, 5 (see the vectors' ``_field_order``)."""
    parts = []
    for field, text in (
        (1, GENERATION),
        (2, header.instance),
        (3, header.hostname),
        (7, header.db),
    ):
        if text:
            parts.append(_len_field(field << 3 | WT_LEN, text.encode()))
    if header.txn_id:
        parts.append(_tag(4, WT_VARINT) + _encode_varint(header.txn_id))
    if header.timestamp_ns:
        parts.append(_tag(5, WT_FIXED64) + _FIXED64.pack(header.timestamp_ns))
    return b"".join(parts)


def _dbi_head(info: DbiInfo) -> bytes:
    """name, flags, transform: LS writes them before the entries, in this order."""
    head = _len_field(TAG_DBI_NAME, info.name)
    if info.flags:
        head += bytes([TAG_DBI_FLAGS]) + _encode_varint(info.flags)
    if info.transform:
        head += _len_field(TAG_DBI_TRANSFORM, info.transform.encode())
    return head


def _write_dbi(
    out: IO[bytes], comp: Any, info: DbiInfo, entries: Iterable[Entry]
) -> tuple[int, int]:
    """Encode one DBI's KVs into a spool, then write the DBI with its length prefix.
    Returns the entry count and the key and value bytes."""
    if not 0 < len(info.name) <= MAX_KEY_BYTES:
        raise ValueError(f"DBI name {info.name[:64]!r}: length outside 1..{MAX_KEY_BYTES}")
    buf = bytearray()
    spool: IO[bytes] | None = None
    spooled = count = raw = 0
    # locals: this loop runs once per entry of the LMDB
    ts_tag, layouts = _KV_TS, _KV_LAYOUTS
    for key, ts, flags, value in entries:
        klen = len(key)
        vlen = len(value)
        count += 1
        raw += klen + vlen
        if ts and vlen and klen and klen + vlen < SHORT_KV_DATA and not flags & FLAG_DELETED:
            # the commonest KV, all lengths one byte: one struct call instead of five joins
            layout = layouts.get((klen, vlen)) or _kv_layout(klen, vlen)
            buf += layout[0](layout[1], key, layout[2], value, ts_tag, ts)
        else:
            if not 0 < klen <= MAX_KEY_BYTES:
                raise ValueError(f"DBI {info.name!r}: key length {klen} outside 1..{MAX_KEY_BYTES}")
            buf += _encode_kv(info, key, ts, flags, value)
        if len(buf) >= SPOOL_MEMORY:
            if spool is None:
                spool = tempfile.TemporaryFile(dir=_spool_dir(out))  # noqa: SIM115 - closed below
                log.debug(
                    "DBI %r: over %d bytes, spooled to a temporary file", info.name, SPOOL_MEMORY
                )
            spool.write(buf)
            spooled += len(buf)
            buf.clear()
    head = _dbi_head(info)
    body = len(head) + spooled + len(buf)
    out.write(comp.compress(bytes([TAG_SNAP_DBI]) + _encode_varint(body) + head))
    if spool is not None:
        with spool:
            spool.seek(0)
            while piece := spool.read(COPY_CHUNK):
                out.write(comp.compress(piece))
    out.write(comp.compress(buf))
    return count, raw


def _spool_dir(out: IO[bytes]) -> str | None:
    """The directory of the object being written, when it is a file there: the spool
    then lands on the filesystem evsync writes to, not in a small /tmp."""
    name = getattr(out, "name", None)
    if isinstance(name, str):
        directory = os.path.dirname(os.path.abspath(name))
        if os.path.isdir(directory):
            return directory
    return None


# key + value bytes below this make a KV (2 + key + 2 + value + 9 bytes) whose length
# fits one varint byte, as do the key's and the value's own lengths
SHORT_KV_DATA = 0x80 - 13
# struct layouts of short KVs by (key length, value length), and the framing they take
_KV_LAYOUTS: dict[tuple[int, int], tuple[Any, bytes, bytes]] = {}


def _kv_layout(klen: int, vlen: int) -> tuple[Any, bytes, bytes]:
    """pack(), KV tag + length + key tag + key length, value tag + value length."""
    layout = (
        struct.Struct(f"<4s{klen}s2s{vlen}s1sQ").pack,
        bytes([TAG_DBI_KV, klen + vlen + 13, TAG_KV_KEY, klen]),
        bytes([TAG_KV_VALUE, vlen]),
    )
    _KV_LAYOUTS[klen, vlen] = layout  # at most 115 * 115 / 2 of them
    return layout


def _encode_kv(info: DbiInfo, key: bytes, ts: int, flags: int, value: bytes) -> bytes:
    """One KV with its tag and length, as LS writes it: key, value, flags, timestamp,
    each left out when empty or zero (the key never is)."""
    vlen = len(value)
    kv = _KEY_PREFIX[len(key)] + key
    if vlen:
        kv += (
            _VALUE_PREFIX[vlen] if vlen < _TABLE_SIZE else b"\x12" + _encode_varint(vlen)
        ) + value
    if flags & FLAG_DELETED:
        kv += _KV_DELETED
    if ts:
        kv += _KV_TS + _FIXED64.pack(ts)
    size = len(kv)
    if size < _TABLE_SIZE:
        return _KV_PREFIX[size] + kv
    if size > MAX_ENTRY_BYTES:
        raise _entry_too_large(info, key, vlen)
    return b"\x12" + _encode_varint(size) + kv


def _entry_too_large(info: DbiInfo, key: bytes, vlen: int) -> EntryTooLargeError:
    """Readers could not take the entry back: it is over the entry cap."""
    return EntryTooLargeError(
        f"DBI {info.name.decode(errors='replace')!r} key {key[:64]!r}: its value of "
        f"{vlen} bytes is over the {MAX_ENTRY_BYTES >> 20} MiB an object entry may hold; "
        "receivers could not read it, so nothing is uploaded"
    )


# ------------------------------------------------------------------ reading


class _Inflater:
    """The inflated bytes of a gzip multistream, a bounded piece at a time."""

    def __init__(self, source: IO[bytes], max_inflated: int | None) -> None:
        self._source = source
        self._max = max_inflated
        self._d = zlib.decompressobj(GZIP_WBITS)
        self._members = 1
        self.inflated = 0
        first = source.read(READ_CHUNK)
        if not first:
            raise CorruptObjectError("empty object")
        if first[:2] != b"\x1f\x8b":
            raise CorruptObjectError("foreign format: not gzip")
        self._pending = first

    def read(self) -> bytes:
        """The next inflated piece (at most INFLATE_PIECE bytes); b"" at the clean end."""
        while True:
            d = self._d
            if d.eof:
                rest = d.unused_data or self._source.read(READ_CHUNK)
                if not rest:
                    return b""
                # another member follows: LS's reader is multistream too (probe B)
                self._d = zlib.decompressobj(GZIP_WBITS)
                self._members += 1
                self._pending = rest
                continue
            if d.unconsumed_tail:
                data = d.unconsumed_tail
            elif self._pending:
                data, self._pending = self._pending, b""
            else:
                data = self._source.read(READ_CHUNK)
                if not data:
                    raise CorruptObjectError(f"truncated: gzip member {self._members} is cut off")
            try:
                out = d.decompress(data, INFLATE_PIECE)
            except zlib.error as exc:
                raise CorruptObjectError(f"gzip member {self._members}: {exc}") from None
            if out:
                self.inflated += len(out)
                if self._max is not None and self.inflated > self._max:
                    raise ObjectTooLargeError(
                        f"inflates to more than {self._max} bytes "
                        "(storage_max_inflated_size), a decompression bomb or a bigger LMDB"
                    )
                return out


class _Wire:
    """A forward-only window on the inflated protobuf: ``buf[pos:]`` is what is not
    parsed yet, ``base`` the stream offset of ``buf[0]``."""

    def __init__(self, inflater: _Inflater) -> None:
        self._inflater = inflater
        self.buf = b""
        self.pos = 0
        self.base = 0
        self.ended = False

    def offset(self) -> int:
        """Stream offset of the next unparsed byte."""
        return self.base + self.pos

    def fill(self, need: int) -> bool:
        """At least ``need`` unparsed bytes in ``buf``; False when the stream ends first
        (then ``buf`` holds what there is)."""
        have = len(self.buf) - self.pos
        if have >= need:
            return True
        if self.ended:
            return False
        pieces = [self.buf[self.pos :]]
        while have < need:
            piece = self._inflater.read()
            if not piece:
                self.ended = True
                break
            pieces.append(piece)
            have += len(piece)
        self.base += self.pos
        self.buf = b"".join(pieces)
        self.pos = 0
        return have >= need

    def at_end(self) -> bool:
        """True when nothing is left to parse."""
        return not self.fill(1)

    def varint(self, what: str) -> int:
        """One varint (up to 64 bits)."""
        self.fill(MAX_VARINT_BYTES)
        value, self.pos = _varint(self.buf, self.pos, what)
        return value

    def take(self, n: int, what: str) -> bytes:
        """The next ``n`` bytes (``n`` already bounded by the caller)."""
        if not self.fill(n):
            raise CorruptObjectError(f"truncated inside {what}")
        data = self.buf[self.pos : self.pos + n]
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        """Pass ``n`` bytes without holding them all: an unknown field may be huge."""
        while n > 0:
            if not self.fill(1):
                raise CorruptObjectError(f"truncated inside {what}")
            step = min(n, len(self.buf) - self.pos)
            self.pos += step
            n -= step

    def skip_field(self, wire_type: int, what: str, limit: int | None = None) -> None:
        """Skip the value of an unknown field, checking its wire type; ``limit`` is the
        stream offset the field must end by (the end of its enclosing message)."""
        if wire_type == WT_VARINT:
            self.varint(what)
        elif wire_type == WT_FIXED64:
            self.take(8, what)
        elif wire_type == WT_FIXED32:
            self.take(4, what)
        elif wire_type == WT_LEN:
            n = self.varint(what)
            if limit is not None and self.offset() + n > limit:
                raise CorruptObjectError(f"{what} runs past the end of its message")
            self.skip(n, what)
        else:
            raise CorruptObjectError(f"{what}: unsupported wire type {wire_type}")
        if limit is not None and self.offset() > limit:
            raise CorruptObjectError(f"{what} runs past the end of its message")


def _varint(buf: bytes, pos: int, what: str, end: int | None = None) -> tuple[int, int]:
    """Decode a varint at ``buf[pos]`` that must end before ``end`` (default: the end of
    ``buf``); the value and the position after it."""
    limit = len(buf) if end is None else end
    stop = min(limit, pos + MAX_VARINT_BYTES)
    result = shift = 0
    while pos < stop:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if result >= U64:
                raise CorruptObjectError(f"{what}: varint over 64 bits")
            return result, pos
        shift += 7
    if stop == limit:
        raise CorruptObjectError(f"truncated inside {what}")
    raise CorruptObjectError(f"{what}: varint longer than {MAX_VARINT_BYTES} bytes")


def _expect(wire_type: int, want: int, what: str) -> None:
    if wire_type != want:
        raise CorruptObjectError(f"{what} has wire type {wire_type}, expected {want}")


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise CorruptObjectError(f"{what} is not UTF-8") from None


def _int64(n: int) -> int:
    return n - U64 if n >= I64_SIGN else n


@dataclasses.dataclass
class _Meta:
    generation: str = ""
    instance: str = ""
    hostname: str = ""
    db: str = ""
    txn_id: int = 0
    timestamp_ns: int = 0
    from_txn_id: int = 0


_META_STRINGS = {1: "generation", 2: "instance", 3: "hostname", 7: "db"}


def _parse_meta(data: bytes, meta: _Meta) -> None:
    """Merge one Meta message into ``meta`` (protobuf: a later field wins)."""
    pos, end = 0, len(data)
    while pos < end:
        tag, pos = _varint(data, pos, "a Meta field tag")
        field, wire_type = tag >> 3, tag & 7
        what = f"Meta field {field}"
        if field in _META_STRINGS:
            _expect(wire_type, WT_LEN, what)
            n, pos = _varint(data, pos, what)
            if pos + n > end:
                raise CorruptObjectError(f"{what} runs past the end of Meta")
            setattr(meta, _META_STRINGS[field], _text(data[pos : pos + n], what))
            pos += n
        elif field in {4, 8}:
            _expect(wire_type, WT_VARINT, what)
            n, pos = _varint(data, pos, what)
            setattr(meta, "txn_id" if field == 4 else "from_txn_id", _int64(n))
        elif field == 5:
            _expect(wire_type, WT_FIXED64, what)
            if pos + 8 > end:
                raise CorruptObjectError(f"{what} runs past the end of Meta")
            meta.timestamp_ns = _FIXED64.unpack_from(data, pos)[0]
            pos += 8
        else:
            pos = _skip_in(data, pos, wire_type, what)
        if pos > end:
            raise CorruptObjectError(f"{what} runs past the end of Meta")
    if pos != end:
        raise CorruptObjectError("a Meta field runs past the end of Meta")


def _skip_in(data: bytes, pos: int, wire_type: int, what: str, end: int | None = None) -> int:
    """Skip an unknown field's value inside a message held in ``data[:end]``; the caller
    checks the result against the message's end."""
    if wire_type == WT_VARINT:
        return _varint(data, pos, what, end)[1]
    if wire_type == WT_FIXED64:
        return pos + 8
    if wire_type == WT_FIXED32:
        return pos + 4
    if wire_type == WT_LEN:
        n, pos = _varint(data, pos, what, end)
        return pos + n
    raise CorruptObjectError(f"{what}: unsupported wire type {wire_type}")


class LsSnapshotReader:
    """Read an LS snapshot as a stream: the header (as far as the top-level fields before
    the first DBI tell), then each DBI's entries in turn, every one checked before it is
    handed out; after the last DBI the end of the stream is checked and :attr:`header`
    is complete (Meta, versions and each DBI with its entry count).

    ``verified=True`` skips the one check a second read of the same file need not make
    (transformed keys decoding). ``max_inflated``: past this many inflated bytes,
    ObjectTooLargeError.
    """

    def __init__(
        self, source: IO[bytes], *, verified: bool = False, max_inflated: int | None = None
    ) -> None:
        self._verified = verified
        self._inflater = _Inflater(source, max_inflated)
        self._wire = _Wire(self._inflater)
        self._meta = _Meta()
        self._meta_seen = False
        #: formatVersion / compatVersion as last seen (None: not yet)
        self.format_version: int | None = None
        self.compat_version: int | None = None
        # the formatVersion the entries were read with, once a DBI was read
        self._rules: int | None = None
        # True when the first DBI came before any formatVersion: read as version 3
        self._rules_assumed = False
        self._infos: list[DbiInfo] = []
        self._names: set[bytes] = set()
        self._consumed = False
        self._next_dbi = self._top_level()
        if self._next_dbi is None:
            self._finish()
        else:
            if self.format_version is not None:
                self._check_versions()
            self._rules_assumed = self.format_version is None
            self._rules = self.format_version or KNOWN_FORMAT_VERSION
        self.header = self._header()

    # -------------------------------------------------------------- top level

    def _top_level(self) -> int | None:
        """Parse top-level fields up to the next DBI; its length, or None at the end."""
        wire = self._wire
        while not wire.at_end():
            tag = wire.varint("a Snapshot field tag")
            field, wire_type = tag >> 3, tag & 7
            what = f"Snapshot field {field}"
            if field == 1:
                _expect(wire_type, WT_VARINT, what)
                self._set_version("formatVersion", wire.varint(what))
            elif field == 4:
                _expect(wire_type, WT_VARINT, what)
                self._set_version("compatVersion", wire.varint(what))
            elif field == 2:
                _expect(wire_type, WT_LEN, what)
                n = wire.varint(what)
                if n > MAX_META_BYTES:
                    raise CorruptObjectError(f"Meta of {n} bytes (more than {MAX_META_BYTES})")
                _parse_meta(wire.take(n, "Meta"), self._meta)
                self._meta_seen = True
            elif field == 3:
                _expect(wire_type, WT_LEN, what)
                return wire.varint(what)
            else:
                wire.skip_field(wire_type, what)  # unknown (probe C): LS skips them too
        return None

    def _set_version(self, which: str, value: int) -> None:
        if which == "compatVersion":
            self.compat_version = value  # only accepts or rejects: checked at the end
            return
        if self._rules is not None and value != self.format_version:
            # a formatVersion after DBIs were read: fine only if their rules still hold
            if self._rules_assumed and value >= KNOWN_FORMAT_VERSION:
                pass
            else:
                raise CorruptObjectError(
                    f"formatVersion {value} after DBIs read with the version {self._rules} rules"
                )
        self.format_version = value

    def _check_versions(self) -> None:
        """LS's load checks (syncer/iterators.go); LS exits on each, evsync rejects."""
        fv, cv = self.format_version, self.compat_version
        if not fv:
            raise CorruptObjectError(
                "no formatVersion, or 0 (Lightning Stream exits on such an object)"
            )
        if cv is not None and cv > KNOWN_FORMAT_VERSION:
            raise CorruptObjectError(
                f"compatVersion {cv} is newer than {KNOWN_FORMAT_VERSION}, the newest format "
                "evsync reads (Lightning Stream exits on such an object)"
            )

    def _header(self) -> SnapshotHeader:
        m = self._meta
        return SnapshotHeader(
            db=m.db,
            instance=m.instance,
            hostname=m.hostname,
            timestamp_ns=m.timestamp_ns,
            txn_id=m.txn_id,
            dbis=tuple(self._infos),
            kind=KIND_FULL,
            version=self.format_version or 0,
        )

    def _finish(self) -> None:
        self._check_versions()
        self.header = self._header()

    # -------------------------------------------------------------- DBIs

    def dbis(self) -> Iterator[tuple[DbiInfo, LsDbiEntries]]:
        """Yield (DbiInfo, entries) in object order; each DBI's entries must be read in
        turn. The DbiInfo says ``entries=0``: the count is known only after the DBI, and
        :attr:`header` has it once this iterator ends."""
        if self._consumed:
            raise RuntimeError("a snapshot reader can be read once")
        self._consumed = True
        while self._next_dbi is not None:
            if len(self._infos) >= MAX_DBIS:
                raise CorruptObjectError(f"more than {MAX_DBIS} DBIs")
            entries = self._open_dbi(self._next_dbi)
            yield entries.info, entries
            entries.check_rest()  # what the caller left, to stay in step
            self._infos.append(dataclasses.replace(entries.info, entries=entries.count))
            self._next_dbi = self._top_level()
        self._finish()

    def _open_dbi(self, length: int) -> LsDbiEntries:
        """Parse a DBI message's fields up to its first entry (or its end)."""
        wire = self._wire
        end = wire.offset() + length
        name = b""
        flags = 0
        transform = ""
        first_kv = False
        index = len(self._infos)
        while wire.offset() < end:
            tag_at = wire.offset()
            tag = wire.varint(f"a field tag of DBI {index}")
            field, wire_type = tag >> 3, tag & 7
            what = f"DBI {index} field {field}"
            if field == 2:
                _expect(wire_type, WT_LEN, what)
                # the entries loop reads the KV tag itself; varint() filled the buffer
                # from the tag on, so the tag is still in it
                wire.pos = tag_at - wire.base
                first_kv = True
                break
            if field == 1:
                _expect(wire_type, WT_LEN, what)
                n = wire.varint(what)
                if n > MAX_KEY_BYTES:
                    raise CorruptObjectError(f"DBI {index} name of {n} bytes")
                name = wire.take(n, what)
            elif field == 3:
                _expect(wire_type, WT_VARINT, what)
                flags = wire.varint(what)
            elif field == 4:
                _expect(wire_type, WT_LEN, what)
                n = wire.varint(what)
                if n > MAX_TRANSFORM_BYTES:
                    raise CorruptObjectError(f"DBI {index}: unknown transform of {n} bytes")
                transform = _text(wire.take(n, what), what)
            else:
                # unknown DBI field (probes D, D2): skipped from where it is, which LS's
                # indexing gets wrong for D2; evsync reads such an object
                wire.skip_field(wire_type, what, end)
        if wire.offset() > end:
            raise CorruptObjectError(f"DBI {index}: a field runs past the end of the DBI")
        info = self._check_dbi(index, name, flags, transform)
        return LsDbiEntries(self, info, end, has_entries=first_kv)

    def _check_dbi(self, index: int, name: bytes, flags: int, transform: str) -> DbiInfo:
        label = f"DBI {name.decode(errors='replace')!r}" if name else f"DBI {index}"
        if not name:
            raise CorruptObjectError(f"{label} has no name")
        if name in self._names:
            raise CorruptObjectError(f"{label} appears twice")
        if flags > MAX_DBI_FLAGS:
            raise CorruptObjectError(f"{label}: flags {flags:#x} are not LMDB DBI flags")
        if transform not in TRANSFORMS:
            raise CorruptObjectError(
                f"{label}: unknown transform {transform!r} (Lightning Stream exits on it)"
            )
        assert self._rules is not None
        if self._rules >= FORMAT_TRANSFORMS and bool(flags & MDB_DUPSORT) != bool(transform):
            raise CorruptObjectError(
                f"{label}: flags {flags:#x} and transform {transform!r} disagree (format 3 "
                f"pairs MDB_DUPSORT with {TRANSFORM_NAME}; Lightning Stream exits on this)"
            )
        self._names.add(name)
        return DbiInfo(name, flags, transform, 0)


# Runs of KVs of one shape (key, value and timestamp, each key and each value of the same
# length: fixed-size records) are unpacked by struct in C instead of one Python step per
# KV. A run is looked for over at most RUN_WINDOW KVs and taken from RUN_MIN on; after a
# miss the next RUN_RETRY KVs go one by one, so data of varied sizes pays little for it.
RUN_WINDOW = 1024
# check_rest() takes lists this long: it builds few entries, so a list costs little
CHECK_ONLY_CHUNK = 1 << 16
RUN_MIN = 16
RUN_RETRY = 64
# ... and twice as many after each further miss, up to 64 << 6 = 4,096 KVs
RUN_BACKOFF = 6
_BYTE = [bytes([c]) for c in range(256)]
_RUN_STRUCTS: dict[tuple[int, int], struct.Struct] = {}
MAX_RUN_STRUCTS = 256


def _run_at(buf: bytes, i: int, *, lim: int, room: int) -> int:
    """How many KVs of one shape start at ``buf[i]`` (see :func:`_run_length`), provided
    the first has the commonest shape with lengths of one byte; 0 otherwise."""
    n = buf[i + 1]
    klen = buf[i + 3]
    vlen = buf[i + 5 + klen]
    if (n | klen | vlen) >= 0x80 or not klen or n != klen + vlen + 13:
        return 0
    return _run_length(buf, i, lim=lim, room=room, klen=klen, vlen=vlen)


def _take_run(buf: bytes, i: int, *, lim: int, room: int, out: list[Entry]) -> tuple[int, int]:
    """Append the run of same-shaped KVs at ``buf[i]``, if there is one; how many, and
    where the buffer's next KV starts."""
    if buf[i] != TAG_DBI_KV:
        return 0, i
    m = _run_at(buf, i, lim=lim, room=room)
    if not m:
        return 0, i
    klen = buf[i + 3]
    size = buf[i + 1] + 2
    _unpack_run(buf, i, m, klen=klen, vlen=size - 15 - klen, out=out)
    return m, i + m * size


def _unpack_run(buf: bytes, i: int, m: int, *, klen: int, vlen: int, out: list[Entry]) -> None:
    """Append ``m`` KVs of the run at ``buf[i]``, checked by :func:`_run_length`."""
    size = klen + vlen + 15
    layout = _RUN_STRUCTS.get((klen, vlen))
    if layout is None:
        if len(_RUN_STRUCTS) >= MAX_RUN_STRUCTS:
            _RUN_STRUCTS.clear()
        layout = _RUN_STRUCTS[klen, vlen] = struct.Struct(f"<4x{klen}s2x{vlen}sxQ")
    keys, values, stamps = zip(*layout.iter_unpack(memoryview(buf)[i : i + m * size]), strict=True)
    out += zip(keys, stamps, repeat(0, m), values, strict=True)


def _run_length(buf: bytes, i: int, *, lim: int, room: int, klen: int, vlen: int) -> int:
    """How many KVs from ``buf[i]`` on, up to ``lim`` and ``room``, have the framing of
    the first (tag 0x12, the same KV length, key 0x0a of ``klen`` bytes, value 0x12 of
    ``vlen`` bytes, timestamp 0x19); 0 when fewer than RUN_MIN."""
    size = klen + vlen + 15  # KV tag and length, key, value and timestamp fields
    m = min(room, RUN_WINDOW, (lim - i) // size)
    if m < RUN_MIN:
        return 0
    framing = (
        (0, TAG_DBI_KV),
        (1, size - 2),
        (2, TAG_KV_KEY),
        (3, klen),
        (4 + klen, TAG_KV_VALUE),
        (5 + klen, vlen),
        (size - 9, TAG_KV_TS),
    )
    # first over RUN_MIN KVs only, so that data of varied sizes fails cheaply; then over
    # the whole window. Each framing byte must be the same in every KV: one strided
    # slice per byte, and lstrip counts how many KVs in a row have it.
    run = 0
    for window in (RUN_MIN, m):
        end = i + window * size
        run = window
        for offset, want in framing:
            column = buf[i + offset : end : size]
            run = min(run, len(column) - len(column.lstrip(_BYTE[want])))
            if run < RUN_MIN:
                return 0
    return run


class LsDbiEntries:
    """One DBI's entries as the reader parses them, each checked before it is handed out:
    iterate for single entries, or take checked lists with :meth:`chunks`."""

    def __init__(
        self, reader: LsSnapshotReader, info: DbiInfo, end: int, *, has_entries: bool
    ) -> None:
        self.info = info
        self.count = 0
        self._reader = reader
        self._end = end
        self._done = False
        self._has_entries = has_entries
        self._deleted_if_empty = (reader._rules or KNOWN_FORMAT_VERSION) < FORMAT_KV_FLAGS
        self._check_keys = bool(info.transform) and not reader._verified
        self._label = f"DBI {info.name.decode(errors='replace')!r}"
        self._out: list[Entry] = []
        self._checked = 0
        # LS's shape with v2+ rules and no key transform: the fast loop may take it
        self._fast = not self._deleted_if_empty and not self._check_keys

    def chunks(self, size: int = CHECK_CHUNK) -> Iterator[list[Entry]]:
        """The remaining entries in lists of at most ``size`` entries and about
        :data:`CHUNK_MAX_BYTES` (one entry, however big, makes a list)."""
        while not self._done:
            chunk = self._next_chunk(size)
            if chunk:
                yield chunk

    def __iter__(self) -> Iterator[Entry]:
        for chunk in self.chunks():
            yield from chunk

    def check_rest(self) -> None:
        """Read the remaining entries, checking each as :meth:`chunks` would, building
        as few as it can: what :func:`verify_snapshot` needs, at about half the cost."""
        while not self._done:
            self._next_chunk(CHECK_ONLY_CHUNK, build=False)

    def _next_chunk(self, size: int, *, build: bool = True) -> list[Entry]:
        """The next entries, at most ``size`` and about CHUNK_MAX_BYTES; ``build=False``
        only counts (in ``_checked``) the ones the fast loop can check without building."""
        wire = self._reader._wire
        out: list[Entry] = []
        self._out = out  # error messages count the entries taken so far
        self._checked = 0
        held = 0
        end = self._end
        fast = self._fast
        while len(out) + self._checked < size and held < CHUNK_MAX_BYTES:
            if fast:
                if build:
                    held = self._fast_kvs(out, size, held)
                else:
                    held = self._fast_check(size - len(out) - self._checked, held)
                if len(out) + self._checked >= size or held >= CHUNK_MAX_BYTES:
                    break
            # one step the general way: a KV of another shape, another DBI field, the
            # end of the DBI, or a KV that the buffer holds only part of
            if wire.offset() >= end:
                if wire.offset() > end:
                    raise CorruptObjectError(f"{self._label}: an entry runs past the DBI's end")
                self._done = True
                break
            # near the end of the stream, what is there must still hold a tag and a length
            if not wire.fill(MAX_VARINT_BYTES + 1) and len(wire.buf) - wire.pos < 2:
                raise CorruptObjectError(f"truncated inside {self._label}")
            if wire.buf[wire.pos] != TAG_DBI_KV:
                self._other_field(end)
                continue
            entry, n = self._one_kv(end)
            if build:
                out.append(entry)
            else:
                self._checked += 1
            held += n
        self.count += len(out) + self._checked
        return out

    def _one_kv(self, end: int) -> tuple[Entry, int]:
        """The KV at the wire's position, whatever its shape, filling the buffer as it
        needs; the entry and the KV's length."""
        wire = self._reader._wire
        buf, pos = wire.buf, wire.pos
        n = buf[pos + 1]
        start = pos + 2
        if n & 0x80:
            n, start = _varint(buf, pos + 1, f"{self._label} entry length")
        if n == 0:
            raise CorruptObjectError(
                f"{self._what()}: an empty KV message (Lightning Stream exits on such an object)"
            )
        if n > MAX_ENTRY_BYTES:
            raise ObjectTooLargeError(
                f"{self._what()}: {n} bytes, more than the "
                f"{MAX_ENTRY_BYTES >> 20} MiB an entry may hold"
            )
        stop = start + n
        if wire.base + stop > end:
            raise CorruptObjectError(f"{self._what()} runs past the end of the DBI")
        if stop > len(buf):
            if not wire.fill(stop - pos):
                raise CorruptObjectError(f"truncated inside {self._label}")
            buf = wire.buf
            start -= pos
            stop -= pos
        entry = self._kv(buf, start, stop)
        wire.pos = stop
        return entry, n

    def _fast_kvs(  # noqa: PLR0915 - one function: a call per KV would cost more
        self, out: list[Entry], size: int, held: int
    ) -> int:
        """Take, straight from the buffer, the KVs it holds whole that have LS's shape:
        key, value, flags, timestamp, each optional but the key, lengths of one or two
        bytes. Anything else stops the loop, and the general path takes that KV (from
        its start: nothing here is kept of a KV that did not finish). Returns ``held``
        plus the bytes taken.

        This is the reader's hot loop, one Python step per KV: locals only, the bytes
        budget turned into a bound on the buffer instead of a sum per KV, the count
        left to ``repeat``, and the commonest KV (key, value and timestamp, all short)
        checked with one comparison chain before the general shape is tried."""
        wire = self._reader._wire
        buf = wire.buf
        i = start = wire.pos
        # a KV is taken only if it ends by lim: the DBI's end, the buffer's, the budget's
        lim = min(len(buf), self._end - wire.base, i + CHUNK_MAX_BYTES - held)
        append = out.append
        unpack = _FIXED64.unpack_from
        room = size - len(out)
        misses = 0  # runs looked for in vain in a row: the next look comes later
        # literal tags in the loop (0x12 KV and value, 0x0a key, 0x19 timestamp): a
        # module constant is a dict lookup per use, and this runs per KV
        try:
            while room > 0:
                if room >= RUN_MIN:
                    taken, i = _take_run(buf, i, lim=lim, room=room, out=out)
                    if taken:
                        room -= taken
                        misses = 0
                        continue
                    misses = min(misses + 1, RUN_BACKOFF)
                before = len(out)
                # one by one up to the next look for a run; the count is repeat()'s
                for _ in repeat(None, min(room, RUN_RETRY << misses)):
                    if buf[i] != 0x12:
                        break
                    n = buf[i + 1]
                    klen = buf[i + 3]
                    k = i + 4 + klen  # where the value field starts
                    vlen = buf[k + 1]
                    e = i + 2 + n
                    if (
                        (n | klen | vlen) < 0x80
                        and klen
                        and e <= lim
                        and buf[i + 2] == 0x0A
                        and buf[k] == 0x12
                        and k + vlen + 11 == e
                        and buf[e - 9] == 0x19
                    ):
                        append((buf[i + 4 : k], unpack(buf, e - 8)[0], 0, buf[k + 2 : e - 9]))
                        i = e
                        continue
                    j = i + 2
                    if n & 0x80:
                        b = buf[j]
                        if b & 0x80:
                            break
                        n = (n & 0x7F) | b << 7
                        j += 1
                    e = j + n
                    if e > lim or buf[j] != TAG_KV_KEY:
                        break
                    p = j + 2 + buf[j + 1]
                    if buf[j + 1] & 0x80 or p == j + 2:
                        break  # a key of 128 bytes or more, or none: the general path
                    key = buf[j + 2 : p]
                    value = b""
                    flags = ts = 0
                    if p < e and buf[p] == TAG_KV_VALUE:
                        v = buf[p + 1]
                        p += 2
                        if v & 0x80:
                            b = buf[p]
                            if b & 0x80:
                                break
                            v = (v & 0x7F) | b << 7
                            p += 1
                        value = buf[p : p + v]
                        p += v
                    if p < e and buf[p] == TAG_KV_FLAGS:
                        flags = buf[p + 1]
                        if flags & 0x80:
                            break
                        p += 2
                    if p + 9 <= e and buf[p] == TAG_KV_TS:
                        ts = unpack(buf, p + 1)[0]
                        p += 9
                    if p != e:
                        break  # unknown fields, or lengths that overrun: the general path
                    append((key, ts, flags & SYNC_FLAG_MASK, value))
                    i = e
                else:
                    room -= len(out) - before
                    continue
                break  # a KV the loop does not take: the general path's
        except IndexError:
            pass  # a field cut by the buffer's end: the general path fills and takes it
        wire.pos = i
        return held + i - start

    def _fast_check(self, room: int, held: int) -> int:
        """Check, without building them, up to ``room`` KVs the buffer holds whole that
        have the commonest shape (the first test of :meth:`_fast_kvs`, the same
        condition, so what it accepts the building loop would accept); counted in
        ``_checked``. Any other KV stops it, and the general path takes that one.
        Returns ``held`` plus the bytes checked."""
        wire = self._reader._wire
        buf = wire.buf
        i = start = wire.pos
        lim = min(len(buf), self._end - wire.base, i + CHUNK_MAX_BYTES - held)
        taken = misses = 0
        try:  # literal tags in the loop, as in _fast_kvs
            while taken < room:
                if room - taken >= RUN_MIN:
                    m = _run_at(buf, i, lim=lim, room=room - taken)
                    if m:
                        i += m * (buf[i + 1] + 2)
                        taken += m
                        misses = 0
                        continue
                    misses = min(misses + 1, RUN_BACKOFF)
                stride = min(room - taken, RUN_RETRY << misses)
                for _ in repeat(None, stride):
                    if buf[i] != 0x12:
                        break
                    n = buf[i + 1]
                    klen = buf[i + 3]
                    k = i + 4 + klen
                    vlen = buf[k + 1]
                    e = i + 2 + n
                    if not (
                        (n | klen | vlen) < 0x80
                        and klen
                        and e <= lim
                        and buf[i + 2] == 0x0A
                        and buf[k] == 0x12
                        and k + vlen + 11 == e
                        and buf[e - 9] == 0x19
                    ):
                        break
                    i = e
                    taken += 1
                else:
                    continue
                break  # a KV the loop does not take: the general path's
        except IndexError:
            pass  # a field cut by the buffer's end: the general path fills and takes it
        wire.pos = i
        self._checked += taken
        return held + i - start

    def _kv(self, buf: bytes, pos: int, end: int) -> Entry:
        """One KV message in ``buf[pos:end]``, checked."""
        key = value = b""
        ts = flags = 0
        while pos < end:
            tag = buf[pos]
            pos += 1
            if tag in _KV_BYTES_TAGS:
                n = buf[pos] if pos < end else 0x80
                if n & 0x80:
                    n, pos = _varint(buf, pos, self._what(), end)
                else:
                    pos += 1
                if pos + n > end:
                    raise CorruptObjectError(f"{self._what()}: a field runs past the entry")
                if tag == TAG_KV_KEY:
                    key = buf[pos : pos + n]
                else:
                    value = buf[pos : pos + n]
                pos += n
            elif tag == TAG_KV_TS:
                if pos + 8 > end:
                    raise CorruptObjectError(f"{self._what()}: timestamp runs past the entry")
                ts = _FIXED64.unpack_from(buf, pos)[0]
                pos += 8
            elif tag == TAG_KV_FLAGS:
                flags, pos = _varint(buf, pos, self._what(), end)
            else:
                pos = self._unknown_kv_field(buf, pos - 1, end)
        if not 0 < len(key) <= MAX_KEY_BYTES:
            raise CorruptObjectError(f"{self._what()}: key length {len(key)}")
        flags &= SYNC_FLAG_MASK
        if self._deleted_if_empty and not value:
            flags |= FLAG_DELETED  # format 1: an empty value was a delete
        if self._check_keys:
            try:
                decode_key(key)
            except TransformError as exc:
                raise CorruptObjectError(f"{self._what()}: {exc}") from None
        return key, ts, flags, value

    def _unknown_kv_field(self, buf: bytes, pos: int, end: int) -> int:
        """Skip a KV field other than the four LS writes; known numbers with another
        wire type are corrupt, unknown ones are skipped (probe C)."""
        tag, pos = _varint(buf, pos, self._what(), end)
        field, wire_type = tag >> 3, tag & 7
        if field in {1, 2, 3, 4}:
            raise CorruptObjectError(f"{self._what()}: field {field} has wire type {wire_type}")
        pos = _skip_in(buf, pos, wire_type, self._what(), end)
        if pos > end:
            raise CorruptObjectError(f"{self._what()}: field {field} runs past the entry")
        return pos

    def _other_field(self, end: int) -> None:
        """A DBI field between or after the entries: name, flags or transform there would
        change what was handed out, so they are refused; unknown fields are skipped."""
        wire = self._reader._wire
        tag = wire.varint(f"a field tag of {self._label}")
        field, wire_type = tag >> 3, tag & 7
        if field in {1, 3, 4}:
            raise CorruptObjectError(
                f"{self._label} sets field {field} (name, flags or transform) after its "
                "entries; evsync reads DBIs as Lightning Stream writes them"
            )
        if field == 2:
            # a KV tag is 0x12; anything else naming field 2 is a wrong wire type, or
            # the same tag in a non-minimal varint, which no protobuf writer emits
            raise CorruptObjectError(
                f"{self._what()}: entries field with wire type {wire_type} or a tag "
                "in more than one byte"
            )
        wire.skip_field(wire_type, f"{self._label} field {field}", end)

    def _what(self) -> str:
        return f"{self._label} entry {self.count + len(self._out) + self._checked}"


def read_header(source: IO[bytes]) -> SnapshotHeader:
    """The header as far as the fields before the first DBI tell (all of it for an
    object LS wrote); nothing else is checked."""
    return LsSnapshotReader(source).header


def verify_snapshot(source: IO[bytes], *, max_inflated: int | None = None) -> SnapshotHeader:
    """Read a whole object and check everything; its complete header, or
    CorruptObjectError (ObjectTooLargeError past ``max_inflated`` inflated bytes)."""
    reader = LsSnapshotReader(source, max_inflated=max_inflated)
    for _info, entries in reader.dbis():
        entries.check_rest()
    return reader.header


class LsPbGzFormat(SnapshotFormat):
    """``.pb.gz``: Lightning Stream's format."""

    extension = EXT_LIGHTNINGSTREAM

    def reader(
        self, source: IO[bytes], *, verified: bool = False, max_inflated: int | None = None
    ) -> LsSnapshotReader:
        """See :class:`LsSnapshotReader`."""
        return LsSnapshotReader(source, verified=verified, max_inflated=max_inflated)

    def write(
        self, out: IO[bytes], header: SnapshotHeader, dbi_entries: Iterable[Iterable[Entry]]
    ) -> WriteStats:
        """See :func:`write_snapshot`."""
        return write_snapshot(out, header, dbi_entries)

    def verify(self, source: IO[bytes], *, max_inflated: int | None = None) -> SnapshotHeader:
        """See :func:`verify_snapshot`: the header returned is the complete one."""
        return verify_snapshot(source, max_inflated=max_inflated)


LS_PB_GZ = LsPbGzFormat()
