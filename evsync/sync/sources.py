"""Where a remote object's bytes come from, behind one interface.

The receiver asks an :class:`ObjectSource` for an object by name and gets a seekable
stream, verified by the receiver alike whether the bytes came by GET from the bucket
(:class:`StorageSource`) or inside a notification (:class:`CarriedSource`, whose
streams are :class:`CarriedStream`: the receiver counts them apart, and drops carried
bytes that fail verification without marking the object bad, since a notification is
no proof of what the bucket holds; the bucket's copy comes once the object is named).
A source raises :class:`~evsync.errors.ObjectNotFoundError` when the object is gone
and another :class:`~evsync.errors.StorageError` when it cannot tell (worth a retry).

May call: a bucket's ``fetch``. Must not: verify, merge or keep state about instances
(the receiver does).
"""

from __future__ import annotations

import abc
import io
from typing import IO

from evsync.snapshot.name import SnapshotName
from evsync.storage.base import BlobStore
from evsync.triggers.carried import CarriedObjects


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


class CarriedStream(io.BytesIO):
    """Bytes that came inside a notification, not from the bucket."""


class CarriedSource(ObjectSource):
    """An object's bytes from the notification that carried it when there are any (each
    handed out once), else from ``fallback``."""

    def __init__(self, carried: CarriedObjects, fallback: ObjectSource) -> None:
        self.carried = carried
        self.fallback = fallback

    def fetch(self, name: SnapshotName) -> IO[bytes]:
        """The carried bytes, or the fallback's fetch (a GET)."""
        data = self.carried.take(name)
        if data is None:
            return self.fallback.fetch(name)
        return CarriedStream(data)
