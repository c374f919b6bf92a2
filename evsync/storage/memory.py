"""An in-process BlobStore for unit tests and experiments; it forgets everything on exit."""

from __future__ import annotations

import io
import threading
from typing import IO

from evsync.errors import ObjectNotFoundError, StorageUnavailableError
from evsync.storage.base import BlobStore, ObjectInfo


class MemoryStore(BlobStore):
    """Objects in a dict; ``fail`` makes every call raise, to simulate an outage."""

    kind = "memory"

    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.fail = False
        self.calls: dict[str, int] = {"list": 0, "open": 0, "store": 0, "delete": 0, "head": 0}

    def _enter(self, op: str) -> None:
        self.calls[op] += 1
        if self.fail:
            raise StorageUnavailableError(f"memory store: simulated outage during {op}")

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        self._enter("list")
        with self._lock:
            return [
                ObjectInfo(n, len(d))
                for n, d in sorted(self._objects.items())
                if n.startswith(prefix)
            ]

    def open(self, name: str) -> IO[bytes]:
        self._enter("open")
        with self._lock:
            if name not in self._objects:
                raise ObjectNotFoundError(f"memory store: {name} not found")
            return io.BytesIO(self._objects[name])

    def exists(self, name: str) -> bool:
        self._enter("head")
        with self._lock:
            return name in self._objects

    def store(self, name: str, data: IO[bytes]) -> None:
        self._enter("store")
        payload = data.read()
        with self._lock:
            self._objects[name] = payload

    def delete(self, name: str) -> None:
        self._enter("delete")
        with self._lock:
            self._objects.pop(name, None)

    def put_bytes(self, name: str, payload: bytes) -> None:
        """Test helper: place raw bytes under a name."""
        with self._lock:
            self._objects[name] = payload
