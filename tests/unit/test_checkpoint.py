"""Checkpoints (DESIGN §7) through the syncer: real LMDB files, a real child process, the
in-memory store."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest

from evsync.config import DeltasConfig
from evsync.errors import StorageUnavailableError
from evsync.lmdb.header import encode_value
from evsync.snapshot.name import SnapshotName, try_parse
from evsync.storage.memory import MemoryStore
from evsync.sync import Syncer
from evsync.sync.backoff import Backoff
from evsync.sync.chain import CHECKPOINT_OVERDUE_FACTOR
from evsync.sync.checkpoint import STAGE_DUMP, STAGE_STORE, Job
from evsync.sync.sender import CHECKPOINT_TIMEOUT_SECONDS
from evsync.tools import lmdb_write
from evsync.triggers.base import Batch
from tests.unit.test_syncer import make_syncer, read

# Small enough to write fast, and a dump the child needs a moment for.
RECORDS = 2000
WAIT_SECONDS = 60.0


class CheckpointFailingStore(MemoryStore):
    """Refuses to store checkpoints while ``refuse`` is set, deltas while
    ``refuse_deltas`` is; everything else goes through."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse = False
        self.refuse_deltas = False

    def store(self, name: str, data: IO[bytes]) -> None:
        parsed = try_parse(name)
        if self.refuse and parsed is not None and parsed.is_checkpoint:
            raise StorageUnavailableError("simulated: checkpoints refused")
        if self.refuse_deltas and parsed is not None and parsed.is_delta:
            raise StorageUnavailableError("simulated: deltas refused")
        super().store(name, data)


def names_of(store: MemoryStore, instance: str) -> list[SnapshotName]:
    out = [try_parse(o.name) for o in store.list("main__")]
    return sorted(n for n in out if n is not None and n.instance == instance)


def fill(syncer: Syncer, n: int, prefix: bytes = b"k") -> None:
    env = syncer.lenv.env
    with env.begin(write=True) as txn:
        dbi = env.open_db(b"records", txn=txn)
        for i in range(n):
            txn.put(prefix + b"%06d" % i, encode_value(1000 + i, txn.id(), 0, b"v"), db=dbi)


def change(syncer: Syncer, key: bytes, value: bytes, ts: int) -> None:
    lmdb_write.put(syncer.lenv.env, "records", key, value, ts)
    syncer.step(Batch(local=True))


def settle(syncer: Syncer, until: Callable[[], bool], timeout: float = WAIT_SECONDS) -> None:
    """Run the syncer's steps until ``until()``."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out"
        syncer.step(syncer.queue.wait(0.05))


def stored_checkpoints(syncer: Syncer) -> float:
    return float(syncer.metrics.checkpoints_stored.labels("main")._value.get())


def failures(syncer: Syncer, stage: str) -> float:
    return float(syncer.metrics.checkpoint_failures.labels("main", stage)._value.get())


def writer(tmp_path: Path, store: MemoryStore, max_chain: int = 2) -> Syncer:
    """Instance a: RECORDS records, started (its first object is full), checkpoints on."""
    a = make_syncer("a", tmp_path, store, DeltasConfig(max_chain=max_chain, max_chain_ratio=100))
    fill(a, RECORDS)
    a.sender.checkpoint_min_entries = 0
    assert a.startup(retry_forever=True)
    return a


@pytest.fixture
def store() -> CheckpointFailingStore:
    return CheckpointFailingStore()


class TestSender:
    """The sender's side: deltas go on while a checkpoint is dumped in a child."""

    def test_deltas_flow_while_a_checkpoint_is_dumped(
        self, tmp_path: Path, store: CheckpointFailingStore
    ) -> None:
        """Past max_chain a checkpoint begins in a child process; every change made
        meanwhile is stored as a delta at once; the checkpoint names the chain's tip when
        it began, sorts right after it, and becomes the chain's first member."""
        a = writer(tmp_path, store)
        change(a, b"x1", b"1", 10**15)
        change(a, b"x2", b"2", 10**15 + 1)  # max_chain deltas: a checkpoint begins
        tip = a.sender.chain.base_ns
        assert a.sender.checkpointer is not None and a.sender.checkpointer.running
        during = 0
        for i in range(3):
            change(a, b"y%d" % i, b"v", 10**15 + 10 + i)
            during += a.sender.checkpointer.running
        assert during >= 1, "the child finished before any delta: no overlap shown"
        settle(a, lambda: stored_checkpoints(a) == 1)
        ckpts = [n for n in names_of(store, "a") if n.is_checkpoint]
        assert len(ckpts) == 1 and ckpts[0].checkpoint_of_ns == tip
        chain = a.sender.chain
        assert chain.members[0] == ckpts[0].timestamp_ns
        after = [n.timestamp_ns for n in names_of(store, "a") if n.name > ckpts[0].name]
        assert chain.members[1:] == after and all(n.is_delta for n in names_of(store, "a")[-3:])
        assert chain.base_ns == names_of(store, "a")[-1].timestamp_ns  # the chain went on
        a.close()

    def test_a_dying_child_leaves_the_chain_intact_and_is_retried(
        self, tmp_path: Path, store: CheckpointFailingStore
    ) -> None:
        """A child killed mid-way: one failure counted at the dump stage, nothing stored,
        the chain's members unchanged and deltas still flowing; the next attempt, after
        the backoff, dumps afresh and is stored."""
        a = writer(tmp_path, store)
        cp = a.sender.checkpointer
        assert cp is not None
        cp.child_env = {**os.environ, "EVSYNC_FAULTS": "checkpoint=1"}
        change(a, b"x1", b"1", 10**15)
        change(a, b"x2", b"2", 10**15 + 1)
        members = list(a.sender.chain.members)
        settle(a, lambda: failures(a, STAGE_DUMP) == 1)
        assert not any(n.is_checkpoint for n in names_of(store, "a"))
        assert a.sender.chain.members == members
        change(a, b"x3", b"3", 10**15 + 2)
        assert a.sender.chain.members == [*members, a.sender.chain.base_ns]
        cp.child_env = None
        a.sender.checkpoint_backoff.succeeded()  # skip the wait
        settle(a, lambda: stored_checkpoints(a) == 1)
        a.close()

    def test_a_failed_store_leaves_the_chain_intact_and_is_retried(
        self, tmp_path: Path, store: CheckpointFailingStore
    ) -> None:
        """The bucket refuses the checkpoint: one failure at the store stage, the chain
        goes on; once the bucket takes it, a fresh checkpoint is stored."""
        a = writer(tmp_path, store)
        store.refuse = True
        change(a, b"x1", b"1", 10**15)
        change(a, b"x2", b"2", 10**15 + 1)
        members = list(a.sender.chain.members)
        settle(a, lambda: failures(a, STAGE_STORE) == 1)
        assert a.sender.chain.members == members
        assert not any(n.is_checkpoint for n in names_of(store, "a"))
        store.refuse = False
        a.sender.checkpoint_backoff.succeeded()
        a.step(Batch(local=True))
        settle(a, lambda: stored_checkpoints(a) == 1)
        a.close()

    def test_it_waits_until_the_chain_holds_what_it_holds(
        self, tmp_path: Path, store: CheckpointFailingStore
    ) -> None:
        """A checkpoint dumped after a change the chain has not stored yet (its delta's
        store fails) is not stored before that delta is: a receiver stepping over it must
        find the change in the chain."""
        a = writer(tmp_path, store)
        change(a, b"x1", b"1", 10**15)
        change(a, b"x2", b"2", 10**15 + 1)
        cp = a.sender.checkpointer
        assert cp is not None and cp.running
        store.refuse_deltas = True  # the next delta cannot be stored
        change(a, b"late", b"1", 10**15 + 5)
        settle(a, lambda: cp._run is not None and cp._run.future.done(), timeout=WAIT_SECONDS)
        for _ in range(5):
            a.step(Batch())
        assert cp.running and not any(n.is_checkpoint for n in names_of(store, "a"))
        run = cp._run
        assert run is not None and run.dumped is not None
        assert run.dumped.header.txn_id > a.ledger.last_synced  # it holds the late change
        store.refuse_deltas = False
        a.sender.backoff.succeeded()
        settle(a, lambda: stored_checkpoints(a) == 1)
        ckpt = next(n for n in names_of(store, "a") if n.is_checkpoint)
        late = [n for n in names_of(store, "a") if n.is_delta and n.name > ckpt.name]
        assert late, "the delta carrying the late change was stored before the checkpoint"
        assert store.calls["store"] >= 1
        a.close()

    def test_the_cleaner_is_told_what_was_merged_when_it_began(
        self, tmp_path: Path, store: CheckpointFailingStore
    ) -> None:
        """x's second object is merged while a's checkpoint is dumped: the checkpoint
        proves x merged only up to x's first object (the position when it began)."""
        x = make_syncer("x", tmp_path, store)
        lmdb_write.put(x.lenv.env, "records", b"from-x", b"1", 1000)
        assert x.run_once()
        x1 = names_of(store, "x")[-1]
        a = writer(tmp_path, store)
        committed: list[dict[str, int]] = []
        a.on_committed.append(lambda merged: committed.append(dict(merged)))
        change(a, b"x1", b"1", 10**15)
        change(a, b"x2", b"2", 10**15 + 1)  # the checkpoint begins
        assert a.sender.checkpointer is not None and a.sender.checkpointer.running
        change(x, b"from-x", b"2", 2000)
        x2 = names_of(store, "x")[-1]
        a.step(Batch(remote={"x": x2}))
        assert a.peers.instances["x"].merged == x2
        settle(a, lambda: stored_checkpoints(a) == 1)
        assert committed == [{"x": x1.timestamp_ns}]
        a.close()
        x.close()

    def test_an_overdue_chain_without_a_checkpoint_in_flight_gets_a_full_object(
        self, tmp_path: Path, store: CheckpointFailingStore
    ) -> None:
        """Checkpoints that cannot run (here: backing off): deltas go on up to the overdue
        factor times max_chain, then the upload is a full object on the syncer thread."""
        a = writer(tmp_path, store, max_chain=1)
        a.sender.checkpoint_backoff = Backoff(100.0, 100.0)
        a.sender.checkpoint_backoff.failed()  # no checkpoint for 100 s
        for i in range(CHECKPOINT_OVERDUE_FACTOR + 1):
            change(a, b"x%d" % i, b"v", 10**15 + i)
        kinds = ["delta" if n.is_delta else "full" for n in names_of(store, "a")]
        assert kinds == ["full", *["delta"] * CHECKPOINT_OVERDUE_FACTOR, "full"]
        a.close()

    def test_while_a_checkpoint_is_in_flight_the_chain_may_outgrow_the_factor(
        self, tmp_path: Path, store: CheckpointFailingStore
    ) -> None:
        """A checkpoint running resets the count once stored: until then every change is
        a delta, however many."""
        a = writer(tmp_path, store, max_chain=1)
        change(a, b"x", b"v", 10**15)  # the checkpoint begins
        cp = a.sender.checkpointer
        assert cp is not None
        made = 0
        for i in range(2 * CHECKPOINT_OVERDUE_FACTOR):
            if not cp.running:
                break
            change(a, b"y%d" % i, b"v", 10**15 + 1 + i)
            made += 1
        assert made > CHECKPOINT_OVERDUE_FACTOR, "the child finished too soon to show it"
        assert [n.is_delta for n in names_of(store, "a")][1:] == [True] * (made + 1)
        a.close()

    def test_the_next_checkpoint_rests_as_long_as_the_last_one_took(
        self, tmp_path: Path, store: CheckpointFailingStore
    ) -> None:
        """Due again right after one is stored (a high write rate), the next checkpoint
        waits CHECKPOINT_REST_FACTOR times the last one's duration; deltas go on."""
        a = writer(tmp_path, store, max_chain=1)
        change(a, b"x", b"v", 10**15)
        settle(a, lambda: stored_checkpoints(a) == 1)
        cp = a.sender.checkpointer
        assert cp is not None
        change(a, b"y", b"v", 10**15 + 1)  # due again at once
        assert a.sender.chain.checkpoint_due() and not cp.running
        assert a.sender._checkpoint_not_before > a.sender.chain.clock()
        a.sender._checkpoint_not_before = 0.0  # the rest is over
        change(a, b"z", b"v", 10**15 + 2)
        assert cp.running
        a.close()

    def test_a_checkpoint_that_never_finishes_is_stopped_and_counted(
        self, tmp_path: Path, store: CheckpointFailingStore
    ) -> None:
        """Past CHECKPOINT_TIMEOUT_SECONDS (a starved child, say) the checkpoint is stopped
        and counted as a failed dump; the chain is untouched."""
        a = writer(tmp_path, store, max_chain=1)
        change(a, b"x", b"v", 10**15)
        cp = a.sender.checkpointer
        assert cp is not None and cp.running
        members = list(a.sender.chain.members)
        real = a.sender.chain.clock
        a.sender.chain.clock = lambda: real() + CHECKPOINT_TIMEOUT_SECONDS + 1
        a.step(Batch())
        assert not cp.running and failures(a, STAGE_DUMP) == 1
        assert a.sender.chain.members == members
        assert not any(n.is_checkpoint for n in names_of(store, "a"))
        a.close()

    def test_a_listing_begun_before_the_checkpoint_was_stored_breaks_no_chain(
        self, tmp_path: Path, store: CheckpointFailingStore
    ) -> None:
        """A listing that began after the last delta's store but before the checkpoint's
        store completed lacks the checkpoint, which then becomes the chain's first
        member: the own-objects check skips that listing (no "objects are gone", no full
        object); a listing begun after it is checked as before. It used to break the
        chain and dump a full object on the syncer thread."""
        a = writer(tmp_path, store)
        change(a, b"x1", b"1", 10**15)
        change(a, b"x2", b"2", 10**15 + 1)  # the checkpoint begins
        cp = a.sender.checkpointer
        assert cp is not None and cp.running and cp._run is not None and cp._run.store is None
        started = time.monotonic()  # after the last delta's store, before the checkpoint's
        early = names_of(store, "a")
        assert not any(n.is_checkpoint for n in early)
        settle(a, lambda: stored_checkpoints(a) == 1)
        assert a.sender.chain.members[0] not in {n.timestamp_ns for n in early}
        a.on_listing(True, early, started)
        a.step(Batch())
        assert names_of(store, "a")[-1].is_checkpoint, "no full object was stored"
        before = len(names_of(store, "a"))
        change(a, b"x3", b"3", 10**15 + 2)
        assert names_of(store, "a")[-1].is_delta and len(names_of(store, "a")) == before + 1
        late = names_of(store, "a")
        a.on_listing(True, [n for n in late if not n.is_checkpoint], time.monotonic())
        a.step(Batch())
        newest = names_of(store, "a")[-1]
        assert not newest.is_delta and not newest.is_checkpoint, "a later listing is checked"
        a.close()

    def test_small_lmdbs_keep_full_objects_on_the_syncer_thread(
        self, tmp_path: Path, store: CheckpointFailingStore
    ) -> None:
        """Below checkpoint_min_entries a child costs more than the dump: after max_chain
        deltas the next upload is a plain full object, as before."""
        a = make_syncer("a", tmp_path, store, DeltasConfig(max_chain=2, max_chain_ratio=100))
        lmdb_write.put(a.lenv.env, "records", b"k", b"v", 1000)
        assert a.startup(retry_forever=True)
        for i in range(3):
            change(a, b"x%d" % i, b"v", 10**15 + i)
        kinds = [(n.is_delta, n.is_checkpoint) for n in names_of(store, "a")]
        assert kinds == [(False, False), (True, False), (True, False), (False, False)]
        a.close()


# An intermediate "daemon": starts the checkpoint child for the job on stdin (naming
# itself as the parent), prints the child's pid and exits without waiting for it.
ORPHANING_PARENT = """
import dataclasses, os, pickle, subprocess, sys
job = dataclasses.replace(pickle.loads(sys.stdin.buffer.read()), parent_pid=os.getpid())
child = subprocess.Popen([sys.executable, "-m", "evsync.sync.checkpoint"], stdin=subprocess.PIPE)
child.stdin.write(pickle.dumps(job))
child.stdin.close()
print(child.pid, flush=True)
os._exit(0)
"""


# A checkpoint child that takes SIGTERM as slowly as a starved one would (it ignores it):
# says when it is ready, then waits.
STUBBORN_CHILD = """
import pathlib, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
sys.stdin.buffer.read()
pathlib.Path(sys.argv[1]).touch()
time.sleep(120)
"""


class TestCancel:
    """Dropping a checkpoint never holds up the syncer thread."""

    def test_cancel_returns_at_once_and_the_child_ends(
        self, tmp_path: Path, store: CheckpointFailingStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With a child slow to act on SIGTERM (under SCHED_IDLE on a busy host), cancel()
        on the syncer thread returns within a second; the child is killed, reaped by the
        worker, and its spool file removed. cancel() used to wait up to 5 s for it."""
        ready = tmp_path / "ready"
        real_popen = subprocess.Popen

        def stubborn(_args: object, **kw: Any) -> subprocess.Popen[bytes]:
            return real_popen([sys.executable, "-c", STUBBORN_CHILD, str(ready)], **kw)

        monkeypatch.setattr(subprocess, "Popen", stubborn)
        a = writer(tmp_path, store, max_chain=1)
        change(a, b"x1", b"1", 10**15)  # the checkpoint begins
        cp = a.sender.checkpointer
        assert cp is not None and cp._run is not None
        run = cp._run
        deadline = time.monotonic() + WAIT_SECONDS
        while not ready.exists():
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.02)
        assert run.proc is not None
        t0 = time.monotonic()
        cp.cancel()
        assert time.monotonic() - t0 < 1.0
        assert not cp.running
        run.future.exception(timeout=WAIT_SECONDS)  # the worker reaped it
        assert run.proc.returncode is not None and run.proc.returncode < 0
        assert not run.out.exists() and not run.result.exists()
        a.close()


class TestOrphanedChild:
    """A daemon killed outright leaves no checkpoint child running and no spool file."""

    def test_a_child_whose_parent_died_ends_and_removes_its_files(
        self, tmp_path: Path, store: CheckpointFailingStore
    ) -> None:
        """The child notices its parent is gone (at once, or by the signal Linux sends):
        it exits without a report and its spool file is removed."""
        a = writer(tmp_path, store)
        out, result = tmp_path / "spool.evs.zst", tmp_path / "spool.result"
        out.write_bytes(b"")  # as the daemon creates it before starting the child
        job = Job(a.lenv.cfg, "main", "a", 10**18, str(out), str(result))
        proc = subprocess.run(
            [sys.executable, "-c", ORPHANING_PARENT],
            input=pickle.dumps(job),
            capture_output=True,
            check=True,
            timeout=WAIT_SECONDS,
        )
        child = int(proc.stdout)
        deadline = time.monotonic() + WAIT_SECONDS
        while Path(f"/proc/{child}").exists() and not _zombie(child):
            assert time.monotonic() < deadline, "the orphaned child is still running"
            time.sleep(0.05)
        assert not out.exists() and not result.exists()
        a.close()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


class TestReceiver:
    """The receiver's side: a caught-up receiver never fetches a checkpoint."""

    def test_a_caught_up_receiver_steps_over_the_checkpoint(
        self, tmp_path: Path, store: CheckpointFailingStore
    ) -> None:
        """b, merged up to the checkpoint's point, is told of the checkpoint: it moves past
        it without a fetch, then takes the next delta."""
        a = writer(tmp_path, store, max_chain=1)
        b = make_syncer("b", tmp_path, store)
        assert b.startup(retry_forever=True)
        change(a, b"x1", b"1", 10**15)  # a checkpoint begins at this delta
        b.receiver.list_bucket(startup=False)
        b.step(Batch())
        settle(a, lambda: stored_checkpoints(a) == 1)
        ckpt = next(n for n in names_of(store, "a") if n.is_checkpoint)
        opens = store.calls["open"]
        b.step(Batch(remote={"a": ckpt}))
        assert store.calls["open"] == opens, "the checkpoint was fetched"
        assert b.peers.instances["a"].merged == ckpt
        assert b.metrics.checkpoints_skipped.labels("main", "a")._value.get() == 1
        change(a, b"x2", b"2", 10**15 + 1)
        b.step(Batch(remote={"a": names_of(store, "a")[-1]}))
        assert store.calls["open"] == opens + 1
        assert read(b, b"x2") == (b"2", 10**15 + 1, False)
        a.close()
        b.close()

    def test_a_new_receiver_starts_from_the_checkpoint(
        self, tmp_path: Path, store: CheckpointFailingStore
    ) -> None:
        """c, new, fetches the checkpoint and the deltas after its point, not the chain's
        first full object, and ends with every record."""
        a = writer(tmp_path, store, max_chain=1)
        change(a, b"x1", b"1", 10**15)
        settle(a, lambda: stored_checkpoints(a) == 1)
        change(a, b"x2", b"2", 10**15 + 1)
        first = names_of(store, "a")[0]
        fetched: list[str] = []
        original = store.open

        def counting_open(name: str) -> IO[bytes]:
            fetched.append(name)
            return original(name)

        store.open = counting_open  # type: ignore[method-assign]
        c = make_syncer("c", tmp_path, store)
        assert c.run_once()
        assert first.name not in fetched
        parsed = [try_parse(n) for n in fetched]
        assert [n.is_checkpoint for n in parsed if n is not None].count(True) == 1
        assert read(c, b"x1") == (b"1", 10**15, False)
        assert read(c, b"x2") == (b"2", 10**15 + 1, False)
        assert read(c, b"k%06d" % (RECORDS - 1)) is not None
        a.close()
        c.close()
