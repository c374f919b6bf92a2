"""The full dump's reading of native values (``evsync.lmdb.dump``): chunks cut column-wise
must hand out exactly what a header parse per entry does."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest

from evsync.errors import LmdbError
from evsync.lmdb.dump import DUMP_CHUNK, dump_native
from evsync.lmdb.env import LmdbEnv
from evsync.snapshot import Entry, SnapshotReader, write_snapshot

T = 1_700_000_000_000_000_000
EnvFactory = Callable[..., LmdbEnv]


def value(ts: int, flags: int = 0, app: bytes = b"", blocks: int = 0, version: int = 0) -> bytes:
    """A native value built byte by byte from DESIGN §2 (txn id 9)."""
    return (
        ts.to_bytes(8, "big")
        + (9).to_bytes(8, "big")
        + bytes([version, flags])
        + b"\0\0\0\0"
        + blocks.to_bytes(2, "big")
        + b"\xee" * (8 * blocks)
        + app
    )


def dumped(lenv: LmdbEnv) -> list[Entry]:
    """The entries of the ``data`` DBI as a full dump writes them."""
    out = io.BytesIO()
    dump_native(lenv, out, db="main", instance="a", timestamp_ns=T)
    out.seek(0)
    reader = SnapshotReader(out)
    return [entry for _info, entries in reader.dbis() for entry in entries]


def fill(lenv: LmdbEnv, items: dict[bytes, bytes]) -> None:
    """Write raw values into the ``data`` DBI."""
    handle = lenv.env.open_db(b"data", create=True)
    with lenv.env.begin(write=True) as txn:
        for k, v in items.items():
            txn.put(k, v, db=handle)


class TestChunkedDump:
    """Fixed-size and varied values, chunks of every kind, and the odd headers that
    take the entry-by-entry path all come out as (key, timestamp, synced flags, value)."""

    def test_fixed_size_values_over_several_chunks(self, make_env: EnvFactory) -> None:
        """More than two chunks of same-length values, in key order."""
        lenv = make_env()
        n = 2 * DUMP_CHUNK + 7
        fill(lenv, {b"k%06d" % i: value(T + i, 0, b"v%05d" % i) for i in range(n)})
        assert dumped(lenv) == [(b"k%06d" % i, T + i, 0, b"v%05d" % i) for i in range(n)]

    def test_varied_values_and_tombstones(self, make_env: EnvFactory) -> None:
        """Values of many lengths (empty included) and tombstones in one chunk."""
        lenv = make_env()
        items = {b"k%04d" % i: (T - i, i % 3 == 0, b"x" * (i % 11)) for i in range(300)}
        fill(lenv, {k: value(ts, int(d), b"" if d else app) for k, (ts, d, app) in items.items()})
        expected = [(k, ts, int(d), b"" if d else app) for k, (ts, d, app) in items.items()]
        assert dumped(lenv) == expected

    @pytest.mark.parametrize(
        ("stored", "entry"),
        [
            (value(T, 0, b"app", blocks=2), (b"k", T, 0, b"app")),
            (value(T, 0x03, b"app"), (b"k", T, 1, b"app")),
            (value(T, 0x02, b"app"), (b"k", T, 0, b"app")),
        ],
        ids=["extension-blocks", "unsynced-flag-with-delete", "unsynced-flag-only"],
    )
    def test_odd_headers_among_plain_ones(
        self, make_env: EnvFactory, stored: bytes, entry: Entry
    ) -> None:
        """Extension blocks are skipped and flags other than deleted dropped, as the
        per-entry parse does, and the plain neighbours come out unchanged."""
        lenv = make_env()
        fill(lenv, {b"a": value(T, 0, b"1"), b"k": stored, b"z": value(T, 0, b"2")})
        assert dumped(lenv) == [(b"a", T, 0, b"1"), entry, (b"z", T, 0, b"2")]

    @pytest.mark.parametrize(
        "stored", [b"short", value(T, 0, b"app", version=1), value(T, 0, b"", blocks=1)[:-4]]
    )
    def test_a_value_without_a_valid_header_names_its_key(
        self, make_env: EnvFactory, stored: bytes
    ) -> None:
        """Too short, another header version, extension blocks cut off: the dump fails
        with an LmdbError naming the DBI and key."""
        lenv = make_env()
        fill(lenv, {b"a": value(T, 0, b"1"), b"bad-key": stored})
        with pytest.raises(LmdbError, match="'data' key b'bad-key'"):
            dumped(lenv)

    def test_a_dbi_with_values_in_overflow_pages(self, make_env: EnvFactory) -> None:
        """Values too big for a leaf node (read one entry at a time, so that a chunk never
        holds many of them) come out as the small ones around them do."""
        lenv = make_env()
        items = {b"k%03d" % i: (b"%03d" % i) * (5000 if i % 7 == 0 else 1) for i in range(50)}
        fill(lenv, {k: value(T, 0, app) for k, app in items.items()})
        assert dumped(lenv) == [(k, T, 0, app) for k, app in items.items()]

    def test_the_object_is_what_the_writer_makes_of_the_entries(
        self, make_env: EnvFactory
    ) -> None:
        """The dump hands the writer columns it cut itself (value lengths included, one
        shared length for fixed-size records); the object is byte for byte the one the
        writer makes from the same entries as plain tuples."""
        lenv = make_env()
        items = {b"f%05d" % i: value(T + i, 0, b"%05d" % i) for i in range(DUMP_CHUNK + 3)}
        items |= {b"v%04d" % i: value(T - i, i % 2, b"y" * (i % 13)) for i in range(300)}
        items[b"w-blocks"] = value(T, 0, b"app", blocks=2)
        fill(lenv, items)
        out = io.BytesIO()
        dump_native(lenv, out, db="main", instance="a", timestamp_ns=T)
        out.seek(0)
        reader = SnapshotReader(out)
        header = reader.header
        entries = [list(dbi_entries) for _info, dbi_entries in reader.dbis()]
        again = io.BytesIO()
        write_snapshot(again, header, entries)
        assert again.getvalue() == out.getvalue()
