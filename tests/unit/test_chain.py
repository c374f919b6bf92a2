"""Delta chains: which objects a receiver merges, and when a sender must write a full object."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from evsync.config import DeltasConfig
from evsync.snapshot.name import SnapshotName, checkpoint_extra, delta_extra
from evsync.sync.chain import CHECKPOINT_OVERDUE_FACTOR, SenderChain, covered, plan

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


def checkpoint(t: int, point: int, instance: str = "a") -> SnapshotName:
    return SnapshotName.build(
        "main", instance, T0 + t * S, extras=(checkpoint_extra(T0 + point * S),)
    )


class TestCheckpointPlan:
    """Checkpoints (DESIGN §7): named right after the chain's tip ``point`` when they
    began, stored later; the deltas after ``point`` go on regardless."""

    def test_a_caught_up_receiver_steps_over_the_newest_checkpoint(self) -> None:
        """At the checkpoint's point, the checkpoint is the whole plan and is covered:
        stepped over, not fetched."""
        names = [full(1), delta(2, 1), checkpoint(3, 2)]
        steps = plan(names, pos(2), checkpoint(3, 2))
        assert steps == [checkpoint(3, 2)]
        assert covered(steps[0], pos(2))

    def test_a_receiver_past_the_point_follows_the_deltas_only(self) -> None:
        """Deltas stored while the checkpoint was dumped sort after it; a receiver on them
        never meets the checkpoint."""
        names = [full(1), delta(2, 1), checkpoint(3, 2), delta(4, 2), delta(5, 4), delta(6, 5)]
        assert plan(names, pos(4), delta(6, 5)) == [delta(5, 4), delta(6, 5)]

    def test_a_receiver_at_the_point_takes_the_first_delta_after_it(self) -> None:
        """The first delta after a checkpoint builds on the point, not on the checkpoint."""
        names = [full(1), delta(2, 1), checkpoint(3, 2), delta(4, 2)]
        assert plan(names, pos(2), delta(4, 2)) == [delta(4, 2)]

    def test_a_new_receiver_restarts_from_the_newest_checkpoint(self) -> None:
        """Nothing merged: the newest checkpoint and the deltas after its point, not the
        whole chain back to its first full object."""
        names = [full(1), delta(2, 1), checkpoint(3, 2), delta(4, 2), delta(5, 4)]
        assert plan(names, None, delta(5, 4)) == [checkpoint(3, 2), delta(4, 2), delta(5, 4)]

    def test_a_lagging_receiver_restarts_from_the_checkpoint(self) -> None:
        """Behind the checkpoint's point: the checkpoint, then the deltas after its point."""
        names = [full(1), delta(2, 1), delta(3, 2), checkpoint(4, 3), delta(5, 3), delta(6, 5)]
        assert plan(names, pos(1), delta(6, 5)) == [checkpoint(4, 3), delta(5, 3), delta(6, 5)]

    def test_the_newest_of_several_checkpoints_is_the_restart(self) -> None:
        """An older checkpoint the cleaner has not removed yet is not fetched."""
        names = [full(1), checkpoint(2, 1), delta(3, 1), delta(4, 3), checkpoint(5, 4), delta(6, 4)]
        assert plan(names, None, delta(6, 4)) == [checkpoint(5, 4), delta(6, 4)]

    def test_a_missing_base_restarts_from_a_covered_checkpoint_without_a_fetch(self) -> None:
        """With a delta gone, the restart point may be a checkpoint the position already
        covers: it is stepped over and the deltas after it follow."""
        names = [checkpoint(3, 2), delta(4, 2), delta(6, 5)]
        steps = plan(names, pos(2), delta(6, 5))
        assert steps == [checkpoint(3, 2), delta(4, 2)]
        assert covered(steps[0], pos(2))

    def test_a_full_object_after_a_checkpoint_restarts_the_chain(self) -> None:
        """A full object written on the syncer thread (chain restarted) wins over an
        older checkpoint."""
        names = [full(1), checkpoint(2, 1), delta(3, 1), full(4), delta(5, 4)]
        assert plan(names, None, delta(5, 4)) == [full(4), delta(5, 4)]

    def test_covered_needs_a_checkpoint_and_a_position(self) -> None:
        """Only a checkpoint can be covered, and only by a position at or past its point."""
        assert not covered(full(3), pos(9))
        assert not covered(delta(3, 2), pos(9))
        assert not covered(checkpoint(3, 2), None)
        assert not covered(checkpoint(3, 2), pos(1))
        assert covered(checkpoint(3, 2), pos(2))


@dataclass
class _Obj:
    name: SnapshotName
    content: frozenset[int]  # the local changes it carries
    shipped: int  # chain members: every change up to this one is in the chain up to it


class _SenderModel:
    """A sender on a tick clock: changes, deltas, full objects, and checkpoints that
    begin after the tip, take their snapshot later and are stored once the chain holds
    every change of that snapshot (as evsync.sync.sender does)."""

    def __init__(self) -> None:
        self.tick = 0
        self.changes = 0
        self.shipped = 0
        self.tip: int | None = None
        self.objects: dict[int, _Obj] = {}
        self.ckpt: tuple[int, int, int | None] | None = None  # (ts, point, snapshot)

    def _ts(self) -> int:
        self.tick += 1
        return self.tick

    def step(self, op: str) -> None:
        if op == "change":
            self.changes += 1
        elif op == "delta" and self.tip is not None and self.changes > self.shipped:
            t = self._ts()
            content = frozenset(range(self.shipped + 1, self.changes + 1))
            self.objects[t] = _Obj(delta(t, self.tip), content, self.changes)
            self.shipped, self.tip = self.changes, t
        elif op == "full" or (op == "delta" and self.tip is None):
            t = self._ts()
            self.objects[t] = _Obj(full(t), frozenset(range(1, self.changes + 1)), self.changes)
            self.shipped, self.tip, self.ckpt = self.changes, t, None
        elif op == "ckpt_begin" and self.ckpt is None and self.tip is not None:
            self.ckpt = (self._ts(), self.tip, None)
        elif op == "ckpt_snapshot" and self.ckpt is not None and self.ckpt[2] is None:
            self.ckpt = (self.ckpt[0], self.ckpt[1], self.changes)
        elif op == "ckpt_store" and self.ckpt is not None:
            t, point, snap = self.ckpt
            if snap is not None and self.shipped >= snap:
                content = frozenset(range(1, snap + 1))
                self.objects[t] = _Obj(checkpoint(t, point), content, -1)
                self.ckpt = None


_OPS = st.sampled_from(
    ["change", "change", "delta", "delta", "full", "ckpt_begin", "ckpt_snapshot", "ckpt_store"]
)


class TestCheckpointPlanAgainstAModel:
    """plan() against a model sender: what a receiver holds after following a plan."""

    @staticmethod
    def run(
        model: _SenderModel, start: int | None, known: list[int]
    ) -> tuple[int | None, set[int], list[SnapshotName]]:
        """A receiver at ``start`` (holding the least that position guarantees) follows
        the plan towards the newest object: (position, changes held, names fetched)."""
        held: set[int] = set()
        if start is not None:
            obj = model.objects[start]
            point = obj.name.checkpoint_of_ns
            at = start if point is None else (point - T0) // S
            held = set(range(1, model.objects[at].shipped + 1))
        newest = model.objects[max(model.objects)].name
        names = [model.objects[t].name for t in known] + [newest]
        position = None if start is None else pos(start)
        fetched: list[SnapshotName] = []
        if position is not None and position >= newest.timestamp_ns:
            return position, held, fetched  # nothing pending (Peers.pending)
        for name in plan(names, position, newest):
            if not covered(name, position):
                fetched.append(name)
                held |= model.objects[(name.timestamp_ns - T0) // S].content
            position = name.timestamp_ns
        return position, held, fetched

    @given(st.lists(_OPS, min_size=1, max_size=60), st.data())
    @settings(max_examples=400, deadline=None)
    def test_a_plan_never_loses_a_change_and_never_fetches_a_covered_checkpoint(
        self, ops: list[str], data: st.DataObject
    ) -> None:
        """Whatever the receiver's position and whichever objects are gone, after the plan
        it holds every change of every chain member up to its new position; a checkpoint
        whose point it had reached is never fetched."""
        model = _SenderModel()
        model.step("full")
        for op in ops:
            model.step(op)
        stamps = sorted(model.objects)
        start = data.draw(st.none() | st.sampled_from(stamps))
        known = data.draw(st.lists(st.sampled_from(stamps), unique=True))
        position, held, fetched = self.run(model, start, known)
        for t, obj in model.objects.items():
            if obj.shipped >= 0 and position is not None and pos(t) <= position:
                assert obj.content <= held, f"lost changes of {obj.name}"
        start_pos = None if start is None else pos(start)
        for name in fetched:
            point = name.checkpoint_of_ns
            assert point is None or start_pos is None or point > start_pos, f"fetched {name}"

    @given(st.lists(_OPS, min_size=1, max_size=60), st.data())
    @settings(max_examples=400, deadline=None)
    def test_with_every_object_present_the_plan_reaches_the_newest_with_one_full_at_most(
        self, ops: list[str], data: st.DataObject
    ) -> None:
        """Nothing deleted: every receiver reaches the newest object, fetching at most one
        full object; one at or past the newest checkpoint's point fetches none."""
        model = _SenderModel()
        model.step("full")
        for op in ops:
            model.step(op)
        stamps = sorted(model.objects)
        start = data.draw(st.none() | st.sampled_from(stamps))
        position, _held, fetched = self.run(model, start, stamps)
        assert position == pos(stamps[-1])
        fulls = [n for n in fetched if not n.is_delta]
        assert len(fulls) <= 1
        newest_full = model.objects[max(t for t, o in model.objects.items() if not o.name.is_delta)]
        caught_up = newest_full.name.checkpoint_of_ns or newest_full.name.timestamp_ns
        if start is not None and pos(start) >= caught_up:
            assert fulls == [], "a receiver at the newest full object's point fetched a full"


class TestSenderChainCheckpoints:
    """SenderChain bookkeeping with checkpoints: the chain goes on, its bounds count from
    the newest checkpoint."""

    def make(self, **kw: object) -> tuple[SenderChain, list[float]]:
        now = [0.0]
        chain = SenderChain(DeltasConfig(**kw), clock=lambda: now[0])  # type: ignore[arg-type]
        return chain, now

    def test_a_checkpoint_is_due_when_the_chain_outgrows_its_bounds(self) -> None:
        """Past max_chain deltas a full object is due; deltas may go on beside it up to
        the overdue factor."""
        chain, _ = self.make(max_chain=2, max_chain_ratio=100)
        chain.stored_full(pos(1), 1, 1000, entries=5000)
        chain.stored_delta(pos(2), 2, 1)
        assert not chain.checkpoint_due()
        chain.stored_delta(pos(3), 3, 1)
        assert chain.checkpoint_due() and not chain.delta_allowed()
        assert chain.delta_allowed_beside_checkpoint()
        for t in range(4, 4 + 2 * CHECKPOINT_OVERDUE_FACTOR - 2):
            chain.stored_delta(pos(t), t, 1)
        assert not chain.delta_allowed_beside_checkpoint()

    def test_a_stored_checkpoint_keeps_the_chain_and_restarts_the_bounds(self) -> None:
        """The base stays the chain's tip; members become the checkpoint and the deltas
        stored after it; counts and bytes are those deltas'."""
        chain, now = self.make(max_chain=2, max_chain_ratio=100)
        chain.stored_full(pos(1), 1, 1000)
        chain.stored_delta(pos(2), 2, 10)
        chain.stored_delta(pos(3), 3, 10)
        epoch = chain.epoch
        # the checkpoint began at the tip (3) and was named 4; deltas 5 and 6 followed
        chain.stored_delta(pos(5), 5, 7)
        chain.stored_delta(pos(6), 6, 8)
        now[0] = 30.0
        chain.stored_checkpoint(pos(4), 900, entries=5000, began_at=20.0)
        assert chain.epoch == epoch and chain.base_ns == pos(6) and chain.shipped_txn == 6
        assert chain.members == [pos(4), pos(5), pos(6)]
        assert (chain.deltas, chain.delta_bytes, chain.full_bytes) == (2, 15, 900)
        assert (chain.full_at, chain.full_entries) == (20.0, 5000)
        assert chain.checkpoint_due()  # two deltas after it already

    def test_a_full_object_or_a_break_starts_a_new_epoch(self) -> None:
        """A checkpoint begun before the chain restarted is of no use: the epoch tells."""
        chain, _ = self.make()
        chain.stored_full(pos(1), 1, 1000)
        first = chain.epoch
        chain.stored_full(pos(2), 2, 1000)
        assert chain.epoch == first + 1
        chain.broken()
        assert chain.epoch == first + 2 and chain.members == []
