"""Private Redis and PostgreSQL servers that a fault test may stop and start.

The machine's shared servers (5432, 6379) serve other test runs and are never
touched: each fault test starts its own on a free port, in a temporary directory.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.servers import free_port


def _wait_port(port: int, *, up: bool, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not go {'up' if up else 'down'} within {timeout}s")


class PrivateRedis:
    """redis-server on a free port, without persistence: a restart comes back empty."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _wait_port(self.port, up=True)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # as an outage looks: no goodbye to the clients
            self.process.wait(timeout=10)
        _wait_port(self.port, up=False)


@contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or ([shutil.which(name)] if shutil.which(name)
                                                                       else [])
    return found[-1] if found else None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on a free port (run as the postgres user when we are root)."""

    def __init__(self, root: Path) -> None:
        self.initdb, self.postgres = _pg_bin("initdb"), _pg_bin("postgres")
        if not self.initdb or not self.postgres:
            pytest.skip("PostgreSQL server binaries (initdb, postgres) are not installed")
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/tollgate"
        self.process: subprocess.Popen | None = None
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                pytest.skip("running as root without runuser: cannot start PostgreSQL")
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(root, "postgres", "postgres")

    def init(self) -> None:
        subprocess.run([*self.as_user, self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust",
                        "--no-sync", "-E", "UTF8"], check=True, capture_output=True)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*self.as_user, self.postgres, "-D", str(self.data), "-p", str(self.port), "-h", "127.0.0.1",
             "-k", str(self.root), "-c", "fsync=off", "-c", "max_connections=50"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _wait_port(self.port, up=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the port opens before it accepts logins
            import psycopg

            try:
                psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres").close()
                return
            except psycopg.OperationalError:
                time.sleep(0.1)
        raise RuntimeError("private PostgreSQL did not accept connections")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # SIGINT: "fast" shutdown, clients are disconnected at once (as a crash or failover looks).
            os.killpg(self.process.pid, 2)
            self.process.wait(timeout=20)
        _wait_port(self.port, up=False)


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    with tempfile.TemporaryDirectory(prefix="tg-pg-", dir="/tmp") as root:
        server = PrivatePostgres(Path(root))
        server.init()
        server.start()
        try:
            import psycopg

            with psycopg.connect(f"host=127.0.0.1 port={server.port} user=postgres dbname=postgres",
                                 autocommit=True) as conn:
                conn.execute("CREATE DATABASE tollgate")
            yield server
        finally:
            server.stop()
