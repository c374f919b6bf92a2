"""Shadow mode (DESIGN §6) on real LMDB files: main -> shadow, merges through the shadow, dumps."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable

import lmdb
import pytest

from evsync.errors import CorruptObjectError, LmdbError, TransformError
from evsync.lmdb.dump import dump_shadow
from evsync.lmdb.dupsort import encode_key
from evsync.lmdb.env import LmdbEnv
from evsync.lmdb.header import FLAG_DELETED, parse_header
from evsync.lmdb.shadow import SEED_TIMESTAMP_NS, Shadow, drop_shadows, shadow_name
from evsync.snapshot import (
    DbiInfo,
    Entry,
    SnapshotHeader,
    SnapshotReader,
    verify_snapshot,
    write_snapshot,
)

EnvFactory = Callable[..., LmdbEnv]
T1 = 1_700_000_000_000_000_000
T2 = T1 + 5_000_000_000
T3 = T2 + 5_000_000_000


# ------------------------------------------------------------------ helpers


def app_put(lenv: LmdbEnv, dbi: bytes, items: dict[bytes, bytes], **flags: bool) -> None:
    """The application writes raw values (no header), as PowerDNS 4.7 does."""
    handle = lenv.env.open_db(dbi, create=True, **flags)
    with lenv.env.begin(write=True) as txn:
        for k, v in items.items():
            txn.put(k, v, db=handle)


def app_delete(lenv: LmdbEnv, dbi: bytes, *keys: bytes) -> None:
    """The application deletes keys (all their duplicates)."""
    handle = lenv.env.open_db(dbi)
    with lenv.env.begin(write=True) as txn:
        for k in keys:
            txn.delete(k, db=handle)


def main_pairs(lenv: LmdbEnv, dbi: bytes) -> list[tuple[bytes, bytes]]:
    """Every (key, value) pair of a main DBI, duplicates included, in LMDB order."""
    handle = lenv.env.open_db(dbi, create=False)
    with lenv.env.begin() as txn:
        return [(bytes(k), bytes(v)) for k, v in txn.cursor(db=handle).iternext()]


def shadow_entries(lenv: LmdbEnv, dbi: bytes) -> dict[bytes, tuple[int, bool, bytes]]:
    """Shadow key -> (timestamp, deleted, application value)."""
    handle = lenv.env.open_db(shadow_name(dbi), create=False)
    out = {}
    with lenv.env.begin() as txn:
        for k, v in txn.cursor(db=handle).iternext():
            h = parse_header(v)
            out[bytes(k)] = (h.timestamp, h.deleted, bytes(v[h.offset :]))
    return out


def obj(dbis: list[tuple[DbiInfo, list[Entry]]], ts: int = T3) -> io.BytesIO:
    """A complete remote object holding the given DBIs."""
    header = SnapshotHeader(
        db="main",
        instance="remote",
        hostname="h",
        timestamp_ns=ts,
        txn_id=1,
        dbis=tuple(DbiInfo(i.name, i.flags, i.transform, len(e)) for i, e in dbis),
    )
    buf = io.BytesIO()
    write_snapshot(buf, header, (e for _i, e in dbis))
    buf.seek(0)
    return buf


def merge(shadow: Shadow, data: io.BytesIO, now: int = T3) -> None:
    """Verify then merge an object through the shadow, as the syncer does."""
    verify_snapshot(data)
    data.seek(0)
    shadow.merge(SnapshotReader(data).dbis(), timestamp_ns=now)


@pytest.fixture
def lenv(make_env: EnvFactory) -> LmdbEnv:
    """A fresh LMDB for one test."""
    return make_env("main")


# ------------------------------------------------------------------ main -> shadow


class TestMainToShadow:
    """The sequence of Lightning Stream's shadow test, plus evsync's timestamp guard."""

    def test_first_pass_stamps_everything(self, lenv: LmdbEnv) -> None:
        """A first pass copies every main entry into the shadow with the pass's timestamp."""
        app_put(lenv, b"data", {b"a": b"1", b"b": b"2", b"c": b"3"})
        update = Shadow(lenv, dupsort_hack=False).update_from_main(T1)
        assert (update.changed, update.deleted) == (3, 0)
        assert shadow_entries(lenv, b"data") == {
            b"a": (T1, False, b"1"),
            b"b": (T1, False, b"2"),
            b"c": (T1, False, b"3"),
        }

    def test_add_delete_change_keep(self, lenv: LmdbEnv) -> None:
        """Unchanged keys keep their timestamp; added and changed get T2; a vanished key becomes a
        tombstone at T2."""
        app_put(lenv, b"data", {b"a": b"1", b"b": b"2", b"c": b"3"})
        shadow = Shadow(lenv, dupsort_hack=False)
        shadow.update_from_main(T1)
        app_put(lenv, b"data", {b"d": b"4", b"c": b"33"})
        app_delete(lenv, b"data", b"b")
        update = shadow.update_from_main(T2)
        assert (update.changed, update.deleted) == (2, 1)
        assert shadow_entries(lenv, b"data") == {
            b"a": (T1, False, b"1"),
            b"b": (T2, True, b""),
            b"c": (T2, False, b"33"),
            b"d": (T2, False, b"4"),
        }

    def test_no_change_keeps_timestamps(self, lenv: LmdbEnv) -> None:
        """A pass after a commit that changed no value keeps every timestamp, reports no change."""

        app_put(lenv, b"data", {b"a": b"1"})
        shadow = Shadow(lenv, dupsort_hack=False)
        shadow.update_from_main(T1)
        app_put(lenv, b"data", {b"a": b"1"})  # same value rewritten: a commit, no change
        update = shadow.update_from_main(T2)
        assert not update.skipped and update.changes == 0
        assert shadow_entries(lenv, b"data") == {b"a": (T1, False, b"1")}

    def test_pass_skipped_without_commits(self, lenv: LmdbEnv) -> None:
        """With nothing committed since the last pass, the walk is skipped."""
        app_put(lenv, b"data", {b"a": b"1"})
        shadow = Shadow(lenv, dupsort_hack=False)
        shadow.update_from_main(T1)
        assert shadow.update_from_main(T2).skipped

    def test_clock_step_back_still_wins(self, lenv: LmdbEnv) -> None:
        """A change found with a clock behind the old timestamp gets old + 1 ns, so it still
        replaces the old value."""
        app_put(lenv, b"data", {b"a": b"1"})
        shadow = Shadow(lenv, dupsort_hack=False)
        shadow.update_from_main(T2)
        app_put(lenv, b"data", {b"a": b"2"})
        shadow.update_from_main(T1)
        assert shadow_entries(lenv, b"data")[b"a"] == (T2 + 1, False, b"2")

    def test_seed_stamps_at_one_nanosecond(self, lenv: LmdbEnv) -> None:
        """The startup seed stamps new, changed and vanished keys at 1 ns, so any remote write beats
        them."""
        app_put(lenv, b"data", {b"a": b"1", b"b": b"2"})
        Shadow(lenv, dupsort_hack=False).update_from_main(T1)
        app_put(lenv, b"data", {b"a": b"changed", b"c": b"new"})
        app_delete(lenv, b"data", b"b")
        Shadow(lenv, dupsort_hack=False).update_from_main(T2, seed=True)
        assert shadow_entries(lenv, b"data") == {
            b"a": (SEED_TIMESTAMP_NS, False, b"changed"),
            b"b": (SEED_TIMESTAMP_NS, True, b""),
            b"c": (SEED_TIMESTAMP_NS, False, b"new"),
        }

    def test_integerkey_carried_to_shadow(self, lenv: LmdbEnv) -> None:
        """An INTEGERKEY DBI gets an INTEGERKEY shadow, walked in integer order."""
        keys = [struct.pack("=I", n) for n in (1, 255, 256, 70000)]
        app_put(lenv, b"domains", {k: b"v" + k for k in keys}, integerkey=True)
        shadow = Shadow(lenv, dupsort_hack=False)
        shadow.update_from_main(T1)
        app_put(lenv, b"domains", {keys[2]: b"changed"}, integerkey=True)
        update = shadow.update_from_main(T2)
        assert update.changed == 1 and update.deleted == 0
        handle = lenv.env.open_db(shadow_name(b"domains"), create=False)
        with lenv.env.begin() as txn:
            assert handle.flags(txn)["integerkey"]
        assert shadow_entries(lenv, b"domains")[keys[2]] == (T2, False, b"changed")

    @pytest.mark.parametrize("bad", [b"short", b"\x00" * 16 + b"\x07" + b"\x00" * 7, b""])
    def test_corrupt_shadow_value_is_named(self, lenv: LmdbEnv, bad: bytes) -> None:
        """A shadow value without a valid header stops the pass with the DBI, the key and the
        way out (drop-shadow) named; main and shadow stay as they were."""
        app_put(lenv, b"data", {b"a": b"1"})
        shadow = Shadow(lenv, dupsort_hack=False)
        shadow.update_from_main(T1)
        app_put(lenv, shadow_name(b"data"), {b"a": bad})
        app_put(lenv, b"data", {b"a": b"2"})
        with pytest.raises(LmdbError, match=r"shadow of DBI 'data' key b'a'.*drop-shadow"):
            shadow.update_from_main(T2)
        assert main_pairs(lenv, b"data") == [(b"a", b"2")]

    def test_dupsort_needs_the_hack(self, lenv: LmdbEnv) -> None:
        """A DUPSORT DBI without dupsort_hack is a clear error naming the DBI and the setting."""
        app_put(lenv, b"idx", {b"k": b"1"}, dupsort=True)
        with pytest.raises(LmdbError, match="DBI 'idx' is DUPSORT; set dupsort_hack: true"):
            Shadow(lenv, dupsort_hack=False).update_from_main(T1)

    def test_dupsort_pairs_encoded(self, lenv: LmdbEnv) -> None:
        """Each DUPSORT pair becomes one shadow entry under its dupsort_hack_v1 key."""
        app_put(lenv, b"idx", {b"k": b"1"}, dupsort=True)
        app_put(lenv, b"idx", {b"k": b"2"}, dupsort=True)
        Shadow(lenv, dupsort_hack=True).update_from_main(T1)
        assert shadow_entries(lenv, b"idx") == {
            encode_key(b"k", b"1"): (T1, False, b"1"),
            encode_key(b"k", b"2"): (T1, False, b"2"),
        }

    def test_bad_dupsort_key_leaves_shadow_unchanged(self, lenv: LmdbEnv) -> None:
        """A pair the transform refuses aborts the pass with the DBI and key named; the shadow is
        untouched."""
        app_put(lenv, b"idx", {b"ok": b"1"}, dupsort=True)
        shadow = Shadow(lenv, dupsort_hack=True)
        shadow.update_from_main(T1)
        before = shadow_entries(lenv, b"idx")
        app_put(lenv, b"idx", {b"k" * 300: b"1", b"ok": b"2"}, dupsort=True)
        with pytest.raises(TransformError, match="DBI 'idx'"):
            shadow.update_from_main(T2)
        assert shadow_entries(lenv, b"idx") == before


# ------------------------------------------------------------------ merges


class TestShadowMerge:
    """Remote entries go into the shadow by the usual rule; main follows the shadow."""

    def test_remote_newer_value_reaches_main(self, lenv: LmdbEnv) -> None:
        """A newer remote value replaces the shadow entry and the main value."""
        app_put(lenv, b"data", {b"a": b"1", b"b": b"2"})
        shadow = Shadow(lenv, dupsort_hack=False)
        shadow.update_from_main(T1)
        merge(shadow, obj([(DbiInfo(b"data"), [(b"a", T2, 0, b"remote")])]))
        assert main_pairs(lenv, b"data") == [(b"a", b"remote"), (b"b", b"2")]
        assert shadow_entries(lenv, b"data")[b"a"] == (T2, False, b"remote")

    def test_remote_tombstone_deletes_from_main(self, lenv: LmdbEnv) -> None:
        """If a remote tombstone is newer, the key disappears from main and the shadow keeps the
        tombstone."""
        app_put(lenv, b"data", {b"a": b"1", b"b": b"2"})
        shadow = Shadow(lenv, dupsort_hack=False)
        shadow.update_from_main(T1)
        merge(shadow, obj([(DbiInfo(b"data"), [(b"a", T2, FLAG_DELETED, b"")])]))
        assert main_pairs(lenv, b"data") == [(b"b", b"2")]
        assert shadow_entries(lenv, b"data")[b"a"] == (T2, True, b"")

    def test_older_remote_loses(self, lenv: LmdbEnv) -> None:
        """An older remote value changes neither shadow nor main."""
        app_put(lenv, b"data", {b"a": b"1"})
        shadow = Shadow(lenv, dupsort_hack=False)
        shadow.update_from_main(T2)
        merge(shadow, obj([(DbiInfo(b"data"), [(b"a", T1, 0, b"old")])]))
        assert main_pairs(lenv, b"data") == [(b"a", b"1")]

    def test_local_change_is_stamped_before_the_merge(self, lenv: LmdbEnv) -> None:
        """A local change not yet in the shadow is stamped first, so an older remote write cannot
        undo it."""
        app_put(lenv, b"data", {b"a": b"1"})
        shadow = Shadow(lenv, dupsort_hack=False)
        shadow.update_from_main(T1)
        app_put(lenv, b"data", {b"a": b"local"})
        merge(shadow, obj([(DbiInfo(b"data"), [(b"a", T2, 0, b"remote")])]), now=T3)
        assert main_pairs(lenv, b"data") == [(b"a", b"local")]
        assert shadow_entries(lenv, b"data")[b"a"] == (T3, False, b"local")
        assert shadow.dirty

    def test_merge_without_local_change_counts_as_synced(self, lenv: LmdbEnv) -> None:
        """A merge txn that carried no local change is reported, so it is not uploaded again."""
        app_put(lenv, b"data", {b"a": b"1"})
        shadow = Shadow(lenv, dupsort_hack=False)
        shadow.update_from_main(T1)
        shadow.dirty = False
        data = obj([(DbiInfo(b"data"), [(b"z", T2, 0, b"new")])])
        verify_snapshot(data)
        data.seek(0)
        result, update = shadow.merge(SnapshotReader(data).dbis(), timestamp_ns=T3)
        assert update.skipped and result.written == 1
        assert result.txn_ids == [shadow.synced_txn] and not shadow.dirty

    def test_remote_only_dbis_are_created(self, lenv: LmdbEnv) -> None:
        """A DBI only the remote has is created with its flags, DUPSORT included, and its shadow
        with INTEGERKEY only."""
        app_put(lenv, b"data", {b"a": b"1"})
        shadow = Shadow(lenv, dupsort_hack=True)
        shadow.update_from_main(T1)
        one = struct.pack("=I", 7)
        merge(
            shadow,
            obj(
                [
                    (DbiInfo(b"domains", 0x08), [(one, T2, 0, b"example")]),
                    (
                        DbiInfo(b"domains_0", 0x14, "dupsort_hack_v1"),
                        [(encode_key(b"example", one), T2, 0, one)],
                    ),
                ]
            ),
        )
        assert main_pairs(lenv, b"domains") == [(one, b"example")]
        assert main_pairs(lenv, b"domains_0") == [(b"example", one)]
        with lenv.env.begin() as txn:
            idx = lenv.env.open_db(b"domains_0", txn=txn, create=False)
            assert idx.flags(txn)["dupsort"] and idx.flags(txn)["dupfixed"]
            sh = lenv.env.open_db(shadow_name(b"domains"), txn=txn, create=False)
            assert sh.flags(txn)["integerkey"]

    def test_dupsort_merge_changes_only_the_pairs(self, lenv: LmdbEnv) -> None:
        """Remote pairs are added and removed one by one; main equals the shadow's live pairs."""
        app_put(lenv, b"idx", {b"k": b"1"}, dupsort=True)
        app_put(lenv, b"idx", {b"k": b"2"}, dupsort=True)
        app_put(lenv, b"idx", {b"m": b"1"}, dupsort=True)
        shadow = Shadow(lenv, dupsort_hack=True)
        shadow.update_from_main(T1)
        info = DbiInfo(b"idx", 0x04, "dupsort_hack_v1")
        merge(
            shadow,
            obj(
                [
                    (
                        info,
                        [
                            (encode_key(b"k", b"2"), T2, FLAG_DELETED, b""),
                            (encode_key(b"k", b"3"), T2, 0, b"3"),
                        ],
                    )
                ]
            ),
        )
        assert main_pairs(lenv, b"idx") == [(b"k", b"1"), (b"k", b"3"), (b"m", b"1")]
        live = sorted((k, v) for k, (_ts, d, v) in shadow_entries(lenv, b"idx").items() if not d)
        assert live == sorted((encode_key(k, v), v) for k, v in main_pairs(lenv, b"idx"))

    def test_dupsort_long_value_replaced(self, lenv: LmdbEnv) -> None:
        """A long value changed past the truncated prefix replaces the old pair, not adds a second
        one."""
        # DUPSORT values are capped at 511 bytes too; a 255-byte key leaves 251 for the prefix
        key = b"k" * 255
        long_a, long_b = b"v" * 300 + b"a", b"v" * 300 + b"b"
        app_put(lenv, b"idx", {key: long_a}, dupsort=True)
        shadow = Shadow(lenv, dupsort_hack=True)
        shadow.update_from_main(T1)
        info = DbiInfo(b"idx", 0x04, "dupsort_hack_v1")
        assert encode_key(key, long_a) == encode_key(key, long_b)
        merge(shadow, obj([(info, [(encode_key(key, long_b), T2, 0, long_b)])]))
        assert main_pairs(lenv, b"idx") == [(key, long_b)]

    def test_transformed_dbi_refused_without_the_hack(self, lenv: LmdbEnv) -> None:
        """A dupsort_hack_v1 DBI is skipped (not created) on an instance without dupsort_hack."""
        shadow = Shadow(lenv, dupsort_hack=False)
        info = DbiInfo(b"idx", 0x04, "dupsort_hack_v1")
        merge(shadow, obj([(info, [(encode_key(b"k", b"1"), T2, 0, b"1")])]))
        with lenv.env.begin() as txn, pytest.raises(lmdb.NotFoundError):
            lenv.env.open_db(b"idx", txn=txn, create=False)

    def test_value_not_fitting_dupfixed_leaves_lmdb_unchanged(self, lenv: LmdbEnv) -> None:
        """A remote value of the wrong size for a DUPFIXED DBI rejects the object; nothing is
        half-merged."""
        one = struct.pack("=I", 1)
        app_put(lenv, b"idx", {b"k": one}, dupsort=True, dupfixed=True)
        app_put(lenv, b"data", {b"a": b"1"})
        shadow = Shadow(lenv, dupsort_hack=True)
        shadow.update_from_main(T1)
        before = (main_pairs(lenv, b"data"), main_pairs(lenv, b"idx"))
        bad = obj(
            [
                (DbiInfo(b"data"), [(b"a", T2, 0, b"new")]),
                (
                    DbiInfo(b"idx", 0x14, "dupsort_hack_v1"),
                    [(encode_key(b"k", b"xy"), T2, 0, b"xy")],
                ),
            ]
        )
        with pytest.raises(CorruptObjectError, match="does not fit the local DBI"):
            merge(shadow, bad)
        assert (main_pairs(lenv, b"data"), main_pairs(lenv, b"idx")) == before


# ------------------------------------------------------------------ dumps and drop


class TestShadowDump:
    """Objects written from the shadow, and dropping it."""

    def test_dump_describes_the_data_dbis(self, lenv: LmdbEnv) -> None:
        """A dump lists each data DBI under its own name, flags and transform, with the shadow's
        entries."""
        one = struct.pack("=I", 1)
        app_put(lenv, b"domains", {one: b"d"}, integerkey=True)
        app_put(lenv, b"domains_0", {b"example": one}, dupsort=True, dupfixed=True)
        shadow = Shadow(lenv, dupsort_hack=True)
        shadow.update_from_main(T1)
        app_delete(lenv, b"domains", one)
        shadow.update_from_main(T2)
        buf = io.BytesIO()
        dumped = dump_shadow(
            lenv, buf, db="main", instance="a", timestamp_ns=T3, txn_id=shadow.synced_txn
        )
        buf.seek(0)
        reader = SnapshotReader(buf)
        got = {info.name: (info.flags, info.transform, list(e)) for info, e in reader.dbis()}
        assert got == {
            b"domains": (0x08, "", [(one, T2, FLAG_DELETED, b"")]),
            b"domains_0": (0x14, "dupsort_hack_v1", [(encode_key(b"example", one), T1, 0, one)]),
        }
        assert dumped.header.txn_id == shadow.synced_txn

    def test_round_trip_between_two_lmdbs(self, make_env: EnvFactory) -> None:
        """A shadow dump merged into an empty LMDB reproduces the main DBIs exactly."""
        a, b = make_env("a"), make_env("b")
        app_put(a, b"records", {b"r1": b"x", b"r2": b"y"})
        app_put(a, b"idx", {b"n": b"\x01\0\0\0", b"m": b"\x02\0\0\0"}, dupsort=True, dupfixed=True)
        app_put(a, b"idx", {b"n": b"\x03\0\0\0"}, dupsort=True, dupfixed=True)
        sa = Shadow(a, dupsort_hack=True)
        sa.update_from_main(T1)
        buf = io.BytesIO()
        dump_shadow(a, buf, db="main", instance="a", timestamp_ns=T2, txn_id=sa.synced_txn)
        buf.seek(0)
        merge(Shadow(b, dupsort_hack=True), buf)
        for dbi in (b"records", b"idx"):
            assert main_pairs(b, dbi) == main_pairs(a, dbi)

    def test_drop_shadows(self, lenv: LmdbEnv) -> None:
        """drop_shadows removes every shadow DBI and leaves the data DBIs alone."""
        app_put(lenv, b"data", {b"a": b"1"})
        Shadow(lenv, dupsort_hack=False).update_from_main(T1)
        assert drop_shadows(lenv) == [shadow_name(b"data")]
        with lenv.env.begin() as txn:
            names = [bytes(k) for k in txn.cursor().iternext(values=False)]
        assert names == [b"data"]
        assert drop_shadows(lenv) == []
