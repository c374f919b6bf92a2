"""Objects that arrived inside a notification, held until the syncer merges them.

An inline companion (:func:`evsync.triggers.s3events.inline_companion`) carries a small
delta so that a receiver can merge it without a GET. The MQTT thread puts the bytes
here; the syncer takes them through :class:`~evsync.sync.sources.CarriedSource`, and
the receiver checks them by the same rules as fetched bytes (dropping them, not the
object, when they fail). Bounded in count and bytes: a flood of
companions (or forged ones) costs at most this memory, and an object pushed out is
fetched from the bucket as any announced one.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from evsync.snapshot.name import SnapshotName

# Objects held per db at a time, and their bytes; the oldest go first past either.
# A caught-up receiver takes each within a step, so a handful would do; 64 rides out a
# burst while the syncer is busy with a big merge.
MAX_CARRIED_OBJECTS = 64
MAX_CARRIED_BYTES = 8 << 20


class CarriedObjects:
    """Name -> bytes of the objects carried by notifications; thread-safe."""

    def __init__(
        self, max_objects: int = MAX_CARRIED_OBJECTS, max_bytes: int = MAX_CARRIED_BYTES
    ) -> None:
        self.max_objects = max_objects
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._objects: OrderedDict[str, tuple[SnapshotName, bytes]] = OrderedDict()
        self._bytes = 0
        #: called with the number of objects dropped unmerged (pushed out, or no longer
        #: needed because the receiver got past them otherwise)
        self.on_unused: Callable[[int], None] | None = None

    def add(self, name: SnapshotName, data: bytes) -> bool:
        """Hold ``data`` as ``name``'s bytes; False when already held or too big to hold."""
        if len(data) > self.max_bytes:
            return False
        with self._lock:
            if name.name in self._objects:
                return False
            self._objects[name.name] = (name, data)
            self._bytes += len(data)
            dropped = 0
            while len(self._objects) > self.max_objects or self._bytes > self.max_bytes:
                _old, (_n, old_data) = self._objects.popitem(last=False)
                self._bytes -= len(old_data)
                dropped += 1
        self._unused(dropped)
        return True

    def take(self, name: SnapshotName) -> bytes | None:
        """The bytes of ``name``, no longer held; None when not held."""
        with self._lock:
            item = self._objects.pop(name.name, None)
            if item is None:
                return None
            self._bytes -= len(item[1])
            return item[1]

    def drop_through(self, instance: str, name: str) -> None:
        """Forget ``instance``'s objects that sort at or before ``name`` (its position
        passed them: they are no longer needed)."""
        with self._lock:
            stale = [
                key for key, (n, _d) in self._objects.items()
                if n.instance == instance and key <= name
            ]
            for key in stale:
                self._bytes -= len(self._objects.pop(key)[1])
        self._unused(len(stale))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._objects

    def __len__(self) -> int:
        return len(self._objects)

    def _unused(self, count: int) -> None:
        if count and self.on_unused is not None:
            self.on_unused(count)
