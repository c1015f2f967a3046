"""A real Redis Cluster for tests: 3 masters and 3 replicas of redis-server on 127.0.0.1 (issue #18).

    handle = start_cluster(tmp_path, base_port=7100)   # ports base..base+5 and their bus ports +10000
    env.update(handle.nodes_env())                     # what a gateway process needs to use it
    handle.failover(0)                                 # kill -9 the first master, wait for its replica
    handle.stop()

In a pytest module: `from tests.redis_cluster import redis_cluster  # noqa: F401` gives the
module-scoped `redis_cluster` fixture (a free block of ports in 7100-7199).

Nothing is persisted (no RDB, no AOF): a killed node is gone with its data, as the worst case of
a failover looks. `cluster-node-timeout` is 1 s, so a dead master is replaced within a few seconds.
Every process is started in a session of its own and stopped by its pid in stop(); the cluster
never touches the machine's shared Redis.
"""
from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

NODE_TIMEOUT_MS = 1000
MASTERS = 3


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As redis-server binds: a port whose old connections wait in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _wait(predicate, *, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(interval)
    raise RuntimeError(f"{what} not within {timeout}s (last error: {last})")


def _client(port: int, *, timeout: float = 1.0) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=timeout, socket_connect_timeout=1,
                       decode_responses=True)


@dataclass
class ClusterHandle:
    directory: Path
    ports: list[int]
    processes: dict[int, subprocess.Popen] = field(default_factory=dict)

    # --- what tests use ------------------------------------------------------------------

    @property
    def startup_nodes(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def nodes_env(self, *, celery_broker_url: str | None = None) -> dict[str, str]:
        """The environment a gateway process needs to keep its shared state on this cluster. Celery
        cannot use a cluster as its broker: tasks run in the calling process unless a broker is named
        (RabbitMQ, amqp://guest@127.0.0.1:5672//, or a plain Redis)."""
        env = {"TOLLGATE_REDIS_CLUSTER_NODES": self.startup_nodes, "REDIS_URL": ""}
        if celery_broker_url:
            env.update(CELERY_BROKER_URL=celery_broker_url, CELERY_TASK_ALWAYS_EAGER="0")
        else:
            env.update(CELERY_TASK_ALWAYS_EAGER="1")
        return env

    def client(self) -> redis.RedisCluster:
        """A sync cluster client (decoded strings); close it when done."""
        return redis.RedisCluster(host="127.0.0.1", port=self.alive()[0], decode_responses=True,
                                  socket_timeout=2, socket_connect_timeout=2)

    def alive(self) -> list[int]:
        return [port for port, process in self.processes.items() if process.poll() is None]

    def _nodes(self) -> dict[str, dict]:
        # CLUSTER NODES, not CLUSTER SLOTS: Redis 7.0 leaves replicas without data out of the latter.
        return _client(self.alive()[0]).cluster("nodes")

    def masters(self) -> list[int]:
        """The ports of the masters that serve slots, ordered by their first slot."""
        ranges = [(int(node["slots"][0][0]), int(address.rsplit(":", 1)[1]))
                  for address, node in self._nodes().items()
                  if "master" in node["flags"] and "fail" not in node["flags"] and node["slots"]]
        return [port for _start, port in sorted(ranges)]

    def replica_of(self, master_port: int) -> int:
        nodes = self._nodes()
        master_id = nodes[f"127.0.0.1:{master_port}"]["node_id"]
        for address, node in nodes.items():
            if node["master_id"] == master_id and "fail" not in node["flags"]:
                return int(address.rsplit(":", 1)[1])
        raise LookupError(f"{master_port} has no replica")

    def master_of_key(self, key: str) -> int:
        slot = self.keyslot(key)
        for address, node in self._nodes().items():
            if "master" in node["flags"] and "fail" not in node["flags"] and any(
                    int(r[0]) <= slot <= int(r[-1]) for r in node["slots"]):
                return int(address.rsplit(":", 1)[1])
        raise LookupError(f"slot {slot} is not served")

    def keyslot(self, key: str) -> int:
        return int(_client(self.alive()[0]).execute_command("CLUSTER KEYSLOT", key))

    def failover(self, master_index: int, *, kill: bool = True, unreplicated_seconds: float = 0.0,
                 timeout: float = 20.0) -> int:
        """Make the master serving the `master_index`-th slot range fail over to its replica; returns
        the promoted replica's port once every live node reports cluster_state:ok again.

        kill=True: SIGKILL the master (acknowledged writes not yet replicated are lost, as in a
        crash). unreplicated_seconds: first cut the replica's link for that long, so that everything
        the master acknowledges meanwhile is lost with it: a replication lag as long as that.
        kill=False: a manual `CLUSTER FAILOVER` on the replica (no loss, no outage)."""
        master = self.masters()[master_index]
        replica = self.replica_of(master)
        if kill:
            if unreplicated_seconds > 0:
                # Stopped, the replica cannot reconnect once the master drops its link: the writes
                # the master acknowledges from then on never reach it.
                self.processes[replica].send_signal(signal.SIGSTOP)
                _client(master).client_kill_filter(_type="replica")
                time.sleep(unreplicated_seconds)
            self.kill(master)
            self.processes[replica].send_signal(signal.SIGCONT)
        else:
            _client(replica).execute_command("CLUSTER FAILOVER")
        _wait(lambda: _client(replica).info("replication")["role"] == "master", timeout=timeout,
              what=f"replica {replica} promoted")
        self.wait_ok(timeout=timeout)
        return replica

    def kill(self, port: int) -> None:
        process = self.processes[port]
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)

    def restart(self, port: int) -> None:
        """Start a killed node again (it rejoins from its nodes.conf, as a replica if it was replaced)."""
        self._spawn(port)
        _wait(lambda: _client(port).ping(), timeout=10, what=f"node {port} up")

    def wait_ok(self, *, timeout: float = 20.0) -> None:
        """Until every live node says cluster_state:ok and agrees on who serves every slot."""
        def ok() -> bool:
            views = set()
            for port in self.alive():
                client = _client(port)
                if client.cluster("info")["cluster_state"] != "ok":
                    return False
                views.add(tuple(sorted((int(s), int(e), int(m[1]))
                                       for s, e, m, *_ in client.execute_command("CLUSTER SLOTS"))))
            return len(views) == 1
        _wait(ok, timeout=timeout, what="cluster_state:ok on every node")

    def stop(self) -> None:
        for port in list(self.processes):
            self.kill(port)
        self.processes.clear()

    # --- start ---------------------------------------------------------------------------

    def _spawn(self, port: int) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        node_dir = self.directory / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        log = open(node_dir / "redis.log", "ab")  # the child keeps its own descriptor
        self.processes[port] = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "no",
             "--dir", str(node_dir), "--save", "", "--appendonly", "no", "--daemonize", "no",
             "--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / "nodes.conf"),
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
             # A replica may always take over, however long its link was down (tests kill nodes).
             "--cluster-replica-validity-factor", "0"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()


def start_cluster(tmp_path: Path, base_port: int) -> ClusterHandle:
    """Six nodes on base_port..base_port+5 (3 masters, 3 replicas), ready (cluster_state:ok, replicas
    in sync). Raises RuntimeError if a port (or its bus port, +10000) is taken."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        raise RuntimeError("redis-server and redis-cli are needed for a Redis Cluster")
    ports = list(range(base_port, base_port + 2 * MASTERS))
    taken = [p for port in ports for p in (port, port + 10000) if not _port_free(p)]
    if taken:
        raise RuntimeError(f"ports {taken} are taken; choose another base_port")
    handle = ClusterHandle(directory=Path(tmp_path) / f"redis-cluster-{base_port}", ports=ports)
    try:
        for port in ports:
            handle._spawn(port)
        for port in ports:
            _wait(lambda port=port: _client(port).ping(), timeout=10, what=f"node {port} up")
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                        "--cluster-replicas", "1", "--cluster-yes"],
                       check=True, capture_output=True, timeout=30)
        handle.wait_ok(timeout=20)

        def replicas_in_sync() -> bool:
            infos = [_client(port).info("replication") for port in ports]
            replicas = [i for i in infos if i["role"] == "slave"]
            return len(replicas) == MASTERS and all(i.get("master_link_status") == "up" for i in replicas)
        _wait(replicas_in_sync, timeout=20, what="replicas in sync")
    except BaseException:
        handle.stop()
        raise
    return handle


def free_base_port(low: int = 7100, high: int = 7199) -> int:
    """A base port in [low, high] whose six ports and bus ports are free (tried in random order, so
    two test runs on one machine rarely race for the same block)."""
    bases = list(range(low, high - 2 * MASTERS + 2, 2 * MASTERS))
    random.shuffle(bases)
    for base in bases:
        if all(_port_free(p) for port in range(base, base + 2 * MASTERS) for p in (port, port + 10000)):
            return base
    raise RuntimeError(f"no free block of {2 * MASTERS} ports in {low}-{high}")


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHandle]:
    """A 3-master, 3-replica cluster for the module; import it into a test module or a conftest."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are needed for a Redis Cluster")
    handle = start_cluster(tmp_path_factory.mktemp("redis-cluster"), free_base_port())
    try:
        yield handle
    finally:
        handle.stop()
