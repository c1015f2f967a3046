"""The official openai SDK against the real server (gunicorn + uvicorn workers) and the sandbox."""
from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

# django_db: makes pytest-django create the test database that the servers use.
pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello"}]


@pytest.fixture
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0, timeout=20)


def test_it_completes_a_chat(client):
    raw = client.chat.completions.with_raw_response.create(model="demo", messages=MESSAGES)
    reply = raw.parse()
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert raw.headers["x-tollgate-provider"] == "e2e-sandbox"
    overhead = float(raw.headers["x-tollgate-overhead-ms"])
    assert overhead >= 0
    print(f"gateway overhead for one request: {overhead:.2f} ms")


def test_it_streams_with_usage_when_asked(client):
    stream = client.chat.completions.create(model="demo", messages=MESSAGES, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens > 0


def test_it_streams_without_the_usage_chunk_when_not_asked(client):
    chunks = list(client.chat.completions.create(model="demo", messages=MESSAGES, stream=True))
    assert chunks and all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_it_relays_chunks_as_they_arrive(gateway):
    """The sandbox sends 6 chunks 150 ms apart; the first must reach us long before the last."""
    body = {"model": "slow", "messages": MESSAGES, "stream": True}
    arrivals = []
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=20,
                      headers={"authorization": f"Bearer {gateway.key}"}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.monotonic())
    assert len(arrivals) >= 6
    assert arrivals[-1] - arrivals[0] > 0.5, "chunks were buffered instead of flushed"


def test_it_returns_tool_calls(client):
    tools = [{"type": "function", "function": {
        "name": "lookup_order", "description": "Find an order",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}},
                       "required": ["order_id"]}}}]
    reply = client.chat.completions.create(model="demo", messages=MESSAGES, tools=tools)
    call = reply.choices[0].message.tool_calls[0]
    assert reply.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "lookup_order"
    assert "order_id" in json.loads(call.function.arguments)

    streamed = list(client.chat.completions.create(model="demo", messages=MESSAGES, tools=tools, stream=True))
    names = [tc.function.name for c in streamed if c.choices for tc in (c.choices[0].delta.tool_calls or [])
             if tc.function and tc.function.name]
    assert names == ["lookup_order"]


def test_it_lists_models(client):
    ids = {m.id for m in client.models.list()}
    assert {"demo", "slow", "down"} <= ids


def test_a_bad_key_is_an_authentication_error(gateway):
    for key in ("tg-nonsense", gateway.revoked_key):
        bad = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            bad.chat.completions.create(model="demo", messages=MESSAGES)
        assert caught.value.status_code == 401


def test_a_bad_body_is_a_bad_request(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="demo", messages=[])
    assert caught.value.body["param"] == "messages"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)


def test_an_upstream_that_is_down_is_a_502(client):
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="down", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert "could not be reached" in caught.value.message


def test_the_client_key_is_not_forwarded_and_the_credential_is_injected(client, gateway):
    client.chat.completions.create(model="demo", messages=MESSAGES)
    seen = httpx.get(f"{gateway.sandbox_url}/_sandbox/requests", params={"limit": 50}).json()["requests"]
    assert seen
    dumped = json.dumps(seen)
    assert gateway.key not in dumped
    # The sandbox runs with --require-key: every request it answered carried our credential.
    assert all(r["headers"].get("authorization") == "Bearer sk-e2e-upstream-credential" for r in seen)


def test_health_endpoints(gateway):
    assert httpx.get(f"{gateway.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["database"] == "ok"
