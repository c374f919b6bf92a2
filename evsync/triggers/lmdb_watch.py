"""Local change triggers: an inotify watcher on the LMDB file and a txn-id poll fallback.

Both confirm a change by reading the LMDB's last txn id, so reader noise
(open/close events) never wakes the syncer, and whichever sees a new txn id
first is credited with the hint.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import select
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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

# inotify(7): what a commit, a replaced file or a new file does to the data file
IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000  # events were lost: look anyway
WATCH_MASK = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
# while the syncer merges: its commits only modify (it keeps the file open), so leaving
# IN_MODIFY out mutes them; a replaced or new file is still heard
QUIET_MASK = WATCH_MASK & ~IN_MODIFY
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, length of the name that follows
# One read takes every event queued so far (an LMDB commit makes two: pages, then meta).
READ_BYTES = 64 * 1024


class TxnObserver:
    """Remembers the last txn id seen so that each new commit yields exactly one hint."""

    def __init__(self, lenv: LmdbEnv, queue: HintQueue) -> None:
        self.lenv = lenv
        self.queue = queue
        self._lock = threading.Lock()
        self._seen = lenv.last_txn_id()
        self._merging = False
        #: the source of a check made during a step, made again when the step ends
        self._deferred: str | None = None
        #: called with True as the syncer's merges begin and with False as they end: the
        #: inotify watcher stops hearing commits meanwhile (each merge's commit woke its
        #: thread twice, for a txn id the syncer was about to take as its own), and the
        #: txn id is read when they end instead
        self.quiet_hooks: list[Callable[[bool], None]] = []

    @contextlib.contextmanager
    def merging(self) -> Iterator[None]:
        """Around the part of a syncer step that merges: a commit noticed meanwhile is
        checked when that part ends, after :meth:`own` took its txns as seen. A watcher
        that read the txn id between a merge's commit and its report woke the loop for
        a step with nothing to do (0.6 of them per received delta, docs/benchmarks.md).
        An application commit meanwhile still wakes the loop once the part ends: the
        loop, busy merging, could not have taken the hint earlier, and the upload
        decision comes after it. The inotify watcher is muted meanwhile
        (:attr:`quiet_hooks`), so the txn id is then read whether or not an event came."""
        hooks = list(self.quiet_hooks)
        with self._lock:
            self._merging = True
        try:
            for hook in hooks:
                hook(True)
            yield
        finally:
            for hook in hooks:  # heard again before the txn id is read below
                hook(False)
            with self._lock:
                self._merging = False
                deferred, self._deferred = self._deferred, None
            if deferred is None and hooks:
                deferred = SOURCE_WATCHER  # a commit meanwhile made no event
            if deferred is not None:
                self.check(deferred)

    def check(self, source: str) -> bool:
        """Read the txn id; queue a local hint from ``source`` when it moved (during a
        syncer's merges: once they end)."""
        with self._lock:  # read and compare together, so _seen never moves backwards
            if self._merging:
                self._deferred = self._deferred or source
                return False
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

    def own(self, txn_ids: list[int]) -> None:
        """The syncer committed these txns itself (a merge, its own bookkeeping) and has
        already decided on an upload after them: they are no news to it. Only txns that
        directly follow the last one seen count as seen, so a commit of the application
        that came first, or between them, still wakes the syncer. Without this every
        merged object woke the loop once more, for a step with nothing to do (~0.3 ms of
        CPU and two thread hand-offs per received delta, docs/benchmarks.md)."""
        with self._lock:
            for txn_id in sorted(txn_ids):
                if txn_id != self._seen + 1:
                    break
                self._seen = txn_id


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


class LmdbWatcher(Trigger):
    """inotify on the LMDB data file's directory; each batch of events is confirmed by txn id.

    On Linux one thread reads the inotify descriptor itself and reads the txn id once
    per batch of events: watchdog's pipeline (a reader, an emitter and an observer
    thread, an event object per event) cost a receiver ~0.5 ms of CPU per merged
    object, two events for each commit, most of them its own merges
    (docs/benchmarks.md). Where inotify cannot be set up (another OS, the
    ``max_user_instances`` or ``max_user_watches`` limit) watchdog watches instead,
    said once. Writers that use WRITEMAP or sit on network filesystems produce no
    events; :class:`TxnPoller` covers them.
    """

    source = SOURCE_WATCHER

    def __init__(self, data_file: Path, observer: TxnObserver) -> None:
        super().__init__()
        self.data_file = data_file.resolve()
        self.txn = observer
        self._fd: int | None = None
        self._wake: tuple[int, int] | None = None
        self._fallback: _WatchdogLmdbWatcher | None = None
        self._fd_lock = threading.Lock()  # the syncer mutes the watch; stop() closes it
        self._directory = os.fsencode(self.data_file.parent)
        #: the directory as the watch knows it (its inode): a mute or unmute by path
        #: would miss the watch once the directory moved, and leave it muted
        self._dir_fd: int | None = None
        self._watched = self._directory

    def start(self) -> None:
        try:
            self._fd = _open_inotify(self._directory)
        except OSError as exc:
            log.info(
                "lmdb %s: inotify unavailable (%s); watching %s with watchdog",
                self.txn.lenv.name,
                exc,
                self.data_file,
            )
            self._fallback = _WatchdogLmdbWatcher(self.data_file, self.txn)
            self._fallback.start()
            return
        self._wake = os.pipe()
        with contextlib.suppress(OSError):
            self._dir_fd = os.open(self._directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            if os.path.isdir(f"/proc/self/fd/{self._dir_fd}"):  # no /proc: by path
                self._watched = os.fsencode(f"/proc/self/fd/{self._dir_fd}")
        self.txn.quiet_hooks.append(self._quiet)
        super().start()

    def _quiet(self, quiet: bool) -> None:
        """Mute the watch's modify events (``quiet``) or hear them again; the syncer's
        thread calls this around its merges. A failure is only logged: the txn id is
        read after the merges either way, and an unmuted watch costs only CPU."""
        with self._fd_lock:
            if self._fd is None:
                return
            try:
                _set_watch(self._fd, self._watched, QUIET_MASK if quiet else WATCH_MASK)
            except OSError as exc:
                log.log(
                    logging.DEBUG if quiet else logging.WARNING,
                    "lmdb %s: cannot change the inotify watch: %s",
                    self.txn.lenv.name,
                    exc,
                )

    def run(self) -> None:
        fd, wake = self._fd, self._wake
        assert fd is not None and wake is not None
        name = os.fsencode(self.data_file.name)
        poller = select.poll()  # not select(): a busy daemon's descriptors may pass 1024
        poller.register(fd, select.POLLIN)
        poller.register(wake[0], select.POLLIN)
        while not self._stop.is_set():
            ready = {ready_fd for ready_fd, _events in poller.poll()}
            if wake[0] in ready:
                return
            try:
                data = os.read(fd, READ_BYTES)
            except BlockingIOError:
                continue
            except OSError as exc:  # never expected; commits are still seen by the poll
                log.warning(
                    "lmdb %s: cannot read inotify events: %s; only the txn-id poll "
                    "notices commits now",
                    self.txn.lenv.name,
                    exc,
                )
                return
            if concerns(data, name):
                self.txn.check(SOURCE_WATCHER)

    def stop(self) -> None:
        if self._fallback is not None:
            self._fallback.stop()
            return
        self._stop.set()
        with contextlib.suppress(ValueError):
            self.txn.quiet_hooks.remove(self._quiet)
        if self._wake is not None:
            os.write(self._wake[1], b"x")
        super().stop()
        with self._fd_lock:
            for fd in (self._fd, self._dir_fd, *(self._wake or ())):
                if fd is not None:
                    os.close(fd)
            self._fd = self._dir_fd = self._wake = None
            self._watched = self._directory


@functools.cache  # find_library runs ldconfig: once, not at every mute
def _libc_inotify() -> tuple[Any, Any]:
    """libc's inotify_init1 and inotify_add_watch; OSError when there are none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        return libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError) as exc:  # not Linux
        raise OSError(f"no inotify in the C library: {exc}") from None


def _open_inotify(directory: bytes) -> int:
    """A non-blocking inotify descriptor watching ``directory``; OSError when unavailable."""
    init, _add_watch = _libc_inotify()
    fd = init(os.O_CLOEXEC | os.O_NONBLOCK)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"inotify_init1: {os.strerror(err)}")
    try:
        _set_watch(fd, directory, WATCH_MASK)
    except OSError:
        os.close(fd)
        raise
    return int(fd)


def _set_watch(fd: int, directory: bytes, mask: int) -> None:
    """Watch ``directory`` on ``fd`` for ``mask`` (replacing the mask of a watch already
    there: its queued events stay, and no IN_IGNORED event is made)."""
    _init, add_watch = _libc_inotify()
    if add_watch(fd, directory, mask) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"inotify_add_watch: {os.strerror(err)}")


def concerns(data: bytes, name: bytes) -> bool:
    """True when a read of inotify events names ``name`` (or says events were lost)."""
    offset = 0
    while offset + _EVENT.size <= len(data):
        _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
        start = offset + _EVENT.size
        if mask & IN_Q_OVERFLOW or data[start : start + length].rstrip(b"\0") == name:
            return True
        offset = start + length
    return False


class _WatchdogLmdbWatcher(WatchdogTrigger):
    """watchdog on the LMDB data file: the fallback where inotify cannot be set up."""

    source = SOURCE_WATCHER

    def __init__(self, data_file: Path, observer: TxnObserver) -> None:
        super().__init__()
        self.data_file = data_file
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
