"""Checkpoints (DESIGN §7) end to end: syncers on real LMDB files, a real checkpoint child
process, moto's S3 server over HTTP."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from evsync.config import DeltasConfig, S3Options, StorageConfig
from evsync.lmdb.header import encode_value
from evsync.snapshot.name import SnapshotName, db_prefix, try_parse
from evsync.storage import open_store
from evsync.storage.base import BlobStore
from evsync.sync import Syncer
from evsync.sync.checkpoint import STAGE_DUMP
from evsync.sync.sources import StorageSource
from evsync.tools import lmdb_write
from evsync.triggers.base import Batch, HintQueue
from tests.helpers import AwsServer, Instance, Mosquitto, wait_for
from tests.unit.test_syncer import make_config

RECORDS = 5000
WAIT_SECONDS = 60.0


class CountingSource(StorageSource):
    """GETs through the bucket, remembering every name fetched."""

    def __init__(self, store: BlobStore) -> None:
        super().__init__(store)
        self.fetched: list[str] = []

    def fetch(self, name: SnapshotName) -> IO[bytes]:
        self.fetched.append(name.name)
        return super().fetch(name)


@pytest.fixture
def s3(aws: AwsServer, bucket: str) -> BlobStore:
    return open_store(
        StorageConfig(
            type="s3",
            options=S3Options(
                bucket=bucket,
                endpoint_url=aws.endpoint,
                region="us-east-1",
                access_key="test",
                secret_key="test",
            ),
        )
    )


@pytest.fixture
def syncers(
    tmp_path: Path, s3: BlobStore
) -> Iterator[Callable[..., tuple[Syncer, CountingSource]]]:
    made: list[Syncer] = []

    def make(instance: str, max_chain: int = 2) -> tuple[Syncer, CountingSource]:
        cfg, lcfg = make_config(
            instance, tmp_path / instance, DeltasConfig(max_chain=max_chain, max_chain_ratio=100)
        )
        source = CountingSource(s3)
        syncer = Syncer(
            cfg, lcfg, s3, HintQueue("main"), stop_event=threading.Event(), source=source
        )
        made.append(syncer)
        return syncer, source

    try:
        yield make
    finally:
        for syncer in made:
            syncer.close()


def names_listed(aws: AwsServer, bucket: str) -> list[str]:
    listed = aws.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return [str(o["Key"]) for o in listed]


def names(store: BlobStore, instance: str) -> list[SnapshotName]:
    parsed = [try_parse(o.name) for o in store.list(db_prefix("main"))]
    return sorted(n for n in parsed if n is not None and n.instance == instance)


def fill(syncer: Syncer, n: int) -> None:
    env = syncer.lenv.env
    with env.begin(write=True) as txn:
        dbi = env.open_db(b"records", txn=txn)
        for i in range(n):
            txn.put(b"k%06d" % i, encode_value(1000 + i, txn.id(), 0, b"v%d" % i), db=dbi)


def change(syncer: Syncer, key: bytes, ts: int) -> None:
    lmdb_write.put(syncer.lenv.env, "records", key, b"new", ts)
    syncer.step(Batch(local=True))


def settle(syncer: Syncer, until: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not until():
        assert time.monotonic() < deadline, "timed out"
        syncer.step(syncer.queue.wait(0.05))


def stored_checkpoints(syncer: Syncer) -> float:
    return float(syncer.metrics.checkpoints_stored.labels("main")._value.get())


def contents(syncer: Syncer) -> dict[bytes, bytes]:
    with syncer.lenv.env.begin() as txn:
        dbi = syncer.lenv.env.open_db(b"records", txn=txn)
        return {bytes(k): bytes(v[:8]) + bytes(v[16:]) for k, v in txn.cursor(db=dbi)}


def writer(make: Callable[..., tuple[Syncer, CountingSource]], max_chain: int = 2) -> Syncer:
    a, _ = make("a", max_chain)
    fill(a, RECORDS)
    a.sender.checkpoint_min_entries = 0
    assert a.startup(retry_forever=True)
    return a


class TestCheckpointsOverS3:
    """A full object no longer stalls anyone who is caught up."""

    def test_a_caught_up_receiver_never_fetches_the_checkpoint(
        self, syncers: Callable[..., tuple[Syncer, CountingSource]], s3: BlobStore
    ) -> None:
        """b follows a's every object as it is announced, the checkpoint included: it GETs
        each delta and never the checkpoint, while a's deltas went on during its dump;
        both LMDBs end equal."""
        a = writer(syncers)
        b, fetched = syncers("b")
        assert b.startup(retry_forever=True)
        seen: set[str] = set()
        during = 0
        for i in range(8):
            change(a, b"x%d" % i, 10**15 + i)
            cp = a.sender.checkpointer
            during += cp is not None and cp.running
            for name in names(s3, "a"):  # every store announced to b, in order
                if name.name not in seen:
                    seen.add(name.name)
                    b.step(Batch(remote={"a": name}))
        settle(a, lambda: stored_checkpoints(a) >= 1)
        for name in names(s3, "a"):
            if name.name not in seen:
                b.step(Batch(remote={"a": name}))
        ckpts = [n for n in names(s3, "a") if n.is_checkpoint]
        assert ckpts, "no checkpoint was stored"
        assert during >= 1, "no delta was stored while a checkpoint ran"
        assert not [n for n in fetched.fetched if "__A" in n], "a checkpoint was fetched"
        change(a, b"last", 10**15 + 99)
        b.step(Batch(remote={"a": names(s3, "a")[-1]}))
        assert contents(b) == contents(a)

    def test_a_receiver_at_the_point_of_a_quiet_checkpoint_steps_over_it(
        self, syncers: Callable[..., tuple[Syncer, CountingSource]], s3: BlobStore
    ) -> None:
        """No change during the dump: the checkpoint is a's newest object when it is
        announced, and b, at its point, moves past it without a GET; the next delta is
        fetched and merged."""
        a = writer(syncers)
        b, fetched = syncers("b")
        assert b.startup(retry_forever=True)
        change(a, b"x0", 10**15)
        b.step(Batch(remote={"a": names(s3, "a")[-1]}))
        change(a, b"x1", 10**15 + 1)  # a checkpoint begins at this delta
        b.step(Batch(remote={"a": names(s3, "a")[-1]}))
        settle(a, lambda: stored_checkpoints(a) >= 1)
        newest = names(s3, "a")[-1]
        assert newest.is_checkpoint
        before = len(fetched.fetched)
        b.step(Batch(remote={"a": newest}))
        assert len(fetched.fetched) == before, "the checkpoint was fetched"
        assert b.metrics.checkpoints_skipped.labels("main", "a")._value.get() == 1
        change(a, b"x2", 10**15 + 2)
        b.step(Batch(remote={"a": names(s3, "a")[-1]}))
        assert fetched.fetched[before:] == [names(s3, "a")[-1].name]
        assert contents(b) == contents(a)

    def test_a_new_receiver_converges_from_the_checkpoint_and_the_deltas(
        self, syncers: Callable[..., tuple[Syncer, CountingSource]], s3: BlobStore
    ) -> None:
        """c, started after a checkpoint, fetches it and the deltas after its point, not
        a's first full object, and ends with a's records, changes made during the dump
        included."""
        a = writer(syncers, max_chain=1)
        change(a, b"x0", 10**15)
        for i in range(1, 4):  # changes while the child dumps
            change(a, b"x%d" % i, 10**15 + i)
        settle(a, lambda: stored_checkpoints(a) >= 1)
        change(a, b"after", 10**15 + 50)
        first = names(s3, "a")[0]
        c, fetched = syncers("c")
        assert c.run_once()
        kinds = [try_parse(n) for n in fetched.fetched]
        assert first.name not in fetched.fetched
        assert [n.is_checkpoint for n in kinds if n is not None].count(True) == 1
        assert contents(c) == contents(a)

    def test_a_dying_child_is_retried_and_the_chain_stays_whole(
        self, syncers: Callable[..., tuple[Syncer, CountingSource]], s3: BlobStore
    ) -> None:
        """The child killed (fault point): counted, nothing stored, every delta still
        stored and mergeable by a receiver; the retry stores a checkpoint."""
        a = writer(syncers)
        cp = a.sender.checkpointer
        assert cp is not None
        cp.child_env = {**os.environ, "EVSYNC_FAULTS": "checkpoint=1"}
        change(a, b"x0", 10**15)
        change(a, b"x1", 10**15 + 1)
        failed = a.metrics.checkpoint_failures.labels("main", STAGE_DUMP)
        settle(a, lambda: failed._value.get() >= 1)
        assert not [n for n in names(s3, "a") if n.is_checkpoint]
        change(a, b"x2", 10**15 + 2)
        b, _ = syncers("b")
        assert b.run_once()
        assert contents(b) == contents(a)
        cp.child_env = None
        a.sender.checkpoint_backoff.succeeded()
        a.step(Batch(local=True))
        settle(a, lambda: stored_checkpoints(a) >= 1)


class TestHeadOverS3:
    """The HEAD that stands between a checkpoint name and a step over it, against moto."""

    def test_exists_is_true_for_a_stored_object_and_false_for_a_missing_one(
        self, s3: BlobStore
    ) -> None:
        """``exists`` answers True for a stored name and False (not an error) for a name
        the bucket does not hold, as S3's HEAD answers 200 and 404."""
        name = "db__a__20261204-120000-000000000__GX__A20261204-115959-000000000.evs.zst"
        assert s3.exists(name) is False
        s3.store(name, io.BytesIO(b"x"))
        assert s3.exists(name) is True
        assert s3.exists(name.replace("a__", "b__", 1)) is False


class TestDaemons:
    """Two `evsync sync` daemons over moto and Mosquitto: the daemon's own checkpoint
    child (spawned from the daemon's interpreter) and the receiver's rule together."""

    def test_checkpoints_are_stored_and_never_fetched_by_a_caught_up_peer(
        self,
        instances: Callable[..., Instance],
        s3_storage: dict[str, Any],
        mosquitto: Mosquitto,
        topic: str,
        aws: AwsServer,
        bucket: str,
    ) -> None:
        """A holds RECORDS records; every change reaches B by announcement; A stores
        checkpoints beside its chain, and B's log never names one as merged."""
        notify = {
            "listing_interval": "1h",
            "mqtt": {"url": mosquitto.url, "topic": topic, "publish": True},
        }
        deltas = {"max_chain": 2, "max_chain_ratio": 100}
        a = instances("a", s3_storage, notify=notify, deltas=deltas)
        env = lmdb_write.open_env(str(a.lmdb_path))
        with env.begin(write=True) as txn:
            dbi = env.open_db(b"records", txn=txn)
            for i in range(RECORDS):
                txn.put(b"k%06d" % i, encode_value(1000 + i, txn.id(), 0, b"v"), db=dbi)
        env.close()
        a.start()
        b = instances("b", s3_storage, notify=notify).start()
        wait_for(lambda: b.writer.get(f"k{RECORDS - 1:06d}") == "v", what="b to load a")
        def b_reads(value: str) -> Callable[[], bool]:
            return lambda: b.writer.get("x") == value

        for i in range(8):
            a.writer.put("x", f"v{i}")
            wait_for(b_reads(f"v{i}"), what=f"b to read v{i}")
        wait_for(lambda: "stored checkpoint" in a.log(), timeout=WAIT_SECONDS, what="a checkpoint")
        a.writer.put("x", "last")
        wait_for(lambda: b.writer.get("x") == "last", what="b to read the last change")
        stored = [n for n in names_listed(aws, bucket) if "__A" in n]
        assert stored, "no checkpoint in the bucket"
        merged = [line for line in b.log().splitlines() if "merged main__a__" in line]
        assert merged and not [line for line in merged if "__A" in line]
