"""The liveness connections: process 0 hears at once of a peer that died, the others of process 0, and
nobody of a process that said goodbye."""

import logging
import queue
import signal
import socket
import subprocess
import sys

import pytest

from jaxgan import liveness


@pytest.fixture
def monitor():
    """A started process-0 side: ``(monitor, address, reports)``, ``reports`` receiving each lost index."""
    reports: queue.Queue = queue.Queue()
    published = []
    monitor = liveness.start(0, None, published.append, lambda s: None, reports.put)
    assert isinstance(monitor, liveness.Monitor)
    port, token = published[0].split()
    assert int(port) == monitor.port
    yield monitor, f"127.0.0.1:{port}", token, reports
    monitor.close()


def _link(index: int, address: str, token: str, reports: queue.Queue | None = None) -> liveness.Link:
    """Process ``index``'s link; ``reports`` receives 0 if it hears that process 0 died."""
    lookup = lambda s: f"{address.rpartition(':')[2]} {token}"  # noqa: E731
    link = liveness.start(index, address, lambda v: None, lookup, (reports or queue.Queue()).put)
    assert isinstance(link, liveness.Link)
    return link


def _no_report(reports: queue.Queue) -> None:
    with pytest.raises(queue.Empty):
        reports.get(timeout=0.6)  # three turns of the monitor's loop


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
    assert reports.get(timeout=2) == 3
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
        assert reports.get(timeout=2) == 5
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


def test_the_others_hear_at_once_that_process_0_was_killed():
    code = (
        "import time\nfrom jaxgan import liveness\n"
        "liveness.start(0, None, lambda v: print(v, flush=True), None, print)\ntime.sleep(60)"
    )
    process_0 = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        port, token = process_0.stdout.readline().split()
        reports: queue.Queue = queue.Queue()
        links = [_link(i, f"127.0.0.1:{port}", token, reports) for i in (1, 2)]
        _no_report(reports)  # alive: nothing
        process_0.send_signal(signal.SIGKILL)
        assert [reports.get(timeout=2), reports.get(timeout=2)] == [0, 0]  # one report from each link
        _no_report(reports)
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
