"""The evs.zst object format (DESIGN §4): round trips and rejection of every corruption."""

from __future__ import annotations

import io
import os
import random
import struct
from collections.abc import Iterable
from typing import Any

import msgpack
import pytest
import zstandard

from evsync.errors import CorruptObjectError
from evsync.snapshot import (
    KIND_DELTA,
    DbiInfo,
    Entry,
    SnapshotHeader,
    SnapshotReader,
    read_header,
    verify_snapshot,
    write_snapshot,
)
from evsync.snapshot.evs import CHECK_CHUNK

INTEGERKEY = 0x08


def u32(n: int) -> bytes:
    """A native (little-endian) 4-byte LMDB integer key."""
    return struct.pack("<I", n)


DATA: dict[bytes, tuple[int, list[Entry]]] = {
    b"alpha": (
        0,
        [
            (b"a", 10, 0, b"one"),
            (b"b", 11, 1, b""),  # a tombstone
            (b"c", 12, 0, b"three"),
        ],
    ),
    b"empty": (0, []),
    b"binary": (
        0,
        [
            (b"\x00", 1, 0, b"\x00\xff\x00"),
            (b"\x00\x00", 2, 0, bytes(range(256))),
            (b"\x7f\x80", 3, 0, b""),
            (b"\xff" * 511, (1 << 64) - 1, 0, b"\xfe" * 1000),
        ],
    ),
    b"ints": (
        INTEGERKEY,
        [(u32(n), 100 + n, 0, f"v{n}".encode()) for n in (1, 2, 255, 256, 65536, 2**32 - 1)],
    ),
}


def make_header(data: dict[bytes, tuple[int, list[Entry]]] = DATA, **kwargs: Any) -> SnapshotHeader:
    """A header that matches ``data``."""
    dbis = tuple(DbiInfo(name, flags, "", len(entries)) for name, (flags, entries) in data.items())
    fields: dict[str, Any] = {
        "db": "main",
        "instance": "inst-1",
        "hostname": "host",
        "timestamp_ns": 1_700_000_000_123_456_789,
        "txn_id": 42,
        "dbis": dbis,
    }
    fields.update(kwargs)
    return SnapshotHeader(**fields)


def encode(data: dict[bytes, tuple[int, list[Entry]]] = DATA, **kwargs: Any) -> bytes:
    """An object written by write_snapshot."""
    out = io.BytesIO()
    write_snapshot(out, make_header(data, **kwargs), [entries for _f, entries in data.values()])
    return out.getvalue()


def read_all(blob: bytes) -> tuple[SnapshotHeader, list[tuple[DbiInfo, list[Entry]]]]:
    """Everything a reader yields."""
    reader = SnapshotReader(io.BytesIO(blob))
    return reader.header, [(info, list(entries)) for info, entries in reader.dbis()]


def wire_header(dbis: list[tuple[bytes, int, int]], **overrides: Any) -> dict[str, Any]:
    """A header map built by hand; dbis are (name, flags, entries)."""
    header: dict[str, Any] = {
        "format": "evsync-snapshot",
        "version": 1,
        "db": "main",
        "instance": "inst-1",
        "hostname": "h",
        "timestamp_ns": 1,
        "txn_id": 1,
        "kind": "full",
        "base_timestamp_ns": None,
        "dbis": [{"name": n, "flags": f, "transform": "", "entries": c} for n, f, c in dbis],
    }
    header.update(overrides)
    return header


def frame(*objects: Any, tail: bytes = b"", raw: bytes = b"") -> bytes:
    """A checksummed zstd frame of msgpack ``objects`` (then ``raw`` bytes), plus ``tail``."""
    packer = msgpack.Packer(use_bin_type=True)
    payload = b"".join(packer.pack(o) for o in objects) + raw
    return zstandard.ZstdCompressor(write_checksum=True).compress(payload) + tail


def assert_corrupt(blob: bytes) -> None:
    """verify_snapshot raises CorruptObjectError (and nothing else) on ``blob``."""
    with pytest.raises(CorruptObjectError):
        verify_snapshot(io.BytesIO(blob))


GOOD_ONE_DBI = [wire_header([(b"d", 0, 2)]), [b"k1", 1, 0, b"v"], [b"k2", 2, 0, b"w"]]
TRAILER_2 = {"trailer": True, "entries": 2}


class TestRoundTrip:
    """What write_snapshot writes, SnapshotReader reads back unchanged."""

    def test_entries_round_trip(self) -> None:
        """Every DBI comes back in order with exactly its entries, incl. empty and tombstone."""
        header, dbis = read_all(encode())
        assert [info.name for info, _ in dbis] == list(DATA)
        for info, entries in dbis:
            flags, expected = DATA[info.name]
            assert info.flags == flags
            assert info.entries == len(expected)
            assert entries == expected
        assert header.total_entries == sum(len(e) for _f, e in DATA.values())

    def test_header_round_trip(self) -> None:
        """Header fields (db, instance, host, timestamp, txn id, kind, base) survive."""
        blob = encode(kind=KIND_DELTA, base_timestamp_ns=123)
        header = read_header(io.BytesIO(blob))
        assert header == make_header(kind=KIND_DELTA, base_timestamp_ns=123)

    def test_verify_returns_header(self) -> None:
        """verify_snapshot reads everything and returns the header."""
        assert verify_snapshot(io.BytesIO(encode())) == make_header()

    def test_integer_keys_in_integer_order_accepted(self) -> None:
        """An INTEGERKEY DBI's keys in integer (not byte) order are accepted."""
        keys = [e[0] for e in DATA[b"ints"][1]]
        assert keys != sorted(keys)  # byte order differs from integer order here
        _header, dbis = read_all(encode())
        assert [e[0] for e in dict((i.name, e) for i, e in dbis)[b"ints"]] == keys

    def test_integer_keys_in_byte_order_rejected(self) -> None:
        """An INTEGERKEY DBI whose keys come in byte order (not integer order) is rejected."""
        entries = [(u32(256), 1, 0, b""), (u32(1), 1, 0, b"")]  # 00 01.. < 01 00.. bytewise
        assert entries[0][0] < entries[1][0]
        blob = frame(
            wire_header([(b"i", INTEGERKEY, 2)]),
            *[list(e) for e in entries],
            TRAILER_2,
        )
        assert_corrupt(blob)

    def test_no_dbis(self) -> None:
        """An object with no DBIs round-trips with an empty DBI list."""
        header, dbis = read_all(encode({}))
        assert header.dbis == ()
        assert dbis == []

    def test_large_object_round_trip(self) -> None:
        """An object spanning many read chunks round-trips."""
        rng = random.Random(1)
        entries = [(b"k%06d" % i, i, 0, rng.randbytes(200)) for i in range(300)]
        _header, dbis = read_all(encode({b"big": (0, entries)}))
        assert dbis[0][1] == entries

    def test_partially_drained_dbis_stay_in_step(self) -> None:
        """A caller that skips a DBI's entries still gets the next DBI's entries right."""
        reader = SnapshotReader(io.BytesIO(encode()))
        seen = {info.name: list(e) for info, e in reader.dbis() if info.name != b"alpha"}
        assert seen == {name: entries for name, (_f, entries) in DATA.items() if name != b"alpha"}

    def test_reader_reads_once(self) -> None:
        """A SnapshotReader's dbis() can be consumed only once."""
        reader = SnapshotReader(io.BytesIO(encode()))
        list(reader.dbis())
        with pytest.raises(RuntimeError):
            list(reader.dbis())


class TestWriterRefuses:
    """write_snapshot never produces an object whose counts disagree."""

    def test_fewer_entries_than_promised(self) -> None:
        """A header promising more entries than written raises ValueError."""
        header = make_header({b"d": (0, [(b"a", 1, 0, b"")] * 3)})
        with pytest.raises(ValueError, match="promised 3"):
            write_snapshot(io.BytesIO(), header, [[(b"a", 1, 0, b""), (b"b", 1, 0, b"")]])

    def test_more_entries_than_promised(self) -> None:
        """A header promising fewer entries than written raises ValueError."""
        header = make_header({b"d": (0, [(b"a", 1, 0, b"")])})
        with pytest.raises(ValueError, match="promised 1"):
            write_snapshot(io.BytesIO(), header, [[(b"a", 1, 0, b""), (b"b", 1, 0, b"")]])


def _truncated(blob: bytes) -> Iterable[int]:
    """Cut offsets: every byte of a small object, the checksum bytes always."""
    return sorted(set(range(len(blob))) | {len(blob) - k for k in range(1, 5)})


class TestTruncation:
    """A truncated object is rejected wherever it is cut."""

    def test_every_cut_point(self) -> None:
        """Cutting the object at any offset raises CorruptObjectError."""
        blob = encode()
        for cut in _truncated(blob):
            with pytest.raises(CorruptObjectError):
                verify_snapshot(io.BytesIO(blob[:cut]))

    @pytest.mark.parametrize("missing", [1, 2, 3, 4])
    def test_checksum_cut(self, missing: int) -> None:
        """Cutting only the last 1-4 bytes (the content checksum) is detected."""
        blob = encode()
        assert_corrupt(blob[:-missing])

    def test_large_object_cut_points(self) -> None:
        """A multi-chunk object cut at many offsets is rejected, never partially accepted."""
        rng = random.Random(7)
        entries = [(b"k%06d" % i, i, 0, rng.randbytes(100)) for i in range(200)]
        blob = encode({b"big": (0, entries)})
        assert len(blob) > 3 * 4096
        cuts = {*range(0, len(blob), 97), 4095, 4096, 4097, 8192, *range(len(blob) - 8, len(blob))}
        for cut in sorted(cuts):
            with pytest.raises(CorruptObjectError):
                verify_snapshot(io.BytesIO(blob[:cut]))

    def test_empty_blob(self) -> None:
        """An empty object is rejected."""
        assert_corrupt(b"")

    def test_msgpack_ends_inside_object(self) -> None:
        """A complete zstd frame whose msgpack stream stops mid-entry is rejected."""
        packed_entry = msgpack.packb([b"k1", 1, 0, b"value"], use_bin_type=True)
        assert_corrupt(frame(wire_header([(b"d", 0, 1)]), raw=packed_entry[:-2]))

    def test_frame_without_trailer(self) -> None:
        """A complete frame holding all entries but no trailer is rejected."""
        assert_corrupt(frame(*GOOD_ONE_DBI))


class TestFlippedBytes:
    """A changed byte anywhere never yields a silently accepted object."""

    def test_every_byte_flipped(self) -> None:
        """Flipping any byte raises CorruptObjectError unless the decoded content is unchanged."""
        blob = encode()
        expected = read_all(blob)
        rejected = 0
        for pos in range(len(blob)):
            for mask in (0x01, 0x80):
                bad = bytearray(blob)
                bad[pos] ^= mask
                try:
                    got = read_all(bytes(bad))
                except CorruptObjectError:
                    rejected += 1
                    continue
                # zstd may ignore a bit (e.g. in the window size): then nothing changed
                assert got == expected, f"byte {pos} ^ {mask:#x} accepted with other content"
        assert rejected > 2 * len(blob) * 0.9

    def test_flipped_checksum_byte(self) -> None:
        """A changed content-checksum byte is rejected."""
        blob = encode()
        for pos in range(len(blob) - 4, len(blob)):
            bad = bytearray(blob)
            bad[pos] ^= 0x01
            assert_corrupt(bytes(bad))

    def test_flipped_payload_byte_in_stored_block(self) -> None:
        """A flipped byte of an uncompressed (raw) zstd block fails the content checksum."""
        value = random.Random(5).randbytes(2000)  # incompressible: stored as a raw block
        blob = encode({b"d": (0, [(b"k", 1, 0, value)])})
        bad = bytearray(blob)
        pos = bytes(bad).index(value[1000:1016]) + 8
        bad[pos] ^= 0x01
        assert_corrupt(bytes(bad))

    def test_flip_in_large_object(self) -> None:
        """A flipped byte late in a multi-chunk object is still rejected."""
        rng = random.Random(3)
        entries = [(b"k%06d" % i, i, 0, rng.randbytes(100)) for i in range(200)]
        blob = encode({b"big": (0, entries)})
        for pos in (100, 5000, len(blob) // 2, len(blob) - 10, len(blob) - 1):
            bad = bytearray(blob)
            bad[pos] ^= 0x10
            assert_corrupt(bytes(bad))


class TestForeign:
    """Objects that are not evs.zst of a supported version are rejected."""

    def test_foreign_format_name(self) -> None:
        """A zstd frame of msgpack whose format is 'other' is rejected."""
        assert_corrupt(frame(wire_header([], format="other"), {"trailer": True, "entries": 0}))

    def test_unsupported_version(self) -> None:
        """Format version 2 is rejected."""
        assert_corrupt(frame(wire_header([], version=2), {"trailer": True, "entries": 0}))

    @pytest.mark.parametrize("version", [0, None, "1"])
    def test_bad_version_values(self, version: object) -> None:
        """Version 0, a missing version or a string version is rejected."""
        assert_corrupt(frame(wire_header([], version=version), {"trailer": True, "entries": 0}))

    def test_not_zstd(self) -> None:
        """A blob that is not zstd is rejected."""
        assert_corrupt(b"this is not a zstd frame at all, just text" * 10)

    def test_gzip_blob(self) -> None:
        """An LS-style gzip blob is rejected."""
        import gzip

        assert_corrupt(gzip.compress(b"\x0a\x04data" * 50))

    def test_header_not_a_map(self) -> None:
        """A frame whose first msgpack object is not a map is rejected."""
        assert_corrupt(frame([1, 2, 3], {"trailer": True, "entries": 0}))

    def test_header_missing_key(self) -> None:
        """A header without 'dbis' is rejected."""
        header = wire_header([])
        del header["dbis"]
        assert_corrupt(frame(header, {"trailer": True, "entries": 0}))

    def test_unknown_kind(self) -> None:
        """A header with an unknown kind is rejected."""
        assert_corrupt(frame(wire_header([], kind="weird"), {"trailer": True, "entries": 0}))

    def test_zstd_frame_of_garbage(self) -> None:
        """A valid zstd frame of random bytes is rejected."""
        assert_corrupt(zstandard.ZstdCompressor(write_checksum=True).compress(os.urandom(300)))


class TestMalformedMsgpack:
    """msgpack that decodes to shapes Python cannot hold is rejected, never a crash."""

    def test_unhashable_map_key(self) -> None:
        """A msgpack map with an array key (unhashable in Python) is rejected, not a crash."""
        assert_corrupt(frame(raw=b"\x81\x91\x01\x02"))

    def test_unhashable_map_key_inside_entry(self) -> None:
        """An entry holding a map with an array key is rejected, not a crash."""
        assert_corrupt(
            frame(wire_header([(b"d", 0, 1)]), raw=b"\x94\x81\x91\x01\x02\x01\x00\xc4\x00")
        )


class TestBadCounts:
    """Counts that disagree are rejected."""

    def test_header_says_more_than_written(self) -> None:
        """Header says 3 entries, 2 written, trailer says 2: rejected."""
        header = wire_header([(b"d", 0, 3)])
        assert_corrupt(frame(header, *GOOD_ONE_DBI[1:], TRAILER_2))

    def test_header_says_more_trailer_agrees(self) -> None:
        """Header says 3 entries, 2 written, trailer says 3: rejected."""
        header = wire_header([(b"d", 0, 3)])
        assert_corrupt(frame(header, *GOOD_ONE_DBI[1:], {"trailer": True, "entries": 3}))

    def test_trailer_count_mismatch(self) -> None:
        """A trailer counting a different total than the header is rejected."""
        assert_corrupt(frame(*GOOD_ONE_DBI, {"trailer": True, "entries": 5}))

    def test_trailer_missing_count(self) -> None:
        """A trailer without an entry count is rejected."""
        assert_corrupt(frame(*GOOD_ONE_DBI, {"trailer": True}))

    def test_trailer_without_marker(self) -> None:
        """A final map without trailer: true is not a trailer."""
        assert_corrupt(frame(*GOOD_ONE_DBI, {"entries": 2}))
        assert_corrupt(frame(*GOOD_ONE_DBI, {"trailer": 1, "entries": 2}))

    def test_extra_entries_after_declared_count(self) -> None:
        """An entry beyond the header's count is rejected."""
        assert_corrupt(frame(*GOOD_ONE_DBI, [b"k3", 3, 0, b"x"], TRAILER_2))

    def test_hand_built_good_object_is_accepted(self) -> None:
        """The hand-built reference object itself verifies, so the failures above are real."""
        header = verify_snapshot(io.BytesIO(frame(*GOOD_ONE_DBI, TRAILER_2)))
        assert header.total_entries == 2


class TestEntryChecks:
    """Entries out of order, duplicated or malformed are rejected."""

    def test_out_of_order(self) -> None:
        """Keys out of byte order are rejected."""
        header = wire_header([(b"d", 0, 2)])
        assert_corrupt(frame(header, [b"k2", 1, 0, b""], [b"k1", 1, 0, b""], TRAILER_2))

    def test_duplicate_keys(self) -> None:
        """A key repeated within a DBI is rejected."""
        header = wire_header([(b"d", 0, 2)])
        assert_corrupt(frame(header, [b"k1", 1, 0, b""], [b"k1", 2, 0, b""], TRAILER_2))

    def test_duplicate_integer_keys(self) -> None:
        """A repeated key in an INTEGERKEY DBI is rejected."""
        header = wire_header([(b"d", INTEGERKEY, 2)])
        assert_corrupt(frame(header, [u32(5), 1, 0, b""], [u32(5), 2, 0, b""], TRAILER_2))

    @pytest.mark.parametrize(
        "entry",
        [
            pytest.param(["k1", 1, 0, b"v"], id="str-key"),
            pytest.param([b"k1", "1", 0, b"v"], id="str-ts"),
            pytest.param([b"k1", 1, "0", b"v"], id="str-flags"),
            pytest.param([b"k1", 1, 0, "v"], id="str-value"),
            pytest.param([b"k1", -1, 0, b"v"], id="negative-ts"),
            pytest.param([b"k1", 1, 256, b"v"], id="flags-too-big"),
            pytest.param([b"k1", 1.5, 0, b"v"], id="float-ts"),
            pytest.param([b"k1", 1, 0], id="three-fields"),
            pytest.param([b"k1", 1, 0, b"v", b"x"], id="five-fields"),
            pytest.param({"k": 1}, id="map"),
            pytest.param(b"k1", id="bytes"),
            pytest.param([b"", 1, 0, b"v"], id="empty-key"),
            pytest.param([b"k" * 512, 1, 0, b"v"], id="key-too-long"),
            pytest.param([None, 1, 0, b"v"], id="nil-key"),
        ],
    )
    def test_wrong_field_types(self, entry: object) -> None:
        """An entry that is not [bytes key, int ts, int flags, bytes value] is rejected."""
        header = wire_header([(b"d", 0, 1)])
        assert_corrupt(frame(header, entry, {"trailer": True, "entries": 1}))

    def test_bad_entry_never_yielded(self) -> None:
        """The reader raises before yielding an entry that failed its checks."""
        header = wire_header([(b"d", 0, 2)])
        reader = SnapshotReader(
            io.BytesIO(frame(header, [b"k2", 1, 0, b""], [b"k1", 1, 0, b""], TRAILER_2))
        )
        got: list[Entry] = []
        with pytest.raises(CorruptObjectError, match="entry 1: keys out of order"):
            for _info, entries in reader.dbis():
                got.extend(entries)
        assert (b"k1", 1, 0, b"") not in got

    def test_checked_a_chunk_at_a_time(self) -> None:
        """Entries are handed out in checked chunks of CHECK_CHUNK: a bad entry in the
        second chunk stops the read after the whole first chunk, named by its index."""
        n = CHECK_CHUNK + 10
        entries = [[b"k%06d" % i, 1, 0, b"v"] for i in range(n)]
        entries[CHECK_CHUNK + 3][1] = -1
        header = wire_header([(b"d", 0, n)])
        trailer = {"trailer": True, "entries": n}
        reader = SnapshotReader(io.BytesIO(frame(header, *entries, trailer)))
        got: list[Entry] = []
        with pytest.raises(CorruptObjectError, match=f"entry {CHECK_CHUNK + 3}: wrong field"):
            for _info, dbi_entries in reader.dbis():
                got.extend(dbi_entries)
        assert got == [tuple(e) for e in entries[:CHECK_CHUNK]]


class TestTrailingData:
    """Nothing may follow the trailer or the frame."""

    def test_object_after_trailer(self) -> None:
        """A msgpack object after the trailer is rejected."""
        assert_corrupt(frame(*GOOD_ONE_DBI, TRAILER_2, {"more": 1}))

    def test_partial_object_after_trailer(self) -> None:
        """An incomplete msgpack object after the trailer is rejected."""
        assert_corrupt(frame(*GOOD_ONE_DBI, TRAILER_2, raw=b"\x92\x01"))

    def test_second_trailer(self) -> None:
        """A second trailer after the first is rejected."""
        assert_corrupt(frame(*GOOD_ONE_DBI, TRAILER_2, TRAILER_2))

    @pytest.mark.parametrize("tail", [b"x", b"\0" * 4, b"garbage after the frame"])
    def test_bytes_after_frame(self, tail: bytes) -> None:
        """Bytes after the end of the zstd frame are rejected."""
        assert_corrupt(encode() + tail)

    def test_second_frame_after_first(self) -> None:
        """A second zstd frame appended to a valid object is rejected."""
        assert_corrupt(encode() + encode())

    def test_tail_in_later_read_chunk(self) -> None:
        """Data after a frame that ends exactly at a read-chunk boundary is still rejected."""
        value = random.Random(11).randbytes(5000)
        blob = b""
        for size in range(3000, 4096):
            blob = encode({b"d": (0, [(b"k", 1, 0, value[:size])])})
            if len(blob) == 4096:
                break
        assert len(blob) == 4096
        assert verify_snapshot(io.BytesIO(blob)).total_entries == 1
        assert_corrupt(blob + b"tail")
