"""Start real servers for tests: the sandbox provider and the gateway, on free local ports."""
from __future__ import annotations

import itertools
import os
import shlex
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, *, timeout: float = 30.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up within {timeout}s: {last}")


@contextmanager
def sandbox_in_thread(**knobs) -> Iterator[str]:
    """The sandbox provider in this process; yields its base URL (no /v1)."""
    import uvicorn

    from proxy.sandbox import SandboxConfig, make_app

    port = free_port()
    config = uvicorn.Config(make_app(SandboxConfig(**knobs)), host="127.0.0.1", port=port,
                            log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until_up(f"http://127.0.0.1:{port}/_sandbox/health")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def database_url_for(settings_dict: dict) -> str:
    """A DATABASE_URL naming the database this test run uses (the test database)."""
    if settings_dict["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    user = settings_dict.get("USER") or ""
    password = settings_dict.get("PASSWORD") or ""
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or "5432"
    return f"postgres://{auth}{host}:{port}/{settings_dict['NAME']}"


# --- A database of its own ------------------------------------------------------------------
# A server started by a test commits rows outside any test transaction (its seed, audit events
# and chain heads, usage): the tests that ran next found them (tests/audit after tests/faults
# failed on 235 events where it wrote 200). So the tests that start servers run on a copy of the
# migrated test database, made when the session's test database is (its template), and dropped
# afterwards. On PostgreSQL a copy is `CREATE DATABASE ... TEMPLATE`, a file copy inside the
# server (tens of milliseconds for our few tables, no migration run); on SQLite, the backup API.
# The template is never connected to, which PostgreSQL requires of a template.

_copies = itertools.count(1)


def _is_sqlite(settings_dict: dict) -> bool:
    return settings_dict["ENGINE"].endswith("sqlite3")


def _postgres_admin(settings_dict: dict):
    import psycopg

    return psycopg.connect(host=settings_dict.get("HOST") or "127.0.0.1", port=settings_dict.get("PORT") or 5432,
                           user=settings_dict.get("USER") or None, password=settings_dict.get("PASSWORD") or None,
                           dbname="postgres", autocommit=True)


def database_template_name(settings_dict: dict) -> str:
    name = settings_dict["NAME"]
    if _is_sqlite(settings_dict):
        path = Path(name)
        return str(path.with_name(f"{path.stem}-template{path.suffix}"))
    return f"{name}_template"


def database_copy(settings_dict: dict, source: str, target: str) -> None:
    """Make `target` a copy of the database `source`, which nobody may be writing to."""
    if _is_sqlite(settings_dict):
        with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
            src.backup(dst)
        return
    from psycopg import sql

    with _postgres_admin(settings_dict) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target)))
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(target),
                                                                       sql.Identifier(source)))


def database_drop(settings_dict: dict, name: str) -> None:
    if _is_sqlite(settings_dict):
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{name}{suffix}").unlink(missing_ok=True)
        return
    from psycopg import sql

    with _postgres_admin(settings_dict) as admin:
        # FORCE: a server's or a thread's connection that outlived the test must not keep it.
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def close_database_connections() -> None:
    """Close this process's connections, and its pool (which other threads' connections return to)."""
    from django.db import connections

    for connection in connections.all():
        connection.close()
        if connection.alias in getattr(connection, "_connection_pools", {}):
            connection.close_pool()


@contextmanager
def database_switched(name: str) -> Iterator[str]:
    """This process's default database is `name` until the end of the block; yields its DATABASE_URL."""
    from django.conf import settings
    from django.db import connection

    original = connection.settings_dict["NAME"]
    close_database_connections()
    connection.settings_dict["NAME"] = settings.DATABASES[connection.alias]["NAME"] = name
    try:
        yield database_url_for(connection.settings_dict)
    finally:
        close_database_connections()
        connection.settings_dict["NAME"] = settings.DATABASES[connection.alias]["NAME"] = original


@contextmanager
def database_of_its_own() -> Iterator[str]:
    """A fresh copy of the migrated test database, this process's default database until the end
    of the block (the servers started in it are given its DATABASE_URL); dropped afterwards."""
    from django.db import connection

    settings_dict = connection.settings_dict
    name = settings_dict["NAME"]
    if _is_sqlite(settings_dict):
        path = Path(name)
        copy = str(path.with_name(f"{path.stem}-{next(_copies)}{path.suffix}"))
    else:
        copy = f"{name}_{next(_copies)}"
    database_copy(settings_dict, database_template_name(settings_dict), copy)
    try:
        with database_switched(copy) as url:
            yield url
    finally:
        database_drop(settings_dict, copy)


def server_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.setdefault("DJANGO_SECRET_KEY", "e2e-test-secret-key-not-for-production")
    env.update(overrides)
    return env


@contextmanager
def subprocess_server(args: list[str], *, health_url: str, env: dict[str, str],
                      timeout: float = 60.0, log_name: str = "server") -> Iterator[subprocess.Popen]:
    log_dir = ROOT / "var" / "test-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{log_name}-{os.getpid()}-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            try:
                wait_until_up(health_url, timeout=timeout, process=process)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}\n--- {log_path} ---\n{log_path.read_text()[-4000:]}") from None
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
    process.log_path = log_path  # type: ignore[attr-defined]


def sandbox_command(port: int, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), "sandbox_provider", "--host", "127.0.0.1",
            "--port", str(port), *extra]


def procfile_command(process: str) -> list[str]:
    """A process's command line in the repository's Procfile (the documented production start)."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and not name.startswith("#") and name.strip() == process:
            return shlex.split(command)
    raise LookupError(f"Procfile has no {process!r} process")


# What a test changes in the Procfile's web command: where it listens, how many workers, and a
# short shutdown. Options after the config file override it (tests/ops/test_production_start.py).
def gateway_test_overrides(port: int, workers: int) -> list[str]:
    return ["-b", f"127.0.0.1:{port}", "-w", str(workers), "--graceful-timeout", "5"]


def gateway_command(port: int, workers: int = 2) -> list[str]:
    """The production start: the Procfile's `web` command (docs/deployment.md), on a free port."""
    program, *args = procfile_command("web")
    # This virtualenv's gunicorn, whatever is on PATH.
    return [sys.executable, "-m", program, *args, *gateway_test_overrides(port, workers)]


@contextmanager
def sandbox_and_gateway(*, env: dict[str, str], sandbox_port: int | None = None, workers: int = 2,
                        upstream_key: str | None = None, log_name: str = "") -> Iterator[SimpleNamespace]:
    """The sandbox provider (`manage.py sandbox_provider`; requiring `upstream_key` when given) and
    the production start (the Procfile's web command), each on a free port, with `env`."""
    sandbox_port = sandbox_port or free_port()
    gateway_port = free_port()
    require_key = ("--require-key", upstream_key) if upstream_key else ()
    with subprocess_server(sandbox_command(sandbox_port, *require_key),
                           health_url=f"http://127.0.0.1:{sandbox_port}/_sandbox/health",
                           env=env, log_name=f"{log_name}sandbox"), \
         subprocess_server(gateway_command(gateway_port, workers),
                           health_url=f"http://127.0.0.1:{gateway_port}/healthz",
                           env=env, log_name=f"{log_name}gateway") as process:
        yield SimpleNamespace(url=f"http://127.0.0.1:{gateway_port}", port=gateway_port,
                              sandbox_url=f"http://127.0.0.1:{sandbox_port}", sandbox_port=sandbox_port,
                              process=process, env=env)


@contextmanager
def celery_worker(env: dict[str, str], *, timeout: float = 60.0) -> Iterator[subprocess.Popen]:
    """A real Celery worker on this run's queue (TOLLGATE_CELERY_QUEUE in env), stopped afterwards."""
    queue = env.get("TOLLGATE_CELERY_QUEUE") or os.environ["TOLLGATE_CELERY_QUEUE"]
    env = {**env, "TOLLGATE_CELERY_QUEUE": queue}
    log_dir = ROOT / "var" / "test-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"celery-{os.getpid()}-{time.monotonic_ns()}.log"
    args = [sys.executable, "-m", "celery", "-A", "gateway_site", "worker", "--pool", "solo",
            "--loglevel", "info", "-Q", queue, "-n", f"{queue}@%h", "--without-gossip", "--without-mingle"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while b" ready." not in log_path.read_bytes():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"celery worker did not start:\n{log_path.read_text()[-4000:]}")
                time.sleep(0.2)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
