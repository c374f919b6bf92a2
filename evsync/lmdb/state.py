"""evsync's own bookkeeping inside the LMDB, so it travels (and is wiped) with the data.

The state lives in the ``_sync_evsync`` DBI; the ``_sync`` prefix keeps it out of
every snapshot and every merge, as Lightning Stream does for its own DBIs.
"""

from __future__ import annotations

import struct

from evsync.lmdb.env import LmdbEnv

STATE_DBI = b"_sync_evsync"
LAST_SYNC_KEY = b"last_sync_ns"
_U64 = struct.Struct(">Q")


def read_last_sync_ns(lenv: LmdbEnv) -> int | None:
    """When this LMDB was last known to be in sync with the bucket, or None if never recorded."""
    with lenv.begin() as probe:
        exists = lenv.has_dbi(probe, STATE_DBI)
    if not exists:
        return None
    handle = lenv.open_dbi(STATE_DBI)  # outside a read txn, so the handle outlives it
    with lenv.begin() as txn:
        raw = txn.get(LAST_SYNC_KEY, db=handle)
    if raw is None or len(raw) != _U64.size:
        return None
    value: int = _U64.unpack(raw)[0]
    return value


def write_last_sync_ns(lenv: LmdbEnv, timestamp_ns: int) -> int:
    """Record the last in-sync time; returns the id of the txn that wrote it."""
    with lenv.begin(write=True) as txn:
        handle = lenv.open_dbi(STATE_DBI, txn, create_flags=0)
        txn.put(LAST_SYNC_KEY, _U64.pack(timestamp_ns), db=handle)
        txn_id = int(txn.id())
    return txn_id


def has_synced_data(lenv: LmdbEnv) -> bool:
    """True when any synced DBI holds an entry (an empty LMDB has nothing to resurrect)."""
    if lenv.last_txn_id() == 0:
        return False
    with lenv.read_synced_dbis(include_sync=True) as (txn, handles):
        for name, handle in handles:
            if name == STATE_DBI:
                continue
            if txn.stat(handle)["entries"]:
                return True
    return False
