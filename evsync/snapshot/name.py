"""Snapshot object names (DESIGN §4): ``<db>__<instance>__<ts>__<gen>[__<extra>…].<ext>``.

Names sort by time within one (db, instance) because the timestamp has a fixed width;
the syncer and the cleaner rely on that, as Lightning Stream does.
"""

from __future__ import annotations

import datetime
import functools
import re
import time
from dataclasses import dataclass

from evsync.errors import InvalidNameError

SEPARATOR = "__"
GENERATION = "GX"
EXT_EVSYNC = "evs.zst"
EXT_LIGHTNINGSTREAM = "pb.gz"
KNOWN_EXTENSIONS = frozenset({EXT_EVSYNC, EXT_LIGHTNINGSTREAM})
DELTA_EXTRA = "D"  # extra field of a delta: D<base timestamp>
# The extra field of a checkpoint (DESIGN §7): a full object written off the chain's
# critical path, "at least as new as" the chain member A<timestamp> names. A receiver at
# or past that member has every change of the instance's own the checkpoint holds.
CHECKPOINT_EXTRA = "A"
# The extra field of a .pb.gz that evsync wrote beside its .evs.zst chain (a "copy"):
# LS reads it as any snapshot (extras are LSE's, LS ignores them); evsync peers follow
# that instance's .evs.zst chain instead (docs/lightningstream.md).
COPY_EXTRA = "Eevsync"

# S3's limit for a key; a longer name can only come from a forged notification.
MAX_NAME_BYTES = 1024
# Patterns are used with fullmatch(): "$" would also match before a final newline.
# ASCII-only classes, so no digit from another script and nothing a log or path reads twice.
_TS_RE = re.compile(r"([0-9]{4})([0-9]{2})([0-9]{2})-([0-9]{2})([0-9]{2})([0-9]{2})-([0-9]{9})")
_DB_RE = re.compile(r"[a-z0-9-]+")
_INSTANCE_RE = re.compile(r"[a-zA-Z0-9-]+")
_GENERATION_RE = re.compile(r"G[a-zA-Z0-9-]*")
_EXTRA_RE = re.compile(r"[A-FH-Z][a-zA-Z0-9-]*")  # one capital type letter, never G
_EXT_RE = re.compile(r"[a-z0-9]+(\.[a-z0-9]+)*")
_NS = 1_000_000_000
_DAY_SECONDS = 86_400
_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()
# format_timestamp writes a year below 1000 with fewer than four digits (glibc's %Y),
# so no name of such a year ever round-trips: parse_timestamp refuses them, as it did
# when it compared its result with format_timestamp's.
_MIN_YEAR = 1000


def format_timestamp(timestamp_ns: int) -> str:
    """``YYYYMMDD-HHMMSS-nnnnnnnnn`` in UTC."""
    seconds, nanos = divmod(timestamp_ns, _NS)
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(seconds)) + f"-{nanos:09d}"


def parse_timestamp(text: str) -> int:
    """Inverse of :func:`format_timestamp`; raises InvalidNameError.

    Arithmetic on the matched fields, not ``time.strptime``: every hint names one or
    two timestamps and strptime (with the round trip through format_timestamp that
    caught what it let pass, second 60) was ~25 % of the MQTT thread's CPU per
    received message (docs/benchmarks.md, issue 18 second pass). Accepts exactly
    what that pair did: a real calendar date of year 1000..9999, hours 0-23, minutes
    and seconds 0-59.
    """
    match = _TS_RE.fullmatch(text)
    if not match:
        raise InvalidNameError(f"bad timestamp {text!r}, expected YYYYMMDD-HHMMSS-nnnnnnnnn")
    year, month, day, hour, minute, second, nanos = map(int, match.groups())
    if year < _MIN_YEAR or hour > 23 or minute > 59 or second > 59:
        raise InvalidNameError(f"bad timestamp {text!r}")
    try:
        days = datetime.date(year, month, day).toordinal() - _EPOCH_ORDINAL
    except ValueError:  # month 13, February 30 ...
        raise InvalidNameError(f"bad timestamp {text!r}") from None
    return ((days * _DAY_SECONDS) + hour * 3600 + minute * 60 + second) * _NS + nanos


@dataclass(frozen=True, order=True)
class SnapshotName:
    """A parsed object name; ordering follows the name string, i.e. time per instance."""

    name: str
    db: str
    instance: str
    timestamp_ns: int
    generation: str = GENERATION
    extras: tuple[str, ...] = ()
    ext: str = EXT_EVSYNC

    @classmethod
    def build(
        cls,
        db: str,
        instance: str,
        timestamp_ns: int,
        *,
        extras: tuple[str, ...] = (),
        ext: str = EXT_EVSYNC,
    ) -> SnapshotName:
        """Build a name for a new object."""
        parts = [db, instance, format_timestamp(timestamp_ns), GENERATION, *sorted(extras)]
        return cls(
            SEPARATOR.join(parts) + "." + ext,
            db,
            instance,
            timestamp_ns,
            GENERATION,
            tuple(sorted(extras)),
            ext,
        )

    @classmethod
    def parse(cls, name: str) -> SnapshotName:
        """Parse a name; raises InvalidNameError naming what is wrong."""
        if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise InvalidNameError(f"{name[:64]!r}…: longer than {MAX_NAME_BYTES} bytes")
        base, dot, ext = name.partition(".")
        if not dot or not _EXT_RE.fullmatch(ext):
            raise InvalidNameError(f"{name!r}: no extension")
        parts = base.split(SEPARATOR)
        if len(parts) < 4:
            raise InvalidNameError(f"{name!r}: expected db__instance__timestamp__generation")
        db, instance, ts_text, generation, *extras = parts
        if not _DB_RE.fullmatch(db):
            raise InvalidNameError(f"{name!r}: bad db name {db!r}")
        if not _INSTANCE_RE.fullmatch(instance):
            raise InvalidNameError(f"{name!r}: bad instance name {instance!r}")
        if not _GENERATION_RE.fullmatch(generation):
            raise InvalidNameError(f"{name!r}: bad generation {generation!r}")
        seen_types = set()
        for extra in extras:
            if not _EXTRA_RE.fullmatch(extra) or extra[0] in seen_types:
                raise InvalidNameError(f"{name!r}: bad extra field {extra!r}")
            if extra[0] in {DELTA_EXTRA, CHECKPOINT_EXTRA} and ext == EXT_EVSYNC:
                parse_timestamp(extra[1:])  # a delta's base, a checkpoint's point: timestamps
            seen_types.add(extra[0])
        if DELTA_EXTRA in seen_types and CHECKPOINT_EXTRA in seen_types and ext == EXT_EVSYNC:
            raise InvalidNameError(f"{name!r}: a delta cannot be a checkpoint")
        return cls(name, db, instance, parse_timestamp(ts_text), generation, tuple(extras), ext)

    @property
    def is_evsync(self) -> bool:
        """True when evsync can read this object."""
        return self.ext == EXT_EVSYNC

    @property
    def is_ls(self) -> bool:
        """True for a Lightning Stream ``.pb.gz`` object (by LS or by evsync)."""
        return self.ext == EXT_LIGHTNINGSTREAM

    @property
    def is_copy(self) -> bool:
        """True for a ``.pb.gz`` that evsync wrote beside its ``.evs.zst`` chain."""
        return self.is_ls and COPY_EXTRA in self.extras

    @functools.cached_property
    def delta_base_ns(self) -> int | None:
        """For a delta, the timestamp of the object it builds on; None for a full object.
        Only ``.evs.zst`` has deltas: a ``.pb.gz`` is always a full snapshot, whatever
        extras LSE hooks put in its name."""
        if self.ext != EXT_EVSYNC:
            return None
        for extra in self.extras:
            if extra.startswith(DELTA_EXTRA):
                return parse_timestamp(extra[1:])  # validated by parse()
        return None

    @functools.cached_property
    def checkpoint_of_ns(self) -> int | None:
        """For a checkpoint (a full ``.evs.zst`` named ``__A<timestamp>``), the timestamp
        of the chain member it is at least as new as; None otherwise."""
        if self.ext != EXT_EVSYNC:
            return None
        for extra in self.extras:
            if extra.startswith(CHECKPOINT_EXTRA):
                return parse_timestamp(extra[1:])  # validated by parse()
        return None

    @property
    def is_checkpoint(self) -> bool:
        """True for a checkpoint (DESIGN §7)."""
        return self.checkpoint_of_ns is not None

    @property
    def is_delta(self) -> bool:
        """True for a delta (DESIGN §7)."""
        return self.delta_base_ns is not None

    def __str__(self) -> str:
        return self.name


def delta_extra(base_ns: int) -> str:
    """The extra field naming a delta's base: ``D<YYYYMMDD-HHMMSS-nnnnnnnnn>``."""
    return DELTA_EXTRA + format_timestamp(base_ns)


def checkpoint_extra(point_ns: int) -> str:
    """The extra field of a checkpoint: ``A<YYYYMMDD-HHMMSS-nnnnnnnnn>``, the chain member
    it is at least as new as."""
    return CHECKPOINT_EXTRA + format_timestamp(point_ns)


def db_prefix(db: str) -> str:
    """The listing prefix of one db's objects."""
    return db + SEPARATOR


def try_parse(name: str) -> SnapshotName | None:
    """Parse a name, or None when it is not a snapshot name."""
    try:
        return SnapshotName.parse(name)
    except InvalidNameError:
        return None
