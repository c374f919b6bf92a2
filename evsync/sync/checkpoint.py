"""Checkpoints (DESIGN §7): full objects dumped by a child process, so no delta waits for them.

Owns: the child process (``python -m evsync.sync.checkpoint``), which opens the LMDB
read-only, dumps every synced DBI as of one read txn into a spool file beside it and
reports the dump's header; the store of that file, from a worker thread; and the rule
that a checkpoint is stored only once every change it holds is in the bucket already
(the txn it reflects is at or before the sender's last synced txn), so that a receiver
that steps over it never lacks a change that only the checkpoint carries.

The sender decides when one begins (its name, the chain member it is at least as new
as, the merged positions it proves) and records the outcome: :meth:`Checkpointer.poll`
from the syncer thread, after each upload decision. A child that fails or dies, a store
that fails: one :class:`Failed`, the chain untouched, the next attempt dumps afresh.

May call: the child process, the bucket's ``store`` (from the worker), the hint queue
(to wake the loop when a stage ends). Must not: touch the LMDB from this process, the
chain, or the peers (the sender does).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import lmdb

from evsync import faults
from evsync.config import LmdbConfig
from evsync.errors import EvsyncError
from evsync.lmdb.dump import DumpResult, dump_native
from evsync.lmdb.env import LmdbEnv
from evsync.snapshot.name import SnapshotName
from evsync.storage.base import BlobStore
from evsync.triggers.base import Hint, HintQueue

log = logging.getLogger(__name__)

# The child is background work: it runs under SCHED_IDLE (only when a CPU has nothing
# else to run) where Linux offers it, else at the lowest nice level; at nice 10 it
# measurably lengthened the deltas' tail on a busy 2-CPU host (docs/benchmarks.md).
CHILD_NICE = 19
CHILD_MODULE = "evsync.sync.checkpoint"
# The child's exit code when the dump itself failed (an LMDB error, say); any other
# non-zero code is a crash.
CHILD_FAILED = 3
# How long shutdown waits for a child to end after SIGKILL, and for a store in flight.
STOP_WAIT_SECONDS = 5.0
# Linux prctl(2) option: a signal for this process when its parent dies.
PR_SET_PDEATHSIG = 1
# The child's exit code when its parent died (it removed its files).
CHILD_ORPHANED = 4
# At most this much of the child's stderr goes into the failure line.
STDERR_TAIL_BYTES = 400
STAGE_DUMP = "dump"
STAGE_STORE = "store"
# The hint source that wakes the loop when a checkpoint stage ends.
SOURCE_CHECKPOINT = "self"


@dataclass(frozen=True)
class Job:
    """What the child is asked (pickled to its stdin by this process, so trusted)."""

    lmdb_cfg: LmdbConfig
    db: str
    instance: str
    timestamp_ns: int
    out_path: str
    result_path: str
    #: the daemon's pid: the child ends (removing its files) when that process is gone
    parent_pid: int = 0


@dataclass(frozen=True)
class Begun:
    """A checkpoint as the sender began it."""

    name: SnapshotName
    #: the chain member it is at least as new as (the chain's tip when it began)
    point_ns: int
    #: the chain's epoch then: a chain restarted since has no use for it
    epoch: int
    #: on the chain's clock
    began_at: float
    #: the other instances' merged positions when it began: what it proves merged
    merged: Mapping[str, int]


@dataclass(frozen=True)
class Stored:
    """A checkpoint is in the bucket."""

    begun: Begun
    dumped: DumpResult
    size: int
    dump_seconds: float
    #: when its store completed (monotonic): a listing begun before may lack it
    stored_at: float = 0.0


@dataclass(frozen=True)
class Failed:
    """A checkpoint failed at ``stage``; nothing of it is in the bucket."""

    begun: Begun
    stage: str
    error: str


@dataclass
class _Run:
    begun: Begun
    out: Path
    result: Path
    future: Future[DumpResult]
    dumped: DumpResult | None = None
    store: Future[None] | None = None
    proc: subprocess.Popen[bytes] | None = None
    dump_seconds: float = 0.0
    cancelled: bool = False
    stored_at: float = 0.0


class Checkpointer:
    """Runs one checkpoint at a time for one LMDB; driven by the syncer thread."""

    def __init__(self, lmdb_cfg: LmdbConfig, store: BlobStore, queue: HintQueue) -> None:
        self.lmdb_cfg = lmdb_cfg
        self.db = lmdb_cfg.name
        self.store = store
        self.queue = queue
        #: the child's environment (tests add fault points); None: this process's
        self.child_env: dict[str, str] | None = None
        self._run: _Run | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # the run's child handle, between worker and stop

    @property
    def running(self) -> bool:
        """True while a checkpoint is dumped, waits, or is stored."""
        return self._run is not None

    @property
    def begun(self) -> Begun | None:
        """The checkpoint in flight."""
        return self._run.begun if self._run is not None else None

    def start(self, begun: Begun) -> None:
        """Start the child for ``begun`` (none may be running)."""
        assert self._run is None
        fd, out = tempfile.mkstemp(prefix=f"evsync-checkpoint-{self.db}-", suffix=".evs.zst")
        os.close(fd)
        out_path = Path(out)
        result = out_path.with_suffix(".result")
        job = Job(
            self.lmdb_cfg,
            self.db,
            begun.name.instance,
            begun.name.timestamp_ns,
            out,
            str(result),
            os.getpid(),
        )
        run = _Run(begun, out_path, result, Future())
        self._run = run
        run.future = self._worker().submit(self._dump_in_worker, run, job)

    def poll(self, last_synced: int) -> Stored | Failed | None:
        """The syncer thread's turn: start the store of a finished dump once the bucket
        holds every change it reflects (``last_synced``: the sender's last synced txn);
        hand back a checkpoint that is stored or failed."""
        run = self._run
        if run is None:
            return None
        if run.store is None:
            if not run.future.done():
                return None
            exc = run.future.exception()
            if exc is not None:
                return self._end(Failed(run.begun, STAGE_DUMP, str(exc)))
            run.dumped = run.future.result()
            if run.dumped.header.txn_id > last_synced:
                return None  # a change it holds is not in a stored delta yet
            run.store = self._worker().submit(self._store_in_worker, run)
            return None
        if not run.store.done():
            return None
        exc = run.store.exception()
        if exc is not None:
            return self._end(Failed(run.begun, STAGE_STORE, str(exc)))
        assert run.dumped is not None
        size = run.out.stat().st_size
        return self._end(Stored(run.begun, run.dumped, size, run.dump_seconds, run.stored_at))

    def cancel(self, why: str = "the chain restarted") -> None:
        """Drop the checkpoint in flight (the chain it belongs to restarted, say); a store
        already under way ends on its own and is ignored."""
        run = self._run
        if run is None:
            return
        self._run = None
        self._kill(run)
        if run.store is None or run.store.done():
            _remove(run)
        else:
            run.store.add_done_callback(lambda _f: _remove(run))
        log.info("db %s: dropped checkpoint %s (%s)", self.db, run.begun.name, why)

    def close(self) -> None:
        """Stop the child, wait (bounded) for a store in flight, end the worker."""
        run, self._run = self._run, None
        if run is not None:
            self._kill(run, wait=True)
            if run.store is not None:
                try:
                    run.store.exception(timeout=STOP_WAIT_SECONDS)
                except TimeoutError:
                    log.warning("db %s: a checkpoint store is still running at shutdown", self.db)
            _remove(run)
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ internals

    def _end(self, outcome: Stored | Failed) -> Stored | Failed:
        run = self._run
        assert run is not None
        self._run = None
        _remove(run)
        return outcome

    def _kill(self, run: _Run, *, wait: bool = False) -> None:
        """SIGKILL the run's child, without waiting (``wait``: up to STOP_WAIT_SECONDS).
        Not SIGTERM: the child handles that in Python under SCHED_IDLE, so on a busy
        host it may take seconds to act, and the syncer thread must not wait for it.
        The worker reaps the child and removes what it may have written since."""
        with self._lock:
            run.cancelled = True
            proc = run.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            if wait:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(STOP_WAIT_SECONDS)

    def _worker(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix=f"evsync-checkpoint-{self.db}"
                )
            return self._executor

    def _dump_in_worker(self, run: _Run, job: Job) -> DumpResult:
        """The worker thread: run the child, wait for it, read its report; then wake the
        loop, whatever happened."""
        try:
            return self._run_child(run, job)
        finally:
            self.queue.put(Hint(SOURCE_CHECKPOINT, local=True))

    def _run_child(self, run: _Run, job: Job) -> DumpResult:
        t0 = time.monotonic()
        with tempfile.TemporaryFile() as stderr:
            with self._lock:
                if run.cancelled:
                    raise EvsyncError("cancelled")
                proc = subprocess.Popen(
                    [sys.executable, "-m", CHILD_MODULE],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    env=self.child_env,
                    close_fds=True,
                )
                run.proc = proc
            assert proc.stdin is not None
            try:
                proc.stdin.write(pickle.dumps(job))
                proc.stdin.close()
            except OSError:
                pass  # it died at once: its exit code says how
            code = proc.wait()
            if run.cancelled:
                _remove(run)  # killed: what it wrote after the cancel removed its files
                raise EvsyncError("cancelled")
            if code != 0:
                stderr.seek(0)
                tail = stderr.read()[-STDERR_TAIL_BYTES:].decode(errors="replace").strip()
                how = "failed" if code == CHILD_FAILED else f"died (exit code {code})"
                last = tail.splitlines()[-1] if tail else "no output"
                raise EvsyncError(f"checkpoint child {how}: {last}")
        try:
            dumped = pickle.loads(run.result.read_bytes())  # noqa: S301 - written by our child
        except (OSError, pickle.UnpicklingError, EOFError) as exc:
            raise EvsyncError(f"checkpoint child left no report: {exc}") from None
        if not isinstance(dumped, DumpResult):
            raise EvsyncError("checkpoint child left a report of the wrong type")
        run.dump_seconds = time.monotonic() - t0
        return dumped

    def _store_in_worker(self, run: _Run) -> None:
        """The worker thread: one store attempt of the spool file, then wake the loop."""
        try:
            with run.out.open("rb") as data:
                self.store.store(run.begun.name.name, faults.reading(data, "upload"))
            run.stored_at = time.monotonic()
        finally:
            self.queue.put(Hint(SOURCE_CHECKPOINT, local=True))


def _remove(run: _Run) -> None:
    for path in (run.out, run.result):
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------- the child


def _lower_priority() -> None:
    """SCHED_IDLE where there is one, else nice 19; whatever the host allows."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux, or not allowed
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return
    with contextlib.suppress(OSError):  # not allowed here: the parent's priority, then
        os.nice(CHILD_NICE)


def _end_with_parent(job: Job) -> None:
    """A daemon killed outright must not leave its child dumping, nor the spool in
    $TMPDIR: SIGTERM when the parent dies (Linux), and SIGTERM removes the files."""

    def ended(_signum: int, _frame: object) -> None:
        for path in (job.out_path, job.result_path):
            with contextlib.suppress(OSError):
                os.unlink(path)
        os._exit(CHILD_ORPHANED)

    signal.signal(signal.SIGTERM, ended)
    with contextlib.suppress(OSError, AttributeError):  # not Linux or no libc: no signal
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if job.parent_pid and os.getppid() != job.parent_pid:
        ended(signal.SIGTERM, None)  # it died before the prctl took effect


def child_main() -> int:
    """The child process: read a :class:`Job` from stdin, dump, report; 0 on success."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    _lower_priority()
    job = pickle.loads(sys.stdin.buffer.read())  # noqa: S301 - from our own parent
    if not isinstance(job, Job):
        log.error("checkpoint child: stdin holds no job")
        return CHILD_FAILED
    _end_with_parent(job)
    try:
        lenv = LmdbEnv(job.lmdb_cfg, readonly=True)
        try:
            with open(job.out_path, "wb") as out:
                dumped = dump_native(
                    lenv, out, db=job.db, instance=job.instance, timestamp_ns=job.timestamp_ns
                )
        finally:
            lenv.close()
    except (EvsyncError, OSError, lmdb.Error) as exc:
        log.error("checkpoint child: %s", exc)
        return CHILD_FAILED
    faults.point("checkpoint")
    Path(job.result_path).write_bytes(pickle.dumps(dumped))
    return 0


if __name__ == "__main__":
    # the pickled Job names this module by its package path, not as __main__
    from evsync.sync.checkpoint import child_main as _main

    sys.exit(_main())
