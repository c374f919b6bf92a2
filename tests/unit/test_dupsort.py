"""The dupsort_hack_v1 key transform (DESIGN §6), byte for byte as Lightning Stream."""

from __future__ import annotations

import pytest

from evsync.errors import TransformError
from evsync.lmdb.dupsort import decode_key, encode_key, encode_pairs


class TestEncodeKey:
    """Encoding one DUPSORT pair into a unique key."""

    def test_lightning_stream_example(self) -> None:
        """key=foo1 encodes to key ‖ 00000000 ‖ foo1 ‖ 03, the example of LS's unit test."""
        assert encode_key(b"key", b"foo1") == b"key\0\0\0\0foo1\x03"

    def test_empty_value(self) -> None:
        """A tombstone's empty value leaves only key, separator and length byte."""
        assert encode_key(b"key", b"") == b"key\0\0\0\0\x03"

    def test_long_value_is_truncated_to_511_bytes(self) -> None:
        """A long value keeps the prefix that fits a 511-byte key (503 bytes for a 3-byte key)."""

        encoded = encode_key(b"key", b"v" * 2000)
        assert len(encoded) == 511
        assert encoded == b"key\0\0\0\0" + b"v" * 503 + b"\x03"

    def test_255_byte_key_is_accepted(self) -> None:
        """The longest key whose length fits one byte is accepted."""
        encoded = encode_key(b"k" * 255, b"x" * 600)
        assert len(encoded) == 511 and encoded[-1] == 255

    @pytest.mark.parametrize("key", [b"", b"k" * 256, b"k" * 511])
    def test_rejected_key_lengths(self, key: bytes) -> None:
        """An empty key or one longer than 255 bytes is refused, naming the length."""
        with pytest.raises(TransformError, match=f"key length {len(key)} is outside 1..255"):
            encode_key(key, b"v")


class TestDecodeKey:
    """Recovering the original key, and refusing keys that are not encoded."""

    @pytest.mark.parametrize(
        ("key", "value"),
        [(b"key", b"foo1"), (b"k", b""), (b"a\0b", b"\0\0\0\0"), (b"x" * 255, b"y" * 900)],
    )
    def test_round_trip(self, key: bytes, value: bytes) -> None:
        """Decoding an encoded key gives back the original key, whatever the value holds."""
        assert decode_key(encode_key(key, value)) == key

    @pytest.mark.parametrize(
        ("encoded", "why"),
        [
            (b"k\0\0\0\x01", "too short"),
            (b"abcdefg\x00", "bad length byte 0"),
            (b"ab\0\0\0\0\x09", "bad length byte 9"),
            (b"abc\0\0\x01\0v\x03", "lacks the zero separator"),
        ],
    )
    def test_rejects_malformed(self, encoded: bytes, why: str) -> None:
        """A key without a valid length byte and separator is refused with the reason."""
        with pytest.raises(TransformError, match=why):
            decode_key(encoded)


class TestEncodePairs:
    """Encoding a DBI's pairs in order, with LS's strictly-increasing check."""

    def test_pairs_in_order(self) -> None:
        """Pairs in LMDB order come out encoded, values unchanged."""
        pairs = [(b"a", b"1"), (b"a", b"2"), (b"b", b"1")]
        out = list(encode_pairs(b"idx", pairs))
        assert out == [(encode_key(k, v), v) for k, v in pairs]

    def test_equal_prefixes_collide(self) -> None:
        """Two values sharing the whole truncated prefix give equal keys: an error naming DBI and
        key."""
        pairs = [(b"key", b"v" * 600 + b"1"), (b"key", b"v" * 600 + b"2")]
        with pytest.raises(TransformError, match=r"DBI 'idx' key b'key'.*collides"):
            list(encode_pairs(b"idx", pairs))

    def test_zero_bytes_can_reorder(self) -> None:
        """A key that extends another with zero bytes sorts before it once encoded: refused."""
        pairs = [(b"a", b"\xff"), (b"a\0", b"\x01")]
        with pytest.raises(TransformError, match="sorts before"):
            list(encode_pairs(b"idx", pairs))

    def test_bad_key_names_the_dbi(self) -> None:
        """A key too long for the transform is refused with the DBI named."""
        with pytest.raises(TransformError, match="DBI 'idx'"):
            list(encode_pairs(b"idx", [(b"k" * 300, b"v")]))
