"""Where Redis is, and the one place that builds clients for it: one server, a Cluster or a Sentinel service.

Settings (docs/configuration.md), at most one of:
- `REDIS_URL`: one Redis server (`redis://host:6379/0`);
- `TOLLGATE_REDIS_CLUSTER_NODES`: some nodes of a Redis Cluster (`host:port,host:port`), the rest are found;
- `TOLLGATE_REDIS_SENTINELS` (`host:port,...`) and `TOLLGATE_REDIS_SENTINEL_SERVICE`: the master a
  Sentinel group names, found again after each failover.

`async_client()` (one per event loop: the counters' Lua scripts) and `sync_client()` (one per process,
thread-safe: the shared cache, the reset job, reports) are used everywhere instead of `from_url`
calls of their own. On a Cluster, every key that one script or multi-key command touches must carry
the same hash tag (`{...}`); budgets.counters builds its keys so.
"""
from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.cluster import ClusterNode
from redis.exceptions import AskError, ClusterError, ReadOnlyError, RedisClusterException, TryAgainError
from redis.sentinel import Sentinel

# What "the shared counters cannot be reached" looks like, on every topology: connection
# errors and timeouts (a dead master, a full pool, Sentinel's MasterNotFoundError, a replica
# still loading), a Cluster in the middle of a failover (CLUSTERDOWN, MASTERDOWN, TRYAGAIN,
# MOVED/ASK redirections that did not settle within redis-py's retries, a slot no node serves),
# and a write that reached a master Sentinel has just demoted (READONLY).
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError, redis.TimeoutError, OSError, ClusterError, TryAgainError, AskError, ReadOnlyError,
    RedisClusterException,
)


def topology() -> str:
    """'cluster', 'sentinel', 'single', or '' when no Redis is configured (the embedded default)."""
    global _topology
    if _topology is None:
        if settings.TOLLGATE_REDIS_CLUSTER_NODES:
            _topology = "cluster"
        elif settings.TOLLGATE_REDIS_SENTINELS:
            _topology = "sentinel"
        else:
            _topology = "single" if settings.REDIS_URL else ""
    return _topology


_topology: str | None = None  # read once per process (and again when tests change the settings)


def configured() -> bool:
    return bool(topology())


def replicated() -> bool:
    """A topology whose master can fail over (Cluster, Sentinel): acknowledged writes may be lost."""
    return topology() in ("cluster", "sentinel")


def parse_nodes(name: str, nodes: list[str]) -> list[tuple[str, int]]:
    """`host:port` items (settings); raises ImproperlyConfigured naming the setting."""
    parsed = []
    for node in nodes:
        host, sep, port = node.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ImproperlyConfigured(f"{name}: {node!r} is not host:port")
        parsed.append((host.strip("[]"), int(port)))
    return parsed


def _timeouts() -> dict[str, Any]:
    options = settings.CACHES["default"].get("OPTIONS", {})
    return {"socket_timeout": options.get("socket_timeout", 2),
            "socket_connect_timeout": options.get("socket_connect_timeout", 2)}


def _auth() -> dict[str, Any]:
    password = settings.TOLLGATE_REDIS_PASSWORD
    return {"password": password} if password else {}


# --- async: one client per event loop --------------------------------------------------------

_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()


def async_client() -> Any:
    """This event loop's client (redis.asyncio.Redis or RedisCluster), with at most
    TOLLGATE_REDIS_MAX_CONNECTIONS connections per server."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = _async_build(topology())
    return client


def _async_build(kind: str) -> Any:
    limit = settings.TOLLGATE_REDIS_MAX_CONNECTIONS
    if kind == "cluster":
        nodes = parse_nodes("TOLLGATE_REDIS_CLUSTER_NODES", settings.TOLLGATE_REDIS_CLUSTER_NODES)
        # A full pool raises at once here (no blocking pool for a Cluster): budgets.counters
        # bounds the scripts in flight to the same number, so the pool never runs dry.
        return aioredis.RedisCluster(startup_nodes=[AsyncClusterNode(h, p) for h, p in nodes],
                                     max_connections=limit, **_timeouts(), **_auth())
    if kind == "sentinel":
        return _async_sentinel().master_for(settings.TOLLGATE_REDIS_SENTINEL_SERVICE, max_connections=limit,
                                            **_timeouts(), **_auth())
    # A bounded pool: a burst of concurrent requests waits briefly for one of a few dozen
    # connections instead of opening hundreds (each a chance to time out on a saturated machine).
    pool = aioredis.BlockingConnectionPool.from_url(settings.REDIS_URL, max_connections=limit, timeout=5,
                                                    **_timeouts())
    return aioredis.Redis(connection_pool=pool)


def _sentinel_nodes() -> list[tuple[str, int]]:
    return parse_nodes("TOLLGATE_REDIS_SENTINELS", settings.TOLLGATE_REDIS_SENTINELS)


def _sentinel_kwargs() -> dict[str, Any]:
    password = settings.TOLLGATE_REDIS_SENTINEL_PASSWORD
    return {**_timeouts(), **({"password": password} if password else {})}


def _async_sentinel() -> AsyncSentinel:
    return AsyncSentinel(_sentinel_nodes(), sentinel_kwargs=_sentinel_kwargs(), **_timeouts())


def concurrency_limit() -> asyncio.Semaphore | None:
    """For a Cluster or Sentinel client (whose pools refuse rather than wait when full): a
    semaphore of TOLLGATE_REDIS_MAX_CONNECTIONS for this loop; None for one server."""
    if not replicated():
        return None
    loop = asyncio.get_running_loop()
    semaphore = _semaphores.get(loop)
    if semaphore is None:
        semaphore = _semaphores[loop] = asyncio.Semaphore(settings.TOLLGATE_REDIS_MAX_CONNECTIONS)
    return semaphore


@asynccontextmanager
async def guarded(client: Any) -> AsyncIterator[None]:
    """Around one command of a Cluster client. redis-py's asyncio cluster client (8.1) breaks
    commands in flight when it (re)discovers the cluster concurrently with them: on first use
    under a burst, and when one command sees CLUSTERDOWN it closes every connection, under
    the others' feet (RuntimeError / AttributeError from the transport, measured: 1 of 60
    concurrent first commands). So discovery runs first, alone, and such a failure counts as a
    lost connection (the request is refused as during any failover, never served unmetered)."""
    if not isinstance(client, aioredis.RedisCluster):
        yield
        return
    await client.initialize()  # returns at once when the slots are known
    try:
        yield
    except (RuntimeError, AttributeError) as exc:
        raise redis.ConnectionError(f"connection closed under the command ({exc.__class__.__name__})") from exc


_semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


# --- sync: one client per process --------------------------------------------------------------

_sync: Any = None


def sync_client() -> Any:
    """The process's client (redis.Redis or RedisCluster, thread-safe), for everything off the event loop."""
    global _sync
    if _sync is not None:
        return _sync
    kind = topology()
    if kind == "cluster":
        nodes = parse_nodes("TOLLGATE_REDIS_CLUSTER_NODES", settings.TOLLGATE_REDIS_CLUSTER_NODES)
        client: Any = redis.RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], **_timeouts(),
                                         **_auth())
    elif kind == "sentinel":
        sentinel = Sentinel(_sentinel_nodes(), sentinel_kwargs=_sentinel_kwargs(), **_timeouts())
        client = sentinel.master_for(settings.TOLLGATE_REDIS_SENTINEL_SERVICE, **_timeouts(), **_auth())
    elif kind == "single":
        client = redis.Redis.from_url(settings.REDIS_URL, **_timeouts())
    else:
        raise ImproperlyConfigured("no Redis is configured (REDIS_URL, TOLLGATE_REDIS_CLUSTER_NODES or "
                                   "TOLLGATE_REDIS_SENTINELS)")
    _sync = client
    return client


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs) -> None:
    # Tests that change where Redis is get clients for the new settings.
    global _sync, _topology
    if setting in ("REDIS_URL", "TOLLGATE_REDIS_CLUSTER_NODES", "TOLLGATE_REDIS_SENTINELS",
                   "TOLLGATE_REDIS_SENTINEL_SERVICE", "TOLLGATE_REDIS_PASSWORD", "CACHES"):
        _sync, _topology = None, None
        _async_clients.clear()
        _semaphores.clear()
