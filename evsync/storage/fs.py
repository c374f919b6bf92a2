"""A directory used as the bucket: atomic stores (temp name, fsync, rename), no cloud needed."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import IO

from evsync.errors import ObjectNotFoundError, StorageError, StorageUnavailableError
from evsync.storage.base import COPY_CHUNK, BlobStore, ObjectInfo

TMP_SUFFIX = ".tmp"

log = logging.getLogger(__name__)


def is_temp_name(name: str) -> bool:
    """Names a store in progress uses; they are never listed."""
    return name.endswith(TMP_SUFFIX) or name.startswith(".")


class FsStore(BlobStore):
    """Objects as files in one flat directory."""

    kind = "fs"

    def __init__(self, root_path: str | os.PathLike[str]) -> None:
        self.root = Path(root_path)
        if self.root.is_dir():
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

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        try:
            entries = list(os.scandir(self.root))
        except OSError as exc:
            raise StorageUnavailableError(
                f"fs store: cannot list {self.root}: {exc.strerror}"
            ) from None
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
        try:
            return self._path(name).open("rb")
        except FileNotFoundError:
            raise ObjectNotFoundError(f"fs store: {name} not found") from None
        except OSError as exc:
            raise StorageUnavailableError(f"fs store: cannot read {name}: {exc.strerror}") from None

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

    def _fsync_dir(self) -> None:
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
