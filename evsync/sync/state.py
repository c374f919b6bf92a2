"""The state the receiver and the sender share: what is known of each instance, and which
local txns are evsync's own.

Owned by the loop thread: only it changes these objects. The HTTP thread reads them
for /status and /metrics: plain reads of ints, and of dicts and sets it copies or sorts
(one C-level call each under the GIL, so a change by the loop cannot tear them).

Plain data with small rules (what counts as news, what is pending); no I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from evsync.snapshot.name import SnapshotName

NS = 1_000_000_000


@dataclass
class InstanceState:
    """What this syncer knows about one remote (or its own) instance."""

    newest_seen: SnapshotName | None = None
    merged: SnapshotName | None = None
    merged_at: float | None = None  # wall clock
    lag_seconds: float | None = None  # object timestamp -> merged
    #: names newer than ``merged`` known to exist: the deltas a plan may need
    known: dict[str, SnapshotName] = field(default_factory=dict)
    #: the newest name a plan fell short of once (a listing is tried), then for good
    relisted_for: str | None = None
    #: it stores ``.pb.gz`` copies beside its chain (seen in a listing)
    writes_copies: bool = False
    stuck: str | None = None
    #: an ``.evs.zst`` object of this instance was seen: it is followed through that
    #: chain, and its ``.pb.gz`` copies are not merged (docs/lightningstream.md)
    follows_chain: bool = False
    #: the newest merged object known to be in the bucket (fetched from it, or named by
    #: a listing or an announcement after it was merged from a notification)
    stored: SnapshotName | None = None
    #: objects merged from the notification that carried them and not (yet) known to be
    #: in the bucket, all newer than ``stored``: the position past ``stored`` is
    #: provisional (DESIGN §7)
    provisional: set[str] = field(default_factory=set)
    #: names newer than ``merged`` that a listing, hint or announcement named (not only
    #: a notification that carried them): in the bucket, so merging one confirms it
    #: however its bytes came (DESIGN §7)
    announced: set[str] = field(default_factory=set)


class Peers:
    """Every instance's objects as far as this syncer knows them, its own included.

    The receiver notes names and merges; the sender records its own uploads; the
    startup rules read :attr:`waiting_for`.
    """

    def __init__(self, own_instance: str) -> None:
        self.own = own_instance
        self.instances: dict[str, InstanceState] = {}
        #: objects rejected (corrupt, too large, unmergeable here): never fetched again
        self.bad_objects: set[str] = set()
        #: of those, the ones that are corrupt for everyone (not only too large or
        #: unmergeable here): the cleaner never counts them as an instance's objects
        self.corrupt_objects: set[str] = set()
        #: instances whose newest object (at startup) is not merged yet
        self.waiting_for: set[str] = set()
        #: the newest timestamp of a verified object of this instance (see own_named)
        self.own_newest_ns = 0
        #: called with the provisional names a fallback of the position dropped (DESIGN §7)
        self.on_fallback: Callable[[set[str]], None] = lambda _names: None

    def own_named(self, name: SnapshotName) -> None:
        """A verified object of this instance exists under ``name`` (stored, merged or
        checked): new names must sort after it. Listed names alone do not count: a junk
        object named far ahead must not drag this instance's names along."""
        self.own_newest_ns = max(self.own_newest_ns, name.timestamp_ns)

    def get(self, instance: str) -> InstanceState:
        """The instance's state, created empty on first use."""
        return self.instances.setdefault(instance, InstanceState())

    def note(
        self, instance: str, name: SnapshotName, *, own_done: bool, carried: bool = False
    ) -> bool:
        """Remember that ``name`` exists; True when it is a remote instance's new newest.

        Names at or below the instance's merged position are no news; the own
        instance's names only count until startup is done (``own_done``). ``carried``:
        the name came with a notification's bytes, no proof that the bucket holds it, so
        it never confirms (nor, at or below the position, does anything else).
        """
        if name.name in self.bad_objects:
            return False
        if instance == self.own and own_done:
            return False  # our own uploads; only merged at startup
        st = self.get(instance)
        if name.is_evsync and not st.follows_chain:
            st.follows_chain = True
            _drop_copies(st)
        elif name.is_copy and st.follows_chain:
            return False  # its chain carries the same data
        if st.merged is not None and name.name <= st.merged.name:
            provisional = st.provisional  # replaced, not changed, by a fallback
            if carried or not _behind_provisional(st, name):
                return False
            self.on_fallback(provisional)
        if not carried:
            st.announced.add(name.name)
        if name.name not in st.known:
            # a name not known before may be the base a stuck plan lacked: plan again
            st.stuck = st.relisted_for = None
        st.known[name.name] = name
        if st.newest_seen is None or name.name > st.newest_seen.name:
            st.newest_seen = name
            return instance != self.own
        return False

    def pending(self, *, include_own: bool) -> list[tuple[str, SnapshotName]]:
        """(instance, newest) for every instance with something newer than its position,
        own history first."""
        out = []
        for instance, st in self.instances.items():
            if st.newest_seen is None:
                continue
            if st.merged is not None and st.newest_seen.name <= st.merged.name:
                continue
            if st.stuck == st.newest_seen.name:
                continue  # waits for a newer name (the sender's next full object)
            if instance == self.own and not include_own:
                continue
            out.append((instance, st.newest_seen))
        out.sort(key=lambda item: item[0] != self.own)  # own history first
        return out

    def unmerged(self) -> set[str]:
        """Instances whose newest seen object is beyond what is merged of them."""
        return {
            i
            for i, st in self.instances.items()
            if st.newest_seen is not None
            and (st.merged is None or st.merged.name < st.newest_seen.name)
        }

    def list_failed(self) -> None:
        """A listing failed: a plan that asked for one has not had it yet."""
        for st in self.instances.values():
            st.relisted_for = None

    def forget_newest(self, instance: str, name: SnapshotName) -> None:
        """Drop a name that cannot be merged, so a listing can promote an older one."""
        st = self.instances.get(instance)
        if st is not None:
            st.known.pop(name.name, None)
            st.announced.discard(name.name)
            if st.newest_seen == name:
                st.newest_seen = None

    def drop_if_unknown(self, instance: str) -> bool:
        """Forget an instance of which nothing is merged or known (its only name was
        gone or bad): hints alone must not grow /status. True when it was dropped."""
        st = self.instances.get(instance)
        if (
            st is None
            or instance == self.own
            or instance in self.waiting_for
            or st.merged is not None
            or st.newest_seen is not None
            or st.known
        ):
            return False
        del self.instances[instance]
        return True

    def merged(
        self, instance: str, name: SnapshotName, now_ns: int, *, carried: bool = False
    ) -> InstanceState:
        """``name`` is merged: the instance's position moves to it. ``carried``: its bytes
        came inside a notification, so the position past the last stored one is
        provisional until a listing or an announcement names it (one that named it
        before the merge, in the same drain say, confirms it at once)."""
        if instance == self.own:
            self.own_named(name)  # verified: new names must sort after it
        st = self.get(instance)
        if carried and name.name not in st.announced:
            st.provisional.add(name.name)
        else:
            _confirm(st, name)
        st.merged = name
        st.known = {n: v for n, v in st.known.items() if n > name.name}
        st.announced = {n for n in st.announced if n > name.name}
        st.merged_at = time.time()
        st.lag_seconds = max(0.0, now_ns / NS - name.timestamp_ns / NS)
        self.waiting_for.discard(instance)
        return st

    def stored_own(self, name: SnapshotName) -> None:
        """Our own upload: it is both the newest and the merged object of this instance."""
        own = self.get(self.own)
        own.merged = own.newest_seen = name
        own.follows_chain |= name.is_evsync
        self.own_named(name)

    def others_ns(self, attr: str) -> dict[str, int]:
        """{instance: timestamp (ns)} of the other instances' ``newest_seen`` or ``merged``."""
        out = {}
        for inst, st in list(self.instances.items()):
            name = getattr(st, attr)
            if name is not None and inst != self.own:
                out[inst] = name.timestamp_ns
        return out

    def status(self, now_ns: int) -> dict[str, Any]:
        """Plain data per instance for /status."""
        return {
            inst: {
                "newest_seen": st.newest_seen.name if st.newest_seen else None,
                "newest_seen_age_seconds": (
                    (now_ns - st.newest_seen.timestamp_ns) / NS if st.newest_seen else None
                ),
                "merged": st.merged.name if st.merged else None,
                "merged_age_seconds": (now_ns - st.merged.timestamp_ns) / NS if st.merged else None,
                "lag_seconds": st.lag_seconds,
            }
            for inst, st in sorted(self.instances.items())
        }


def _confirm(st: InstanceState, name: SnapshotName) -> None:
    """``name``, merged, is in the bucket: it is the stored position, and what was merged
    from notifications before it no longer matters."""
    if st.stored is None or name.name > st.stored.name:
        st.stored = name
    st.provisional = {n for n in st.provisional if n > st.stored.name}


def _behind_provisional(st: InstanceState, name: SnapshotName) -> bool:
    """A name at or before the merged position: True when it is news all the same.

    One merged from a notification is confirmed by it. Another one newer than the stored
    position while that position is provisional is an object this receiver never merged
    where its position claims to be past: the sender stored it without the object(s) we
    merged from its notifications (it died before their store and restarted with a
    clock behind them, or re-dumped on the same base). The position falls back to the
    stored one and the plan runs from there; merging again is harmless under
    last-writer-wins, skipping an object would not be.

    A checkpoint is never such a sign: it is named just after its point, a member of the
    chain (the stretch may have passed the checkpoint's name while it was dumped), and
    it holds nothing of that chain's members a receiver at or past the point lacks.
    Stored, it proves its point was stored, so it confirms the provisional names up to
    its point.
    """
    if name.name in st.provisional:
        _confirm(st, name)
        return False
    point_ns = name.checkpoint_of_ns
    if point_ns is not None:
        upto = [n for n in st.provisional if SnapshotName.parse(n).timestamp_ns <= point_ns]
        if upto:
            _confirm(st, SnapshotName.parse(max(upto)))
        return False
    if not st.provisional or (st.stored is not None and name.name <= st.stored.name):
        return False
    dropped = st.provisional
    st.merged, st.provisional = st.stored, set()
    st.known = {n: v for n, v in st.known.items() if n not in dropped}
    if st.newest_seen is not None and st.newest_seen.name in dropped:
        st.newest_seen = max(st.known.values(), key=lambda v: v.name, default=None)
    return True


def _drop_copies(st: InstanceState) -> None:
    """The instance turned out to write ``.evs.zst``: forget the copies noted before."""
    st.known = {n: v for n, v in st.known.items() if not v.is_copy}
    if st.newest_seen is not None and st.newest_seen.is_copy:
        st.newest_seen = max(st.known.values(), key=lambda v: v.name, default=None)


# Merge txns remembered after a local commit that is not uploaded yet (an upload that
# keeps failing); past this many they are forgotten: a delta then carries their merged
# entries too, which is harmless (receivers merge them as any other entry), only larger.
MAX_MERGE_TXNS = 10_000


@dataclass
class TxnLedger:
    """Which local txns need no upload: those up to the last synced one, and evsync's own.

    A merge's txns that directly follow the last synced txn hold no local change, so
    merged remote data is not uploaded again; merge txns after a local commit are kept
    in :attr:`merge_txns`, so a delta leaves their entries out. A delta starts after
    :attr:`last_synced` (see the sender), so only merge txns after it are kept; with
    ``track_merges`` off (receive-only, shadow mode, deltas off: no delta is ever
    written) none are.
    """

    last_synced: int = 0
    #: txns of evsync's own merges after the last synced txn
    merge_txns: set[int] = field(default_factory=set)
    track_merges: bool = True

    def advance(self, txn_ids: Iterable[int]) -> None:
        """Txns that directly follow the last synced txn and hold no local change."""
        for txn_id in txn_ids:
            if txn_id == self.last_synced + 1:
                self.last_synced = txn_id
            else:
                break
        self._forget_synced()

    def merged(self, txn_ids: list[int]) -> None:
        """A merge committed these txns."""
        self.advance(txn_ids)
        if not self.track_merges:
            return
        self.merge_txns.update(t for t in txn_ids if t > self.last_synced)
        if len(self.merge_txns) > MAX_MERGE_TXNS:
            self.merge_txns.clear()

    def synced_up_to(self, txn_id: int) -> None:
        """Everything up to ``txn_id`` is in the bucket (or needs no upload)."""
        self.last_synced = max(self.last_synced, txn_id)
        self._forget_synced()

    def shipped(self, shipped_txn: int) -> None:
        """A stored object covers everything up to ``shipped_txn``: forget older merges."""
        self.merge_txns = {t for t in self.merge_txns if t > shipped_txn}

    def _forget_synced(self) -> None:
        if self.merge_txns and min(self.merge_txns) <= self.last_synced:
            self.merge_txns = {t for t in self.merge_txns if t > self.last_synced}
