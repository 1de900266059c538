"""The listening socket and the start-up failures a user reads in one line (`oai_server.startup`).

`tests/test_first_hour.py` runs these end to end through the command; here each failure's message and exit
status are checked directly, the ones a subprocess cannot reach (an address of another machine) included.
"""

from __future__ import annotations

import socket

import pytest

from oai_server.startup import BAD_SETTING, STARTUP_FAILURE, StartupError, bind_socket, loopback_url


def test_a_bound_socket_listens_and_passes_to_the_server_processes() -> None:
    sock = bind_socket("127.0.0.1", 0)
    try:
        assert sock.family == socket.AF_INET and sock.getsockname()[0] == "127.0.0.1"
        assert sock.get_inheritable()  # the replicas' supervisor hands it to its children
        sock.listen()
        port = sock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:
        sock.close()


def test_localhost_binds_ipv4_first() -> None:
    sock = bind_socket("localhost", 0)
    try:
        assert sock.family == socket.AF_INET  # where the ready line's http://127.0.0.1 points
    finally:
        sock.close()


def test_a_taken_port_names_the_port_and_a_free_one() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(StartupError) as caught:
            bind_socket("127.0.0.1", port)
    finally:
        taken.close()
    assert caught.value.status == STARTUP_FAILURE
    message = str(caught.value)
    assert f"port {port} is already in use on 127.0.0.1" in message and f"--port {port + 1}" in message


def test_a_host_that_does_not_resolve_is_a_bad_setting() -> None:
    with pytest.raises(StartupError) as caught:
        bind_socket("no-such-host.invalid", 8080)
    assert caught.value.status == BAD_SETTING
    assert "cannot listen on host 'no-such-host.invalid'" in str(caught.value) and "--host" in str(caught.value)


def test_an_address_of_another_machine_says_to_check_host_and_port() -> None:
    with pytest.raises(StartupError) as caught:
        bind_socket("192.0.2.1", 8080)  # TEST-NET-1: never an address of this machine
    assert caught.value.status == STARTUP_FAILURE
    assert str(caught.value).startswith("cannot listen on 192.0.2.1:8080 (") and "check --host and --port" in str(
        caught.value
    )


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("", "http://127.0.0.1:8080/"),
        ("0.0.0.0", "http://127.0.0.1:8080/"),
        ("::", "http://[::1]:8080/"),
        ("::1", "http://[::1]:8080/"),
        ("localhost", "http://localhost:8080/"),
        ("10.1.2.3", "http://10.1.2.3:8080/"),
    ],
)
def test_the_ready_line_points_at_an_address_a_browser_here_can_open(host: str, url: str) -> None:
    assert loopback_url(host, 8080) == url
