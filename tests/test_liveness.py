"""The liveness connections: process 0 hears of a peer that died at once, and of nothing else."""

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


def _link(index: int, address: str, token: str) -> liveness.Link:
    link = liveness.start(index, address, lambda v: None, lambda s: f"{address.rpartition(':')[2]} {token}", None)
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
    closed._conn.close()  # as the kernel closes a dead process's socket
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
