"""Lightning Stream's ``dupsort_hack_v1`` key transform, which turns DUPSORT pairs into unique keys.

A DUPSORT DBI holds several values per key; the shadow and the snapshot need one
entry per pair. The transform (DESIGN §6, byte-identical to LS) makes the key::

    key ‖ 00 00 00 00 ‖ prefix(value) ‖ len(key)

where ``prefix(value)`` is the value cut so the whole key is at most 511 bytes (LMDB's
default key limit) and ``len(key)`` is one byte (so keys are 1..255 bytes). The value
itself is stored unchanged. Encoded keys must come out strictly increasing in the
order LMDB lists the pairs; two values sharing a long prefix, or separator bytes in
the data, break that, and the pair is refused with a :class:`TransformError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from evsync.errors import TransformError

TRANSFORM_NAME = "dupsort_hack_v1"
MAX_ENCODED_KEY = 511
MAX_KEY = 255
SEPARATOR = b"\x00\x00\x00\x00"
# separator plus the trailing length byte
OVERHEAD = len(SEPARATOR) + 1


def encode_key(key: bytes, value: bytes) -> bytes:
    """The unique shadow/snapshot key of one DUPSORT pair."""
    if not 1 <= len(key) <= MAX_KEY:
        raise TransformError(f"key length {len(key)} is outside 1..{MAX_KEY} (key {key[:64]!r})")
    room = MAX_ENCODED_KEY - len(key) - OVERHEAD
    return key + SEPARATOR + value[:room] + bytes((len(key),))


def decode_key(encoded: bytes) -> bytes:
    """The original DUPSORT key of an encoded key; TransformError when it is not one."""
    if len(encoded) < 1 + OVERHEAD:
        raise TransformError(f"encoded key too short ({len(encoded)} bytes): {encoded[:64]!r}")
    length = encoded[-1]
    if length == 0 or len(encoded) < length + OVERHEAD:
        raise TransformError(f"encoded key has a bad length byte {length}: {encoded[:64]!r}")
    if encoded[length : length + len(SEPARATOR)] != SEPARATOR:
        raise TransformError(f"encoded key lacks the zero separator: {encoded[:64]!r}")
    return encoded[:length]


def encode_pairs(dbi: bytes, pairs: Iterable[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
    """Encode (key, value) pairs in LMDB order, checking that encoded keys strictly increase."""
    prev = b""
    for key, value in pairs:
        try:
            encoded = encode_key(key, value)
        except TransformError as exc:
            raise TransformError(f"DBI {dbi.decode(errors='replace')!r}: {exc}") from None
        if encoded <= prev:
            what = "collides with" if encoded == prev else "sorts before"
            raise TransformError(
                f"DBI {dbi.decode(errors='replace')!r} key {key[:64]!r}: encoded pair {what} "
                "the previous one (values share a long prefix or hold zero bytes)"
            )
        prev = encoded
        yield encoded, value
