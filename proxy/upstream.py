"""The one seam for outbound HTTP: a shared httpx.AsyncClient per worker process."""
from __future__ import annotations

import asyncio
import weakref

import httpx
from django.conf import settings

# Keyed by the loop itself (weakly), so a client is never used on a loop it was
# not made for; production has one loop per worker, tests make many.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = weakref.WeakKeyDictionary()


def get_client() -> httpx.AsyncClient:
    """The worker's client, bound to the running event loop (one loop per worker in production)."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=settings.TOLLGATE_UPSTREAM_MAX_CONNECTIONS,
                max_keepalive_connections=settings.TOLLGATE_UPSTREAM_MAX_KEEPALIVE,
                keepalive_expiry=30,
            ),
            # Per-request timeouts come from the provider's configuration.
            timeout=httpx.Timeout(60.0, connect=5.0),
            follow_redirects=False,
            trust_env=False,
        )
        _clients[loop] = client
    return client


async def close_clients() -> None:
    client = _clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()
