"""The new endpoints through the real server with the official SDKs, on all three upstream formats:
OpenAI's Responses API (openai SDK), Gemini's API (google-genai SDK) and embeddings; each checked
against what the sandbox saw upstream."""
from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import openai
import pytest

from tests.e2e.provider_gateway import provider_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

# route -> the wire format the sandbox must have seen for a chat call
UPSTREAMS = {"gpt": "openai", "claude": "anthropic", "gem": "gemini"}
RESPONSES_SEEN = {"gpt": "openai.responses", "claude": "anthropic.messages", "gem": "gemini.generateContent"}
TOOLS = [{"type": "function", "name": "lookup_order", "description": "Find an order.", "parameters": {
    "type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}]


@pytest.fixture(scope="module")
def gateway(django_db_setup, django_db_blocker) -> Iterator[SimpleNamespace]:
    with provider_gateway(django_db_blocker) as running:
        yield running


@pytest.fixture
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0, timeout=20)


def sandbox_saw(gateway, fmt: str, limit: int = 1) -> list[dict]:
    return httpx.get(f"{gateway.sandbox_url}/_sandbox/requests",
                     params={"format": fmt, "limit": limit}).json()["requests"]


def _round_trip_input(first) -> list[dict]:
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "lookup_order"
    assert json.loads(call.arguments) == {"order_id": "sandbox"}
    return [{"role": "user", "content": "Where is order 7?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "shipped"}]


@pytest.mark.parametrize("route", list(UPSTREAMS))
def test_responses_round_trip_with_the_openai_sdk(client, gateway, route):
    first = client.responses.create(model=route, input="Where is order 7?", tools=TOOLS)
    assert first.status == "completed"
    second = client.responses.create(model=route, input=_round_trip_input(first), tools=TOOLS)
    assert second.output_text == "Tool result received: shipped"
    assert second.usage.input_tokens > 0 and second.usage.output_tokens > 0
    seen = sandbox_saw(gateway, RESPONSES_SEEN[route])[0]
    assert seen["headers"].get("user-agent", "").startswith("tollgate")


@pytest.mark.parametrize("route", list(UPSTREAMS))
def test_responses_stream_round_trip_with_the_openai_sdk(client, gateway, route):
    with client.responses.stream(model=route, input="Where is order 7?", tools=TOOLS) as stream:
        kinds = [event.type for event in stream]
        first = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.function_call_arguments.delta" in kinds or route == "gem"
    text = ""
    with client.responses.stream(model=route, input=_round_trip_input(first), tools=TOOLS) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                text += event.delta
        final = stream.get_final_response()
    assert text == final.output_text == "Tool result received: shipped"
    assert final.usage.output_tokens > 0
    if route == "gem":
        assert sandbox_saw(gateway, "gemini.streamGenerateContent")[0]["query"] == {"alt": "sse"}
    else:
        assert sandbox_saw(gateway, RESPONSES_SEEN[route])[0]["body"]["stream"] is True


def test_responses_errors_are_in_openais_shape(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="gpt", input="hi", store=True)
    assert caught.value.body["code"] == "store_not_allowed"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-route", input="hi")
