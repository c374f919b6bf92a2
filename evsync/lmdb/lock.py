"""One evsync per LMDB: an exclusive lock file beside it, held while a daemon syncs it."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

from evsync.config import LmdbConfig
from evsync.errors import LmdbError

# <path>/evsync.lock for an LMDB directory; <path>-evsync.lock beside a no_subdir file
# (PowerDNS's own files there are <path>, <path>-lock and its shards <path>-N)
LOCK_NAME = "evsync.lock"
LOCK_SUFFIX = "-evsync.lock"
LOCK_MODE = 0o644

log = logging.getLogger(__name__)


def lock_path(cfg: LmdbConfig) -> Path:
    """Where the lock file of an LMDB lives."""
    path = Path(cfg.path)
    return Path(f"{path}{LOCK_SUFFIX}") if cfg.options.no_subdir else path / LOCK_NAME


class SyncLock:
    """Held by the one process that syncs an LMDB.

    Two daemons on one LMDB would both upload under the same instance name, each
    believing its chain of objects is the only one. The lock is ``flock``: the kernel
    drops it when the process dies, so a killed daemon never leaves a stale lock. The
    file holds the holder's pid, for the error the next one prints.
    """

    def __init__(self, cfg: LmdbConfig) -> None:
        self.path = lock_path(cfg)
        self._fd: int | None = None
        self._key = f"lmdbs.{cfg.name}"
        self._lmdb = cfg.path

    def acquire(self) -> bool:
        """Take the lock, once the LMDB is open (opening it creates its directory).
        False when that directory does not exist, or when the file cannot be opened or
        locked (logged). Raises LmdbError naming the holder's pid when another
        process holds it."""
        if not self.path.parent.is_dir():
            return False  # opening the LMDB creates it, or names the path and the reason
        try:
            fd = _open_lock_file(self.path)
        except OSError as exc:
            self._unchecked(exc)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise LmdbError(
                f"{self._key}: another evsync{holder} is already syncing {self._lmdb} "
                f"(it holds {self.path}); stop it first"
            ) from None
        except OSError as exc:  # no locks on this filesystem (NFS without lockd, FUSE)
            os.close(fd)
            self._unchecked(exc)
            return False
        self._fd = fd
        with contextlib.suppress(OSError):  # the pid is for the message only; a full disk
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        return True

    def _unchecked(self, exc: OSError) -> None:
        # a full disk, a read-only directory or a filesystem without locks must not
        # stop the daemon: the lock guards against an operator's mistake, and the sync
        # itself can still run
        log.warning(
            "%s: cannot lock %s (%s); running without the one-evsync-per-LMDB check",
            self._key,
            self.path,
            exc.strerror or exc,
        )

    def release(self) -> None:
        """Let the next process in; the file stays (removing it would race a newcomer)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _open_lock_file(path: Path) -> int:
    """The lock file, created if missing; read-only when another user owns it (flock
    works on any open file, only the pid is then not written)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, LOCK_MODE)
    except PermissionError:
        return os.open(path, os.O_RDONLY)


def _read_pid(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode().strip()
        if text.isdigit():
            return f" (pid {text})"
    return ""
