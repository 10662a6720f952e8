"""A TCP proxy the tests control: pass, delay, black-hole or cut a connection.

Put it between the daemon and the broker (the daemon connects to ``proxy.port``) and
misbehave on demand:

* :meth:`TcpProxy.latency` -- every chunk is delivered ``seconds`` late, in order, in
  both directions (a slow broker or a congested uplink).
* :meth:`TcpProxy.blackhole` -- a silent network partition: bytes in both directions
  are dropped, and **nothing is closed** (no FIN, no RST), so neither end learns about
  it from TCP; only MQTT keepalive can tell.  New connections made during the
  partition are accepted and black-holed too (their CONNECT is never answered).  A
  black-holed connection never comes back, even after :meth:`heal`: its byte stream
  has a hole in it, which TCP would have repaired by retransmission but a userspace
  proxy cannot, so the client must notice and reconnect.  Its broker-side socket stays
  open until :meth:`close`, so the broker too only notices by keepalive (and then
  publishes the Last Will).
* :meth:`TcpProxy.cut` -- every current connection is reset at once (RST), both sides.
* :meth:`TcpProxy.heal` -- back to passing bytes (and no latency) for new connections.

Each direction of each connection has a reader thread (recv, then queue with a due
time) and a writer thread (send when due), so latency never reorders bytes.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

_CHUNK = 65536
_QUIT = (-1.0, b"")  # ends a writer without closing anything


@dataclass
class ProxyStats:
    accepted: int = 0
    bytes_up: int = 0  # client -> server, forwarded
    bytes_down: int = 0  # server -> client, forwarded
    bytes_dropped: int = 0


@dataclass(eq=False)
class _Conn:
    client: socket.socket
    server: socket.socket
    dead: bool = False  # black-holed: drops everything from now on, forever
    closed: bool = False
    held: list[socket.socket] = field(default_factory=list)


class TcpProxy:
    """``TcpProxy(target_port)`` listens on 127.0.0.1:``port`` and forwards to the target."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.2)
        self.host = "127.0.0.1"
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._conns: list[_Conn] = []
        self._latency = 0.0
        self._blackhole = False
        self._stop = threading.Event()
        self.stats = ProxyStats()
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()

    # -- control ---------------------------------------------------------------------------

    def latency(self, seconds: float) -> None:
        """Deliver every chunk ``seconds`` late (both directions, order kept)."""
        with self._lock:
            self._latency = seconds

    def blackhole(self) -> None:
        """Silently drop everything on every connection, current and new; close nothing."""
        with self._lock:
            self._blackhole = True
            for conn in self._conns:
                conn.dead = True

    def heal(self) -> None:
        """New connections pass again (black-holed ones stay dead); no added latency."""
        with self._lock:
            self._blackhole = False
            self._latency = 0.0

    def cut(self) -> None:
        """Reset every current connection (RST on both sides)."""
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            self._close(conn, reset=True)

    @property
    def connections(self) -> int:
        """Live (not closed) connections, black-holed ones included."""
        with self._lock:
            return sum(not c.closed for c in self._conns)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            self._close(conn, reset=True)
            for s in conn.held:
                with contextlib.suppress(OSError):
                    s.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- machinery -------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                # The broker is down: behave like it (refuse), unless partitioned.
                if self._blackhole:
                    self._hold_silently(client)
                else:
                    self._reset(client)
                continue
            client.settimeout(None)
            server.settimeout(None)
            conn = _Conn(client, server)
            with self._lock:
                conn.dead = self._blackhole
                self._conns.append(conn)
                self.stats.accepted += 1
            for src, dst, up in ((client, server, True), (server, client, False)):
                q: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
                threading.Thread(target=self._reader, args=(conn, src, q, up),
                                 daemon=True).start()
                threading.Thread(target=self._writer, args=(conn, dst, q, up),
                                 daemon=True).start()

    def _hold_silently(self, client: socket.socket) -> None:
        conn = _Conn(client, client, dead=True)
        with self._lock:
            self._conns.append(conn)
            self.stats.accepted += 1
        q: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
        threading.Thread(target=self._reader, args=(conn, client, q, True), daemon=True).start()

    def _reader(self, conn: _Conn, src: socket.socket, q: queue.Queue, up: bool) -> None:
        while True:
            try:
                data = src.recv(_CHUNK)
            except OSError:
                data = b""
            if not data:
                if conn.dead:
                    # A partition delivers no FIN: keep the other side open and unaware.
                    conn.held.append(conn.server if src is conn.client else conn.client)
                    q.put(_QUIT)
                    return
                q.put(None)
                return
            with self._lock:
                dead, delay = conn.dead, self._latency
                if dead:
                    self.stats.bytes_dropped += len(data)
            if not dead:
                q.put((time.monotonic() + delay, data))

    def _writer(self, conn: _Conn, dst: socket.socket, q: queue.Queue, up: bool) -> None:
        while True:
            item = q.get()
            if item is None:
                self._close(conn, reset=False)
                return
            if item is _QUIT:
                return
            due, data = item
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if conn.dead:
                with self._lock:
                    self.stats.bytes_dropped += len(data)
                continue
            try:
                dst.sendall(data)
            except OSError:
                self._close(conn, reset=True)
                return
            with self._lock:
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)

    def _close(self, conn: _Conn, *, reset: bool) -> None:
        with self._lock:
            if conn.closed:
                return
            conn.closed = True
        for s in {conn.client, conn.server}:
            if reset:
                self._reset(s)
            else:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    @staticmethod
    def _reset(s: socket.socket) -> None:
        """Close with RST.  SHUT_RD first: close() alone does not wake (or tear down) a
        socket another thread is blocked in recv() on; SHUT_RD sends nothing on TCP."""
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RD)
        with contextlib.suppress(OSError):
            s.close()
