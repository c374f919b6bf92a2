"""Delta chains (DESIGN §7): when a sender writes a full object, and what a receiver merges.

A sender's objects form chains: a full object, then deltas, each naming the object
it builds on (``__D<base timestamp>``). Beside the chain, off its critical path, the
sender writes *checkpoints*: full objects named ``__A<point>``, whose name timestamp was
taken right after the chain member ``point`` (the chain's tip when the checkpoint
began), so no other object of the instance sorts between the two; a checkpoint is
stored only once every change it holds is in a stored delta as well. A receiver stands
at a *position* per instance — the timestamp of the last object of that instance it
merged, or of a checkpoint it stepped over — and asks :func:`plan` which objects take
it to the instance's newest. Merging is last-writer-wins per record, so an object
applied on top of a newer state than its base is harmless; what must not happen is
skipping a delta, which would lose its changes until the next full object.

The checkpoint rule: a receiver at or past a checkpoint's point already holds every
change of the instance's own that the checkpoint holds (the rest are in the deltas
after the point, which it follows anyway), so it steps over the checkpoint without
fetching it (:func:`covered`; the receiver first makes sure the bucket holds it: a name
from a hint proves nothing); a receiver behind the point (or new) restarts from the
newest checkpoint and follows the deltas after its point.

Pure rules on names and sizes, no I/O: the sender keeps a :class:`SenderChain`, the
receiver calls :func:`plan`.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from evsync.config import DeltasConfig
from evsync.snapshot import format_for
from evsync.snapshot.name import SnapshotName

# A delta is collected in memory before it is written (its header counts entries);
# past this many changed entries a full object is cheaper to build and to apply.
MAX_DELTA_ENTRIES = 100_000
# While checkpoints fail, the chain may outgrow deltas.max_chain (and the bytes ratio)
# by this factor before a full object is written on the syncer thread after all, so the
# chain a new receiver follows stays bounded (while they succeed, each one restarts the
# count).
CHECKPOINT_OVERDUE_FACTOR = 4


@dataclass
class SenderChain:
    """What the sender has stored since its last full object; owned by the syncer thread."""

    policy: DeltasConfig
    clock: Callable[[], float] = time.monotonic
    base_ns: int | None = None  # timestamp of the last stored object: the next delta's base
    shipped_txn: int = 0  # the LMDB txn the last stored object reflects
    full_bytes: int = 0
    full_at: float = 0.0
    deltas: int = 0
    delta_bytes: int = 0
    #: entries of the newest full object (or checkpoint): whether a checkpoint pays off
    full_entries: int = 0
    #: timestamps of the objects a receiver needs to reach ``base_ns``: the newest full
    #: object or checkpoint, and the deltas after it
    members: list[int] = field(default_factory=list)
    #: counts the chain's restarts (full objects, breaks): a checkpoint begun on an
    #: earlier chain is of no use to this one
    epoch: int = 0
    _sizes: dict[int, int] = field(default_factory=dict)  # delta timestamp -> size

    def delta_allowed(self) -> bool:
        """True when the next upload may be a delta without a checkpoint: the chain since
        the newest full object is within the policy's bounds."""
        return self._within(1)

    def checkpoint_due(self) -> bool:
        """True when the chain has outgrown the policy's bounds: a full object is due (a
        checkpoint, when the sender writes them)."""
        return self.policy.enabled and self.base_ns is not None and not self.delta_allowed()

    def delta_allowed_beside_checkpoint(self) -> bool:
        """True when the next upload may be a delta while checkpoints catch the chain up:
        within :data:`CHECKPOINT_OVERDUE_FACTOR` times the bounds (the age bound is the
        checkpoint's to keep)."""
        return self._within(CHECKPOINT_OVERDUE_FACTOR, age=False)

    def _within(self, factor: int, *, age: bool = True) -> bool:
        p = self.policy
        return (
            p.enabled
            and self.base_ns is not None
            and self.deltas < p.max_chain * factor
            and self.delta_bytes <= p.max_chain_ratio * self.full_bytes * factor
            and (not age or self.clock() - self.full_at < p.full_interval)
        )

    def stored_full(self, timestamp_ns: int, txn_id: int, size: int, entries: int = 0) -> None:
        """A full object was stored: a new chain starts."""
        self.base_ns, self.shipped_txn = timestamp_ns, txn_id
        self.full_bytes, self.full_at, self.full_entries = size, self.clock(), entries
        self.deltas = self.delta_bytes = 0
        self.members = [timestamp_ns]
        self._sizes = {}
        self.epoch += 1

    def stored_delta(self, timestamp_ns: int, txn_id: int, size: int) -> None:
        """A delta was stored on top of the chain."""
        self.base_ns, self.shipped_txn = timestamp_ns, txn_id
        self.deltas += 1
        self.delta_bytes += size
        self.members.append(timestamp_ns)
        self._sizes[timestamp_ns] = size

    def stored_checkpoint(
        self, timestamp_ns: int, size: int, entries: int, began_at: float
    ) -> None:
        """A checkpoint named ``timestamp_ns`` (begun at ``began_at`` on this chain's clock,
        on this epoch) was stored: a receiver now needs it and the deltas after it, and
        the bounds count from it. The chain itself goes on (its base is unchanged)."""
        after = [ts for ts in self.members if ts > timestamp_ns]
        self.members = [timestamp_ns, *after]
        self._sizes = {ts: self._sizes[ts] for ts in after if ts in self._sizes}
        self.deltas = len(after)
        self.delta_bytes = sum(self._sizes.values())
        self.full_bytes, self.full_at, self.full_entries = size, began_at, entries

    def broken(self) -> None:
        """The next upload must be full (e.g. a store failed half-way or state was lost)."""
        self.base_ns = None
        self.members = []
        self._sizes = {}
        self.epoch += 1


def covered(name: SnapshotName, position_ns: int | None) -> bool:
    """True for a checkpoint whose point the position has reached: the receiver holds what
    it would bring of its instance's own changes, and steps over it without a fetch."""
    point = name.checkpoint_of_ns
    return point is not None and position_ns is not None and point <= position_ns


def plan(
    names: Iterable[SnapshotName], position_ns: int | None, newest: SnapshotName
) -> list[SnapshotName]:
    """Objects to merge, oldest first, to take a receiver at ``position_ns`` (None: nothing
    merged yet) towards ``newest``; ``names`` are the instance's objects known to exist.
    A checkpoint in the plan that :func:`covered` says the receiver's position (when its
    turn comes) has reached is stepped over, not fetched; the position moves to it.

    The chain is walked back from ``newest`` until a delta's base is at or before the
    position, or a full object is reached. A receiver behind the position a delta builds
    on restarts from the newest full ``.evs.zst`` object (a checkpoint, typically) named
    between that base and the delta, when there is one. When a base is missing, the
    newest full object newer than the position is the restart point, followed by the
    deltas that build on it in turn; the plan then ends short of ``newest`` (the caller
    may list again, or wait for the sender's next full object).
    """
    by_ts = {
        n.timestamp_ns: n
        for n in names
        if n.instance == newest.instance and format_for(n) is not None
    }
    by_ts[newest.timestamp_ns] = newest
    fulls = sorted(ts for ts, n in by_ts.items() if n.is_evsync and not n.is_delta)
    chain: list[SnapshotName] = []
    current: SnapshotName | None = newest
    while current is not None:
        chain.append(current)
        if covered(current, position_ns):
            return chain[::-1]  # a checkpoint the receiver steps over
        base = current.delta_base_ns
        if base is None:
            return chain[::-1]  # reached a full object
        if position_ns is not None and base <= position_ns:
            return chain[::-1]  # builds on what is merged already
        restart = _newest_between(fulls, base, current.timestamp_ns)
        if restart is not None:
            chain.append(by_ts[restart])  # a checkpoint nearer than walking back further
            return chain[::-1]
        current = by_ts.get(base)
    return _restart(by_ts, position_ns, newest)


def _newest_between(sorted_ts: list[int], low: int, high: int) -> int | None:
    """The largest of ``sorted_ts`` in [low, high), or None."""
    i = bisect.bisect_left(sorted_ts, high) - 1
    return sorted_ts[i] if i >= 0 and sorted_ts[i] >= low else None


def _restart(
    by_ts: dict[int, SnapshotName], position_ns: int | None, newest: SnapshotName
) -> list[SnapshotName]:
    """From the newest full object after the position (or the position itself), every
    delta that builds on what came before it, in time order."""
    floor = -1 if position_ns is None else position_ns
    after = [by_ts[ts] for ts in sorted(by_ts) if floor < ts <= newest.timestamp_ns]
    fulls = [n for n in after if n.delta_base_ns is None]
    out: list[SnapshotName] = []
    reached = position_ns
    if fulls:
        out.append(fulls[-1])  # a checkpoint the position covers is stepped over
        reached = fulls[-1].timestamp_ns
        after = [n for n in after if n.timestamp_ns > reached]
    if reached is None:
        return out
    for name in after:
        base = name.delta_base_ns
        if base is not None and base <= reached:
            out.append(name)
            reached = name.timestamp_ns
    return out
