"""Lightning Stream interop (docs/lightningstream.md): which object names this instance reads.

Pure rules on names, no I/O. By default evsync reads both formats: ``.evs.zst`` (its own,
followed as a delta chain) and ``.pb.gz`` (LS's full snapshots, newest per instance).
``lightningstream.read: false`` drops ``.pb.gz``; ``lightningstream.only`` (tests and
migration rehearsals) reads nothing else, as a real LS instance would.

A ``.pb.gz`` that evsync writes beside its chain carries the copy marker
(:data:`~evsync.snapshot.name.COPY_EXTRA`); :class:`~evsync.sync.state.Peers` skips the
copies of an instance whose ``.evs.zst`` objects it knows, and hints never carry copies
(the listing finds one when it is all that an instance has left).
"""

from __future__ import annotations

from collections.abc import Callable

from evsync.config import LightningStreamConfig
from evsync.snapshot.name import SnapshotName

NameFilter = Callable[[SnapshotName], bool]


def _every(_name: SnapshotName) -> bool:
    return True


def _only_ls(name: SnapshotName) -> bool:
    return name.is_ls


def _no_ls(name: SnapshotName) -> bool:
    return not name.is_ls


def name_filter(cfg: LightningStreamConfig) -> NameFilter:
    """True for the names of the formats this instance reads (listings and hints)."""
    if cfg.only:
        return _only_ls
    if not cfg.read:
        return _no_ls
    return _every


def hint_filter(cfg: LightningStreamConfig) -> NameFilter:
    """:func:`name_filter`, and never a copy (except for an LS imitation, which cannot
    tell one): a copy's hint would hide the hints of its instance's deltas, which the
    queue coalesces to the newest name per instance."""
    accepts = name_filter(cfg)
    if cfg.only:
        return accepts
    return lambda name: accepts(name) and not name.is_copy
