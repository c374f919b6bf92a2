"""The per-LMDB lock: a second evsync on the same LMDB is refused with one line."""

from __future__ import annotations

import errno
import fcntl
import gc
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from evsync.config import LmdbConfig, LmdbOptions
from evsync.errors import LmdbError
from evsync.lmdb.lock import SyncLock, lock_path

HOLD_SECONDS = 60


def config(path: Path, *, no_subdir: bool = False, create: bool = True) -> LmdbConfig:
    return LmdbConfig(
        name="main",
        path=str(path),
        schema_tracks_changes=True,
        options=LmdbOptions(create=create, no_subdir=no_subdir, map_size=16 << 20),
    )


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A second process holding the lock of tmp_path/lmdb until it is killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from evsync.config import LmdbConfig, LmdbOptions
        from evsync.lmdb.lock import SyncLock
        cfg = LmdbConfig(name="main", path={str(tmp_path / "lmdb")!r},
                         schema_tracks_changes=True, options=LmdbOptions(create=True))
        Path(cfg.path).mkdir(parents=True, exist_ok=True)  # as opening the LMDB does
        assert SyncLock(cfg).acquire()
        print("held", flush=True)
        time.sleep({HOLD_SECONDS})
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "held\n"
        yield proc
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:  # not left to the collector: a later test counts fds
            proc.stdout.close()


class TestSyncLock:
    """SyncLock.acquire() lets one process at a time sync an LMDB."""

    def test_second_process_is_refused_by_pid(
        self, tmp_path: Path, holder: subprocess.Popen[str]
    ) -> None:
        """While another process holds the lock, acquiring it raises one line naming
        that process's pid, the LMDB and the lock file."""
        cfg = config(tmp_path / "lmdb")
        with pytest.raises(LmdbError) as err:
            SyncLock(cfg).acquire()
        assert str(err.value) == (
            f"lmdbs.main: another evsync (pid {holder.pid}) is already syncing "
            f"{tmp_path / 'lmdb'} (it holds {tmp_path / 'lmdb' / 'evsync.lock'}); stop it first"
        )

    def test_a_killed_holder_leaves_no_stale_lock(
        self, tmp_path: Path, holder: subprocess.Popen[str]
    ) -> None:
        """Once the holder is killed (SIGKILL, no clean-up), the lock can be taken."""
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        lock = SyncLock(config(tmp_path / "lmdb"))
        assert lock.acquire()
        assert lock.path.read_text() == f"{os.getpid()}\n"
        lock.release()

    def test_released_lock_lets_the_next_in(self, tmp_path: Path) -> None:
        """After release() another acquirer (here a second open in this process) gets it."""
        (tmp_path / "lmdb").mkdir()
        first = SyncLock(config(tmp_path / "lmdb"))
        assert first.acquire()
        with pytest.raises(LmdbError, match="already syncing"):
            SyncLock(config(tmp_path / "lmdb")).acquire()
        first.release()
        second = SyncLock(config(tmp_path / "lmdb"))
        assert second.acquire()
        second.release()

    def test_no_subdir_lock_sits_beside_the_file(self, tmp_path: Path) -> None:
        """For a no_subdir LMDB (PowerDNS's pdns.lmdb) the lock is <file>-evsync.lock."""
        cfg = config(tmp_path / "pdns.lmdb", no_subdir=True)
        assert lock_path(cfg) == tmp_path / "pdns.lmdb-evsync.lock"
        lock = SyncLock(cfg)
        assert lock.acquire()
        assert (tmp_path / "pdns.lmdb-evsync.lock").exists()
        lock.release()

    def test_missing_directory_is_left_to_the_open(self, tmp_path: Path) -> None:
        """With no LMDB directory, nothing is created and acquire() returns False:
        opening the LMDB creates the directory, or says the path does not exist."""
        cfg = config(tmp_path / "absent", create=False)
        assert SyncLock(cfg).acquire() is False
        assert not (tmp_path / "absent").exists()


    def test_uncreatable_lock_file_warns_and_runs(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """When the lock file cannot be created (here a directory is in its place; a
        full disk or a read-only directory alike), acquire() logs one warning and
        returns False instead of stopping the daemon."""
        (tmp_path / "lmdb" / "evsync.lock").mkdir(parents=True)
        with caplog.at_level("WARNING", logger="evsync.lmdb.lock"):
            assert SyncLock(config(tmp_path / "lmdb")).acquire() is False
        assert [r.getMessage() for r in caplog.records] == [
            f"lmdbs.main: cannot lock {tmp_path / 'lmdb' / 'evsync.lock'} (Is a directory); "
            "running without the one-evsync-per-LMDB check"
        ]


    def test_filesystem_without_locks_warns_and_runs(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A filesystem that refuses flock itself (NFS without lockd: ENOLCK) gives one
        warning and no lock, not a traceback, and leaves no file descriptor open."""
        def no_locks(fd: int, op: int) -> None:
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

        (tmp_path / "lmdb").mkdir()
        monkeypatch.setattr(fcntl, "flock", no_locks)
        gc.collect()  # files other tests left unclosed must not close while counting
        before = len(os.listdir("/proc/self/fd"))
        with caplog.at_level("WARNING", logger="evsync.lmdb.lock"):
            assert SyncLock(config(tmp_path / "lmdb")).acquire() is False
        assert len(os.listdir("/proc/self/fd")) == before
        assert [r.getMessage() for r in caplog.records] == [
            f"lmdbs.main: cannot lock {tmp_path / 'lmdb' / 'evsync.lock'} "
            f"({os.strerror(errno.ENOLCK)}); running without the one-evsync-per-LMDB check"
        ]


class TestSecondDaemon:
    """The CLI refuses a second sync of the same LMDB."""

    def test_sync_exits_1_with_one_line(
        self, tmp_path: Path, holder: subprocess.Popen[str]
    ) -> None:
        """`evsync sync --only-once` on an LMDB another evsync holds exits 1 with the
        lock's one-line error and writes nothing to stdout."""
        cfg = tmp_path / "evsync.yaml"
        cfg.write_text(
            "instance: node-a\n"
            f"lmdbs:\n  main:\n    path: {tmp_path / 'lmdb'}\n"
            "    options: {create: true, map_size: 16MB}\n"
            "storage:\n  type: memory\n"
        )
        run = subprocess.run(
            [sys.executable, "-m", "evsync", "-c", str(cfg), "sync", "--only-once"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert run.returncode == 1, run.stderr
        assert run.stdout == ""
        assert run.stderr.splitlines() == [
            f"evsync: error: lmdbs.main: another evsync (pid {holder.pid}) is already "
            f"syncing {tmp_path / 'lmdb'} (it holds {tmp_path / 'lmdb' / 'evsync.lock'}); "
            "stop it first"
        ]
