"""Find a delta's changes in O(change), not O(database): compare LMDB B+trees by page number."""

# How (DESIGN §7): LMDB is copy-on-write, and while a read txn holds snapshot S_old
# open no page reachable from it is reused. So a page number reachable from both the
# old and the new root of a DBI holds the same content in both, and so does the whole
# subtree below it: descending only where the page numbers differ yields the few leaf
# pages written since S_old. The caller reads just those leaves' entries (through an
# ordinary cursor in S_new) with the same header-txn-id filter as the full scan.
#
# The file format facts used are LMDB 0.9's (mdb.c): page header, node layout, the
# 48-byte MDB_db record, the meta pages. Anything outside them makes :meth:`changed`
# return None, and the caller scans every entry as before.

from __future__ import annotations

import logging
import mmap
import os
import struct
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import lmdb

from evsync.lmdb.env import MDB_DUPSORT, LmdbEnv

log = logging.getLogger(__name__)

#: A snapshot stays pinned at most this long once the LMDB has moved past it (seconds).
#: A pinned snapshot keeps LMDB from reusing the pages freed after it, so while stores
#: fail (a long storage outage) the file would grow with every write; past this age the
#: pin is released and the next delta scans every entry instead.
PIN_MAX_AGE_SECONDS = 300.0

# --- LMDB 0.9 file format (mdb.c) ---
MDB_MAGIC = 0xBEEFC0DE
MDB_DATA_VERSION = 1
PAGE_HEADER_SIZE = 16  # pgno u64, pad u16, flags u16, lower u16, upper u16
P_BRANCH = 0x01
P_LEAF = 0x02
P_INVALID = 0xFFFFFFFFFFFFFFFF  # the root of an empty DBI
F_BIGDATA = 0x01  # the value lives on overflow pages: fine, the cursor reads it
F_SUBDATA = 0x02  # a sub-DBI record: never in a data DBI
F_DUPDATA = 0x04  # a DUPSORT sub-page or sub-DB
NODE_KSIZE_OFFSET = 6
NODE_KEY_OFFSET = 8
META_PAGES = 2
# MDB_meta after the page header: magic u32, version u32, address ptr, mapsize size_t,
# then two 48-byte MDB_db records (free DBI, main DBI), last_pg u64, txnid u64.
_META = struct.Struct("=IIQQ")
_META_PSIZE_OFFSET = PAGE_HEADER_SIZE + _META.size  # the free DBI's md_pad holds psize
_META_TXNID_OFFSET = PAGE_HEADER_SIZE + _META.size + 2 * 48 + 8
# MDB_db: pad u32, flags u16, depth u16, branch/leaf/overflow pages u64, entries u64, root u64
DB_RECORD = struct.Struct("=IHHQQQQQ")
_PAGE_HEAD = struct.Struct("=QHHHH")
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")
_BRANCH_NODE = struct.Struct("=HHH")  # lo, hi, flags: the child page number's 48 bits

# Fallback reasons, the label values of evsync_change_finder_fallbacks_total.
NO_PIN = "no_pin"  # no snapshot pinned yet (first delta, or after a store failed)
PIN_EXPIRED = "pin_expired"  # released after PIN_MAX_AGE_SECONDS
PIN_AHEAD = "pin_ahead"  # the pin is newer than the delta's base txn
PIN_LOST = "pin_lost"  # py-lmdb closed the pinned txn (this process resized the map)
META = "meta"  # meta magic, version or page size not LMDB 0.9's
PAGE = "page"  # a page header (number, flags, bounds) outside what it understands
DUPSORT = "dupsort"
SUBPAGE = "subpage"  # a leaf node with a sub-page or sub-DB
EMPTY_DBI = "empty_dbi"
DBI_SET = "dbi_set"  # a DBI appeared or was dropped since the pin
FILE_SHRANK = "file_shrank"
FILE_REPLACED = "file_replaced"  # data.mdb is another file than the one mapped
PLATFORM = "platform"  # not a little-endian 64-bit host (the layouts above assume it)
FORCED_SCAN = "forced_scan"  # $EVSYNC_BENCH_FORCE_SCAN (below)
REASONS = (
    NO_PIN,
    PIN_EXPIRED,
    PIN_AHEAD,
    PIN_LOST,
    META,
    PAGE,
    DUPSORT,
    SUBPAGE,
    EMPTY_DBI,
    DBI_SET,
    FILE_SHRANK,
    FILE_REPLACED,
    PLATFORM,
    FORCED_SCAN,
)
# For benchmarks only (benchmarks/propagation.py compares the two paths in one run): a
# daemon started with this variable set to 1 finds every delta's changes by the scan.
FORCE_SCAN_VAR = "EVSYNC_BENCH_FORCE_SCAN"
FORCE_SCAN = os.environ.get(FORCE_SCAN_VAR) == "1"
# Which path served a delta: the label values of evsync_change_finder_deltas_total.
PATH_PAGEWALK = "pagewalk"
PATH_SCAN = "scan"


class FallbackError(Exception):
    """Something outside what the finder understands: scan instead."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Observer(Protocol):
    """Told which path served each delta and why the finder fell back."""

    def change_finder_served(self, path: str) -> None:
        """A delta's changes were found by ``path`` (pagewalk or scan)."""

    def change_finder_fallback(self, reason: str) -> None:
        """The finder could not serve a delta, for ``reason``."""


@dataclass(frozen=True)
class Root:
    """Where one DBI's B+tree starts in one snapshot."""

    pgno: int
    depth: int
    flags: int


@dataclass(frozen=True)
class Leaf:
    """A leaf page of S_new not in S_old: its first key and how many entries it holds."""

    first_key: bytes
    entries: int


class _Pin:
    """An open read txn holding one snapshot, with each synced DBI's root in it."""

    def __init__(self, txn: Any, roots: dict[bytes, Root], now: float) -> None:
        self.txn = txn
        self.txn_id = int(txn.id())
        self.roots = roots
        #: when the LMDB was last seen still at this snapshot (holding it cost nothing
        #: until then)
        self.fresh_at = now

    def alive(self) -> bool:
        """False once py-lmdb has closed the txn: it does so to every open txn when this
        process resizes the map, and LMDB may then reuse the snapshot's pages."""
        try:
            self.txn.id()
        except lmdb.Error:
            return False
        return True

    def release(self) -> None:
        self.txn.abort()


def data_file(lenv: LmdbEnv) -> Path:
    """The path of an env's data file."""
    path = Path(lenv.cfg.path)
    return path if lenv.cfg.options.no_subdir else path / "data.mdb"


def read_roots(txn: Any, names: Iterable[bytes]) -> dict[bytes, Root]:
    """Each named DBI's root, depth and flags in ``txn``'s snapshot (its main-DBI record)."""
    roots = {}
    for name in names:
        record = txn.get(name)
        if record is None or len(record) != DB_RECORD.size:
            raise FallbackError(DBI_SET)
        _pad, flags, depth, _b, _l, _o, _entries, root = DB_RECORD.unpack(record)
        roots[name] = Root(root, depth, flags)
    return roots


class _Pages:
    """Pages of data.mdb through a read-only mmap, remapped when the file grows."""

    def __init__(self, path: Path, psize: int) -> None:
        self.path = path
        self.psize = psize
        self._fd = os.open(path, os.O_RDONLY)
        st = os.fstat(self._fd)
        self._ino = (st.st_dev, st.st_ino)
        self._size = 0
        self.map: mmap.mmap | None = None
        try:
            self._remap(st.st_size)
            self._check_meta()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
            self.map = None
        os.close(self._fd)

    def _remap(self, size: int) -> None:
        if self.map is not None:
            self.map.close()
            self.map = None
        self._size = size - size % self.psize
        if self._size:
            self.map = mmap.mmap(self._fd, self._size, prot=mmap.PROT_READ)

    def refresh(self) -> None:
        """Follow the file: a grown file is remapped, a shrunk or replaced one falls back."""
        try:
            st = os.stat(self.path)
        except OSError:
            raise FallbackError(FILE_REPLACED) from None
        if (st.st_dev, st.st_ino) != self._ino:
            raise FallbackError(FILE_REPLACED)
        size = st.st_size - st.st_size % self.psize
        if size < self._size:
            raise FallbackError(FILE_SHRANK)
        if size > self._size:
            self._remap(st.st_size)

    def _check_meta(self) -> None:
        if self._size < META_PAGES * self.psize or self.map is None:
            raise FallbackError(META)
        for pgno in range(META_PAGES):
            base = pgno * self.psize
            magic, version, _addr, _mapsize = _META.unpack_from(self.map, base + PAGE_HEADER_SIZE)
            psize = _U32.unpack_from(self.map, base + _META_PSIZE_OFFSET)[0]
            if magic != MDB_MAGIC or version != MDB_DATA_VERSION or psize != self.psize:
                raise FallbackError(META)

    def page(self, pgno: int, want: int) -> tuple[int, int]:
        """The offset of page ``pgno`` in the map and its node count; it must be a page
        of kind ``want`` (P_BRANCH or P_LEAF) with at least one node."""
        base = pgno * self.psize
        if base + self.psize > self._size:
            self.refresh()  # a commit after our last look grew the file
            if base + self.psize > self._size:
                raise FallbackError(PAGE)
        assert self.map is not None
        head_pgno, _pad, flags, lower, upper = _PAGE_HEAD.unpack_from(self.map, base)
        if (
            head_pgno != pgno
            or flags != want
            or lower < PAGE_HEADER_SIZE + 2
            or lower > upper
            or upper > self.psize
        ):
            raise FallbackError(PAGE)
        return base, (lower - PAGE_HEADER_SIZE) >> 1

    def children(self, pgnos: list[int]) -> list[int]:
        """The child page numbers of branch pages, in key order."""
        mm = self.map
        out: list[int] = []
        for pgno in pgnos:
            base, count = self.page(pgno, P_BRANCH)
            assert mm is not None
            for offset in struct.unpack_from(f"={count}H", mm, base + PAGE_HEADER_SIZE):
                lo, hi, flags = _BRANCH_NODE.unpack_from(mm, base + offset)
                out.append(lo | hi << 16 | flags << 32)
        return out

    def leaf(self, pgno: int) -> Leaf:
        """A leaf page's first key and entry count; a node with a sub-page falls back."""
        mm = self.map
        base, count = self.page(pgno, P_LEAF)
        assert mm is not None
        offsets = struct.unpack_from(f"={count}H", mm, base + PAGE_HEADER_SIZE)
        for offset in offsets:
            if _U16.unpack_from(mm, base + offset + 4)[0] & (F_SUBDATA | F_DUPDATA):
                raise FallbackError(SUBPAGE)
        node = base + offsets[0]
        ksize = _U16.unpack_from(mm, node + NODE_KSIZE_OFFSET)[0]
        if offsets[0] + NODE_KEY_OFFSET + ksize > self.psize:
            raise FallbackError(PAGE)
        return Leaf(bytes(mm[node + NODE_KEY_OFFSET : node + NODE_KEY_OFFSET + ksize]), count)


def changed_leaves(pages: _Pages, old: Root, new: Root) -> list[Leaf]:
    """The leaves of the tree at ``new`` that are not pages of the tree at ``old``, in
    key order. Pages are compared height by height (a page number shared by both
    trees is one page, with the same subtree below it, so both sides drop it)."""
    old_level, new_level = [old.pgno], [new.pgno]
    old_height, new_height = old.depth, new.depth
    if min(old_height, new_height) < 1:
        raise FallbackError(PAGE)
    while True:
        if old_height > new_height:
            old_level, old_height = pages.children(old_level), old_height - 1
            continue
        if new_height > old_height:
            new_level, new_height = pages.children(new_level), new_height - 1
            continue
        shared = set(old_level).intersection(new_level)
        if shared:
            new_level = [p for p in new_level if p not in shared]
            old_level = [p for p in old_level if p not in shared]
        if not new_level:
            return []
        if new_height == 1:
            return [pages.leaf(p) for p in new_level]
        new_level, new_height = pages.children(new_level), new_height - 1
        old_level, old_height = pages.children(old_level), old_height - 1


class ChangeFinder:
    """The changed leaves of each synced DBI since a pinned snapshot; one per LmdbEnv,
    used by the syncer thread only.

    The sender's life cycle: :meth:`offer` the snapshot each dump was taken from (it
    becomes *pending*); :meth:`stored` once its object is stored (the pending snapshot
    becomes the pin, the old pin is released) or :meth:`discard` when the store failed
    (the old pin stays, up to its age limit); :meth:`expire` whenever it looks at the
    LMDB, so a pin is released after ``max_pin_age`` seconds behind the LMDB.
    """

    def __init__(
        self,
        lenv: LmdbEnv,
        *,
        observer: Observer | None = None,
        max_pin_age: float = PIN_MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lenv = lenv
        self.observer = observer
        self.max_pin_age = max_pin_age
        self.clock = clock
        self._pin: _Pin | None = None
        self._pending: _Pin | None = None
        self._pages: _Pages | None = None
        self._expired = False
        self._logged: set[str] = set()

    # ------------------------------------------------------------ pins

    @property
    def pinned_txn(self) -> int | None:
        """The txn id of the pinned snapshot, or None."""
        return self._pin.txn_id if self._pin is not None else None

    @property
    def pending_txn(self) -> int | None:
        """The txn id of the snapshot waiting for its store, or None."""
        return self._pending.txn_id if self._pending is not None else None

    def offer(self, txn: Any, names: Iterable[bytes]) -> None:
        """The snapshot of ``txn`` (a dump's read txn, about to close) becomes pending: a
        second read txn is opened on it, kept only if it sees the same txn."""
        self._drop_pending()
        self._pending = self._snapshot_at(int(txn.id()), names)

    def _snapshot_at(self, txn_id: int, names: Iterable[bytes]) -> _Pin | None:
        """A new read txn on the LMDB's snapshot with each DBI's root, or None unless it
        sees exactly ``txn_id`` (a commit came in between: the older pin stays), the map
        grew under us, or a DBI is gone."""
        try:
            held = self.lenv.env.begin()
        except lmdb.Error:
            return None
        try:
            if int(held.id()) == txn_id:
                return _Pin(held, read_roots(held, names), self.clock())
        except FallbackError:
            pass
        held.abort()
        return None

    def stored(self) -> None:
        """The pending snapshot's object is stored (or needed none): it becomes the pin."""
        if self._pending is None:
            return
        if not self._pending.alive():
            self._drop_pending()  # the map was resized meanwhile; the old pin is too
            return
        self._drop_pin()
        self._pin, self._pending = self._pending, None
        self._expired = False

    def discard(self) -> None:
        """The pending snapshot's object was not stored: forget it, keep the pin."""
        self._drop_pending()

    def follow(self, synced_txn: int) -> None:
        """Every txn up to ``synced_txn`` needs no upload (evsync's own merges on a
        receiver that wrote nothing): move the pin up to the LMDB's snapshot there.

        A reader pinned behind those merges keeps every page they replaced, so each
        merge would take fresh pages and the file would grow until the pin ages out
        (with ~6 pages a one-record merge, 24 MB per 1,000 merges). Nothing the next
        delta needs is lost: its entries all come after ``synced_txn``."""
        pin = self._pin
        if pin is None or pin.txn_id >= synced_txn or self._pending is not None:
            return
        followed = self._snapshot_at(synced_txn, pin.roots)
        if followed is not None:
            self._drop_pin()
            self._pin = followed

    def expire(self, last_txn_id: int | None = None) -> None:
        """Release snapshots held longer than the limit behind an LMDB that moved on; a
        pin still at ``last_txn_id`` costs nothing to hold, so its clock restarts."""
        now = self.clock()
        for attr in ("_pin", "_pending"):
            pin: _Pin | None = getattr(self, attr)
            if pin is None:
                continue
            if last_txn_id is not None and pin.txn_id >= last_txn_id:
                pin.fresh_at = now
            elif now - pin.fresh_at > self.max_pin_age:
                log.info(
                    "lmdb %s: released the snapshot of txn %d, pinned for over %.0fs; "
                    "the next delta scans every entry",
                    self.lenv.name,
                    pin.txn_id,
                    self.max_pin_age,
                )
                pin.release()
                setattr(self, attr, None)
                self._expired = self._expired or attr == "_pin"

    def close(self) -> None:
        """Release both snapshots and the map (before the env closes)."""
        self._drop_pin()
        self._drop_pending()
        if self._pages is not None:
            self._pages.close()
            self._pages = None

    def _drop_pin(self) -> None:
        if self._pin is not None:
            self._pin.release()
            self._pin = None

    def _drop_pending(self) -> None:
        if self._pending is not None:
            self._pending.release()
            self._pending = None

    # ------------------------------------------------------------ finding

    def changed(
        self, txn: Any, names: list[bytes], *, since_txn: int
    ) -> dict[bytes, list[Leaf]] | None:
        """Per DBI of ``names``, the leaves of ``txn``'s snapshot written after the pin;
        every entry with a header txn id after ``since_txn`` is in one of them. None:
        scan instead (the reason is logged once and told to the observer)."""
        self.expire(int(txn.id()))
        try:
            found = self._changed(txn, names, since_txn)
        except FallbackError as fb:
            self._fell_back(fb.reason)
            return None
        if self.observer is not None:
            self.observer.change_finder_served(PATH_PAGEWALK)
        return found

    def _changed(self, txn: Any, names: list[bytes], since_txn: int) -> dict[bytes, list[Leaf]]:
        if FORCE_SCAN:
            raise FallbackError(FORCED_SCAN)
        if sys.byteorder != "little" or sys.maxsize < 2**32:
            raise FallbackError(PLATFORM)
        pin = self._pin
        if pin is None:
            raise FallbackError(PIN_EXPIRED if self._expired else NO_PIN)
        if not pin.alive():
            self._drop_pin()
            raise FallbackError(PIN_LOST)
        # Entries in pages shared with the pin were written at or before its txn; only
        # when none of those can pass the filter is skipping them exact.
        if pin.txn_id > since_txn:
            raise FallbackError(PIN_AHEAD)
        if set(names) != set(pin.roots):
            raise FallbackError(DBI_SET)
        new_roots = read_roots(txn, names)
        pages = self._open_pages()
        out: dict[bytes, list[Leaf]] = {}
        for name in names:
            old, new = pin.roots[name], new_roots[name]
            if (old.flags | new.flags) & MDB_DUPSORT:
                raise FallbackError(DUPSORT)
            if P_INVALID in (old.pgno, new.pgno):
                raise FallbackError(EMPTY_DBI)
            if old.pgno != new.pgno:
                out[name] = changed_leaves(pages, old, new)
        return out

    def _open_pages(self) -> _Pages:
        psize = int(self.lenv.env.stat()["psize"])
        if self._pages is None or self._pages.psize != psize:
            if self._pages is not None:
                self._pages.close()
                self._pages = None
            try:
                self._pages = _Pages(data_file(self.lenv), psize)
            except OSError:
                raise FallbackError(FILE_REPLACED) from None
        else:
            self._pages.refresh()
        return self._pages

    def _fell_back(self, reason: str) -> None:
        if reason not in self._logged:
            self._logged.add(reason)
            log.info(
                "lmdb %s: deltas find their changes by a full scan this time (%s); "
                "counted in evsync_change_finder_fallbacks_total, logged once",
                self.lenv.name,
                reason,
            )
        if self.observer is not None:
            self.observer.change_finder_fallback(reason)
            self.observer.change_finder_served(PATH_SCAN)
        if reason in (FILE_SHRANK, FILE_REPLACED, META, PAGE) and self._pages is not None:
            self._pages.close()  # mapped afresh next time
            self._pages = None
        if reason in (FILE_SHRANK, FILE_REPLACED):
            self._drop_pin()  # its pages may be gone with the old file: pin afresh
