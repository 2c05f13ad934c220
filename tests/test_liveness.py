"""The liveness connections: process 0 hears at once of a peer that died, and after ``silence_s`` of one
that froze; the others hear the same of process 0; nobody hears of a process that said goodbye."""

import logging
import queue
import signal
import socket
import subprocess
import sys
import time

import pytest

from jaxgan import liveness

SILENCE_S = 1.0  # the tests' silence_s: beats every 0.2 s


def _report_to(reports: queue.Queue):
    return lambda index, how: reports.put((index, how))


def _start_monitor(silence_s: float | None = None):
    """A started process-0 side: ``(monitor, address, token, reports)``, ``reports`` receiving ``(index, how)``
    of each lost process."""
    reports: queue.Queue = queue.Queue()
    published = []
    monitor = liveness.start(0, None, published.append, lambda s: None, _report_to(reports), silence_s)
    assert isinstance(monitor, liveness.Monitor)
    port, token = published[0].split()
    assert int(port) == monitor.port
    return monitor, f"127.0.0.1:{port}", token, reports


@pytest.fixture
def monitor():
    started = _start_monitor()
    yield started
    started[0].close()


@pytest.fixture
def beating_monitor():
    started = _start_monitor(SILENCE_S)
    yield started
    started[0].close()


def _link(index: int, address: str, token: str, reports: queue.Queue | None = None, silence_s: float | None = None):
    """Process ``index``'s link; ``reports`` receives ``(0, how)`` if it hears that process 0 is lost."""
    lookup = lambda s: f"{address.rpartition(':')[2]} {token}"  # noqa: E731
    link = liveness.start(index, address, lambda v: None, lookup, _report_to(reports or queue.Queue()), silence_s)
    assert isinstance(link, liveness.Link)
    return link


def _no_report(reports: queue.Queue, seconds: float = 0.6) -> None:
    with pytest.raises(queue.Empty):
        reports.get(timeout=seconds)  # (0.6: three turns of the monitor's loop)


def _silent_report(reports: queue.Queue, index: int, since: float) -> None:
    """The next report is ``index`` fallen silent, ``SILENCE_S`` after its last beat (at most a beat before
    ``since``; reporting takes up to a turn more)."""
    got, how = reports.get(timeout=SILENCE_S + 2)
    seconds = time.monotonic() - since
    assert got == index and how.startswith("fell silent for 1 s (frozen, or its host or the network lost?)"), how
    assert SILENCE_S / 2 < seconds < SILENCE_S + 1, seconds


def test_a_process_that_says_goodbye_is_not_reported(monitor):
    _, address, token, reports = monitor
    links = [_link(i, address, token) for i in (1, 2)]
    for link in links:
        link.goodbye()
        link.goodbye()  # twice (exit_now after the Watch): harmless
    _no_report(reports)


def test_a_connection_closed_without_goodbye_is_reported_with_its_index(monitor):
    _, address, token, reports = monitor
    kept, closed = _link(1, address, token), _link(3, address, token)
    closed._conn.shutdown(socket.SHUT_RDWR)  # as the kernel closes a dead process's socket (no goodbye)
    assert reports.get(timeout=2) == (3, liveness.KILLED)
    _no_report(reports)
    kept.goodbye()


def test_a_killed_process_is_reported_at_once(monitor):
    _, address, token, reports = monitor
    host, port = address.rsplit(":", 1)
    code = (
        f"import socket, sys, time\ns = socket.create_connection(({host!r}, {port}))\n"
        f"s.sendall(b'{token} 5\\n')\nprint('connected', flush=True)\ntime.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "connected"
        _no_report(reports)  # alive: nothing
        child.send_signal(signal.SIGKILL)
        assert reports.get(timeout=2) == (5, liveness.KILLED)
    finally:
        child.kill()
        child.wait()


def test_strangers_and_a_closed_monitor_report_nothing(monitor):
    mon, address, token, reports = monitor
    host, port = address.rsplit(":", 1)
    for hello in (b"wrong-token 1\n", b"x" * 300, f"{token} one\n".encode(), b""):
        with socket.create_connection((host, int(port))) as s:
            s.sendall(hello)
    _no_report(reports)
    late = _link(2, address, token)
    mon.close()
    late._conn.close()
    _no_report(reports)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "frozen"])
def test_the_others_hear_that_process_0_was_killed_or_froze(sig):
    code = (
        "import time\nfrom jaxgan import liveness\n"
        f"liveness.start(0, None, lambda v: print(v, flush=True), None, print, {SILENCE_S})\ntime.sleep(60)"
    )
    process_0 = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        port, token = process_0.stdout.readline().split()
        reports: queue.Queue = queue.Queue()
        links = [_link(i, f"127.0.0.1:{port}", token, reports, SILENCE_S) for i in (1, 2)]
        _no_report(reports, 2 * SILENCE_S)  # alive and beating: nothing
        process_0.send_signal(sig)
        since = time.monotonic()
        if sig == signal.SIGKILL:  # at once, one report from each link
            assert [reports.get(timeout=2), reports.get(timeout=2)] == [(0, liveness.KILLED)] * 2
        else:  # after the silence
            _silent_report(reports, 0, since)
            _silent_report(reports, 0, since)
        _no_report(reports)
        assert not any(link._thread.is_alive() for link in links)
        links[0].goodbye()  # (process 0 has gone: nobody to tell, no error)
    finally:
        process_0.kill()
        process_0.wait()


def test_process_0_saying_goodbye_and_a_process_leaving_are_not_reported(monitor):
    mon, address, token, reports = monitor
    heard: queue.Queue = queue.Queue()
    leaving, staying = _link(1, address, token, heard), _link(2, address, token, heard)
    leaving.goodbye()  # closes its own connection: its reader must not take that for process 0 dying
    _no_report(heard)
    mon.goodbye()
    mon.goodbye()  # twice (exit_now, then the Watch's close): harmless
    late = _link(3, address, token, heard)  # connects after the goodbye: told at once
    mon.close()  # process 0 ends: its connections close, after its goodbye
    _no_report(heard)
    _no_report(reports)
    assert not staying._thread.is_alive() and not late._thread.is_alive()  # each read the goodbye and stopped


def test_a_peer_that_falls_silent_is_reported_after_silence_s(beating_monitor):
    _, address, token, reports = beating_monitor
    host, port = address.rsplit(":", 1)
    heard: queue.Queue = queue.Queue()
    beating = _link(1, address, token, heard, SILENCE_S)
    with socket.create_connection((host, int(port))) as frozen, socket.create_connection((host, int(port))):
        frozen.sendall(f"{token} 4\n".encode())  # then nothing, as a stopped process or a lost host
        since = time.monotonic()  # (the second connection is a stranger that never names itself: dropped)
        _silent_report(reports, 4, since)
        _no_report(reports, 2 * SILENCE_S)  # the beating link, silent for none of it, is not reported ...
        _no_report(heard)  # ... and hears process 0's beats
        assert frozen.recv(64).strip(b".") == b""  # process 0 beat on the frozen one's connection, then closed it
    beating.goodbye()


def test_silence_after_a_goodbye_is_not_reported(beating_monitor):
    mon, address, token, reports = beating_monitor
    heard: queue.Queue = queue.Queue()
    links = [_link(i, address, token, heard, SILENCE_S) for i in (1, 2)]
    links[0].goodbye()  # leaves (its connection closes after the goodbye)
    mon.goodbye()  # process 0 is ending: link 2 reads the goodbye and stops beating, process 0 stops listening
    _no_report(reports, 2 * SILENCE_S)
    _no_report(heard)
    assert not links[1]._thread.is_alive()


def test_without_an_address_the_others_go_on_without_a_link(caplog):
    caplog.set_level(logging.WARNING)
    assert liveness.start(1, "127.0.0.1:1", lambda v: None, lambda s: "none", None) is None
    assert not caplog.records  # process 0 could not listen, and said so itself
    assert liveness.start(1, "127.0.0.1:1", lambda v: None, lambda s: None, None) is None
    assert "Process 0 published no address for the liveness link" in caplog.text
    with socket.create_server(("127.0.0.1", 0)) as s:  # a port where nobody listens once it is closed
        port = s.getsockname()[1]
    assert liveness.start(1, "127.0.0.1:99", lambda v: None, lambda s: f"{port} t", None) is None
    assert f"Cannot connect to process 0 at 127.0.0.1:{port}" in caplog.text
    assert "noticed only after --peer_timeout" in caplog.text


@pytest.mark.parametrize(
    "address, host", [("10.1.2.3:1234", "10.1.2.3"), ("[::1]:1234", "::1"), ("node-0.cluster:80", "node-0.cluster")]
)
def test_the_coordinator_host_is_read_from_its_address(address, host):
    assert liveness._host(address) == host
