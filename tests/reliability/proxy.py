"""A TCP relay in front of the S3 server that the tests can take down, bring back or slow down.

moto keeps its objects in memory, so stopping and restarting the real server would
also empty the bucket, which no real S3 outage does. Taking the relay down looks the
same to evsync (connections refused, open ones cut) and keeps the objects.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from tests.helpers import free_port

CHUNK = 65536
ACCEPT_POLL_SECONDS = 0.1


class ChaosProxy:
    """Relays 127.0.0.1:<port> to ``target``; :meth:`down`, :meth:`up`, :meth:`slow`."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.delay = 0.0  # seconds added before relaying each chunk of a response
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._accepting: threading.Thread | None = None

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    def up(self) -> ChaosProxy:
        """Listen again (or for the first time)."""
        if self._listener is not None:
            return self
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(ACCEPT_POLL_SECONDS)
        self._listener = listener
        self._stopped.clear()
        self._accepting = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._accepting.start()
        return self

    def down(self) -> None:
        """Refuse new connections and cut the open ones, as a server that went away."""
        listener, self._listener = self._listener, None
        self._stopped.set()
        if self._accepting is not None:
            self._accepting.join(timeout=5)
        if listener is not None:
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def slow(self, delay: float) -> None:
        """Hold every chunk of every response ``delay`` seconds (0: full speed)."""
        self.delay = delay

    def close(self) -> None:
        self.down()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopped.is_set():
            try:
                client, _addr = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._conns.update((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream, 0.0), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, 1.0), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, delay_factor: float) -> None:
        try:
            while True:
                data = src.recv(CHUNK)
                if not data:
                    break
                if delay_factor and self.delay:
                    time.sleep(self.delay * delay_factor)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)
            src.close()
