"""With the ``fs`` backend the bucket is a local directory, so inotify on it is a push source."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler

from evsync.storage.fs import is_temp_name
from evsync.triggers.base import SOURCE_FSWATCH, HintQueue, WatchdogTrigger, hint_names

log = logging.getLogger(__name__)


class _Handler(FileSystemEventHandler):
    def __init__(self, queues: list[HintQueue]) -> None:
        self.queues = queues

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type == "moved":
            path = event.dest_path
        elif event.event_type in ("created", "closed"):
            path = event.src_path
        else:
            return
        name = os.path.basename(os.fsdecode(path))
        if is_temp_name(name):
            return
        hint_names(self.queues, SOURCE_FSWATCH, [name])


class FsBucketWatcher(WatchdogTrigger):
    """Hints every object that appears in the bucket directory (fs backend)."""

    source = SOURCE_FSWATCH

    def __init__(self, root: Path, queues: list[HintQueue]) -> None:
        super().__init__()
        self.root = root
        self.queues = queues

    def watch(self) -> tuple[FileSystemEventHandler, str]:
        return _Handler(self.queues), str(self.root)
