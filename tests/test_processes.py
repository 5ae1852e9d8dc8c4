"""keyrelay_stack.processes: what the stack, the bench and the tests share to start processes."""

from __future__ import annotations

import socket

from keyrelay_stack.processes import free_port


def test_free_port_never_hands_out_a_port_twice():
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    for port in ports[-3:]:  # free when handed out
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
