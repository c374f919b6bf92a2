"""Local change triggers: an inotify watcher on the LMDB file and a txn-id poll fallback.

Both confirm a change by reading the LMDB's last txn id, so reader noise
(open/close events) never wakes the syncer, and whichever sees a new txn id
first is credited with the hint.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler

from evsync.lmdb.env import LmdbEnv
from evsync.triggers.base import (
    SOURCE_POLL,
    SOURCE_WATCHER,
    Hint,
    HintQueue,
    Trigger,
    WatchdogTrigger,
)

log = logging.getLogger(__name__)


class TxnObserver:
    """Remembers the last txn id seen so that each new commit yields exactly one hint."""

    def __init__(self, lenv: LmdbEnv, queue: HintQueue) -> None:
        self.lenv = lenv
        self.queue = queue
        self._lock = threading.Lock()
        self._seen = lenv.last_txn_id()

    def check(self, source: str) -> bool:
        """Read the txn id; queue a local hint from ``source`` when it moved."""
        with self._lock:  # read and compare together, so _seen never moves backwards
            try:
                txn_id = self.lenv.last_txn_id()
            except Exception as exc:  # noqa: BLE001 - env closing during shutdown
                log.debug("lmdb %s: cannot read txn id: %s", self.lenv.name, exc)
                return False
            if txn_id <= self._seen:
                return False
            self._seen = txn_id
        self.queue.put(Hint(source, local=True))
        return True


class _Handler(FileSystemEventHandler):
    def __init__(self, target: Path, observer: TxnObserver) -> None:
        self.target = os.fsencode(target)
        self.txn = observer

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in ("modified", "created", "moved", "closed"):
            return
        path = os.fsencode(event.src_path)
        if (
            path == self.target
            or os.fsencode(getattr(event, "dest_path", b"") or b"") == self.target
        ):
            self.txn.check(SOURCE_WATCHER)


class LmdbWatcher(WatchdogTrigger):
    """watchdog (inotify on Linux) on the LMDB data file; each event is confirmed by txn id.

    Writers that use WRITEMAP or sit on network filesystems produce no events;
    :class:`TxnPoller` covers them.
    """

    source = SOURCE_WATCHER

    def __init__(self, data_file: Path, observer: TxnObserver) -> None:
        super().__init__()
        self.data_file = data_file.resolve()
        self.txn = observer

    def watch(self) -> tuple[FileSystemEventHandler, str]:
        return _Handler(self.data_file, self.txn), str(self.data_file.parent)


class TxnPoller(Trigger):
    """Reads the txn id every ``interval`` seconds: the fallback for silent writers."""

    source = SOURCE_POLL

    def __init__(self, observer: TxnObserver, interval: float) -> None:
        super().__init__()
        self.txn = observer
        self.interval = interval

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            self.txn.check(SOURCE_POLL)
