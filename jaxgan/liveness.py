"""The processes of a job learn within milliseconds that one of them was killed outright, and within
``silence_s`` that one froze or became unreachable.

A process killed by ``kill -9`` or the kernel's out-of-memory killer tells nobody. JAX takes it as dead
only when its heartbeat times out (the training command's ``--peer_timeout``, 100 s by default), and a
process that waits for it in one of the coordination service's barriers (Orbax holds several in each
save) sits there until then and aborts with a native stack trace. The kernel, though, closes a dead
process's sockets at once. So each other process holds one TCP connection to process 0, on the
coordinator's host and a port that process 0 publishes, and both ends say goodbye on it before they end
on purpose: a connection that closes without the goodbye is a process that died. Process 0 hears of any
other process; each other process hears of process 0 (whose death also takes JAX's coordination service,
and JAX then aborts the others within a second: the link's line comes first, and usually the exit).

A frozen process (stopped, or stuck in the kernel) or a lost host (powered off, a cut network) closes
nothing. So both ends also send a one-byte beat every ``beat_s`` (a fifth of ``silence_s``, at most 1 s),
and an end that hears nothing for ``silence_s`` takes the other as lost. The training command sets
``silence_s`` to half of ``--peer_timeout`` (``--nopeer_beats``: None, no beats), so that this comes
before JAX's heartbeat ends the job with a native stack trace. After either end's goodbye, silence means
nothing.

Where the link cannot be made (a firewall between hosts), a warning says so and training goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import selectors
import socket
import threading
import time
from collections.abc import Callable

CONNECT_TIMEOUT_S = 10.0
PUBLISH_WAIT_S = 60.0  # how long process i waits for process 0's address (they start this together)
_GOODBYE = b"bye\n"
_BEAT = b"."
KILLED = "ended without a word (killed, out of memory?)"  # how a peer was lost: its connection closed
_NONE = "none"  # published by a process 0 that could not listen: the others do not wait or try


def silent(seconds: float) -> str:
    """How a peer was lost: nothing heard from it for ``seconds`` (the ``silence_s`` it exceeded)."""
    return f"fell silent for {seconds:.0f} s (frozen, or its host or the network lost?)"


def _beat_s(silence_s: float) -> float:
    return min(1.0, silence_s / 5)


def _listen() -> socket.socket:
    """A TCP server on every interface (IPv4 and IPv6 where the system has both), on a free port."""
    if socket.has_dualstack_ipv6():
        return socket.create_server(("", 0), family=socket.AF_INET6, dualstack_ipv6=True)
    return socket.create_server(("", 0))


def _host(coordinator_address: str) -> str:
    """``"host"`` of ``"host:port"`` or ``"[v6]:port"``."""
    host = coordinator_address.rpartition(":")[0] or coordinator_address
    return host.strip("[]")


@dataclasses.dataclass
class _Peer:
    """What process 0 knows of one connection."""

    heard: float  # time.monotonic() of its last bytes (or of the accept)
    received: bytes = b""  # its first line until read; then the last few bytes (a goodbye split across reads)
    index: int | None = None  # the process, once its first line named it with the token
    said_goodbye: bool = False


class Monitor:
    """Process 0's side: accepts one connection per other process; calls ``on_lost(i, how)`` (from its own
    thread) when process i's connection closes without its goodbye (``how`` is :data:`KILLED`) or, with
    ``silence_s``, when nothing came from it for that long (``how`` is :func:`silent`'s phrase).

    Each connection first sends ``"<token> <i>\\n"``: one without the token published with the port (a
    stranger on that port) is dropped and never counts.
    """

    def __init__(
        self, server: socket.socket, token: str, on_lost: Callable[[int, str], None], silence_s: float | None = None
    ) -> None:
        self._server = server
        self._token = token
        self._on_lost = on_lost
        self._silence_s = silence_s
        self._sending = threading.Lock()  # a beat and the goodbye are never interleaved on a connection
        self._leaving = False  # goodbye() was called: a connection accepted from now on is told at once
        self._stop = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._selector.register(server, selectors.EVENT_READ, None)
        self._peers: dict[socket.socket, _Peer] = {}
        self._thread = threading.Thread(target=self._run, name="jaxgan-liveness", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.getsockname()[1]

    def _run(self) -> None:
        turn = 0.2 if self._silence_s is None else min(0.2, _beat_s(self._silence_s))
        next_beat = time.monotonic()
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=turn):
                if key.fileobj is self._server:
                    self._accept()
                else:
                    self._receive(key.fileobj)
            if self._silence_s is not None and not self._leaving and time.monotonic() >= next_beat:
                next_beat = time.monotonic() + _beat_s(self._silence_s)
                self._beat_and_listen(self._silence_s)

    def _beat_and_listen(self, silence_s: float) -> None:
        """Send each peer a beat; report one that was silent for ``silence_s`` (drop a silent stranger)."""
        now = time.monotonic()
        for conn, peer in list(self._peers.items()):
            if peer.said_goodbye:
                continue
            if now - peer.heard > silence_s:
                self._drop(conn)
                if peer.index is not None:
                    self._on_lost(peer.index, silent(silence_s))
                continue
            if peer.index is not None:
                with self._sending, contextlib.suppress(OSError):  # (a full buffer: that peer is silent anyway)
                    conn.send(_BEAT)

    def _accept(self) -> bool:
        """Accept one connection (told at once if process 0 is leaving); False if none was waiting."""
        try:
            conn, _ = self._server.accept()
        except OSError:
            return False
        conn.setblocking(False)
        self._peers[conn] = _Peer(heard=time.monotonic())
        self._selector.register(conn, selectors.EVENT_READ, None)
        if self._leaving:
            self._say_goodbye(conn)
        return True

    def _receive(self, conn: socket.socket) -> None:
        peer = self._peers[conn]
        try:
            data = conn.recv(256)
        except BlockingIOError:
            return
        except OSError:  # reset by a dying peer
            data = b""
        if data:
            peer.heard = time.monotonic()
            peer.received += data
            if peer.index is None:  # its first line: "<token> <index>"
                if b"\n" not in peer.received:
                    if len(peer.received) > 256:
                        self._drop(conn)
                    return
                line, _, peer.received = peer.received.partition(b"\n")
                token, _, index = line.decode(errors="replace").partition(" ")
                if token != self._token or not index.isdigit():
                    self._drop(conn)
                    return
                peer.index = int(index)
            if _GOODBYE in peer.received:
                peer.said_goodbye = True
            peer.received = peer.received[-len(_GOODBYE) :]
            return
        self._drop(conn)
        if peer.index is not None and not peer.said_goodbye and not self._stop.is_set():
            self._on_lost(peer.index, KILLED)

    def _drop(self, conn: socket.socket) -> None:
        self._selector.unregister(conn)
        self._peers.pop(conn, None)
        conn.close()

    def _say_goodbye(self, conn: socket.socket) -> None:
        with self._sending, contextlib.suppress(OSError):  # that process has gone: nobody to tell
            conn.sendall(_GOODBYE)

    def goodbye(self) -> None:
        """Tell every other process that process 0 ends on purpose (they must not take it as killed).

        Every connection is told, also one whose first line is still unread (a stranger's is harmless).
        Idempotent; safe from any thread. The monitor goes on watching them for closed connections, not for
        silence (a peer that read the goodbye stops beating).
        """
        if self._leaving:
            return
        self._leaving = True
        for conn in list(self._peers):
            self._say_goodbye(conn)

    def close(self) -> None:
        """Say goodbye, stop watching (a connection that closes from now on is not reported) and close the
        sockets (idempotent)."""
        if self._server.fileno() == -1:  # closed already
            return
        self.goodbye()
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)
        self._server.setblocking(False)
        while self._accept():  # connections the thread had not accepted yet are told too
            pass
        for conn in list(self._peers):
            self._drop(conn)
        self._selector.close()
        self._server.close()


class Link:
    """Process i's side (i > 0): the connection to process 0, held open until :meth:`goodbye`.

    A thread of its own reads it (and, with ``silence_s``, beats on it): when it closes without process 0's
    goodbye, or stays silent for ``silence_s``, before this process said its own goodbye, it calls
    ``on_lost(0, how)`` as :class:`Monitor` does.
    """

    def __init__(
        self, conn: socket.socket, on_lost: Callable[[int, str], None], silence_s: float | None = None
    ) -> None:
        # (replaces the connect's timeout) without beats the reader waits as long as process 0 lives
        conn.settimeout(None if silence_s is None else _beat_s(silence_s))
        self._conn: socket.socket | None = conn
        self._lock = threading.Lock()  # held while the connection is used or closed
        self._on_lost = on_lost
        self._silence_s = silence_s
        self._thread = threading.Thread(target=self._read, args=(conn,), name="jaxgan-liveness", daemon=True)
        self._thread.start()

    def _leaving(self) -> bool:
        with self._lock:
            return self._conn is None  # this process said goodbye: it closed the connection

    def _beat(self) -> None:
        with self._lock, contextlib.suppress(OSError):
            if self._conn is not None:
                self._conn.sendall(_BEAT)

    def _read(self, conn: socket.socket) -> None:
        received = b""
        heard = sent = time.monotonic()
        while _GOODBYE not in received:
            try:
                data = conn.recv(64)
            except TimeoutError:  # nothing within a beat (only with silence_s)
                data = None
            except OSError:  # reset by a dying process 0, or closed by goodbye()
                data = b""
            now = time.monotonic()
            if data == b"" or (data is None and now - heard > self._silence_s):
                if not self._leaving():
                    self._on_lost(0, KILLED if data == b"" else silent(self._silence_s))
                return
            if data:
                heard = now
                received = received[-len(_GOODBYE) :] + data
            if self._silence_s is not None and now - sent >= _beat_s(self._silence_s):
                sent = now
                self._beat()

    def goodbye(self) -> None:
        """Tell process 0 that this process ends on purpose (idempotent; safe from any thread)."""
        with self._lock:
            if self._conn is None:
                return
            conn, self._conn = self._conn, None
            with contextlib.suppress(OSError):  # process 0 has gone: nobody to tell
                conn.sendall(_GOODBYE)
                conn.shutdown(socket.SHUT_RDWR)  # wakes the reader, which sees this process leaving
            conn.close()

    def close(self) -> None:
        self.goodbye()


def start(
    process_index: int,
    coordinator_address: str | None,
    publish: Callable[[str], None],
    lookup: Callable[[float], str | None],
    on_lost: Callable[[int, str], None],
    silence_s: float | None = None,
) -> Monitor | Link | None:
    """Process 0: listen, ``publish("<port> <token>")`` and watch (a :class:`Monitor`). Others: ``lookup``
    that value (waiting up to ``PUBLISH_WAIT_S``) and connect to the coordinator's host (a :class:`Link`).
    ``on_lost(i, how)`` is called, from the link's own thread, when process i dies (``how`` is
    :data:`KILLED`) or, with ``silence_s`` (seconds), falls silent for that long (i > 0 on process 0; i = 0
    on the others).

    Returns None, after a logged warning, where the link cannot be made; a process killed outright is then
    noticed after JAX's heartbeat timeout, as without this module.
    """
    what = "a process killed outright is then noticed only after --peer_timeout"
    if process_index == 0:
        try:
            server = _listen()
        except OSError as e:
            publish(_NONE)
            logging.warning("Cannot listen for the other processes (%s): %s.", e, what)
            return None
        token = secrets.token_hex(8)
        monitor = Monitor(server, token, on_lost, silence_s)
        publish(f"{monitor.port} {token}")
        return monitor
    value = lookup(PUBLISH_WAIT_S)
    if value is None or value == _NONE or coordinator_address is None:
        if value is None:
            logging.warning("Process 0 published no address for the liveness link: %s.", what)
        return None
    port, _, token = value.partition(" ")
    host = _host(coordinator_address)
    try:
        conn = socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S)
        conn.sendall(f"{token} {process_index}\n".encode())
    except OSError as e:
        logging.warning("Cannot connect to process 0 at %s:%s (%s): %s.", host, port, e, what)
        return None
    return Link(conn, on_lost, silence_s)
