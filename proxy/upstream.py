"""The one seam for outbound HTTP on the request path: one aiohttp session per worker and event loop.

aiohttp and not httpx here (httpx stays for the admin's provider checks and Celery's
webhooks): on this path httpx cost about 1.2 ms of CPU per request at 16 concurrent
requests (a pure-Python HTTP parser and connection pool), aiohttp about 0.12 ms (a C
parser, a pool that does not scan), and the upstream call was the largest single cost
of a proxied request (docs/performance.md). Everything aiohttp-specific stays in this
module: callers see `UpstreamResponse`, `Timeouts` and `UpstreamError`.
"""
from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from functools import lru_cache

import aiohttp
from django.conf import settings


class UpstreamError(Exception):
    """The provider could not be reached, or its answer broke off, before a complete HTTP answer."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(cause.__class__.__name__)
        self.kind = cause.__class__.__name__


class UpstreamTimeout(UpstreamError):
    """No connection within the connect timeout, or no byte within the read timeout."""


# What a broken connection, a refused one or a timeout raise inside aiohttp.
_TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


def _error(exc: BaseException) -> UpstreamError:
    return UpstreamTimeout(exc) if isinstance(exc, TimeoutError) else UpstreamError(exc)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """A provider's timeouts: `read` between any two bytes of the answer, `connect` to get a connection."""

    read: float
    connect: float


@lru_cache(maxsize=256)
def _client_timeout(timeouts: Timeouts) -> aiohttp.ClientTimeout:
    # No total: a stream may last as long as it keeps sending. `connect` also covers waiting
    # for a free connection of this worker's pool, which says nothing about the provider: it
    # gets the read timeout, so a full pool (thousands of long streams) is not mistaken for a
    # provider that does not accept connections (and its circuit breaker left closed).
    return aiohttp.ClientTimeout(total=None, connect=timeouts.read + timeouts.connect,
                                 sock_connect=timeouts.connect, sock_read=timeouts.read)


class UpstreamResponse:
    """A provider's answer whose status and headers have arrived; the body is read or streamed from it."""

    __slots__ = ("_response", "headers", "status_code")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status_code: int = response.status
        self.headers: Mapping[str, str] = response.headers  # case-insensitive

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except _TRANSPORT_ERRORS as exc:
            raise _error(exc) from None
        finally:
            self._response.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (not aligned to events or lines)."""
        content = self._response.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except _TRANSPORT_ERRORS as exc:
            raise _error(exc) from None

    async def aclose(self) -> None:
        """Give the connection back when the body was read to its end; otherwise close it, which
        also tells the provider to stop (a client that left, a stream cut short)."""
        response = self._response
        if response.content.is_eof():
            response.release()
        else:
            response.close()


# Keyed by the loop itself (weakly), so a session is never used on a loop it was not made
# for; production has one loop per worker, tests make many.
# The value keeps the session's closer (below) alive as long as the session.
_sessions: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, tuple[aiohttp.ClientSession, AsyncIterator[None]]] = weakref.WeakKeyDictionary()
_fresh_sessions: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, tuple[aiohttp.ClientSession, AsyncIterator[None]]] = weakref.WeakKeyDictionary()


async def _session(*, fresh: bool = False) -> aiohttp.ClientSession:
    """This loop's session; `fresh`: the one whose connections are never reused (a retry after a stale one)."""
    loop = asyncio.get_running_loop()
    sessions = _fresh_sessions if fresh else _sessions
    session, _ = sessions.get(loop) or (None, None)
    if session is None or session.closed:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=settings.TOLLGATE_UPSTREAM_MAX_CONNECTIONS,
                limit_per_host=0,
                ttl_dns_cache=300,
                **({"force_close": True} if fresh else {"keepalive_timeout": 30}),
            ),
            # Never keep a provider's cookies: they would be sent on every consumer's requests.
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            timeout=_client_timeout(Timeouts(read=60.0, connect=5.0)),
        )
        closer = _closed_with_loop(loop, session, sessions)
        await closer.__anext__()
        sessions[loop] = (session, closer)
    return session


async def _closed_with_loop(loop: asyncio.AbstractEventLoop, session: aiohttp.ClientSession,
                            sessions: weakref.WeakKeyDictionary) -> AsyncIterator[None]:
    """Close `session` when its loop shuts down. asyncio.run(), and with it the ASGI server and
    the test runners, finalizes every unfinished async generator before closing the loop; without
    this, each of the many short loops of a test run would leave a session (and the loop) behind."""
    try:
        yield
    finally:
        if (sessions.get(loop) or (None,))[0] is session:
            del sessions[loop]
        await session.close()


# A pooled connection that the provider had already closed: it fails when it is written to or before
# anything comes back. Providers close idle connections after a few seconds (uvicorn, vLLM, Node: 5 s);
# on a busy worker the close is not seen before the connection is taken for the next request.
_STALE_ERRORS = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


async def send(url: str, *, content: bytes, headers: Mapping[str, str], timeouts: Timeouts) -> UpstreamResponse:
    """POST `content`; return once the answer's status and headers are in. The caller closes it.

    A request that fails on a pooled connection before any answer (the provider had closed it) is
    sent once more, on a new connection: measured in the benchmark, 70 of 1,000 streams failed that
    way after a pause of a few seconds, and as connect errors they opened the provider's breaker."""
    timeout = _client_timeout(timeouts)
    try:
        response = await (await _session()).post(url, data=content, headers=headers, allow_redirects=False,
                                                 timeout=timeout)
    except _STALE_ERRORS as exc:
        if isinstance(exc, aiohttp.ClientConnectorError):
            raise _error(exc) from None  # no connection could be made: nothing stale about it
        try:
            response = await (await _session(fresh=True)).post(url, data=content, headers=headers,
                                                               allow_redirects=False, timeout=timeout)
        except _TRANSPORT_ERRORS as again:
            raise _error(again) from None
    except _TRANSPORT_ERRORS as exc:
        raise _error(exc) from None
    return UpstreamResponse(response)


async def post(url: str, *, content: bytes, headers: Mapping[str, str],
               timeouts: Timeouts) -> tuple[UpstreamResponse, bytes]:
    """POST `content` and read the whole answer; the connection goes back to the pool."""
    response = await send(url, content=content, headers=headers, timeouts=timeouts)
    return response, await response.read()


async def close_clients() -> None:
    for sessions in (_sessions, _fresh_sessions):
        session, _ = sessions.pop(asyncio.get_running_loop(), None) or (None, None)
        if session is not None:
            await session.close()
