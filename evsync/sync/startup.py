"""The startup rules (DESIGN §5, as Lightning Stream).

At startup the bucket is listed (again and again while it cannot be) and the newest
object of every instance, the own one included, is to be merged before anything is
uploaded, so a wiped instance never overwrites its own history: this module computes
that set (:attr:`~evsync.sync.state.Peers.waiting_for`), asks the rejoin gate whether
this LMDB may sync at all, and in shadow mode seeds the shadow DBIs with what the
application wrote while evsync was down. The merges and the first upload themselves
are the loop's to run; the sender refuses to upload while this instance's own newest
object is still waited for.

May call: the receiver's listing, the rejoin gate, the shadow's seeding pass.
Must not: merge or upload.
"""

from __future__ import annotations

import logging
import threading

from evsync.config import Config
from evsync.errors import LmdbError, StorageConfigError
from evsync.lmdb.env import LmdbEnv
from evsync.lmdb.shadow import SEED_TIMESTAMP_NS, Shadow
from evsync.sync.gate import RejoinGate
from evsync.sync.receiver import Receiver
from evsync.sync.state import Peers

log = logging.getLogger(__name__)


class Startup:
    """Brings one db to the point where merging may begin."""

    def __init__(  # noqa: PLR0917 - the parts it works with, named once
        self,
        config: Config,
        lenv: LmdbEnv,
        shadow: Shadow | None,
        gate: RejoinGate,
        receiver: Receiver,
        peers: Peers,
        stop_event: threading.Event,
    ) -> None:
        self.config = config
        self.db = lenv.name
        self.lenv = lenv
        self.shadow = shadow
        self.gate = gate
        self.receiver = receiver
        self.peers = peers
        self.stop_event = stop_event
        #: the guard refused at startup; the loop finishes startup once it lets go
        self.blocked = False

    def begin(self, *, retry_forever: bool) -> bool:
        """List the bucket, note whose newest object must be merged first, check the
        guard and seed the shadow; False when the sync may not (yet) go on."""
        if not self._list_until_ok(retry_forever=retry_forever):
            return False
        # A retried startup may have merged some newest objects already.
        self.peers.waiting_for = self.peers.unmerged()
        waiting = self.peers.waiting_for
        log.info(
            "db %s: startup listing found %d instance(s)%s",
            self.db,
            len(waiting),
            (": " + ", ".join(sorted(waiting))) if waiting else "",
        )
        if self.gate.blocks():
            self.blocked = True
            return False
        self.seed_shadow()
        return True

    def _list_until_ok(self, *, retry_forever: bool) -> bool:
        attempts = 0
        while not self.receiver.list_bucket(startup=True):
            attempts += 1
            if self.stop_event.is_set():
                return False
            if not retry_forever and isinstance(self.receiver.last_list_error, StorageConfigError):
                return False  # the line naming the cause is logged; waiting will not help
            if not retry_forever and attempts >= self.config.storage_retry_count:
                log.error("db %s: cannot list the bucket after %d attempts", self.db, attempts)
                return False
            self.stop_event.wait(self.receiver.list_backoff.delay)
        return True

    def resume_if_unblocked(self) -> None:
        """The guard let go (the LMDB was wiped): finish what startup left undone."""
        if self.blocked:
            self.blocked = False
            self.seed_shadow()

    def seed_shadow(self) -> None:
        """Capture data written while evsync was down at 1 ns, so it never beats remote data."""
        if self.shadow is None or self.lenv.last_txn_id() == 0:
            return
        try:
            update = self.shadow.update_from_main(SEED_TIMESTAMP_NS, seed=True)
        except LmdbError as exc:
            log.error("db %s: cannot seed the shadow DBIs: %s", self.db, exc)
            return
        log.info(
            "db %s: shadow seeded (%d DBIs, %d new or changed, %d vanished since the last run)",
            self.db,
            update.dbis,
            update.changed,
            update.deleted,
        )
