"""Format version 3 of ``.evs.zst``: column-wise blocks, checked before use, merged as entries."""

from __future__ import annotations

import io
import itertools
import struct
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evsync.errors import CorruptObjectError
from evsync.lmdb.env import LmdbEnv
from evsync.lmdb.merge import Merger
from evsync.snapshot import DbiInfo, Entry, SnapshotHeader, SnapshotReader, write_snapshot

T = 1_700_000_000_000_000_000
FIXTURES = Path(__file__).parent.parent / "fixtures" / "evs"
EnvFactory = Callable[..., LmdbEnv]
ENV_NUMBERS = itertools.count()


def header(count: int) -> SnapshotHeader:
    """One ``records`` DBI of ``count`` entries."""
    return SnapshotHeader("main", "x", "h", T, 1, (DbiInfo(b"records", 0, "", count),))


def encode(entries: list[Entry], version: int = 3) -> bytes:
    out = io.BytesIO()
    write_snapshot(out, header(len(entries)), [entries], version=version)
    return out.getvalue()


def read_all(data: bytes) -> list[Entry]:
    reader = SnapshotReader(io.BytesIO(data))
    return [e for _info, entries in reader.dbis() for e in entries]


def crafted(block: tuple[object, ...], count: int) -> bytes:
    """A version-3 object of one DBI of ``count`` entries holding ``block`` as written."""
    cctx = zstandard.ZstdCompressor(level=1, write_checksum=True)
    wire = header(count).to_wire()
    return b"".join(
        cctx.compress(msgpack.packb(obj, use_bin_type=True))
        for obj in (wire, block)
    ) + cctx.compress(msgpack.packb({"trailer": True, "entries": count}, use_bin_type=True)
    )


def good_block(keys: list[bytes], values: list[bytes]) -> list[object]:
    n = len(keys)
    return [n, b"".join(keys), struct.pack(f">{n}H", *map(len, keys)),
            struct.pack(f">{n}Q", *range(T, T + n)), bytes(n), b"".join(values),
            struct.pack(f">{n}I", *map(len, values))]


class TestRoundTrip:
    """What version 3 writes reads back unchanged."""

    def test_mixed_entries_round_trip(self) -> None:
        """Tombstones, empty and big values, many blocks: read back exactly."""
        entries = [(b"k%06d" % i, T + i, int(i % 5 == 0), b"v" * (i % 9)) for i in range(20_000)]
        entries.append((b"z", T, 0, b"x" * (3 << 20)))
        data = encode(entries)
        reader = SnapshotReader(io.BytesIO(data))
        assert reader.header.version == 3 and reader.checks_as_it_reads
        assert read_all(data) == entries


class TestOldVersions:
    """Objects written before version 3 still read and merge."""

    @pytest.mark.parametrize("name", ["v1-small.evs.zst", "v2-small.evs.zst"])
    def test_committed_fixtures_merge(self, name: str, make_env: EnvFactory) -> None:
        """The committed v1 and v2 fixtures merge every DBI (240 entries)."""
        with (FIXTURES / name).open("rb") as f:
            result = Merger(make_env()).merge(SnapshotReader(f).dbis())
        assert result.entries == 240


class TestCorrupt:
    """A hostile or damaged version-3 object gives one CorruptObjectError line."""

    @pytest.mark.parametrize(
        ("mutate", "message"),
        [
            (lambda b: b.__setitem__(2, b[2][:-1]), "key lengths column"),
            (lambda b: b.__setitem__(3, b[3][:-8]), "timestamps column"),
            (lambda b: b.__setitem__(4, b[4] + b"\0"), "flags column"),
            (lambda b: b.__setitem__(1, b[1][:-1]), "key lengths add up"),
            (lambda b: b.__setitem__(6, struct.pack(">3I", 1, 1, 1 << 30)), "value lengths add up"),
            (lambda b: b.__setitem__(0, 4), "key lengths column"),
            (lambda b: b.__setitem__(1, b"k2k1k3"), "out of order"),
            (lambda b: b.__setitem__(1, 7), "not a binary string"),
            (lambda b: b.pop(), "7-field block"),
        ],
    )
    def test_bad_blocks(self, mutate: Callable[[list[object]], None], message: str) -> None:
        """Column lengths that disagree, lengths over the blob, bad order or types."""
        block = good_block([b"k1", b"k2", b"k3"], [b"a", b"b", b"c"])
        mutate(block)
        with pytest.raises(CorruptObjectError, match=message) as info:
            read_all(crafted(tuple(block), 3))
        assert "\n" not in str(info.value)

    def test_oversize_entry(self) -> None:
        """A value length past the entry cap is refused before anything is cut."""
        n = 1
        block = (n, b"k", b"\0\1", struct.pack(">Q", T), b"\0", b"", struct.pack(">I", 1 << 27))
        with pytest.raises(CorruptObjectError):
            read_all(crafted(block, 1))

    def test_truncated_object(self) -> None:
        """An object cut in a frame is refused."""
        data = encode([(b"k%04d" % i, T, 0, b"v") for i in range(100)])
        with pytest.raises(CorruptObjectError):
            read_all(data[:-10])

    def test_bad_frame_leaves_only_verified_frames_applied(
        self, make_env: EnvFactory
    ) -> None:
        """A bad checksum in the second entry frame: the first frame's entries are
        applied, none of the later ones, and the object is rejected."""
        entries = [(b"k%05d" % i, T + i, 0, b"v" * 50) for i in range(20_000)]
        data = bytearray(encode(entries))
        starts, at = [], 0
        while at < len(data):
            d = zstandard.ZstdDecompressor().decompressobj()
            d.decompress(bytes(data[at:]))
            starts.append(at)
            at = len(data) - len(d.unused_data)
        data[starts[3] - 1] ^= 0xFF  # the checksum of the second block's frame
        lenv = make_env()
        with pytest.raises(CorruptObjectError):
            Merger(lenv).merge(SnapshotReader(io.BytesIO(bytes(data))).dbis())
        with lenv.env.begin(db=lenv.env.open_db(b"records")) as txn:
            assert txn.stat()["entries"] == 8192


entry_lists = st.lists(
    st.tuples(st.binary(min_size=1, max_size=6), st.integers(T, T + 3),
              st.sampled_from([0, 1]), st.binary(max_size=4)),
    max_size=40, unique_by=lambda e: e[0],
).map(sorted)


class TestProperty:
    """The merge of a version-3 object equals the entry-by-entry merge of its entries."""

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(local=entry_lists, remote=entry_lists)
    def test_same_result_as_entry_merge(
        self, local: list[Entry], remote: list[Entry], make_env: EnvFactory
    ) -> None:
        """Whatever is stored, merging the v3 object and merging its entries as a plain
        list (the general path) leave the same LMDB."""
        results = []
        for as_columns in (True, False):
            lenv = make_env(f"p{next(ENV_NUMBERS)}")
            Merger(lenv).merge([(DbiInfo(b"records", 0, "", len(local)), local)])
            if as_columns:
                reader = SnapshotReader(io.BytesIO(encode(remote)))
                Merger(lenv).merge(reader.dbis())
            else:
                Merger(lenv).merge([(DbiInfo(b"records", 0, "", len(remote)), remote)])
            with lenv.env.begin(db=lenv.env.open_db(b"records")) as txn:
                results.append([(k, v[:8] + v[16:]) for k, v in txn.cursor()])
        assert results[0] == results[1]
