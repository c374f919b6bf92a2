"""The Lightning Stream ``.pb.gz`` format (issue 17): LS's own snapshots read exactly, the
writer byte-identical to LS, LS's merges reproduced, every crafted probe decided.

The vectors under ``tests/fixtures/lightningstream/`` were written (or, for probes, fed
to) a real LS binary; see their README.md. ``build_inputs`` recreates the input LMDBs as
their ``gen_lmdb.py`` does.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evsync.config import LmdbConfig, LmdbOptions
from evsync.errors import CorruptObjectError, EntryTooLargeError, ObjectTooLargeError
from evsync.lmdb.dump import dump_native
from evsync.lmdb.env import LmdbEnv
from evsync.lmdb.merge import Merger, merge_entry
from evsync.snapshot import FORMATS, LS_PB_GZ, DbiInfo, Entry, SnapshotHeader, format_for
from evsync.snapshot.evs import CHUNK_MAX_BYTES, MAX_ENTRY_BYTES
from evsync.snapshot.lightningstream import (
    LsSnapshotReader,
    read_header,
    verify_snapshot,
    write_snapshot,
)
from evsync.snapshot.name import SnapshotName
from evsync.sync.receiver import _check_header

FIXTURES = Path(__file__).parent.parent / "fixtures" / "lightningstream"
NATIVE = FIXTURES / "native"
SHADOW = FIXTURES / "shadow"
PROBES = FIXTURES / "probes"
T = 1700000000000000000
A1 = "main__inst-a__20261201-182857-758476663__GX.pb.gz"
B1 = "main__inst-b__20261201-182906-068008165__GX.pb.gz"
A2 = "main__inst-a__20261201-182912-658829685__GX.pb.gz"
LS_OBJECTS = sorted([*NATIVE.glob("bucket/*.pb.gz"), *SHADOW.glob("bucket/*.pb.gz")])
PROBE_NAME = "main__evsync-x__20231114-221320-000000000__GX.pb.gz"


# ------------------------------------------------------------------ helpers


def read_all(data: bytes, **kw: Any) -> tuple[SnapshotHeader, list[tuple[DbiInfo, list[Entry]]]]:
    """The whole object: its final header and each DBI's entries."""
    reader = LsSnapshotReader(io.BytesIO(data), **kw)
    dbis = [(info, list(entries)) for info, entries in reader.dbis()]
    return reader.header, dbis


def probe(name: str) -> bytes:
    """The crafted snapshot of one probe (the evsync-x one, for L_merge_existing)."""
    return next((PROBES / name).glob("main__evsync-x__*.pb.gz")).read_bytes()


def gz(payload: bytes) -> bytes:
    """One gzip member around ``payload``."""
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)
    return comp.compress(payload) + comp.flush()


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(number: int, wire_type: int, body: bytes | int) -> bytes:
    """One protobuf field: an int body is a varint, bytes are length-delimited or fixed."""
    tag = varint(number << 3 | wire_type)
    if isinstance(body, int):
        return tag + varint(body)
    if wire_type == 2:
        return tag + varint(len(body)) + body
    return tag + body


META = field(
    2,
    2,
    field(1, 2, b"GX")
    + field(2, 2, b"evsync-x")
    + field(3, 2, b"h")
    + field(7, 2, b"main")
    + field(4, 0, 1)
    + field(5, 1, struct.pack("<Q", T)),
)
KV1 = field(2, 2, field(1, 2, b"k1") + field(2, 2, b"v1") + field(3, 1, struct.pack("<Q", T)))


def snapshot(*dbis: bytes, head: bytes = field(1, 0, 3) + field(4, 0, 1) + META) -> bytes:
    """A crafted object: top-level fields, then DBI messages given by their bodies."""
    return gz(head + b"".join(field(3, 2, d) for d in dbis))


def show(data: bytes) -> str:
    """A key or value as the vectors' JSON writes it."""
    try:
        text = data.decode()
        if text.isprintable():
            return text
    except UnicodeDecodeError:
        pass
    return "hex:" + data.hex()


def hdr(ts: int, txn: int, flags: int = 0, ext: bytes = b"", reserved: bytes = b"\0" * 4) -> bytes:
    """The LS header, as gen_lmdb.py writes it."""
    return struct.pack(">QQBB4sH", ts, txn, 0, flags, reserved, len(ext) // 8) + ext


def fresh(path: Path) -> Any:
    path.mkdir(parents=True)
    return lmdb.open(str(path), max_dbs=16, map_size=64 << 20)


def build_inputs(base: Path) -> None:
    """The native input LMDBs of the vectors, as their gen_lmdb.py makes them."""
    env = fresh(base / "a.lmdb")
    data, second = env.open_db(b"data"), env.open_db(b"second")
    env.open_db(b"empty")
    with env.begin(write=True) as txn:
        tid = txn.id()
        txn.put(b"alpha", hdr(T + 1, tid) + b"value-a", db=data)
        txn.put(b"bravo", hdr(T + 2, tid, flags=0x01), db=data)
        txn.put(b"charlie", hdr(T + 3, tid, ext=b"\xaa" * 8) + b"value-c", db=data)
        txn.put(b"delta", hdr(T + 4, tid, flags=0x02) + b"value-d", db=data)
        txn.put(b"echo", hdr(T + 5, tid), db=data)
        txn.put(b"foxtrot", hdr(0, 0) + b"zero-ts", db=data)
        txn.put(b"hotel", hdr(T + 6, tid, reserved=b"\x01\x02\x03\x04") + b"reserved-set", db=data)
        txn.put(b"k1", hdr(T + 7, tid) + b"v1", db=second)
    env.close()
    env = fresh(base / "b.lmdb")
    data = env.open_db(b"data")
    with env.begin(write=True) as txn:
        tid = txn.id()
        txn.put(b"alpha", hdr(T + 10, tid) + b"value-a-from-b", db=data)
        txn.put(b"bravo", hdr(T + 1, tid) + b"bravo-b", db=data)
        txn.put(b"charlie", hdr(T + 3, tid) + b"value-b", db=data)
        txn.put(b"golf", hdr(T + 8, tid, ext=b"\xbb" * 16) + b"only-in-b", db=data)
    env.close()


def open_env(path: Path) -> LmdbEnv:
    return LmdbEnv(
        LmdbConfig(
            name="main",
            path=str(path),
            schema_tracks_changes=True,
            options=LmdbOptions(create=False, map_size=64 << 20),
        )
    )


def merge_one_txn(path: Path, obj: bytes) -> None:
    """Merge an object as LS does: one write txn, every DBI created (even an empty one),
    each entry decided by evsync's ``merge_entry``."""
    env = lmdb.open(str(path), max_dbs=16, map_size=64 << 20)
    try:
        with env.begin(write=True) as txn:
            txn_id = txn.id()
            reader = LS_PB_GZ.reader(io.BytesIO(obj))
            for info, entries in reader.dbis():
                db = env.open_db(info.name, txn=txn, create=True)
                for entry in entries:
                    new = merge_entry(txn.get(entry[0], db=db), entry, txn_id)
                    if new is not None:
                        txn.put(entry[0], new, db=db)
    finally:
        env.close()


def dump_text(path: Path) -> str:
    """An LMDB as the vectors' ``*.final-dump.txt`` show it."""
    env = lmdb.open(str(path), max_dbs=16, readonly=True, lock=False)
    lines = [f"env info: {{'last_txnid': {env.info()['last_txnid']}}}"]
    with env.begin() as txn:
        names = [k for k, _v in txn.cursor()]
    for name in names:
        db = env.open_db(name, create=False)
        with env.begin() as txn:
            flags = {k: v for k, v in db.flags(txn).items() if v}  # type: ignore[call-arg]
            lines.append(f"DBI {name.decode()!r} flags={flags}")
            for key, value in txn.cursor(db=db):
                ts, tid, ver, fl, res, n = struct.unpack_from(">QQBB4sH", value)
                ext = value[24 : 24 + 8 * n]
                app = value[24 + 8 * n :]
                lines.append(
                    f"   {key!r}: ts={ts} txn={tid} ver={ver} flags={fl:#x} "
                    f"reserved={res.hex()} numExtra={n} ext={ext.hex()} app={app!r}"
                )
    env.close()
    return "\n".join(lines) + "\n"


def decode_independently(payload: bytes) -> dict[str, Any]:
    """A minimal protobuf walk, sharing no code with the module: the top-level versions,
    and for each DBI its field numbers and its KV sizes."""

    def walk(buf: bytes) -> Iterator[tuple[int, int, Any]]:
        pos = 0
        while pos < len(buf):
            tag = 0
            shift = 0
            while True:
                b = buf[pos]
                pos += 1
                tag |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            number, wt = tag >> 3, tag & 7
            if wt == 0:
                val = shift = 0
                while True:
                    b = buf[pos]
                    pos += 1
                    val |= (b & 0x7F) << shift
                    shift += 7
                    if not b & 0x80:
                        break
                yield number, wt, val
            elif wt == 1:
                yield number, wt, buf[pos : pos + 8]
                pos += 8
            elif wt == 2:
                n = shift = 0
                while True:
                    b = buf[pos]
                    pos += 1
                    n |= (b & 0x7F) << shift
                    shift += 7
                    if not b & 0x80:
                        break
                yield number, wt, buf[pos : pos + n]
                pos += n
            else:
                raise AssertionError(f"wire type {wt}")
            assert pos <= len(buf)

    out: dict[str, Any] = {"top": [], "dbis": []}
    for number, _wt, val in walk(payload):
        out["top"].append(number)
        if number in (1, 4):
            out[str(number)] = val
        if number == 3:
            fields = []
            kvs = []
            for n2, _w2, v2 in walk(val):
                fields.append(n2)
                if n2 == 2:
                    kvs.append((len(v2), [n3 for n3, _w3, _v3 in walk(v2)]))
            out["dbis"].append((fields, kvs))
    return out


# ------------------------------------------------------------------ LS's own objects


class TestReadVectors:
    @pytest.mark.parametrize("path", LS_OBJECTS, ids=lambda p: p.name)
    def test_decodes_as_the_json_says(self, path: Path) -> None:
        """Every snapshot LS wrote decodes to exactly its JSON decoding: versions, Meta,
        every DBI's name, flags and transform, every KV's key, value, timestamp and flags."""
        want = json.loads(
            path.parent.parent.joinpath("decoded", path.name[:-3] + ".json").read_text()
        )
        header, dbis = read_all(path.read_bytes())
        reader = LsSnapshotReader(io.BytesIO(path.read_bytes()))
        assert (reader.format_version, reader.compat_version) == (3, 1)
        assert header.version == want["formatVersion"] == 3
        meta = want["meta"]
        assert (header.db, header.instance, header.hostname) == (
            meta["databaseName"],
            meta["instanceID"],
            meta["hostname"],
        )
        assert (header.timestamp_ns, header.txn_id) == (meta["timestampNano"], meta["lmdbTxnID"])
        assert len(dbis) == len(want["databases"])
        for (info, entries), wdbi in zip(dbis, want["databases"], strict=True):
            assert info.name.decode() == wdbi["name"]
            assert info.flags == wdbi.get("flags", 0)
            assert info.transform == wdbi.get("transform", "")
            got = [(show(k), ts, fl, show(v) if v else None) for k, ts, fl, v in entries]
            exp = [
                (e["key"], e.get("timestampNano", 0), e.get("flags", 0), e.get("value"))
                for e in wdbi["entries"]
            ]
            assert got == exp
        assert [(d.name.decode(), d.entries) for d in header.dbis] == [
            (d["name"], len(d["entries"])) for d in want["databases"]
        ]

    @pytest.mark.parametrize("path", LS_OBJECTS, ids=lambda p: p.name)
    def test_header_matches_the_name(self, path: Path) -> None:
        """The header of an LS object says what its name says (the receiver's check)."""
        header = LS_PB_GZ.verify(io.BytesIO(path.read_bytes()))
        _check_header(header, SnapshotName.parse(path.name))
        assert read_header(io.BytesIO(path.read_bytes())).instance == header.instance

    def test_registered_for_pb_gz(self) -> None:
        """``format_for`` picks this format for ``.pb.gz`` names."""
        assert FORMATS["pb.gz"] is LS_PB_GZ
        assert format_for(A1) is LS_PB_GZ
        assert format_for(SnapshotName.parse(A1)) is LS_PB_GZ


class TestWriteVectors:
    @pytest.mark.parametrize("path", LS_OBJECTS, ids=lambda p: p.name)
    def test_reencoding_is_byte_identical(self, path: Path) -> None:
        """What the reader gives, written again, is LS's payload byte for byte."""
        header, dbis = read_all(path.read_bytes())
        out = io.BytesIO()
        stats = write_snapshot(out, header, [e for _i, e in dbis])
        payload = zlib.decompress(out.getvalue(), 31)
        assert payload == path.parent.parent.joinpath("decoded", path.name[:-3]).read_bytes()
        assert stats.entries == sum(len(e) for _i, e in dbis)

    def test_dump_of_the_inputs_is_byte_identical(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``dump_native`` of the recreated input LMDBs, with LS's Meta values, writes LS's
        payloads: a1 and b1 from the inputs, a2 after A merged b1."""
        monkeypatch.setattr("evsync.lmdb.dump.socket.gethostname", lambda: "vm")
        build_inputs(tmp_path)

        def dump(lmdb_dir: str, name: str) -> bytes:
            parsed = SnapshotName.parse(name)
            env = open_env(tmp_path / lmdb_dir)
            out = io.BytesIO()
            try:
                dump_native(
                    env,
                    out,
                    db=parsed.db,
                    instance=parsed.instance,
                    timestamp_ns=parsed.timestamp_ns,
                    fmt=LS_PB_GZ,
                )
            finally:
                env.close()
            assert out.getvalue()[:4] == b"\x1f\x8b\x08\x00"
            return zlib.decompress(out.getvalue(), 31)

        assert dump("a.lmdb", A1) == (NATIVE / "decoded" / A1[:-3]).read_bytes()
        assert dump("b.lmdb", B1) == (NATIVE / "decoded" / B1[:-3]).read_bytes()
        merge_one_txn(tmp_path / "a.lmdb", (NATIVE / "bucket" / B1).read_bytes())
        assert dump("a.lmdb", A2) == (NATIVE / "decoded" / A2[:-3]).read_bytes()

    def test_one_gzip_member(self) -> None:
        """The writer emits one gzip member, which LS and zlib read."""
        header, dbis = read_all((NATIVE / "bucket" / A1).read_bytes())
        out = io.BytesIO()
        write_snapshot(out, header, [e for _i, e in dbis])
        d = zlib.decompressobj(31)
        d.decompress(out.getvalue())
        assert d.eof and not d.unused_data


class TestMergeVectors:
    def test_b_merges_a1_as_ls(self, tmp_path: Path) -> None:
        """B merging A's first snapshot in one txn leaves exactly LS's final b.lmdb:
        replaced and added entries carry the merging txn (3), reserved bytes 0, no
        extension blocks, flags masked; kept ones keep their old header; DBIs created."""
        build_inputs(tmp_path)
        merge_one_txn(tmp_path / "b.lmdb", (NATIVE / "bucket" / A1).read_bytes())
        assert dump_text(tmp_path / "b.lmdb") == (NATIVE / "b.lmdb.final-dump.txt").read_text()

    def test_a_merges_b1_then_its_own_as_ls(self, tmp_path: Path) -> None:
        """A merging b1, then its own old snapshot (which changes nothing), leaves exactly
        LS's final a.lmdb (charlie lost its extension block on the tie rule)."""
        build_inputs(tmp_path)
        merge_one_txn(tmp_path / "a.lmdb", (NATIVE / "bucket" / B1).read_bytes())
        merge_one_txn(tmp_path / "a.lmdb", (NATIVE / "bucket" / A1).read_bytes())
        assert dump_text(tmp_path / "a.lmdb") == (NATIVE / "a.lmdb.final-dump.txt").read_text()

    def test_merger_differs_only_in_txn_ids(self, tmp_path: Path) -> None:
        """evsync's batched ``Merger`` decides every entry as LS and creates the empty DBI
        as LS does, but commits one txn per DBI (its write txns stay short) instead of
        one per object: b.lmdb then equals LS's dump except that the empty DBI took txn
        4 and ``second``/k1 carries txn 5 instead of 3."""
        build_inputs(tmp_path)
        env = open_env(tmp_path / "b.lmdb")
        try:
            result = Merger(env).merge(
                LS_PB_GZ.reader(io.BytesIO((NATIVE / "bucket" / A1).read_bytes())).dbis()
            )
        finally:
            env.close()
        assert result.entries == 8
        assert b"empty" in result.dbis_created
        want = (NATIVE / "b.lmdb.final-dump.txt").read_text()
        want = want.replace("'last_txnid': 3", "'last_txnid': 5")
        want = want.replace(
            "b'k1': ts=1700000000000000007 txn=3", "b'k1': ts=1700000000000000007 txn=5"
        )
        assert dump_text(tmp_path / "b.lmdb") == want


# ------------------------------------------------------------------ probes


class TestProbes:
    """What evsync does with each object that was fed to real LS (reference §8)."""

    @pytest.mark.parametrize(
        "name",
        ["A_python_gzip", "B_two_gzip_members", "D_unknown_dbi_field_varint", "H_name_extra"],
    )
    def test_plain_probes_read(self, name: str) -> None:
        """A (Python's gzip, MTIME set), B (two gzip members), D (unknown 1-byte varint in
        a DBI), H (extra name fields): read like LS: k1=v1, k2 deleted, k3 live and empty."""
        header, dbis = read_all(probe(name))
        assert [(i.name, e) for i, e in dbis] == [
            (
                b"data",
                [(b"k1", T + 1, 0, b"v1"), (b"k2", T + 2, 1, b""), (b"k3", T + 3, 0, b"")],
            )
        ]
        assert (header.db, header.instance, header.txn_id) == ("main", "evsync-x", 1)

    def test_probes_fail_the_name_check(self) -> None:
        """The probes' Meta.timestampNano is 100 ns after their names' time: LS never
        compares them, evsync's receiver does and rejects such an object as not being what
        its name says (an LS object always has the same instant in both)."""
        header = LS_PB_GZ.verify(io.BytesIO(probe("A_python_gzip")))
        assert header.timestamp_ns == T + 100
        with pytest.raises(CorruptObjectError, match="does not match"):
            _check_header(header, SnapshotName.parse(PROBE_NAME))
        h_name = next((PROBES / "H_name_extra").glob("*.pb.gz")).name
        assert SnapshotName.parse(h_name).extras == ("X1", "Yfoo")

    def test_c_unknown_fields_skipped(self) -> None:
        """C: unknown fields at Snapshot (15, 16), Meta (9, 10) and KV (5 fixed64, 6
        varint) level are skipped, as LS does."""
        header, dbis = read_all(probe("C_unknown_fields"))
        assert dbis[0][1] == [(b"k1", T + 1, 0, b"v1")]
        assert header.hostname == "evsync-host"

    def test_d2_unknown_dbi_bytes_field_read(self) -> None:
        """D2: an unknown bytes field after a DBI's name. LS rejects it only through its
        own skip bug (offset from the DBI's start); evsync skips it correctly and reads
        the object (a bucket shared with LS: LS still ignores it, evsync merges it)."""
        _header, dbis = read_all(probe("D2_unknown_dbi_field_bytes"))
        assert len(dbis[0][1]) == 3

    def test_e_compat4_rejected(self) -> None:
        """E: compatVersion 4 makes LS exit; evsync rejects the object with one line."""
        with pytest.raises(CorruptObjectError, match="compatVersion 4 is newer than 3"):
            verify_snapshot(io.BytesIO(probe("E_compat4")))

    def test_e2_format4_compat3_read_with_v3_rules(self) -> None:
        """E2: formatVersion 4 with compatVersion 3 is read with the v3 rules, as LS does."""
        header, dbis = read_all(probe("E2_fmt4_compat3"))
        assert header.version == 4
        assert dbis[0][1][2] == (b"k3", T + 3, 0, b"")  # empty but not deleted: v2+ rules

    def test_f1_format1_empty_value_is_deleted(self) -> None:
        """F1: in format 1 an empty value means deleted: k3 is handed out deleted."""
        _header, dbis = read_all(probe("F1_format1"))
        assert dbis[0][1][2] == (b"k3", T + 3, 1, b"")

    def test_f2_no_format_version_rejected(self) -> None:
        """F2: no formatVersion makes LS exit; evsync rejects the object."""
        with pytest.raises(CorruptObjectError, match="no formatVersion"):
            verify_snapshot(io.BytesIO(probe("F2_format0")))

    def test_g_transform_with_plain_keys_rejected(self) -> None:
        """G: DUPSORT + dupsort_hack_v1 in a native-mode load makes LS exit. The flags
        and transform agree, so the DBI itself is valid, but its keys are not
        dupsort_hack_v1 keys: evsync rejects the object naming the first bad key. (An
        object with valid transformed keys reads; a native merge skips such a DBI.)"""
        with pytest.raises(CorruptObjectError, match="DBI 'data' entry 0: encoded key"):
            verify_snapshot(io.BytesIO(probe("G_transform_native")))

    def test_i_unsorted_entries_read(self) -> None:
        """I: entries out of key order are read in object order (LS merges per key)."""
        _header, dbis = read_all(probe("I_unsorted"))
        assert [e[0] for e in dbis[0][1]] == [b"zz", b"aa"]

    def test_k_not_gzip_rejected(self) -> None:
        """K: not gzip: corrupt (LS marks it corrupt too)."""
        with pytest.raises(CorruptObjectError, match="not gzip"):
            verify_snapshot(io.BytesIO(probe("K_not_gzip")))

    def test_l_merge_existing_as_ls(self, tmp_path: Path) -> None:
        """L: the local LMDB is made from the probe's inst-probe object (k1="v0" at T+1,
        k2="local" at T+5, k3="old" at T+1), then evsync-x's object is merged: k1 kept
        (same ts, "v0" < "v1"), k2 kept (local newer than the delete), k3 replaced by the
        newer empty live value, with the merging txn, as LS did."""
        path = tmp_path / "l.lmdb"
        fresh(path).close()
        local = next((PROBES / "L_merge_existing").glob("main__inst-probe__*.pb.gz"))
        merge_one_txn(path, local.read_bytes())
        merge_one_txn(path, probe("L_merge_existing"))
        lines = dump_text(path).splitlines()
        assert lines[0] == "env info: {'last_txnid': 2}"
        assert lines[2:] == [
            "   b'k1': ts=1700000000000000001 txn=1 ver=0 flags=0x0 reserved=00000000 "
            "numExtra=0 ext= app=b'v0'",
            "   b'k2': ts=1700000000000000005 txn=1 ver=0 flags=0x0 reserved=00000000 "
            "numExtra=0 ext= app=b'local'",
            "   b'k3': ts=1700000000000000003 txn=2 ver=0 flags=0x0 reserved=00000000 "
            "numExtra=0 ext= app=b''",
        ]

    def test_m_empty_kv_rejected(self) -> None:
        """M: a zero-length KV message makes LS exit; evsync rejects it naming the entry."""
        with pytest.raises(CorruptObjectError, match="entry 1: an empty KV message"):
            verify_snapshot(io.BytesIO(probe("M_empty_kv")))


# ------------------------------------------------------------------ crafted corruption


class TestReaderRules:
    def test_truncated_gzip(self) -> None:
        """A gzip member cut off is corrupt."""
        data = (NATIVE / "bucket" / A1).read_bytes()
        with pytest.raises(CorruptObjectError, match="truncated"):
            verify_snapshot(io.BytesIO(data[:-10]))

    def test_trailing_garbage(self) -> None:
        """Bytes after the last member that are not gzip are corrupt."""
        data = (NATIVE / "bucket" / A1).read_bytes()
        with pytest.raises(CorruptObjectError, match="gzip member 2"):
            verify_snapshot(io.BytesIO(data + b"junk"))

    def test_empty_object(self) -> None:
        """An empty object is corrupt."""
        with pytest.raises(CorruptObjectError, match="empty object"):
            verify_snapshot(io.BytesIO(b""))

    def test_protobuf_cut_inside_a_dbi(self) -> None:
        """A protobuf payload that ends inside a DBI message is corrupt."""
        payload = (NATIVE / "decoded" / A1[:-3]).read_bytes()
        with pytest.raises(CorruptObjectError, match="truncated"):
            verify_snapshot(io.BytesIO(gz(payload[:-5])))

    def test_unknown_transform(self) -> None:
        """An unknown transform is rejected."""
        obj = snapshot(field(1, 2, b"d") + field(4, 2, b"rot13") + KV1)
        with pytest.raises(CorruptObjectError, match="unknown transform 'rot13'"):
            verify_snapshot(io.BytesIO(obj))

    def test_dupsort_without_transform(self) -> None:
        """Format 3: MDB_DUPSORT without dupsort_hack_v1 is rejected."""
        obj = snapshot(field(1, 2, b"d") + field(3, 0, 4) + KV1)
        with pytest.raises(CorruptObjectError, match="disagree"):
            verify_snapshot(io.BytesIO(obj))

    def test_transform_without_dupsort(self) -> None:
        """Format 3: dupsort_hack_v1 without MDB_DUPSORT is rejected."""
        obj = snapshot(field(1, 2, b"d") + field(4, 2, b"dupsort_hack_v1"))
        with pytest.raises(CorruptObjectError, match="disagree"):
            verify_snapshot(io.BytesIO(obj))

    def test_format2_no_pairing_rule(self) -> None:
        """Before format 3 DBI flags may be the shadow's: no pairing rule."""
        obj = snapshot(field(1, 2, b"d") + field(3, 0, 4) + KV1, head=field(1, 0, 2) + META)
        header, dbis = read_all(obj)
        assert dbis[0][0].flags == 4 and header.version == 2

    def test_kv_flags_masked(self) -> None:
        """KV flags are masked to 0x01, as LS does."""
        kv = field(2, 2, field(1, 2, b"k") + field(4, 0, 0xFF))
        _header, dbis = read_all(snapshot(field(1, 2, b"d") + kv))
        assert dbis[0][1] == [(b"k", 0, 1, b"")]

    def test_kv_without_key(self) -> None:
        """A KV without a key is rejected."""
        kv = field(2, 2, field(2, 2, b"v"))
        with pytest.raises(CorruptObjectError, match="key length 0"):
            verify_snapshot(io.BytesIO(snapshot(field(1, 2, b"d") + kv)))

    def test_known_field_wrong_wire_type(self) -> None:
        """A KV timestamp sent as a varint is corrupt, not skipped."""
        kv = field(2, 2, field(1, 2, b"k") + field(3, 0, 5))
        with pytest.raises(CorruptObjectError, match="field 3 has wire type 0"):
            verify_snapshot(io.BytesIO(snapshot(field(1, 2, b"d") + kv)))

    def test_group_wire_type_refused(self) -> None:
        """Unknown fields with group wire types are refused."""
        obj = gz(field(1, 0, 3) + META + varint(20 << 3 | 3))
        with pytest.raises(CorruptObjectError, match="unsupported wire type 3"):
            verify_snapshot(io.BytesIO(obj))

    def test_dbi_field_after_entries(self) -> None:
        """A DBI that sets its flags after an entry is refused (a stream cannot go back)."""
        with pytest.raises(CorruptObjectError, match="after its entries"):
            verify_snapshot(io.BytesIO(snapshot(field(1, 2, b"d") + KV1 + field(3, 0, 8))))

    def test_non_minimal_kv_tag(self) -> None:
        """A KV tag written in two varint bytes (0x92 0x00) is refused with a clear line,
        as the first entry and after one."""
        kv = b"\x92\x00" + field(2, 2, field(1, 2, b"k"))[1:]
        for body in (field(1, 2, b"d") + kv, field(1, 2, b"d") + KV1 + kv):
            with pytest.raises(CorruptObjectError, match="tag in more than one byte"):
                verify_snapshot(io.BytesIO(snapshot(body)))

    def test_unknown_dbi_field_after_entries_skipped(self) -> None:
        """An unknown DBI field between entries is skipped."""
        obj = snapshot(field(1, 2, b"d") + KV1 + field(9, 2, b"xyz") + KV1)
        assert len(read_all(obj)[1][0][1]) == 2

    def test_dbi_without_name(self) -> None:
        """A DBI without a name is rejected."""
        with pytest.raises(CorruptObjectError, match="has no name"):
            verify_snapshot(io.BytesIO(snapshot(KV1)))

    def test_dbi_twice(self) -> None:
        """A DBI named twice is rejected."""
        with pytest.raises(CorruptObjectError, match="appears twice"):
            verify_snapshot(io.BytesIO(snapshot(field(1, 2, b"d"), field(1, 2, b"d"))))

    def test_kv_past_dbi_end(self) -> None:
        """A KV whose length runs past its DBI message is corrupt."""
        name = field(1, 2, b"d")
        # the DBI message claims only the name and 3 bytes of the KV that follows
        obj = gz(field(1, 0, 3) + META + b"\x1a" + varint(len(name) + 3) + name + KV1)
        with pytest.raises(CorruptObjectError, match="runs past the end of the DBI"):
            verify_snapshot(io.BytesIO(obj))

    def test_late_format_version(self) -> None:
        """formatVersion after the DBIs: the entries are read with the v3 rules and the
        object is accepted when it says 3 or more, rejected when it says less."""
        head = META
        ok = gz(head + field(3, 2, field(1, 2, b"d") + KV1) + field(1, 0, 3) + field(4, 0, 1))
        header, _dbis = read_all(ok)
        assert header.version == 3
        bad = gz(head + field(3, 2, field(1, 2, b"d") + KV1) + field(1, 0, 1))
        with pytest.raises(CorruptObjectError, match="formatVersion 1 after DBIs"):
            verify_snapshot(io.BytesIO(bad))

    def test_late_compat_version(self) -> None:
        """compatVersion after the DBIs is checked at the end of the object."""
        bad = gz(field(1, 0, 3) + META + field(3, 2, field(1, 2, b"d") + KV1) + field(4, 0, 9))
        with pytest.raises(CorruptObjectError, match="compatVersion 9"):
            verify_snapshot(io.BytesIO(bad))

    def test_late_meta_completes_the_header(self) -> None:
        """Meta after the DBIs: the header from ``verify`` is complete."""
        obj = gz(field(1, 0, 3) + field(3, 2, field(1, 2, b"d") + KV1) + META)
        header = LS_PB_GZ.verify(io.BytesIO(obj))
        assert (header.instance, header.timestamp_ns, header.dbis[0].entries) == (
            "evsync-x",
            T,
            1,
        )

    def test_negative_txn_id(self) -> None:
        """Meta.lmdbTxnID is int64 in two's complement, not zigzag."""
        meta = field(2, 2, field(4, 0, (1 << 64) - 5))
        header, _ = read_all(gz(field(1, 0, 3) + meta))
        assert header.txn_id == -5

    def test_max_inflated(self) -> None:
        """Past ``max_inflated`` inflated bytes the object is too large."""
        data = (NATIVE / "bucket" / A1).read_bytes()
        with pytest.raises(ObjectTooLargeError):
            verify_snapshot(io.BytesIO(data), max_inflated=100)

    def test_entry_over_the_cap(self) -> None:
        """A KV message over the 64 MiB entry cap is too large (seen from its length)."""
        kv = varint(2 << 3 | 2) + varint(MAX_ENTRY_BYTES + 1) + b"\x0a\x01k"
        obj = gz(field(1, 0, 3) + META + varint(3 << 3 | 2) + varint(MAX_ENTRY_BYTES + 20))
        obj = gz(
            field(1, 0, 3)
            + META
            + varint(3 << 3 | 2)
            + varint(MAX_ENTRY_BYTES + 20)
            + field(1, 2, b"d")
            + kv
        )
        with pytest.raises(ObjectTooLargeError, match="64 MiB"):
            verify_snapshot(io.BytesIO(obj))

    def test_chunks_bounded_by_bytes(self) -> None:
        """Entries come in lists bounded by count and by bytes."""
        big = b"x" * (1 << 20)
        entries = [(b"k%03d" % i, i + 1, 0, big) for i in range(40)]
        header = SnapshotHeader("main", "i", "h", T, 1, (DbiInfo(b"d", 0, "", 40),))
        out = io.BytesIO()
        write_snapshot(out, header, [entries])
        out.seek(0)
        reader = LS_PB_GZ.reader(out)
        sizes = [len(c) for _i, e in reader.dbis() for c in e.chunks(1000)]
        assert sum(sizes) == 40 and max(sizes) <= (CHUNK_MAX_BYTES >> 20) + 1
        assert len(sizes) > 1

    def test_large_values_roundtrip(self) -> None:
        """Values over the varint tables and across inflate pieces read back intact."""
        entries = [(b"a", 1, 0, os.urandom(3 << 20)), (b"b", 2, 1, b""), (b"c", 3, 0, b"x" * 20000)]
        header = SnapshotHeader("main", "i", "h", T, 1, (DbiInfo(b"d", 0, "", 3),))
        out = io.BytesIO()
        write_snapshot(out, header, [entries])
        assert read_all(out.getvalue())[1][0][1] == entries


# ------------------------------------------------------------------ writer


class TestWriter:
    def test_count_mismatch(self) -> None:
        """A DBI with other than the promised number of entries raises ValueError."""
        header = SnapshotHeader("main", "i", "h", T, 1, (DbiInfo(b"d", 0, "", 2),))
        with pytest.raises(ValueError, match="promised 2"):
            write_snapshot(io.BytesIO(), header, [[(b"k", 1, 0, b"v")]])

    def test_entry_too_large(self) -> None:
        """An entry over the cap fails the dump naming DBI and key."""
        header = SnapshotHeader("main", "i", "h", T, 1, (DbiInfo(b"d", 0, "", 1),))
        with pytest.raises(EntryTooLargeError, match="key b'big'"):
            write_snapshot(io.BytesIO(), header, [[(b"big", 1, 0, b"x" * MAX_ENTRY_BYTES)]])

    def test_spooled_dbi(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """A DBI bigger than the in-memory spool goes through a temporary file beside
        the object and reads back the same; nothing is left beside it."""
        from evsync.snapshot import lightningstream

        monkeypatch.setattr(lightningstream, "SPOOL_MEMORY", 1000)
        spools: list[str | None] = []
        real = tempfile.TemporaryFile

        def spy(dir: str | None = None) -> Any:
            spools.append(dir)
            return real(dir=dir)

        monkeypatch.setattr(tempfile, "TemporaryFile", spy)
        entries = [(b"key%09d" % i, T + i, i % 2, b"v" * (i % 70)) for i in range(5000)]
        header = SnapshotHeader("main", "i", "h", T, 1, (DbiInfo(b"d", 0, "", 5000),))
        path = tmp_path / "out.pb.gz"
        with path.open("wb") as out:
            write_snapshot(out, header, [entries])
        assert spools == [str(tmp_path)]
        assert os.listdir(tmp_path) == ["out.pb.gz"]
        got = read_all(path.read_bytes())[1][0][1]
        assert got == entries


class TestFastPaths:
    """The reader's per-KV fast loop and its same-shape runs (struct over fixed-size
    records) must give what the general path gives, and never skip a framing check."""

    @staticmethod
    def uniform(n: int) -> list[Entry]:
        return [(b"key%09d" % i, T + i, 0, b"v" * 50) for i in range(n)]

    @staticmethod
    def encode(entries: list[Entry]) -> tuple[bytes, bytes]:
        """The object, and its DBI body (name + KVs) for crafting."""
        header = SnapshotHeader("main", "i", "h", T, 1, (DbiInfo(b"d", 0, "", len(entries)),))
        out = io.BytesIO()
        write_snapshot(out, header, [entries])
        payload = zlib.decompress(out.getvalue(), 31)
        return out.getvalue(), payload

    def test_runs_broken_by_other_shapes(self) -> None:
        """Runs of fixed-size records interrupted by a delete, a longer value, a zero
        timestamp and a long key read back exactly."""
        entries = self.uniform(3000)
        entries[100] = (entries[100][0], T, 1, b"")
        entries[200] = (entries[200][0], T, 0, b"w" * 300)
        entries[300] = (entries[300][0], 0, 0, b"x")
        entries[400] = (b"k" * 200, T, 0, b"y")
        entries[401:] = sorted(entries[401:])
        obj, _payload = self.encode(entries)
        assert read_all(obj)[1][0][1] == entries

    def test_run_respects_a_changed_timestamp_tag(self) -> None:
        """A KV inside a run whose timestamp is an unknown fixed64 field (tag 0x39) reads
        with timestamp 0 through the general path: the run stops before it."""
        entries = self.uniform(500)
        _obj, payload = self.encode(entries)
        kv = b"\x12" + bytes([len(_kv_body(entries[250]))]) + _kv_body(entries[250])
        at = payload.index(kv)
        ts_at = at + len(kv) - 9
        assert payload[ts_at] == 0x19
        crafted = payload[:ts_at] + b"\x39" + payload[ts_at + 1 :]
        got = read_all(gz(crafted))[1][0][1]
        assert got[250] == (entries[250][0], 0, 0, entries[250][3])
        assert got[:250] == entries[:250] and got[251:] == entries[251:]

    def test_run_respects_a_bad_key_tag(self) -> None:
        """A KV inside a run whose key field has the wrong wire type is rejected."""
        entries = self.uniform(500)
        _obj, payload = self.encode(entries)
        kv = b"\x12" + bytes([len(_kv_body(entries[300]))]) + _kv_body(entries[300])
        at = payload.index(kv)
        crafted = payload[: at + 2] + b"\x08" + payload[at + 3 :]
        with pytest.raises(CorruptObjectError, match="entry 300"):
            verify_snapshot(io.BytesIO(gz(crafted)))

    def test_two_byte_lengths(self) -> None:
        """KV and value lengths of two varint bytes (values of 116..16383 bytes) read
        back, at the boundaries too."""
        entries = [(b"k%05d" % v, T, 0, b"z" * v) for v in (100, 114, 115, 116, 127, 128, 16383)]
        obj, _payload = self.encode(entries)
        assert read_all(obj)[1][0][1] == entries


class TestCheckOnlyMatchesBuilding:
    """``verify`` checks without building most entries; it must accept and reject
    exactly what reading them does, and never fail with anything but CorruptObjectError."""

    @staticmethod
    def outcome(run: Any) -> str:
        try:
            run()
        except CorruptObjectError as exc:
            return f"corrupt: {exc}"
        return "ok"

    @settings(max_examples=200, deadline=None)
    @given(st.data())
    def test_flipped_bytes(self, data: st.DataObject) -> None:
        """A valid payload with a few bytes changed: verify and a full read agree."""
        entries = [(b"key%05d" % i, T + i, 0, b"v" * (i % 3 + 40)) for i in range(60)]
        entries[7] = (entries[7][0], T, 1, b"")
        _obj, payload = TestFastPaths.encode(entries)
        crafted = bytearray(payload)
        for _ in range(data.draw(st.integers(1, 3))):
            at = data.draw(st.integers(0, len(crafted) - 1))
            crafted[at] = data.draw(st.integers(0, 255))
        obj = gz(bytes(crafted))
        checked = self.outcome(lambda: verify_snapshot(io.BytesIO(obj)))
        built = self.outcome(lambda: read_all(obj))
        assert checked == built


def _kv_body(entry: Entry) -> bytes:
    """One KV as LS encodes it (an independent encoder)."""
    key, ts, flags, value = entry
    body = field(1, 2, key)
    if value:
        body += field(2, 2, value)
    if flags & 1:
        body += field(4, 0, 1)
    if ts:
        body += field(3, 1, struct.pack("<Q", ts))
    return body


def reference_payload(header: SnapshotHeader, lists: list[list[Entry]]) -> bytes:
    """What LS writes for these DBIs and Meta values, encoded independently of the module
    (field order as in the vectors: Snapshot 1, 4, 2, 3; Meta 1, 2, 3, 7, 4, 5)."""
    meta = field(1, 2, b"GX") + field(2, 2, header.instance.encode())
    meta += field(3, 2, header.hostname.encode()) + field(7, 2, header.db.encode())
    if header.txn_id:
        meta += field(4, 0, header.txn_id % (1 << 64))
    if header.timestamp_ns:
        meta += field(5, 1, struct.pack("<Q", header.timestamp_ns))
    out = field(1, 0, 3) + field(4, 0, 1) + field(2, 2, meta)
    for info, entries in zip(header.dbis, lists, strict=True):
        body = field(1, 2, info.name)
        if info.flags:
            body += field(3, 0, info.flags)
        if info.transform:
            body += field(4, 2, info.transform.encode())
        body += b"".join(field(2, 2, _kv_body(e)) for e in entries)
        out += field(3, 2, body)
    return out


KEYS = st.binary(min_size=1, max_size=64)
ENTRY = st.tuples(st.integers(0, (1 << 64) - 1), st.integers(0, 255), st.binary(max_size=300))
DBIS = st.dictionaries(
    st.binary(min_size=1, max_size=20).filter(lambda n: not n.startswith(b"_sync")),
    st.dictionaries(KEYS, ENTRY, max_size=30),
    max_size=4,
)


class TestWriterProperties:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(DBIS, st.integers(-(1 << 63), (1 << 63) - 1), st.integers(0, (1 << 64) - 1))
    def test_never_a_fatal_shape_and_round_trips(
        self, dbis: dict[bytes, dict[bytes, tuple[int, int, bytes]]], txn_id: int, ts_ns: int
    ) -> None:
        """Whatever the LMDB holds, the writer's output, decoded independently, has
        formatVersion 3 and compatVersion 1 first, DBIs with only name, flags (when
        not 0) and entries, in that order, no empty KV and KV fields in LS's order; it
        is byte for byte an independent encoding of LS's rules; and the reader gives
        back every entry, flags masked to 0x01."""
        names = sorted(dbis)
        # INTEGERKEY for some: a flags field must come between name and entries
        infos = tuple(DbiInfo(n, 8 if n[0] & 1 else 0, "", len(dbis[n])) for n in names)
        header = SnapshotHeader("main", "inst", "host", ts_ns, txn_id, infos)
        lists = [[(k, *dbis[n][k]) for k in sorted(dbis[n])] for n in names]
        out = io.BytesIO()
        write_snapshot(out, header, lists)
        payload = zlib.decompress(out.getvalue(), 31)
        assert payload == reference_payload(header, lists)
        shape = decode_independently(payload)
        assert shape["top"][:3] == [1, 4, 2] and set(shape["top"][3:]) <= {3}
        assert (shape["1"], shape["4"]) == (3, 1)
        for info, (fields, kvs) in zip(infos, shape["dbis"], strict=True):
            head = [1, 3] if info.flags else [1]
            assert fields[: len(head)] == head and set(fields[len(head) :]) <= {2}
            for size, kv_fields in kvs:
                assert size > 0
                order = {1: 0, 2: 1, 4: 2, 3: 3}
                assert kv_fields[0] == 1
                assert [order[f] for f in kv_fields] == sorted(order[f] for f in kv_fields)
        got_header, got = read_all(out.getvalue())
        assert (got_header.txn_id, got_header.timestamp_ns) == (txn_id, ts_ns)
        assert [(i.name, i.flags) for i, _e in got] == [(i.name, i.flags) for i in infos]
        assert [e for _i, e in got] == [
            [(k, ts, fl & 1, v) for k, ts, fl, v in entries] for entries in lists
        ]
