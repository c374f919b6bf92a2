"""The last-writer-wins merge of DESIGN §3, pure (merge_entry) and on a real LMDB (Merger)."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from evsync.errors import HeaderError, LmdbError, SyncInterruptedError
from evsync.lmdb.env import LmdbEnv
from evsync.lmdb.merge import RUN_WINDOW, TXN_SLICE, Merger, merge_entry
from evsync.snapshot import DbiInfo, Entry, SnapshotHeader, SnapshotReader, write_snapshot

T = 1_700_000_000_000_000_000
DELETED = 0x01
EnvFactory = Callable[..., LmdbEnv]
TXN = 777


def value(ts: int, txn: int, flags: int = 0, app: bytes = b"", blocks: int = 0) -> bytes:
    """A native LMDB value built byte by byte from DESIGN §2."""
    return (
        ts.to_bytes(8, "big")
        + txn.to_bytes(8, "big")
        + bytes([0, flags])
        + b"\0\0\0\0"
        + blocks.to_bytes(2, "big")
        + b"\xee" * (8 * blocks)
        + app
    )


def fields(raw: bytes) -> tuple[int, int, int, bytes]:
    """(ts, txn, flags, app value) of a stored value without extension blocks."""
    assert raw[16] == 0 and raw[22:24] == b"\0\0"
    return (
        int.from_bytes(raw[0:8], "big"),
        int.from_bytes(raw[8:16], "big"),
        raw[17],
        raw[24:],
    )


# ------------------------------------------------------------------ LMDB helpers


def put_raw(lenv: LmdbEnv, dbi: bytes, items: dict[bytes, bytes]) -> None:
    """Write raw values into a DBI, bypassing evsync."""
    handle = lenv.env.open_db(dbi, create=True)
    with lenv.env.begin(write=True) as txn:
        for k, v in items.items():
            txn.put(k, v, db=handle)


def dump_raw(lenv: LmdbEnv) -> dict[bytes, dict[bytes, bytes]]:
    """Every named DBI with its raw key/value pairs."""
    out: dict[bytes, dict[bytes, bytes]] = {}
    with lenv.env.begin() as txn:
        names = [bytes(k) for k, _v in txn.cursor()]
    for name in names:
        handle = lenv.env.open_db(name, create=False)
        with lenv.env.begin() as txn:
            out[name] = {bytes(k): bytes(v) for k, v in txn.cursor(db=handle)}
    return out


def remote(dbi: bytes, entries: list[Entry], flags: int = 0) -> tuple[DbiInfo, list[Entry]]:
    """One DBI of a remote object."""
    return DbiInfo(dbi, flags, "", len(entries)), entries


def merger(lenv: LmdbEnv, **kwargs: Any) -> Merger:
    """A Merger that never splits batches by time, so txn counts are deterministic."""
    kwargs.setdefault("max_seconds", 60.0)
    return Merger(lenv, **kwargs)


class TestMergeEntryInsert:
    """A remote entry for a key missing locally."""

    def test_new_entry_inserted(self) -> None:
        """A missing key gets the remote value with the current txn id."""
        new = merge_entry(None, (b"k", T, 0, b"remote"), TXN)
        assert new is not None
        assert fields(new) == (T, TXN, 0, b"remote")

    def test_old_live_entry_inserted(self) -> None:
        """An old non-deleted entry is inserted even when older than the tombstone cutoff."""
        new = merge_entry(None, (b"k", 5, 0, b"old"), TXN, deleted_cutoff_ns=T)
        assert new is not None
        assert fields(new) == (5, TXN, 0, b"old")

    def test_stale_tombstone_skipped(self) -> None:
        """A tombstone older than deleted_cutoff_ns is not added for a missing key."""
        assert merge_entry(None, (b"k", T - 1, DELETED, b""), TXN, deleted_cutoff_ns=T) is None

    def test_recent_tombstone_inserted(self) -> None:
        """A tombstone at or after deleted_cutoff_ns is inserted for a missing key."""
        new = merge_entry(None, (b"k", T, DELETED, b""), TXN, deleted_cutoff_ns=T)
        assert new is not None
        assert fields(new) == (T, TXN, DELETED, b"")

    def test_tombstone_value_dropped(self) -> None:
        """A remote tombstone that carries bytes is stored with an empty value."""
        new = merge_entry(None, (b"k", T, DELETED, b"junk"), TXN)
        assert new is not None
        assert fields(new) == (T, TXN, DELETED, b"")

    def test_unknown_remote_flags_dropped(self) -> None:
        """Remote flags other than 0x01 are not stored."""
        new = merge_entry(None, (b"k", T, 0x82, b"v"), TXN)
        assert new is not None
        assert fields(new)[2] == 0


class TestMergeEntryConflict:
    """A remote entry against an existing local one."""

    def test_newer_local_kept(self) -> None:
        """A remote older than the local entry loses."""
        assert merge_entry(value(T, 1, 0, b"local"), (b"k", T - 1, 0, b"a"), TXN) is None

    def test_newer_remote_wins(self) -> None:
        """A newer remote is written with the current txn id in the header."""
        new = merge_entry(value(T, 1, 0, b"local"), (b"k", T + 1, 0, b"zzz"), TXN)
        assert new is not None
        assert fields(new) == (T + 1, TXN, 0, b"zzz")

    def test_newer_remote_tombstone_deletes(self) -> None:
        """If a remote tombstone is newer, the key becomes deleted."""
        new = merge_entry(value(T, 1, 0, b"local"), (b"k", T + 1, DELETED, b""), TXN)
        assert new is not None
        assert fields(new) == (T + 1, TXN, DELETED, b"")

    def test_newer_tombstone_replaces_even_if_stale(self) -> None:
        """The tombstone cutoff only applies to missing keys, not to an older local entry."""
        new = merge_entry(value(5, 1, 0, b"x"), (b"k", 6, DELETED, b""), TXN, deleted_cutoff_ns=T)
        assert new is not None
        assert fields(new) == (6, TXN, DELETED, b"")

    def test_newer_remote_revives_tombstone(self) -> None:
        """A newer live remote replaces a local tombstone."""
        new = merge_entry(value(T, 1, DELETED), (b"k", T + 1, 0, b"back"), TXN)
        assert new is not None
        assert fields(new) == (T + 1, TXN, 0, b"back")

    def test_tie_smaller_remote_wins(self) -> None:
        """At equal timestamps a byte-wise smaller remote value wins."""
        new = merge_entry(value(T, 1, 0, b"b"), (b"k", T, 0, b"a"), TXN)
        assert new is not None
        assert fields(new) == (T, TXN, 0, b"a")

    def test_tie_prefix_is_smaller(self) -> None:
        """At equal timestamps a remote value that is a prefix of the local one wins."""
        new = merge_entry(value(T, 1, 0, b"abc"), (b"k", T, 0, b"ab"), TXN)
        assert new is not None
        assert fields(new)[3] == b"ab"

    def test_tie_larger_remote_loses(self) -> None:
        """At equal timestamps a byte-wise larger remote value loses."""
        assert merge_entry(value(T, 1, 0, b"a"), (b"k", T, 0, b"b"), TXN) is None

    def test_tie_equal_value_writes_nothing(self) -> None:
        """Equal timestamp and equal bytes write nothing."""
        assert merge_entry(value(T, 1, 0, b"same"), (b"k", T, 0, b"same"), TXN) is None

    def test_delete_wins_tie(self) -> None:
        """At equal timestamps a delete (empty value) beats a live value."""
        new = merge_entry(value(T, 1, 0, b"live"), (b"k", T, DELETED, b""), TXN)
        assert new is not None
        assert fields(new) == (T, TXN, DELETED, b"")

    def test_tombstone_with_bytes_wins_tie(self) -> None:
        """A remote tombstone carrying junk bytes still counts as empty and wins a tie."""
        new = merge_entry(value(T, 1, 0, b"a"), (b"k", T, DELETED, b"zzz"), TXN)
        assert new is not None
        assert fields(new) == (T, TXN, DELETED, b"")

    def test_local_delete_wins_tie(self) -> None:
        """At equal timestamps a local delete is kept against a live remote."""
        assert merge_entry(value(T, 1, DELETED), (b"k", T, 0, b"live"), TXN) is None

    def test_tie_ignores_local_extension_blocks(self) -> None:
        """The tie compares application values, skipping local extension blocks."""
        local = value(T, 1, 0, b"b", blocks=1)
        assert merge_entry(local, (b"k", T, 0, b"b"), TXN) is None
        assert merge_entry(local, (b"k", T, 0, b"c"), TXN) is None
        new = merge_entry(local, (b"k", T, 0, b"a"), TXN)
        assert new is not None
        assert fields(new) == (T, TXN, 0, b"a")

    @pytest.mark.parametrize(
        "local",
        [
            pytest.param(b"abc", id="too-short"),
            pytest.param(value(T, 1)[:23], id="23-bytes"),
            pytest.param(b"\0" * 16 + b"\x01" + b"\0" * 7 + b"x", id="version-1"),
            pytest.param(value(T, 1, blocks=2)[:30], id="short-blocks"),
        ],
    )
    def test_corrupt_local_raises(self, local: bytes) -> None:
        """A local value without a valid header raises HeaderError."""
        with pytest.raises(HeaderError):
            merge_entry(local, (b"k", T, 0, b"v"), TXN)


class TestMergerRules:
    """Merger applies the rules to a real LMDB."""

    def test_rules_on_lmdb(self, make_env: EnvFactory) -> None:
        """Inserts, newer-remote wins, older-remote loses, ties and tombstones on one DBI."""
        lenv = make_env()
        put_raw(
            lenv,
            b"data",
            {
                b"keep-newer-local": value(T + 10, 3, 0, b"local"),
                b"remote-newer": value(T, 3, 0, b"local"),
                b"tie-smaller": value(T, 3, 0, b"m"),
                b"tie-larger": value(T, 3, 0, b"m"),
                b"tie-delete": value(T, 3, 0, b"m"),
            },
        )
        before = dump_raw(lenv)[b"data"]
        entries: list[Entry] = [
            (b"keep-newer-local", T, 0, b"remote"),
            (b"new", T, 0, b"inserted"),
            (b"remote-newer", T + 1, 0, b"remote"),
            (b"tie-delete", T, DELETED, b""),
            (b"tie-larger", T, 0, b"z"),
            (b"tie-smaller", T, 0, b"a"),
        ]
        result = merger(lenv).merge([remote(b"data", entries)])
        after = dump_raw(lenv)[b"data"]
        assert result.entries == 6
        assert result.written == 4
        assert result.txns == 1
        txn_id = result.txn_ids[0]
        assert txn_id == lenv.last_txn_id()
        assert after[b"keep-newer-local"] == before[b"keep-newer-local"]
        assert after[b"tie-larger"] == before[b"tie-larger"]
        assert fields(after[b"new"]) == (T, txn_id, 0, b"inserted")
        assert fields(after[b"remote-newer"]) == (T + 1, txn_id, 0, b"remote")
        assert fields(after[b"tie-smaller"]) == (T, txn_id, 0, b"a")
        assert fields(after[b"tie-delete"]) == (T, txn_id, DELETED, b"")

    def test_new_live_entries_stored_byte_for_byte(self, make_env: EnvFactory) -> None:
        """Entries new to a DBI and live (the bulk of a first merge) are stored as DESIGN
        §2's header (their timestamp, the merge's txn id, version 0, no flags) followed by
        their value, byte for byte; a slice with a tombstone takes the entry-wise path
        and stores the same bytes for its live entries."""
        lenv = make_env()
        live: list[Entry] = [(b"k%05d" % i, T + i, 0, b"v%d" % i) for i in range(TXN_SLICE + 7)]
        tombstone: Entry = (b"z-deleted", T, DELETED, b"")
        result = merger(lenv).merge([remote(b"data", [*live, tombstone])])
        stored = dump_raw(lenv)[b"data"]
        txn_id = result.txn_ids[0]
        assert stored == {
            **{key: value(ts, txn_id, 0, app) for key, ts, _flags, app in live},
            b"z-deleted": value(T, txn_id, DELETED),
        }

    def test_written_with_current_txn_id(self, make_env: EnvFactory) -> None:
        """A written value carries the id of the txn that wrote it, not the remote's."""
        lenv = make_env()
        put_raw(lenv, b"data", {b"k": value(T, 1, 0, b"old")})
        put_raw(lenv, b"data", {b"other": value(T, 2, 0, b"x")})
        start = lenv.last_txn_id()
        result = merger(lenv).merge([remote(b"data", [(b"k", T + 1, 0, b"new")])])
        stored = dump_raw(lenv)[b"data"][b"k"]
        assert result.txn_ids == [start + 1]
        assert fields(stored)[1] == lenv.last_txn_id() == start + 1

    def test_equal_entry_writes_nothing(self, make_env: EnvFactory) -> None:
        """Equal ts and value write nothing and commit no data change."""
        lenv = make_env()
        put_raw(lenv, b"data", {b"k": value(T, 1, 0, b"v")})
        before = dump_raw(lenv)
        result = merger(lenv).merge([remote(b"data", [(b"k", T, 0, b"v")])])
        assert result.written == 0
        assert result.txn_ids == []
        assert dump_raw(lenv) == before

    def test_stale_tombstone_cutoff(self, make_env: EnvFactory) -> None:
        """With deleted_cutoff_ns, stale tombstones for missing keys are skipped, recent kept."""
        lenv = make_env()
        put_raw(lenv, b"data", {b"a-existing": value(T - 100, 1, 0, b"x")})
        entries: list[Entry] = [
            (b"a-existing", T - 50, DELETED, b""),
            (b"b-stale", T - 1, DELETED, b""),
            (b"c-recent", T + 1, DELETED, b""),
            (b"d-old-live", 1, 0, b"live"),
        ]
        merger(lenv, deleted_cutoff_ns=T).merge([remote(b"data", entries)])
        after = dump_raw(lenv)[b"data"]
        assert set(after) == {b"a-existing", b"c-recent", b"d-old-live"}
        assert fields(after[b"a-existing"])[2] == DELETED
        assert fields(after[b"c-recent"])[2] == DELETED


class TestMergerLocalOnly:
    """Keys and DBIs that exist only locally are never touched."""

    def test_local_only_keys_untouched(self, make_env: EnvFactory) -> None:
        """Keys absent from the object keep their exact bytes."""
        lenv = make_env()
        local = {b"a": value(T, 1, 0, b"A"), b"m": value(T, 1, DELETED), b"z": value(1, 1, 0, b"Z")}
        put_raw(lenv, b"data", local)
        put_raw(lenv, b"other", {b"o": value(T, 1, 0, b"O")})
        merger(lenv).merge([remote(b"data", [(b"b", T + 5, 0, b"B"), (b"y", T + 5, DELETED, b"")])])
        after = dump_raw(lenv)
        assert {k: after[b"data"][k] for k in local} == local
        assert after[b"other"] == {b"o": value(T, 1, 0, b"O")}
        assert set(after[b"data"]) == {b"a", b"b", b"m", b"y", b"z"}


class TestMergerCorruptLocal:
    """A corrupt local value aborts the batch and leaves the LMDB unchanged."""

    def test_corrupt_local_raises_lmdb_error(self, make_env: EnvFactory) -> None:
        """LmdbError names the DBI and the key; nothing of the batch is written."""
        lenv = make_env()
        put_raw(lenv, b"data", {b"a-good": value(T, 1, 0, b"x"), b"b-bad": b"not a header"})
        before = dump_raw(lenv)
        before_txn = lenv.last_txn_id()
        entries: list[Entry] = [
            (b"a-good", T + 1, 0, b"newer"),
            (b"b-bad", T + 1, 0, b"v"),
            (b"c-new", T, 0, b"v"),
        ]
        with pytest.raises(LmdbError) as info:
            merger(lenv).merge([remote(b"data", entries)])
        assert not isinstance(info.value, HeaderError)
        assert "data" in str(info.value)
        assert "b-bad" in str(info.value)
        assert dump_raw(lenv) == before
        assert lenv.last_txn_id() == before_txn

    def test_merger_usable_after_corrupt_error(self, make_env: EnvFactory) -> None:
        """After the failed merge, a later merge into the same DBI still works."""
        lenv = make_env()
        put_raw(lenv, b"data", {b"bad": b"short"})
        with pytest.raises(LmdbError):
            merger(lenv).merge(
                [remote(b"fresh", [(b"k", T, 0, b"v")]), remote(b"data", [(b"bad", T, 0, b"v")])]
            )
        result = merger(lenv).merge([remote(b"fresh", [(b"k2", T, 0, b"w")])])
        assert result.written == 1
        assert set(dump_raw(lenv)[b"fresh"]) == {b"k", b"k2"}


def snapshot_blob(dbis: list[tuple[DbiInfo, list[Entry]]]) -> bytes:
    """An evs.zst object holding ``dbis``."""
    header = SnapshotHeader(
        db="main",
        instance="peer",
        hostname="h",
        timestamp_ns=T,
        txn_id=9,
        dbis=tuple(info for info, _ in dbis),
    )
    out = io.BytesIO()
    write_snapshot(out, header, [entries for _, entries in dbis])
    return out.getvalue()


class TestMergerIdempotence:
    """Re-applying an object changes nothing."""

    def test_reapply_writes_nothing(self, make_env: EnvFactory) -> None:
        """The second merge of the same object reports written == 0 and leaves bytes as is."""
        lenv = make_env()
        put_raw(lenv, b"data", {b"b": value(T - 1, 1, 0, b"old"), b"x": value(T + 9, 1, 0, b"x")})
        blob = snapshot_blob(
            [
                remote(
                    b"data",
                    [
                        (b"a", T, 0, b"A"),
                        (b"b", T, 0, b"B"),
                        (b"c", T, DELETED, b""),
                        (b"x", T, 0, b"loses"),
                    ],
                ),
                remote(b"more", [(b"k", T, 0, b"v")]),
            ]
        )
        first = merger(lenv).merge(SnapshotReader(io.BytesIO(blob)).dbis())
        assert first.written == 4
        after_first = dump_raw(lenv)
        txn_after_first = lenv.last_txn_id()
        second = merger(lenv).merge(SnapshotReader(io.BytesIO(blob)).dbis())
        assert second.entries == 5
        assert second.written == 0
        assert second.txn_ids == []
        assert second.dbis_created == []
        assert dump_raw(lenv) == after_first
        assert lenv.last_txn_id() >= txn_after_first


class TestMergerDbis:
    """DBI handling: creation of missing DBIs, `_sync*` DBIs ignored."""

    def test_missing_dbi_created(self, make_env: EnvFactory) -> None:
        """A remote DBI missing locally is created and filled."""
        lenv = make_env()
        result = merger(lenv).merge(
            [remote(b"new-dbi", [(b"k1", T, 0, b"v1"), (b"k2", T, 0, b"")])]
        )
        assert result.dbis_created == [b"new-dbi"]
        assert result.written == 2
        assert set(dump_raw(lenv)[b"new-dbi"]) == {b"k1", b"k2"}

    def test_integerkey_dbi_created_with_flag(self, make_env: EnvFactory) -> None:
        """A remote INTEGERKEY DBI is created with MDB_INTEGERKEY and keeps integer order."""
        lenv = make_env()
        keys = [n.to_bytes(4, "little") for n in (1, 2, 256, 65536)]
        merger(lenv).merge([remote(b"ints", [(k, T, 0, b"v") for k in keys], flags=0x08)])
        handle = lenv.env.open_db(b"ints", create=False)
        with lenv.env.begin() as txn:
            assert handle.flags(txn)["integerkey"]
            assert [bytes(k) for k, _ in txn.cursor(db=handle)] == keys

    def test_sync_dbis_ignored(self, make_env: EnvFactory) -> None:
        """`_sync*` DBIs in an object are neither created nor written."""
        lenv = make_env()
        result = merger(lenv).merge(
            [
                remote(b"_sync_shadow_data", [(b"k", T, 0, b"v")]),
                remote(b"_sync", [(b"k", T, 0, b"v")]),
                remote(b"data", [(b"k", T, 0, b"v")]),
            ]
        )
        assert set(dump_raw(lenv)) == {b"data"}
        assert result.dbis_created == [b"data"]
        assert result.entries == 1

    def test_existing_sync_dbi_untouched(self, make_env: EnvFactory) -> None:
        """A local `_sync*` DBI keeps its content when the object carries one too."""
        lenv = make_env()
        put_raw(lenv, b"_sync_state", {b"k": b"local state"})
        merger(lenv).merge([remote(b"_sync_state", [(b"k", T, 0, b"remote")])])
        assert dump_raw(lenv)[b"_sync_state"] == {b"k": b"local state"}


class TestMergerRangeProbe:
    """Sorted slices of a bytewise DBI skip the per-key lookup when one range probe shows
    no stored key among them; every other slice looks each key up."""

    def test_keys_after_every_stored_key_are_appended(self, make_env: EnvFactory) -> None:
        """New keys sorting after all stored keys are written, and the stored keys keep
        their values."""
        lenv = make_env()
        put_raw(lenv, b"data", {b"a1": value(T, 1, 0, b"old-a1"), b"a2": value(T, 1, 0, b"a2")})
        entries: list[Entry] = [(b"b%04d" % i, T + 1, 0, b"new") for i in range(100)]
        result = merger(lenv).merge([remote(b"data", entries)])
        stored = dump_raw(lenv)[b"data"]
        assert result.written == 100
        assert stored[b"a1"] == value(T, 1, 0, b"old-a1")
        assert stored[b"a2"] == value(T, 1, 0, b"a2")
        assert [fields(stored[k])[3] for k, *_ in entries] == [b"new"] * 100

    def test_stored_keys_after_the_slice_stay(self, make_env: EnvFactory) -> None:
        """Stored keys sorting after the whole slice are neither lost nor overwritten."""
        lenv = make_env()
        put_raw(lenv, b"data", {b"z": value(T + 5, 1, 0, b"z")})
        entries: list[Entry] = [(b"m%02d" % i, T, 0, b"m") for i in range(10)]
        merger(lenv).merge([remote(b"data", entries)])
        stored = dump_raw(lenv)[b"data"]
        assert stored[b"z"] == value(T + 5, 1, 0, b"z")
        assert len(stored) == 11

    def test_a_newer_stored_key_inside_the_slice_wins(self, make_env: EnvFactory) -> None:
        """A stored key between the slice's first and last keys is looked up, so its
        newer value is kept against the older remote one."""
        lenv = make_env()
        put_raw(lenv, b"data", {b"k0050": value(T + 9, 1, 0, b"local")})
        entries: list[Entry] = [(b"k%04d" % i, T, 0, b"remote") for i in range(100)]
        result = merger(lenv).merge([remote(b"data", entries)])
        assert dump_raw(lenv)[b"data"][b"k0050"] == value(T + 9, 1, 0, b"local")
        assert result.written == 99

    def test_unsorted_entries_are_looked_up(self, make_env: EnvFactory) -> None:
        """Entries a caller hands over out of order are looked up key by key, as a probe
        from the first key would miss the stored ones: an older stored value is replaced
        and a newer one kept."""
        lenv = make_env()
        put_raw(
            lenv,
            b"data",
            {b"a": value(T - 1, 1, 0, b"older"), b"c": value(T + 9, 1, 0, b"newer")},
        )
        entries: list[Entry] = [
            (b"d", T, 0, b"remote"),
            (b"a", T, 0, b"remote"),
            (b"c", T, 0, b"remote"),
        ]
        merger(lenv).merge([remote(b"data", entries)])
        stored = dump_raw(lenv)[b"data"]
        assert fields(stored[b"a"])[::3] == (T, b"remote")
        assert stored[b"c"] == value(T + 9, 1, 0, b"newer")
        assert fields(stored[b"d"])[3] == b"remote"

    def test_reverse_key_dbi_is_looked_up(self, make_env: EnvFactory) -> None:
        """In a reverse-key DBI, LMDB's order is not the bytes' order, so no probe decides:
        a newer stored key among the remote ones keeps its value. (Probed bytewise, the
        first stored key at or after b"a2" would be b"c3", after the slice's last key.)"""
        lenv = make_env()
        lenv.env.open_db(b"rev", reverse_key=True)
        put_raw(lenv, b"rev", {b"b1": value(T + 9, 1, 0, b"local"), b"c3": value(T, 1, 0, b"c")})
        entries: list[Entry] = [(b"a2", T, 0, b"remote"), (b"b1", T, 0, b"remote")]
        merger(lenv).merge([remote(b"rev", entries, flags=0x02)])
        stored = dump_raw(lenv)[b"rev"]
        assert stored[b"b1"] == value(T + 9, 1, 0, b"local")
        assert fields(stored[b"a2"])[3] == b"remote"


class TestMergerRepeatedKeys:
    """A caller's own list may hold a key twice (the reader refuses that): each copy
    meets the result of the one before it, as if merged one by one."""

    def test_older_copy_after_newer_loses(self, make_env: EnvFactory) -> None:
        """New key, newer copy first: the older copy after it does not overwrite it."""
        lenv = make_env()
        entries: list[Entry] = [(b"k", T + 10, 0, b"new"), (b"k", T, 0, b"old")]
        merger(lenv).merge([remote(b"data", entries)])
        assert fields(dump_raw(lenv)[b"data"][b"k"])[::3] == (T + 10, b"new")

    def test_newer_copy_after_older_wins(self, make_env: EnvFactory) -> None:
        """A stored key, then two copies in rising time: the last one is stored."""
        lenv = make_env()
        put_raw(lenv, b"data", {b"k": value(T - 5, 1, 0, b"stored")})
        entries: list[Entry] = [(b"k", T, 0, b"mid"), (b"k", T + 1, 0, b"last")]
        merger(lenv).merge([remote(b"data", entries)])
        assert fields(dump_raw(lenv)[b"data"][b"k"])[::3] == (T + 1, b"last")


class TestMergerBatching:
    """Merges run in bounded write transactions."""

    def test_batched_by_entries(self, make_env: EnvFactory) -> None:
        """1000 entries with max_entries=100 take 10 txns, not 1 and not 1000."""
        lenv = make_env()
        entries: list[Entry] = [(b"k%04d" % i, T, 0, b"v") for i in range(1000)]
        result = merger(lenv, max_entries=100).merge([remote(b"data", entries)])
        assert result.txns == 10
        assert result.written == 1000
        assert len(result.txn_ids) == 10
        assert result.txn_ids == sorted(set(result.txn_ids))
        assert len(dump_raw(lenv)[b"data"]) == 1000

    def test_a_txn_out_of_time_ends_early_and_the_rest_follows(
        self, make_env: EnvFactory
    ) -> None:
        """The write lock is bounded by time inside the txn too: with no time at all, each
        txn covers one slice (TXN_SLICE entries, the clock is read after each), and the
        next txn carries on where it stopped, so every entry is written once."""
        lenv = make_env()
        n = 3 * TXN_SLICE - 5
        entries: list[Entry] = [(b"k%06d" % i, T, 0, b"v") for i in range(n)]
        result = merger(lenv, max_seconds=0.0).merge([remote(b"data", entries)])
        assert result.txns == 3
        assert result.entries == result.written == n
        assert sorted(dump_raw(lenv)[b"data"]) == [e[0] for e in entries]

    def test_a_set_stop_event_ends_the_merge_between_batches(self, make_env: EnvFactory) -> None:
        """Once the stop event is set, the next batch raises SyncInterruptedError before
        its txn begins; the batches committed before it stay."""
        lenv = make_env()
        stop = threading.Event()
        entries: list[Entry] = [(b"k%04d" % i, T, 0, b"v") for i in range(300)]

        def stop_after_first_batch() -> Iterator[Entry]:
            for i, entry in enumerate(entries):
                if i == 100:
                    stop.set()
                yield entry

        m = merger(lenv, max_entries=100, stop=stop)
        with pytest.raises(SyncInterruptedError, match="interrupted by shutdown"):
            m.merge([(DbiInfo(b"data"), stop_after_first_batch())])
        assert m.result.txns == 1
        assert sorted(dump_raw(lenv)[b"data"]) == [e[0] for e in entries[:100]]

    def test_batches_per_dbi(self, make_env: EnvFactory) -> None:
        """Each DBI's entries are batched separately (150 + 50 entries -> 2 + 1 txns)."""
        lenv = make_env()
        a: list[Entry] = [(b"a%03d" % i, T, 0, b"v") for i in range(150)]
        b: list[Entry] = [(b"b%03d" % i, T, 0, b"v") for i in range(50)]
        result = merger(lenv, max_entries=100).merge([remote(b"a", a), remote(b"b", b)])
        assert result.txns == 3
        assert result.written == 200

    def test_map_full_grows_map(self, make_env: EnvFactory) -> None:
        """A merge that overflows a 64 KiB map grows it and writes every entry."""
        lenv = make_env(map_size=65536)
        start_size = lenv.info()["map_size"]
        entries: list[Entry] = [(b"k%05d" % i, T, 0, bytes([i % 251]) * 300) for i in range(2000)]
        result = merger(lenv, max_entries=500).merge(
            [remote(b"data", entries), remote(b"second", entries[:300])]
        )
        assert result.written == 2300
        assert lenv.info()["map_size"] > start_size
        data = dump_raw(lenv)
        assert len(data[b"data"]) == 2000
        assert len(data[b"second"]) == 300
        for key, ts, flags, app in entries:
            assert fields(data[b"data"][key])[::2] == (ts, flags)
            assert fields(data[b"data"][key])[3] == app

    def test_map_full_in_first_batch_creating_dbi(self, make_env: EnvFactory) -> None:
        """MapFull in the batch that creates the DBI still ends with the DBI and all entries."""
        lenv = make_env(map_size=65536)
        entries: list[Entry] = [(b"k%05d" % i, T, 0, b"x" * 400) for i in range(1000)]
        result = merger(lenv).merge([remote(b"fresh", entries)])
        assert result.dbis_created == [b"fresh"]
        assert len(dump_raw(lenv)[b"fresh"]) == 1000


class TestMergerStoredRun:
    """A slice whose keys the DBI holds one after the other is compared column-wise with
    the stored values: a slice that says what is stored writes nothing, and any
    difference goes entry by entry through the merge rule (DESIGN §3)."""

    def populated(self, make_env: EnvFactory, stored: dict[bytes, bytes]) -> LmdbEnv:
        """An LMDB whose ``data`` DBI holds ``stored``."""
        lenv = make_env()
        put_raw(lenv, b"data", stored)
        return lenv

    def test_an_object_equal_to_the_stored_records_writes_nothing(
        self, make_env: EnvFactory
    ) -> None:
        """Values of varied lengths, equal timestamps and application values, stored
        with other txn ids than the sender's: no write, no txn id recorded."""
        entries: list[Entry] = [(b"k%05d" % i, T + i, 0, b"v" * (i % 7)) for i in range(1000)]
        lenv = self.populated(make_env, {k: value(ts, 5, 0, app) for k, ts, _f, app in entries})
        before = dump_raw(lenv)
        result = merger(lenv).merge([remote(b"data", entries)])
        assert (result.written, result.txn_ids, result.entries) == (0, [], 1000)
        assert dump_raw(lenv) == before

    def test_one_newer_remote_record_among_equal_ones_is_the_only_write(
        self, make_env: EnvFactory
    ) -> None:
        """One record of a full slice is newer remotely: exactly it is written, with the
        merge txn's id; its neighbours keep their stored bytes."""
        entries: list[Entry] = [(b"k%05d" % i, T, 0, b"same") for i in range(TXN_SLICE)]
        lenv = self.populated(make_env, {k: value(T, 5, 0, b"same") for k, *_ in entries})
        entries[100] = (entries[100][0], T + 1, 0, b"newer")
        result = merger(lenv).merge([remote(b"data", entries)])
        stored = dump_raw(lenv)[b"data"]
        assert result.written == 1
        assert fields(stored[b"k00100"]) == (T + 1, result.txn_ids[0], 0, b"newer")
        assert stored[b"k00101"] == value(T, 5, 0, b"same")

    def test_a_newer_stored_record_among_equal_ones_is_kept(self, make_env: EnvFactory) -> None:
        """One stored record is newer than the object's: it stays, nothing is written."""
        entries: list[Entry] = [(b"k%05d" % i, T, 0, b"same") for i in range(50)]
        stored = {k: value(T, 5, 0, b"same") for k, *_ in entries}
        stored[b"k00007"] = value(T + 9, 5, 0, b"local")
        lenv = self.populated(make_env, stored)
        result = merger(lenv).merge([remote(b"data", entries)])
        assert result.written == 0
        assert dump_raw(lenv)[b"data"][b"k00007"] == value(T + 9, 5, 0, b"local")

    def test_a_tie_against_a_larger_stored_value_is_written(self, make_env: EnvFactory) -> None:
        """Equal timestamps, the remote value smaller: the tie goes to the remote one."""
        entries: list[Entry] = [(b"a", T, 0, b"x"), (b"b", T, 0, b"abc")]
        lenv = self.populated(make_env, {b"a": value(T, 5, 0, b"x"), b"b": value(T, 5, 0, b"abd")})
        result = merger(lenv).merge([remote(b"data", entries)])
        assert result.written == 1
        assert fields(dump_raw(lenv)[b"data"][b"b"])[::3] == (T, b"abc")

    def test_a_remote_tombstone_of_a_stored_record_is_merged(self, make_env: EnvFactory) -> None:
        """A tombstone among equal records takes the entry-by-entry merge: a newer delete
        is written, with an empty value."""
        entries: list[Entry] = [(b"a", T, 0, b"x"), (b"b", T + 1, DELETED, b"")]
        lenv = self.populated(make_env, {b"a": value(T, 5, 0, b"x"), b"b": value(T, 5, 0, b"y")})
        result = merger(lenv).merge([remote(b"data", entries)])
        assert result.written == 1
        assert fields(dump_raw(lenv)[b"data"][b"b"]) == (T + 1, result.txn_ids[0], DELETED, b"")

    def test_a_stored_tombstone_against_an_equal_live_record_wins_the_tie(
        self, make_env: EnvFactory
    ) -> None:
        """Stored deleted, remote live with an empty value at the same time: the delete
        orders first, so it stays (the column compare must not take the tombstone's
        empty value for the live one's)."""
        entries: list[Entry] = [(b"a", T, 0, b"")]
        lenv = self.populated(make_env, {b"a": value(T, 5, DELETED)})
        result = merger(lenv).merge([remote(b"data", entries)])
        assert result.written == 0
        assert dump_raw(lenv)[b"data"][b"a"] == value(T, 5, DELETED)

    def test_stored_extension_blocks_are_compared_by_application_value(
        self, make_env: EnvFactory
    ) -> None:
        """A stored value with an extension block and the remote's value: equal, so
        nothing is written (the block is skipped, not taken for the value)."""
        entries: list[Entry] = [(b"a", T, 0, b"app")]
        lenv = self.populated(make_env, {b"a": value(T, 5, 0, b"app", blocks=1)})
        result = merger(lenv).merge([remote(b"data", entries)])
        assert result.written == 0

    def test_a_corrupt_stored_value_in_the_run_is_named(self, make_env: EnvFactory) -> None:
        """A stored value too short for a header still raises LmdbError naming the key."""
        entries: list[Entry] = [(b"a", T, 0, b"x"), (b"b", T, 0, b"y")]
        lenv = self.populated(make_env, {b"a": value(T, 5, 0, b"x"), b"b": b"short"})
        with pytest.raises(LmdbError, match="b'b'"):
            merger(lenv).merge([remote(b"data", entries)])

    def test_reverse_key_dbi_run_is_compared(self, make_env: EnvFactory) -> None:
        """Keys in a reverse-key DBI's own order are a stored run too: equal records write
        nothing, a newer remote one is written."""
        lenv = make_env()
        lenv.env.open_db(b"rev", reverse_key=True)
        keys = sorted((b"%03dx" % i for i in range(20)), key=lambda k: k[::-1])
        put_raw(lenv, b"rev", {k: value(T, 5, 0, b"v") for k in keys})
        entries: list[Entry] = [(k, T, 0, b"v") for k in keys]
        entries[3] = (keys[3], T + 1, 0, b"w")
        result = merger(lenv).merge([remote(b"rev", entries, flags=0x02)])
        assert result.written == 1
        assert fields(dump_raw(lenv)[b"rev"][keys[3]])[::3] == (T + 1, b"w")

    def test_big_stored_values_equal_to_the_remote_ones_write_nothing(
        self, make_env: EnvFactory
    ) -> None:
        """A slice whose stored values are too big to join for the column compare is
        merged entry by entry, with the same outcome: nothing written."""
        entries: list[Entry] = [(b"k%03d" % i, T, 0, b"%03d" % i * 20_000) for i in range(100)]
        lenv = self.populated(make_env, {k: value(ts, 5, 0, app) for k, ts, _f, app in entries})
        result = merger(lenv).merge([remote(b"data", entries)])
        assert (result.written, result.entries) == (0, 100)

    def test_a_difference_inside_a_window_is_merged_by_slices(self, make_env: EnvFactory) -> None:
        """A window of stored run with one newer remote record in it: the window's
        compare fails, its slices are merged one by one, and exactly that record is
        written; windows before and after it write nothing."""
        n = 3 * RUN_WINDOW
        entries: list[Entry] = [(b"k%05d" % i, T, 0, b"same") for i in range(n)]
        lenv = self.populated(make_env, {k: value(T, 5, 0, b"same") for k, *_ in entries})
        entries[RUN_WINDOW + 7] = (entries[RUN_WINDOW + 7][0], T + 1, 0, b"newer")
        result = merger(lenv).merge([remote(b"data", entries)])
        stored = dump_raw(lenv)[b"data"]
        assert (result.written, result.entries) == (1, n)
        assert fields(stored[b"k%05d" % (RUN_WINDOW + 7)])[::3] == (T + 1, b"newer")
