"""Call the gateway in-process through Django's async test client from sync tests."""
from __future__ import annotations

from typing import Any

import orjson
from asgiref.sync import async_to_sync
from django.test import AsyncClient


class GatewayResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status_code = status
        self.headers = headers
        self.content = body

    def json(self) -> Any:
        return orjson.loads(self.content)

    def sse_events(self) -> list[bytes]:
        return [e for e in self.content.split(b"\n\n") if e.strip()]


async def _call(method: str, path: str, *, key: str | None, body: Any, raw: bytes | None,
                headers: dict[str, str]) -> GatewayResponse:
    client = AsyncClient()
    headers = dict(headers)
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if method == "GET":
        response = await client.get(path, headers=headers)
    else:
        data = raw if raw is not None else orjson.dumps(body)
        response = await getattr(client, method.lower())(path, data=data, content_type="application/json",
                                                         headers=headers)
    if response.streaming:
        chunks = [chunk async for chunk in response.streaming_content]
        content = b"".join(chunks)
    else:
        content = response.content
    return GatewayResponse(response.status_code, {k.lower(): v for k, v in response.items()}, content)


def call(method: str, path: str, *, key: str | None = None, body: Any = None, raw: bytes | None = None,
         headers: dict[str, str] | None = None) -> GatewayResponse:
    return async_to_sync(_call)(method, path, key=key, body=body, raw=raw, headers=headers or {})


def chat(key: str | None, body: Any, **kwargs) -> GatewayResponse:
    return call("POST", "/v1/chat/completions", key=key, body=body, **kwargs)
