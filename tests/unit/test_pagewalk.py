"""The page-walk change finder (evsync.lmdb.pagewalk): a delta found from the changed leaf
pages is byte for byte the delta of the full header scan, and it falls back to the scan
whenever it cannot tell."""

from __future__ import annotations

import io
import logging
import random
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evsync.config import LmdbConfig, LmdbOptions
from evsync.lmdb import pagewalk
from evsync.lmdb.dump import DumpResult, dump_native, dump_native_delta
from evsync.lmdb.env import LmdbEnv
from evsync.lmdb.header import FLAG_DELETED, encode_value, parse_header
from evsync.lmdb.pagewalk import ChangeFinder
from evsync.snapshot import SnapshotReader
from evsync.storage.memory import MemoryStore
from evsync.sync.state import TxnLedger
from evsync.triggers.base import Batch
from tests.helpers import Writer
from tests.unit.test_syncer import app_put, fill, make_syncer, read, stored

MAX_DBS = 8
MAP_SIZE = 8 << 20  # small, so that a workload can fill it and grow the map
BIG_VALUE = 3000  # past half a 4 KiB page: the value moves to overflow pages
DBIS = (b"records", b"other")
PAYLOAD_SIZES = st.sampled_from([1, 8, 40, 200, BIG_VALUE])


class Seen:
    """An observer that counts what the finder tells it."""

    def __init__(self) -> None:
        self.paths: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()

    def change_finder_served(self, path: str) -> None:
        self.paths[path] += 1

    def change_finder_fallback(self, reason: str) -> None:
        self.reasons[reason] += 1


def open_lenv(path: Path, *, writemap: bool = False, map_size: int = MAP_SIZE) -> LmdbEnv:
    """An LmdbEnv as evsync opens it; with ``writemap`` its env writes through the map
    (LMDB allows one env per file per process, so the in-process writer is this one)."""
    cfg = LmdbConfig(
        name="main",
        path=str(path),
        schema_tracks_changes=True,
        options=LmdbOptions(create=True, map_size=map_size, max_dbs=MAX_DBS),
    )
    lenv = LmdbEnv(cfg)
    if writemap:
        lenv.env.close()
        lenv.env = lmdb.open(str(path), map_size=map_size, max_dbs=MAX_DBS, writemap=True)
    return lenv


@dataclass
class Harness:
    """One LMDB, its finder, and the bookkeeping of the sender: the last shipped txn
    and evsync's own merge txns (which the delta's filter skips)."""

    lenv: LmdbEnv
    seen: Seen = field(default_factory=Seen)
    since_txn: int = 0
    skip: set[int] = field(default_factory=set)
    finder: ChangeFinder = field(init=False)
    timestamp: int = 1

    def __post_init__(self) -> None:
        self.finder = ChangeFinder(self.lenv, observer=self.seen)

    def db(self, name: bytes) -> Any:
        return self.lenv.open_dbi(name, create_flags=0)

    def commit(self, ops: list[tuple[str, bytes, bytes, int]], *, merge: bool = False) -> int:
        """Run ops (put, tomb, delete, delete_range) in one write txn; a ``merge`` txn is
        recorded as one of evsync's own, as the merger's would be."""
        for name in {op[1] for op in ops}:
            self.db(name)
        while True:
            try:
                with self.lenv.begin(write=True) as txn:
                    txn_id = int(txn.id())
                    for op, dbi, key, size in ops:
                        self._apply(txn, txn_id, op, self.db(dbi), key, size)
                break
            except lmdb.MapFullError:
                self.lenv.grow_map()
        if merge:
            self.skip.add(txn_id)
        return txn_id

    @staticmethod
    def _apply(txn: Any, txn_id: int, op: str, db: Any, key: bytes, size: int) -> None:
        if op == "put":
            txn.put(key, encode_value(txn_id, txn_id, 0, bytes([txn_id % 251]) * size), db=db)
        elif op == "tomb":
            txn.put(key, encode_value(txn_id, txn_id, FLAG_DELETED, b""), db=db)
        elif op == "delete":
            txn.delete(key, db=db)
        elif op == "delete_range":  # many neighbours at once: leaves merge
            cursor = txn.cursor(db=db)
            if cursor.set_range(key):
                for _ in range(size):
                    if not cursor.delete():
                        break

    def full(self) -> None:
        """A full object was stored: its snapshot is the finder's pin."""
        result = dump_native(
            self.lenv, io.BytesIO(), db="main", instance="a", timestamp_ns=1, finder=self.finder
        )
        self.finder.stored()
        self.since_txn = result.header.txn_id

    def delta(self, *, store: bool = True) -> tuple[bytes, bytes]:
        """The delta by the finder and by the scan (same arguments, same txn); on
        ``store`` the finder's snapshot becomes the base of the next one."""
        self.timestamp += 1
        scan_out, walk_out = io.BytesIO(), io.BytesIO()
        scanned = self._delta(scan_out, None)
        walked = self._delta(walk_out, self.finder)
        assert (scanned is None) == (walked is None)
        if walked is not None and scanned is not None:
            assert walked.header.txn_id == scanned.header.txn_id, "a commit raced the test"
            if store:
                self.finder.stored()
                self.since_txn = walked.header.txn_id
            else:
                self.finder.discard()
        return scan_out.getvalue(), walk_out.getvalue()

    def _delta(self, out: io.BytesIO, finder: ChangeFinder | None) -> DumpResult | None:
        return dump_native_delta(
            self.lenv,
            out,
            db="main",
            instance="a",
            timestamp_ns=self.timestamp,
            base_timestamp_ns=1,
            since_txn=self.since_txn,
            skip_txns=self.skip,
            max_entries=10**9,
            finder=finder,
        )


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """A harness on a fresh LMDB with DBIS loaded with a few leaves' worth of records."""
    lenv = open_lenv(tmp_path / "lmdb")
    h = Harness(lenv)
    load(h, 2000)
    yield h
    h.finder.close()
    lenv.close()


def load(h: Harness, records: int) -> None:
    """Fill every DBI with ``records`` records in one commit."""
    h.commit([("put", dbi, key(i), 40) for dbi in DBIS for i in range(records)])


def key(i: int) -> bytes:
    return b"key-%08d" % i


# One commit: a list of ops on keys of a 3000-key space (2000 loaded), some ops ranging.
OP = st.tuples(
    st.sampled_from(["put", "put", "tomb", "delete", "delete_range"]),
    st.sampled_from(DBIS),
    st.integers(0, 3000).map(key),
    PAYLOAD_SIZES,
)
COMMIT = st.tuples(st.lists(OP, min_size=1, max_size=30), st.booleans())  # ops, is a merge
# Between two uploads: one or more commits; an upload may fail (the pin stays).
ROUND = st.tuples(
    st.lists(COMMIT, min_size=1, max_size=4),
    st.booleans(),  # the upload is stored (else its store failed)
    st.sampled_from([False] * 5 + [True]),  # this process grows the map first
)


# A local commit, a merge (evsync's own txn), an upload decision (True: stored), a map growth
STEP = st.one_of(
    st.tuples(st.sampled_from(["local", "merge", "merge"]), st.lists(OP, min_size=1, max_size=6)),
    st.tuples(st.just("decide"), st.sampled_from([True, True, False])),
    st.tuples(st.just("grow"), st.none()),
)


class TestAgreesWithTheScan:
    """Property tests: over random workloads the finder's delta equals the scan's."""

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(rounds=st.lists(ROUND, min_size=1, max_size=8), writemap=st.booleans())
    def test_random_workloads(
        self, rounds: list[tuple[list[tuple[list[Any], bool]], bool, bool]], writemap: bool
    ) -> None:
        """Inserts, updates (values that move to and from overflow pages), tombstones,
        outright deletes (one key, or runs that merge leaves), evsync's own merge txns,
        several commits between two uploads, failed uploads, the map filling up and
        growing; with and without WRITEMAP: the delta's bytes equal the scan's."""
        with tempfile.TemporaryDirectory() as tmp:
            lenv = open_lenv(Path(tmp) / "lmdb", writemap=writemap)
            h = Harness(lenv)
            try:
                load(h, 2000)
                h.full()
                for commits, stored, grow in rounds:
                    for ops, merge in commits:
                        h.commit([(op, dbi, k, size) for op, dbi, k, size in ops], merge=merge)
                    if grow:
                        lenv.grow_map()  # py-lmdb closes the pin: the finder must notice
                    scanned, walked = h.delta(store=stored)
                    assert walked == scanned
            finally:
                h.finder.close()
                lenv.close()

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(steps=st.lists(STEP, min_size=1, max_size=24))
    def test_random_interleavings_with_follow(self, steps: list[tuple[str, Any]]) -> None:
        """Local commits and merges in any order, the sender's upload decisions between
        them (follow() when no txn is past the ledger's last synced one, else a delta;
        its store may fail), map growths: the delta equals the scan and holds exactly the
        local entries no stored object carries; a followed pin never makes it scan."""
        with tempfile.TemporaryDirectory() as tmp:
            lenv = open_lenv(Path(tmp) / "lmdb")
            h, ledger, local = Harness(lenv), TxnLedger(), set[int]()
            try:
                load(h, 2000)
                h.full()
                ledger.synced_up_to(shipped := h.since_txn)
                for kind, arg in steps:
                    if kind == "grow":
                        lenv.grow_map()
                    elif kind != "decide":
                        txn_id = h.commit(arg)
                        if kind == "merge":
                            ledger.merged([txn_id])
                        else:
                            local.add(txn_id)
                    elif (last := lenv.last_txn_id()) <= ledger.last_synced:
                        h.finder.follow(last)
                        assert h.finder.pinned_txn in (None, last)
                    else:
                        h.since_txn, h.skip = max(shipped, ledger.last_synced), ledger.merge_txns
                        with lenv.begin() as txn:
                            want = {
                                (n, bytes(k))
                                for n in DBIS
                                for k, v in txn.cursor(db=h.db(n))
                                if parse_header(v).txn_id in local
                            }
                        scanned, walked = h.delta(store=arg)
                        assert walked == scanned
                        got = {
                            (i.name, e[0])
                            for i, es in SnapshotReader(io.BytesIO(walked)).dbis()
                            for e in es
                        }
                        assert got == want
                        if not got or arg:  # an empty delta: evsync's own txns only
                            ledger.synced_up_to(last)
                        if got and arg:
                            ledger.shipped(shipped := last)
                            local.clear()
                    assert set(h.seen.reasons) <= {
                        pagewalk.PIN_LOST,
                        pagewalk.NO_PIN,
                        pagewalk.EMPTY_DBI,
                    }
                    held = [r for r in str(lenv.env.readers()).splitlines()[1:] if r[-1:].isdigit()]
                    assert len(held) <= 1  # the pin alone holds a snapshot between decisions
            finally:
                h.finder.close()
                lenv.close()

    def test_serves_from_pages(self, harness: Harness) -> None:
        """In steady state (a pin, no odd pages) the page walk serves every delta, and the
        one-record change is the only entry."""
        harness.full()
        for i in range(20):
            harness.commit([("put", b"records", key(i * 97), 40)])
            scanned, walked = harness.delta()
            assert walked == scanned
        assert harness.seen.paths == {pagewalk.PATH_PAGEWALK: 20}
        assert not harness.seen.reasons

    def test_root_split_and_shrink(self, tmp_path: Path) -> None:
        """A DBI that grows from one leaf to a three-level tree and back (the depths of the
        two roots differ) still agrees with the scan, served by the page walk."""
        lenv = open_lenv(tmp_path / "lmdb", map_size=64 << 20)
        h = Harness(lenv)
        try:
            h.commit([("put", b"records", key(0), 40)])
            h.full()
            rng = random.Random(7)
            for step in range(12):
                if step < 6:
                    ops = [("put", b"records", key(rng.randrange(40000)), 200) for _ in range(800)]
                else:
                    ops = [("delete_range", b"records", key(rng.randrange(40000)), 700)]
                h.commit(ops)
                scanned, walked = h.delta()
                assert walked == scanned
            assert h.seen.paths[pagewalk.PATH_PAGEWALK] >= 10
        finally:
            h.finder.close()
            lenv.close()

    @pytest.mark.parametrize("writemap", [False, True])
    def test_writer_in_another_process(self, tmp_path: Path, writemap: bool) -> None:
        """The application writes from its own process (with and without WRITEMAP), as
        in production: the finder reads its committed pages through the file."""
        path = tmp_path / "lmdb"
        writer = Writer(path, writemap=writemap)
        try:
            for i in range(300):
                writer.put(f"k{i:05d}", "v" * (i % 7 * 30))
            lenv = open_lenv(path)
            h = Harness(lenv)
            try:
                h.full()
                for i in range(15):
                    writer.put(f"k{i * 19:05d}", "changed" * (1 + i * 80))  # some overflow
                    if i % 3 == 0:
                        writer.put(f"new{i}", "x")
                    if i % 4 == 0:
                        writer.delete(f"k{i * 7:05d}")
                    scanned, walked = h.delta()
                    assert walked == scanned
                assert h.seen.paths[pagewalk.PATH_PAGEWALK] == 15
            finally:
                h.finder.close()
                lenv.close()
        finally:
            writer.close()


class TestFallbacks:
    """Each case outside what the finder understands scans instead, counted by reason."""

    def test_no_pin(self, harness: Harness) -> None:
        """The first delta (no snapshot stored yet) scans; its snapshot is then pinned."""
        harness.commit([("put", b"records", key(1), 40)])
        scanned, walked = harness.delta()
        assert walked == scanned
        assert harness.seen.reasons == {pagewalk.NO_PIN: 1}
        assert harness.seen.paths == {pagewalk.PATH_SCAN: 1}
        assert harness.finder.pinned_txn == harness.since_txn

    def test_dbi_appeared(self, harness: Harness) -> None:
        """A DBI created since the pin makes the finder scan."""
        harness.full()
        harness.commit([("put", b"new", key(1), 40)])
        scanned, walked = harness.delta()
        assert walked == scanned
        assert harness.seen.reasons[pagewalk.DBI_SET] == 1

    def test_dbi_dropped(self, harness: Harness) -> None:
        """A DBI dropped since the pin makes the finder scan."""
        harness.full()
        with harness.lenv.begin(write=True) as txn:
            txn.drop(harness.db(b"other"), delete=True)
        harness.lenv.forget_dbi(b"other")
        scanned, walked = harness.delta()
        assert walked == scanned
        assert harness.seen.reasons[pagewalk.DBI_SET] == 1

    def test_empty_dbi(self, harness: Harness) -> None:
        """A DBI emptied since the pin (its root is P_INVALID) makes the finder scan."""
        harness.full()
        with harness.lenv.begin(write=True) as txn:
            txn.drop(harness.db(b"other"), delete=False)
        scanned, walked = harness.delta()
        assert walked == scanned
        assert harness.seen.reasons[pagewalk.EMPTY_DBI] == 1

    def test_dupsort(self, tmp_path: Path) -> None:
        """A DUPSORT DBI is never walked (dump_native_delta already declines it; the
        finder checks the DBI record's flags itself)."""
        lenv = open_lenv(tmp_path / "lmdb")
        h = Harness(lenv)
        try:
            load(h, 10)
            h.full()
            dup = lenv.env.open_db(b"dups", dupsort=True)
            with lenv.begin() as txn:
                names = [*DBIS, b"dups"]
                h.finder._pin.roots[b"dups"] = pagewalk.read_roots(txn, [b"dups"])[b"dups"]  # type: ignore[union-attr]
                assert h.finder.changed(txn, names, since_txn=h.since_txn) is None
            assert h.seen.reasons == {pagewalk.DUPSORT: 1}
            del dup
        finally:
            h.finder.close()
            lenv.close()

    def test_pin_ahead(self, harness: Harness) -> None:
        """A pin newer than the delta's base txn could hide entries: scan."""
        harness.full()
        harness.commit([("put", b"records", key(1), 40)])
        harness.since_txn -= 1
        scanned, walked = harness.delta()
        assert walked == scanned
        assert harness.seen.reasons == {pagewalk.PIN_AHEAD: 1}

    def test_pin_lost_on_map_resize(self, harness: Harness) -> None:
        """py-lmdb closes every open txn when this process resizes the map: the finder
        notices its pin is gone and scans."""
        harness.full()
        harness.lenv.grow_map()
        harness.commit([("put", b"records", key(1), 40)])
        scanned, walked = harness.delta()
        assert walked == scanned
        assert harness.seen.reasons == {pagewalk.PIN_LOST: 1}

    def test_page_flags(self, harness: Harness) -> None:
        """A page whose header is not the kind expected (here: the tree's height is
        wrong, so a leaf is read as a branch) falls back instead of misreading."""
        harness.full()
        harness.commit([("put", b"records", key(1), 40)])
        pin = harness.finder._pin
        assert pin is not None
        old = pin.roots[b"records"]
        pin.roots[b"records"] = pagewalk.Root(old.pgno, old.depth + 1, old.flags)
        scanned, walked = harness.delta()
        assert walked == scanned
        assert harness.seen.reasons == {pagewalk.PAGE: 1}

    def test_meta(self, harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
        """Meta pages without LMDB 0.9's magic or version fall back."""
        harness.full()
        harness.commit([("put", b"records", key(1), 40)])
        monkeypatch.setattr(pagewalk, "MDB_MAGIC", 0x12345678)
        scanned, walked = harness.delta()
        assert walked == scanned
        assert harness.seen.reasons == {pagewalk.META: 1}

    def test_subpage(self, harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
        """A leaf node flagged as a sub-page or sub-DB falls back (here every node is
        taken for one by treating F_BIGDATA's bit as a sub-page)."""
        harness.full()
        harness.commit([("put", b"records", key(1), BIG_VALUE)])
        monkeypatch.setattr(pagewalk, "F_DUPDATA", pagewalk.F_BIGDATA)
        scanned, walked = harness.delta()
        assert walked == scanned
        assert harness.seen.reasons == {pagewalk.SUBPAGE: 1}

    def test_file_shrank(self, harness: Harness) -> None:
        """A data file smaller than when it was mapped falls back and drops the pin."""
        harness.full()
        harness.commit([("put", b"records", key(1), 40)])
        harness.delta()  # maps the file
        pages = harness.finder._pages
        assert pages is not None
        pages._size += 1 << 20  # as if the file had been larger when mapped
        harness.commit([("put", b"records", key(2), 40)])
        scanned, walked = harness.delta()
        assert walked == scanned
        assert harness.seen.reasons == {pagewalk.FILE_SHRANK: 1}

    def test_file_replaced(self, harness: Harness) -> None:
        """A data file that is another file than the one mapped (another inode) falls
        back and drops the pin: its pages may be gone with the old file."""
        harness.full()
        harness.commit([("put", b"records", key(1), 40)])
        harness.delta()  # maps the file
        pages = harness.finder._pages
        assert pages is not None
        pages._ino = (0, 0)
        harness.commit([("put", b"records", key(2), 40)])
        scanned, walked = harness.delta()
        assert walked == scanned
        assert harness.seen.reasons == {pagewalk.FILE_REPLACED: 1}
        assert harness.finder.pinned_txn == harness.since_txn  # pinned afresh on store

    def test_platform(self, harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
        """On a big-endian host (the layouts are read little-endian) it always scans."""
        harness.full()
        harness.commit([("put", b"records", key(1), 40)])
        monkeypatch.setattr(pagewalk.sys, "byteorder", "big")
        scanned, walked = harness.delta()
        assert walked == scanned
        assert harness.seen.reasons == {pagewalk.PLATFORM: 1}

    def test_logged_once(self, harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
        """A reason is logged the first time only, and counted every time."""
        caplog.set_level(logging.INFO, logger=pagewalk.__name__)
        for _ in range(3):
            harness.finder.discard()
            harness.commit([("put", b"records", key(1), 40)])
            harness.delta(store=False)
        lines = [r for r in caplog.records if pagewalk.NO_PIN in r.getMessage()]
        assert len(lines) == 1
        assert harness.seen.reasons[pagewalk.NO_PIN] == 3


class TestPins:
    """The pin's life cycle: stored, discarded, and released after its age limit."""

    def test_failed_store_keeps_the_old_pin(self, harness: Harness) -> None:
        """A delta whose store failed leaves the older pin as the base; the next delta
        (from the older base) is still served by the page walk and equals the scan."""
        harness.full()
        first = harness.finder.pinned_txn
        harness.commit([("put", b"records", key(1), 40)])
        harness.delta(store=False)
        assert harness.finder.pinned_txn == first
        assert harness.finder.pending_txn is None
        harness.commit([("put", b"records", key(2), 40)])
        scanned, walked = harness.delta()
        assert walked == scanned
        assert harness.seen.paths == {pagewalk.PATH_PAGEWALK: 2}

    def test_pin_released_after_age_limit(self, harness: Harness) -> None:
        """A pin that the LMDB moved past is released once older than the limit (its
        reader slot is gone), and the next delta scans with reason pin_expired."""
        now = [0.0]
        harness.finder.clock = lambda: now[0]
        harness.full()
        harness.commit([("put", b"records", key(1), 40)])
        now[0] += pagewalk.PIN_MAX_AGE_SECONDS + 1
        harness.finder.expire(harness.lenv.last_txn_id())
        assert harness.finder.pinned_txn is None
        assert "no active readers" in harness.lenv.env.readers()
        scanned, walked = harness.delta()
        assert walked == scanned
        assert harness.seen.reasons == {pagewalk.PIN_EXPIRED: 1}

    def test_idle_pin_is_kept(self, harness: Harness) -> None:
        """A pin still at the LMDB's last txn costs nothing to hold: its clock restarts,
        so a change after a long quiet spell is still served by the page walk."""
        now = [0.0]
        harness.finder.clock = lambda: now[0]
        harness.full()
        for _ in range(3):
            now[0] += pagewalk.PIN_MAX_AGE_SECONDS * 0.9
            harness.finder.expire(harness.lenv.last_txn_id())
        assert harness.finder.pinned_txn == harness.since_txn
        harness.commit([("put", b"records", key(1), 40)])
        scanned, walked = harness.delta()
        assert walked == scanned
        assert harness.seen.paths == {pagewalk.PATH_PAGEWALK: 1}

    def test_merges_alone_move_the_pin_up(self, harness: Harness) -> None:
        """follow(): with only evsync's own merges since the pin, the pin moves to the
        LMDB's last txn, and the next delta (after a local change) still equals the
        scan and is served by the page walk."""
        harness.full()
        for i in range(3):
            last = harness.commit([("put", b"records", key(100 + i), 40)], merge=True)
        harness.finder.follow(last)
        assert harness.finder.pinned_txn == last
        harness.since_txn = last  # the sender's since: the ledger's last synced txn
        harness.commit([("put", b"records", key(7), 40)])
        scanned, walked = harness.delta()
        assert walked == scanned
        assert harness.seen.paths == {pagewalk.PATH_PAGEWALK: 1}

    def test_follow_keeps_the_pin_when_the_lmdb_moved_on(self, harness: Harness) -> None:
        """follow() of a txn the LMDB has already passed (a commit came in between,
        which may hold a local change) keeps the old pin."""
        harness.full()
        first = harness.finder.pinned_txn
        merged = harness.commit([("put", b"records", key(100), 40)], merge=True)
        harness.commit([("put", b"records", key(7), 40)])
        harness.finder.follow(merged)
        assert harness.finder.pinned_txn == first

    def test_following_merges_keeps_the_file_from_growing(self, tmp_path: Path) -> None:
        """A pin held behind many one-record merges makes LMDB take fresh pages for each
        (the file grows by megabytes); moved up after each merge, the pages are reused
        and the file stays within a few pages of its size."""
        sizes = {}
        for follow in (False, True):
            lenv = open_lenv(tmp_path / f"follow-{follow}")
            h = Harness(lenv)
            load(h, 2000)
            h.full()
            start = pagewalk.data_file(lenv).stat().st_size
            for i in range(300):
                txn_id = h.commit([("put", b"records", key(i * 7 % 2000), 40)], merge=True)
                if follow:
                    h.finder.follow(txn_id)
            sizes[follow] = pagewalk.data_file(lenv).stat().st_size - start
            h.finder.close()
            lenv.close()
        assert sizes[False] > 300 * 4096  # at least a fresh page per merge when pinned
        assert sizes[True] <= 64 * 4096

    def test_close_releases_everything(self, harness: Harness) -> None:
        """close() aborts both snapshots (the env may close next)."""
        harness.full()
        harness.commit([("put", b"records", key(1), 40)])
        harness.delta(store=False)
        harness.finder.close()
        assert harness.finder.pinned_txn is None
        assert harness.finder.pending_txn is None


def _count(registry: Any, name: str, **labels: str) -> float:
    return float(registry.get_sample_value(name, {"db": "main", **labels}) or 0)


class TestInTheSender:
    """The sender's use of the finder: which path served its deltas, and its pins."""

    def test_deltas_after_a_full_object_are_served_by_the_page_walk(self, tmp_path: Path) -> None:
        """After the first (full) object is stored, each one-record delta is found by the
        page walk (counted by path), and carries that record alone."""
        store = MemoryStore()
        a = make_syncer("a", tmp_path, store)
        try:
            fill(a)
            a.run_once()
            for i in range(3):
                app_put(a, b"fill-%d" % i, b"changed", 5000 + i)
                a.step(Batch(local=True))
            names = stored(store, "a")
            assert [n.is_delta for n in names] == [False, True, True, True]
            reader = SnapshotReader(store.open(names[-1].name))
            assert [[e[0] for e in es] for _, es in reader.dbis()] == [[b"fill-2"]]
            reg = a.metrics.registry
            deltas = "evsync_change_finder_deltas_total"
            assert _count(reg, deltas, path=pagewalk.PATH_PAGEWALK) == 3
            assert _count(reg, deltas, path=pagewalk.PATH_SCAN) == 0
            assert a.sender.finder is not None
            assert a.sender.finder.pinned_txn == a.lenv.last_txn_id()
        finally:
            a.close()

    def test_a_receiver_pins_its_newest_merge(self, tmp_path: Path) -> None:
        """On an instance whose LMDB changes only by merges, each step that finds
        nothing to upload moves the pin to the LMDB's last txn (LMDB may then reuse the
        pages the merges replaced), and its next local change is a page-walk delta."""
        store = MemoryStore()
        a = make_syncer("a", tmp_path, store)
        b = make_syncer("b", tmp_path, store)
        try:
            fill(a)
            a.run_once()
            app_put(b, b"own", b"v", 10)
            b.run_once()
            finder = b.sender.finder
            assert finder is not None
            for i in range(3):
                app_put(a, b"fill-%d" % i, b"changed", 5000 + i)
                a.step(Batch(local=True))
                b.step(Batch(remote={"a": stored(store, "a")[-1]}))
                assert read_value(b, b"fill-%d" % i) == b"changed"
                assert finder.pinned_txn == b.lenv.last_txn_id()
            app_put(b, b"own", b"v2", 20)
            b.step(Batch(local=True))
            names = stored(store, "b")
            assert names[-1].is_delta
            reader = SnapshotReader(store.open(names[-1].name))
            assert [[e[0] for e in es] for _, es in reader.dbis()] == [[b"own"]]
            deltas = "evsync_change_finder_deltas_total"
            assert _count(b.metrics.registry, deltas, path=pagewalk.PATH_PAGEWALK) == 1
        finally:
            a.close()
            b.close()

    def test_store_retries_release_an_old_pin(self, tmp_path: Path) -> None:
        """In a storage outage, a pin behind the LMDB past its age limit is released and
        the failed delta's own snapshot is not kept (an outage must not pin pages for
        ever); the delta tried in the outage and the one once the bucket is back both
        scan, counted as pin_expired, and the stored one pins afresh."""
        store = MemoryStore()
        a = make_syncer("a", tmp_path, store)
        try:
            fill(a)
            a.run_once()
            finder = a.sender.finder
            assert finder is not None and finder.pinned_txn is not None
            finder.max_pin_age = 0.0
            store.fail = True
            app_put(a, b"fill-1", b"changed", 5000)
            a.step(Batch(local=True))
            assert finder.pinned_txn is None and finder.pending_txn is None
            store.fail = False
            finder.max_pin_age = pagewalk.PIN_MAX_AGE_SECONDS
            a.sender.backoff.succeeded()
            a.step(Batch(local=True))
            assert stored(store, "a")[-1].is_delta
            reg = a.metrics.registry
            fallbacks = "evsync_change_finder_fallbacks_total"
            assert _count(reg, fallbacks, reason=pagewalk.PIN_EXPIRED) == 2
            assert finder.pinned_txn == a.lenv.last_txn_id()
        finally:
            a.close()


def read_value(syncer: Any, key: bytes) -> bytes | None:
    """The application value of ``key`` in the syncer's records DBI."""
    got = read(syncer, key)
    return got[0] if got is not None else None
