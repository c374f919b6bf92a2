"""The native LMDB value header (DESIGN §2): layout, parsing and encoding."""

from __future__ import annotations

import struct

import pytest

from evsync.errors import HeaderError
from evsync.lmdb.header import (
    FLAG_DELETED,
    HEADER_SIZE,
    encode_header,
    encode_value,
    parse_header,
    split_value,
)

TS = 0x0102030405060708
TXN = 0x1112131415161718


def raw_header(
    ts: int = TS,
    txn: int = TXN,
    version: int = 0,
    flags: int = 0,
    reserved: bytes = b"\0\0\0\0",
    blocks: int = 0,
) -> bytes:
    """A header built byte by byte from DESIGN §2, independent of the code under test."""
    return (
        ts.to_bytes(8, "big")
        + txn.to_bytes(8, "big")
        + bytes([version, flags])
        + reserved
        + blocks.to_bytes(2, "big")
    )


class TestRoundTrip:
    """Encoding then parsing gives back what was written."""

    def test_encode_then_parse_gives_fields_back(self) -> None:
        """A header encoded with ts, txn and flags parses back to the same fields."""
        header = parse_header(encode_header(TS, TXN, FLAG_DELETED))
        assert (header.timestamp, header.txn_id, header.flags) == (TS, TXN, FLAG_DELETED)
        assert header.offset == HEADER_SIZE
        assert header.deleted

    def test_live_value_round_trip(self) -> None:
        """encode_value then split_value returns the header and the application value."""
        header, app = split_value(encode_value(TS, TXN, 0, b"app\x00value"))
        assert app == b"app\x00value"
        assert (header.timestamp, header.txn_id, header.flags) == (TS, TXN, 0)
        assert not header.deleted

    def test_parse_accepts_memoryview(self) -> None:
        """A memoryview (what LMDB buffers give) parses like bytes."""
        value = encode_value(TS, TXN, 0, b"xyz")
        header, app = split_value(memoryview(value))
        assert header.timestamp == TS
        assert app == b"xyz"

    def test_maximum_field_values_round_trip(self) -> None:
        """The full unsigned 64-bit range of ts and txn id survives a round trip."""
        top = (1 << 64) - 1
        header = parse_header(encode_header(top, top, 0))
        assert (header.timestamp, header.txn_id) == (top, top)


class TestLayout:
    """The bytes sit at the exact offsets of DESIGN §2, big-endian."""

    def test_encoded_header_matches_hand_built_bytes(self) -> None:
        """encode_header writes ts, txn, version 0, flags, zero reserved and N=0 exactly."""
        assert encode_header(TS, TXN, FLAG_DELETED) == raw_header(flags=FLAG_DELETED)

    def test_field_offsets(self) -> None:
        """Bytes 0-7 ts, 8-15 txn, 16 version, 17 flags, 18-21 reserved, 22-23 N."""
        data = encode_header(TS, TXN, FLAG_DELETED)
        assert len(data) == HEADER_SIZE == 24
        assert data[0:8] == bytes.fromhex("0102030405060708")
        assert data[8:16] == bytes.fromhex("1112131415161718")
        assert data[16] == 0
        assert data[17] == 0x01
        assert data[18:22] == b"\0\0\0\0"
        assert data[22:24] == b"\0\0"

    def test_parse_reads_big_endian_at_offsets(self) -> None:
        """A hand-built header parses with ts from bytes 0-7 and txn from bytes 8-15."""
        header = parse_header(raw_header(ts=1, txn=256, flags=FLAG_DELETED) + b"v")
        assert header.timestamp == 1
        assert header.txn_id == 256
        assert header.flags == FLAG_DELETED

    def test_reserved_bytes_ignored_on_read(self) -> None:
        """Non-zero reserved bytes 18-21 do not affect parsing."""
        header, app = split_value(raw_header(reserved=b"\xff\xfe\xfd\xfc") + b"app")
        assert header.timestamp == TS
        assert app == b"app"

    def test_encode_value_is_header_then_app_value(self) -> None:
        """A full value is the 24-byte header immediately followed by the application value."""
        value = encode_value(TS, TXN, 0, b"payload")
        assert value == raw_header() + b"payload"


class TestExtensionBlocks:
    """Extension blocks are skipped on read and never written."""

    @pytest.mark.parametrize("blocks", [1, 2])
    def test_blocks_skipped_on_read(self, blocks: int) -> None:
        """With N extension blocks the app value starts after 24 + 8N bytes."""
        value = raw_header(blocks=blocks) + b"\xaa" * (8 * blocks) + b"the-app-value"
        header, app = split_value(value)
        assert header.offset == HEADER_SIZE + 8 * blocks
        assert app == b"the-app-value"

    def test_blocks_with_empty_app_value(self) -> None:
        """A value that is exactly header plus blocks has an empty app value."""
        header, app = split_value(raw_header(blocks=2) + b"\x01" * 16)
        assert app == b""
        assert header.offset == 40

    def test_encode_never_writes_blocks(self) -> None:
        """Encoded headers always declare N = 0 extension blocks."""
        assert struct.unpack(">H", encode_header(TS, TXN, 0)[22:24]) == (0,)


class TestRejection:
    """Values that are not headers raise HeaderError."""

    @pytest.mark.parametrize("version", [1, 2, 255])
    def test_nonzero_version_rejected(self, version: int) -> None:
        """A header version other than 0 is not a header."""
        with pytest.raises(HeaderError):
            parse_header(raw_header(version=version) + b"value")

    @pytest.mark.parametrize("length", [0, 1, 16, 23])
    def test_too_short_rejected(self, length: int) -> None:
        """A value shorter than 24 bytes is rejected."""
        with pytest.raises(HeaderError):
            parse_header(raw_header()[:length])

    @pytest.mark.parametrize(("blocks", "present"), [(1, 0), (1, 7), (2, 8), (2, 15)])
    def test_too_short_for_blocks_rejected(self, blocks: int, present: int) -> None:
        """A value that declares N blocks but holds fewer than 8N bytes after the header fails."""
        with pytest.raises(HeaderError):
            parse_header(raw_header(blocks=blocks) + b"\0" * present)

    def test_exactly_24_bytes_is_valid(self) -> None:
        """A bare 24-byte header (a tombstone, for example) is valid."""
        assert parse_header(raw_header(flags=FLAG_DELETED)).deleted


class TestFlags:
    """Only the deleted flag is written; tombstones carry no app value."""

    @pytest.mark.parametrize("flags", [0x02, 0x80, 0xFE])
    def test_unknown_flags_dropped_by_encode(self, flags: int) -> None:
        """Flags other than 0x01 are not kept by encode_header."""
        assert encode_header(TS, TXN, flags)[17] == 0

    def test_deleted_flag_survives_with_unknown_flags(self) -> None:
        """0x01 survives encoding even when mixed with unknown flags."""
        assert encode_header(TS, TXN, 0xFF)[17] == FLAG_DELETED

    def test_parse_reports_stored_flags(self) -> None:
        """Parsing reports the deleted flag of a stored value."""
        assert parse_header(raw_header(flags=0x01)).deleted
        assert not parse_header(raw_header(flags=0x00)).deleted

    def test_tombstone_encode_drops_app_value(self) -> None:
        """encode_value with the deleted flag writes the header only."""
        value = encode_value(TS, TXN, FLAG_DELETED, b"should vanish")
        assert value == raw_header(flags=FLAG_DELETED)
        header, app = split_value(value)
        assert header.deleted
        assert app == b""
