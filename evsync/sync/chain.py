"""Delta chains (DESIGN §7): when a sender writes a full object, and what a receiver merges.

A sender's objects form chains: a full object, then deltas, each naming the object
it builds on (``__D<base timestamp>``). A receiver stands at a *position* per
instance — the timestamp of the last object of that instance it merged — and asks
:func:`plan` which objects take it to the instance's newest. Merging is
last-writer-wins per record, so an object applied on top of a newer state than its
base is harmless; what must not happen is skipping a delta, which would lose its
changes until the next full object.

Pure rules on names and sizes, no I/O: the sender keeps a :class:`SenderChain`, the
receiver calls :func:`plan`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from evsync.config import DeltasConfig
from evsync.snapshot import format_for
from evsync.snapshot.name import SnapshotName

# A delta is collected in memory before it is written (its header counts entries);
# past this many changed entries a full object is cheaper to build and to apply.
MAX_DELTA_ENTRIES = 100_000


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
    #: timestamps of the objects a receiver needs to reach ``base_ns``: the last full
    #: object and the deltas after it
    members: list[int] = field(default_factory=list)

    def delta_allowed(self) -> bool:
        """True when the next upload may be a delta."""
        p = self.policy
        return (
            p.enabled
            and self.base_ns is not None
            and self.deltas < p.max_chain
            and self.delta_bytes <= p.max_chain_ratio * self.full_bytes
            and self.clock() - self.full_at < p.full_interval
        )

    def stored_full(self, timestamp_ns: int, txn_id: int, size: int) -> None:
        """A full object was stored: a new chain starts."""
        self.base_ns, self.shipped_txn = timestamp_ns, txn_id
        self.full_bytes, self.full_at = size, self.clock()
        self.deltas = self.delta_bytes = 0
        self.members = [timestamp_ns]

    def stored_delta(self, timestamp_ns: int, txn_id: int, size: int) -> None:
        """A delta was stored on top of the chain."""
        self.base_ns, self.shipped_txn = timestamp_ns, txn_id
        self.deltas += 1
        self.delta_bytes += size
        self.members.append(timestamp_ns)

    def broken(self) -> None:
        """The next upload must be full (e.g. a store failed half-way or state was lost)."""
        self.base_ns = None
        self.members = []


def plan(
    names: Iterable[SnapshotName], position_ns: int | None, newest: SnapshotName
) -> list[SnapshotName]:
    """Objects to merge, oldest first, to take a receiver at ``position_ns`` (None: nothing
    merged yet) towards ``newest``; ``names`` are the instance's objects known to exist.

    The chain is walked back from ``newest`` until a delta's base is at or before the
    position, or a full object is reached. When a base is missing, the newest full
    object newer than the position is the restart point, followed by the deltas that
    build on it in turn; the plan then ends short of ``newest`` (the caller may list
    again, or wait for the sender's next full object).
    """
    by_ts = {
        n.timestamp_ns: n
        for n in names
        if n.instance == newest.instance and format_for(n) is not None
    }
    by_ts[newest.timestamp_ns] = newest
    chain: list[SnapshotName] = []
    current: SnapshotName | None = newest
    while current is not None:
        chain.append(current)
        base = current.delta_base_ns
        if base is None:
            return chain[::-1]  # reached a full object
        if position_ns is not None and base <= position_ns:
            return chain[::-1]  # builds on what is merged already
        current = by_ts.get(base)
    return _restart(by_ts, position_ns, newest)


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
        out.append(fulls[-1])
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
