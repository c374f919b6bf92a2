"""Where a remote object's bytes come from, behind one interface.

The receiver asks an :class:`ObjectSource` for an object by name and gets a seekable
stream; it never learns whether the bytes came by GET from the bucket
(:class:`StorageSource`) or, say, inside the notification that announced the object.
A source raises :class:`~evsync.errors.ObjectNotFoundError` when the object is gone
and another :class:`~evsync.errors.StorageError` when it cannot tell (worth a retry).

May call: a bucket's ``fetch``. Must not: verify, merge or keep state about instances
(the receiver does).
"""

from __future__ import annotations

import abc
from typing import IO

from evsync.snapshot.name import SnapshotName
from evsync.storage.base import BlobStore


class ObjectSource(abc.ABC):
    """Hands the receiver an object's bytes."""

    @abc.abstractmethod
    def fetch(self, name: SnapshotName) -> IO[bytes]:
        """A seekable stream of the whole object; the caller closes it."""


class StorageSource(ObjectSource):
    """Objects fetched from the bucket (spooled to memory or a temp file by the store)."""

    def __init__(self, store: BlobStore) -> None:
        self.store = store

    def fetch(self, name: SnapshotName) -> IO[bytes]:
        """GET the object."""
        return self.store.fetch(name.name)
