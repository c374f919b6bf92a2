"""Crash points for the reliability suite: evsync SIGKILLs itself at a named point when asked.

Off unless the environment names points and rates, e.g.
``EVSYNC_FAULTS="upload=0.05,merge=0.05"`` (and optionally ``EVSYNC_FAULTS_SEED``). At
each call of :func:`point` with a listed name, the process dies by SIGKILL with that
probability, after one line on stderr (``evsync fault: SIGKILL at merge``), so a test
can crash a syncer in the middle of an upload or of a merge txn, not only between them.
With ``EVSYNC_FAULTS_UNTIL=<path>``, the points are off once that file exists, so a
test can end the crashes without restarting anything. When ``EVSYNC_FAULTS`` is unset,
:func:`point` is one dict lookup on an empty dict.

Points:

- ``upload``: each read of an object's bytes for the storage backend to send (an S3
  object up to 8 MiB is read whole, once, before its PUT; a bigger one while its parts
  go out);
- ``stored``: right after a store succeeded, before evsync has recorded it;
- ``published``: right after a delta went out inside its MQTT companion, before its
  store began (the broker has taken the message: see :func:`armed`);
- ``merge``: inside a merge write txn, after its puts and before its commit;
- ``checkpoint``: in a checkpoint's child process, after its dump and before its report
  (the child dies; the daemon carries on).
"""

from __future__ import annotations

import os
import random
import signal
from typing import IO, Any

from evsync.errors import ConfigError

FAULTS_VAR = "EVSYNC_FAULTS"
SEED_VAR = "EVSYNC_FAULTS_SEED"
UNTIL_VAR = "EVSYNC_FAULTS_UNTIL"
POINTS = frozenset({"upload", "stored", "merge", "published", "checkpoint"})


def parse_faults(spec: str) -> dict[str, float]:
    """``"upload=0.1,merge=0.05"`` -> rates; unknown points and bad rates are errors."""
    rates: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, rate = part.partition("=")
        if not sep or name not in POINTS:
            raise ConfigError(
                f"{FAULTS_VAR}: {part!r} is not <point>=<rate> with a point among "
                f"{', '.join(sorted(POINTS))}"
            )
        try:
            value = float(rate)
        except ValueError:
            value = -1.0
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{FAULTS_VAR}: rate of {name} must be within 0..1, got {rate!r}")
        rates[name] = value
    return rates


_rates: dict[str, float] = parse_faults(os.environ.get(FAULTS_VAR, ""))
_random = random.Random(os.environ.get(SEED_VAR))  # noqa: S311 - chaos, not crypto
_until = os.environ.get(UNTIL_VAR)


def point(name: str) -> None:
    """Die here with the configured probability of ``name`` (never, by default)."""
    rate = _rates.get(name)
    if rate and _random.random() < rate and not (_until and os.path.exists(_until)):
        crash(name)


def armed(name: str) -> bool:
    """True when ``name`` may fire: a caller that must finish something first (hand a
    message to the broker, say) does so only then, so the point costs nothing else."""
    return bool(_rates.get(name)) and not (_until and os.path.exists(_until))


def crash(name: str) -> None:
    """Say where, then SIGKILL this process: no cleanup, no atexit, as a real crash."""
    os.write(2, f"evsync fault: SIGKILL at {name}\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)


def reading(data: IO[bytes], name: str) -> IO[bytes]:
    """``data`` itself, or (with ``name`` enabled) a view that calls :func:`point` per read."""
    if not _rates.get(name):
        return data
    return _FaultyReader(data, name)  # type: ignore[return-value]


class _FaultyReader:
    """Delegates everything to the wrapped file; each read may be the last."""

    def __init__(self, data: IO[bytes], name: str) -> None:
        self._data = data
        self._name = name

    def read(self, size: int = -1) -> bytes:
        point(self._name)
        return self._data.read(size)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._data, attr)
