"""The sandbox provider, through the official SDKs (which prove the wire formats) and raw HTTP."""
from __future__ import annotations

import json
import time
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
from django.core.management import CommandError, call_command

from proxy.sandbox import (
    SandboxApp,
    SandboxConfig,
    count_tokens,
    expected_usage,
    parse_request,
    plan_reply,
    sample_arguments,
    split_chunks,
)

OPENAI_AUTH = {"authorization": "Bearer sk-test"}
ANTHROPIC_AUTH = {"x-api-key": "sk-test", "anthropic-version": "2023-06-01"}
GEMINI_AUTH = {"x-goog-api-key": "sk-test"}
AUTH = {"openai": OPENAI_AUTH, "anthropic": ANTHROPIC_AUTH, "gemini": GEMINI_AUTH}

HELLO_OPENAI = {"model": "sandbox-small", "messages": [{"role": "system", "content": "Be brief."},
                                                        {"role": "user", "content": "Say hello"}]}
HELLO_ANTHROPIC = {"model": "sandbox-small", "max_tokens": 100, "system": "Be brief.",
                   "messages": [{"role": "user", "content": "Say hello"}]}
HELLO_GEMINI = {"systemInstruction": {"parts": [{"text": "Be brief."}]},
                "contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}
HELLO = {"openai": HELLO_OPENAI, "anthropic": HELLO_ANTHROPIC, "gemini": HELLO_GEMINI}
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages",
         "gemini": "/v1beta/models/sandbox-small:generateContent"}
# count_tokens("Be brief.") + 4 + count_tokens("Say hello"); count_tokens("Sandbox reply to: Say hello")
HELLO_USAGE = (3 + 4 + 3, 7)

WEATHER_SCHEMA = {"type": "object", "properties": {
    "city": {"type": "string"}, "days": {"type": "integer"}, "unit": {"type": "string", "enum": ["C", "F"]},
    "note": {"type": "string"}}, "required": ["city", "days", "unit"]}
WEATHER_ARGUMENTS = {"city": "sandbox", "days": 1, "unit": "C"}


def post(sandbox, wire: str, body: Any, *, path: str | None = None, headers: dict | None = None,
         timeout: float = 10, **kwargs: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return sandbox.http.post(f"{sandbox.url}{path or PATHS[wire]}", content=content,
                      headers={**AUTH[wire], **(headers or {})}, timeout=timeout, **kwargs)


def sse_data(raw: str) -> list[str]:
    """The data of each SSE event, parsed by the spec (LF or CRLF line ends)."""
    events = raw.replace("\r\n", "\n").split("\n\n")
    return [line[len("data: "):] for event in events for line in event.split("\n") if line.startswith("data: ")]


def sse_event_names(raw: str) -> list[str]:
    return [line[len("event: "):] for line in raw.splitlines() if line.startswith("event: ")]


def configure(sandbox, **knobs: Any) -> dict:
    response = sandbox.http.post(f"{sandbox.url}/_sandbox/config", json=knobs)
    response.raise_for_status()
    return response.json()


@pytest.fixture
def claude(sandbox) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sandbox.url, api_key="sk-test", max_retries=0, timeout=10)


# --- the deterministic model -------------------------------------------------------------


def test_it_counts_tokens_as_utf8_bytes_over_four():
    assert count_tokens("") == 1
    assert count_tokens("abcd") == 1
    assert count_tokens("abcde") == 2
    assert count_tokens("é" * 4) == 2  # 8 bytes


def test_it_builds_tool_arguments_from_the_required_properties_of_the_schema():
    assert sample_arguments(WEATHER_SCHEMA) == WEATHER_ARGUMENTS
    schema = {"type": "OBJECT", "properties": {"a": {"type": "BOOLEAN"}, "b": {"type": ["null", "number"]},
                                               "c": {"type": "object"}, "d": {"type": "array"}},
              "required": ["a", "b", "c", "d"]}
    assert sample_arguments(schema) == {"a": True, "b": 1, "c": {}, "d": []}
    assert sample_arguments({}) == {}


def test_it_splits_replies_into_exactly_the_asked_number_of_chunks():
    assert split_chunks("abcdefgh", 3) == ["ab", "cde", "fgh"]
    assert split_chunks("ab", 4) == ["", "a", "", "b"]


def test_it_cuts_before_the_earliest_stop_sequence_then_at_max_tokens():
    body = {**HELLO_OPENAI, "stop": ["hello", "reply"]}
    reply = plan_reply(parse_request("openai", body))
    assert (reply.text, reply.finish, reply.stop_sequence) == ("Sandbox ", "stop_sequence", "reply")
    reply = plan_reply(parse_request("openai", {**HELLO_OPENAI, "max_tokens": 2}))
    assert (reply.text, reply.finish, reply.usage.completion_tokens) == ("Sandbox ", "max_tokens", 2)
    # A multi-byte character is never cut in half.
    reply = plan_reply(parse_request("openai", {"model": "m", "max_tokens": 5,
                                                "messages": [{"role": "user", "content": "ééééé"}]}))
    assert reply.text == "Sandbox reply to: é"


def test_it_counts_the_same_conversation_the_same_in_all_three_formats():
    tool = {"name": "get_weather", "description": "Weather for a city", "parameters": WEATHER_SCHEMA}
    openai_body = {"model": "m", "tools": [{"type": "function", "function": tool}], "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"days": 2, "city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"}]}
    anthropic_body = {"model": "m", "max_tokens": 50, "system": [{"type": "text", "text": "Be brief."}],
                      "tools": [{"name": "get_weather", "description": "Weather for a city",
                                 "input_schema": WEATHER_SCHEMA}], "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Paris", "days": 2}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny, 21 C"}]}]}
    gemini_body = {"systemInstruction": {"parts": [{"text": "Be brief."}]},
                   "tools": [{"functionDeclarations": [tool]}], "contents": [
        {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris", "days": 2}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather",
                                                         "response": {"result": "Sunny, 21 C"}}}]}]}
    tools_json = json.dumps([tool], sort_keys=True, separators=(",", ":"))
    prompt = (count_tokens("Be brief.") + 4 + count_tokens("Weather in Paris?")
              + 4 + count_tokens("get_weather") + count_tokens('{"city":"Paris","days":2}')
              + 4 + count_tokens("Sunny, 21 C") + count_tokens(tools_json))
    completion = count_tokens("Tool result received: Sunny, 21 C")
    for wire, body in (("openai", openai_body), ("anthropic", anthropic_body), ("gemini", gemini_body)):
        usage = expected_usage(wire, body)
        assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, completion), wire


# --- OpenAI, through the official SDK ----------------------------------------------------------


def test_it_answers_openai_chat_completions_for_the_sdk(oai):
    reply = oai.chat.completions.create(**HELLO_OPENAI)
    assert reply.id.startswith("chatcmpl-")
    assert reply.object == "chat.completion"
    assert reply.model == "sandbox-small"
    assert reply.choices[0].message.content == "Sandbox reply to: Say hello"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == HELLO_USAGE
    assert reply.usage.total_tokens == sum(HELLO_USAGE)


def test_it_streams_openai_chunks_with_usage(oai):
    chunks = list(oai.chat.completions.create(**HELLO_OPENAI, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Sandbox reply to: Say hello"
    assert len(chunks) == 1 + 8 + 1 + 1  # role, 8 content chunks, finish, usage
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == HELLO_USAGE
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_it_streams_openai_chunks_without_usage_unless_asked(sandbox):
    raw = post(sandbox, "openai", {**HELLO_OPENAI, "stream": True}).text
    events = sse_data(raw)
    assert raw.endswith("data: [DONE]\n\n")
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in c and c["choices"] for c in chunks)


def test_it_calls_a_tool_in_openai_format(oai):
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
             {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}]
    first = oai.chat.completions.create(**HELLO_OPENAI, tools=tools)
    assert first.choices[0].finish_reason == "tool_calls"
    assert first.choices[0].message.tool_calls[0].function.name == "get_time"

    forced = {"type": "function", "function": {"name": "get_weather"}}
    reply = oai.chat.completions.create(**HELLO_OPENAI, tools=tools, tool_choice=forced)
    call = reply.choices[0].message.tool_calls[0]
    assert call.id.startswith("call_") and call.type == "function"
    assert json.loads(call.function.arguments) == WEATHER_ARGUMENTS
    assert reply.usage.completion_tokens == count_tokens(call.function.arguments)

    chunks = list(oai.chat.completions.create(**HELLO_OPENAI, tools=tools, tool_choice=forced, stream=True))
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id.startswith("call_") and deltas[0].function.name == "get_weather"
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    none = oai.chat.completions.create(**HELLO_OPENAI, tools=tools, tool_choice="none")
    assert none.choices[0].message.content == "Sandbox reply to: Say hello"


def test_it_replies_to_an_openai_tool_result(oai):
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                                      "function": {"name": "get_weather", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "Sunny " * 30}]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}]
    reply = oai.chat.completions.create(model="m", messages=messages, tools=tools)
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.content == "Tool result received: " + ("Sunny " * 30)[:100]


def test_it_stops_openai_replies_at_max_tokens_with_length(oai):
    reply = oai.chat.completions.create(**HELLO_OPENAI, max_completion_tokens=3)
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content == "Sandbox repl"  # the first 3 * 4 bytes
    assert reply.usage.completion_tokens == 3
    chunks = list(oai.chat.completions.create(**HELLO_OPENAI, max_tokens=3, stream=True,
                                              stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Sandbox repl"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 3


def test_it_stops_openai_replies_at_a_stop_sequence(oai):
    reply = oai.chat.completions.create(**HELLO_OPENAI, stop=[" to:", "box"])
    assert reply.choices[0].message.content == "Sand"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == 1


def test_it_lists_sandbox_models_for_both_sdks(oai, claude):
    assert "sandbox-small" in {m.id for m in oai.models.list()}
    assert "sandbox-small" in {m.id for m in claude.models.list()}


# --- Anthropic, through the official SDK ------------------------------------------------------


def test_it_answers_anthropic_messages_for_the_sdk(claude):
    message = claude.messages.create(**HELLO_ANTHROPIC)
    assert message.id.startswith("msg_")
    assert message.model == "sandbox-small"
    assert message.content[0].type == "text"
    assert message.content[0].text == "Sandbox reply to: Say hello"
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == HELLO_USAGE


def test_it_streams_anthropic_events_in_order(sandbox, claude):
    raw = post(sandbox, "anthropic", {**HELLO_ANTHROPIC, "stream": True}, headers={"x-sandbox-chunks": "3"}).text
    assert sse_event_names(raw) == ["message_start", "content_block_start", "ping", "content_block_delta",
                                    "content_block_delta", "content_block_delta", "content_block_stop",
                                    "message_delta", "message_stop"]
    with claude.messages.stream(**HELLO_ANTHROPIC) as stream:
        assert "".join(stream.text_stream) == "Sandbox reply to: Say hello"
        final = stream.get_final_message()
    plain = claude.messages.create(**HELLO_ANTHROPIC)
    assert final.usage.input_tokens == plain.usage.input_tokens
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert final.stop_reason == "end_turn"


def test_it_calls_a_tool_in_anthropic_format(claude):
    tools = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER_SCHEMA}]
    message = claude.messages.create(**HELLO_ANTHROPIC, tools=tools)
    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert block.type == "tool_use" and block.id.startswith("toolu_")
    assert (block.name, block.input) == ("get_weather", WEATHER_ARGUMENTS)
    with claude.messages.stream(**HELLO_ANTHROPIC, tools=tools) as stream:
        final = stream.get_final_message()
    assert final.content[0].input == WEATHER_ARGUMENTS
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens == message.usage.output_tokens

    answered = claude.messages.create(model="m", max_tokens=100, tools=tools, messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": block.id, "name": "get_weather",
                                           "input": block.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id,
                                      "content": [{"type": "text", "text": "Rainy"}]}]}])
    assert answered.content[0].text == "Tool result received: Rainy"
    assert answered.stop_reason == "end_turn"


def test_it_stops_anthropic_replies_at_max_tokens_and_stop_sequences(claude):
    cut = claude.messages.create(**{**HELLO_ANTHROPIC, "max_tokens": 2})
    assert (cut.content[0].text, cut.stop_reason, cut.usage.output_tokens) == ("Sandbox ", "max_tokens", 2)
    stopped = claude.messages.create(**HELLO_ANTHROPIC, stop_sequences=["hello"])
    assert stopped.content[0].text == "Sandbox reply to: Say "
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "hello")
    with claude.messages.stream(**HELLO_ANTHROPIC, stop_sequences=["hello"]) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "hello")


def test_it_reads_system_messages_inside_anthropic_messages_only_with_the_beta(sandbox):
    """Claude Code's default request puts a system message in `messages`, with Anthropic's beta for it."""
    body = {"model": "sandbox-small", "max_tokens": 100, "messages": [
        {"role": "user", "content": "Say hello"},
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}]}
    refused = post(sandbox, "anthropic", body)
    assert refused.status_code == 400 and refused.json()["error"]["type"] == "invalid_request_error"
    beta = "claude-code-20250219,mid-conversation-system-2026-04-07"
    answered = post(sandbox, "anthropic", body, headers={"anthropic-beta": beta})
    assert answered.status_code == 200, answered.text
    # The system text counts as the top-level one does, and the reply quotes the user's message.
    assert answered.json()["content"][0]["text"] == "Sandbox reply to: Say hello"
    assert answered.json()["usage"]["input_tokens"] == HELLO_USAGE[0]
    assert expected_usage("anthropic", body, anthropic_beta=beta).prompt_tokens == HELLO_USAGE[0]


# Gemini CLI's router asks for this (tests/fixtures/gemini_cli_router_request.json), types in upper case.
ROUTER_SCHEMA = {"type": "OBJECT", "properties": {
    "complexity_reasoning": {"type": "STRING"}, "complexity_score": {"type": "INTEGER"}},
    "required": ["complexity_reasoning", "complexity_score"]}
ROUTER_ANSWER = '{"complexity_reasoning":"sandbox","complexity_score":1}'


@pytest.mark.parametrize(("wire", "path", "body", "text_of"), [
    ("gemini", None, {**HELLO_GEMINI, "generationConfig": {"responseMimeType": "application/json",
                                                           "responseJsonSchema": ROUTER_SCHEMA}},
     lambda a: a["candidates"][0]["content"]["parts"][0]["text"]),
    ("gemini", None, {**HELLO_GEMINI, "generationConfig": {"responseMimeType": "application/json",
                                                           "responseSchema": ROUTER_SCHEMA}},
     lambda a: a["candidates"][0]["content"]["parts"][0]["text"]),
    ("openai", None, {**HELLO_OPENAI, "response_format": {"type": "json_schema", "json_schema": {
        "name": "route", "schema": ROUTER_SCHEMA}}}, lambda a: a["choices"][0]["message"]["content"]),
    ("openai", "/v1/responses", {"model": "m", "input": "Say hello", "text": {"format": {
        "type": "json_schema", "name": "route", "schema": ROUTER_SCHEMA}}},
     lambda a: a["output"][0]["content"][0]["text"]),
    ("anthropic", None, {**HELLO_ANTHROPIC, "output_config": {"format": {"type": "json_schema",
                                                                          "schema": ROUTER_SCHEMA}}},
     lambda a: a["content"][0]["text"]),
    # No structured-output field: the schema given at the end of a system text, as the gateway asks
    # Anthropic (proxy/providers/anthropic.py), is followed as a model would follow it.
    ("anthropic", None, {**HELLO_ANTHROPIC, "system": "Respond only with a JSON value that matches this JSON "
                                                      "Schema: " + json.dumps(ROUTER_SCHEMA)},
     lambda a: a["content"][0]["text"]),
])
def test_it_answers_structured_output_with_a_value_of_the_schema(sandbox, wire, path, body, text_of):
    answered = post(sandbox, wire, body, path=path)
    assert answered.status_code == 200, answered.text
    assert text_of(answered.json()) == ROUTER_ANSWER
    assert plan_reply(parse_request("openai.responses" if path else wire, body)).text == ROUTER_ANSWER


def test_it_answers_a_json_object_asked_without_a_schema_with_an_empty_object(oai):
    reply = oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "Say hello"}],
                                        response_format={"type": "json_object"})
    assert reply.choices[0].message.content == "{}"


def test_it_requires_max_tokens_for_anthropic(sandbox, claude):
    response = post(sandbox, "anthropic", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 400
    assert response.json() == {"type": "error", "error": {"type": "invalid_request_error",
                                                          "message": "max_tokens: Field required"}}
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="m", max_tokens=0, messages=[{"role": "user", "content": "hi"}])


def test_it_counts_anthropic_input_tokens(claude):
    counted = claude.messages.count_tokens(model="m", system="Be brief.",
                                           messages=[{"role": "user", "content": "Say hello"}])
    assert counted.input_tokens == HELLO_USAGE[0]


# --- Gemini, over raw HTTP -----------------------------------------------------------------


def test_it_answers_gemini_generate_content(sandbox):
    data = post(sandbox, "gemini", HELLO_GEMINI).json()
    candidate = data["candidates"][0]
    assert candidate["content"] == {"role": "model", "parts": [{"text": "Sandbox reply to: Say hello"}]}
    assert candidate["finishReason"] == "STOP" and candidate["index"] == 0
    assert data["usageMetadata"] == {"promptTokenCount": HELLO_USAGE[0], "candidatesTokenCount": HELLO_USAGE[1],
                                     "totalTokenCount": sum(HELLO_USAGE)}
    assert data["modelVersion"] == "sandbox-small"


def test_it_streams_gemini_sse_events(sandbox):
    response = post(sandbox, "gemini", HELLO_GEMINI, path="/v1beta/models/sandbox-small:streamGenerateContent",
                    params={"alt": "sse"}, headers={"x-sandbox-chunks": "4"})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(e) for e in sse_data(response.text)]
    assert len(events) == 4
    text = "".join(p["text"] for e in events for p in e["candidates"][0]["content"]["parts"])
    assert text == "Sandbox reply to: Say hello"
    assert all("finishReason" not in e["candidates"][0] and "usageMetadata" not in e for e in events[:-1])
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"
    assert events[-1]["usageMetadata"] == post(sandbox, "gemini", HELLO_GEMINI).json()["usageMetadata"]


def test_it_streams_gemini_as_a_json_array_without_alt_sse(sandbox):
    response = post(sandbox, "gemini", HELLO_GEMINI, path="/v1beta/models/m:streamGenerateContent")
    events = response.json()
    assert len(events) == 8
    assert events[-1]["usageMetadata"]["totalTokenCount"] == sum(HELLO_USAGE)


def test_it_calls_a_gemini_function(sandbox):
    tools = [{"functionDeclarations": [{"name": "get_weather", "parameters": WEATHER_SCHEMA}]}]
    data = post(sandbox, "gemini", {**HELLO_GEMINI, "tools": tools}).json()
    candidate = data["candidates"][0]
    assert candidate["content"]["parts"] == [{"functionCall": {"name": "get_weather", "args": WEATHER_ARGUMENTS}}]
    assert candidate["finishReason"] == "STOP"
    off = {**HELLO_GEMINI, "tools": tools, "toolConfig": {"functionCallingConfig": {"mode": "NONE"}}}
    assert "text" in post(sandbox, "gemini", off).json()["candidates"][0]["content"]["parts"][0]
    streamed = post(sandbox, "gemini", {**HELLO_GEMINI, "tools": tools}, params={"alt": "sse"},
                    path="/v1beta/models/m:streamGenerateContent")
    events = [json.loads(e) for e in sse_data(streamed.text)]
    assert events[-1]["candidates"][0]["content"]["parts"][0]["functionCall"]["args"] == WEATHER_ARGUMENTS


def test_it_stops_gemini_replies_at_max_output_tokens(sandbox):
    body = {**HELLO_GEMINI, "generationConfig": {"maxOutputTokens": 2}}
    data = post(sandbox, "gemini", body).json()
    assert data["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert data["candidates"][0]["content"]["parts"][0]["text"] == "Sandbox "
    assert data["usageMetadata"]["candidatesTokenCount"] == 2


def test_it_takes_the_gemini_key_from_the_header_or_the_query(sandbox):
    url = f"{sandbox.url}/v1beta/models/m:generateContent"
    assert sandbox.http.post(url, json=HELLO_GEMINI, params={"key": "k"}).status_code == 200
    missing = sandbox.http.post(url, json=HELLO_GEMINI)
    assert missing.status_code == 401
    assert missing.json()["error"]["status"] == "UNAUTHENTICATED"


# --- Across formats -------------------------------------------------------------------------


def test_it_reports_the_same_usage_streamed_and_not(sandbox):
    openai_stream = post(sandbox, "openai", {**HELLO_OPENAI, "stream": True,
                                             "stream_options": {"include_usage": True}}).text
    openai_usage = json.loads(sse_data(openai_stream)[-2])["usage"]
    assert openai_usage == post(sandbox, "openai", HELLO_OPENAI).json()["usage"]

    anthropic_stream = sse_data(post(sandbox, "anthropic", {**HELLO_ANTHROPIC, "stream": True}).text)
    streamed = (json.loads(anthropic_stream[0])["message"]["usage"]["input_tokens"],
                json.loads(anthropic_stream[-2])["usage"]["output_tokens"])
    plain = post(sandbox, "anthropic", HELLO_ANTHROPIC).json()["usage"]
    assert streamed == (plain["input_tokens"], plain["output_tokens"]) == HELLO_USAGE

    gemini_stream = post(sandbox, "gemini", HELLO_GEMINI, params={"alt": "sse"},
                         path="/v1beta/models/sandbox-small:streamGenerateContent").text
    assert json.loads(sse_data(gemini_stream)[-1])["usageMetadata"]["promptTokenCount"] == HELLO_USAGE[0]


def test_it_answers_the_same_request_the_same_way(sandbox):
    for wire in ("anthropic", "gemini"):
        assert post(sandbox, wire, HELLO[wire]).content == post(sandbox, wire, HELLO[wire]).content
    first, second = (post(sandbox, "openai", HELLO_OPENAI).json() for _ in range(2))
    first.pop("created")
    second.pop("created")
    assert first == second
    stream = {**HELLO_ANTHROPIC, "stream": True}
    assert post(sandbox, "anthropic", stream).content == post(sandbox, "anthropic", stream).content
    other = post(sandbox, "anthropic", {**HELLO_ANTHROPIC, "max_tokens": 99}).json()
    assert other["id"] != post(sandbox, "anthropic", HELLO_ANTHROPIC).json()["id"]


# --- Errors ---------------------------------------------------------------------------------

ERROR_SHAPES = {
    ("openai", 429): {"type": "requests", "code": "rate_limit_exceeded"},
    ("openai", 500): {"type": "server_error", "code": None},
    ("openai", 503): {"type": "server_error", "code": None},
    ("openai", 529): {"type": "server_error", "code": None},
    ("anthropic", 429): {"type": "rate_limit_error"},
    ("anthropic", 500): {"type": "api_error"},
    ("anthropic", 503): {"type": "api_error"},
    ("anthropic", 529): {"type": "overloaded_error"},
    ("gemini", 429): {"status": "RESOURCE_EXHAUSTED", "code": 429},
    ("gemini", 500): {"status": "INTERNAL", "code": 500},
    ("gemini", 503): {"status": "UNAVAILABLE", "code": 503},
    ("gemini", 529): {"status": "UNAVAILABLE", "code": 529},
}


@pytest.mark.parametrize(("wire", "status"), sorted(ERROR_SHAPES))
def test_it_fails_with_the_configured_status_in_the_format_shape(sandbox, wire, status):
    configure(sandbox, fail_status=status)
    response = post(sandbox, wire, HELLO[wire])
    assert response.status_code == status
    body = response.json()
    error = body["error"]
    assert error.items() >= ERROR_SHAPES[wire, status].items()
    assert error["message"]
    if wire == "anthropic":
        assert body["type"] == "error"
    if wire == "openai":
        assert set(error) == {"message", "type", "param", "code"}
    assert response.headers.get("retry-after") == (None if status == 500 else "1")


def test_its_failures_can_carry_a_retry_after_and_a_real_providers_text(sandbox):
    configure(sandbox, fail_status=429, fail_count=1, fail_retry_after=5, fail_realistic=1)
    response = post(sandbox, "openai", HELLO_OPENAI)
    assert (response.status_code, response.headers["retry-after"]) == (429, "5")
    assert "in organization org-" in response.json()["error"]["message"]
    openai_401 = post(sandbox, "openai", HELLO_OPENAI, headers={"x-sandbox-fail-status": "401",
                                                                "x-sandbox-fail-realistic": "1"})
    assert openai_401.json()["error"] == {
        "message": "Incorrect API key provided: sk-proj-***abcd. You can find your API key at "
                   "https://platform.openai.com/account/api-keys.",
        "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
    gemini = post(sandbox, "gemini", HELLO_GEMINI, headers={"x-sandbox-fail-status": "400",
                                                           "x-sandbox-fail-realistic": "1"})
    assert gemini.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    # Without the knob, the sandbox's own text, as before.
    configure(sandbox, fail_realistic=0)
    assert "Sandbox: simulated" in post(sandbox, "openai", HELLO_OPENAI,
                                        headers={"x-sandbox-fail-status": "401"}).json()["error"]["message"]


def test_it_fails_only_the_next_n_requests_then_recovers(sandbox, oai):
    assert configure(sandbox, fail_status=503, fail_count=2)["fail_count"] == 2
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            oai.chat.completions.create(**HELLO_OPENAI)
    assert oai.chat.completions.create(**HELLO_OPENAI).choices[0].message.content
    config = sandbox.http.get(f"{sandbox.url}/_sandbox/config").json()
    assert (config["fail_status"], config["fail_count"]) == (None, 0)


def test_it_fails_one_request_in_n_for_as_long_as_configured(sandbox, oai):
    assert configure(sandbox, fail_status=500, fail_every=3)["fail_every"] == 3
    outcomes = []
    for _ in range(7):
        try:
            oai.with_options(max_retries=0).chat.completions.create(**HELLO_OPENAI)
            outcomes.append("ok")
        except openai.InternalServerError:
            outcomes.append("failed")
    assert outcomes == ["ok", "ok", "failed", "ok", "ok", "failed", "ok"]
    config = sandbox.http.get(f"{sandbox.url}/_sandbox/config").json()
    assert (config["fail_status"], config["fail_every"]) == (500, 3)


def test_it_fails_one_request_by_header_and_the_sdks_see_the_right_error(sandbox, oai, claude):
    with pytest.raises(openai.RateLimitError):
        oai.chat.completions.create(**HELLO_OPENAI, extra_headers={"x-sandbox-fail-status": "429"})
    with pytest.raises(anthropic.OverloadedError) as caught:
        claude.messages.create(**HELLO_ANTHROPIC, extra_headers={"x-sandbox-fail-status": "529"})
    assert caught.value.body["error"]["type"] == "overloaded_error"
    configure(sandbox, fail_status=500)
    # A header of 0 exempts one request from the server-wide failure.
    assert post(sandbox, "openai", HELLO_OPENAI, headers={"x-sandbox-fail-status": "0"}).status_code == 200


@pytest.mark.parametrize(("wire", "body", "param"), [
    ("openai", b"{nope", None),
    ("openai", {"messages": [{"role": "user", "content": "x"}]}, "model"),
    ("openai", {"model": "m", "messages": []}, "messages"),
    ("openai", {"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ("openai", {"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ("openai", {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
    ("openai", {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}, "max_tokens"),
    ("openai", {"model": "m", "messages": [{"role": "user", "content": "x"}],
                "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ("anthropic", b"[1, 2]", None),
    ("anthropic", {"model": "m", "max_tokens": 5, "messages": "hi"}, None),
    ("anthropic", {"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, None),
    ("gemini", b"\xff\xfe{}", None),
    ("gemini", {"contents": []}, None),
    ("gemini", {"contents": [{"parts": [{"text": 1}]}]}, None),
])
def test_it_rejects_bad_bodies_with_a_400_in_the_format_shape(sandbox, wire, body, param):
    response = post(sandbox, wire, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"]
    if wire == "openai":
        assert (error["type"], error["param"]) == ("invalid_request_error", param)
    elif wire == "anthropic":
        assert error["type"] == "invalid_request_error"
    else:
        assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")


def test_it_answers_unknown_paths_with_a_404_in_a_sensible_shape(sandbox):
    assert sandbox.http.post(f"{sandbox.url}/v1/nope", headers=OPENAI_AUTH).json()["error"]["type"] == \
        "invalid_request_error"
    anthropic_404 = sandbox.http.post(f"{sandbox.url}/v1/nope", headers=ANTHROPIC_AUTH)
    assert (anthropic_404.status_code, anthropic_404.json()["error"]["type"]) == (404, "not_found_error")
    assert sandbox.http.get(f"{sandbox.url}/v1beta/nope").json()["error"]["status"] == "NOT_FOUND"
    assert sandbox.http.get(f"{sandbox.url}/v1/chat/completions", headers=OPENAI_AUTH).status_code == 405


def test_a_bug_in_the_sandbox_still_answers_in_the_format_shape(sandbox, monkeypatch):
    def broken(conv):
        raise RuntimeError("boom")

    monkeypatch.setattr("proxy.sandbox.server.plan_reply", broken)
    response = post(sandbox, "anthropic", HELLO_ANTHROPIC)
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "api_error"


def test_it_refuses_a_missing_key_in_each_format(sandbox):
    openai_401 = sandbox.http.post(f"{sandbox.url}{PATHS['openai']}", json=HELLO_OPENAI)
    assert (openai_401.status_code, openai_401.json()["error"]["code"]) == (401, "invalid_api_key")
    anthropic_401 = sandbox.http.post(f"{sandbox.url}{PATHS['anthropic']}", json=HELLO_ANTHROPIC,
                               headers={"anthropic-version": "2023-06-01"})
    assert (anthropic_401.status_code, anthropic_401.json()["error"]["type"]) == (401, "authentication_error")
    no_version = sandbox.http.post(f"{sandbox.url}{PATHS['anthropic']}", json=HELLO_ANTHROPIC,
                                   headers={"x-api-key": "k"})
    assert no_version.status_code == 400


def test_it_accepts_only_the_required_key_when_one_is_set(sandbox):
    configure(sandbox, require_key="sk-upstream")
    for wire in ("openai", "anthropic", "gemini"):
        assert post(sandbox, wire, HELLO[wire]).status_code == 401, wire
    good = {"openai": {"authorization": "Bearer sk-upstream"}, "anthropic": {"x-api-key": "sk-upstream"},
            "gemini": {"x-goog-api-key": "sk-upstream"}}
    for wire in ("openai", "anthropic", "gemini"):
        assert post(sandbox, wire, HELLO[wire], headers=good[wire]).status_code == 200, wire
    seen = sandbox.http.get(f"{sandbox.url}/_sandbox/requests", params={"limit": 1}).json()["requests"]
    assert seen[0]["headers"]["x-goog-api-key"] == "sk-upstream"


# --- Knobs ----------------------------------------------------------------------------------


def test_it_drops_the_stream_after_disconnect_after_events(sandbox, claude):
    received = []
    with sandbox.http.stream("POST", f"{sandbox.url}{PATHS['openai']}", json={**HELLO_OPENAI, "stream": True},
                      headers={**OPENAI_AUTH, "x-sandbox-disconnect-after": "3"}) as response:
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            received.extend(line for line in response.iter_lines() if line.startswith("data: "))
    assert len(received) == 3
    assert "[DONE]" not in "".join(received)

    configure(sandbox, disconnect_after=4)
    try:
        with claude.messages.stream(**HELLO_ANTHROPIC) as stream:
            stream.get_final_message()
    except Exception as exc:  # the type belongs to the SDK's HTTP library, whichever it uses
        assert "incomplete chunked read" in str(exc)
    else:
        pytest.fail("the stream was not cut")
    # The server lives on, and only streams are cut.
    assert post(sandbox, "anthropic", HELLO_ANTHROPIC).status_code == 200
    assert sandbox.http.get(f"{sandbox.url}/_sandbox/stats").json()["by_status"] == {"200": 3}


def test_it_waits_latency_ms_before_answering(sandbox):
    started = time.monotonic()
    assert post(sandbox, "openai", HELLO_OPENAI, headers={"x-sandbox-latency-ms": "200"}).status_code == 200
    assert time.monotonic() - started >= 0.2


def test_it_spaces_stream_events_by_chunk_delay_ms(sandbox):
    arrivals = []
    with sandbox.http.stream("POST", f"{sandbox.url}{PATHS['openai']}", json={**HELLO_OPENAI, "stream": True},
                      headers={**OPENAI_AUTH, "x-sandbox-chunk-delay-ms": "60", "x-sandbox-chunks": "3"}) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic())
    assert len(arrivals) == 1 + 3 + 1 + 1  # role, 3 pieces, finish, [DONE]
    assert arrivals[-1] - arrivals[0] >= 5 * 0.06


def test_it_hangs_long_enough_for_a_client_timeout(sandbox):
    with pytest.raises(httpx.ReadTimeout):
        post(sandbox, "openai", HELLO_OPENAI, headers={"x-sandbox-hang-ms": "800"}, timeout=0.2)
    # The sandbox finishes the abandoned request later; wait for it, or it lands in the stats of
    # the next tests (which reset them first) on a loaded machine.
    deadline = time.monotonic() + 10
    while sandbox.http.get(f"{sandbox.url}/_sandbox/stats").json()["requests"] < 1:
        assert time.monotonic() < deadline, "the hung request never finished"
        time.sleep(0.05)


def test_it_rejects_a_bad_override_header(sandbox):
    response = post(sandbox, "anthropic", HELLO_ANTHROPIC, headers={"x-sandbox-chunks": "0"})
    assert response.status_code == 400
    assert "x-sandbox-chunks" in response.json()["error"]["message"]


# --- Control endpoints ------------------------------------------------------------------------


def test_it_merges_runtime_config_and_resets_to_the_startup_config(sandbox):
    assert sandbox.http.get(f"{sandbox.url}/_sandbox/health").json() == {"status": "ok"}
    config = configure(sandbox, chunks=2, latency_ms=5)
    assert (config["chunks"], config["latency_ms"], config["chunk_delay_ms"]) == (2, 5, 0)
    assert len(sse_data(post(sandbox, "openai", {**HELLO_OPENAI, "stream": True}).text)) == 1 + 2 + 1 + 1
    bad = sandbox.http.post(f"{sandbox.url}/_sandbox/config", json={"chunks": 0, "colour": "red"})
    assert bad.status_code == 400 and "colour" in bad.json()["error"]
    assert sandbox.http.post(f"{sandbox.url}/_sandbox/config", json={"chunks": 0}).status_code == 400
    reset = sandbox.http.post(f"{sandbox.url}/_sandbox/reset").json()
    assert reset == {"latency_ms": 0, "chunk_delay_ms": 0, "chunks": 8, "fail_status": None, "fail_count": 0,
                     "fail_every": 0, "disconnect_after": None, "hang_ms": 0, "require_key": None,
                     "cache_read_tokens": 0, "cache_read_percent": 0, "cache_write_tokens": 0,
                     "cache_write_percent": 0, "reasoning_tokens": 0, "fail_retry_after": None,
                     "fail_realistic": 0}
    assert sandbox.http.get(f"{sandbox.url}/_sandbox/stats").json() == {"requests": 0, "by_path": {}, "by_status": {},
                                                                        "client_disconnects": 0}


def test_it_counts_requests_by_path_and_status(sandbox):
    post(sandbox, "openai", HELLO_OPENAI)
    post(sandbox, "openai", HELLO_OPENAI, headers={"x-sandbox-fail-status": "429"})
    post(sandbox, "gemini", HELLO_GEMINI)
    stats = sandbox.http.get(f"{sandbox.url}/_sandbox/stats").json()
    assert stats == {"requests": 3,
                     "by_path": {"/v1/chat/completions": 2, "/v1beta/models/sandbox-small:generateContent": 1},
                     "by_status": {"200": 2, "429": 1}, "client_disconnects": 0}


def test_it_keeps_the_last_requests_newest_first(sandbox):
    post(sandbox, "openai", HELLO_OPENAI, headers={"X-Trace": "one"})
    post(sandbox, "gemini", b"not json", params={"alt": "sse"}, path="/v1beta/models/m:streamGenerateContent")
    seen = sandbox.http.get(f"{sandbox.url}/_sandbox/requests", params={"limit": 5}).json()["requests"]
    assert len(seen) == 2
    assert seen[0] == {"method": "POST", "path": "/v1beta/models/m:streamGenerateContent",
                       "query": {"alt": "sse"}, "headers": seen[0]["headers"], "body": None,
                       "format": "gemini.streamGenerateContent"}
    assert seen[1]["body"] == HELLO_OPENAI
    assert seen[1]["headers"]["x-trace"] == "one"
    assert seen[1]["headers"]["authorization"] == "Bearer sk-test"
    only = sandbox.http.get(f"{sandbox.url}/_sandbox/requests", params={"limit": 1}).json()["requests"]
    assert only == seen[:1]


# --- The command -----------------------------------------------------------------------------


def test_the_command_serves_the_app_with_uvicorn_and_the_knobs(monkeypatch):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    call_command("sandbox_provider", "--port", "9999", "--chunks", "3", "--fail-status", "529",
                 "--fail-count", "2", "--fail-every", "4", "--require-key", "K", "--log-level", "error", verbosity=0)
    app, kwargs = calls[0]
    assert isinstance(app, SandboxApp)
    assert app.config == SandboxConfig(chunks=3, fail_status=529, fail_count=2, fail_every=4, require_key="K")
    assert kwargs["host"] == "127.0.0.1" and kwargs["port"] == 9999
    assert (kwargs["log_level"], kwargs["loop"], kwargs["http"], kwargs["access_log"]) == ("error", "auto", "auto",
                                                                                          False)
    with pytest.raises(CommandError):
        call_command("sandbox_provider", "--fail-status", "200", verbosity=0)
