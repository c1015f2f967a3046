"""SO_REUSEPORT: each gunicorn worker listens on a socket of its own (gateway_site/gunicorn_conf.py),
so the kernel spreads keep-alive connections over the workers (docs/performance.md)."""
from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.servers import free_port, gateway_command, server_env, subprocess_server


def _listening_sockets(port: int) -> int:
    """Sockets listening on `port` on this machine, from /proc/net/tcp (state 0A: LISTEN)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                count += 1
    return count


@pytest.mark.parametrize(("reuse_port", "expected"), [("1", 2), ("0", 1)])
def test_each_worker_listens_on_a_socket_of_its_own(reuse_port, expected):
    port = free_port()
    env = server_env(TOLLGATE_REUSE_PORT=reuse_port)
    with subprocess_server(gateway_command(port, workers=2), health_url=f"http://127.0.0.1:{port}/healthz",
                           env=env, log_name="reuse-port"):
        # Every connection is answered, whichever socket the kernel put it on.
        for _ in range(20):
            with httpx.Client() as client:
                assert client.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        # One per worker with SO_REUSEPORT; else the one the master opened and shares.
        assert _listening_sockets(port) == expected
