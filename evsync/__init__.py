"""evsync: event-driven sync of LMDB databases through S3, compatible with Lightning Stream."""

from evsync._version import __version__
from evsync.config import Config, LmdbConfig, load_config, load_config_text
from evsync.daemon import Daemon
from evsync.errors import (
    ConfigError,
    CorruptObjectError,
    EvsyncError,
    HeaderError,
    HttpError,
    InvalidNameError,
    LmdbError,
    ObjectNotFoundError,
    SnapshotError,
    StorageConfigError,
    StorageError,
    StorageUnavailableError,
    SyncError,
)
from evsync.snapshot import SnapshotFormat, format_for
from evsync.storage import BlobStore, FsStore, MemoryStore, ObjectInfo, open_store
from evsync.sync import ObjectSource, StorageSource, Syncer
from evsync.triggers import Hint, HintQueue

__all__ = [
    "BlobStore",
    "Config",
    "ConfigError",
    "CorruptObjectError",
    "Daemon",
    "EvsyncError",
    "FsStore",
    "HeaderError",
    "Hint",
    "HintQueue",
    "HttpError",
    "InvalidNameError",
    "LmdbConfig",
    "LmdbError",
    "MemoryStore",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectSource",
    "SnapshotError",
    "SnapshotFormat",
    "StorageConfigError",
    "StorageError",
    "StorageSource",
    "StorageUnavailableError",
    "SyncError",
    "Syncer",
    "__version__",
    "format_for",
    "load_config",
    "load_config_text",
    "open_store",
]
