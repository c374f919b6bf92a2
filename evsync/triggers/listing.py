"""The safety net: LIST the bucket periodically and hint the newest object of each instance."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from evsync.errors import StorageError
from evsync.snapshot import readable_name
from evsync.snapshot.name import SnapshotName, db_prefix
from evsync.storage.base import BlobStore, ObjectInfo
from evsync.triggers.base import SOURCE_LISTING, Hint, HintQueue, Trigger

log = logging.getLogger(__name__)

ERROR_LOG_INTERVAL = 60.0


def newest_per_instance(objects: list[ObjectInfo], db: str) -> dict[str, SnapshotName]:
    """The newest readable object name of each instance in a listing of one db."""
    return _newest(readable_names(objects, db))


def readable_names(objects: list[ObjectInfo], db: str) -> list[SnapshotName]:
    """The names in a listing of objects of ``db`` that evsync reads."""
    return [n for obj in objects if (n := readable_name(obj.name, db)) is not None]


def _newest(names: list[SnapshotName]) -> dict[str, SnapshotName]:
    newest: dict[str, SnapshotName] = {}
    for name in names:
        current = newest.get(name.instance)
        if current is None or name.name > current.name:
            newest[name.instance] = name
    return newest


class Lister(Trigger):
    """Every ``interval`` seconds, LIST ``<db>__`` and hint each instance's newest object."""

    source = SOURCE_LISTING

    def __init__(
        self,
        store: BlobStore,
        db: str,
        queue: HintQueue,
        interval: float,
        on_result: Callable[[bool, list[SnapshotName], float], None] | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.db = db
        self.queue = queue
        self.interval = interval
        self.on_result = on_result
        self._last_error_log = 0.0

    def list_once(self) -> bool:
        """One listing; returns False when the bucket could not be listed.

        ``on_result`` hears (ok, the readable names listed, when the LIST began): the
        syncer checks that its own objects are still there (a wiped bucket, objects
        removed by hand).
        """
        started = time.monotonic()
        try:
            objects = self.store.list(db_prefix(self.db))
        except StorageError as exc:
            now = time.monotonic()
            if now - self._last_error_log > ERROR_LOG_INTERVAL:
                log.warning("db %s: listing failed: %s", self.db, exc)
                self._last_error_log = now
            if self.on_result:
                self.on_result(False, [], started)
            return False
        names = readable_names(objects, self.db)
        # A rejected name may be the newest of its instance; hint the newest usable one.
        # A copy is never hinted: its instance's newest .evs.zst is (see sync/interop.py).
        accepts = self.queue.accepts
        usable = [
            n
            for n in names
            if not self.queue.is_rejected(n.name) and (accepts is None or accepts(n))
        ]
        for name in _newest(usable).values():
            self.queue.put(Hint(SOURCE_LISTING, name=name.name))
        self.queue.listed({n.instance for n in names})
        if self.on_result:
            self.on_result(True, names, started)
        return True

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            self.list_once()
