"""The LMDB side: opening envs, the native header, LWW merge and dumps.

Only the modules below the snapshot layer are re-exported here: ``dump`` and
``merge`` read and write objects (``evsync.snapshot``), which itself uses
``lmdb.dupsort``; importing them from this package's ``__init__`` would make the
two packages import each other.
"""

from evsync.lmdb.env import LmdbEnv, is_sync_dbi
from evsync.lmdb.header import (
    FLAG_DELETED,
    HEADER_SIZE,
    Header,
    encode_header,
    encode_value,
    parse_header,
    split_value,
)

__all__ = [
    "FLAG_DELETED",
    "HEADER_SIZE",
    "Header",
    "LmdbEnv",
    "encode_header",
    "encode_value",
    "is_sync_dbi",
    "parse_header",
    "split_value",
]
