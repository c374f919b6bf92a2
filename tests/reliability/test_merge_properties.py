"""Properties of the last-writer-wins merge (DESIGN §3) on real LMDBs, found by hypothesis.

Every example builds a few snapshot objects with the real writer
(:func:`evsync.snapshot.evs.write_snapshot`), verifies them and merges them into a fresh
LMDB exactly as the syncer does: ``verify_snapshot`` then
``Merger(lenv).merge(SnapshotReader(data).dbis())``. Keys come from a tiny alphabet and
timestamps from a tiny range, so the same key meets itself in several objects and equal
timestamps exercise the tie rule; flag bits other than "deleted" are sprinkled in to check
that only 0x01 is kept, and some tombstones carry a value, which the merge must drop.

An LMDB's *logical contents* are, per non-``_sync`` DBI, key -> (timestamp, flags byte,
application value); the txn id in the header is local to each LMDB and left out.

Live values are never empty in the generated objects: a live empty value tied with a
tombstone is the one case where the result depends on the order of the objects
(see :class:`TestTombstoneTieWithEmptyValue`, a known bug).
"""

from __future__ import annotations

import io
import struct
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evsync.config import LmdbConfig, LmdbOptions
from evsync.lmdb.dump import dump_native
from evsync.lmdb.env import MDB_INTEGERKEY, MDB_REVERSEKEY, LmdbEnv
from evsync.lmdb.header import FLAG_DELETED, HEADER_SIZE, encode_value
from evsync.lmdb.merge import Merger, MergeResult
from evsync.snapshot import (
    DbiInfo,
    Entry,
    SnapshotHeader,
    SnapshotReader,
    verify_snapshot,
    write_snapshot,
)

pytestmark = pytest.mark.reliability

# (name, MDB flags) of the DBIs objects carry; an INTEGERKEY DBI orders keys as integers.
PLAIN = b"records"
OTHER = b"zones"
INTS = b"ints"
DBI_FLAGS = {PLAIN: 0, OTHER: 0, INTS: MDB_INTEGERKEY}
BYTE_KEYS = (b"a", b"ab", b"b", b"\x00", b"\xff\x01")
INT_KEYS = tuple(struct.pack("<I", n) for n in (1, 2, 255, 256, 65536))
LIVE_VALUES = (b"v", b"w", b"vw", b"\x00", b"\xff" * 3, b"v" * 40)
EXTRA_FLAG_BITS = (0, 0, 0, 0x02, 0x80)  # not synced: must never reach the LMDB

Contents = dict[bytes, dict[bytes, tuple[int, int, bytes]]]
"""Logical contents: dbi -> key -> (timestamp, flags byte, application value)."""
RawContents = dict[bytes, dict[bytes, bytes]]
Obj = dict[bytes, list[Entry]]
"""One object before encoding: dbi -> its entries in key order."""

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --------------------------------------------------------------------------- LMDB helpers


@contextmanager
def fresh_env(map_size: int = 16 << 20) -> Iterator[LmdbEnv]:
    """A native-schema LMDB in a new temp dir (the make_env fixture of tests/unit, per example:
    hypothesis runs many examples in one test call, so a function fixture would be shared)."""
    with tempfile.TemporaryDirectory(prefix="evsync-prop-") as tmp:
        cfg = LmdbConfig(
            name="main",
            path=str(Path(tmp) / "main"),
            schema_tracks_changes=True,
            options=LmdbOptions(create=True, map_size=map_size),
        )
        lenv = LmdbEnv(cfg)
        try:
            yield lenv
        finally:
            lenv.close()


def raw_contents(lenv: LmdbEnv) -> RawContents:
    """Every synced DBI with its raw key/value bytes (header included), through evsync's reader."""
    out: RawContents = {}
    with lenv.read_synced_dbis() as (txn, handles):
        for name, handle in handles:
            out[name] = {bytes(k): bytes(v) for k, v in txn.cursor(db=handle)}
    return out


def logical(raw: RawContents) -> Contents:
    """Raw values split into (timestamp, flags, app value); checks the header's fixed fields."""
    out: Contents = {}
    for dbi, items in raw.items():
        out[dbi] = {}
        for key, value in items.items():
            assert len(value) >= HEADER_SIZE, (dbi, key, value)
            assert value[16] == 0, f"header version {value[16]} written for {key!r}"
            assert value[18:24] == b"\0" * 6, f"reserved/extension bytes written for {key!r}"
            ts = int.from_bytes(value[0:8], "big")
            out[dbi][key] = (ts, value[17], value[HEADER_SIZE:])
    return out


# --------------------------------------------------------------------------- objects


def encode(obj: Obj, *, instance: str = "remote", timestamp_ns: int = 1) -> bytes:
    """An evs.zst object made by the real writer."""
    names = sorted(obj)
    header = SnapshotHeader(
        db="main",
        instance=instance,
        hostname="prop",
        timestamp_ns=timestamp_ns,
        txn_id=1,
        dbis=tuple(DbiInfo(n, DBI_FLAGS.get(n, 0), "", len(obj[n])) for n in names),
    )
    out = io.BytesIO()
    write_snapshot(out, header, [obj[n] for n in names])
    return out.getvalue()


def merge(lenv: LmdbEnv, data: bytes, **kwargs: Any) -> MergeResult:
    """Verify, then merge one object the way the receiver does (Receiver.merge_object)."""
    stream = io.BytesIO(data)
    verify_snapshot(stream)
    stream.seek(0)
    kwargs.setdefault("max_seconds", 3600.0)  # batches split by count only: deterministic
    return Merger(lenv, **kwargs).merge(SnapshotReader(stream).dbis())


def merged_contents(objects: Sequence[bytes], **kwargs: Any) -> RawContents:
    """Raw contents of a fresh LMDB after merging ``objects`` in order."""
    with fresh_env() as lenv:
        for data in objects:
            merge(lenv, data, **kwargs)
        return raw_contents(lenv)


def int_order(key: bytes) -> int:
    return int(struct.unpack("<I", key)[0])


@st.composite
def entry_fields(draw: st.DrawFn) -> tuple[int, int, bytes]:
    """(timestamp, flags, value): tiny timestamp range; tombstones sometimes carry a value."""
    ts = draw(st.integers(1, 4))
    deleted = draw(st.booleans())
    flags = (FLAG_DELETED if deleted else 0) | draw(st.sampled_from(EXTRA_FLAG_BITS))
    if deleted:
        value = draw(st.sampled_from((b"",) * 3 + LIVE_VALUES))
    else:
        value = draw(st.sampled_from(LIVE_VALUES))
    return ts, flags, value


@st.composite
def snapshot_objects(draw: st.DrawFn) -> Obj:
    """One object: some of the DBIs (possibly empty), each with unique keys in LMDB order."""
    obj: Obj = {}
    for dbi in draw(st.lists(st.sampled_from(sorted(DBI_FLAGS)), max_size=3, unique=True)):
        keys = INT_KEYS if DBI_FLAGS[dbi] & MDB_INTEGERKEY else BYTE_KEYS
        fields = draw(st.dictionaries(st.sampled_from(keys), entry_fields(), max_size=5))
        order = int_order if DBI_FLAGS[dbi] & MDB_INTEGERKEY else None
        obj[dbi] = [(k, *fields[k]) for k in sorted(fields, key=order)]
    return obj


OBJECT_LISTS = st.lists(snapshot_objects(), min_size=1, max_size=5).map(
    lambda objs: [encode(o, timestamp_ns=i + 1) for i, o in enumerate(objs)]
)


def model(objects: Sequence[Obj]) -> Contents:
    """The merge rule in plain Python: per key, the highest timestamp wins; at equal timestamps
    the byte-wise smaller application value (a tombstone's is empty); flags keep bit 0x01 only."""
    out: Contents = {}
    for obj in objects:
        for dbi, entries in obj.items():
            for key, ts, flags, value in entries:
                deleted = flags & FLAG_DELETED
                candidate = (ts, deleted, b"" if deleted else value)
                current = out.setdefault(dbi, {}).get(key)
                if (
                    current is None
                    or ts > current[0]
                    or (ts == current[0] and candidate[2] < current[2])
                ):
                    out[dbi][key] = candidate
    return out


def decoded(data: bytes) -> Obj:
    """An encoded object read back (the model works on what the reader yields)."""
    obj: Obj = {}
    for info, entries in SnapshotReader(io.BytesIO(data)).dbis():
        obj[info.name] = list(entries)
    return obj


def non_empty(contents: Contents) -> Contents:
    return {dbi: items for dbi, items in contents.items() if items}


# --------------------------------------------------------------------------- properties


class TestOrderIndependence:
    """(a) Merging the same objects in any order gives the same LMDB contents (txn ids aside)."""

    @SETTINGS
    @given(objects=OBJECT_LISTS, data=st.data())
    def test_any_permutation_gives_the_same_contents(
        self, objects: list[bytes], data: st.DataObject
    ) -> None:
        """A permutation drawn by hypothesis ends in exactly the contents of the original order,
        including which DBIs exist."""
        permuted = data.draw(st.permutations(objects), label="permuted")
        assert logical(merged_contents(permuted)) == logical(merged_contents(objects))

    @SETTINGS
    @given(objects=OBJECT_LISTS)
    def test_reversed_order_gives_the_same_contents(self, objects: list[bytes]) -> None:
        """The reverse order, the permutation that most often moves a tie's winner."""
        assert logical(merged_contents(objects[::-1])) == logical(merged_contents(objects))


class TestIdempotence:
    """(b) Merging an object that was merged before changes nothing."""

    @SETTINGS
    @given(objects=OBJECT_LISTS, data=st.data())
    def test_merging_again_writes_nothing_and_keeps_every_byte(
        self, objects: list[bytes], data: st.DataObject
    ) -> None:
        """After all objects are merged, merging any of them again, any number of times, writes
        no entry and leaves every raw value byte-identical (the local txn ids included)."""
        again = data.draw(st.lists(st.sampled_from(objects), min_size=1, max_size=6), label="again")
        with fresh_env() as lenv:
            for obj in objects:
                merge(lenv, obj)
            before = raw_contents(lenv)
            txn_before = lenv.last_txn_id()
            for obj in again:
                result = merge(lenv, obj)
                assert result.written == 0, "a repeated merge wrote entries"
            assert raw_contents(lenv) == before
            assert lenv.last_txn_id() == txn_before, "a repeated merge committed a write txn"

    @SETTINGS
    @given(objects=OBJECT_LISTS, data=st.data())
    def test_duplicates_anywhere_in_the_stream_change_nothing(
        self, objects: list[bytes], data: st.DataObject
    ) -> None:
        """Objects delivered twice or more, interleaved with the others (at-least-once
        notifications), end in the same contents as each object delivered once."""
        extra = data.draw(st.lists(st.sampled_from(objects), min_size=1, max_size=6), label="dups")
        stream = list(objects)
        for dup in extra:
            stream.insert(data.draw(st.integers(0, len(stream)), label="at"), dup)
        assert logical(merged_contents(stream)) == logical(merged_contents(objects))


class TestModel:
    """(c) The LMDB after merging equals a plain-Python last-writer-wins model."""

    @SETTINGS
    @given(objects=OBJECT_LISTS)
    def test_contents_equal_the_model(self, objects: list[bytes]) -> None:
        """Per key: highest timestamp, ties to the smaller application value, a tombstone with an
        empty value and flags exactly 0x01, live entries with flags 0; DBIs that received no entry
        may or may not exist, and are left out of the comparison."""
        want = non_empty(model([decoded(o) for o in objects]))
        got = non_empty(logical(merged_contents(objects)))
        assert got == want

    def test_model_matches_a_hand_checked_example(self) -> None:
        """The model itself: newer wins, the smaller value wins a tie, a tombstone wins a tie
        against any non-empty value, and unknown flag bits are dropped."""
        objs: list[Obj] = [
            {PLAIN: [(b"a", 2, 0, b"w"), (b"b", 3, 0, b"x"), (b"c", 1, 0x80, b"z")]},
            {PLAIN: [(b"a", 2, 0, b"v"), (b"b", 3, FLAG_DELETED, b"junk"), (b"c", 0, 0, b"o")]},
        ]
        want = {PLAIN: {b"a": (2, 0, b"v"), b"b": (3, 1, b""), b"c": (1, 0, b"z")}}
        assert model(objs) == want
        assert logical(merged_contents([encode(o) for o in objs])) == want
        assert logical(merged_contents([encode(o) for o in objs[::-1]])) == want


class TestBatching:
    """(d) Splitting a merge into many small write txns gives the result of one big txn."""

    @SETTINGS
    @given(objects=OBJECT_LISTS, max_entries=st.sampled_from([1, 2, 3]))
    def test_small_batches_equal_one_batch(self, objects: list[bytes], max_entries: int) -> None:
        """Merger(max_entries=1..3) commits a txn every few entries; contents are the same as
        with the default batch size, and the number of txns matches the batch size (plus
        one for each DBI the object holds empty and the LMDB lacked: it is created)."""
        one = logical(merged_contents(objects))
        with fresh_env() as lenv:
            for data in objects:
                result = merge(lenv, data, max_entries=max_entries)
                dbis = decoded(data)
                per_dbi = [len(e) for e in dbis.values()]
                created_empty = sum(
                    1 for name, e in dbis.items() if not e and name in result.dbis_created
                )
                assert result.txns == sum(-(-n // max_entries) for n in per_dbi) + created_empty
            small = logical(raw_contents(lenv))
        assert small == one


class TestDumpRoundTrip:
    """(e) What dump_native writes from a real LMDB merges into an empty one as the same data."""

    @SETTINGS
    @given(source=snapshot_objects())
    def test_dump_then_merge_reproduces_the_source(self, source: Obj) -> None:
        """An LMDB filled by the application (native values) is dumped, verified and merged into
        an empty LMDB: every non-empty DBI, key, timestamp, flag and value arrives unchanged."""
        want: Contents = {}
        with fresh_env() as src:
            for dbi, entries in source.items():
                handle = src.env.open_db(dbi, integerkey=bool(DBI_FLAGS[dbi] & MDB_INTEGERKEY))
                with src.env.begin(write=True) as txn:
                    for key, ts, flags, value in entries:
                        txn.put(key, encode_value(ts, 7, flags, value), db=handle)
                        deleted = flags & FLAG_DELETED
                        want.setdefault(dbi, {})[key] = (ts, deleted, b"" if deleted else value)
            out = io.BytesIO()
            dump_native(src, out, db="main", instance="src", timestamp_ns=1)
        assert non_empty(logical(merged_contents([out.getvalue()]))) == want


# --------------------------------------------------------------------------- known bugs


class TestTombstoneTieWithEmptyValue:
    """A tombstone and a live entry with an empty value, same key and timestamp: DESIGN §3 says
    "a delete, whose value is empty, wins a tie"; the result must not depend on the order."""

    def test_tombstone_wins_a_tie_against_an_empty_live_value_in_either_order(self) -> None:
        """Either order ends with the tombstone (flags 0x01)."""
        tomb = encode({PLAIN: [(b"k", 5, FLAG_DELETED, b"")]})
        live = encode({PLAIN: [(b"k", 5, 0, b"")]})
        first = logical(merged_contents([tomb, live]))
        second = logical(merged_contents([live, tomb]))
        assert first == {PLAIN: {b"k": (5, FLAG_DELETED, b"")}}
        assert second == first


class TestReverseKeyDump:
    """A DBI created with MDB_REVERSEKEY is synced like any other (flags_to_int knows it): the
    object its dump produces must be readable by the same codec."""

    def test_reverse_key_dbi_dump_verifies_and_merges(self) -> None:
        """Keys b'ab' and b'ba' (LMDB lists b'ba' first) survive dump -> verify -> merge."""
        with fresh_env() as src:
            handle = src.env.open_db(b"rk", reverse_key=True)
            with src.env.begin(write=True) as txn:
                txn.put(b"ab", encode_value(1, 1, 0, b"x"), db=handle)
                txn.put(b"ba", encode_value(1, 1, 0, b"y"), db=handle)
            with src.begin() as txn:
                assert src.dbi_flags(txn, handle) & MDB_REVERSEKEY
            out = io.BytesIO()
            dump_native(src, out, db="main", instance="src", timestamp_ns=1)
        got = logical(merged_contents([out.getvalue()]))
        assert got == {b"rk": {b"ab": (1, 0, b"x"), b"ba": (1, 0, b"y")}}

