"""gunicorn settings of the production start (Procfile, deploy/*.service, docs/deployment.md).

    gunicorn -c python:gateway_site.gunicorn_conf gateway_site.asgi:application

Read by gunicorn's master before it forks the workers, from the environment:
PORT or TOLLGATE_BIND (address), WEB_CONCURRENCY (workers, default one per core),
TOLLGATE_GRACEFUL_TIMEOUT, TOLLGATE_LOG_FORMAT/TOLLGATE_LOG_LEVEL (gunicorn's
and uvicorn's own lines in the application's format), TOLLGATE_REUSE_PORT (a listening
socket per worker, default off), PROMETHEUS_MULTIPROC_DIR.
Command-line options given after `-c` override these (the tests pass -b and -w).
"""
from __future__ import annotations

import gc
import glob
import os
import shutil
import tempfile

from gateway_site.lib.env import envbool, envchoice, envint, envstr
from gateway_site.lib.logs import logging_config

worker_class = "gateway_site.workers.TollgateWorker"
bind = [envstr("TOLLGATE_BIND", f"127.0.0.1:{envstr('PORT', '8000')}")]
workers = envint("WEB_CONCURRENCY", os.cpu_count() or 1, minimum=1)
graceful_timeout = envint("TOLLGATE_GRACEFUL_TIMEOUT", 30, minimum=1)
# Keep-alive towards the reverse proxy: longer than nginx's upstream keepalive_timeout default.
keepalive = envint("TOLLGATE_KEEPALIVE_SECONDS", 75, minimum=1)
# TOLLGATE_REUSE_PORT=1: one listening socket per worker (SO_REUSEPORT; gunicorn then binds in each
# worker, not in the master), and the kernel hands each new connection to a worker by a hash of its
# addresses instead of to whichever worker accepts first. Off by default: measured with wrk's 64
# keep-alive connections on 2 workers, the hash split them 40/24 to 34/30, no more evenly than the
# shared socket did (40/24 to 32/32), with no better p99, and a busy worker's queue can no longer
# be taken by an idle one (docs/performance.md).
reuse_port = envbool("TOLLGATE_REUSE_PORT", False)
# The client address is worked out once, by the application (TOLLGATE_TRUSTED_PROXIES,
# gateway_site/lib/clientaddr.py); uvicorn must not rewrite it from X-Forwarded-For before.
forwarded_allow_ips = ""

logconfig_dict = logging_config(
    fmt=envchoice("TOLLGATE_LOG_FORMAT", "text" if envbool("DJANGO_DEBUG", False) else "json", ("json", "text")),
    level=envchoice("TOLLGATE_LOG_LEVEL", "info", ("debug", "info", "warning", "error", "critical")),
    access_log=envbool("TOLLGATE_ACCESS_LOG", False),
)

# Metrics from every worker are added up from files in one directory (prometheus-client's
# multiprocess mode). It must be set before any worker imports prometheus_client: the
# workers are forked from this process, so setting it here is enough.
_created_metrics_dir = False
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tollgate-metrics-")
    _created_metrics_dir = True


def on_starting(server) -> None:
    """Start from zero: files left by a previous run would be added to this one's counters."""
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(path, exist_ok=True)
    for name in glob.glob(os.path.join(path, "*.db")):
        os.remove(name)


def post_worker_init(worker) -> None:
    """The application is loaded: what exists now (Django, URL conf, models, settings) lives as long
    as the worker, so the garbage collector stops scanning it (gc.freeze), and it runs its young
    generation less often (a request allocates thousands of objects, nearly all freed by reference
    counting). Measured with 1,000 streams: collections had been a visible share of the CPU."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


GC_THRESHOLD = envint("TOLLGATE_GC_THRESHOLD", 20000, minimum=100)


def child_exit(server, worker) -> None:
    """A worker is gone (restart, crash): drop its live gauges (open streams, backlog)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    if _created_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
