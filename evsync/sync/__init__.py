"""The sync of one LMDB with the bucket, split by what each part owns.

The data flow is in the file names::

    triggers -> loop -> sender   -> storage          (a local change goes out)
    storage  -> sources -> receiver -> LMDB          (a remote object comes in)

- ``loop.py``: :class:`Syncer`, one thread per LMDB: hints in, decides what runs, and is
  the only thread that writes the LMDB;
- ``startup.py``: the startup rules (own history first);
- ``gate.py``: the rejoin guard in the loop: may this LMDB sync, when was it in sync;
- ``sender.py``: where an upload is decided, dumped, stored and announced;
- ``receiver.py``: where names become plans, objects are fetched, verified and merged;
- ``sources.py``: where a remote object's bytes come from (the bucket, or a notification);
- ``state.py``: what the sender and the receiver share (peers, the txn ledger);
- ``recorder.py``: stats, metrics, health and log lines, one method per event;
- ``chain.py``: delta chains, the sender's and the receiver's plan;
- ``backoff.py``: retry pacing.

The object formats are in :mod:`evsync.snapshot`, the LMDB dump and merge in
:mod:`evsync.lmdb`, the buckets in :mod:`evsync.storage`.
"""

from evsync.sync.loop import Syncer
from evsync.sync.receiver import Receiver
from evsync.sync.recorder import Recorder, SyncStats
from evsync.sync.sender import Sender
from evsync.sync.sources import ObjectSource, StorageSource
from evsync.sync.state import InstanceState, Peers, TxnLedger

__all__ = [
    "InstanceState",
    "ObjectSource",
    "Peers",
    "Receiver",
    "Recorder",
    "Sender",
    "StorageSource",
    "SyncStats",
    "Syncer",
    "TxnLedger",
]
