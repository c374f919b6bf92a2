"""The ``evs.zst`` object format (DESIGN §4), written and read as bounded-memory streams.

Layout: a msgpack stream in zstd frames, each with its content checksum on (version 2:
the header alone in the first frame, entries in frames of at most FRAME_BYTES and
FRAME_ENTRIES, the trailer at the end of the last; version 1, still read: one frame)::

    header map        {"format": "evsync-snapshot", "version": 2, "db", "instance",
                       "hostname", "timestamp_ns", "txn_id", "kind", "base_timestamp_ns",
                       "dbis": [{"name": bytes, "flags": int, "transform": str,
                                 "entries": int}, ...]}
    entries           per DBI, in header order, exactly "entries" arrays
                      [key: bytes, timestamp_ns: int, flags: int, value: bytes]
                      in strictly increasing key order
    trailer map       {"trailer": true, "entries": total}

Version 3 (written now) keeps the header map alone in its frame and the trailer map
after the last block, in its frame, and holds the entries as one block a frame:
``[n, keys, key lengths (uint16 BE), timestamps (uint64 BE), flags (a byte each),
values, value lengths (uint32 BE)]``, every column but n a msgpack bin (DESIGN §4);
a block is checked whole before any entry of it is used.

The reader rejects a truncated frame, a bad checksum, a foreign format or version,
counts that disagree, malformed entries and keys out of order with
:class:`~evsync.errors.CorruptObjectError`; it never yields an entry it has not checked.
In version 2 that includes the checksum of the entry's frame, so what is read may be
applied as it is read (a bad frame later leaves only true data applied); a version-1
object's checksum comes at its end, so a caller verifies it whole first.

:data:`EVS_ZST` is this module behind the :class:`~evsync.snapshot.base.SnapshotFormat`
interface, the way the sender and the receiver use it.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import struct
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import accumulate, islice
from typing import IO, Any, Protocol

import msgpack
import zstandard

from evsync.errors import (
    CorruptObjectError,
    EntryTooLargeError,
    ObjectTooLargeError,
    TransformError,
)
from evsync.lmdb.dupsort import TRANSFORM_NAME, decode_key
from evsync.snapshot.base import (
    FORMAT_NAME,
    FORMAT_VERSION,
    KINDS,
    STAMP_BYTES,
    Columns,
    DbiInfo,
    Entry,
    SnapshotFormat,
    SnapshotHeader,
    WriteStats,
)
from evsync.snapshot.name import EXT_EVSYNC

TRANSFORMS = ("", TRANSFORM_NAME)
MDB_REVERSEKEY = 0x02
MDB_INTEGERKEY = 0x08
# LMDB's limit for a key, and so for a DBI name (a key in the main DB)
MAX_KEY_BYTES = 511
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Frame_Header_Descriptor bit 2: the frame ends with a checksum of its content
ZSTD_CONTENT_CHECKSUM_FLAG = 0x04

# Level 1, not 3: a 1 M-record dump compresses in ~95 ms instead of ~157 ms for an object
# 3% larger (docs/benchmarks.md, issue 20); readers do not care which level wrote it.
ZSTD_LEVEL = 1
READ_CHUNK = 64 << 10
# zstd can inflate a few bytes to a 128 KiB block, so the decompressor is fed small
# slices: one call yields at most ~32 MiB even from a decompression bomb.
# (Measured: verifying 1 M entries costs ~5% more than with unsliced 64 KiB reads.)
DECOMPRESS_SLICE = 1024
# What one decompress call yields is fed to msgpack this much at a time, and every
# complete object is taken out after each piece: the unpacker's buffer then only ever
# holds one pending entry and one piece, so an entry up to MAX_ENTRY_BYTES always fits.
FEED_PIECE = 1 << 20
WRITE_CHUNK = 64 << 10
# entries packed by one msgpack call when the source hands out single entries
PACK_CHUNK = 1024
# entries are checked, and handed to a merge, in lists of up to this many
CHECK_CHUNK = 1024
# ... and of up to about this many inflated bytes: a list of entries each under the
# entry cap must not add up to gigabytes (a bomb of 1,024 values of 200 MiB each)
CHUNK_MAX_BYTES = 16 << 20
MSGPACK_NIL = b"\xc0"
# One entry as written (key, value and msgpack framing) takes at most this much. With
# the unpacker's buffer, one chunk and one decompress call, verifying or merging any
# object holds well under 256 MiB at once (DESIGN §4); the writer refuses bigger values.
MAX_ENTRY_BYTES = 64 << 20
# Format version 2 holds the entries in zstd frames of about this many inflated bytes,
# each with its own checksum: a reader verifies and hands out one frame at a time, so
# an object is read once, not verified first and read again (issue 20).
FRAME_BYTES = 1 << 20
# ... and of at most this many entries: a merge's write txn takes up to 10,000 entries
# and never reaches into the next frame, so a frame of 8,192 small records is one txn
# (frames of 13,000 took two each: 151 commits for 1 M records instead of 123)
FRAME_ENTRIES = 8192
WRITABLE_VERSIONS = (1, 2, FORMAT_VERSION)
# ... and a reader takes no frame that inflates past this: one entry at the cap, and
# a frame's worth of entries before it
FRAME_MAX_INFLATED = MAX_ENTRY_BYTES + FRAME_BYTES
# a header map (DBI names and counts) larger than this is not looked at to choose the
# reader (the version-1 reader then reads the object)
HEADER_MAX_BYTES = 16 << 20
# the first version whose entries come in frames of their own
FRAMED_VERSION = 2
# the first version whose frames hold their entries column-wise, one block a frame
COLUMNS_VERSION = 3
# a block's fields: entry count, keys, key lengths, timestamps, flags, values, value lengths
BLOCK_FIELDS = 7
# bytes of one key length (big-endian uint16: keys are at most 511 bytes) and of one
# value length (big-endian uint32: values stay under the entry cap) in a block
KEY_LENGTH_BYTES = 2
VALUE_LENGTH_BYTES = 4
# bytes a block spends on one entry beside its key and value: the two lengths, the
# timestamp and the flags byte
BLOCK_ENTRY_OVERHEAD = KEY_LENGTH_BYTES + VALUE_LENGTH_BYTES + STAMP_BYTES + 1
# msgpack framing of one entry at most: array header 1, key 2 + ts 9 + flags 2 + value 5
ENTRY_FRAMING_BYTES = 19
# the most key and value bytes one entry may carry
MAX_ENTRY_DATA = MAX_ENTRY_BYTES - ENTRY_FRAMING_BYTES
# a list of msgpack objects, and the inflated bytes they were decoded from
Batch = tuple[list[Any], int]
_KEY = operator.itemgetter(0)
_STAMP = operator.itemgetter(1)
_FLAGS = operator.itemgetter(2)
_VALUE = operator.itemgetter(3)
_HEADER_KEYS = ("db", "instance", "timestamp_ns", "txn_id", "kind", "dbis")


# ------------------------------------------------------------------ writing


def write_snapshot(
    out: IO[bytes],
    header: SnapshotHeader,
    dbi_entries: Iterable[Iterable[Entry]],
    *,
    level: int = ZSTD_LEVEL,
    version: int = FORMAT_VERSION,
) -> WriteStats:
    """Write one object to ``out``: ``dbi_entries`` yields one entry iterable per header DBI.

    The caller promises the counts in the header; a mismatch raises ValueError before
    the last frame is written, so no valid-looking object with wrong counts is ever
    produced. ``version`` 1 writes the older layout (one zstd frame), kept so that tests
    can make the objects older evsync versions stored.
    """
    if version not in WRITABLE_VERSIONS:
        raise ValueError(f"cannot write format version {version}")
    stats = WriteStats()
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)
    wire = dataclasses.replace(header, version=version).to_wire()
    pieces = _packed_pieces(header, dbi_entries, stats)
    if version == 1:
        with cctx.stream_writer(out, closefd=False) as zw:
            zw.write(msgpack.packb(wire, use_bin_type=True))
            buf = bytearray()
            for piece, _count in pieces:
                buf += piece
                if len(buf) >= WRITE_CHUNK:  # one zstd call per chunk, not per entry
                    zw.write(buf)
                    buf.clear()
            zw.write(buf)
        return stats
    # Version 2: the header alone in the first frame, then frames of about FRAME_BYTES
    # of entries (one entry larger than that alone in its frame), the trailer in the
    # last. Each frame is compressed with its own content checksum, so a reader checks
    # each before it hands out any of its entries.
    out.write(cctx.compress(msgpack.packb(wire, use_bin_type=True)))
    if version >= COLUMNS_VERSION:
        # one block a frame; the trailer goes in the last block's frame, as in version 2,
        # so that a cut or corrupt end of the object loses the last entries with it
        held: bytes | None = None
        for block in _column_blocks(header, dbi_entries, stats):
            if held is not None:
                out.write(cctx.compress(held))
            held = block
        trailer = msgpack.packb({"trailer": True, "entries": stats.entries}, use_bin_type=True)
        out.write(cctx.compress(trailer if held is None else held + trailer))
        return stats
    buf = bytearray()
    in_frame = 0
    for piece, count in pieces:
        if buf and (len(buf) + len(piece) > FRAME_BYTES or in_frame + count > FRAME_ENTRIES):
            out.write(cctx.compress(buf))
            buf.clear()
            in_frame = 0
        buf += piece
        in_frame += count
    out.write(cctx.compress(buf))
    return stats


def _packed_pieces(
    header: SnapshotHeader, dbi_entries: Iterable[Iterable[Entry]], stats: WriteStats
) -> Iterator[tuple[bytes | memoryview, int]]:
    """The msgpack stream after the header, each piece with the entries it holds: the
    entries of each DBI in pieces of at most FRAME_BYTES (or one entry), then the
    trailer. Counts each DBI's entries into
    ``stats`` and raises ValueError where they differ from the header's."""
    pack = msgpack.Packer(use_bin_type=True).pack
    dbis = iter(dbi_entries)
    for info in header.dbis:
        count = 0
        for chunk in _entry_chunks(next(dbis)):
            sizes = list(
                map(operator.add, map(len, map(_KEY, chunk)), map(len, map(_VALUE, chunk)))
            )
            if max(sizes) > MAX_ENTRY_DATA:
                raise _entry_too_large(info, chunk[sizes.index(max(sizes))])
            size = sum(sizes)
            if size <= FRAME_BYTES:
                # One call packs the whole list as a msgpack array in C; without the
                # array's own header that is the entries one after the other, each
                # 4-tuple an array, exactly as packing them one by one would write them.
                yield memoryview(pack(chunk))[_array_header_size(len(chunk)) :], len(chunk)
            else:  # big values: one piece each, so that a frame stays near FRAME_BYTES
                for entry in chunk:
                    yield pack(entry), 1
            count += len(chunk)
            stats.raw_bytes += size
        if count != info.entries:
            raise ValueError(
                f"DBI {info.name!r}: header promised {info.entries} entries, wrote {count}"
            )
        stats.per_dbi.append(count)
        stats.entries += count
    yield pack({"trailer": True, "entries": stats.entries}), 0


# A part of a block as a source hands it out: keys, timestamps (8 bytes big-endian each,
# joined), flags (a byte each), values, the values' lengths (a dump knows them already)
ColumnPart = tuple[list[bytes], bytes, bytes, "list[bytes] | tuple[bytes, ...]", list[int]]
# A part as a block holds it: the part and its keys' lengths
_Held = tuple[ColumnPart, list[int]]


def _column_blocks(
    header: SnapshotHeader, dbi_entries: Iterable[Iterable[Entry]], stats: WriteStats
) -> Iterator[bytes]:
    """Version 3 after the header: each DBI's entries as packed blocks of at most
    FRAME_BYTES (or one bigger entry) and FRAME_ENTRIES. Counts as
    :func:`_packed_pieces` does; the caller writes the trailer."""
    dbis = iter(dbi_entries)
    for info in header.dbis:
        count = 0
        parts: list[_Held] = []
        in_block = held = 0
        for part in _column_parts(next(dbis)):
            keys, values, value_lengths = part[0], part[3], part[4]
            key_lengths = list(map(len, keys))
            # The longest key plus the longest value bounds every entry; only a part
            # that may hold an oversize entry pays for a size per entry.
            if max(key_lengths) + max(value_lengths) > MAX_ENTRY_DATA:
                sizes = list(map(operator.add, key_lengths, value_lengths))
                biggest = max(sizes)
                if biggest > MAX_ENTRY_DATA:
                    i = sizes.index(biggest)
                    raise _entry_too_large(info, (keys[i], 0, 0, values[i]))
            size = sum(key_lengths) + sum(value_lengths)
            pieces = [(part, key_lengths)] if size <= FRAME_BYTES else _single_parts(part)
            for piece in pieces:
                piece_size = size if len(pieces) == 1 else piece[1][0] + piece[0][4][0]
                if parts and (
                    held + piece_size > FRAME_BYTES or in_block + len(piece[1]) > FRAME_ENTRIES
                ):
                    yield _pack_block(parts)
                    parts, in_block, held = [], 0, 0
                parts.append(piece)
                in_block += len(piece[1])
                held += piece_size
            count += len(keys)
            stats.raw_bytes += size
        if parts:
            yield _pack_block(parts)
        if count != info.entries:
            raise ValueError(
                f"DBI {info.name!r}: header promised {info.entries} entries, wrote {count}"
            )
        stats.per_dbi.append(count)
        stats.entries += count


def _column_parts(entries: Iterable[Entry]) -> Iterator[ColumnPart]:
    """The entries as column parts: the source's own (a dump cuts them so from its
    cursor chunks) or cut from its entry lists."""
    parts = getattr(entries, "column_parts", None)
    if parts is not None:
        for part in parts():
            if part[0]:
                yield part
        return
    for chunk in _entry_chunks(entries):
        n = len(chunk)
        try:
            stamps = struct.pack(f">{n}Q", *map(_STAMP, chunk))
            flags = bytes(map(_FLAGS, chunk))
        except (struct.error, ValueError) as exc:
            raise ValueError(f"an entry's timestamp or flags do not fit: {exc}") from None
        values = list(map(_VALUE, chunk))
        yield list(map(_KEY, chunk)), stamps, flags, values, list(map(len, values))


def _single_parts(part: ColumnPart) -> list[_Held]:
    """A part of big values cut into parts of one entry each, so that a block stays
    near FRAME_BYTES and a value bigger than that is alone in its block."""
    keys, stamps, flags, values, value_lengths = part
    return [
        (
            (
                [keys[i]],
                stamps[i * STAMP_BYTES : (i + 1) * STAMP_BYTES],
                flags[i : i + 1],
                [values[i]],
                [value_lengths[i]],
            ),
            [len(keys[i])],
        )
        for i in range(len(keys))
    ]


def _pack_block(parts: list[_Held]) -> bytes:
    """One block: ``[n, keys, key lengths, timestamps, flags, values, value lengths]``."""
    # Each column joined part by part, then the parts joined: no list of every entry.
    block = (
        sum(len(lengths) for _part, lengths in parts),
        _JOIN([_JOIN(part[0]) for part, _lengths in parts]),
        _JOIN([struct.pack(f">{len(lengths)}H", *lengths) for _part, lengths in parts]),
        _JOIN([part[1] for part, _lengths in parts]),
        _JOIN([part[2] for part, _lengths in parts]),
        _JOIN([_JOIN(part[3]) for part, _lengths in parts]),
        _JOIN([struct.pack(f">{len(part[4])}I", *part[4]) for part, _lengths in parts]),
    )
    packed: bytes = msgpack.packb(block, use_bin_type=True)
    return packed


def _entry_chunks(entries: Iterable[Entry]) -> Iterator[list[Entry]]:
    """Lists of entries to pack at once: the source's own (a dump reads them so) or
    lists of :data:`PACK_CHUNK` taken from any iterable."""
    chunks = getattr(entries, "chunks", None)
    if chunks is not None:
        for chunk in chunks():
            if chunk:
                yield chunk
        return
    it = iter(entries)
    while chunk := list(islice(it, PACK_CHUNK)):
        yield chunk


def _array_header_size(count: int) -> int:
    """Bytes of the msgpack header of an array of ``count`` elements."""
    if count < 16:
        return 1  # fixarray
    if count < 1 << 16:
        return 3  # array 16
    return 5  # array 32


def _entry_too_large(info: DbiInfo, entry: Entry) -> EntryTooLargeError:
    """Receivers could not read the entry back: its value is over the entry cap."""
    return EntryTooLargeError(
        f"DBI {info.name.decode(errors='replace')!r} key {entry[0][:64]!r}: its value of "
        f"{len(entry[3])} bytes is over the {MAX_ENTRY_BYTES >> 20} MiB an object entry "
        "may hold; receivers could not read it, so nothing is uploaded"
    )


# ------------------------------------------------------------------ reading


def _frame_start(source: _Readable) -> bytes:
    """The first bytes of the object, checked to open a zstd frame that carries a content
    checksum: without one, corruption inside the frame would merge as different data."""
    start = b""
    while len(start) < len(ZSTD_MAGIC) + 1:
        chunk = source.read(READ_CHUNK)
        if not chunk:
            break
        start += chunk
    if start[: len(ZSTD_MAGIC)] != ZSTD_MAGIC:
        raise CorruptObjectError("foreign format: not a zstd frame")
    if len(start) <= len(ZSTD_MAGIC):
        raise CorruptObjectError("truncated: the zstd frame header is cut off")
    if not start[len(ZSTD_MAGIC)] & ZSTD_CONTENT_CHECKSUM_FLAG:
        raise CorruptObjectError("the zstd frame has no content checksum")
    return start


# Idle decompressors kept per thread: making one allocates and frees a zstd context
# (~8 us, a quarter of verifying a one-record delta, whose object has four frames). An
# idle one keeps its window buffer (2.5-9 MB after a big frame): two is what a reader
# needs (the header's peek, then one frame at a time).
MAX_IDLE_DECOMPRESSORS = 2


class _IdleDecompressors(threading.local):
    """This thread's ZstdDecompressors not in use. One serves one frame at a time (the
    stream object it makes shares its context), so it comes back only once that frame
    is read to its end or given up with the function that read it; one left inside an
    abandoned frame is the garbage collector's."""

    def __init__(self) -> None:
        self.idle: list[zstandard.ZstdDecompressor] = []


_IDLE = _IdleDecompressors()


def _take_decompressor() -> zstandard.ZstdDecompressor:
    idle = _IDLE.idle
    return idle.pop() if idle else zstandard.ZstdDecompressor()


def _give_back(decompressor: zstandard.ZstdDecompressor) -> None:
    idle = _IDLE.idle
    if len(idle) < MAX_IDLE_DECOMPRESSORS:
        idle.append(decompressor)


def _inflate(dctx: Any, compressed: bytes) -> bytes:
    """One decompress call; anything past the end of the one frame is corruption."""
    if dctx.eof:
        raise CorruptObjectError("data after the end of the zstd frame")
    try:
        data: bytes = dctx.decompress(compressed)
    except zstandard.ZstdError as exc:
        raise CorruptObjectError(f"zstd: {exc}") from None
    if dctx.eof and dctx.unused_data:
        raise CorruptObjectError("data after the end of the zstd frame")
    return data


def _msgpack_batches(source: _Readable, max_inflated: int | None) -> Iterator[Batch]:
    """Yield the msgpack objects of one zstd frame, a fed piece's worth at a time,
    detecting truncation and bad checksums. Lists of objects, not single objects: the
    unpacker's own iteration runs in C, and a Python step per entry was a third of a merge.
    Arrays decode as tuples, so an entry is an :data:`Entry` as it comes.

    Each list comes with the inflated bytes fed since the last one (about what its
    objects hold). Past ``max_inflated`` inflated bytes in all, ObjectTooLargeError."""
    decompressor = _take_decompressor()
    dctx = decompressor.decompressobj()
    unpacker = msgpack.Unpacker(
        raw=False,
        use_list=False,
        strict_map_key=False,
        max_buffer_size=MAX_ENTRY_BYTES + FEED_PIECE,
        max_array_len=1 << 16,
        max_map_len=1 << 10,
    )
    inflated = fed = 0
    chunk = _frame_start(source)
    while chunk:
        for start in range(0, len(chunk), DECOMPRESS_SLICE):
            data = _inflate(dctx, chunk[start : start + DECOMPRESS_SLICE])
            inflated += len(data)
            if max_inflated is not None and inflated > max_inflated:
                raise ObjectTooLargeError(
                    f"inflates to more than {_size(max_inflated)} "
                    "(storage_max_inflated_size), a decompression bomb or a bigger LMDB"
                )
            for at in range(0, len(data), FEED_PIECE):
                piece = _feed_piece(unpacker, data, at)
                fed += len(piece)
                objects = _unpack_all(unpacker)
                if objects:
                    yield objects, fed
                    fed = 0
            data = piece = b""  # the next slice's output must not sit next to this one's
        chunk = source.read(READ_CHUNK)
    if not dctx.eof:
        raise CorruptObjectError("truncated: the zstd frame does not end")
    _give_back(decompressor)
    if not _nothing_pending(unpacker):
        raise CorruptObjectError("truncated: the msgpack stream ends inside an object")


class _Readable(Protocol):
    """What the reader needs of a source: a file, a BytesIO, a spool file."""

    def read(self, size: int = ..., /) -> bytes: ...


class _Replay:
    """``source`` with ``prefix`` (bytes already read from it) put back in front."""

    def __init__(self, prefix: bytes, source: _Readable) -> None:
        self._prefix = prefix
        self._source = source

    def read(self, size: int = -1, /) -> bytes:
        """The prefix first (whole), then the source's own reads."""
        if self._prefix:
            out, self._prefix = self._prefix, b""
            return out
        return self._source.read(size)


def _peek_version(source: _Readable) -> tuple[bytes, Any]:
    """The bytes read from ``source`` and the version its header map claims (None when
    it cannot tell): decompressed only as far as the header. Never raises for a bad
    object: the reader of the older layout then reads it and names what is wrong."""
    decompressor = _take_decompressor()
    try:
        return _peek(source, decompressor.decompressobj())
    finally:
        _give_back(decompressor)  # the frame is given up here whatever was read


def _peek(source: _Readable, dctx: Any) -> tuple[bytes, Any]:
    """:func:`_peek_version` with the frame's decompression stream given."""
    read: list[bytes] = []
    unpacker = msgpack.Unpacker(
        raw=False,
        use_list=False,
        strict_map_key=False,
        max_buffer_size=HEADER_MAX_BYTES,
        max_array_len=1 << 16,
        max_map_len=1 << 10,
    )
    inflated = 0
    while inflated < HEADER_MAX_BYTES and not dctx.eof:
        chunk = source.read(READ_CHUNK)
        if not chunk:
            break
        read.append(chunk)
        for start in range(0, len(chunk), DECOMPRESS_SLICE):
            try:
                data = dctx.decompress(chunk[start : start + DECOMPRESS_SLICE])
                inflated += len(data)
                unpacker.feed(data)
                first = next(unpacker, None)
            except (zstandard.ZstdError, ValueError, TypeError, msgpack.UnpackException):
                return b"".join(read), None
            if first is not None or dctx.eof or inflated >= HEADER_MAX_BYTES:
                version = first.get("version") if isinstance(first, dict) else None
                return b"".join(read), version
    return b"".join(read), None


def _checked_frame_start(
    source: _Readable, pending: bytes, pos: int, frame: int
) -> tuple[bytes, int]:
    """``pending[pos:]`` (read on as far as needed) starts zstd frame number ``frame``,
    whose header promises a content checksum; the bytes and position to inflate from."""
    while len(pending) - pos <= len(ZSTD_MAGIC):
        more = source.read(READ_CHUNK)
        if not more:
            raise CorruptObjectError(f"truncated: zstd frame {frame} is cut off")
        pending, pos = pending[pos:] + more, 0
    if pending[pos : pos + len(ZSTD_MAGIC)] != ZSTD_MAGIC:
        raise CorruptObjectError(f"data after zstd frame {frame - 1} is not a zstd frame")
    if not pending[pos + len(ZSTD_MAGIC)] & ZSTD_CONTENT_CHECKSUM_FLAG:
        raise CorruptObjectError(f"zstd frame {frame} has no content checksum")
    return pending, pos


def _frame_batches(source: _Readable, max_inflated: int | None) -> Iterator[Batch]:
    """The msgpack objects of a version-2 object, one zstd frame at a time: a frame is
    inflated whole and its content checksum checked (by zstd, at the frame's end)
    before any of its objects is yielded, and it must end between two objects.

    Each frame inflates to at most FRAME_MAX_INFLATED bytes (a writer's frame holds
    about FRAME_BYTES, or one entry); past ``max_inflated`` in all, ObjectTooLargeError."""
    pending, pos = _frame_start(source), 0
    inflated = 0
    frame = 0
    while True:
        if pos >= len(pending):
            pending, pos = source.read(READ_CHUNK), 0
            if not pending:
                return  # ended between two frames: the stream's own checks say if early
        pending, pos = _checked_frame_start(source, pending, pos, frame)
        decompressor = _take_decompressor()
        dctx = decompressor.decompressobj()
        unpacker = _unpacker()
        objects: list[Any] = []
        frame_bytes = 0
        while not dctx.eof:
            if pos >= len(pending):
                pending, pos = source.read(READ_CHUNK), 0
                if not pending:
                    raise CorruptObjectError(f"truncated: zstd frame {frame} does not end")
            piece = pending[pos : pos + DECOMPRESS_SLICE]
            pos += len(piece)
            try:
                data = dctx.decompress(piece)
            except zstandard.ZstdError as exc:
                raise CorruptObjectError(f"zstd frame {frame}: {exc}") from None
            frame_bytes += len(data)
            inflated += len(data)
            if max_inflated is not None and inflated > max_inflated:
                raise ObjectTooLargeError(
                    f"inflates to more than {_size(max_inflated)} "
                    "(storage_max_inflated_size), a decompression bomb or a bigger LMDB"
                )
            if frame_bytes > FRAME_MAX_INFLATED:
                raise ObjectTooLargeError(
                    f"zstd frame {frame} inflates to more than {FRAME_MAX_INFLATED >> 20} MiB "
                    "(an entry over the cap, or a decompression bomb)"
                )
            # decoded as it inflates, as in version 1, so that only one pending entry and
            # one piece sit in the unpacker; kept back until the frame's checksum passed
            _feed(unpacker, data, objects)
            data = b""
        if dctx.unused_data:
            pending, pos = dctx.unused_data + pending[pos:], 0
        _give_back(decompressor)  # the frame ended: its stream object is done with
        if not _nothing_pending(unpacker):
            raise CorruptObjectError(f"zstd frame {frame} ends inside a msgpack object")
        del unpacker  # its buffer must not sit beside the objects while they are used
        if not objects:  # a writer never makes one; junk after the trailer, say
            raise CorruptObjectError(f"zstd frame {frame} holds no msgpack object")
        yield objects, frame_bytes
        objects = []
        frame += 1


def _unpacker() -> Any:
    """A msgpack unpacker with the reader's limits."""
    return msgpack.Unpacker(
        raw=False,
        use_list=False,
        strict_map_key=False,
        max_buffer_size=MAX_ENTRY_BYTES + FEED_PIECE,
        max_array_len=1 << 16,
        max_map_len=1 << 10,
    )


def _feed(unpacker: Any, data: bytes, objects: list[Any]) -> None:
    """Feed ``data`` in pieces of FEED_PIECE, taking every complete object out after each."""
    for at in range(0, len(data), FEED_PIECE):
        _feed_piece(unpacker, data, at)
        objects += _unpack_all(unpacker)


def _feed_piece(unpacker: Any, data: bytes, at: int) -> bytes | memoryview:
    """Feed the FEED_PIECE of ``data`` at ``at`` (a bomb's big output goes in pieces,
    without copies); returns the piece. An entry past the cap is too large."""
    piece = data if len(data) <= FEED_PIECE else memoryview(data)[at : at + FEED_PIECE]
    try:
        unpacker.feed(piece)
    except msgpack.BufferFull:
        raise ObjectTooLargeError(
            f"an entry larger than {MAX_ENTRY_BYTES >> 20} MiB (or a decompression bomb)"
        ) from None
    return piece


def _size(n: int) -> str:
    """A byte count as config sizes are written (``64MB``: MB is MiB there)."""
    for unit, shift in (("GB", 30), ("MB", 20), ("KB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n} bytes"


def _unpack_all(unpacker: Any) -> list[Any]:
    try:
        return list(unpacker)
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
        raise CorruptObjectError(f"msgpack: {exc}") from None


def _nothing_pending(unpacker: Any) -> bool:
    """True when the unpacker holds no half-read object.

    ``Unpacker.tell()`` counts the bytes of a half-read object too, so probe: a lone nil
    fed now comes back as exactly one None only if no object was pending; otherwise it
    becomes part of that object (or an error)."""
    unpacker.feed(MSGPACK_NIL)
    try:
        return list(unpacker) == [None]
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException):
        return False


class _ObjectStream:
    """The objects of :func:`_msgpack_batches`, taken one or many at a time, in lists
    bounded by count and by inflated bytes."""

    def __init__(
        self, source: _Readable, max_inflated: int | None = None, *, framed: bool = False
    ) -> None:
        self._batches = (_frame_batches if framed else _msgpack_batches)(source, max_inflated)
        # a list taken never reaches into the next frame: what one frame held is handed
        # out once that frame is checked, not held back until the next one is
        self._framed = framed
        self._buf: list[Any] = []
        self._buf_bytes = 0
        self._pos = 0
        #: the stream has no more objects
        self.ended = False

    def take(self, n: int, max_bytes: int | None = None) -> list[Any]:
        """The next ``n`` objects, fewer where the stream ends (then :attr:`ended`), once
        the batches they come from hold ``max_bytes`` inflated bytes, or (framed) where
        a frame ends."""
        out: list[Any] = []
        # what is left of the current batch counts as all of it: an upper bound
        held = self._buf_bytes if self._pos < len(self._buf) else 0
        while len(out) < n:
            if self._pos >= len(self._buf):
                if out and (self._framed or (max_bytes is not None and held >= max_bytes)):
                    break
                self._buf = []  # let the used batch go before the next one is decoded
                batch = next(self._batches, None)
                if batch is None:
                    self.ended = True
                    break
                (self._buf, self._buf_bytes), self._pos = batch, 0
                held += self._buf_bytes
            piece = self._buf[self._pos : self._pos + n - len(out)]
            self._pos += len(piece)
            if not out and len(piece) == n:
                return piece
            out += piece
        return out

    def pending(self) -> bool:
        """True when objects of the last batch taken are still to be taken."""
        return self._pos < len(self._buf)

    def next(self) -> Any:
        """The next object; raises StopIteration at the end of the stream."""
        got = self.take(1)
        if not got:
            raise StopIteration
        return got[0]

    def __iter__(self) -> Iterator[Any]:
        while got := self.take(1):
            yield got[0]


def _parse_header(obj: Any) -> SnapshotHeader:
    if not isinstance(obj, dict):
        raise CorruptObjectError("foreign format: the object does not start with a header map")
    if obj.get("format") != FORMAT_NAME:
        raise CorruptObjectError(f"foreign format {obj.get('format')!r}")
    version = obj.get("version")
    if not isinstance(version, int) or version < 1 or version > FORMAT_VERSION:
        raise CorruptObjectError(f"unsupported format version {version!r}")
    for key in _HEADER_KEYS:
        if key not in obj:
            raise CorruptObjectError(f"header lacks {key!r}")
    dbis_raw = obj["dbis"]
    if not isinstance(dbis_raw, (list, tuple)):
        raise CorruptObjectError("header 'dbis' is not a list")
    dbis = []
    for d in dbis_raw:
        if not (
            isinstance(d, dict)
            and isinstance(d.get("name"), bytes)
            and 0 < len(d["name"]) <= MAX_KEY_BYTES
            and isinstance(d.get("flags"), int)
            and isinstance(d.get("entries"), int)
            and d["entries"] >= 0
            and d.get("transform", "") in TRANSFORMS
        ):
            raise CorruptObjectError(f"bad DBI description in header: {d!r:.200}")
        dbis.append(DbiInfo(d["name"], d["flags"], d.get("transform", ""), d["entries"]))
    names = [d.name for d in dbis]
    if len(set(names)) != len(names):
        raise CorruptObjectError("header lists a DBI twice")
    kind = obj["kind"]
    if kind not in KINDS:
        raise CorruptObjectError(f"unknown object kind {kind!r}")
    for key, typ in (("db", str), ("instance", str), ("timestamp_ns", int), ("txn_id", int)):
        if not isinstance(obj[key], typ):
            raise CorruptObjectError(f"header {key!r} has the wrong type")
    base = obj.get("base_timestamp_ns")
    return SnapshotHeader(
        db=obj["db"],
        instance=obj["instance"],
        hostname=str(obj.get("hostname", "")),
        timestamp_ns=obj["timestamp_ns"],
        txn_id=obj["txn_id"],
        dbis=tuple(dbis),
        kind=kind,
        base_timestamp_ns=base if isinstance(base, int) else None,
        version=version,
    )


def _reversed_bytes(k: bytes) -> bytes:
    return k[::-1]


def _key_order(flags: int) -> Any:
    """Sort key for a DBI's keys, as LMDB orders them: INTEGERKEY DBIs order native
    (little-endian) integers; REVERSEKEY DBIs compare bytes from the end."""
    if flags & MDB_INTEGERKEY:

        def int_key(k: bytes) -> tuple[int, bytes]:
            if len(k) == 4:
                return (struct.unpack("<I", k)[0], k)
            if len(k) == 8:
                return (struct.unpack("<Q", k)[0], k)
            return (-1, k)

        return int_key
    if flags & MDB_REVERSEKEY:
        return _reversed_bytes
    return None


def _check_entry(obj: Any, dbi: DbiInfo, index: int) -> Entry:
    # type() identity checks: the common case costs one tuple unpack and a few compares
    if type(obj) is tuple and len(obj) == 4:
        key, ts, flags, value = obj
        if (
            type(key) is bytes
            and type(value) is bytes
            and type(ts) is int
            and type(flags) is int
            and 0 < len(key) <= MAX_KEY_BYTES
            and 0 <= ts < 1 << 64
            and 0 <= flags < 256
        ):
            return key, ts, flags, value
    if not (isinstance(obj, tuple) and len(obj) == 4):
        raise CorruptObjectError(f"DBI {dbi.name!r} entry {index}: not a 4-element entry")
    key = obj[0]
    if isinstance(key, bytes) and not 0 < len(key) <= MAX_KEY_BYTES:
        raise CorruptObjectError(f"DBI {dbi.name!r} entry {index}: key length {len(key)}")
    raise CorruptObjectError(f"DBI {dbi.name!r} entry {index}: wrong field types")


def _check_transformed_key(key: bytes, dbi: DbiInfo, index: int) -> None:
    try:
        decode_key(key)
    except TransformError as exc:
        raise CorruptObjectError(f"DBI {dbi.name!r} entry {index}: {exc}") from None


_ONLY_TUPLE = {tuple}
_ONLY_INT = {int}
_ONLY_BYTES = {bytes}
_JOIN = b"".join


def _valid_chunk(chunk: list[Any], prev: Any, order: Any) -> Any:
    """The sort key of the chunk's last entry if every entry is well-formed and the keys
    strictly increase after ``prev``; None otherwise (then :func:`_check_slowly` finds
    which entry is wrong). Column-wise with map/set/join/min/max, so the loops run in C:
    the entry-by-entry check was a fifth of the time to read an object."""
    try:
        if set(map(type, chunk)) != _ONLY_TUPLE:
            return None
        # strict: an entry of another length raises, as does unpacking other than 4 columns
        keys, stamps, flags, values = zip(*chunk, strict=True)
        # exact types: msgpack's true/false arrive as bool, an int subclass
        if set(map(type, stamps + flags)) != _ONLY_INT or min(stamps) < 0:
            return None  # msgpack ints never reach 1 << 64
        # join takes only bytes-like objects, and msgpack makes no bytes-like but bytes;
        # keys are short, values may be large, so values are checked by type, not copied
        _JOIN(keys)
        if set(map(type, values)) != _ONLY_BYTES:
            return None
        bytes(flags)  # ValueError outside 0..255
    except (TypeError, ValueError):
        return None
    if max(map(len, keys)) > MAX_KEY_BYTES:
        return None
    sort_keys = keys if order is None else list(map(order, keys))
    if prev is not None and not prev < sort_keys[0]:
        return None
    if not all(map(operator.lt, sort_keys, islice(sort_keys, 1, None))):
        return None
    # an empty key sorts first in every order, so once the keys strictly increase after
    # prev it can only be the DBI's first
    if not keys[0]:
        return None
    return sort_keys[-1]


def _check_slowly(chunk: list[Any], info: DbiInfo, first: int, prev: Any, order: Any) -> Any:
    """Entry by entry: raises CorruptObjectError naming the first bad entry."""
    for index, obj in enumerate(chunk, first):
        entry = _check_entry(obj, info, index)
        sort_key = order(entry[0]) if order else entry[0]
        if prev is not None and sort_key <= prev:
            raise CorruptObjectError(
                f"DBI {info.name!r} entry {index}: keys out of order ({entry[0][:40]!r})"
            )
        prev = sort_key
    return prev


class DbiEntries:
    """One DBI's entries as a :class:`SnapshotReader` reads them, each checked before it is
    handed out: iterate for single entries, or take checked lists with :meth:`chunks`."""

    def __init__(self, objects: _ObjectStream, info: DbiInfo, *, check: bool = True) -> None:
        self.info = info
        self._objects = objects
        self._check = check
        self._index = 0
        self._prev: Any = None
        # transformed keys are plain bytes whatever the original DBI's flags
        self._order = None if info.transform else _key_order(info.flags)

    def chunks(self, size: int = CHECK_CHUNK) -> Iterator[list[Entry]]:
        """The remaining entries in lists of at most ``size`` entries and about
        :data:`CHUNK_MAX_BYTES` (one entry, however big, makes a list)."""
        while self._index < self.info.entries:
            yield self._next_chunk(min(size, self.info.entries - self._index))

    def __iter__(self) -> Iterator[Entry]:
        for chunk in self.chunks():
            yield from chunk

    def _next_chunk(self, n: int) -> list[Entry]:
        info, first = self.info, self._index
        chunk = self._objects.take(n, CHUNK_MAX_BYTES)
        if len(chunk) < n and self._objects.ended:
            raise CorruptObjectError(
                f"truncated: DBI {info.name!r} has {first + len(chunk)} of {info.entries} entries"
            )
        self._index += len(chunk)
        if not self._check:
            return chunk
        last = _valid_chunk(chunk, self._prev, self._order)
        if last is None:
            last = _check_slowly(chunk, info, first, self._prev, self._order)
        if info.transform:
            for index, entry in enumerate(chunk, first):
                _check_transformed_key(entry[0], info, index)
        self._prev = last
        return chunk


_ZEROS = bytes(FRAME_ENTRIES)


class ColumnDbiEntries:
    """One DBI's entries from a version-3 object, block by block, each block checked
    whole before any of it is handed out: as column runs with :meth:`column_chunks`
    (what the merge takes), as entry lists with :meth:`chunks`, or one by one."""

    def __init__(self, objects: _ObjectStream, info: DbiInfo) -> None:
        self.info = info
        self._objects = objects
        self._index = 0
        self._prev: Any = None
        self._order = None if info.transform else _key_order(info.flags)
        self._block: Columns | None = None
        self._pos = 0

    def column_chunks(self, size: int = FRAME_ENTRIES) -> Iterator[Columns]:
        """The remaining entries as runs of at most ``size`` entries, never across blocks."""
        while self._index < self.info.entries:
            block = self._block
            if block is None or self._pos >= len(block):
                block, self._pos = self._next_block(), 0
                self._block = block
            run = block if self._pos == 0 and len(block) <= size else None
            if run is None:
                run = block.sub(self._pos, self._pos + size)
            self._pos += len(run)
            self._index += len(run)
            if self._pos >= len(block):
                self._block = None  # not held beside the next block while it is read
            yield run
            del run, block

    def chunks(self, size: int = CHECK_CHUNK) -> Iterator[list[Entry]]:
        """The remaining entries in lists of at most ``size`` entries."""
        for run in self.column_chunks(size):
            yield run.entries()

    def __iter__(self) -> Iterator[Entry]:
        for chunk in self.chunks():
            yield from chunk

    def _next_block(self) -> Columns:
        info = self.info
        got = self._objects.take(1)
        if not got:
            raise CorruptObjectError(
                f"truncated: DBI {info.name!r} has {self._index} of {info.entries} entries"
            )
        block = _check_block(got[0], info, self._index, self._prev, self._order)
        if self._index + len(block) > info.entries:
            raise CorruptObjectError(
                f"DBI {info.name!r}: a block holds more entries than the header counts"
            )
        last = block.keys[-1]
        self._prev = last if self._order is None else self._order(last)
        return block


def _check_block(obj: Any, info: DbiInfo, first: int, prev: Any, order: Any) -> Columns:
    """A version-3 block as a checked run, or CorruptObjectError in one line naming what
    is wrong: field types, column lengths that disagree with the count or with each
    other, key or entry sizes, keys not strictly increasing (after ``prev``)."""
    where = f"DBI {info.name!r} block at entry {first}"
    if not (type(obj) is tuple and len(obj) == BLOCK_FIELDS):
        raise CorruptObjectError(f"{where}: not a {BLOCK_FIELDS}-field block")
    n, keys, key_lengths, stamps, flags, values, value_lengths = obj
    if type(n) is not int or not 0 < n <= FRAME_ENTRIES:
        raise CorruptObjectError(f"{where}: entry count {n!r:.40} is not 1..{FRAME_ENTRIES}")
    if set(map(type, obj[1:])) != _ONLY_BYTES:
        raise CorruptObjectError(f"{where}: a column is not a binary string")
    for name, column, width in (
        ("key lengths", key_lengths, KEY_LENGTH_BYTES),
        ("timestamps", stamps, STAMP_BYTES),
        ("flags", flags, 1),
        ("value lengths", value_lengths, VALUE_LENGTH_BYTES),
    ):
        if len(column) != n * width:
            raise CorruptObjectError(
                f"{where}: {name} column of {len(column)} bytes for {n} entries"
            )
    klens = _lengths("H", n).unpack(key_lengths)
    vlens = _lengths("I", n).unpack(value_lengths)
    # one count finds the common case, lengths all alike, without a min and a max
    keys_alike = klens.count(klens[0]) == n
    kmin, kmax = (klens[0], klens[0]) if keys_alike else (min(klens), max(klens))
    values_alike = vlens.count(vlens[0]) == n
    vmax = vlens[0] if values_alike else max(vlens)
    if kmin < 1 or kmax > MAX_KEY_BYTES:
        raise CorruptObjectError(f"{where}: a key length outside 1..{MAX_KEY_BYTES}")
    if sum(klens) != len(keys):
        raise CorruptObjectError(
            f"{where}: key lengths add up to {sum(klens)}, the keys column has {len(keys)}"
        )
    if sum(vlens) != len(values):
        raise CorruptObjectError(
            f"{where}: value lengths add up to {sum(vlens)}, the values column has {len(values)}"
        )
    if vmax + kmax > MAX_ENTRY_DATA and (
        max(map(operator.add, klens, vlens)) > MAX_ENTRY_DATA
    ):
        raise ObjectTooLargeError(f"{where}: an entry larger than {MAX_ENTRY_BYTES >> 20} MiB")
    key_length = klens[0] if keys_alike else None
    if key_length is not None:
        key_list = list(_uniform_cut(key_length, n).unpack(keys))
    else:
        bounds = [0, *accumulate(klens)]
        key_list = list(map(keys.__getitem__, map(slice, bounds, bounds[1:])))
    sort_keys = key_list if order is None else list(map(order, key_list))
    if (prev is not None and not prev < sort_keys[0]) or not all(
        map(operator.lt, sort_keys, islice(sort_keys, 1, None))
    ):
        index = first + next(
            (i for i in range(n) if (sort_keys[i - 1] if i else prev) is not None
             and not (sort_keys[i - 1] if i else prev) < sort_keys[i]),
            0,
        )
        raise CorruptObjectError(f"DBI {info.name!r} entry {index}: keys out of order")
    if info.transform:
        for index, key in enumerate(key_list, first):
            _check_transformed_key(key, info, index)
    offsets = [0, *accumulate(vlens)]
    value_length = vlens[0] if values_alike else None
    return Columns(key_list, stamps, flags, values, offsets, value_length)


@functools.lru_cache(maxsize=64)
def _lengths(code: str, n: int) -> struct.Struct:
    """The unpacking of a column of ``n`` big-endian lengths."""
    return struct.Struct(f">{n}{code}")


@functools.lru_cache(maxsize=64)
def _uniform_cut(length: int, n: int) -> struct.Struct:
    """The cut of ``n`` joined strings of ``length`` bytes each (keys of one length are
    common, and compiling a layout costs about as much as using it)."""
    return struct.Struct(f"{length}s" * n)


class SnapshotReader:
    """Read an object as a stream: the header first, then each DBI's entries in order.

    Every entry is checked before it is handed out; the trailer and the frame end are
    checked after the last DBI. Use :func:`verify_snapshot` before applying anything.

    ``verified=True`` says :func:`verify_snapshot` has just passed on this same file, so
    the second read, the one that merges, skips the entry checks (a third of its time)
    and checks only counts, trailer and frame. Only for a file no one else writes, such
    as the syncer's own spool file. ``max_inflated``: an object that inflates past this
    many bytes raises ObjectTooLargeError (no limit when None).
    """

    def __init__(
        self, source: IO[bytes], *, verified: bool = False, max_inflated: int | None = None
    ) -> None:
        self._verified = verified
        read, version = _peek_version(source)
        framed = isinstance(version, int) and version >= FRAMED_VERSION
        self._columns = isinstance(version, int) and version >= COLUMNS_VERSION
        #: every entry handed out comes from a zstd frame whose checksum passed, so
        #: what is read may be applied as it is read (version 2; DESIGN §4)
        self.checks_as_it_reads = framed
        self._objects = _ObjectStream(_Replay(read, source), max_inflated, framed=framed)
        try:
            first = self._objects.next()
        except StopIteration:
            raise CorruptObjectError("empty object") from None
        self.header = _parse_header(first)
        if framed and self._objects.pending():
            raise CorruptObjectError("the header's zstd frame holds more than the header")
        self._consumed = False

    def dbis(self) -> Iterator[tuple[DbiInfo, DbiEntries | ColumnDbiEntries]]:
        """Yield (DbiInfo, entries) in header order; each DBI's entries must be read in turn."""
        if self._consumed:
            raise RuntimeError("a SnapshotReader can be read once")
        self._consumed = True
        for info in self.header.dbis:
            entries: DbiEntries | ColumnDbiEntries
            if self._columns:
                entries = ColumnDbiEntries(self._objects, info)
            else:
                entries = DbiEntries(self._objects, info, check=not self._verified)
            yield info, entries
            _drain(entries.chunks())  # what the caller left, to stay in step
        self._finish()

    def _finish(self) -> None:
        try:
            trailer = self._objects.next()
        except StopIteration:
            raise CorruptObjectError("truncated: no trailer") from None
        if not (isinstance(trailer, dict) and trailer.get("trailer") is True):
            raise CorruptObjectError("more entries than the header counts")
        if trailer.get("entries") != self.header.total_entries:
            raise CorruptObjectError(
                f"trailer counts {trailer.get('entries')!r} entries, "
                f"header {self.header.total_entries}"
            )
        for _extra in self._objects:
            raise CorruptObjectError("data after the trailer")


def read_header(source: IO[bytes]) -> SnapshotHeader:
    """Only the header (cheap; nothing else is checked)."""
    return SnapshotReader(source).header


def verify_snapshot(source: IO[bytes], *, max_inflated: int | None = None) -> SnapshotHeader:
    """Read a whole object and check everything; return its header or raise
    CorruptObjectError (ObjectTooLargeError past ``max_inflated`` inflated bytes)."""
    reader = SnapshotReader(source, max_inflated=max_inflated)
    for _info, entries in reader.dbis():
        _drain(entries.chunks())
    return reader.header


def _drain(chunks: Iterable[Any]) -> None:
    """Consume ``chunks`` holding none of them: a ``for`` loop's variable would keep the
    last chunk alive while the next is decoded, twice the memory."""
    deque(chunks, maxlen=0)


class EvsZstFormat(SnapshotFormat):
    """``.evs.zst``: evsync's own format (DESIGN §4)."""

    extension = EXT_EVSYNC

    def reader(
        self, source: IO[bytes], *, verified: bool = False, max_inflated: int | None = None
    ) -> SnapshotReader:
        """See :class:`SnapshotReader`."""
        return SnapshotReader(source, verified=verified, max_inflated=max_inflated)

    def write(
        self, out: IO[bytes], header: SnapshotHeader, dbi_entries: Iterable[Iterable[Entry]]
    ) -> WriteStats:
        """See :func:`write_snapshot`."""
        return write_snapshot(out, header, dbi_entries)

    def open_checked(
        self, source: IO[bytes], *, max_inflated: int | None = None
    ) -> SnapshotReader | None:
        """Version 2 objects: each zstd frame is checked before its entries come out."""
        reader = SnapshotReader(source, max_inflated=max_inflated)
        return reader if reader.checks_as_it_reads else None


EVS_ZST = EvsZstFormat()
