"""A deliberately tiny HTTP/1.1 client for many concurrent SSE streams.

A general client (httpx, aiohttp) spends more CPU per chunk than the gateway
does, and on a 2-core machine it would be the bottleneck being measured. This
one writes the request, reads the chunked body, notes when the first `data:`
line and the end of the stream arrive, and parses nothing else.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


@dataclass
class StreamResult:
    ok: bool
    status: int
    ttft: float | None  # seconds from connect to the first data event
    total: float
    error: str = ""


async def stream_once(host: str, port: int, path: str, body: bytes, headers: dict[str, str],
                      *, time_limit: float) -> StreamResult:
    started = time.perf_counter()
    try:
        return await asyncio.wait_for(_stream(host, port, path, body, headers, started), time_limit)
    except Exception as exc:
        return StreamResult(False, 0, None, time.perf_counter() - started, f"{type(exc).__name__}: {exc}")


async def _stream(host: str, port: int, path: str, body: bytes, headers: dict[str, str],
                  started: float) -> StreamResult:
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    try:
        head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
                f"Content-Length: {len(body)}", "Connection: close"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        status_line = await reader.readline()
        status = int(status_line.split()[1])
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        ttft = None
        done = False
        data = await reader.read(65536)
        while data:
            if ttft is None and b"data:" in data:
                ttft = time.perf_counter() - started
            if b"[DONE]" in data or b"message_stop" in data:
                done = True
            data = await reader.read(65536)
        return StreamResult(status == 200 and done, status, ttft, time.perf_counter() - started,
                            "" if done else "stream did not finish")
    finally:
        writer.close()


async def many_streams(n: int, host: str, port: int, path: str, body: bytes, headers: dict[str, str],
                       *, time_limit: float) -> tuple[list[StreamResult], float]:
    started = time.perf_counter()
    results = await asyncio.gather(*(stream_once(host, port, path, body, headers, time_limit=time_limit)
                                     for _ in range(n)))
    return list(results), time.perf_counter() - started
