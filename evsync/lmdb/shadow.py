"""Shadow mode (DESIGN §6): header-carrying copies of a non-native LMDB's DBIs, for PowerDNS 4.7.

An application that does not write the native header (PowerDNS ≤ 4.7) gives evsync
no timestamps and no tombstones. Shadow mode keeps, for each data DBI ``X``, a DBI
``_sync_shadow_X`` holding the same keys with native headers, and moves data both ways:

- **main → shadow** after a local change, in one write txn: a sorted two-way walk of
  both DBIs; an unchanged value keeps its timestamp, a new or changed value gets the
  detection time, a vanished key becomes a tombstone. Because the LMDB watcher wakes
  evsync within milliseconds of a commit, that time is close to the commit time.
- **remote → shadow → main** on a merge, in *one* write txn that first runs main → shadow
  (so a local change made since is stamped, never overwritten), then merges the
  remote entries into the shadow by the usual rule, and applies every shadow entry
  the merge changed to main. Main therefore always ends equal to the shadow's live
  entries; only the changed keys are touched, DUPSORT DBIs included.

DUPSORT DBIs need ``dupsort_hack: true``: their pairs get the dupsort_hack_v1 key
transform in the shadow and in objects. Only INTEGERKEY carries over to a shadow DBI
(as LS); a shadow of a DUPSORT DBI gets no flags, since encoded keys are not integers.

Timestamps differ from LS in one careful way: a change found while running gets
``max(now, previous timestamp + 1)``, so a clock step backwards cannot make a
change lose to the value it replaced. The startup seed (timestamp 1 ns, as LS)
is exempt: whatever changed while evsync was down must lose to remote data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import lmdb

from evsync.errors import (
    CorruptObjectError,
    HeaderError,
    LmdbError,
    PermanentLmdbError,
    TransformError,
)
from evsync.lmdb.dupsort import TRANSFORM_NAME, decode_key, encode_pairs
from evsync.lmdb.env import (
    MDB_DUPFIXED,
    MDB_DUPSORT,
    MDB_INTEGERKEY,
    MDB_REVERSEKEY,
    SHADOW_PREFIX,
    LmdbEnv,
    is_sync_dbi,
)
from evsync.lmdb.header import (
    BLOCK_SIZE,
    FLAG_DELETED,
    HEADER_SIZE,
    HEADER_STRUCT,
    HEADER_VERSION,
    encode_header,
    parse_header,
)
from evsync.lmdb.merge import MergeResult, merge_entry
from evsync.snapshot.base import DbiInfo, Entry

log = logging.getLogger(__name__)

# The timestamp of the startup seed: anything found then loses to any remote write.
SEED_TIMESTAMP_NS = 1

_Pair = tuple[bytes, bytes]


def shadow_name(dbi: bytes) -> bytes:
    """The shadow DBI of a data DBI (LS's naming)."""
    return SHADOW_PREFIX + dbi


def shadow_flags(main_flags: int) -> int:
    """Flags of a new shadow DBI: only INTEGERKEY carries over, and not for DUPSORT."""
    if main_flags & MDB_DUPSORT:
        return 0
    return main_flags & MDB_INTEGERKEY


def _label(name: bytes) -> str:
    return name.decode(errors="replace")


def _sort_key(flags: int) -> Callable[[bytes], Any] | None:
    """How LMDB orders a shadow DBI's keys: native unsigned integers or plain bytes."""
    if flags & MDB_INTEGERKEY:
        return lambda k: int.from_bytes(k, "little")
    return None


def _join(
    main: Iterable[_Pair], shadow: Iterator[_Pair], order: Callable[[bytes], Any] | None
) -> Iterator[tuple[bytes, bytes | None, bytes | None]]:
    """Walk two sorted streams together: (key, main value or None, shadow value or None).

    Equal keys are by far the common case, so they are tested first and the sort
    order (needed only for INTEGERKEY DBIs) is computed only when keys differ.
    """
    s = next(shadow, None)
    for key, value in main:
        while s is not None:
            skey = s[0]
            if skey == key:
                yield key, value, s[1]
                s = next(shadow, None)
                break
            if (order(skey) < order(key)) if order else skey < key:
                yield skey, None, s[1]  # vanished from main
                s = next(shadow, None)
                continue
            yield key, value, None  # new in main
            break
        else:
            yield key, value, None
    while s is not None:
        yield s[0], None, s[1]
        s = next(shadow, None)


@dataclass
class _DbiPair:
    """A data DBI and its shadow, opened in the current write txn."""

    name: bytes
    main: Any
    shadow: Any
    flags: int
    # DUPFIXED: the size every value must have (LMDB would silently pad or cut others)
    fixed_size: int | None = None

    @property
    def transformed(self) -> bool:
        return bool(self.flags & MDB_DUPSORT)


@dataclass
class ShadowUpdate:
    """What one main → shadow pass found."""

    dbis: int = 0
    changed: int = 0  # new or changed values
    deleted: int = 0  # keys that vanished from main
    skipped: bool = False  # nothing was committed to main since the last pass

    @property
    def changes(self) -> int:
        """New, changed and vanished keys together."""
        return self.changed + self.deleted


class Shadow:
    """Main ↔ shadow for one LMDB; used only by its syncer thread.

    ``synced_txn`` is the txn id whose main content the shadow reflects, so a pass
    can be skipped when nothing was committed since. ``dirty`` says the shadow holds
    local changes that no upload has carried yet.
    """

    def __init__(self, lenv: LmdbEnv, *, dupsort_hack: bool) -> None:
        self.lenv = lenv
        self.dupsort_hack = dupsort_hack
        self.synced_txn = 0
        self.dirty = True  # a restart uploads once, as in native mode
        self.seed_pending = False

    # ------------------------------------------------------------ main -> shadow

    def update_from_main(self, timestamp_ns: int, *, seed: bool = False) -> ShadowUpdate:
        """Run main -> shadow in its own write txn (see the module docstring).

        With ``seed`` the pass stamps at :data:`SEED_TIMESTAMP_NS`; a seed that fails
        stays pending, so the next pass (here or in :meth:`merge`) is the seed.
        """
        self.seed_pending |= seed
        wrote = False
        with self.lenv.begin(write=True) as txn:
            txn_id = int(txn.id())
            if not self.seed_pending and txn_id - 1 == self.synced_txn:
                return ShadowUpdate(skipped=True)
            update, wrote = self._main_to_shadow(txn, timestamp_ns)
        self._note_committed(txn_id, wrote)
        if update.changes:
            self.dirty = True
        return update

    def note_own_txn(self, txn_id: int) -> None:
        """A txn of the syncer's that touched no data DBI keeps the shadow in step with main."""
        if txn_id - 1 == self.synced_txn:
            self.synced_txn = txn_id

    def _note_committed(self, txn_id: int, wrote: bool) -> None:
        # LMDB reuses the id of a txn that wrote nothing, so that id is not ours.
        self.synced_txn = txn_id if wrote else txn_id - 1
        self.seed_pending = False

    def _main_to_shadow(self, txn: Any, timestamp_ns: int) -> tuple[ShadowUpdate, bool]:
        seed = self.seed_pending
        if seed:
            timestamp_ns = SEED_TIMESTAMP_NS
        update = ShadowUpdate()
        wrote = False
        for name in self.lenv.dbi_names(txn):
            main = self.lenv.open_dbi(name, txn)
            flags = self.lenv.dbi_flags(txn, main)
            self._check_supported(name, flags)
            sname = shadow_name(name)
            created = not self.lenv.has_dbi(txn, sname)
            shadow = self.lenv.open_dbi(sname, txn, create_flags=shadow_flags(flags))
            wrote |= created
            pair = _DbiPair(name, main, shadow, flags)
            changes = self._diff(txn, pair, timestamp_ns=timestamp_ns, seed=seed, update=update)
            if changes:
                txn.cursor(db=shadow).putmulti(changes)
                wrote = True
            update.dbis += 1
        return update, wrote

    def _check_supported(self, name: bytes, flags: int) -> None:
        # permanent: the same DBI fails the same way until the config changes
        if flags & MDB_DUPSORT and not self.dupsort_hack:
            raise PermanentLmdbError(
                f"lmdb {self.lenv.name}: DBI {_label(name)!r} is DUPSORT; set dupsort_hack: true "
                "to sync it"
            )
        if flags & MDB_REVERSEKEY:
            raise PermanentLmdbError(
                f"lmdb {self.lenv.name}: DBI {_label(name)!r} uses MDB_REVERSEKEY, which shadow "
                "mode does not support"
            )

    def _diff(
        self, txn: Any, pair: _DbiPair, *, timestamp_ns: int, seed: bool, update: ShadowUpdate
    ) -> list[_Pair]:
        """The shadow puts that make the shadow's live entries equal main."""
        name, txn_id = pair.name, int(txn.id())
        main_pairs: Iterator[_Pair] = txn.cursor(db=pair.main).iternext(keys=True, values=True)
        if pair.transformed:
            main_pairs = encode_pairs(name, main_pairs)
        shadow_pairs = txn.cursor(db=pair.shadow).iternext(keys=True, values=True)
        changes: list[_Pair] = []
        live_header = encode_header(timestamp_ns, txn_id, 0)
        order = _sort_key(shadow_flags(pair.flags))
        unpack = HEADER_STRUCT.unpack_from
        for key, value, old in _join(main_pairs, shadow_pairs, order):
            if old is None:
                if value is not None:
                    changes.append((key, live_header + value))
                    update.changed += 1
                continue
            # the header's fast path; anything odd goes through parse_header for its error
            if len(old) >= HEADER_SIZE:
                old_ts, _txn, version, flags, _reserved, extra = unpack(old)
                offset = HEADER_SIZE + BLOCK_SIZE * extra
            if len(old) < HEADER_SIZE or version != HEADER_VERSION or len(old) < offset:
                self._raise_corrupt_shadow(name, key, old)
            deleted = flags & FLAG_DELETED
            if value is None:
                if not deleted:
                    ts = timestamp_ns if seed else max(timestamp_ns, old_ts + 1)
                    changes.append((key, encode_header(ts, txn_id, FLAG_DELETED)))
                    update.deleted += 1
            elif deleted or len(old) - offset != len(value) or not old.endswith(value):
                ts = timestamp_ns if seed else max(timestamp_ns, old_ts + 1)
                changes.append((key, encode_header(ts, txn_id, 0) + value))
                update.changed += 1
        return changes

    def _raise_corrupt_shadow(self, name: bytes, key: bytes, value: bytes) -> NoReturn:
        try:
            parse_header(value)
        except HeaderError as exc:
            raise LmdbError(
                f"lmdb {self.lenv.name}: shadow of DBI {_label(name)!r} key {key[:64]!r}: "
                f"{exc} (run `evsync drop-shadow` to rebuild it)"
            ) from None
        raise AssertionError("unreachable: the value parsed")

    # ------------------------------------------------------------ remote -> shadow -> main

    def merge(
        self,
        dbis: Iterable[tuple[DbiInfo, Iterable[Entry]]],
        *,
        timestamp_ns: int,
        deleted_cutoff_ns: int = 0,
        create_flags: Callable[[DbiInfo], int] | None = None,
    ) -> tuple[MergeResult, ShadowUpdate]:
        """Merge an object's DBIs through the shadow, all in one write txn.

        Returns the merge counts and what the preceding main → shadow pass found.
        ``result.txn_ids`` holds the txn only when it carried no local change, so the
        syncer can count it as already synced. A malformed transformed key raises
        CorruptObjectError; the txn is then aborted and the LMDB is unchanged.
        """
        result = MergeResult()
        create = create_flags or (lambda info: info.flags)
        t0 = time.monotonic()
        with self.lenv.begin(write=True) as txn:
            txn_id = int(txn.id())
            update = ShadowUpdate(skipped=True)
            wrote = False
            if self.seed_pending or txn_id - 1 != self.synced_txn:
                update, wrote = self._main_to_shadow(txn, timestamp_ns)
            for info, entries in dbis:
                wrote |= self._merge_dbi(
                    txn, info, entries, cutoff=deleted_cutoff_ns, create=create, result=result
                )
        self._note_committed(txn_id, wrote)
        result.txns = 1
        result.longest_txn_seconds = time.monotonic() - t0
        if update.changes:
            self.dirty = True
        elif wrote:
            result.txn_ids.append(txn_id)
        return result, update

    def _merge_dbi(
        self,
        txn: Any,
        info: DbiInfo,
        entries: Iterable[Entry],
        *,
        cutoff: int,
        create: Callable[[DbiInfo], int],
        result: MergeResult,
    ) -> bool:
        name = info.name
        if is_sync_dbi(name):
            log.warning(
                "lmdb %s: ignoring remote DBI %r (reserved _sync prefix)", self.lenv.name, name
            )
            return False
        transformed = info.transform == TRANSFORM_NAME
        if transformed and not self.dupsort_hack:
            log.error(
                "lmdb %s: skipping remote DBI %r: it uses %s; set dupsort_hack: true",
                self.lenv.name,
                _label(name),
                TRANSFORM_NAME,
            )
            return False
        wrote = False
        if self.lenv.has_dbi(txn, name):
            main = self.lenv.open_dbi(name, txn)
            flags = self.lenv.dbi_flags(txn, main)
        else:
            flags = create(info)
            if transformed:
                flags |= MDB_DUPSORT
            self._check_supported(name, flags)
            main = self.lenv.open_dbi(name, txn, create_flags=flags)
            result.dbis_created.append(name)
            wrote = True
        if bool(flags & MDB_DUPSORT) != transformed:
            log.error(
                "lmdb %s: skipping remote DBI %r: local DBI is %sDUPSORT but the object's is not",
                self.lenv.name,
                _label(name),
                "" if flags & MDB_DUPSORT else "not ",
            )
            return wrote
        sname = shadow_name(name)
        wrote |= not self.lenv.has_dbi(txn, sname)
        shadow = self.lenv.open_dbi(sname, txn, create_flags=shadow_flags(flags))
        pair = _DbiPair(name, main, shadow, flags)
        if flags & MDB_DUPFIXED:
            first = txn.cursor(db=main)
            pair.fixed_size = len(first.value()) if first.first() else None
        seen, written = self._merge_entries(txn, pair, entries, cutoff=cutoff)
        # counted here, not taken from info.entries: a pb.gz object's DBI counts are
        # known only once the DBI has been read
        result.entries += seen
        result.written += written
        return wrote or written > 0

    def _merge_entries(
        self, txn: Any, pair: _DbiPair, entries: Iterable[Entry], *, cutoff: int
    ) -> tuple[int, int]:
        """Merge the entries into the pair; (entries seen, entries written)."""
        seen = written = 0
        name, shadow, txn_id = pair.name, pair.shadow, int(txn.id())
        get, put = txn.get, txn.put
        for entry in entries:
            seen += 1
            key = entry[0]
            old = get(key, db=shadow)
            try:
                new = merge_entry(old, entry, txn_id, cutoff)
            except HeaderError as exc:
                raise LmdbError(
                    f"lmdb {self.lenv.name}: shadow of DBI {_label(name)!r} key {key[:64]!r}: "
                    f"{exc} (run `evsync drop-shadow` to rebuild it)"
                ) from None
            if new is None:
                continue
            try:
                put(key, new, db=shadow)
                self._apply_to_main(txn, pair, entry, old)
            except lmdb.BadValsizeError as exc:
                raise CorruptObjectError(
                    f"DBI {_label(name)!r} key {key[:64]!r} does not fit the local DBI: {exc}"
                ) from None
            written += 1
        return seen, written

    def _apply_to_main(self, txn: Any, pair: _DbiPair, entry: Entry, old: bytes | None) -> None:
        """Make main agree with one changed shadow entry (main matched the old one)."""
        key, main, name = entry[0], pair.main, pair.name
        deleted = bool(entry[2] & FLAG_DELETED)
        if not pair.transformed:
            if deleted:
                txn.delete(key, db=main)
            else:
                txn.put(key, entry[3], db=main)
            return
        try:
            main_key = decode_key(key)
        except TransformError as exc:
            raise CorruptObjectError(f"DBI {_label(name)!r}: {exc}") from None
        if old is not None:
            header = parse_header(old)
            if not header.deleted:
                txn.delete(main_key, old[header.offset :], db=main)
        if not deleted:
            value = entry[3]
            if pair.flags & MDB_DUPFIXED:
                if pair.fixed_size is None:
                    pair.fixed_size = len(value)
                elif len(value) != pair.fixed_size:
                    raise CorruptObjectError(
                        f"DBI {_label(name)!r} key {main_key[:64]!r}: a {len(value)}-byte value "
                        f"does not fit the local DBI (DUPFIXED, {pair.fixed_size}-byte values)"
                    )
            txn.put(main_key, value, db=main, dupdata=True)


def drop_shadows(lenv: LmdbEnv) -> list[bytes]:
    """Delete every ``_sync_shadow_*`` DBI; returns their names. The daemon must be stopped."""
    with lenv.begin() as txn:
        names = [n for n in lenv.dbi_names(txn, include_sync=True) if n.startswith(SHADOW_PREFIX)]
    if not names:
        return []
    with lenv.begin(write=True) as txn:
        for name in names:
            handle = lenv.open_dbi(name, txn)
            txn.drop(handle, delete=True)
    for name in names:
        lenv.forget_dbi(name)
    return names
