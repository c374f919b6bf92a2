"""The syncer in shadow mode: Lightning Stream's startup scenario with raw (headerless) values."""

from __future__ import annotations

import dataclasses
import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest

from evsync.config import Config, LmdbConfig, LmdbOptions, MemoryOptions, StorageConfig
from evsync.errors import StorageUnavailableError
from evsync.snapshot import DbiInfo, SnapshotHeader, write_snapshot
from evsync.snapshot.name import SnapshotName
from evsync.storage.memory import MemoryStore
from evsync.sync import Syncer
from evsync.triggers.base import Batch, Hint, HintQueue
from evsync.triggers.lmdb_watch import TxnObserver

DBI = b"records"


def make_syncer(instance: str, tmp_path: Path, store: MemoryStore) -> Syncer:
    """A shadow-mode syncer on its own LMDB under tmp_path (reopened on restart)."""
    lcfg = LmdbConfig(
        name="main",
        path=str(tmp_path / instance),
        schema_tracks_changes=False,
        dupsort_hack=True,
        options=LmdbOptions(create=True, map_size=1 << 24),
    )
    cfg = Config(
        instance=instance,
        lmdbs={"main": lcfg},
        storage=StorageConfig(type="memory", options=MemoryOptions()),
        storage_retry_interval=0.01,
        storage_retry_count=2,
        storage_force_snapshot_interval=0,
    )
    return Syncer(cfg, lcfg, store, HintQueue("main"), stop_event=threading.Event())


def app_put(syncer: Syncer, key: bytes, value: bytes) -> None:
    """The application writes a raw value, as PowerDNS 4.7 does."""
    env = syncer.lenv.env
    handle = env.open_db(DBI, create=True)
    with env.begin(write=True) as txn:
        txn.put(key, value, db=handle)


def app_get(syncer: Syncer, key: bytes) -> bytes | None:
    """The raw value the application reads."""
    env = syncer.lenv.env
    with env.begin() as txn:
        if txn.get(DBI) is None:
            return None
    handle = env.open_db(DBI, create=False)
    with env.begin() as txn:
        value = txn.get(key, db=handle)
    return None if value is None else bytes(value)


def poll(syncer: Syncer) -> None:
    """One wake-up of a running syncer: list the bucket, then handle a local hint."""
    syncer.receiver.list_bucket(startup=False)
    syncer.step(Batch(local=True))


def objects(store: MemoryStore, instance: str) -> list[str]:
    """Object names of one instance."""
    return [o.name for o in store.list("main__") if f"__{instance}__" in o.name]


@pytest.fixture
def store() -> MemoryStore:
    """One in-memory bucket shared by the syncers of a test."""
    return MemoryStore()


class TestShadowStartupScenario:
    """LS's TestSyncer_Sync_startup (with-shadow), step by step."""

    def test_startup_scenario(self, tmp_path: Path, store: MemoryStore) -> None:
        """An instance with data uploads; an empty one receives without uploading; a change
        on B wins on A; a restart keeps the value and uploads again; a key added while
        evsync was down reaches the other instance."""
        a = make_syncer("a", tmp_path, store)
        app_put(a, b"foo", b"v1")
        a.startup(retry_forever=True)
        assert len(objects(store, "a")) == 1

        b = make_syncer("b", tmp_path, store)
        b.startup(retry_forever=True)
        assert app_get(b, b"foo") == b"v1"
        assert objects(store, "b") == []  # merged data is not uploaded again

        app_put(b, b"foo", b"v2")
        poll(b)
        assert len(objects(store, "b")) == 1
        poll(a)
        assert app_get(a, b"foo") == b"v2"
        assert len(objects(store, "a")) == 1  # A merged B's change, nothing new to upload

        a.close()
        a = make_syncer("a", tmp_path, store)
        a.startup(retry_forever=True)
        assert app_get(a, b"foo") == b"v2"
        assert len(objects(store, "a")) == 2  # a restart uploads once

        a.close()
        a = make_syncer("a", tmp_path, store)  # reopened only to write, as the app
        app_put(a, b"new", b"hello")
        a.close()
        a = make_syncer("a", tmp_path, store)
        a.startup(retry_forever=True)
        assert len(objects(store, "a")) == 3
        poll(b)
        assert app_get(b, b"new") == b"hello"
        a.close()
        b.close()

    def test_change_while_down_loses_to_remote(self, tmp_path: Path, store: MemoryStore) -> None:
        """A value changed while evsync was down is stamped at 1 ns by the startup seed, so
        the bucket's version wins (as in LS) and nothing newer is overwritten."""
        a = make_syncer("a", tmp_path, store)
        a.startup(retry_forever=True)
        app_put(a, b"foo", b"v1")  # seen while running: stamped with the current time
        poll(a)
        a.close()
        a = make_syncer("a", tmp_path, store)
        app_put(a, b"foo", b"offline")
        a.startup(retry_forever=True)
        assert app_get(a, b"foo") == b"v1"
        a.close()

    def test_local_change_during_merge_is_uploaded(
        self, tmp_path: Path, store: MemoryStore
    ) -> None:
        """A local change that a merge stamps before applying remote data is uploaded
        afterwards, not mistaken for merged data."""
        a = make_syncer("a", tmp_path, store)
        b = make_syncer("b", tmp_path, store)
        app_put(a, b"x", b"from-a")
        a.startup(retry_forever=True)
        b.startup(retry_forever=True)
        app_put(b, b"y", b"from-b")  # not yet seen by B's syncer
        app_put(a, b"x", b"a2")
        poll(a)
        b.receiver.list_bucket(startup=False)
        b.step(Batch())  # remote only: the merge txn captures y first
        assert app_get(b, b"x") == b"a2" and app_get(b, b"y") == b"from-b"
        b.step(Batch(local=True))
        poll(a)
        assert app_get(a, b"y") == b"from-b"
        a.close()
        b.close()


NS = 1_000_000_000
NOW = 1_800_000_000 * NS


class _Clock:
    """A settable wall clock in ns."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


class _OutageStore(MemoryStore):
    """Stores fail as unavailable while ``down``; the first failed attempt runs
    ``during_outage`` (the application writing while the store is retried)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.during_outage: Callable[[], None] | None = None

    def store(self, name: str, data: IO[bytes]) -> None:
        if self.down:
            hook, self.during_outage = self.during_outage, None
            if hook is not None:
                hook()
            raise StorageUnavailableError("simulated outage during store")
        super().store(name, data)


def shadow_syncer(
    instance: str, tmp_path: Path, store: MemoryStore, clock: _Clock, **changes: Any
) -> Syncer:
    """A shadow-mode syncer with a settable clock and config changes."""
    s = make_syncer(instance, tmp_path, store)
    cfg = dataclasses.replace(s.config, **changes)
    s.close()
    return Syncer(
        cfg, s.cfg, store, HintQueue("main"), stop_event=threading.Event(), clock_ns=clock
    )


def remote_object(store: MemoryStore, instance: str, ts: int, key: bytes, value: bytes) -> None:
    """Another instance's object holding one live entry stamped ``ts``."""
    name = SnapshotName.build("main", instance, ts).name
    header = SnapshotHeader("main", instance, "h", ts, 1, (DbiInfo(DBI, 0, "", 1),))
    buf = io.BytesIO()
    write_snapshot(buf, header, [[(key, ts, 0, value)]])
    buf.seek(0)
    store.store(name, buf)


class TestStampsDuringAnOutage:
    """Writes made while a store is retried are stamped when they are found, so a restart
    during the outage does not seed them at 1 ns, where an older remote value would win
    (issue 16 §6)."""

    @pytest.mark.parametrize("through_observer", [False, True])
    def test_a_write_during_store_retries_beats_an_older_remote_value(
        self, tmp_path: Path, through_observer: bool
    ) -> None:
        """A commits k during the retries of a failing store (its local hint arrives
        meanwhile), restarts during the outage, then merges B's value of k stamped 1 s
        before A's write: A's value stays and is what A uploads. ``through_observer``:
        the hint comes the daemon's way, from the LMDB watcher's observer wired with its
        merge window, which covers the step's merges and not the upload's retries (found
        by a review: with the window around the whole step the hint waited for the
        step's end and B's older value won)."""
        store, clock = _OutageStore(), _Clock()
        a = shadow_syncer("a", tmp_path, store, clock, storage_retry_count=3)
        app_put(a, b"first", b"v")
        a.startup(retry_forever=True)
        observer = TxnObserver(a.lenv, a.queue)
        if through_observer:
            a.on_own_commits.append(observer.own)
            a.merge_windows.append(observer.merging)

        def app_writes() -> None:
            clock.now = NOW + 10 * NS
            app_put(a, b"k", b"local")
            if through_observer:
                observer.check("watcher")  # inotify saw the commit
            else:
                a.queue.put(Hint("watcher", local=True))

        store.down, store.during_outage = True, app_writes
        app_put(a, b"first", b"v2")
        a.step(Batch(local=True))  # the store fails after its retries
        a.close()

        store.down = False
        remote_object(store, "b", NOW + 9 * NS, b"k", b"remote")
        clock.now = NOW + 20 * NS
        a = shadow_syncer("a", tmp_path, store, clock)
        assert a.run_once()
        assert app_get(a, b"k") == b"local"
        a.close()

    def test_a_write_stamped_during_retries_is_uploaded_after_the_store_succeeds(
        self, tmp_path: Path
    ) -> None:
        """The object being retried was dumped before the write; once it is stored, the
        write stamped meanwhile is uploaded by the next object, not taken as shipped."""
        store, clock = _OutageStore(), _Clock()
        a = shadow_syncer("a", tmp_path, store, clock, storage_retry_count=3)
        b = shadow_syncer("b", tmp_path, store, clock)
        app_put(a, b"first", b"v")
        a.startup(retry_forever=True)

        def app_writes() -> None:
            store.down = False  # this attempt fails, the next one works
            app_put(a, b"k", b"local")
            a.queue.put(Hint("watcher", local=True))

        store.down, store.during_outage = True, app_writes
        app_put(a, b"first", b"v2")
        a.step(Batch(local=True))
        a.step(a.queue.wait(0))  # the sender's own hint: a commit raced the upload
        assert b.run_once()
        assert app_get(b, b"k") == b"local"
        a.close()
        b.close()

    def test_a_write_while_the_store_backs_off_beats_an_older_remote_value(
        self, tmp_path: Path
    ) -> None:
        """A write whose local hint arrives while a failed store waits for its backoff is
        stamped then; after a restart it beats B's older value."""
        store, clock = _OutageStore(), _Clock()
        a = shadow_syncer(
            "a", tmp_path, store, clock, storage_retry_count=1, storage_retry_interval=3600.0
        )
        app_put(a, b"first", b"v")
        a.startup(retry_forever=True)
        store.down = True
        app_put(a, b"first", b"v2")
        a.step(Batch(local=True))  # fails; the next attempt waits for the backoff
        clock.now = NOW + 10 * NS
        app_put(a, b"k", b"local")
        a.step(Batch(local=True))
        a.close()

        store.down = False
        remote_object(store, "b", NOW + 9 * NS, b"k", b"remote")
        clock.now = NOW + 20 * NS
        a = shadow_syncer("a", tmp_path, store, clock)
        assert a.run_once()
        assert app_get(a, b"k") == b"local"
        a.close()


class TestShadowErrors:
    """A DUPSORT pair the transform refuses is an error line, not a crash; fixing it resumes."""

    def test_bad_dupsort_key_blocks_upload_until_fixed(
        self, tmp_path: Path, store: MemoryStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A 300-byte key in a DUPSORT DBI: the step logs one error naming the DBI and key and
        uploads nothing; once the application removes the key, the next step uploads."""
        a = make_syncer("a", tmp_path, store)
        a.startup(retry_forever=True)
        env = a.lenv.env
        idx = env.open_db(b"idx", create=True, dupsort=True)
        with env.begin(write=True) as txn:
            txn.put(b"ok", b"1", db=idx)
            txn.put(b"k" * 300, b"1", db=idx)
        a.step(Batch(local=True))
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1
        assert "DBI 'idx'" in errors[0] and "key length 300" in errors[0]
        assert objects(store, "a") == []

        with env.begin(write=True) as txn:
            txn.delete(b"k" * 300, db=idx)
        a.sender.backoff.succeeded()  # skip the retry delay
        a.step(Batch(local=True))
        assert len(objects(store, "a")) == 1
        a.close()
