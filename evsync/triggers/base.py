"""Hints and the per-db queue every trigger feeds; the syncer drains it, coalesced.

A hint says "look": the local LMDB may have changed, or an instance may have a
newer object. Hints are never trusted as truth — the syncer re-reads the txn id
and only acts on names newer than what it merged — so losing, duplicating or
reordering them costs latency, never correctness.
"""

from __future__ import annotations

import abc
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from evsync.bounded import BoundedNames
from evsync.snapshot import readable_name
from evsync.snapshot.name import SnapshotName
from evsync.triggers.carried import CarriedObjects

SOURCE_WATCHER = "watcher"
SOURCE_POLL = "poll"
SOURCE_LISTING = "listing"
SOURCE_FSWATCH = "fswatch"
SOURCE_MQTT = "mqtt"
SOURCE_SQS = "sqs"
SOURCES = (SOURCE_WATCHER, SOURCE_POLL, SOURCE_LISTING, SOURCE_FSWATCH, SOURCE_MQTT, SOURCE_SQS)

# Names the syncer rejected, remembered by the queue so they can neither be news again
# nor hide the later names of their instance; the oldest are forgotten past this many.
MAX_REJECTED_NAMES = 1024
# Instances named only by hints (never by a listing) tracked at a time: a real new
# instance is listed within a listing interval, a forged one costs one GET and is
# forgotten; past this, hints for yet another unlisted instance wait for a listing.
MAX_UNLISTED_INSTANCES = 64
# Names whose GET answered 404, remembered so a repeated hint for one costs no GET.
MAX_GONE_NAMES = 4096
# Names a newer name of their instance superseded before a drain, kept for the drain (a
# delta chain needs every link: without them a burst of deltas leaves the receiver a
# gap that only a listing bridges, and listings are rate-limited). Past this many per
# drain the newest name still goes through and the listing fills the gap.
MAX_SUPERSEDED_NAMES = 1024
# Names of objects merged from carried bytes whose announcement has not come yet (its
# hint then only confirms the merge and need not wake the loop); the oldest forgotten
# past this many, whose announcements then wake the loop as any news.
MAX_CONFIRMABLE_NAMES = 1024
# Why a hint was ignored (``HintQueue.ignored_by_reason``).
IGNORED_GONE = "gone"
IGNORED_UNLISTED = "too_many_unlisted_instances"
IGNORED_SUPERSEDED = "superseded_overflow"


@dataclass(frozen=True)
class Hint:
    """One wake-up: either a local change or the name of a (possibly) new remote object."""

    source: str
    local: bool = False
    name: str | None = None
    received_at: float = field(default_factory=time.monotonic)


@dataclass
class Batch:
    """What accumulated in the queue since the last drain."""

    local: bool = False
    #: the newest new name per instance
    remote: dict[str, SnapshotName] = field(default_factory=dict)
    stop: bool = False
    #: names of objects carried by notifications since the last drain, oldest first
    #: (each one, not only the newest per instance: a receiver may need them all)
    carried: list[SnapshotName] = field(default_factory=list)
    #: the other new names, oldest first: superseded in ``remote`` by a newer name of their
    #: instance before the drain, and still links of its delta chain
    superseded: list[SnapshotName] = field(default_factory=list)
    #: a carried object was refused or unreadable: a listing after its store would name it
    relist: bool = False
    #: names that only confirm carried merges (DESIGN §7), unparsed, oldest first: the
    #: loop notes them after its merges, off the path of the change that woke it
    confirmed: list[str] = field(default_factory=list)


class HintQueue:
    """Coalescing queue for one db: one local flag plus the newest name per instance."""

    def __init__(
        self,
        db: str,
        own_instance: str | None = None,
        accepts: Callable[[SnapshotName], bool] | None = None,
    ) -> None:
        self.db = db
        #: which readable names this instance reads (the lightningstream section)
        self.accepts = accepts
        #: this process's instance: echoes of its own uploads are not news
        self.own_instance = own_instance
        self._cond = threading.Condition()
        self._local = False
        self._remote: dict[str, SnapshotName] = {}
        self._superseded: list[SnapshotName] = []
        self._newest_seen: dict[str, SnapshotName] = {}
        #: rejected names, oldest first (a dict as an ordered set)
        self._rejected = BoundedNames(MAX_REJECTED_NAMES)
        self._stop = False
        #: every hint received, by source
        self.received: Counter[str] = Counter()
        #: hints that were the first to announce something new, by source
        self.first: Counter[str] = Counter()
        #: hints ignored (other db, foreign or unparseable names)
        self.ignored: Counter[str] = Counter()
        #: hints about this instance's own objects (announcement or listing echoes)
        self.own_echoes: Counter[str] = Counter()
        #: hints for readable names dropped by the bounds above, by reason
        self.ignored_by_reason: Counter[str] = Counter()
        self._listed: set[str] = set()  # instances some listing named
        self._unlisted: set[str] = set()  # instances in _newest_seen known from hints only
        self._gone = BoundedNames(MAX_GONE_NAMES)
        #: objects carried inside notifications, until the receiver takes them
        self.carried = CarriedObjects()
        self._carried_new: list[SnapshotName] = []
        #: merged from carried bytes, announcement still to come (see merged_carried)
        self._confirmable = BoundedNames(MAX_CONFIRMABLE_NAMES)
        #: a queued remote name wants the loop now (not only confirmations)
        self._urgent = False
        #: announcements that only confirmed a carried merge, queued without a wake-up
        self.confirmations = 0
        self._relist = False
        self._confirmed: list[str] = []

    def put_carried(self, source: str, name: str, data: bytes, *, again: bool = False) -> bool:
        """An object carried by a notification (its bytes, unverified): held for the
        receiver, and the syncer woken. Not a hint: the queue's newest name per instance
        stays as it was, so a later hint naming the object (the next companion's
        ``stored``, a listing, or an announcement) still counts as news (it confirms the
        object is in the bucket, DESIGN §7). Returns True when held; the same filters as
        hints apply, and an instance no hint or listing has named yet is not taken this
        way: the loop is asked for a listing instead (:meth:`want_listing`). ``again``:
        the same message's bytes offered a second time, not counted again."""
        parsed = readable_name(name, self.db)
        count = 0 if again else 1
        with self._cond:
            self.received[source] += count
            if parsed is None or (self.accepts is not None and not self.accepts(parsed)):
                self.ignored[source] += count
                return False
            if parsed.instance == self.own_instance:
                self.own_echoes[source] += count
                return False
            if parsed.name in self._rejected or parsed.name in self._gone:
                return False
            instance = parsed.instance
            if instance not in self._listed and instance not in self._newest_seen:
                self._relist = True  # no announcement of it will come where we listen
                return False
            if not self.carried.add(parsed, data):
                return False
            self._carried_new.append(parsed)
            # while the syncer is busy, names past what the store holds are dropped too
            del self._carried_new[: -self.carried.max_objects]
            self._cond.notify_all()
            return True

    def put(self, hint: Hint) -> bool:
        """Queue a hint; returns True when it told the syncer something new."""
        with self._cond:
            self.received[hint.source] += 1
            if hint.name is not None and hint.name in self._confirmable:
                # it only confirms what the loop merged from the companion: taken at the
                # loop's next wake-up (at most its idle timeout), as if it came late
                self._confirmable.discard(hint.name)
                self._confirmed.append(hint.name)
                self.confirmations += 1
                return True
            if hint.local:
                new = not self._local
                self._local = True
            else:
                new = self._put_remote(hint)
            if not new:
                return False
            self.first[hint.source] += 1
            self._urgent = self._urgent or not hint.local
            self._cond.notify_all()
            return True

    def want_listing(self) -> None:
        """A carried object was lost on the way (a companion that cannot be read): the
        loop asks for a listing once its store has likely completed (DESIGN §7). No
        wake-up: that listing is seconds away."""
        with self._cond:
            self._relist = True

    def merged_carried(self, name: str) -> None:
        """The loop merged ``name`` from carried bytes. The hint that names it next (the
        sender's next companion, or its announcement) only confirms that merge (DESIGN
        §7), so it is queued without waking the loop: a step for it would find nothing
        to do. Any confirmation may come that late; the loop drains it with its next
        batch."""
        with self._cond:
            self._confirmable.add(name)

    def not_confirmable(self, names: Iterable[str]) -> None:
        """The loop dropped these provisional merges (its position fell back): a hint
        naming one is news again and wakes the loop."""
        with self._cond:
            for name in names:
                self._confirmable.discard(name)

    def _put_remote(self, hint: Hint) -> bool:
        parsed = readable_name(hint.name or "", self.db)
        if parsed is None or (self.accepts is not None and not self.accepts(parsed)):
            self.ignored[hint.source] += 1
            return False
        if parsed.instance == self.own_instance:
            self.own_echoes[hint.source] += 1
            return False
        if parsed.name in self._rejected:
            return False
        instance = parsed.instance
        listing = hint.source == SOURCE_LISTING
        if listing:
            self._listed.add(instance)
            self._unlisted.discard(instance)
        elif parsed.name in self._gone:
            self.ignored_by_reason[IGNORED_GONE] += 1
            return False
        seen = self._newest_seen.get(instance)
        if seen is not None and parsed.name <= seen.name:
            return False
        if seen is None and instance not in self._listed:
            if len(self._unlisted) >= MAX_UNLISTED_INSTANCES:
                self.ignored_by_reason[IGNORED_UNLISTED] += 1
                return False
            self._unlisted.add(instance)
        self._newest_seen[instance] = parsed
        older = self._remote.get(instance)
        if older is not None:
            if len(self._superseded) < MAX_SUPERSEDED_NAMES:
                self._superseded.append(older)
            else:
                self.ignored_by_reason[IGNORED_SUPERSEDED] += 1
        self._remote[instance] = parsed
        return True

    def listed(self, instances: Iterable[str]) -> None:
        """A whole listing named these instances: they are real. Instances known from
        hints only that it did not name are forgotten (their names were forged, or
        their objects gone), so their slots free up once per listing, whatever became
        of their hints (dropped while the rejoin guard blocked, say)."""
        with self._cond:
            self._listed.update(instances)
            for instance in self._unlisted - self._listed:
                self._newest_seen.pop(instance, None)
            self._unlisted.clear()

    def unlisted(self, instance: str) -> bool:
        """True while ``instance`` is known from hints only (no listing named it)."""
        return instance in self._unlisted

    def take_local(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for a local-change hint and take it (True); remote names
        stay queued for :meth:`wait`. For work that must see local commits while the
        loop is busy elsewhere (a store being retried)."""
        with self._cond:
            if not (self._local or self._stop):
                self._cond.wait(timeout)
            taken, self._local = self._local, False
            return taken

    def forget_instance(self, instance: str) -> None:
        """Let an older name of ``instance`` count as new again (after its newest went bad)."""
        with self._cond:
            self._newest_seen.pop(instance, None)
            self._unlisted.discard(instance)

    def gone(self, name: str) -> None:
        """``name``'s GET answered 404: a hint naming it again is no news."""
        with self._cond:
            self._gone.add(name)

    def reject(self, name: SnapshotName) -> None:
        """``name`` can never be merged: it is no news from now on, and names of its
        instance that sort below it count as new again (a junk object named far ahead
        must not hide the instance's real objects)."""
        with self._cond:
            self._rejected.add(name.name)
            self._newest_seen.pop(name.instance, None)

    def is_rejected(self, name: str) -> bool:
        """True for a name the syncer rejected (the lister leaves it out)."""
        return name in self._rejected

    def wait(self, timeout: float | None) -> Batch:
        """Block until something is queued, ``timeout`` passes or stop; then drain."""
        with self._cond:
            if not (self._local or self._urgent or self._stop or self._carried_new):
                self._cond.wait(timeout)
            batch = Batch(
                self._local,
                self._remote,
                self._stop,
                self._carried_new,
                self._superseded,
                self._relist,
                self._confirmed,
            )
            self._relist = False
            self._confirmed = []
            self._local = False
            self._urgent = False
            self._remote = {}
            self._carried_new = []
            self._superseded = []
            return batch

    def stop(self) -> None:
        """Wake the syncer for shutdown."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()


def hint_names(queues: Iterable[HintQueue], source: str, names: Iterable[str]) -> None:
    """Hand each object name to the queue of the db it belongs to."""
    queues = list(queues)
    for name in names:
        for queue in queues:
            if name.startswith(queue.db + "__"):
                queue.put(Hint(source, name=name))


class Trigger(abc.ABC):
    """A source of hints running in its own daemon thread."""

    #: the hint source name this trigger reports under
    source: str = "base"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @abc.abstractmethod
    def run(self) -> None:
        """The thread body; return when ``self._stop`` is set."""

    def start(self) -> None:
        """Start the thread."""
        self._thread = threading.Thread(target=self.run, name=f"trigger-{self.source}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end and wait briefly for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class WatchdogTrigger(Trigger):
    """A trigger driven by a watchdog observer on one directory (its own thread)."""

    def __init__(self) -> None:
        super().__init__()
        self._observer: Any = None

    @abc.abstractmethod
    def watch(self) -> tuple[FileSystemEventHandler, str]:
        """The event handler and the directory to watch."""

    def start(self) -> None:
        handler, directory = self.watch()
        self._observer = Observer()
        self._observer.schedule(handler, directory, recursive=False)
        self._observer.daemon = True
        self._observer.start()

    def run(self) -> None:  # the observer runs its own thread
        pass

    def stop(self) -> None:
        self._stop.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
