"""Storage backends behind one BlobStore interface: ``s3``, ``fs`` and ``memory``."""

from __future__ import annotations

from evsync.config import FsOptions, S3Options, StorageConfig
from evsync.storage.base import BlobStore, ObjectInfo
from evsync.storage.fs import FsStore
from evsync.storage.memory import MemoryStore

__all__ = ["BlobStore", "FsStore", "MemoryStore", "ObjectInfo", "open_store"]


def open_store(config: StorageConfig) -> BlobStore:
    """Create the backend a config names."""
    if isinstance(config.options, S3Options):
        from evsync.storage.s3 import S3Store  # boto3 is slow to import; only when used

        return S3Store(config.options)
    if isinstance(config.options, FsOptions):
        return FsStore(config.options.root_path)
    return MemoryStore()
