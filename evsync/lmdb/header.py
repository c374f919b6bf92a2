"""The native value header of DESIGN §2, byte-compatible with Lightning Stream and PowerDNS 4.8+."""

from __future__ import annotations

import struct
from typing import NamedTuple

from evsync.errors import HeaderError

HEADER_SIZE = 24
BLOCK_SIZE = 8
HEADER_VERSION = 0
FLAG_DELETED = 0x01
SYNC_FLAG_MASK = FLAG_DELETED  # only the deleted flag travels between instances

# timestamp, txn id, version, flags, reserved, number of extension blocks
HEADER_STRUCT = _HEADER = struct.Struct(">QQBBIH")


class Header(NamedTuple):
    """A parsed header; ``offset`` is where the application value starts."""

    timestamp: int
    txn_id: int
    flags: int
    offset: int

    @property
    def deleted(self) -> bool:
        """True for a tombstone."""
        return bool(self.flags & FLAG_DELETED)


def _unpack(value: bytes | memoryview) -> tuple[int, int, int, int]:
    """timestamp, txn id, flags and application-value offset, validated."""
    if len(value) < HEADER_SIZE:
        raise HeaderError(f"value too short for a header ({len(value)} < {HEADER_SIZE} bytes)")
    ts, txn, version, flags, _reserved, extra = _HEADER.unpack_from(value)
    if version != HEADER_VERSION:
        raise HeaderError(f"unsupported header version {version} or not a header")
    offset = HEADER_SIZE + BLOCK_SIZE * extra
    if len(value) < offset:
        raise HeaderError(
            f"value too short for {extra} extension blocks ({len(value)} < {offset} bytes)"
        )
    return ts, txn, flags, offset


def parse_header(value: bytes | memoryview) -> Header:
    """Parse the header at the start of ``value``; extension blocks are skipped."""
    return Header(*_unpack(value))


def timestamp_and_offset(value: bytes | memoryview) -> tuple[int, int]:
    """Timestamp and application-value offset only: the merge's hot path."""
    ts, _txn, _flags, offset = _unpack(value)
    return ts, offset


def encode_header(timestamp: int, txn_id: int, flags: int) -> bytes:
    """A 24-byte header; writers never add extension blocks and never keep unknown flags."""
    return _HEADER.pack(timestamp, txn_id, HEADER_VERSION, flags & SYNC_FLAG_MASK, 0, 0)


def encode_value(timestamp: int, txn_id: int, flags: int, app_value: bytes) -> bytes:
    """A full LMDB value: header then application value (empty for a tombstone)."""
    if flags & FLAG_DELETED:
        app_value = b""
    return encode_header(timestamp, txn_id, flags) + app_value


def split_value(value: bytes | memoryview) -> tuple[Header, bytes]:
    """Header and application value of a stored LMDB value."""
    header = parse_header(value)
    return header, bytes(value[header.offset :])
