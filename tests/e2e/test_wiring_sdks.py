"""The new endpoints through the real server with the official SDKs, on all three upstream formats:
OpenAI's Responses API (openai SDK), Gemini's API (google-genai SDK) and embeddings; each checked
against what the sandbox saw upstream."""
from __future__ import annotations

import json
from types import SimpleNamespace

import httpx
import openai
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

# route -> the wire format the sandbox must have seen for a chat call
UPSTREAMS = {"gpt": "openai", "claude": "anthropic", "gem": "gemini"}
RESPONSES_SEEN = {"gpt": "openai.responses", "claude": "anthropic.messages", "gem": "gemini.generateContent"}
TOOLS = [{"type": "function", "name": "lookup_order", "description": "Find an order.", "parameters": {
    "type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}]


@pytest.fixture(scope="module")
def gateway(provider_gateway) -> SimpleNamespace:
    return provider_gateway


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


# --- Gemini's API: the google-genai SDK ------------------------------------------------------

GEMINI_SEEN = {"gpt": "openai.chat", "claude": "anthropic.messages", "gem": "gemini.generateContent"}


@pytest.fixture
def genai_client(gateway):
    from google import genai

    return genai.Client(api_key=gateway.key, http_options={"base_url": gateway.url})


@pytest.mark.parametrize("route", list(UPSTREAMS))
def test_generate_content_with_the_google_genai_sdk(genai_client, gateway, route):
    reply = genai_client.models.generate_content(model=route, contents="Say hello")
    assert reply.text == "Sandbox reply to: Say hello"
    assert reply.usage_metadata.prompt_token_count > 0
    seen = sandbox_saw(gateway, GEMINI_SEEN[route])[0]
    if route == "gem":
        assert seen["path"] == "/v1beta/models/up-gem-gemini:generateContent"


@pytest.mark.parametrize("route", list(UPSTREAMS))
def test_generate_content_stream_with_the_google_genai_sdk(genai_client, gateway, route):
    chunks = list(genai_client.models.generate_content_stream(model=route, contents="Say hello"))
    assert "".join(c.text or "" for c in chunks) == "Sandbox reply to: Say hello"
    assert chunks[-1].usage_metadata.candidates_token_count > 0
    if route == "gem":
        assert sandbox_saw(gateway, "gemini.streamGenerateContent")[0]["query"] == {"alt": "sse"}
    else:
        assert sandbox_saw(gateway, GEMINI_SEEN[route])[0]["body"]["stream"] is True


@pytest.mark.parametrize("route", list(UPSTREAMS))
def test_count_tokens_with_the_google_genai_sdk(genai_client, gateway, route):
    counted = genai_client.models.count_tokens(model=route, contents="Say hello")
    assert counted.total_tokens > 0
    if route != "gpt":  # OpenAI-format sandbox: no counting endpoint, so estimated
        assert counted.total_tokens == 7
        fmt = "gemini.countTokens" if route == "gem" else "anthropic.count_tokens"
        assert sandbox_saw(gateway, fmt)


def test_the_model_list_with_the_google_genai_sdk(genai_client):
    names = [m.name for m in genai_client.models.list()]
    assert "models/gem" in names and "models/claude" in names


def test_gemini_errors_with_the_google_genai_sdk(gateway):
    from google import genai
    from google.genai import errors

    bad_key = genai.Client(api_key="tg-not-a-key", http_options={"base_url": gateway.url})
    with pytest.raises(errors.ClientError) as caught:
        bad_key.models.generate_content(model="gem", contents="hi")
    assert caught.value.code == 401 and caught.value.status == "UNAUTHENTICATED"


# --- Embeddings: the openai SDK, on OpenAI and Gemini upstreams ------------------------------


@pytest.mark.parametrize("route, fmt", [("gpt", "openai.embeddings"), ("gem", "gemini.batchEmbedContents")])
def test_embeddings_with_the_openai_sdk(client, gateway, route, fmt):
    from proxy.sandbox.embeddings import embedding_vector

    raw = client.embeddings.with_raw_response.create(model=route, input=["hello", "world"], dimensions=8)
    reply = raw.parse()  # the SDK asks for base64 and decodes it
    assert [d.index for d in reply.data] == [0, 1]
    assert reply.data[1].embedding == pytest.approx(embedding_vector("world", 8), abs=1e-6)
    assert reply.usage.prompt_tokens > 0
    # Gemini reports no tokens for embeddings: the gateway's estimate, and it says so.
    assert raw.headers["x-tollgate-token-count"] == ("estimated" if route == "gem" else "exact")
    assert sandbox_saw(gateway, fmt)
    one = client.embeddings.create(model=route, input="hello", encoding_format="float")
    assert one.data[0].embedding == pytest.approx(embedding_vector("hello"), abs=1e-6)


def test_embeddings_are_refused_by_an_anthropic_route(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="claude", input="hello")
    assert "no embeddings" in caught.value.message
