"""The LMDB side: opening envs, the native header, LWW merge and dumps."""

from evsync.lmdb.dump import DumpResult, dump_native
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
from evsync.lmdb.merge import Merger, MergeResult, merge_entry

__all__ = [
    "FLAG_DELETED",
    "HEADER_SIZE",
    "DumpResult",
    "Header",
    "LmdbEnv",
    "MergeResult",
    "Merger",
    "dump_native",
    "encode_header",
    "encode_value",
    "is_sync_dbi",
    "merge_entry",
    "parse_header",
    "split_value",
]
