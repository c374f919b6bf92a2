"""Hostile bucket contents: corrupt objects, foreign formats and odd names (DESIGN §4).

DESIGN §4: a reader "must reject — with a clear log line and a metric, never a crash, never a
partial or wrong apply — a truncated object, a bad checksum, a foreign format or version,
counts that disagree, or entries out of key order". The syncer catches exactly
:class:`~evsync.errors.CorruptObjectError` around ``verify_snapshot`` (Receiver.merge_object),
so that is the only exception the decoder may raise: a MemoryError, KeyError, struct.error,
zstd or msgpack error would escape the syncer's handling.

Layers pinned here:

- the decoder (``verify_snapshot``, ``read_header``, ``SnapshotReader``), fuzzed by hypothesis
  from valid objects made by the real writer: truncations, bit flips, inserted and removed
  bytes (the checksum catches them), then mutations of the msgpack stream recompressed with a
  correct checksum so only the structure is wrong (counts, order, types, giant lengths), and
  foreign formats; an object that still verifies must read back as checked entries;
- the fuzz target ``fuzz_decoder.py`` run by atheris;
- object names (``evsync.snapshot.name``) and the fs store's paths;
- a running ``evsync sync`` against S3 (moto) fed corrupt objects under valid names and
  valid objects under hostile names: one log line and one metric per corrupt object, the
  LMDB untouched, and a valid object afterwards still merges.

The bugs these tests found (fixed, each pinned by the test that found it) are listed in
docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import lzma
import os
import re
import struct
import subprocess
import sys
import time
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import pytest
import zstandard
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from evsync.config import LmdbConfig, LmdbOptions
from evsync.errors import CorruptObjectError, ObjectTooLargeError, StorageError
from evsync.lmdb.env import MDB_DUPSORT, MDB_INTEGERKEY, LmdbEnv
from evsync.lmdb.merge import Merger
from evsync.snapshot.evs import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_ENTRY_BYTES,
    MAX_ENTRY_DATA,
    DbiInfo,
    Entry,
    SnapshotHeader,
    SnapshotReader,
    read_header,
    verify_snapshot,
    write_snapshot,
)
from evsync.snapshot.name import SnapshotName, format_timestamp, try_parse
from evsync.storage.base import ObjectInfo
from evsync.storage.fs import FsStore
from evsync.triggers.listing import newest_per_instance
from tests.helpers import IN_CI, REPO, AwsServer, Instance, free_port, wait_for

pytestmark = pytest.mark.reliability

Make = Callable[..., Instance]
FUZZ_SCRIPT = Path(__file__).resolve().parent / "fuzz_decoder.py"
FUZZ_RUNS = 30_000
T0 = 1_700_000_000_000_000_000
S3_MAX_KEY_BYTES = 1024
TRAILER = {"trailer": True, "entries": 0}

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# =========================================================================== building objects


@dataclass
class Spec:
    """A valid object before encoding: its header and each DBI's entries."""

    header: SnapshotHeader
    entries: list[list[Entry]]

    def encode(self, version: int = FORMAT_VERSION) -> bytes:
        out = io.BytesIO()
        write_snapshot(out, self.header, self.entries, version=version)
        return out.getvalue()

    def wire(self) -> list[Any]:
        """The msgpack stream as Python objects: header map, entry arrays, trailer map.
        The header says format version 1, whose layout (the whole stream in one zstd
        frame) is how the tests below compress it; :func:`must_reject` also tries the
        version-2 layout (the header in a frame of its own)."""
        objs: list[Any] = [self.header.to_wire() | {"version": 1}]
        for entries in self.entries:
            objs.extend(list(e) for e in entries)
        objs.append({"trailer": True, "entries": self.header.total_entries})
        return objs


@dataclass(frozen=True)
class Raw:
    """Bytes spliced into a msgpack stream as they are (to declare impossible lengths)."""

    data: bytes


def pack(objs: list[Any]) -> bytes:
    """A msgpack stream, as the writer packs it (bin type for bytes)."""
    packer = msgpack.Packer(use_bin_type=True)
    return b"".join(o.data if isinstance(o, Raw) else packer.pack(o) for o in objs)


def zstd(payload: bytes, *, checksum: bool = True) -> bytes:
    """One zstd frame, by default with the content checksum as the writer makes it."""
    return bytes(zstandard.ZstdCompressor(level=3, write_checksum=checksum).compress(payload))


def unzstd(data: bytes) -> bytes:
    return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))


def header_for(
    dbis: list[tuple[bytes, int, int]], *, db: str = "main", instance: str = "remote",
    timestamp_ns: int = T0,
) -> SnapshotHeader:
    return SnapshotHeader(
        db=db,
        instance=instance,
        hostname="hostile",
        timestamp_ns=timestamp_ns,
        txn_id=42,
        dbis=tuple(DbiInfo(name, flags, "", count) for name, flags, count in dbis),
    )


def simple_spec(
    entries: list[Entry] | None = None, *, dbi: bytes = b"records", flags: int = 0,
    db: str = "main", instance: str = "remote", timestamp_ns: int = T0,
) -> Spec:
    """One DBI with a few entries (three live ones by default)."""
    if entries is None:
        entries = [(b"a", T0, 0, b"alpha"), (b"b", T0 + 1, 0, b"beta"), (b"c", T0 + 2, 1, b"")]
    header = header_for([(dbi, flags, len(entries))], db=db, instance=instance,
                        timestamp_ns=timestamp_ns)
    return Spec(header, [entries])


def int_key(n: int) -> bytes:
    return struct.pack("<I", n)


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    """Valid objects: 1-3 DBIs (plain or INTEGERKEY), 0-8 entries each, any field values."""
    names = draw(st.lists(st.binary(min_size=1, max_size=6).filter(
        lambda n: not n.startswith(b"_sync")), min_size=1, max_size=3, unique=True))
    dbis: list[tuple[bytes, int, int]] = []
    all_entries: list[list[Entry]] = []
    for name in names:
        integer = draw(st.booleans())
        if integer:
            numbers = sorted(draw(st.sets(st.integers(0, 2**32 - 1), max_size=8)))
            keys = [int_key(n) for n in numbers]
        else:
            keys = sorted(draw(st.sets(st.binary(min_size=1, max_size=12), max_size=8)))
        entries = [
            (
                key,
                draw(st.integers(0, 2**64 - 1)),
                draw(st.integers(0, 255)),
                draw(st.binary(max_size=40)),
            )
            for key in keys
        ]
        dbis.append((name, MDB_INTEGERKEY if integer else 0, len(entries)))
        all_entries.append(entries)
    return Spec(header_for(dbis), all_entries)


# =========================================================================== decoding


@dataclass
class Decoded:
    """What a verified object reads back as."""

    header: SnapshotHeader
    dbis: list[tuple[DbiInfo, list[Entry]]]


def stream_read(data: bytes) -> list[tuple[DbiInfo, list[Entry]]]:
    reader = SnapshotReader(io.BytesIO(data))
    return [(info, list(entries)) for info, entries in reader.dbis()]


def decode(data: bytes) -> Decoded | CorruptObjectError:
    """Run every decoder entry point; only CorruptObjectError may come out of any of them.

    The streaming read and ``verify_snapshot`` must agree; a verified object must read back as
    exactly the entries its header counts, well-typed, each DBI's keys strictly increasing.
    """
    with contextlib.suppress(CorruptObjectError):
        read_header(io.BytesIO(data))
    try:
        streamed: list[tuple[DbiInfo, list[Entry]]] | None = stream_read(data)
    except CorruptObjectError:
        streamed = None
    try:
        header = verify_snapshot(io.BytesIO(data))
    except CorruptObjectError as exc:
        assert streamed is None, "the streaming read accepted what verify_snapshot rejects"
        assert str(exc), "a rejection without a reason"
        return exc
    assert streamed is not None, "verify_snapshot accepted what the streaming read rejects"
    assert [info for info, _ in streamed] == list(header.dbis)
    for info, entries in streamed:
        assert len(entries) == info.entries
        for key, ts, flags, value in entries:
            assert type(key) is bytes and type(value) is bytes
            assert 0 < len(key) <= 511 and 0 <= ts < 1 << 64 and 0 <= flags < 256
        if info.flags & MDB_INTEGERKEY and all(len(e[0]) == 4 for e in entries):
            order = [struct.unpack("<I", e[0])[0] for e in entries]
        else:
            order = [e[0] for e in entries]
        if not info.flags & MDB_INTEGERKEY:
            assert order == sorted(set(order)), "keys not strictly increasing"
    return Decoded(header, streamed)


def rejected(data: bytes) -> CorruptObjectError:
    """The object must be rejected (only ever with CorruptObjectError)."""
    result = decode(data)
    assert isinstance(result, CorruptObjectError), f"accepted: {result}"
    return result


def same_as(result: Decoded | CorruptObjectError, spec: Spec) -> bool:
    return (
        isinstance(result, Decoded)
        and result.header == spec.header
        and [entries for _, entries in result.dbis] == spec.entries
    )


# =========================================================================== decoder: bytes


class TestTruncation:
    """Any strict prefix of a valid object is rejected as corrupt (the frame or its checksum is
    missing), never read as a shorter valid object."""

    @SETTINGS
    @given(spec=specs(), data=st.data())
    def test_every_prefix_is_rejected(self, spec: Spec, data: st.DataObject) -> None:
        """A cut anywhere before the end: CorruptObjectError from every entry point."""
        obj = spec.encode()
        cut = data.draw(st.integers(0, len(obj) - 1), label="cut")
        rejected(obj[:cut])

    def test_each_cut_of_one_object(self) -> None:
        """Exhaustively, for one object: every prefix length, including 0 ("empty object")."""
        obj = simple_spec().encode()
        assert isinstance(decode(obj), Decoded)
        for cut in range(len(obj)):
            rejected(obj[:cut])


class TestBitFlipsAndEdits:
    """A flipped bit or an inserted/removed byte is caught by the zstd frame or its content
    checksum: the object is rejected, or (a flip in a field that does not matter) reads back
    exactly as written — never as different entries."""

    @SETTINGS
    @given(spec=specs(), data=st.data())
    def test_a_bit_flip_is_rejected_or_harmless(self, spec: Spec, data: st.DataObject) -> None:
        obj = bytearray(spec.encode())
        pos = data.draw(st.integers(0, len(obj) - 1), label="pos")
        obj[pos] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        result = decode(bytes(obj))
        assert isinstance(result, CorruptObjectError) or same_as(result, spec)

    @SETTINGS
    @given(spec=specs(), data=st.data())
    def test_inserted_bytes_are_rejected(self, spec: Spec, data: st.DataObject) -> None:
        obj = spec.encode()
        pos = data.draw(st.integers(0, len(obj)), label="pos")
        extra = data.draw(st.binary(min_size=1, max_size=16), label="extra")
        result = decode(obj[:pos] + extra + obj[pos:])
        assert isinstance(result, CorruptObjectError) or same_as(result, spec)

    @SETTINGS
    @given(spec=specs(), data=st.data())
    def test_removed_bytes_are_rejected(self, spec: Spec, data: st.DataObject) -> None:
        obj = spec.encode()
        pos = data.draw(st.integers(0, len(obj) - 1), label="pos")
        n = data.draw(st.integers(1, 16), label="n")
        result = decode(obj[:pos] + obj[pos + n :])
        assert isinstance(result, CorruptObjectError) or same_as(result, spec)

    def test_every_single_bit_flip_of_one_object(self) -> None:
        """Exhaustively, for one object: each of its bits flipped in turn."""
        spec = simple_spec()
        obj = spec.encode()
        for pos in range(len(obj)):
            for bit in range(8):
                flipped = bytearray(obj)
                flipped[pos] ^= 1 << bit
                result = decode(bytes(flipped))
                assert isinstance(result, CorruptObjectError) or same_as(result, spec), (pos, bit)

    def test_data_after_the_frame_is_rejected(self) -> None:
        """Version 1: a second frame, a valid copy or one stray byte after the object's
        one frame: rejected."""
        obj = simple_spec().encode(version=1)
        assert "after the end" in str(rejected(obj + obj))
        assert "after the end" in str(rejected(obj + b"\0"))
        assert "after the end" in str(rejected(obj + zstd(b"")))

    def test_data_after_the_trailer_frame_is_rejected(self) -> None:
        """Version 2: a valid copy, one stray byte or an empty frame after the trailer's
        frame: rejected."""
        obj = simple_spec().encode()
        assert "after the trailer" in str(rejected(obj + obj))
        assert "cut off" in str(rejected(obj + b"\0"))
        assert "holds no msgpack object" in str(rejected(obj + zstd(b"")))


# =========================================================================== decoder: structure


def must_reject(objs: list[Any], *reason: str) -> None:
    """The stream, compressed with a correct checksum, is rejected naming one of ``reason``."""
    exc = rejected(zstd(pack(objs)))
    assert any(r in str(exc) for r in reason), f"{exc} (expected one of {reason})"
    if objs and isinstance(objs[0], dict) and objs[0].get("version") == 1:
        # the same stream in version 2's layout: the header alone in the first frame
        framed = zstd(pack([objs[0] | {"version": 2}]))
        if objs[1:]:
            framed += zstd(pack(objs[1:]))
        exc = rejected(framed)
        assert any(r in str(exc) for r in reason), f"v2: {exc} (expected one of {reason})"


class TestWrongCounts:
    """Counts that disagree with the entries are rejected even behind a valid checksum."""

    @SETTINGS
    @given(spec=specs(), data=st.data())
    def test_a_changed_dbi_count_is_rejected(self, spec: Spec, data: st.DataObject) -> None:
        """One DBI's header count changed by any non-zero delta (total no longer matches)."""
        wire = spec.wire()
        index = data.draw(st.integers(0, len(spec.header.dbis) - 1), label="dbi")
        count = wire[0]["dbis"][index]["entries"]
        new = data.draw(st.integers(0, count + 5).filter(lambda n: n != count), label="count")
        wire[0]["dbis"][index]["entries"] = new
        must_reject(wire, "entr", "trailer", "truncated", "out of order")

    @SETTINGS
    @given(spec=specs(), delta=st.integers(-3, 3).filter(bool))
    def test_a_wrong_trailer_count_is_rejected(self, spec: Spec, delta: int) -> None:
        wire = spec.wire()
        wire[-1]["entries"] += delta
        must_reject(wire, "trailer counts")

    def test_missing_or_extra_pieces(self) -> None:
        """No trailer, a second trailer, an entry more than counted, a header only."""
        wire = simple_spec().wire()
        must_reject(wire[:-1], "no trailer")
        must_reject([*wire, wire[-1]], "data after the trailer")
        must_reject([*wire[:-1], [b"d", T0, 0, b"x"], wire[-1]], "more entries")
        must_reject(wire[:1], "truncated")
        must_reject([*wire[:2], wire[-1]], "trailer", "entr", "truncated")

    def test_huge_declared_entry_count(self) -> None:
        """A header claiming 2**64-1 entries is read lazily and rejected when they run out."""
        wire = simple_spec().wire()
        wire[0]["dbis"][0]["entries"] = 2**64 - 1
        must_reject(wire, "truncated", "entry")


class TestOrder:
    """Entries out of key order, or a key twice, are rejected (counts all consistent)."""

    @SETTINGS
    @given(spec=specs(), data=st.data())
    def test_swapped_neighbours_are_rejected(self, spec: Spec, data: st.DataObject) -> None:
        candidates = [i for i, e in enumerate(spec.entries) if len(e) >= 2]
        assume(candidates)
        d = data.draw(st.sampled_from(candidates), label="dbi")
        i = data.draw(st.integers(0, len(spec.entries[d]) - 2), label="at")
        entries = list(spec.entries[d])
        entries[i], entries[i + 1] = entries[i + 1], entries[i]
        mutated = Spec(spec.header, [*spec.entries[:d], entries, *spec.entries[d + 1 :]])
        must_reject(mutated.wire(), "out of order")

    @SETTINGS
    @given(spec=specs(), data=st.data())
    def test_a_repeated_key_is_rejected(self, spec: Spec, data: st.DataObject) -> None:
        candidates = [i for i, e in enumerate(spec.entries) if e]
        assume(candidates)
        d = data.draw(st.sampled_from(candidates), label="dbi")
        i = data.draw(st.integers(0, len(spec.entries[d]) - 1), label="at")
        entries = list(spec.entries[d])
        key, ts, flags, value = entries[i]
        entries.insert(i + 1, (key, ts ^ 1, flags, value + b"!"))
        dbis = list(spec.header.dbis)
        dbis[d] = DbiInfo(dbis[d].name, dbis[d].flags, "", len(entries))
        header = SnapshotHeader(**{**vars(spec.header), "dbis": tuple(dbis)})
        mutated = Spec(header, [*spec.entries[:d], entries, *spec.entries[d + 1 :]])
        must_reject(mutated.wire(), "out of order")

    def test_integer_keys_follow_integer_order(self) -> None:
        """In an INTEGERKEY DBI, 256 before 1 is out of order although its bytes are not."""
        ok = simple_spec([(int_key(1), 1, 0, b""), (int_key(256), 1, 0, b"")], flags=MDB_INTEGERKEY)
        assert isinstance(decode(ok.encode()), Decoded)
        assert int_key(256) < int_key(1)
        bad = simple_spec([(int_key(256), 1, 0, b""), (int_key(1), 1, 0, b"")],
                          flags=MDB_INTEGERKEY)
        must_reject(bad.wire(), "out of order")


BAD_ENTRIES: dict[str, Any] = {
    "not an array": {"k": b"v"},
    "three fields": [b"a", 1, 0],
    "five fields": [b"a", 1, 0, b"v", b"x"],
    "str key": ["a", 1, 0, b"v"],
    "str value": [b"a", 1, 0, "v"],
    "nil value": [b"a", 1, 0, None],
    "empty key": [b"", 1, 0, b"v"],
    "key of 512 bytes": [b"k" * 512, 1, 0, b"v"],
    "negative timestamp": [b"a", -1, 0, b"v"],
    "float timestamp": [b"a", 1.5, 0, b"v"],
    "bool timestamp": [b"a", True, 0, b"v"],
    "flags 256": [b"a", 1, 256, b"v"],
    "negative flags": [b"a", 1, -1, b"v"],
    "nested array": [[b"a"], 1, 0, b"v"],
}


class TestMalformedEntries:
    """An entry that is not [bytes key 1..511, u64 timestamp, u8 flags, bytes value] is rejected."""

    @pytest.mark.parametrize("entry", BAD_ENTRIES.values(), ids=BAD_ENTRIES.keys())
    def test_bad_entry_is_rejected(self, entry: Any) -> None:
        wire = simple_spec([(b"a", 1, 0, b"v")]).wire()
        wire[1] = entry
        must_reject(wire, "entry 0")

    def test_bad_transformed_key_is_rejected(self) -> None:
        """A dupsort_hack_v1 DBI whose key lacks the separator and length byte."""
        wire = simple_spec([(b"plain", 1, 0, b"v")]).wire()
        wire[0]["dbis"][0]["transform"] = "dupsort_hack_v1"
        must_reject(wire, "entry 0")


def header_variants() -> dict[str, Any]:
    base = simple_spec().wire()[0]
    out: dict[str, Any] = {
        "not a map": [base],
        "format missing": {k: v for k, v in base.items() if k != "format"},
        "foreign format": {**base, "format": "lightningstream"},
        "format as bytes": {**base, "format": FORMAT_NAME.encode()},
        "version 0": {**base, "version": 0},
        "version 2": {**base, "version": 2},
        "version as str": {**base, "version": "1"},
        "dbis not a list": {**base, "dbis": {"records": 1}},
        "dbi without name": {**base, "dbis": [{"flags": 0, "entries": 3}]},
        "dbi name as str": {**base, "dbis": [{"name": "records", "flags": 0, "entries": 3}]},
        "negative count": {**base, "dbis": [{"name": b"records", "flags": 0, "entries": -1}]},
        "unknown transform": {**base, "dbis": [{**base["dbis"][0], "transform": "rot13"}]},
        "dbi twice": {**base, "dbis": [base["dbis"][0], base["dbis"][0]]},
        "unknown kind": {**base, "kind": "partial"},
        "kind as map": {**base, "kind": {}},
        "db as int": {**base, "db": 1},
        "timestamp as str": {**base, "timestamp_ns": "1"},
    }
    for key in ("db", "instance", "timestamp_ns", "txn_id", "kind", "dbis"):
        out[f"{key} missing"] = {k: v for k, v in base.items() if k != key}
    return out


HEADERS = header_variants()


class TestBadHeaders:
    """A header that is not evsync's, of another version, or malformed, is rejected."""

    @pytest.mark.parametrize("header", HEADERS.values(), ids=HEADERS.keys())
    def test_bad_header_is_rejected(self, header: Any) -> None:
        wire = simple_spec().wire()
        wire[0] = header
        exc = rejected(zstd(pack(wire)))
        assert "header" in str(exc) or "format" in str(exc) or "kind" in str(exc), exc


GIANT: dict[str, bytes] = {
    # type byte + 32-bit length, and nothing after: the stream ends inside the object
    "bin32 of 4 GiB": b"\xc6\xff\xff\xff\xff",
    "str32 of 4 GiB": b"\xdb\xff\xff\xff\xff",
    "ext32 of 4 GiB": b"\xc9\xff\xff\xff\xff\x01",
    "array32 of 2**32-1": b"\xdd\xff\xff\xff\xff",
    "map32 of 2**32-1": b"\xdf\xff\xff\xff\xff",
    "array of 70000 nils": b"\xdd\x00\x01\x11\x70" + b"\xc0" * 70000,
    "nesting 2000 deep": b"\x91" * 2000 + b"\xc0",
    "reserved byte 0xc1": b"\xc1",
    "bad timestamp ext": b"\xd7\xff" + b"\xff" * 8,
    "map with an array key": b"\x81\x90\x01",
    "map with a map key": b"\x81\x80\x01",
}


class TestGiantAndOddMsgpack:
    """Declared lengths the data cannot back, limits, and msgpack oddities in place of an entry
    or of the header: rejected without allocating what they claim."""

    @pytest.mark.parametrize("raw", GIANT.values(), ids=GIANT.keys())
    def test_in_place_of_an_entry(self, raw: bytes) -> None:
        wire = simple_spec().wire()
        rejected(zstd(pack([wire[0], Raw(raw), *wire[2:]])))

    @pytest.mark.parametrize("raw", GIANT.values(), ids=GIANT.keys())
    def test_in_place_of_the_header(self, raw: bytes) -> None:
        rejected(zstd(raw))

    def test_value_declared_longer_than_the_stream(self) -> None:
        """An entry whose value claims 1 MiB but the frame holds ten bytes of it."""
        wire = simple_spec().wire()
        entry = Raw(b"\x94\xc4\x01a\x01\x00\xc6\x00\x10\x00\x00" + b"x" * 10)
        rejected(zstd(pack([wire[0], entry])))


class TestMsgpackStreamFuzz:
    """The msgpack stream of a valid object mutated byte-wise, then compressed with a correct
    checksum: only the structure checks stand between it and the merge."""

    @SETTINGS
    @given(spec=specs(), data=st.data())
    def test_byte_mutations_behind_a_valid_checksum(
        self, spec: Spec, data: st.DataObject
    ) -> None:
        stream = bytearray(pack(spec.wire()))
        for _ in range(data.draw(st.integers(1, 4), label="edits")):
            pos = data.draw(st.integers(0, max(len(stream) - 1, 0)), label="pos")
            op = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]), label="op")
            if op == "flip" and stream:
                stream[pos] ^= 1 << data.draw(st.integers(0, 7))
            elif op == "set" and stream:
                stream[pos] = data.draw(st.sampled_from([0x00, 0xC0, 0xC1, 0xC6, 0xDD, 0xDF, 0xFF]))
            elif op == "insert":
                stream[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
            elif op == "delete":
                del stream[pos : pos + data.draw(st.integers(1, 8))]
            else:
                del stream[pos:]
        decode(zstd(bytes(stream)))

    @SETTINGS
    @given(
        objs=st.lists(
            st.recursive(
                st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=8)
                | st.text(max_size=8) | st.floats(allow_nan=True),
                lambda inner: st.lists(inner, max_size=5)
                | st.dictionaries(st.text(max_size=6) | st.binary(max_size=4), inner, max_size=4),
                max_leaves=12,
            ),
            max_size=5,
        )
    )
    def test_arbitrary_msgpack_values(self, objs: list[Any]) -> None:
        """Any msgpack stream at all, compressed properly: rejected or a checked object."""
        decode(zstd(pack(objs)))

    @SETTINGS
    @given(spec=specs(), data=st.data())
    def test_arbitrary_values_after_a_valid_header(self, spec: Spec, data: st.DataObject) -> None:
        """A valid header, then anything: the entry checks decide."""
        tail = data.draw(st.lists(
            st.lists(st.none() | st.integers(-1, 2**64 - 1) | st.binary(max_size=6)
                     | st.text(max_size=3), max_size=5)
            | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=4),
            max_size=6))
        decode(zstd(pack([spec.wire()[0], *tail, TRAILER])))

    @SETTINGS
    @given(payload=st.binary(max_size=300))
    def test_arbitrary_bytes(self, payload: bytes) -> None:
        """Any bytes as the object, and any bytes inside a valid frame."""
        rejected(payload) if payload[:4] != b"\x28\xb5\x2f\xfd" else decode(payload)
        decode(zstd(payload))


# =========================================================================== foreign formats


def protobuf_field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2); lengths here stay below 128."""
    return bytes([(number << 3) | 2, len(payload)]) + payload


def ls_like_snapshot() -> bytes:
    """Something shaped like a Lightning Stream native snapshot (protobuf: formatVersion,
    meta, databases with name and key/value/timestamp entries), before gzip."""
    kv = protobuf_field(1, b"www") + protobuf_field(2, b"192.0.2.1") + b"\x18\x80\x80\x80\x80\x10"
    dbi = protobuf_field(1, b"records") + protobuf_field(2, kv)
    meta = protobuf_field(1, b"main") + protobuf_field(2, b"ls-instance")
    return b"\x08\x01" + protobuf_field(2, meta) + protobuf_field(3, dbi)


def foreign_formats() -> dict[str, bytes]:
    spec = simple_spec()
    stream = pack(spec.wire())
    as_json = json.dumps({"format": FORMAT_NAME, "version": 1, "entries": []}).encode()
    return {
        "empty": b"",
        "json": as_json,
        "json in a zstd frame": zstd(as_json),
        "text": b"hello, this is not an object\n",
        "gzip of the msgpack stream": gzip.compress(stream),
        "gzip of json": gzip.compress(as_json),
        "lightning stream pb.gz": gzip.compress(ls_like_snapshot()),
        "lightning stream protobuf": ls_like_snapshot(),
        "protobuf in a zstd frame": zstd(ls_like_snapshot()),
        "xz of the object": lzma.compress(spec.encode()),
        "zip header": b"PK\x03\x04" + b"\0" * 26,
        "uncompressed msgpack stream": stream,
        "empty zstd frame": zstd(b""),
        "zstd magic then garbage": b"\x28\xb5\x2f\xfd" + b"\xff" * 20,
        "skippable frame only": b"\x50\x2a\x4d\x18" + struct.pack("<I", 4) + b"evil",
        "skippable frame then the object": b"\x50\x2a\x4d\x18\x00\x00\x00\x00" + spec.encode(),
        "NUL bytes": b"\0" * 64,
    }


FOREIGN = foreign_formats()


class TestForeignFormats:
    """Things that are not evs.zst objects — JSON, gzip, a Lightning Stream snapshot, an empty
    body, a bare msgpack stream — are rejected as corrupt, never decoded."""

    @pytest.mark.parametrize("data", FOREIGN.values(), ids=FOREIGN.keys())
    def test_foreign_object_is_rejected(self, data: bytes) -> None:
        rejected(data)

    def test_a_frame_without_content_checksum_is_rejected(self) -> None:
        """The same stream in a frame whose content checksum flag is off: a bit flipped in a
        stored (incompressible) value then slips through; the reader must insist on it."""
        value = bytes(range(256)) * 2
        spec = simple_spec([(b"k", T0, 0, value)])
        plain = zstd(pack(spec.wire()), checksum=False)
        assert not zstandard.get_frame_parameters(plain).has_checksum
        flipped = bytearray(plain)
        flipped[plain.index(value[300:320]) + 5] ^= 0x01
        rejected(bytes(flipped))
        rejected(plain)


class TestDecompressionBomb:
    """A ~10 KiB object that inflates past the reader's msgpack buffer (the entry cap): the
    declared value can never be read, so the object is rejected as too large."""

    def test_zstd_bomb_is_rejected_as_corrupt(self) -> None:
        assert isinstance(rejected(bomb()), ObjectTooLargeError)


# values of this size make a 48 MiB entry: under the entry cap, and 8 of them add up to
# more than the 256 MiB the reader may hold above its idle size
UNDER_CAP_VALUE = 48 << 20
MEMORY_BOUND = 256 << 20
BOMBS = {
    "8 values of 48 MiB": (8, UNDER_CAP_VALUE),
    "4 values just under the cap": (4, MAX_ENTRY_DATA - 16),
    "300 values of 1 MiB": (300, 1 << 20),
    "100,000 empty values": (100_000, 0),
}


def zeros_object(count: int, value_bytes: int, *, instance: str = "x",
                 timestamp_ns: int = T0, version: int = 1) -> bytes:
    """A valid object of ``count`` entries whose values are ``value_bytes`` zeros: a few KiB
    that inflate to count * value_bytes (the values are streamed into the compressor).
    Version 1: one zstd frame; version 2: the header, the entries and the trailer each
    in frames of their own (about 1 MiB or one entry a frame)."""
    header = header_for([(b"records", 0, count)], instance=instance, timestamp_ns=timestamp_ns)
    packer = msgpack.Packer(use_bin_type=True)
    zeros = bytes(min(value_bytes, 1 << 20))
    out = io.BytesIO()
    if version == 2:
        cctx = zstandard.ZstdCompressor(level=3, write_checksum=True)
        out.write(cctx.compress(packer.pack(header.to_wire() | {"version": 2})))
        per_frame = max(1, min(1000, (1 << 20) // max(value_bytes, 1)))  # as a writer cuts
        for first in range(0, count, per_frame):
            with cctx.stream_writer(out, closefd=False) as zw:
                for i in range(first, min(count, first + per_frame)):
                    zw.write(b"\x94" + packer.pack(b"k%08d" % i) + packer.pack(T0)
                             + packer.pack(0) + b"\xc6" + value_bytes.to_bytes(4, "big"))
                    left = value_bytes
                    while left:
                        zw.write(zeros[:left])
                        left -= min(left, len(zeros))
        out.write(cctx.compress(packer.pack({"trailer": True, "entries": count})))
        return out.getvalue()
    with zstandard.ZstdCompressor(level=3, write_checksum=True).stream_writer(
        out, closefd=False
    ) as zw:
        zw.write(packer.pack(header.to_wire() | {"version": 1}))
        for i in range(count):
            key = packer.pack(b"k%08d" % i)
            # an entry array with a bin32 value whose bytes follow in 1 MiB pieces
            zw.write(b"\x94" + key + packer.pack(T0) + packer.pack(0)
                     + b"\xc6" + value_bytes.to_bytes(4, "big"))
            left = value_bytes
            while left:
                zw.write(zeros[:left])
                left -= min(left, len(zeros))
        zw.write(packer.pack({"trailer": True, "entries": count}))
    return out.getvalue()


def peak_bytes(run: Callable[[], object]) -> int:
    """The most memory Python held at once above what it held before ``run``."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        run()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


class TestBoundedMemory:
    """Verifying an object holds at most 256 MiB more than the idle reader, whatever its
    values: lists of entries are bounded by bytes as well as by count (it held every entry
    of a 1,024-entry list at once: 8 values of 48 MiB took 516 MiB, 4 of 200 MiB 1 GiB)."""

    @pytest.mark.parametrize("version", [1, 2])
    @pytest.mark.parametrize("shape", BOMBS.values(), ids=BOMBS.keys())
    def test_verifying_a_bomb_holds_less_than_256_mib(
        self, shape: tuple[int, int], version: int
    ) -> None:
        """A few-KiB object of many big (or many small) values verifies within the bound,
        in either layout (version 2 inflates a whole frame before it decodes it)."""
        count, value_bytes = shape
        data = zeros_object(count, value_bytes, version=version)
        assert len(data) < 64 << 10
        header: list[SnapshotHeader] = []
        peak = peak_bytes(lambda: header.append(verify_snapshot(io.BytesIO(data))))
        assert header[0].total_entries == count
        assert peak < MEMORY_BOUND, f"peak {peak >> 20} MiB"

    def test_reading_entries_hands_them_out_in_bounded_lists(self) -> None:
        """The merge's read (lists of up to 10,000) gets lists of about CHUNK_MAX_BYTES:
        one 48 MiB entry per list, all of them in order."""
        data = zeros_object(3, UNDER_CAP_VALUE)
        reader = SnapshotReader(io.BytesIO(data))
        sizes = [[len(e[3]) for e in chunk]
                 for _info, entries in reader.dbis() for chunk in entries.chunks(10_000)]
        assert sizes == [[UNDER_CAP_VALUE]] * 3

    def test_an_entry_over_the_cap_is_rejected_as_too_large(self) -> None:
        """An entry one MiB over the entry cap (64 MiB) is too large: the reader refuses
        it rather than holding it (the cap was 256 MiB, which no bound could hold)."""
        err = rejected(zeros_object(1, MAX_ENTRY_BYTES + (1 << 20)))
        assert isinstance(err, ObjectTooLargeError)
        assert f"an entry larger than {MAX_ENTRY_BYTES >> 20} MiB" in str(err)

    def test_an_object_inflating_past_the_total_cap_is_rejected(self) -> None:
        """With max_inflated (storage_max_inflated_size) set, an object that inflates past
        it is too large, however small each entry; one under it verifies."""
        data = zeros_object(16, 1 << 20)
        with pytest.raises(ObjectTooLargeError, match="inflates to more than 8MB"):
            verify_snapshot(io.BytesIO(data), max_inflated=8 << 20)
        assert verify_snapshot(io.BytesIO(data), max_inflated=32 << 20).total_entries == 16


def bomb(header: SnapshotHeader | None = None) -> bytes:
    """A valid header, then a bin32 of 4 GiB whose 'content' is 300 MiB of zeros, zstd'd."""
    header = header or simple_spec().header
    out = io.BytesIO()
    with zstandard.ZstdCompressor(level=3, write_checksum=True).stream_writer(
        out, closefd=False
    ) as zw:
        zw.write(pack([header.to_wire() | {"version": 1}]) + b"\xc6\xff\xff\xff\xf0")
        zeros = bytes(1 << 20)
        for _ in range(300):
            zw.write(zeros)
    return out.getvalue()


# =========================================================================== verified, hostile


@pytest.fixture
def lenv(tmp_path: Path) -> Iterator[LmdbEnv]:
    """A native-schema LMDB (the make_env pattern of tests/unit/conftest.py)."""
    env = LmdbEnv(LmdbConfig(name="main", path=str(tmp_path / "main"), schema_tracks_changes=True,
                             options=LmdbOptions(create=True, map_size=16 << 20)))
    yield env
    env.close()


def merge_object(lenv: LmdbEnv, data: bytes) -> None:
    stream = io.BytesIO(data)
    verify_snapshot(stream)
    stream.seek(0)
    Merger(lenv).merge(SnapshotReader(stream).dbis())


def dbi_names(lenv: LmdbEnv) -> list[bytes]:
    with lenv.begin() as txn:
        return lenv.dbi_names(txn, include_sync=True)


SAFE_DBIS: dict[str, tuple[bytes, int]] = {
    "evsync's state DBI": (b"_sync_evsync", 0),
    "a shadow DBI": (b"_sync_shadow_records", 0),
    "DUPSORT without the transform": (b"dups", MDB_DUPSORT),
}
LMDB_ERROR_DBIS: dict[str, tuple[bytes, int]] = {
    "empty DBI name": (b"", 0),
    "DBI name of 512 bytes": (b"n" * 512, 0),
}


class TestVerifiedButHostile:
    """An object that verifies can still name DBIs the LMDB must not or cannot take. Merging it
    leaves evsync's own DBIs alone, and fails — if at all — with LmdbError, the error the syncer
    handles (log, count, back off), never with a raw py-lmdb exception."""

    @pytest.mark.parametrize("dbi", SAFE_DBIS.values(), ids=SAFE_DBIS.keys())
    def test_reserved_or_unsupported_dbis_are_skipped(self, lenv: LmdbEnv,
                                                      dbi: tuple[bytes, int]) -> None:
        name, flags = dbi
        merge_object(lenv, simple_spec(dbi=name, flags=flags).encode())
        assert dbi_names(lenv) == []

    @pytest.mark.parametrize("dbi", LMDB_ERROR_DBIS.values(), ids=LMDB_ERROR_DBIS.keys())
    def test_dbi_names_lmdb_cannot_hold_are_rejected(self, dbi: tuple[bytes, int]) -> None:
        """A DBI name LMDB cannot hold (empty, longer than a 511-byte key) makes the object
        corrupt: rejected before the merge, not retried against the LMDB on every step."""
        name, flags = dbi
        rejected(simple_spec(dbi=name, flags=flags).encode())


# =========================================================================== atheris


class TestAtherisFuzzer:
    """fuzz_decoder.py, run by atheris (libFuzzer) from valid seeds, finds no input that makes
    the decoder raise anything but CorruptObjectError within its run budget."""

    def test_fuzz_target_runs_clean(self, tmp_path: Path) -> None:
        try:
            import atheris  # noqa: F401
        except ImportError:
            message = "atheris is not installed (pip install -e '.[dev]' on Linux)"
            if IN_CI:
                pytest.fail(message)
            pytest.skip(message)
        corpus = tmp_path / "corpus"
        seeds = subprocess.run([sys.executable, str(FUZZ_SCRIPT), "--write-seeds", str(corpus)],
                               cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
        assert seeds.returncode == 0, seeds.stderr
        assert len(list(corpus.iterdir())) == 3
        done = subprocess.run(
            [sys.executable, str(FUZZ_SCRIPT), f"-runs={FUZZ_RUNS}", "-max_total_time=20",
             "-max_len=2048", "-rss_limit_mb=2048", f"-artifact_prefix={tmp_path}/",
             str(corpus)],
            cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
        )
        tail = "\n".join(done.stderr.splitlines()[-40:])
        assert done.returncode == 0, f"fuzzer found a crash:\n{tail}"
        assert f"Done {FUZZ_RUNS} runs" in done.stderr or "DONE" in done.stderr, tail
        assert not list(tmp_path.glob("crash-*"))


# =========================================================================== object names

TS = format_timestamp(T0)
GOOD = f"main__evil__{TS}__GX.evs.zst"

# names that must not parse at all
UNPARSEABLE: dict[str, str] = {
    "empty": "",
    "dot": ".",
    "dotdot": "..",
    "slash": "/",
    "absolute path": "/etc/passwd",
    "parent path": f"../main__evil__{TS}__GX.evs.zst",
    "dotdot instance": f"main__..__{TS}__GX.evs.zst",
    "dotdot db": f"..__evil__{TS}__GX.evs.zst",
    "slash in instance": f"main__ev/il__{TS}__GX.evs.zst",
    "empty db": f"__evil__{TS}__GX.evs.zst",
    "empty instance": f"main____{TS}__GX.evs.zst",
    "empty timestamp": "main__evil____GX.evs.zst",
    "empty generation": f"main__evil__{TS}__.evs.zst",
    "empty extra": f"main__evil__{TS}__GX__.evs.zst",
    "no generation": f"main__evil__{TS}.evs.zst",
    "no extension": f"main__evil__{TS}__GX",
    "empty extension": f"main__evil__{TS}__GX.",
    "underscore instance": f"main__ev_il__{TS}__GX.evs.zst",
    "uppercase db": f"MAIN__evil__{TS}__GX.evs.zst",
    "lowercase generation": f"main__evil__{TS}__gx.evs.zst",
    "generation G-extra": f"main__evil__{TS}__GX__G1.evs.zst",
    "extra twice": f"main__evil__{TS}__GX__D1__D2.evs.zst",
    "short timestamp": f"main__evil__{TS[:-1]}__GX.evs.zst",
    "month 13": "main__evil__20231301-000000-000000000__GX.evs.zst",
    "second 60": "main__evil__20231231-235960-000000000__GX.evs.zst",
    "arabic-indic digit": f"main__evil__{TS[:-1]}\u0661__GX.evs.zst",
    "non-ascii instance": f"main__\u00e9vil__{TS}__GX.evs.zst",
    "surrogate instance": f"main__evil\udcff__{TS}__GX.evs.zst",
    "NUL instance": f"main__evil\0__{TS}__GX.evs.zst",
    "space instance": f"main__evil x__{TS}__GX.evs.zst",
}

# names that may parse, but must not be taken as an evsync object of db "main"
IGNORED: dict[str, str] = {
    "other db": f"other__evil__{TS}__GX.evs.zst",
    "db with main prefix": f"mainx__evil__{TS}__GX.evs.zst",
    "unknown extension": f"main__evil__{TS}__GX.pb.xz",
    "backup suffix": f"main__evil__{TS}__GX.evs.zst.bak",
    "temp suffix": f"main__evil__{TS}__GX.evs.zst.tmp",
    "path after extension": f"main__evil__{TS}__GX.evs.zst/../../x",
    "slash in extension": f"main__evil__{TS}__GX.evs/zst",
    "dotdot before extension": f"main__evil__{TS}__GX..evs.zst",
    "dotdot path in extra": f"main__evil__{TS}__GX__X/../../etc.evs.zst",
    "newline after extension": f"main__evil__{TS}__GX.evs.zst\n",
    "NUL after extension": f"main__evil__{TS}__GX.evs.zst\0",
    "long extension": f"main__evil__{TS}__GX.evs.zst" + "x" * 1100,
}

SAFE_PART = re.compile(r"[A-Za-z0-9-]+")


# names that must be rejected, or be accepted only with every part in a safe alphabet
HOSTILE: list[Any] = [
    pytest.param(f"main__evil\n__{TS}__GX.evs.zst", id="newline-instance"),
    pytest.param(f"main\n__evil__{TS}__GX.evs.zst", id="newline-db"),
    pytest.param(f"main__evil__{TS}__GX/x.evs.zst", id="slash-in-generation"),
    pytest.param(f"main__evil__{TS}__GX__X/a/b.evs.zst", id="slash-in-extra"),
    pytest.param(f"main__evil__{TS}__G\0.evs.zst", id="nul-in-generation"),
    pytest.param(f"main__evil__{TS}__G\n.evs.zst", id="newline-in-generation"),
    pytest.param(f"main__evil__{TS}__GX__X\udcff.evs.zst", id="undecodable-byte-in-extra"),
    pytest.param(f"main__evil__{TS}__GX__X\\..\\x", id="backslashes-in-extra"),
    pytest.param(f"main__{'e' * 1100}__{TS}__GX.evs.zst", id="instance-of-1100-bytes"),
    pytest.param(f"main__evil__{TS}__GX__X{'a' * 1100}.evs.zst", id="extra-of-1100-bytes"),
    pytest.param(GOOD, id="control-a-valid-name"),
    pytest.param(f"main__evil__{TS}__GX__D{TS}.evs.zst", id="control-a-valid-delta-name"),
]


class TestHostileNames:
    """Object names from a LIST or a notification are untrusted input. A name is either not a
    snapshot name, or not an evs.zst object of this db, or every part of it is in the alphabet
    DESIGN §4 gives ([a-zA-Z0-9-], fixed-width timestamp) and it fits in an S3 key."""

    @pytest.mark.parametrize("name", UNPARSEABLE.values(), ids=UNPARSEABLE.keys())
    def test_unparseable_names_are_rejected(self, name: str) -> None:
        assert try_parse(name) is None

    @pytest.mark.parametrize("name", IGNORED.values(), ids=IGNORED.keys())
    def test_foreign_names_are_not_taken_as_objects_of_this_db(self, name: str) -> None:
        parsed = try_parse(name)
        assert parsed is None or parsed.db != "main" or not parsed.is_evsync
        assert newest_per_instance([ObjectInfo(name, 10)], "main") == {}

    @pytest.mark.parametrize("name", HOSTILE)
    def test_accepted_names_are_made_of_safe_parts(self, name: str) -> None:
        parsed = try_parse(name)
        if parsed is None or not parsed.is_evsync:
            return
        assert len(name.encode("utf-8", "surrogatepass")) <= S3_MAX_KEY_BYTES
        for part in (parsed.db, parsed.instance, parsed.generation, *parsed.extras):
            assert SAFE_PART.fullmatch(part), f"unsafe part {part!r} in {name!r}"
        assert format_timestamp(parsed.timestamp_ns) in name
        rebuilt = SnapshotName.build(parsed.db, parsed.instance, parsed.timestamp_ns,
                                     extras=parsed.extras)
        assert rebuilt.name == name.replace(parsed.generation, "GX")

    def test_listing_keeps_only_safe_names(self) -> None:
        """newest_per_instance over a listing full of hostile names picks the valid one only
        (the hostile names sort after it, so a careless parser would prefer them)."""
        names = [*UNPARSEABLE.values(), *IGNORED.values(), GOOD]
        listing = [ObjectInfo(n, 1) for n in names]
        assert {i: n.name for i, n in newest_per_instance(listing, "main").items()} == {
            "evil": GOOD
        }


ESCAPES = [
    "../escaped",
    "../../escaped",
    "/tmp/escaped-abs",
    f"main__evil__{TS}__GX__X/../../../escaped.evs.zst",
    f"main__evil__{TS}__GX/../../escaped.evs.zst",
    "..",
    ".",
    "",
    "a\0b",
    "sub/dir",
]


class TestFsStorePaths:
    """The fs store keeps every object a direct child of its root: a name with '/', NUL, '.' or
    '..' is refused with StorageError for store, open and delete, and nothing is written or
    removed outside the root."""

    @pytest.mark.parametrize("name", ESCAPES)
    def test_path_escapes_are_refused(self, tmp_path: Path, name: str) -> None:
        root = tmp_path / "a" / "b" / "bucket"
        store = FsStore(root)
        sentinel = tmp_path / "a" / "escaped"
        sentinel.write_bytes(b"keep")
        before = sorted(p for p in tmp_path.rglob("*"))
        with pytest.raises(StorageError):
            store.store(name, io.BytesIO(b"payload"))
        with pytest.raises(StorageError):
            store.open(name).close()
        with pytest.raises(StorageError):
            store.delete(name)
        assert sorted(p for p in tmp_path.rglob("*")) == before
        assert sentinel.read_bytes() == b"keep"
        assert not Path("/tmp/escaped-abs").exists()

    @pytest.mark.parametrize("name", ["..x", "x..", "...", ".evs.zst", f"{GOOD}\\..\\x"])
    def test_dotty_names_stay_inside_the_root(self, tmp_path: Path, name: str) -> None:
        root = tmp_path / "bucket"
        store = FsStore(root)
        store.store(name, io.BytesIO(b"payload"))
        files = [p for p in tmp_path.rglob("*") if p.is_file()]
        assert [p.parent for p in files] == [root]
        with store.open(name) as fh:
            assert fh.read() == b"payload"
        store.delete(name)
        assert not any(p.is_file() for p in tmp_path.rglob("*"))


# =========================================================================== end to end


def http_on(port: int) -> dict[str, Any]:
    return {"address": f"127.0.0.1:{port}"}


def metric(port: int, name: str, **labels: str) -> float | None:
    """One sample from a live /metrics page, or None (copied from test_operations.sample)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        got = ",".join(sorted(match.group(2).split(","))) if match.group(2) else ""
        if got == want:
            return float(match.group(3))
    return None


def read_lmdb(path: Path) -> dict[bytes, dict[bytes, bytes]]:
    """Every DBI's raw (key, value) pairs read with py-lmdb, evsync's own ``_sync*`` DBIs aside
    (evsync updates its state there); the root DBI's key set is kept under b'' as DBI names."""
    env = lmdb.open(str(path), readonly=True, lock=True, max_dbs=64, subdir=True)
    try:
        out: dict[bytes, dict[bytes, bytes]] = {}
        with env.begin() as txn:
            names = [bytes(k) for k in txn.cursor().iternext(keys=True, values=False)]
        data_names = [n for n in names if not n.startswith(b"_sync")]
        out[b""] = dict.fromkeys(data_names, b"")
        for name in data_names:
            handle = env.open_db(name, create=False)
            with env.begin() as txn:
                out[name] = {bytes(k): bytes(v) for k, v in txn.cursor(db=handle)}
        return out
    finally:
        env.close()


def s3_keys(aws: AwsServer, bucket: str, prefix: str = "") -> list[str]:
    resp = aws.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in resp.get("Contents", []))


def stored_object(aws: AwsServer, bucket: str, instance: str) -> bytes | None:
    """The newest object of ``instance`` in the bucket, if any."""
    keys = s3_keys(aws, bucket, f"main__{instance}__")
    if not keys:
        return None
    body: bytes = aws.client().get_object(Bucket=bucket, Key=keys[-1])["Body"].read()
    return body


def valid_remote(instance: str, ts: int, entries: list[Entry], *, db: str = "main") -> bytes:
    return simple_spec(entries, db=db, instance=instance, timestamp_ns=ts).encode()


def corrupt_objects(own: bytes, ts: int) -> dict[str, bytes]:
    """instance -> a corrupt body whose header (where it has one) matches the name."""

    def spec_of(instance: str) -> Spec:
        return simple_spec([(b"evil-a", ts, 0, b"x"), (b"evil-b", ts, 0, b"y")],
                           instance=instance, timestamp_ns=ts)

    def wire_of(instance: str) -> list[Any]:
        return spec_of(instance).wire()

    def flipped(instance: str) -> bytes:
        data = bytearray(spec_of(instance).encode())
        data[len(data) // 2] ^= 0x10
        return bytes(data)

    w = wire_of("evil-count")
    w[0]["dbis"][0]["entries"] = 3
    count = pack(w)
    w = wire_of("evil-order")
    w[1], w[2] = w[2], w[1]
    order = pack(w)
    w = wire_of("evil-trailer")
    w[-1]["entries"] = 5
    trailer = pack(w)
    w = wire_of("evil-version")
    w[0]["version"] = 99
    version = pack(w)
    w = wire_of("evil-key")
    w[1][0] = b"k" * 600
    key = pack(w)
    w = wire_of("evil-giant")
    giant = pack([w[0], Raw(b"\xc6\xff\xff\xff\xff")])
    w = wire_of("evil-notrailer")
    notrailer = pack(w[:-1])
    return {
        "evil-empty": b"",
        "evil-truncated": spec_of("evil-truncated").encode()[:-7],
        "evil-bitflip": flipped("evil-bitflip"),
        "evil-json": json.dumps({"format": FORMAT_NAME, "db": "main"}).encode(),
        "evil-gzip": gzip.compress(pack(wire_of("evil-gzip"))),
        "evil-lspb": gzip.compress(ls_like_snapshot()),
        "evil-bare-msgpack": pack(wire_of("evil-bare-msgpack")),
        "evil-count": zstd(count),
        "evil-order": zstd(order),
        "evil-trailer": zstd(trailer),
        "evil-notrailer": zstd(notrailer),
        "evil-version": zstd(version),
        "evil-key": zstd(key),
        "evil-giant": zstd(giant),
        # version 1: one frame, verified whole, so nothing of it is applied (a version-2
        # object twice over applies its first copy's checked frames, then is rejected:
        # tests/unit/test_framed.py pins that)
        "evil-two-frames": spec_of("evil-two-frames").encode(version=1) * 2,
        # a valid object of another instance, copied under this one's name
        "evil-copy": own,
    }


def name_of(instance: str, ts: int) -> str:
    return SnapshotName.build("main", instance, ts).name


def rejection_lines(log: str, name: str, kind: str = r"\w+") -> list[str]:
    """The log's lines rejecting ``name`` (as corrupt, oversized or unmergeable)."""
    line_re = re.compile(f"rejecting {kind} object {re.escape(name)}: ")
    return [line for line in log.splitlines() if line_re.search(line)]


class TestRunningDaemon:
    """A running `evsync sync` fed a bucket full of hostile objects keeps serving: every corrupt
    object under a valid name is rejected with one log line naming it and one count on
    evsync_objects_rejected_total; valid objects under hostile names are never merged; the
    LMDB is byte-for-byte what it was; and a valid object afterwards still merges."""

    def test_hostile_bucket_leaves_the_lmdb_untouched(
        self, instances: Make, s3_storage: dict[str, Any], aws: AwsServer, bucket: str
    ) -> None:
        port = free_port()
        # full objects only: the corrupt variants below are made from a's newest object,
        # which must hold all five records (with deltas it would hold the last change)
        a = instances("a", s3_storage, http=http_on(port), deltas={"enabled": False}).start()
        for i in range(5):
            a.writer.put(f"k{i}", f"v{i}")
        own = wait_for(
            lambda: (o := stored_object(aws, bucket, "a")) is not None
            and read_header(io.BytesIO(o)).total_entries == 5 and o,
            what="a's snapshot with 5 entries",
        )
        before = read_lmdb(a.lmdb_path)
        assert len(before[b"records"]) == 5

        s3 = aws.client()
        ts = time.time_ns()
        corrupt = corrupt_objects(own, ts)
        for instance, body in corrupt.items():
            decode_result = decode(body)
            assert isinstance(decode_result, CorruptObjectError) or instance == "evil-copy"
        names = {instance: name_of(instance, ts) for instance in corrupt}
        evil_entry = [(b"hostile-name", ts, 0, b"merged!")]
        hostile_names = {
            # a valid object (header matching its parts) under names evsync must not take
            f"main__evil-slash__{format_timestamp(ts)}__GX/x.evs.zst": "evil-slash",
            f"main__evil-dir__{format_timestamp(ts)}__GX.evs.zst/inner": "evil-dir",
            f"main__evil-ext__{format_timestamp(ts)}__GX.evs.zst.bak": "evil-ext",
            f"main__evil-dots__{format_timestamp(ts)}__GX..evs.zst": "evil-dots",
            f"main__evil-xz__{format_timestamp(ts)}__GX.pb.xz": "evil-xz",
            f"other__evil-db__{format_timestamp(ts)}__GX.evs.zst": "evil-db",
            f"x/main__evil-prefix__{format_timestamp(ts)}__GX.evs.zst": "evil-prefix",
            f"main__..__{format_timestamp(ts)}__GX.evs.zst": "..",
        }
        for key, instance in hostile_names.items():
            s3.put_object(Bucket=bucket, Key=key,
                          Body=valid_remote(instance, ts, evil_entry,
                                            db="other" if key.startswith("other") else "main"))
        for instance, body in corrupt.items():
            s3.put_object(Bucket=bucket, Key=names[instance], Body=body)

        def all_rejected() -> bool:
            return all(
                metric(port, "evsync_objects_rejected_total", db="main", instance=i) == 1.0
                for i in corrupt
            )

        wait_for(all_rejected, timeout=30, what="every corrupt object rejected")
        time.sleep(1.0)  # a few more listings: nothing is rejected twice, nothing else merged

        assert a.proc is not None and a.proc.poll() is None, "the daemon died"
        log = a.log()
        for instance, name in names.items():
            lines = rejection_lines(log, name)
            assert len(lines) == 1, f"{instance}: {lines}"
            assert "ERROR" in lines[0]
            assert metric(port, "evsync_objects_rejected_total", db="main",
                          instance=instance) == 1.0
        for key, instance in hostile_names.items():
            assert key not in log or "rejecting" not in log.split(key)[0][-200:], key
            assert metric(port, "evsync_objects_loaded_total", db="main",
                          instance=instance) is None, key
        assert "Traceback" not in log
        assert "sync step failed" not in log
        after = read_lmdb(a.lmdb_path)
        assert after == before
        assert after[b"records"] == before[b"records"]  # the data DBI, every byte of it

        # the daemon keeps serving: a valid object of another instance still merges
        good_ts = time.time_ns()
        s3.put_object(Bucket=bucket, Key=name_of("z", good_ts),
                      Body=valid_remote("z", good_ts, [(b"zkey", good_ts, 0, b"zval")]))
        wait_for(lambda: a.writer.get("zkey") == "zval", what="z's object merged on a")
        assert metric(port, "evsync_objects_loaded_total", db="main", instance="z") == 1.0
        final = read_lmdb(a.lmdb_path)
        assert {k: v for k, v in final[b"records"].items() if k != b"zkey"} == before[b"records"]
        assert a.proc.poll() is None

    def test_a_decompression_bomb_is_rejected_and_later_objects_merge(
        self, instances: Make, s3_storage: dict[str, Any], aws: AwsServer, bucket: str
    ) -> None:
        """A 10 KiB object inflating past the reader's buffer is rejected like any corrupt
        object, and a valid object of another instance merges afterwards."""
        port = free_port()
        a = instances("a", s3_storage, http=http_on(port)).start()
        s3 = aws.client()
        ts = time.time_ns()
        header = simple_spec(instance="evil-bomb", timestamp_ns=ts).header
        s3.put_object(Bucket=bucket, Key=name_of("evil-bomb", ts), Body=bomb(header))
        good_ts = ts + 1
        s3.put_object(Bucket=bucket, Key=name_of("z", good_ts),
                      Body=valid_remote("z", good_ts, [(b"zkey", good_ts, 0, b"zval")]))
        wait_for(lambda: metric(port, "evsync_objects_rejected_total", db="main",
                                instance="evil-bomb") == 1.0,
                 timeout=10, what="the bomb rejected")
        wait_for(lambda: a.writer.get("zkey") == "zval", timeout=10, what="z merged")
        assert len(rejection_lines(a.log(), name_of("evil-bomb", ts))) == 1
        assert a.proc is not None and a.proc.poll() is None


class TestRunningDaemonTotalCap:
    """A running daemon with storage_max_inflated_size rejects an object that inflates past
    it once, with one line, and never fetches it again."""

    def test_an_object_over_the_total_cap_is_rejected_once_and_never_fetched_again(
        self, instances: Make, s3_storage: dict[str, Any], aws: AwsServer, bucket: str
    ) -> None:
        """An object of 16 values of 1 MiB against a cap of 8MB: one "rejecting oversized
        object" line, one count; ten more listings download nothing more; a valid
        object of another instance merges afterwards."""
        port = free_port()
        a = instances("a", s3_storage, http=http_on(port),
                      storage_max_inflated_size="8MB").start()
        s3 = aws.client()
        ts = time.time_ns()
        name = name_of("evil-big", ts)
        s3.put_object(Bucket=bucket, Key=name,
                      Body=zeros_object(16, 1 << 20, instance="evil-big", timestamp_ns=ts))
        wait_for(lambda: metric(port, "evsync_objects_rejected_total", db="main",
                                instance="evil-big") == 1.0,
                 timeout=10, what="the object rejected")
        downloaded = metric(port, "evsync_downloaded_bytes_total", db="main")
        time.sleep(2.0)  # ten listings at 200 ms
        assert metric(port, "evsync_downloaded_bytes_total", db="main") == downloaded
        lines = rejection_lines(a.log(), name)
        assert len(lines) == 1, lines
        assert "rejecting oversized object" in lines[0]
        assert "inflates to more than 8MB (storage_max_inflated_size)" in lines[0]
        assert metric(port, "evsync_objects_rejected_total", db="main",
                      instance="evil-big") == 1.0
        good_ts = time.time_ns()
        s3.put_object(Bucket=bucket, Key=name_of("z", good_ts),
                      Body=valid_remote("z", good_ts, [(b"zkey", good_ts, 0, b"zval")]))
        wait_for(lambda: a.writer.get("zkey") == "zval", timeout=10, what="z merged")
        assert a.proc is not None and a.proc.poll() is None


def test_module_runs_in_the_repo() -> None:
    """Guard for the subprocess tests: the fuzz script sits next to this file."""
    assert FUZZ_SCRIPT.exists() and os.access(FUZZ_SCRIPT, os.R_OK)
