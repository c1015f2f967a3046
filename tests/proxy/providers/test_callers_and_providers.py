"""Each caller format against each provider format, through the gateway and the sandbox."""
from __future__ import annotations

import httpx
import orjson
import pytest

from proxy.sandbox import expected_usage
from tests.proxy.client import call, chat

pytestmark = pytest.mark.django_db

KINDS = ["openai", "anthropic", "gemini"]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
ANTHROPIC_TOOLS = [{"name": "get_weather", "description": "Weather for a city",
                    "input_schema": TOOLS[0]["function"]["parameters"]}]
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi! How can I help?"},
    {"role": "user", "content": "Say hello"},
]


def last_upstream(sandbox_url: str) -> dict:
    return httpx.get(f"{sandbox_url}/_sandbox/requests", params={"limit": 1}).json()["requests"][0]


def messages(key: str, body: dict, **kwargs):
    headers = {"anthropic-version": "2023-06-01", **kwargs.pop("headers", {})}
    return call("POST", "/v1/messages", key=key, body=body, headers=headers, **kwargs)


def sse(content: bytes) -> list[tuple[str | None, dict | str]]:
    out = []
    for block in content.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not block.strip():
            continue
        name, data = None, b""
        for line in block.split(b"\n"):
            if line.startswith(b"event: "):
                name = line[7:].decode()
            elif line.startswith(b"data: "):
                data = line[6:]
        out.append((name, data.decode() if data == b"[DONE]" else orjson.loads(data)))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_an_openai_caller_gets_a_chat_completion_from_every_provider_kind(alice, kinds, sandbox_url, kind):
    response = chat(alice, {"model": f"via-{kind}", "messages": CONVERSATION, "temperature": 0.5})
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"]["content"] == "Sandbox reply to: Say hello"
    assert data["choices"][0]["finish_reason"] == "stop"
    upstream = last_upstream(sandbox_url)
    usage = expected_usage("openai", {"model": "m", "messages": CONVERSATION})
    expected = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens}
    if kind != "openai":  # translated: the token classes too (a pass-through keeps the sandbox's own)
        expected |= {"prompt_tokens_details": {"cached_tokens": 0},
                     "completion_tokens_details": {"reasoning_tokens": 0}}
    assert data["usage"] == expected
    assert response.headers["x-tollgate-provider"] == f"p-{kind}"
    if kind == "anthropic":
        assert upstream["path"] == "/v1/messages"
        assert upstream["body"]["system"] == "You are terse."
        assert upstream["body"]["max_tokens"] == 333  # the route's default: Anthropic requires one
        assert upstream["headers"]["anthropic-version"] == "2023-06-01"
    if kind == "gemini":
        assert upstream["path"] == "/v1beta/models/up-gemini:generateContent"
        assert upstream["body"]["systemInstruction"] == {"parts": [{"text": "You are terse."}]}
        # The output bound always goes upstream: the route's default when the client gave none.
        assert upstream["body"]["generationConfig"] == {"temperature": 0.5, "maxOutputTokens": 333}


@pytest.mark.parametrize("kind", KINDS)
def test_an_openai_caller_gets_length_and_stop_finish_reasons(alice, kinds, kind):
    cut = chat(alice, {"model": f"via-{kind}", "messages": CONVERSATION, "max_tokens": 2}).json()
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] == 2
    stopped = chat(alice, {"model": f"via-{kind}", "messages": CONVERSATION, "stop": ["hello"]}).json()
    assert stopped["choices"][0]["message"]["content"] == "Sandbox reply to: Say "
    assert stopped["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("kind", KINDS)
def test_an_openai_caller_gets_tool_calls_and_can_send_results(alice, kinds, kind):
    body = {"model": f"via-{kind}", "messages": CONVERSATION, "tools": TOOLS, "tool_choice": "required"}
    data = chat(alice, body).json()
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    tool_call = choice["message"]["tool_calls"][0]
    assert tool_call["function"]["name"] == "get_weather"
    assert orjson.loads(tool_call["function"]["arguments"]) == {"city": "sandbox"}
    follow_up = [*CONVERSATION, choice["message"],
                 {"role": "tool", "tool_call_id": tool_call["id"], "content": "sunny, 21 C"}]
    answer = chat(alice, {**body, "messages": follow_up, "tool_choice": "auto"}).json()
    assert answer["choices"][0]["message"]["content"] == "Tool result received: sunny, 21 C"
    assert answer["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("kind", KINDS)
def test_an_openai_caller_streams_from_every_provider_kind(alice, kinds, kind):
    body = {"model": f"via-{kind}", "messages": CONVERSATION, "stream": True,
            "stream_options": {"include_usage": True}}
    response = chat(alice, body)
    assert response.status_code == 200
    events = sse(response.content)
    assert events[-1] == (None, "[DONE]")
    chunks = [data for _, data in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Sandbox reply to: Say hello"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finishes == ["stop"]
    usage = expected_usage("openai", {"model": "m", "messages": CONVERSATION})
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == usage.completion_tokens
    assert chunks[-1]["usage"]["prompt_tokens"] == usage.prompt_tokens


@pytest.mark.parametrize("kind", KINDS)
def test_an_openai_caller_streams_tool_calls_from_every_provider_kind(alice, kinds, kind):
    body = {"model": f"via-{kind}", "messages": CONVERSATION, "stream": True, "tools": TOOLS}
    chunks = [d for _, d in sse(chat(alice, body).content)[:-1]]
    assert all(c["choices"] for c in chunks), "no usage chunk unless asked"
    deltas = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls") or []]
    assert deltas[0]["function"]["name"] == "get_weather" and deltas[0]["id"]
    arguments = "".join(d["function"].get("arguments") or "" for d in deltas)
    assert orjson.loads(arguments) == {"city": "sandbox"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


ANTHROPIC_BODY = {"max_tokens": 100, "system": "You are terse.",
                  "messages": [{"role": "user", "content": "Hello"},
                               {"role": "assistant", "content": "Hi! How can I help?"},
                               {"role": "user", "content": [{"type": "text", "text": "Say hello"}]}]}


@pytest.mark.parametrize("kind", KINDS)
def test_an_anthropic_caller_gets_a_message_from_every_provider_kind(alice, kinds, kind):
    response = messages(alice, {**ANTHROPIC_BODY, "model": f"via-{kind}"})
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["type"] == "message"
    assert data["content"] == [{"type": "text", "text": "Sandbox reply to: Say hello"}]
    assert data["stop_reason"] == "end_turn"
    usage = expected_usage("anthropic", {**ANTHROPIC_BODY, "model": "m"})
    expected = {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}
    if kind != "anthropic":  # translated: the cache classes too (a pass-through keeps the sandbox's own)
        expected |= {"cache_read_input_tokens": 0, "cache_creation_input_tokens": 0,
                     "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}}
    assert data["usage"] == expected


@pytest.mark.parametrize("kind", KINDS)
def test_an_anthropic_caller_gets_tool_use_and_can_send_results(alice, kinds, kind):
    body = {**ANTHROPIC_BODY, "model": f"via-{kind}", "tools": ANTHROPIC_TOOLS, "tool_choice": {"type": "any"}}
    data = messages(alice, body).json()
    assert data["stop_reason"] == "tool_use"
    block = data["content"][-1]
    assert block["type"] == "tool_use" and block["name"] == "get_weather" and block["input"] == {"city": "sandbox"}
    follow_up = [*body["messages"], {"role": "assistant", "content": data["content"]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block["id"],
                                               "content": "sunny, 21 C"}]}]
    answer = messages(alice, {**body, "messages": follow_up, "tool_choice": {"type": "auto"}}).json()
    assert answer["content"][0]["text"] == "Tool result received: sunny, 21 C"


@pytest.mark.parametrize("kind", KINDS)
def test_an_anthropic_caller_streams_from_every_provider_kind(alice, kinds, kind):
    response = messages(alice, {**ANTHROPIC_BODY, "model": f"via-{kind}", "stream": True})
    assert response.status_code == 200
    events = sse(response.content)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "Sandbox reply to: Say hello"
    usage = expected_usage("anthropic", {**ANTHROPIC_BODY, "model": "m"})
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert delta["usage"]["output_tokens"] == usage.completion_tokens
    assert delta["usage"].get("input_tokens", events[0][1]["message"]["usage"]["input_tokens"]) == usage.prompt_tokens


@pytest.mark.parametrize("kind", KINDS)
def test_an_anthropic_caller_streams_tool_use_from_every_provider_kind(alice, kinds, kind):
    body = {**ANTHROPIC_BODY, "model": f"via-{kind}", "stream": True, "tools": ANTHROPIC_TOOLS}
    events = sse(messages(alice, body).content)
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert starts[-1]["type"] == "tool_use" and starts[-1]["name"] == "get_weather"
    partial = "".join(d["delta"]["partial_json"] for n, d in events
                      if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta")
    assert orjson.loads(partial) == {"city": "sandbox"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_an_anthropic_caller_gets_errors_in_anthropic_shape(alice, kinds):
    bad = messages(alice, {"model": "via-openai", "messages": []})
    assert bad.status_code == 400
    assert bad.json()["type"] == "error" and bad.json()["error"]["type"] == "invalid_request_error"
    unknown = messages(alice, {**ANTHROPIC_BODY, "model": "nope"})
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"
    anonymous = messages(None, {**ANTHROPIC_BODY, "model": "via-openai"})
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "authentication_error"


def test_an_anthropic_caller_gets_a_providers_failure_in_anthropic_shape(alice, kinds):
    kinds.openai.extra_headers = {"x-sandbox-fail-status": "400"}
    kinds.openai.save()
    from proxy.routing import route_cache
    route_cache.clear_local()
    response = messages(alice, {**ANTHROPIC_BODY, "model": "via-openai"})
    assert response.status_code == 400
    assert response.json()["type"] == "error"


def test_anthropic_passthrough_keeps_the_body_and_fills_max_tokens(alice, kinds, sandbox_url):
    body = {**ANTHROPIC_BODY, "model": "via-anthropic", "top_k": 5}
    body.pop("max_tokens")
    assert messages(alice, body).status_code == 200
    upstream = last_upstream(sandbox_url)["body"]
    assert upstream["top_k"] == 5 and upstream["model"] == "up-anthropic" and upstream["max_tokens"] == 333


def test_images_reach_providers_in_their_format(alice, kinds, sandbox_url):
    pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    content = [{"type": "text", "text": "What is this?"},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{pixel}"}}]
    body = {"messages": [{"role": "user", "content": content}]}
    assert chat(alice, {**body, "model": "via-anthropic"}).status_code == 200
    block = last_upstream(sandbox_url)["body"]["messages"][0]["content"][1]
    assert block == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": pixel}}
    assert chat(alice, {**body, "model": "via-gemini"}).status_code == 200
    part = last_upstream(sandbox_url)["body"]["contents"][0]["parts"][1]
    assert part == {"inlineData": {"mimeType": "image/png", "data": pixel}}


def test_count_tokens_asks_an_anthropic_deployment_or_estimates(alice, kinds):
    body = {"model": "via-anthropic", "messages": [{"role": "user", "content": "Say hello"}]}
    exact = call("POST", "/v1/messages/count_tokens", key=alice, body=body,
                 headers={"anthropic-version": "2023-06-01"}).json()
    assert exact == {"input_tokens": expected_usage("anthropic", {**body, "max_tokens": 1}).prompt_tokens}
    estimated = call("POST", "/v1/messages/count_tokens", key=alice, body={**body, "model": "via-openai"}).json()
    assert estimated["input_tokens"] > 0


def test_the_model_list_speaks_anthropic_to_anthropic_clients(alice, kinds):
    data = call("GET", "/v1/models", key=alice, headers={"anthropic-version": "2023-06-01"}).json()
    assert {m["id"] for m in data["data"]} >= {"via-openai", "via-anthropic", "via-gemini"}
    assert data["data"][0]["type"] == "model" and data["has_more"] is False
