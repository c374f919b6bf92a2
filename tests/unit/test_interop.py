"""Lightning Stream interop rules on names (issue 17): which .pb.gz objects are merged."""

from __future__ import annotations

from evsync.config import LightningStreamConfig
from evsync.snapshot.name import COPY_EXTRA, SnapshotName, delta_extra
from evsync.sync import chain
from evsync.sync.interop import hint_filter, name_filter
from evsync.sync.state import Peers
from evsync.triggers.base import Hint, HintQueue

NS = 1_000_000_000
T = 1_700_000_000 * NS
DB = "main"


def evs(instance: str, ts: int, base: int | None = None) -> SnapshotName:
    """An .evs.zst name; a delta on ``base`` when given."""
    extras = (delta_extra(base),) if base is not None else ()
    return SnapshotName.build(DB, instance, ts, extras=extras)


def pb(instance: str, ts: int, *, copy: bool = False) -> SnapshotName:
    """A .pb.gz name; ``copy``: evsync's marked copy."""
    return SnapshotName.build(
        DB, instance, ts, extras=(COPY_EXTRA,) if copy else (), ext="pb.gz"
    )


class TestLsInstances:
    """An instance with only .pb.gz objects is an LS instance: its newest is merged."""

    def test_newest_is_the_whole_plan(self) -> None:
        """LS never merges older snapshots: the plan is the newest .pb.gz alone."""
        peers = Peers("me")
        names = [pb("ls-1", T + i * NS) for i in range(3)]
        for n in names:
            peers.note("ls-1", n, own_done=True)
        [(instance, newest)] = peers.pending(include_own=False)
        assert (instance, newest) == ("ls-1", names[-1])
        st = peers.instances["ls-1"]
        assert chain.plan(st.known.values(), None, newest) == [names[-1]]
        assert not st.follows_chain

    def test_a_copy_alone_is_merged(self) -> None:
        """An instance whose only objects are evsync copies (its .evs.zst gone, say) is
        read as an LS instance."""
        peers = Peers("me")
        copy = pb("a", T, copy=True)
        peers.note("a", copy, own_done=True)
        assert peers.pending(include_own=False) == [("a", copy)]


class TestInstancesWritingBothFormats:
    """An instance with .evs.zst objects is followed through its chain; its copies are
    not merged again."""

    def test_copies_after_the_chain_are_no_news(self) -> None:
        """Once a .evs.zst name is known, a newer copy does not become the newest."""
        peers = Peers("me")
        full = evs("a", T)
        peers.note("a", full, own_done=True)
        assert not peers.note("a", pb("a", T + NS, copy=True), own_done=True)
        assert peers.pending(include_own=False) == [("a", full)]

    def test_copies_noted_first_are_dropped(self) -> None:
        """A listing sorted by name may name a copy before the chain: the copy is
        forgotten as soon as the chain shows up, and the plan follows the chain."""
        peers = Peers("me")
        copy = pb("a", T + 2 * NS, copy=True)
        full, delta = evs("a", T), evs("a", T + 3 * NS, base=T)
        peers.note("a", copy, own_done=True)
        peers.note("a", full, own_done=True)
        peers.note("a", delta, own_done=True)
        st = peers.instances["a"]
        assert copy.name not in st.known and st.newest_seen == delta
        assert chain.plan(st.known.values(), None, delta) == [full, delta]

    def test_newest_copy_dropped_leaves_newest_chain_object(self) -> None:
        """With the copy the newest name, dropping it promotes the chain's newest."""
        peers = Peers("me")
        peers.note("a", pb("a", T + 5 * NS, copy=True), own_done=True)
        full = evs("a", T)
        peers.note("a", full, own_done=True)
        assert peers.instances["a"].newest_seen == full

    def test_ls_objects_of_a_rolled_back_instance_are_merged(self) -> None:
        """An instance that went back to LS writes unmarked .pb.gz: those are news."""
        peers = Peers("me")
        peers.note("a", evs("a", T), own_done=True)
        back = pb("a", T + 10 * NS)
        assert peers.note("a", back, own_done=True)
        st = peers.instances["a"]
        assert chain.plan(st.known.values(), None, back) == [back]

    def test_own_store_marks_the_own_chain(self) -> None:
        """This instance's own .evs.zst uploads make it follow its chain, so its own
        copies in a listing are never checked as another writer's."""
        peers = Peers("me")
        peers.stored_own(evs("me", T))
        assert peers.instances["me"].follows_chain


class TestFilters:
    """Which formats are read: both by default, per the lightningstream section."""

    def test_default_reads_both(self) -> None:
        """Default: .evs.zst and .pb.gz (copies too, for the listing)."""
        accepts = name_filter(LightningStreamConfig())
        assert accepts(evs("a", T)) and accepts(pb("a", T)) and accepts(pb("a", T, copy=True))

    def test_read_false_drops_pb_gz(self) -> None:
        """``read: false``: only evsync's own format."""
        accepts = name_filter(LightningStreamConfig(read=False))
        assert accepts(evs("a", T)) and not accepts(pb("a", T))

    def test_only_reads_only_pb_gz(self) -> None:
        """``only`` imitates LS: .evs.zst does not exist for it, copies are snapshots."""
        accepts = name_filter(LightningStreamConfig(only=True))
        assert not accepts(evs("a", T)) and accepts(pb("a", T, copy=True))

    def test_hints_never_carry_copies(self) -> None:
        """A copy's hint would hide its instance's delta hints in the coalescing queue;
        LS objects still come as hints."""
        queue = HintQueue(DB, accepts=hint_filter(LightningStreamConfig()))
        assert not queue.put(Hint("mqtt", name=pb("a", T + NS, copy=True).name))
        assert queue.put(Hint("mqtt", name=evs("a", T).name))
        assert queue.put(Hint("mqtt", name=pb("ls-1", T).name))
        assert set(queue.wait(0).remote) == {"a", "ls-1"}

    def test_an_ls_imitation_hears_copies(self) -> None:
        """``only``: copies are the snapshots it reads, so their hints count."""
        queue = HintQueue(DB, accepts=hint_filter(LightningStreamConfig(only=True)))
        assert not queue.put(Hint("mqtt", name=evs("a", T).name))
        assert queue.put(Hint("mqtt", name=pb("a", T, copy=True).name))
