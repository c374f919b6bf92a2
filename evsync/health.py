"""Track continuous failure of each storage operation, as Lightning Stream's health trackers do."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from evsync.config import HealthCheckConfig

OK, WARNING, ERROR = "ok", "warning", "error"


@dataclass
class OpState:
    """Failure bookkeeping of one operation (list, load, store)."""

    failing_since: float | None = None
    last_error: str = ""
    last_success: float | None = None
    failures: int = 0
    successes: int = 0


class HealthTracker:
    """Per-operation state; an op is a warning after ``warn_duration`` of continuous failure."""

    def __init__(self, checks: dict[str, HealthCheckConfig]) -> None:
        self.checks = checks
        self._ops = {name: OpState() for name in checks}
        self._lock = threading.Lock()

    def success(self, op: str) -> None:
        """Record a success; it ends any failure streak."""
        with self._lock:
            st = self._ops[op]
            st.failing_since = None
            st.last_error = ""
            st.last_success = time.monotonic()
            st.successes += 1

    def failure(self, op: str, error: str) -> None:
        """Record a failure."""
        with self._lock:
            st = self._ops[op]
            if st.failing_since is None:
                st.failing_since = time.monotonic()
            st.last_error = error
            st.failures += 1

    def status(self, op: str, now: float | None = None) -> str:
        """``ok``, ``warning`` or ``error`` for one op."""
        with self._lock:
            st = self._ops[op]
            if st.failing_since is None:
                return OK
            failing_for = (now or time.monotonic()) - st.failing_since
        cfg = self.checks[op]
        if failing_for >= cfg.error_duration:
            return ERROR
        if failing_for >= cfg.warn_duration:
            return WARNING
        return OK

    def failing(self, op: str) -> bool:
        """True while the op's latest attempt failed."""
        with self._lock:
            return self._ops[op].failing_since is not None

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Plain data for status output."""
        now = time.monotonic()
        out: dict[str, dict[str, object]] = {}
        for op in self.checks:
            with self._lock:
                st = self._ops[op]
                failing_for = None if st.failing_since is None else now - st.failing_since
                entry: dict[str, object] = {
                    "failing_for_seconds": failing_for,
                    "last_error": st.last_error,
                    "failures": st.failures,
                    "successes": st.successes,
                }
            entry["status"] = self.status(op, now)
            out[op] = entry
        return out
