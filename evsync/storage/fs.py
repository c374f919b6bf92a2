"""A directory used as the bucket: atomic stores (temp name, fsync, rename), no cloud needed.

Only regular files directly inside the root are objects: a FIFO, a device, a socket or
a symlink put there (by hand, or by a hostile local user) is never opened — opening a
FIFO would block the syncer, and a symlink could make it read any file on the host.
An object's size is checked before anything is copied, so a huge (or sparse) file
never turns into a temp file of the same size. Temp files a killed store left behind
are removed when the store opens, and by later listings once they are old enough.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from evsync.errors import (
    CorruptObjectError,
    ObjectNotFoundError,
    StorageError,
    StorageUnavailableError,
)
from evsync.storage.base import COPY_CHUNK, SPOOL_MAX_BYTES, BlobStore, ObjectInfo

TMP_SUFFIX = ".tmp"
# An object larger than this is refused before a byte of it is read (a snapshot of a
# multi-GB LMDB compresses to far less; an 8 GiB sparse file would otherwise become an
# 8 GiB temp file).
MAX_OBJECT_BYTES = 4 << 30
# A temp file not written for this long belongs to a store that died (kill -9): a live
# store writes it continuously and renames it within seconds of the last write, so
# another process's store in progress in a shared directory is never touched.
STALE_TMP_SECONDS = 15 * 60.0
# Opening without blocking (a FIFO) and without following a symlink (it fails instead).
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)

log = logging.getLogger(__name__)


def is_temp_name(name: str) -> bool:
    """Names a store in progress uses; they are never listed."""
    return name.endswith(TMP_SUFFIX) or name.startswith(".")


class FsStore(BlobStore):
    """Objects as files in one flat directory."""

    kind = "fs"

    def __init__(
        self, root_path: str | os.PathLike[str], *, max_object_bytes: int = MAX_OBJECT_BYTES
    ) -> None:
        self.root = Path(root_path)
        self.max_object_bytes = max_object_bytes
        self._temps_checked = time.monotonic()
        if self.root.is_dir():
            self._remove_stale_temps(self._scan(), startup=True)
            return
        key = "storage.options.root_path"
        if self.root.exists():
            raise StorageError(f"{key}: {self.root} is not a directory")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{key}: cannot create {self.root}: {exc.strerror}") from None
        # said aloud: a mistyped root_path would otherwise give this instance a bucket
        # of its own, silently
        log.warning("fs store: created %s (a new, empty bucket)", self.root)

    def describe(self) -> str:
        return f"fs:{self.root}"

    def _path(self, name: str) -> Path:
        if "/" in name or name in ("", ".", "..") or "\0" in name:
            raise StorageError(f"fs store: invalid object name {name!r}")
        return self.root / name

    def _scan(self) -> list[os.DirEntry[str]]:
        try:
            return list(os.scandir(self.root))
        except OSError as exc:
            raise StorageUnavailableError(
                f"fs store: cannot list {self.root}: {exc.strerror}"
            ) from None

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        entries = self._scan()
        now = time.monotonic()
        if now - self._temps_checked >= STALE_TMP_SECONDS:
            self._temps_checked = now
            self._remove_stale_temps(entries, startup=False)
        out = []
        for entry in entries:
            if not entry.name.startswith(prefix) or is_temp_name(entry.name):
                continue
            try:
                if entry.is_file(follow_symlinks=False):
                    out.append(ObjectInfo(entry.name, entry.stat().st_size))
            except FileNotFoundError:
                continue  # deleted while listing
        out.sort(key=lambda o: o.name)
        return out

    def open(self, name: str) -> IO[bytes]:
        """The object's file; CorruptObjectError for anything but a regular file within
        the size cap (the name is then never worth another try)."""
        path = self._path(name)
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            raise ObjectNotFoundError(f"fs store: {name} not found") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
                raise CorruptObjectError(
                    f"fs store: {name} is a symlink, not a regular file; not opened"
                ) from None
            raise StorageUnavailableError(f"fs store: cannot read {name}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CorruptObjectError(
                    f"fs store: {name} is {_file_kind(st.st_mode)}, not a regular file; not read"
                )
            if st.st_size > self.max_object_bytes:
                raise CorruptObjectError(
                    f"fs store: {name} is {st.st_size} bytes, over the {self.max_object_bytes}"
                    "-byte object size cap; not read"
                )
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def exists(self, name: str) -> bool:
        """True for a regular file of that name (what :meth:`list` shows)."""
        if is_temp_name(name):
            return False
        try:
            st = os.lstat(self._path(name))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageUnavailableError(f"fs store: cannot stat {name}: {exc.strerror}") from None
        return stat.S_ISREG(st.st_mode)

    def fetch(self, name: str) -> IO[bytes]:
        """As :meth:`BlobStore.fetch`, but a file that grows past the cap while it is
        copied (objects are immutable; someone is writing to it) is refused too."""
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_BYTES)  # noqa: SIM115
        try:
            with self.open(name) as src:
                left = self.max_object_bytes + 1
                while chunk := src.read(min(COPY_CHUNK, left)):
                    spool.write(chunk)
                    left -= len(chunk)
                    if not left:
                        raise CorruptObjectError(
                            f"fs store: {name} grew past the {self.max_object_bytes}-byte "
                            "object size cap while read"
                        )
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        return spool

    def store(self, name: str, data: IO[bytes]) -> None:
        final = self._path(name)
        tmp = self.root / f".{name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"
        try:
            with tmp.open("wb") as out:
                shutil.copyfileobj(data, out, COPY_CHUNK)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
            self._fsync_dir()
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            what = "disk full" if exc.errno == errno.ENOSPC else exc.strerror
            raise StorageUnavailableError(f"fs store: cannot store {name}: {what}") from None
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def delete(self, name: str) -> None:
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageUnavailableError(
                f"fs store: cannot delete {name}: {exc.strerror}"
            ) from None

    def _remove_stale_temps(self, entries: Iterable[os.DirEntry[str]], *, startup: bool) -> None:
        """Delete the temp files of stores that died (kill -9 during a store)."""
        cutoff = time.time() - STALE_TMP_SECONDS
        removed = 0
        for entry in entries:
            if not (entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX)):
                continue
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                continue  # renamed or removed meanwhile, or not ours to remove
        if removed:
            log.info(
                "fs store: removed %d stale temp file(s) of interrupted stores from %s%s",
                removed,
                self.root,
                " at start" if startup else "",
            )

    def _fsync_dir(self) -> None:
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _file_kind(mode: int) -> str:
    """What a non-regular file is, for the line that refuses it."""
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symlink"),
    ):
        if test(mode):
            return kind
    return "a special file"
