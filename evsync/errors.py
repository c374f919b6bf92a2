"""The one exception tree of evsync, so callers can catch exactly what they handle.

::

    EvsyncError                      base of everything evsync raises on purpose
    ├── ConfigError                  a bad config file, key or value (names the key)
    ├── LmdbError                    the local LMDB cannot be used as configured
    │   ├── HeaderError              a value does not carry a valid native header
    │   ├── TransformError           a DUPSORT pair cannot take the dupsort_hack_v1
    │   │                            key transform (names the DBI and key)
    │   ├── EntryTooLargeError       a value too big for an object entry (names the DBI
    │   │                            and key): the dump fails, nothing is uploaded
    │   └── PermanentLmdbError       retrying cannot help: the map is still full after
    │                                growing, a DBI cannot be created with its flags, a
    │                                DBI name is a plain key; a merge rejects its object
    ├── SnapshotError                a snapshot object cannot be trusted
    │   ├── InvalidNameError         a name does not follow db__instance__ts__gen.ext
    │   └── CorruptObjectError       truncated, bad checksum, foreign format, bad counts
    │       │                        or entries out of order; the object is marked bad
    │       └── ObjectTooLargeError  an entry over the entry cap, or more inflated bytes
    │                                than storage_max_inflated_size (a bomb, say)
    ├── HttpError                    http.address is valid but cannot be listened on
    │                                (taken by another process): a runtime failure
    ├── StorageError                 the bucket could not do what was asked
    │   ├── ObjectNotFoundError      the named object does not exist (any more)
    │   ├── StorageUnavailableError  the backend is down or failed; worth retrying
    │   └── StorageConfigError       the bucket is missing, access is denied or the
    │                                credentials are wrong: retrying soon will not help
    └── SyncError                    a sync run could not complete (only-once mode)
        └── SyncInterruptedError     shutdown asked a merge to stop; its txn was aborted
"""

from __future__ import annotations


class EvsyncError(Exception):
    """Base class of all errors evsync raises on purpose."""


class ConfigError(EvsyncError):
    """A config file, key or value is wrong; the message names the key."""


class LmdbError(EvsyncError):
    """The local LMDB cannot be opened or used as configured."""


class HeaderError(LmdbError):
    """A value does not start with a valid native (Lightning Stream) header."""


class TransformError(LmdbError):
    """A DUPSORT pair cannot be encoded with the dupsort_hack_v1 key transform."""


class EntryTooLargeError(LmdbError):
    """A value is bigger than an object entry may be; the message names the DBI and key."""


class PermanentLmdbError(LmdbError):
    """An LMDB error that doing the same work again cannot cure (the map still full after
    growing, a DBI that cannot be created or opened as a DBI). A merge that meets one
    rejects its object instead of retrying it; a full disk is not one (space may free up)."""


class SnapshotError(EvsyncError):
    """A snapshot object or its name cannot be trusted."""


class InvalidNameError(SnapshotError):
    """An object name does not parse as a snapshot name."""


class CorruptObjectError(SnapshotError):
    """An object is truncated, fails its checksum, or does not follow the format."""


class ObjectTooLargeError(CorruptObjectError):
    """An object holds an entry over the entry cap, or inflates past the configured
    total (``storage_max_inflated_size``): it is rejected like a corrupt one."""


class HttpError(EvsyncError):
    """The HTTP endpoint cannot listen on its (valid) address: the port is taken, say."""

    #: the OS error number (EADDRINUSE for a port in use), when there was one
    errno: int | None = None


class StorageError(EvsyncError):
    """The storage backend failed to do what was asked."""


class ObjectNotFoundError(StorageError):
    """The named object does not exist."""


class StorageUnavailableError(StorageError):
    """The backend is unreachable or refused the request; retrying may help."""


class StorageConfigError(StorageError):
    """The bucket refused in a way only an operator fixes: it does not exist, access is
    denied, or the credentials are wrong. evsync still retries, at its slowest pace."""


class SyncError(EvsyncError):
    """A sync run could not complete."""


class SyncInterruptedError(SyncError):
    """Shutdown interrupted a merge; the write txn in progress was aborted, nothing is lost."""
