"""A deliberately tiny HTTP/1.1 client for many concurrent SSE streams.

A general client (httpx, aiohttp) spends more CPU per chunk than the gateway
does, and on a 2-core machine it would be the bottleneck being measured. This
one writes the request, reads the chunked body, notes when the first `data:`
line and the end of the stream arrive, and parses nothing else.
"""
from __future__ import annotations

import asyncio
import re
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
        tail = b""  # the end of what came so far: a marker may be split between two reads
        first = b""  # the start of the body, to say why a stream failed
        data = await reader.read(65536)
        while data:
            if len(first) < 400:
                first += data[:400]
            if ttft is None and b"data:" in data:
                ttft = time.perf_counter() - started
            window = tail + data
            if b"[DONE]" in window or b"message_stop" in window:
                done = True
            tail = window[-400:]
            data = await reader.read(65536)
        if status != 200:
            return StreamResult(False, status, ttft, time.perf_counter() - started, f"status {status}: {_why(first)}")
        if not done:
            # Say what the stream ended with: an error event in the caller's format, or nothing at all.
            reason = _why(tail) if b"error" in tail else "no last event"
            return StreamResult(False, status, ttft, time.perf_counter() - started, f"stream did not finish: {reason}")
        return StreamResult(True, status, ttft, time.perf_counter() - started)
    finally:
        writer.close()


def _why(body: bytes) -> str:
    """A short, stable label for an error answer: its error code or type, if the body shows one."""
    match = re.search(rb'"code"\s*:\s*"([^"]+)"', body) or re.search(rb'"type"\s*:\s*"([^"]+)"', body)
    return match.group(1).decode(errors="replace") if match else body[:80].decode(errors="replace")


async def many_streams(n: int, host: str, port: int, path: str, body: bytes, headers: dict[str, str],
                       *, time_limit: float) -> tuple[list[StreamResult], float]:
    started = time.perf_counter()
    results = await asyncio.gather(*(stream_once(host, port, path, body, headers, time_limit=time_limit)
                                     for _ in range(n)))
    return list(results), time.perf_counter() - started
