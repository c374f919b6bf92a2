"""The LMDB watcher: one local hint per commit from its own inotify reader, watchdog where
inotify cannot be set up, and a prompt stop."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from evsync.config import LmdbConfig, LmdbOptions
from evsync.lmdb.env import LmdbEnv
from evsync.tools import lmdb_write
from evsync.triggers import lmdb_watch
from evsync.triggers.base import SOURCE_WATCHER, HintQueue
from evsync.triggers.lmdb_watch import (
    IN_MODIFY,
    IN_Q_OVERFLOW,
    LmdbWatcher,
    TxnObserver,
    concerns,
)

HINT_TIMEOUT = 5.0  # generous: the machine may be busy; a hint normally comes in ~1 ms
QUIET_SECONDS = 0.3  # how long "no hint" is waited for


@pytest.fixture
def lenv(tmp_path: Path) -> Iterator[LmdbEnv]:
    env = LmdbEnv(
        LmdbConfig(name="main", path=str(tmp_path / "db"), options=LmdbOptions(create=True))
    )
    commit(env, b"k0")  # creates the DBI (a txn of its own) before any watcher looks
    yield env
    env.close()


def commit(lenv: LmdbEnv, key: bytes) -> None:
    """One application write txn."""
    lmdb_write.put(lenv.env, "records", key, b"v", 1000)


def start_watcher(lenv: LmdbEnv, queue: HintQueue) -> LmdbWatcher:
    watcher = LmdbWatcher(Path(lenv.cfg.path) / "data.mdb", TxnObserver(lenv, queue))
    watcher.start()
    return watcher


def start_observed(lenv: LmdbEnv) -> tuple[HintQueue, TxnObserver, LmdbWatcher]:
    """A started watcher, its observer and their queue."""
    queue = HintQueue("main")
    watcher = start_watcher(lenv, queue)
    return queue, watcher.txn, watcher


def event(name: bytes, mask: int = IN_MODIFY) -> bytes:
    """One inotify event as the kernel lays it out (name padded with NULs)."""
    padded = name + b"\0" * (16 - len(name) % 16)
    return lmdb_watch._EVENT.pack(1, mask, 0, len(padded)) + padded


class TestInotifyReader:
    """The watcher's own inotify reader, on a real LMDB."""

    def test_a_commit_gives_one_local_hint_from_the_watcher(self, lenv: LmdbEnv) -> None:
        """A write txn on the LMDB queues a local hint credited to the watcher, once
        (a commit makes two inotify events; the txn id confirms one change)."""
        queue = HintQueue("main")
        watcher = start_watcher(lenv, queue)
        try:
            commit(lenv, b"k1")
            assert queue.wait(HINT_TIMEOUT).local
            assert queue.first[SOURCE_WATCHER] == 1
            assert not queue.wait(QUIET_SECONDS).local
            commit(lenv, b"k2")
            assert queue.wait(HINT_TIMEOUT).local
            assert queue.first[SOURCE_WATCHER] == 2
        finally:
            watcher.stop()

    def test_other_files_in_the_directory_give_no_hint(self, lenv: LmdbEnv) -> None:
        """Writing another file beside data.mdb wakes nothing."""
        queue = HintQueue("main")
        watcher = start_watcher(lenv, queue)
        try:
            (Path(lenv.cfg.path) / "notes.txt").write_text("x")
            assert not queue.wait(QUIET_SECONDS).local
        finally:
            watcher.stop()

    def test_stop_ends_the_thread_and_closes_the_descriptors(self, lenv: LmdbEnv) -> None:
        """stop() wakes the reader at once, joins it and closes its descriptors."""
        watcher = start_watcher(lenv, HintQueue("main"))
        fd = watcher._fd
        assert fd is not None and watcher._thread is not None
        watcher.stop()
        assert not watcher._thread.is_alive()
        with pytest.raises(OSError):
            os.fstat(fd)


class TestEvents:
    """Which reads of events concern the data file."""

    def test_only_the_data_file_counts(self) -> None:
        """An event naming data.mdb counts, one naming lock.mdb does not, and a read
        holding both counts."""
        assert concerns(event(b"data.mdb"), b"data.mdb")
        assert not concerns(event(b"lock.mdb"), b"data.mdb")
        assert concerns(event(b"lock.mdb") + event(b"data.mdb"), b"data.mdb")

    def test_lost_events_count(self) -> None:
        """A queue overflow (events lost) makes the watcher look at the txn id anyway."""
        assert concerns(lmdb_watch._EVENT.pack(-1, IN_Q_OVERFLOW, 0, 0), b"data.mdb")


class TestFallback:
    """Where inotify cannot be set up, watchdog watches instead."""

    def test_watchdog_takes_over_and_says_so_once(
        self, lenv: LmdbEnv, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """With inotify refused (the instances limit, say), one info line names the reason
        and commits still give local hints, through watchdog."""

        def refused(_directory: bytes) -> int:
            raise OSError(24, "inotify_init1: Too many open files")

        monkeypatch.setattr(lmdb_watch, "_open_inotify", refused)
        queue = HintQueue("main")
        with caplog.at_level(logging.INFO, logger="evsync.triggers.lmdb_watch"):
            watcher = start_watcher(lenv, queue)
        try:
            lines = [
                r.getMessage() for r in caplog.records if "inotify unavailable" in r.getMessage()
            ]
            assert len(lines) == 1 and "Too many open files" in lines[0]
            commit(lenv, b"k1")
            assert queue.wait(HINT_TIMEOUT).local
            assert queue.first[SOURCE_WATCHER] == 1
        finally:
            watcher.stop()

    def test_a_failing_read_ends_the_watcher_with_one_warning(
        self, lenv: LmdbEnv, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An inotify read that fails (never expected) ends the reader thread with one
        warning naming the error, not a traceback; stop() still works."""

        def broken_read(_fd: int, _n: int) -> bytes:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(lmdb_watch.os, "read", broken_read)
        with caplog.at_level(logging.WARNING, logger="evsync.triggers.lmdb_watch"):
            watcher = start_watcher(lenv, HintQueue("main"))
            commit(lenv, b"k1")
            assert watcher._thread is not None
            watcher._thread.join(HINT_TIMEOUT)
            assert not watcher._thread.is_alive()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "Input/output error" in warnings[0]
        watcher.stop()


class TestOwnCommits:
    """TxnObserver.own: the syncer's own commits are no news, an application's still are."""

    def test_an_own_commit_wakes_nothing(self, lenv: LmdbEnv) -> None:
        """A txn the syncer reports as its own right after committing it gives no hint."""
        queue = HintQueue("main")
        observer = TxnObserver(lenv, queue)
        commit(lenv, b"merge")
        observer.own([lenv.last_txn_id()])
        assert not observer.check(SOURCE_WATCHER)
        assert not queue.wait(0).local

    def test_an_application_commit_before_the_own_one_still_wakes(self, lenv: LmdbEnv) -> None:
        """An application commit the observer had not seen yet, then the syncer's: the
        gap keeps both unseen, so the application's change is hinted."""
        queue = HintQueue("main")
        observer = TxnObserver(lenv, queue)
        commit(lenv, b"app")
        commit(lenv, b"merge")
        observer.own([lenv.last_txn_id()])
        assert observer.check(SOURCE_WATCHER)
        assert queue.wait(0).local

    def test_an_application_commit_after_the_own_one_still_wakes(self, lenv: LmdbEnv) -> None:
        """The syncer's commit, then the application's before the syncer reports its
        own: the observer counts only the syncer's txn as seen and hints the other."""
        queue = HintQueue("main")
        observer = TxnObserver(lenv, queue)
        commit(lenv, b"merge")
        own = lenv.last_txn_id()
        commit(lenv, b"app")
        observer.own([own])
        assert observer.check(SOURCE_WATCHER)
        assert queue.wait(0).local

    def test_own_txns_already_seen_change_nothing(self, lenv: LmdbEnv) -> None:
        """Reported after the watcher already hinted them: nothing moves backwards and
        the next application commit is hinted."""
        queue = HintQueue("main")
        observer = TxnObserver(lenv, queue)
        commit(lenv, b"merge")
        assert observer.check(SOURCE_WATCHER)
        observer.own([lenv.last_txn_id()])
        commit(lenv, b"app")
        assert observer.check(SOURCE_WATCHER)

    def test_a_merge_through_the_watcher_gives_no_hint(self, lenv: LmdbEnv) -> None:
        """With the real inotify reader: an own commit reported at once gives no hint,
        an application commit after it gives one."""
        queue = HintQueue("main")
        observer = TxnObserver(lenv, queue)
        # Re-entrant here only, so this thread can commit and report under the lock
        # while the watcher's check waits until own() has run (as the syncer does when
        # it reports its merge before the watcher reads the txn id).
        observer._lock = threading.RLock()  # type: ignore[assignment]
        watcher = LmdbWatcher(Path(lenv.cfg.path) / "data.mdb", observer)
        watcher.start()
        try:
            with observer._lock:
                commit(lenv, b"merge")
                observer.own([lenv.last_txn_id()])
            assert not queue.wait(QUIET_SECONDS).local
            commit(lenv, b"app")
            assert queue.wait(HINT_TIMEOUT).local
        finally:
            watcher.stop()


class TestWhileTheSyncerMerges:
    """TxnObserver.merging: what the watcher notices while the syncer merges waits
    for the merging to end, when its own commits are known."""

    def test_a_merge_noticed_before_it_is_reported_wakes_nothing(self, lenv: LmdbEnv) -> None:
        """The watcher reads the txn id between the merge's commit and its report (the
        race it used to win 0.6 times per received delta): no hint, then or at the end."""
        queue = HintQueue("main")
        observer = TxnObserver(lenv, queue)
        with observer.merging():
            commit(lenv, b"merge")
            assert not observer.check(SOURCE_WATCHER)
            observer.own([lenv.last_txn_id()])
        assert not queue.wait(0).local

    def test_an_application_commit_during_the_step_wakes_the_loop_after_it(
        self, lenv: LmdbEnv
    ) -> None:
        """An application commit between the step's own ones is hinted when the step
        ends, credited to the source that noticed it."""
        queue = HintQueue("main")
        observer = TxnObserver(lenv, queue)
        with observer.merging():
            commit(lenv, b"merge")
            merge = lenv.last_txn_id()
            commit(lenv, b"app")
            assert not observer.check(SOURCE_WATCHER)
            assert not queue.wait(0).local  # not during the step
            observer.own([merge])
        assert queue.wait(0).local
        assert queue.first[SOURCE_WATCHER] == 1

    def test_a_step_that_fails_still_lets_the_commit_through(self, lenv: LmdbEnv) -> None:
        """A step that raises before reporting anything: the commit noticed during it is
        hinted as it ends, and later ones as before."""
        queue = HintQueue("main")
        observer = TxnObserver(lenv, queue)
        with pytest.raises(RuntimeError), observer.merging():
            commit(lenv, b"app")
            observer.check(SOURCE_WATCHER)
            raise RuntimeError("step failed")
        assert queue.wait(0).local
        commit(lenv, b"app2")
        assert observer.check(SOURCE_WATCHER)

    def test_nothing_noticed_means_no_check(self, lenv: LmdbEnv) -> None:
        """A step during which the watcher noticed nothing ends without a hint even if a
        commit came (the watcher will notice that one itself)."""
        queue = HintQueue("main")
        observer = TxnObserver(lenv, queue)
        with observer.merging():
            commit(lenv, b"app")
        assert not queue.wait(0).local
        assert observer.check(SOURCE_WATCHER)


def app_commit_in_another_process(lenv: LmdbEnv, key: str) -> None:
    """One write txn by a second process, as the application's would be."""
    tool = [sys.executable, "-m", "evsync.tools.lmdb_write"]
    subprocess.run(
        [*tool, lenv.cfg.path, "put", "records", key, "v"],
        check=True,
        capture_output=True,
        timeout=60,
    )


class TestMutedWhileTheSyncerMerges:
    """With the inotify watcher running, TxnObserver.merging mutes its modify events
    (each merge's commit woke the watcher's thread twice) and reads the txn id itself
    when the merges end."""

    @staticmethod
    def counting_checks(observer: TxnObserver) -> list[str]:
        """The sources of every check made on ``observer`` from now on."""
        calls: list[str] = []
        check = observer.check

        def counted(source: str) -> bool:
            calls.append(source)
            return check(source)

        observer.check = counted  # type: ignore[method-assign]
        return calls

    def test_the_merges_own_commits_do_not_wake_the_watcher(self, lenv: LmdbEnv) -> None:
        """Commits made and reported inside the merging part reach the watcher's thread
        as no event at all (no check of the txn id from it), give no hint when the part
        ends, and a commit after it is heard again."""
        queue, observer, watcher = start_observed(lenv)
        try:
            calls = self.counting_checks(observer)
            with observer.merging():
                for i in range(3):
                    commit(lenv, b"merge%d" % i)
                    observer.own([lenv.last_txn_id()])
                time.sleep(QUIET_SECONDS)  # time for events to come, if any were made
                assert calls == []
            assert not queue.wait(QUIET_SECONDS).local
            commit(lenv, b"app")
            assert queue.wait(HINT_TIMEOUT).local
            assert queue.first[SOURCE_WATCHER] == 1
        finally:
            watcher.stop()

    def test_an_application_commit_while_muted_is_hinted_when_the_merges_end(
        self, lenv: LmdbEnv
    ) -> None:
        """Another process commits while the syncer merges (its event is muted): the
        hint comes as the merging part ends, credited to the watcher, and only then."""
        queue, observer, watcher = start_observed(lenv)
        try:
            with observer.merging():
                commit(lenv, b"merge")
                merge = lenv.last_txn_id()
                app_commit_in_another_process(lenv, "app")
                observer.own([merge])
                assert not queue.wait(QUIET_SECONDS).local
            assert queue.wait(0).local
            assert queue.first[SOURCE_WATCHER] == 1
        finally:
            watcher.stop()

    def test_a_stopped_watcher_is_not_muted_any_more(self, lenv: LmdbEnv) -> None:
        """Once the watcher stopped (its descriptor closed), the merging part neither
        touches it nor reads the txn id for it: with no watcher, a commit meanwhile is
        left to whoever notices it."""
        queue, observer, watcher = start_observed(lenv)
        assert observer.quiet_hooks
        watcher.stop()
        assert observer.quiet_hooks == []
        with observer.merging():
            commit(lenv, b"app")
        assert not queue.wait(0).local
        assert observer.check(SOURCE_WATCHER)

    def test_the_watch_hears_again_after_its_directory_moved_while_muted(
        self, lenv: LmdbEnv, tmp_path: Path
    ) -> None:
        """The LMDB's directory is renamed while the syncer merges (the env, its files
        open, goes on): the unmute must reach the watch made at start (it follows the
        directory's inode), not fail on the old path and leave modify events muted."""
        queue, observer, watcher = start_observed(lenv)
        try:
            with observer.merging():
                os.rename(lenv.cfg.path, tmp_path / "moved")
            queue.wait(0)
            commit(lenv, b"app")
            assert queue.wait(HINT_TIMEOUT).local
        finally:
            watcher.stop()

    def test_the_watch_is_unmuted_before_the_txn_id_is_read(self, lenv: LmdbEnv) -> None:
        """An application commit between the read and the unmute would make no event
        and find the id already read: the hooks hear False before the read."""
        order: list[str] = []
        observer = TxnObserver(lenv, HintQueue("main"))
        observer.quiet_hooks.append(lambda quiet: order.append(f"quiet={quiet}"))
        read = lenv.last_txn_id

        def reading() -> int:
            order.append("read")
            return read()

        lenv.last_txn_id = reading  # type: ignore[method-assign]
        with observer.merging():
            pass
        assert order == ["quiet=True", "quiet=False", "read"]

    def test_a_commit_that_makes_only_modify_events_is_hinted_when_the_merges_end(
        self, lenv: LmdbEnv
    ) -> None:
        """An application that keeps the LMDB open (its commits make modify events
        only, no close event) commits while the syncer merges: only the txn-id read at
        the end can find it. (A process that commits and exits is also heard by its
        close event, which the mute keeps.)"""
        queue, observer, watcher = start_observed(lenv)
        try:
            with observer.merging():
                commit(lenv, b"merge")
                observer.own([lenv.last_txn_id()])
                commit(lenv, b"app")  # this process keeps the env open: no close event
                assert not queue.wait(QUIET_SECONDS).local
            assert queue.wait(0).local
        finally:
            watcher.stop()
