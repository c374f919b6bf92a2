"""Format version 2 of ``.evs.zst`` (DESIGN §4): entries in zstd frames checked one at a
time, applied as they are read; version 1 objects (one frame) still read and merge."""

from __future__ import annotations

import io
import itertools
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evsync.errors import CorruptObjectError
from evsync.lmdb.env import LmdbEnv
from evsync.lmdb.merge import Merger
from evsync.snapshot import DbiInfo, Entry, SnapshotHeader, SnapshotReader, write_snapshot
from evsync.snapshot.evs import FRAME_BYTES
from evsync.snapshot.name import SnapshotName
from evsync.storage.memory import MemoryStore
from evsync.triggers.base import Batch
from tests.unit.test_syncer import app_put, make_syncer, objects, read, store

__all__ = ["store"]  # the fixture, shared with test_syncer

T = 1_700_000_000_000_000_000
FIXTURE = Path(__file__).parent.parent / "fixtures" / "evs" / "v1-small.evs.zst"
EnvFactory = Callable[..., LmdbEnv]
# a fresh LMDB name for each example of the property test
ENV_NUMBERS = itertools.count()
# values big enough that a few hundred entries fill several frames
BIG = 4096


def header(count: int, instance: str = "x", ts: int = T) -> SnapshotHeader:
    """One ``records`` DBI of ``count`` entries."""
    return SnapshotHeader("main", instance, "h", ts, 1, (DbiInfo(b"records", 0, "", count),))


def big_entries(count: int) -> list[Entry]:
    """Entries of BIG-byte values, keys in order."""
    return [(b"k%05d" % i, T + i, 0, b"%05d" % i * (BIG // 5)) for i in range(count)]


def encode(entries: list[Entry], *, version: int = 2, instance: str = "x", ts: int = T) -> bytes:
    """An object of one ``records`` DBI."""
    out = io.BytesIO()
    write_snapshot(out, header(len(entries), instance, ts), [entries], version=version)
    return out.getvalue()


def frame_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each zstd frame of an object."""
    spans, start = [], 0
    while start < len(data):
        dctx = zstandard.ZstdDecompressor().decompressobj()
        dctx.decompress(data[start:])
        end = len(data) - len(dctx.unused_data)
        spans.append((start, end))
        start = end
    return spans


def bad_checksum(data: bytes, frame: int) -> bytes:
    """``data`` with the content checksum (last 4 bytes) of one frame changed."""
    _start, end = frame_spans(data)[frame]
    out = bytearray(data)
    out[end - 1] ^= 0xFF
    return bytes(out)


def read_all(data: bytes) -> list[Entry]:
    reader = SnapshotReader(io.BytesIO(data))
    return [e for _info, entries in reader.dbis() for e in entries]


class TestFramedLayout:
    """What version 2 writes: the header in a frame of its own, then frames of about
    FRAME_BYTES of entries, each with its content checksum, read back unchanged."""

    def test_entries_span_several_checksummed_frames(self) -> None:
        """A few MiB of entries: header frame, several entry frames, all with the
        checksum flag, read back as written; the reader says it checks as it reads."""
        entries = big_entries(3 * FRAME_BYTES // BIG)
        data = encode(entries)
        spans = frame_spans(data)
        assert len(spans) >= 4
        assert all(data[s + 4] & 0x04 for s, _e in spans)
        assert read_all(data) == entries
        assert SnapshotReader(io.BytesIO(data)).checks_as_it_reads

    def test_a_version_1_object_is_one_frame_and_verified_first(self) -> None:
        """The kept version-1 writer makes one frame; its reader does not claim to check
        as it reads (the receiver verifies it whole first)."""
        entries = big_entries(600)
        data = encode(entries, version=1)
        assert len(frame_spans(data)) == 1
        reader = SnapshotReader(io.BytesIO(data))
        assert reader.header.version == 1 and not reader.checks_as_it_reads
        assert read_all(data) == entries


class TestOldVersions:
    """Objects stored by evsync before version 2 still read and merge."""

    def test_the_committed_version_1_fixture_reads(self) -> None:
        """tests/fixtures/evs/v1-small.evs.zst, as its README describes it."""
        reader = SnapshotReader(io.BytesIO(FIXTURE.read_bytes()))
        assert reader.header.version == 1 and not reader.checks_as_it_reads
        got = {info.name: list(entries) for info, entries in reader.dbis()}
        assert [len(got[n]) for n in (b"plain", b"rev", b"ints", b"empty")] == [200, 20, 20, 0]
        assert got[b"plain"][10] == (b"k010", T + 10, 1, b"")
        assert got[b"plain"][11] == (b"k011", T + 11, 0, b"value-11")
        assert [struct.unpack("<I", e[0])[0] for e in got[b"ints"]] == [
            i * 1000 for i in range(20)
        ]

    def test_the_version_1_fixture_merges(self, make_env: EnvFactory) -> None:
        """Every DBI of the fixture merges into an empty LMDB (the empty one created)."""
        lenv = make_env()
        with FIXTURE.open("rb") as f:
            result = Merger(lenv).merge(SnapshotReader(f).dbis())
        assert result.entries == 240
        assert set(result.dbis_created) == {b"plain", b"rev", b"ints", b"empty"}

    def test_a_version_1_object_merges_through_the_syncer(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """A peer's version-1 object is verified whole and merged."""
        name = SnapshotName.build("main", "x", T).name
        store.put_bytes(name, encode([(b"a", T, 0, b"1"), (b"b", T, 0, b"2")], version=1))
        b = make_syncer("b", tmp_path, store)
        b.run_once()
        assert read(b, b"b") == (b"2", T, False)
        assert b.peers.get("x").merged == SnapshotName.parse(name)


class TestABadFrameInTheMiddle:
    """A frame whose checksum fails after good ones: the good frames' entries were
    handed out (and may be applied: they are what the writer wrote), the bad frame's
    never are, and the object is rejected."""

    def test_the_reader_hands_out_only_the_frames_before_it(self) -> None:
        """Entries of the first entry frame come out, then CorruptObjectError; no entry
        of the bad frame or after it is ever seen."""
        entries = big_entries(3 * FRAME_BYTES // BIG)
        data = bad_checksum(encode(entries), 2)  # frame 0 header, 1 good, 2 bad
        seen: list[Entry] = []
        with pytest.raises(CorruptObjectError, match="zstd frame 2"):
            for _info, dbi in SnapshotReader(io.BytesIO(data)).dbis():
                for chunk in dbi.chunks():
                    seen.extend(chunk)
        assert seen and seen == entries[: len(seen)]
        assert len(seen) < len(entries) // 2

    def test_the_receiver_applies_the_good_frames_and_marks_the_object_bad(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """Through the syncer: the LMDB holds exactly the entries of the frames before the
        bad one, the object is rejected as corrupt, and the position of its instance
        does not move to it."""
        entries = big_entries(3 * FRAME_BYTES // BIG)
        data = bad_checksum(encode(entries), 2)
        name = SnapshotName.build("main", "x", T).name
        store.put_bytes(name, data)
        b = make_syncer("b", tmp_path, store)
        b.run_once()
        present = [e for e in entries if read(b, e[0]) is not None]
        assert present and present == entries[: len(present)]
        assert len(present) < len(entries) // 2
        assert read(b, present[-1][0]) == (present[-1][3], present[-1][1], False)
        assert name in b.bad_objects and name in b.peers.corrupt_objects
        assert b.peers.get("x").merged is None
        assert b.stats.objects_rejected == 1

    def test_data_after_the_trailer_rejects_an_applied_object(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """A whole valid object with a second copy after it: every frame of the first
        copy passed its checks and is applied, then the data after the trailer rejects
        the object, which is marked bad; the instance's position stays."""
        entries: list[Entry] = [(b"a", T, 0, b"1"), (b"b", T, 0, b"2")]
        name = SnapshotName.build("main", "x", T).name
        store.put_bytes(name, encode(entries) * 2)
        b = make_syncer("b", tmp_path, store)
        b.run_once()
        assert read(b, b"b") == (b"2", T, False)
        assert name in b.bad_objects and b.peers.get("x").merged is None

    def test_the_next_delta_leaves_the_applied_frames_out(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """The txns that applied the good frames count as evsync's merges: this
        instance's next delta holds its own new change only, not the peer's entries."""
        b = make_syncer("b", tmp_path, store)
        app_put(b, b"own-1", b"v", T)
        b.run_once()  # b's first (full) object
        entries = big_entries(3 * FRAME_BYTES // BIG)
        name = SnapshotName.build("main", "x", T).name
        store.put_bytes(name, bad_checksum(encode(entries), 2))
        b.step(Batch(remote={"x": SnapshotName.parse(name)}))
        assert name in b.bad_objects and read(b, entries[0][0]) is not None
        app_put(b, b"own-2", b"v", T + 1)
        b.step(Batch(local=True))
        newest = max(objects(store, "b"))
        assert SnapshotName.parse(newest).delta_base_ns is not None
        reader = SnapshotReader(store.open(newest))
        assert [e[0] for _info, dbi in reader.dbis() for e in dbi] == [b"own-2"]


class TestDecompressorsAreReused:
    """The reader keeps idle zstd decompressors per thread (making one per frame was a
    quarter of verifying a one-record delta); a decompressor never serves two frames
    at once."""

    @pytest.mark.parametrize("version", [1, 2])
    def test_two_objects_read_interleaved_in_one_thread_each_give_their_own(
        self, version: int
    ) -> None:
        """Two big objects read a chunk at a time in turn, in one thread: each gives
        exactly its own entries. The older layout's reader stops inside its one frame at
        each chunk, so a decompressor shared by the two open frames would mix their
        bytes or fail their checksums."""
        first = big_entries(3 * FRAME_BYTES // BIG)
        second = [(k, ts + 1, 0, v[::-1]) for k, ts, _f, v in first]
        readers = [
            (SnapshotReader(io.BytesIO(encode(e, version=version, instance=i))), e)
            for e, i in ((first, "x"), (second, "y"))
        ]
        streams = [
            itertools.chain.from_iterable(dbi.chunks() for _i, dbi in r.dbis())
            for r, _e in readers
        ]
        seen: list[list[Entry]] = [[], []]
        for chunks in itertools.zip_longest(*streams):
            for i, chunk in enumerate(chunks):
                if chunk is not None:
                    seen[i].extend(chunk)
        assert seen == [first, second]

    def test_an_object_after_a_bad_frame_reads_whole(self) -> None:
        """A frame that fails its checksum mid-object leaves nothing behind: the next
        object read in the same thread (with the decompressors the first left idle)
        gives all its entries."""
        entries = big_entries(3 * FRAME_BYTES // BIG)
        with pytest.raises(CorruptObjectError):
            read_all(bad_checksum(encode(entries), 2))
        assert read_all(encode(entries)) == entries
        for version in (1, 2):  # the older layout's reader takes from the same pool
            assert read_all(encode(entries[:3], version=version)) == entries[:3]


class TestFramedAgainstWhole:
    """Property: merging a version-2 object (frame by frame, applied as read) gives the
    same LMDB as merging the same entries from a version-1 object verified whole."""

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
              HealthCheck.function_scoped_fixture])
    @given(
        data=st.data(),
        count=st.integers(0, 400),
        size=st.integers(0, 9000),
    )
    def test_same_lmdb_either_way(
        self, make_env: EnvFactory, data: st.DataObject, count: int, size: int
    ) -> None:
        """Random entries (tombstones, varied values up to several frames in all) merged
        over the same random local records."""
        key = st.binary(min_size=1, max_size=12)
        keys = sorted(data.draw(st.sets(key, min_size=count, max_size=count)))
        entries: list[Entry] = []
        for k in keys:
            deleted = data.draw(st.booleans())
            app = b"" if deleted else b"v" * data.draw(st.integers(0, size))
            entries.append((k, T + data.draw(st.integers(-2, 2)), int(deleted), app))
        local = {k: (T + data.draw(st.integers(-2, 2)), b"l") for k in keys[::3]}
        results = []
        for version in (1, 2):
            lenv = make_env(f"v{version}-{next(ENV_NUMBERS)}", map_size=256 << 20)
            handle = lenv.env.open_db(b"records", create=True)
            with lenv.env.begin(write=True) as txn:
                for k, (ts, v) in local.items():
                    txn.put(k, ts.to_bytes(8, "big") + bytes(16) + v, db=handle)
            obj = encode(entries, version=version)
            Merger(lenv).merge(SnapshotReader(io.BytesIO(obj)).dbis())
            with lenv.env.begin() as txn:
                results.append({bytes(k): bytes(v)[:8] + bytes(v)[16:]
                                for k, v in txn.cursor(db=handle)})
        assert results[0] == results[1]
