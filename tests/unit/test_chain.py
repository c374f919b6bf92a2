"""Delta chains: which objects a receiver merges, and when a sender must write a full object."""

from __future__ import annotations

from evsync.config import DeltasConfig
from evsync.snapshot.name import SnapshotName, delta_extra
from evsync.sync.chain import SenderChain, plan

S = 1_000_000_000
T0 = 1_800_000_000 * S


def full(t: int, instance: str = "a") -> SnapshotName:
    return SnapshotName.build("main", instance, T0 + t * S)


def delta(t: int, base: int, instance: str = "a") -> SnapshotName:
    return SnapshotName.build("main", instance, T0 + t * S, extras=(delta_extra(T0 + base * S),))


def pos(t: int) -> int:
    return T0 + t * S


class TestPlan:
    def test_a_full_newest_is_merged_alone(self) -> None:
        """The newest object being full, nothing older is needed."""
        names = [full(1), delta(2, 1), full(3)]
        assert plan(names, None, full(3)) == [full(3)]

    def test_a_delta_on_the_position_is_merged_alone(self) -> None:
        """A delta whose base is what the receiver merged last is applied by itself."""
        assert plan([], pos(2), delta(3, 2)) == [delta(3, 2)]

    def test_a_delta_whose_base_is_older_than_the_position_still_applies(self) -> None:
        """'On top of its base or newer': a base before the position is enough."""
        assert plan([], pos(5), delta(6, 4)) == [delta(6, 4)]

    def test_missed_deltas_are_merged_in_order(self) -> None:
        """A receiver at 2 that sees delta 5 merges 3, 4, 5 (from the known names) in order."""
        names = [full(1), delta(2, 1), delta(3, 2), delta(4, 3), delta(5, 4)]
        assert plan(names, pos(2), delta(5, 4)) == [delta(3, 2), delta(4, 3), delta(5, 4)]

    def test_a_new_receiver_starts_from_the_full_object(self) -> None:
        """Nothing merged yet: the chain back to its full object, full first."""
        names = [full(0), full(1), delta(2, 1), delta(3, 2)]
        assert plan(names, None, delta(3, 2)) == [full(1), delta(2, 1), delta(3, 2)]

    def test_a_missing_base_falls_back_to_the_newest_full_object(self) -> None:
        """Delta 3's base (2) is gone: the newest full object after the position and the
        deltas that build on it are merged; the plan stops short of the newest."""
        names = [full(1), delta(3, 2), full(4), delta(5, 4), delta(7, 6), delta(8, 7)]
        assert plan(names, pos(0), delta(8, 7)) == [full(4), delta(5, 4)]

    def test_a_missing_base_without_a_full_object_continues_from_the_position(self) -> None:
        """With no full object after the position, deltas building on it still apply."""
        names = [delta(3, 2), delta(5, 4)]
        assert plan(names, pos(2), delta(5, 4)) == [delta(3, 2)]

    def test_nothing_reachable_gives_an_empty_plan(self) -> None:
        """A new receiver that knows only a delta of a vanished chain merges nothing."""
        assert plan([], None, delta(5, 4)) == []

    def test_other_instances_names_are_ignored(self) -> None:
        """Another instance's object at the base timestamp is not part of the chain."""
        names = [full(1, instance="b")]
        assert plan(names, None, delta(2, 1)) == []


class TestSenderChain:
    def make(self, **kw: object) -> tuple[SenderChain, list[float]]:
        now = [0.0]
        chain = SenderChain(DeltasConfig(**kw), clock=lambda: now[0])  # type: ignore[arg-type]
        return chain, now

    def test_the_first_upload_is_full(self) -> None:
        """With no stored object yet there is no base: no delta."""
        chain, _ = self.make()
        assert not chain.delta_allowed()

    def test_deltas_follow_a_full_object(self) -> None:
        """After a full object, deltas are allowed and each becomes the next base."""
        chain, _ = self.make()
        chain.stored_full(pos(1), 10, 1000)
        assert chain.delta_allowed()
        chain.stored_delta(pos(2), 12, 10)
        assert chain.base_ns == pos(2) and chain.shipped_txn == 12

    def test_the_chain_length_is_bounded(self) -> None:
        """After max_chain deltas the next upload is full."""
        chain, _ = self.make(max_chain=2)
        chain.stored_full(pos(1), 1, 1000)
        chain.stored_delta(pos(2), 2, 1)
        assert chain.delta_allowed()
        chain.stored_delta(pos(3), 3, 1)
        assert not chain.delta_allowed()

    def test_the_chain_bytes_are_bounded(self) -> None:
        """Deltas adding up to more than max_chain_ratio of the full object end the chain."""
        chain, _ = self.make(max_chain_ratio=0.5)
        chain.stored_full(pos(1), 1, 1000)
        chain.stored_delta(pos(2), 2, 400)
        assert chain.delta_allowed()
        chain.stored_delta(pos(3), 3, 200)
        assert not chain.delta_allowed()

    def test_an_old_full_object_ends_the_chain(self) -> None:
        """full_interval after the last full object, the next upload is full again."""
        chain, now = self.make(full_interval=60.0)
        chain.stored_full(pos(1), 1, 1000)
        now[0] = 59.0
        assert chain.delta_allowed()
        now[0] = 60.0
        assert not chain.delta_allowed()

    def test_disabled_means_always_full(self) -> None:
        """deltas.enabled: false keeps Lightning Stream's full-object-per-change behaviour."""
        chain, _ = self.make(enabled=False)
        chain.stored_full(pos(1), 1, 1000)
        assert not chain.delta_allowed()

    def test_a_broken_chain_needs_a_full_object(self) -> None:
        """broken() forgets the base, so the next upload is full."""
        chain, _ = self.make()
        chain.stored_full(pos(1), 1, 1000)
        chain.broken()
        assert not chain.delta_allowed()
