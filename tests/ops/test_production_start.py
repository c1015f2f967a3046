"""The documented production start (Procfile, systemd units, docs) is what the end-to-end tests run."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

from tests.servers import ROOT, gateway_command, gateway_test_overrides, procfile_command


def test_the_e2e_gateway_is_the_procfile_web_command():
    web = procfile_command("web")
    command = gateway_command(8123, workers=2)
    assert web[0] == "gunicorn"
    assert command[:3] == [sys.executable, "-m", "gunicorn"]
    # Everything the Procfile says, in order, then only the test's address, workers and shutdown.
    assert command[3:] == [*web[1:], *gateway_test_overrides(8123, 2)]
    assert "--config" in web and "python:gateway_site.gunicorn_conf" in web


def _unit_exec(name: str) -> list[str]:
    for line in (ROOT / "deploy" / "systemd" / name).read_text().splitlines():
        if line.startswith("ExecStart="):
            args = shlex.split(line.removeprefix("ExecStart="))
            args[0] = os.path.basename(args[0])  # /opt/tollgate/.venv/bin/gunicorn -> gunicorn
            return args
    raise AssertionError(f"{name} has no ExecStart")


def test_the_systemd_units_run_the_procfile_commands():
    assert _unit_exec("tollgate-web.service") == procfile_command("web")
    assert _unit_exec("tollgate-worker.service") == procfile_command("worker")
    assert _unit_exec("tollgate-beat.service") == procfile_command("beat")


def test_the_deployment_guide_gives_the_same_commands():
    guide = (ROOT / "docs" / "deployment.md").read_text()
    for process in ("web", "worker", "beat"):
        assert shlex.join(procfile_command(process)) in guide, process


def test_the_gunicorn_config_uses_uvicorn_workers_and_leaves_forwarded_addresses_to_the_app(tmp_path):
    # In a child process: loading the config sets PROMETHEUS_MULTIPROC_DIR, which must not leak into this one.
    code = ("from gateway_site import gunicorn_conf as c; "
            "print(c.worker_class, repr(c.forwarded_allow_ips), c.bind, c.workers, c._created_metrics_dir)")
    env = {**os.environ, "PORT": "9001", "WEB_CONCURRENCY": "3", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["gateway_site.workers.TollgateWorker", "''", "['127.0.0.1:9001']", "3", "False"]


def test_a_dead_worker_leaves_no_live_gauge(tmp_path):
    code = (
        "import os\n"
        "from types import SimpleNamespace\n"
        "from prometheus_client import Gauge, Counter\n"
        "g = Gauge('g', 'g', multiprocess_mode='livesum'); g.set(3)\n"
        "c = Counter('c', 'c'); c.inc()\n"
        "from gateway_site import gunicorn_conf\n"
        "gunicorn_conf.child_exit(None, SimpleNamespace(pid=os.getpid()))\n"
        "print(sorted(n.split('_')[0] for n in os.listdir(os.environ['PROMETHEUS_MULTIPROC_DIR'])))\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    # The counter survives (a dead worker's requests still happened); its live gauge is gone.
    assert out.stdout.strip() == "['counter']"


def test_a_worker_freezes_its_startup_objects_and_collects_less_often(tmp_path):
    code = (
        "import gc\n"
        "from gateway_site import gunicorn_conf\n"
        "gunicorn_conf.post_worker_init(None)\n"
        "print(gc.get_threshold()[0], gc.get_freeze_count() > 1000)\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "TOLLGATE_GC_THRESHOLD": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["12345", "True"]
    # uvicorn's proxy-headers layer is off: client addresses are the app's (TOLLGATE_TRUSTED_PROXIES).
    from gateway_site.workers import TollgateWorker

    assert TollgateWorker.CONFIG_KWARGS["proxy_headers"] is False
