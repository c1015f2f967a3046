"""Three gateway nodes behind nginx (issue #18), for tests/scale and tests/benchmarks/three_nodes.py.

Each node is the production start (the Procfile's web command: a gunicorn master and its uvicorn
workers) on a free 127.0.0.1 port, in a process group of its own so that it can be killed whole
(SIGKILL on the master and the workers at once, as an OOM kill or a lost machine would). nginx,
Debian's package, runs as a child of this process with its own configuration in a temporary
directory (the one documented in docs/deployment.md, "Three nodes behind a load balancer"). All
nodes share one PostgreSQL database and one Redis; how they reach Redis is their environment only
(`redis_topology_env`), so the same nodes can run on a Redis Cluster once the settings speak it.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import httpx

from tests.servers import ROOT, free_port, gateway_command, sandbox_command, subprocess_server, wait_until_up

UPSTREAM_KEY = "sk-nodes-upstream-credential"
METRICS_TOKEN = "nodes-metrics-token-0123456789"
PROMPT = "Three nodes, one budget: count every token. " * 4
# What each node gets beyond the shared database and Redis. The probing defence is raised: the
# revocation check sends a revoked key to every node hundreds of times from one address, which
# would otherwise be slowed down and then blocked (docs/reliability.md, Probing).
NODE_SETTINGS = {
    "TOLLGATE_PROVIDER_NODES_UPSTREAM_KEY": UPSTREAM_KEY,
    "TOLLGATE_METRICS_TOKEN": METRICS_TOKEN,
    "TOLLGATE_TRUSTED_PROXIES": "127.0.0.1/32",
    "TOLLGATE_LOG_LEVEL": "warning",
    # Each worker rereads the key cache's shared generation this often (the production default).
    "TOLLGATE_AUTH_RECHECK_SECONDS": "1",
    "TOLLGATE_BREAKER_FAILURES": "3",
    "TOLLGATE_BREAKER_COOLDOWN_SECONDS": "120",
    "TOLLGATE_PROBE_SLOW_AFTER": "1000000",
    "TOLLGATE_PROBE_BLOCK_AFTER": "1000000",
}

# --- nginx --------------------------------------------------------------------------------------

NGINX_CONFIG = """\
# Tollgate behind nginx: {count} gateway nodes, any of which can serve any request.
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}

http {{
    # The request id, status and seconds, then the node(s) tried ("a, b" after a retry).
    log_format nodes '$upstream_http_x_request_id $status $request_time $upstream_addr';
    access_log {prefix}/access.log nodes;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    upstream tollgate {{
        # Round robin; no sticky sessions: every node reads the same database and Redis.
        # A node that refuses connections is left out for fail_timeout after max_fails errors.
{servers}
        keepalive 64;
    }}

    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 8m;         # the gateway's own limit, TOLLGATE_MAX_BODY_BYTES
        client_body_buffer_size 1m;      # request bodies in memory: a retry can resend them

        location / {{
            proxy_pass http://tollgate;
            proxy_http_version 1.1;          # keep-alive to the nodes
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_buffering off;             # streams reach the client chunk by chunk
            proxy_read_timeout 600s;         # long streams
            # Try the next node when one cannot be reached. nginx never resends a POST that a
            # node may have received (no non_idempotent): the client sees the error instead.
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 3;
            proxy_connect_timeout 2s;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def nginx_config(*, port: int, upstreams: list[int], prefix: Path) -> str:
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;" for p in upstreams)
    return NGINX_CONFIG.format(count=len(upstreams), prefix=prefix, servers=servers, port=port)


@contextmanager
def nginx(upstreams: list[int], *, binary: str, timeout: float = 30.0) -> Iterator[SimpleNamespace]:
    """nginx in front of `upstreams`, on a free port, as this process's child; stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="tollgate-nginx-") as tmp:
        prefix = Path(tmp)
        # Run as root, nginx's workers switch to nobody: they must reach their temporary files.
        prefix.chmod(0o755)
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / name).mkdir()
            (prefix / name).chmod(0o777)
        port = free_port()
        config = prefix / "nginx.conf"
        config.write_text(nginx_config(port=port, upstreams=upstreams, prefix=prefix))
        # -e: the error log before the configuration is read (not /var/log/nginx); -p: the prefix.
        args = [binary, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(config), "-g", "daemon off;"]
        with open(prefix / "nginx.out", "wb") as out:
            process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            try:
                wait_until_up(f"http://127.0.0.1:{port}/healthz", timeout=timeout, process=process)
            except RuntimeError as exc:
                logs = "".join(p.read_text() for p in (prefix / "nginx.out", prefix / "error.log") if p.exists())
                raise RuntimeError(f"{exc}\n--- nginx ---\n{logs[-4000:]}") from None
            yield SimpleNamespace(url=f"http://127.0.0.1:{port}", port=port, process=process, config=config,
                                  access_log=prefix / "access.log")
        finally:
            _stop_group(process, timeout=10)


def _stop_group(process: subprocess.Popen, *, timeout: float) -> None:
    """SIGTERM the process, then SIGKILL its whole group (its workers included) if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is left (orphaned workers)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def access_log(path: Path) -> list[tuple[str, int, str]]:
    """nginx's access log: (request id or "-", status, the node that answered: host:port)."""
    entries = []
    for line in path.read_text().splitlines():
        request_id, status, _seconds, upstreams = line.split(" ", 3)
        # After a retry nginx names every node it tried; the last one answered.
        entries.append((request_id, int(status), upstreams.split(",")[-1].strip()))
    return entries


def access_log_nodes(path: Path) -> dict[str, str]:
    """Request id -> the node (host:port) that answered it."""
    return {rid: node for rid, _status, node in access_log(path) if rid != "-"}


def wait_balanced_to(balancer: SimpleNamespace, node: Node, *, timeout: float = 30.0) -> None:
    """Until nginx sends requests to `node` again (after a restart: it left it out for fail_timeout)."""
    address = f"127.0.0.1:{node.port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = len(access_log(balancer.access_log))
        httpx.get(f"{balancer.url}/healthz", timeout=10)
        if any(n == address and status == 200 for _rid, status, n in access_log(balancer.access_log)[seen:]):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nginx did not send requests to {node.name} within {timeout}s")


# --- Gateway nodes ------------------------------------------------------------------------------


def redis_topology_env(redis_url: str) -> dict[str, str]:
    """How the nodes reach one plain Redis, as environment. On a Redis Cluster they get the
    cluster's instead (tests/redis_cluster.py, nodes_env), the nodes and the checks unchanged."""
    return {"REDIS_URL": redis_url}


def process_group(pgid: int) -> list[int]:
    """The live processes of a process group (a node's master and workers), from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


@dataclass
class Node:
    """One gateway node: a gunicorn master and its workers in a process group of their own."""

    name: str
    port: int
    workers: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(gateway_command(self.port, self.workers), cwd=ROOT, env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_up(self, timeout: float = 90.0) -> None:
        """Until the node answers /healthz and has forked all its workers."""
        deadline = time.monotonic() + timeout
        try:
            wait_until_up(f"{self.url}/healthz", timeout=timeout, process=self.process)
            while len(self.pids()) < self.workers + 1 and time.monotonic() < deadline:
                time.sleep(0.1)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n--- {self.log_path} ---\n{self.log_path.read_text()[-4000:]}") from None

    def pids(self) -> list[int]:
        return process_group(self.process.pid) if self.process is not None else []

    def kill(self) -> list[int]:
        """SIGKILL the master and its workers at once; the pids killed."""
        assert self.process is not None
        pids = self.pids()
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        return pids

    def stop(self) -> None:
        if self.process is not None:
            _stop_group(self.process, timeout=15)

    def restart(self) -> None:
        self.stop()
        self.start()
        self.wait_up()


@contextmanager
def gateway_nodes(env: dict[str, str], *, count: int = 3, workers: int = 2) -> Iterator[list[Node]]:
    """`count` nodes with `env`, started together (their start-up overlaps) and stopped at the end,
    whatever happened. Each has its own metrics directory: /metrics counts that node's requests."""
    log_dir = ROOT / "var" / "test-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tollgate-nodes-") as tmp:
        nodes = []
        for i in range(1, count + 1):
            metrics_dir = Path(tmp) / f"metrics-{i}"
            metrics_dir.mkdir()
            node_env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
            nodes.append(Node(name=f"node{i}", port=free_port(), workers=workers, env=node_env,
                              log_path=log_dir / f"node{i}-{os.getpid()}-{time.monotonic_ns()}.log"))
        try:
            for node in nodes:
                node.start()
            for node in nodes:
                node.wait_up()
            yield nodes
        finally:
            for node in nodes:
                if node.process is not None and node.process.poll() is None:
                    node.process.terminate()  # all at once: their graceful stops overlap
            for node in nodes:
                node.stop()


@contextmanager
def sandbox(env: dict[str, str], port: int) -> Iterator[str]:
    """The sandbox provider (`manage.py sandbox_provider`, requiring UPSTREAM_KEY); yields its URL."""
    with subprocess_server(sandbox_command(port, "--require-key", UPSTREAM_KEY, "--log-level", "warning"),
                           health_url=f"http://127.0.0.1:{port}/_sandbox/health", env=env,
                           log_name="nodes-sandbox"):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def three_nodes(env: dict[str, str], *, sandbox_port: int, nginx_bin: str, workers: int = 2,
                count: int = 3) -> Iterator[SimpleNamespace]:
    """The sandbox, `count` nodes and nginx in front of them; everything stopped at the end."""
    env = {**env, **NODE_SETTINGS}
    # Each node's gunicorn makes its own metrics directory (gateway_nodes), never a shared one.
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with ExitStack() as stack:
        sandbox_url = stack.enter_context(sandbox(env, sandbox_port))
        nodes = stack.enter_context(gateway_nodes(env, count=count, workers=workers))
        balancer = stack.enter_context(nginx([n.port for n in nodes], binary=nginx_bin))
        yield SimpleNamespace(url=balancer.url, nginx=balancer, nodes=nodes, sandbox_url=sandbox_url, env=env)


def redis_forget(redis_url: str, prefix: str) -> None:
    """Delete the nodes' keys (their cache prefix) from Redis."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start:start + 1000])
    finally:
        client.close()


# --- Seed ---------------------------------------------------------------------------------------


def seed_nodes(sandbox_port: int, *, budget_limit: int) -> SimpleNamespace:
    """What the nodes serve: a route to the sandbox, one whose first deployment fails (HTTP 500,
    no Retry-After: counted by the breaker), a consumer per check, an admin with an API token."""
    from django.contrib.auth import get_user_model

    from budgets.keys import key_issue
    from budgets.models import Budget, Consumer
    from gateway_site.auth_tokens import token_issue
    from proxy.models import Deployment, ModelRoute, Provider

    base_url = f"http://127.0.0.1:{sandbox_port}/v1"
    env_name = "TOLLGATE_PROVIDER_NODES_UPSTREAM_KEY"
    healthy = Provider.objects.create(name="nodes-sandbox", kind="sandbox", base_url=base_url, api_key_env=env_name)
    slow = Provider.objects.create(name="nodes-slow", kind="sandbox", base_url=base_url, api_key_env=env_name,
                                   extra_headers={"x-sandbox-latency-ms": "100"})
    failing = Provider.objects.create(name="nodes-failing", kind="sandbox", base_url=base_url, api_key_env=env_name,
                                      extra_headers={"x-sandbox-fail-status": "500"})
    demo = ModelRoute.objects.create(model="nodes-demo")
    Deployment.objects.create(route=demo, provider=healthy, upstream_model="sandbox-model")
    budgeted = ModelRoute.objects.create(model="nodes-budget")
    Deployment.objects.create(route=budgeted, provider=slow, upstream_model="sandbox-model")
    breaker = ModelRoute.objects.create(model="nodes-breaker")
    Deployment.objects.create(route=breaker, provider=failing, upstream_model="sandbox-failing", priority=0)
    Deployment.objects.create(route=breaker, provider=healthy, upstream_model="sandbox-model", priority=1)

    keys = {}
    for name in ("load", "budget", "metrics", "breaker", "revoke"):
        consumer = Consumer.objects.create(name=f"nodes-{name}")
        keys[name] = key_issue(consumer=consumer, name=name).plaintext
        if name == "budget":
            Budget.objects.create(consumer=consumer, metric="tokens", limit=budget_limit, period="day", mode="hard")
    admin = get_user_model().objects.create_user("nodes-admin", "nodes@example.com", "nodes-password-1",
                                                 is_staff=True, is_superuser=True)
    return SimpleNamespace(keys=SimpleNamespace(**keys), api_token=token_issue(user=admin).plaintext,
                           revoke_consumer=Consumer.objects.get(name="nodes-revoke").pk,
                           budget_limit=budget_limit)


def chat_body(model: str, *, max_tokens: int = 5, stream: bool = False) -> dict:
    body: dict = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
    return body


# --- Clients ------------------------------------------------------------------------------------


async def fire(url: str, key: str, bodies: list[dict]) -> list[httpx.Response]:
    """All `bodies` at once, each on a connection of its own; the responses read whole."""
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def one(body: dict) -> httpx.Response:
            response = await client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
            await response.aread()
            return response

        return list(await asyncio.gather(*(one(body) for body in bodies)))


def chat(url: str, key: str, model: str = "nodes-demo", **body) -> httpx.Response:
    """One request on a fresh connection (so a node's workers share them as the kernel deals them)."""
    return httpx.post(f"{url}/v1/chat/completions", json={**chat_body(model), **body},
                      headers={"Authorization": f"Bearer {key}"}, timeout=30)


def issue_key(url: str, token: str, consumer: int) -> dict:
    """A key issued through the admin REST API (as an operator would)."""
    response = httpx.post(f"{url}/api/admin/keys/", json={"consumer": consumer, "name": "revocable"},
                          headers={"Authorization": f"Token {token}"}, timeout=30)
    response.raise_for_status()
    return response.json()


def revoke_key(url: str, token: str, key_id: int) -> None:
    response = httpx.post(f"{url}/api/admin/keys/{key_id}/revoke", headers={"Authorization": f"Token {token}"},
                          timeout=30)
    response.raise_for_status()


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`, in a Prometheus text page."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def scrape(node_url: str) -> str:
    response = httpx.get(f"{node_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=30)
    response.raise_for_status()
    return response.text
