"""Per-event bookkeeping stays bounded in every mode (issue 16 §4): what a syncer keeps
per merge (the ledger's merge txns) does not grow with the number of merges."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from evsync.snapshot import SnapshotReader
from evsync.storage.memory import MemoryStore
from evsync.sync import Syncer
from evsync.sync import state as state_module
from evsync.sync.state import TxnLedger
from evsync.triggers.base import Batch, HintQueue
from tests.unit import test_shadow_syncer as shadow
from tests.unit.test_syncer import app_put, make_config, make_syncer, read, stored

MERGES = 30


@pytest.fixture
def store() -> MemoryStore:
    """One in-memory bucket shared by the syncers of a test."""
    return MemoryStore()


def feed(writer: Syncer, receiver: Syncer, store: MemoryStore, n: int = MERGES) -> None:
    """``writer`` stores ``n`` objects; ``receiver`` merges each as it is announced."""
    for i in range(n):
        app_put(writer, b"w%d" % i, b"v", 10_000 + i)
        writer.step(Batch(local=True))
        receiver.step(Batch(remote={writer.instance: stored(store, writer.instance)[-1]}))


class TestMergeTxnsStayBounded:
    """The ledger remembers only merge txns a delta could still pick up."""

    def test_merges_without_local_changes_leave_nothing_behind(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """An instance that only merges (forced snapshots off, so it never uploads)
        keeps no merge txn: each follows the last synced txn. It used to keep them all."""
        a = make_syncer("a", tmp_path, store)
        b = make_syncer("b", tmp_path, store)
        app_put(a, b"k", b"v", 1000)
        a.run_once()
        b.run_once()
        feed(a, b, store)
        assert read(b, b"w29") == (b"v", 10_029, False)
        assert b.ledger.merge_txns == set()

    def test_a_receive_only_instance_keeps_no_merge_txns(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """Receive-only, with a local commit that is never uploaded: merges after it are
        not remembered (no delta is ever written). They used to pile up for good."""
        a = make_syncer("a", tmp_path, store)
        app_put(a, b"k", b"v", 1000)
        a.run_once()
        cfg, lcfg = make_config("b", tmp_path / "b")
        b = Syncer(
            cfg, lcfg, store, HintQueue("main"), stop_event=threading.Event(), receive_only=True
        )
        b.run_once()
        app_put(b, b"local", b"x", 2000)
        feed(a, b, store)
        assert read(b, b"w29") == (b"v", 10_029, False)
        assert b.ledger.merge_txns == set()

    def test_a_shadow_instance_keeps_no_merge_txns(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """Shadow mode always writes full objects: merges are not remembered."""
        a = make_syncer("a", tmp_path, store)
        app_put(a, b"k", b"v", 1000)
        a.run_once()
        b = shadow.make_syncer("b", tmp_path, store)
        b.run_once()
        shadow.app_put(b, b"local", b"x")  # a local change pending
        feed(a, b, store, n=5)
        assert shadow.app_get(b, b"w4") == b"v"
        assert b.ledger.merge_txns == set()

    def test_merges_after_a_local_commit_still_stay_out_of_the_delta(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """Merge txns after a pending local commit are kept until the upload, and the
        delta carries the local change alone; the upload then forgets them."""
        a = make_syncer("a", tmp_path, store)
        b = make_syncer("b", tmp_path, store)
        app_put(b, b"mine", b"b", 1000)
        b.run_once()
        app_put(a, b"k", b"v", 1000)
        a.run_once()
        b.step(Batch(remote={"a": stored(store, "a")[-1]}))
        app_put(b, b"mine", b"b2", 3000)  # local, not uploaded yet
        b.receive_only = True  # hold the upload back while merges arrive
        feed(a, b, store, n=3)
        assert len(b.ledger.merge_txns) == 3
        b.receive_only = False
        b.step(Batch(local=True))
        delta = stored(store, "b")[-1]
        assert delta.is_delta
        reader = SnapshotReader(store.open(delta.name))
        assert [[e[0] for e in es] for _, es in reader.dbis()] == [[b"mine"]]
        assert b.ledger.merge_txns == set()


class TestTxnLedger:
    """The ledger's rules as plain data."""

    def test_merge_txns_are_capped(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Past MAX_MERGE_TXNS (an upload that keeps failing after a local commit) the
        merge txns are forgotten: a delta then re-ships merged entries, harmlessly."""
        monkeypatch.setattr(state_module, "MAX_MERGE_TXNS", 5)
        ledger = TxnLedger(last_synced=10)  # txn 11 is a local commit
        for txn in range(12, 17):
            ledger.merged([txn])
        assert ledger.merge_txns == {12, 13, 14, 15, 16}
        ledger.merged([17])
        assert ledger.merge_txns == set()

    def test_txns_that_follow_the_synced_one_are_not_kept(self) -> None:
        """A merge txn right after the last synced txn advances it and is not kept."""
        ledger = TxnLedger(last_synced=10)
        ledger.merged([11, 12])
        assert (ledger.last_synced, ledger.merge_txns) == (12, set())

    def test_a_sync_forgets_what_it_covers(self) -> None:
        """Everything up to a synced txn is forgotten by synced_up_to."""
        ledger = TxnLedger(last_synced=10)
        ledger.merged([12, 13])
        ledger.synced_up_to(12)
        assert ledger.merge_txns == {13}
