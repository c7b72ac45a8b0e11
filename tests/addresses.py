"""Loopback addresses for tests that run a stream server."""

from __future__ import annotations

import random
import socket


def free_address() -> str:
    """A loopback address that is free, on a port below the ephemeral range.

    Not port 0's choice: that range is where other processes' servers (bound to
    port 0) and every outgoing connection get their ports, so a stale client
    elsewhere could connect to our server, or a worker that starts before the
    server could connect to itself.
    """
    for port in random.sample(range(20_000, 32_000), 100):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return f"tcp://127.0.0.1:{port}"
    raise RuntimeError("no free loopback port between 20000 and 32000")
