"""Unit tests for vm_backend.machine.ports (real loopback sockets, no mocks needed)."""

from __future__ import annotations

import socket

import pytest

from vm_backend.errors import InputError
from vm_backend.machine.ports import is_port_busy, is_port_listening, pick_free_port


def test_picked_port_is_free_and_bindable() -> None:
    port = pick_free_port()
    assert 1024 <= port < 65536
    assert not is_port_busy(port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_listening_port_is_busy_and_listening() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert is_port_busy(port)
        assert is_port_listening(port)
    assert not is_port_listening(port)


def test_bound_but_not_listening_is_busy() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        assert is_port_busy(s.getsockname()[1])


@pytest.mark.parametrize("bad", [0, -1, 65536])
def test_out_of_range_port_is_an_input_error(bad: int) -> None:
    with pytest.raises(InputError):
        is_port_busy(bad)
