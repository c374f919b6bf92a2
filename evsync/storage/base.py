"""The BlobStore interface every storage backend implements, plus shared helpers."""

from __future__ import annotations

import abc
import shutil
import tempfile
from dataclasses import dataclass
from typing import IO

from evsync.errors import ObjectNotFoundError

# Objects up to this size are kept in memory while downloaded; larger ones spill to disk.
SPOOL_MAX_BYTES = 8 << 20
COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class ObjectInfo:
    """One object in a listing."""

    name: str
    size: int


class BlobStore(abc.ABC):
    """A flat namespace of immutable objects: list, open, exists, store, delete.

    Implementations raise :class:`~evsync.errors.ObjectNotFoundError` for a missing
    object and :class:`~evsync.errors.StorageUnavailableError` for anything worth
    retrying; deleting a missing object is not an error.
    """

    #: short backend name for logs and metrics
    kind: str = "base"

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """All objects whose name starts with ``prefix``, sorted by name."""

    @abc.abstractmethod
    def open(self, name: str) -> IO[bytes]:
        """A readable binary stream of the object; the caller closes it."""

    @abc.abstractmethod
    def store(self, name: str, data: IO[bytes]) -> None:
        """Store ``data`` (read from its current position to EOF) under ``name`` atomically."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Delete an object; a missing object is fine."""

    def exists(self, name: str) -> bool:
        """True when the bucket holds ``name`` (a HEAD, not a GET); raises
        StorageUnavailableError when it cannot tell. This default opens and closes the
        object; backends override it with something cheaper."""
        try:
            with self.open(name):
                return True
        except ObjectNotFoundError:
            return False

    def describe(self) -> str:
        """Where the objects live, for logs (never includes secrets)."""
        return self.kind

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def fetch(self, name: str) -> IO[bytes]:
        """Download an object into a seekable spooled temp file positioned at 0."""
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_BYTES)  # noqa: SIM115
        try:
            with self.open(name) as src:
                shutil.copyfileobj(src, spool, COPY_CHUNK)
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        return spool
