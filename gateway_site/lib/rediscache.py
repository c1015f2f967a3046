"""Django's Redis cache, on a Redis Cluster or a Sentinel-managed master (issue #18).

Django's RedisCache builds its clients from URLs of single servers. This backend keeps its
serialisation and its commands and only takes the client from gateway_site.lib.redisclient
(one per process). On a Cluster the multi-key calls are split by slot: `get_many` reads with
MGET per slot (redis-py's mget_nonatomic), `set_many` sends one SET per key through a cluster
pipeline, `delete_many` lets redis-py split DEL by slot, and `clear` flushes every master.
None of these was atomic across keys for our callers anyway (the breaker and the key caches
read and delete a few keys at a time); what must be atomic goes through a Lua script whose
keys share one hash tag (budgets.counters).
"""
from __future__ import annotations

from typing import Any

import redis
from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django.core.cache.backends.redis import RedisCacheClient as DjangoRedisCacheClient

from gateway_site.lib import redisclient


class RedisCacheClient(DjangoRedisCacheClient):
    _serializer: Any  # set by Django's __init__ (not in its stubs)

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        return redisclient.sync_client()

    def get_many(self, keys: Any) -> dict:
        keys = list(keys)
        client = self.get_client()
        values = client.mget_nonatomic(keys) if isinstance(client, redis.RedisCluster) else client.mget(keys)
        return {k: self._serializer.loads(v) for k, v in zip(keys, values, strict=True) if v is not None}

    def set_many(self, data: Any, timeout: Any) -> None:
        pipeline = self.get_client(write=True).pipeline(transaction=False)
        for key, value in data.items():
            if timeout == 0:
                pipeline.delete(key)
            else:
                pipeline.set(key, self._serializer.dumps(value), ex=timeout)
        pipeline.execute()

    def clear(self) -> bool:
        client = self.get_client(write=True)
        if isinstance(client, redis.RedisCluster):
            return bool(client.flushdb(target_nodes=redis.RedisCluster.PRIMARIES))
        return bool(client.flushdb())


class RedisCache(DjangoRedisCache):
    """CACHES backend for a Cluster or Sentinel (settings choose it; LOCATION is not used)."""

    def __init__(self, server: Any, params: dict) -> None:
        super().__init__(server or "unused", params)
        self._class = RedisCacheClient
