"""The README's first command, as a new user runs it: embedded SQLite, no Redis, no provider key."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.servers import ROOT, free_port

pytestmark = pytest.mark.e2e


def _read_banner(process: subprocess.Popen, deadline: float) -> str:
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                break
            continue
        lines.append(line)
        if line.startswith("Press Ctrl-C"):
            return "".join(lines)
    raise AssertionError("quickstart printed no banner:\n" + "".join(lines))


def test_quickstart_serves_the_printed_examples(tmp_path: Path):
    port, sandbox_port = free_port(), free_port()
    # A new user's shell: none of this test run's settings (DJANGO_SETTINGS_MODULE would be
    # tests.settings, and the README's command runs gateway_site.settings).
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SECRET_KEY", "DJANGO_DEBUG", "CELERY_BROKER_URL",
                        "DJANGO_SETTINGS_MODULE")
           and not k.startswith(("PYTEST", "TOLLGATE_"))}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'quickstart.sqlite3'}"
    env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen(
        [sys.executable, "manage.py", "quickstart", "--port", str(port), "--sandbox-port", str(sandbox_port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )
    try:
        banner = _read_banner(process, time.monotonic() + 90)
        assert re.search(r"user: admin\s+password: \S+", banner)
        key = re.search(r"\b(tg-[A-Za-z0-9_-]{20,})", banner).group(1)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the gateway did not start"
                time.sleep(0.2)

        curl = banner[banner.index("  curl "):banner.index("\n\n", banner.index("  curl "))]
        # Run the examples exactly as printed; `python3` is this test run's interpreter.
        shell_env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"}
        result = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30,
                                env=shell_env)
        assert result.returncode == 0, result.stderr
        assert '"chat.completion"' in result.stdout

        start = banner.index("  python3 -c '")
        python_example = banner[start:banner.index("\n'\n", start) + 2]
        result = subprocess.run(["bash", "-c", python_example], capture_output=True, text=True, timeout=30,
                                env=shell_env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip()
        assert key not in result.stdout

        # Stopped as a service manager stops it (SIGTERM), quickstart stops its sandbox too.
        process.terminate()
        process.wait(timeout=20)
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{sandbox_port}/_sandbox/health", timeout=1)
            except httpx.HTTPError:
                break
            assert time.monotonic() < deadline, "quickstart left its sandbox provider running"
            time.sleep(0.2)
    finally:
        # Whatever is left of the process group (its own session), whatever failed above.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
