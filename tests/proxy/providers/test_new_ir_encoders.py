"""OpenAI and Gemini providers given the IR's new parts: system turns, reasoning, effort, structured output, n,
and the token classes of their answers (issue #14)."""
from __future__ import annotations

import orjson
import pytest

from proxy.providers import gemini, openai
from proxy.providers.common import SYSTEM_NOTE_PREFIX, json_schema_from_gemini
from proxy.providers.ir import (
    ChatRequest,
    Message,
    Reasoning,
    ReasoningDelta,
    StreamStart,
    StreamUsage,
    Text,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolResult,
    Usage,
)
from proxy.providers.sse import SSEParser


def conversation(**changes) -> ChatRequest:
    return ChatRequest(system=["Be brief."], messages=[
        Message("user", [Text("Weather?")]),
        Message("assistant", [Reasoning("plan", "sig", wire="anthropic"),
                              ToolCall("call_1", "get_weather", '{"city":"Paris"}')]),
        Message("tool", [ToolResult("call_1", "sunny", "get_weather")]),
        Message("system", [Text("Answer in French.")]),
        Message("user", [Text("Merci")]),
    ], **changes)


# --- OpenAI --------------------------------------------------------------------------------


def test_openai_gets_the_system_message_where_it_was_and_no_reasoning():
    payload = openai.encode_request(conversation(), model="gpt-4o", stream=False)
    assert [m["role"] for m in payload["messages"]] == ["system", "user", "assistant", "tool", "system", "user"]
    assert payload["messages"][4] == {"role": "system", "content": "Answer in French."}
    assert "plan" not in orjson.dumps(payload).decode()


@pytest.mark.parametrize(("model", "changes", "expected"), [
    ("gpt-4o", {"reasoning_effort": "high"}, {"temperature": 0.5, "top_p": 0.9}),
    ("gpt-5", {"reasoning_effort": "high"}, {"reasoning_effort": "high"}),
    ("o3-mini", {"thinking_budget": 2048}, {"reasoning_effort": "medium"}),
    ("openai/gpt-oss-120b", {"reasoning_effort": "low"}, {"reasoning_effort": "low"}),
    ("gpt-5-mini", {}, {}),
])
def test_reasoning_effort_goes_only_to_models_that_take_it(model, changes, expected):
    request = ChatRequest(messages=[Message("user", [Text("hi")])], temperature=0.5, top_p=0.9, **changes)
    payload = openai.encode_request(request, model=model, stream=False)
    fields = {k: payload[k] for k in ("reasoning_effort", "temperature", "top_p") if k in payload}
    assert fields == expected


def test_openai_gets_n_and_structured_output():
    request = ChatRequest(messages=[Message("user", [Text("hi")])], n=3, response_format={"type": "json_object"})
    payload = openai.encode_request(request, model="gpt-4o", stream=False)
    assert payload["n"] == 3 and payload["response_format"] == {"type": "json_object"}
    assert "n" not in openai.encode_request(ChatRequest(messages=[]), model="gpt-4o", stream=False)


def test_an_openai_caller_s_later_developer_message_stays_in_place_and_its_settings_are_read():
    request = openai.decode_request({"model": "m", "n": 2, "reasoning_effort": "minimal", "messages": [
        {"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "developer", "content": "Now in French."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"},
                                                                   "strict": True}}})
    assert request.system == ["Be brief."]
    assert [m.role for m in request.messages] == ["user", "system"]
    assert (request.n, request.reasoning_effort) == (2, "minimal")
    assert request.response_format == {"type": "json_schema", "name": "r", "schema": {"type": "object"},
                                       "strict": True}


def test_openai_streams_give_usage_details_and_compatible_servers_reasoning():
    chunks = [
        {"id": "c", "model": "deepseek-reasoner", "choices": [{"index": 0, "delta": {"reasoning_content": "Hmm"}}]},
        {"id": "c", "model": "deepseek-reasoner", "choices": [{"index": 0, "delta": {"content": "Hi"}}]},
        {"id": "c", "model": "deepseek-reasoner", "choices": [], "usage": {
            "prompt_tokens": 100, "completion_tokens": 20, "prompt_tokens_details": {"cached_tokens": 80},
            "completion_tokens_details": {"reasoning_tokens": 12}}},
    ]
    decoder = openai.StreamDecoder()
    events = [e for c in chunks for e in decoder.feed(None, orjson.dumps(c))]
    assert events == [StreamStart("c", "deepseek-reasoner"), ReasoningDelta("Hmm", wire="openai"), TextDelta("Hi"),
                      StreamUsage(100, 20, cache_read_tokens=80, reasoning_tokens=12)]
    encoder = openai.StreamEncoder(include_usage=True)
    for event in events:
        encoder.encode(event)
    usage = orjson.loads(encoder.tail().split(b"data: ")[-1])["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 80}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 12}


# --- Gemini --------------------------------------------------------------------------------


def test_gemini_gets_the_system_message_as_a_marked_user_turn():
    payload = gemini.encode_request(conversation(), model="gemini-2.5-pro")
    assert payload["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert [c["role"] for c in payload["contents"]] == ["user", "model", "user"]
    assert payload["contents"][2]["parts"][1:] == [{"text": SYSTEM_NOTE_PREFIX + "Answer in French."},
                                                   {"text": "Merci"}]
    assert "plan" not in orjson.dumps(payload).decode()  # Anthropic's thinking means nothing to Gemini


@pytest.mark.parametrize(("model", "changes", "config"), [
    ("gemini-2.5-flash", {"reasoning_effort": "medium"}, {"thinkingBudget": 4096}),
    ("gemini-2.5-pro", {"thinking_budget": 8192}, {"thinkingBudget": 8192}),
    ("gemini-3-flash-preview", {"reasoning_effort": "medium"}, {"thinkingLevel": "MEDIUM"}),
    ("gemini-3-flash-preview", {"reasoning_effort": "minimal"}, {"thinkingLevel": "MINIMAL"}),
    ("gemini-3.1-pro-preview", {"reasoning_effort": "medium"}, {"thinkingLevel": "HIGH"}),
    ("gemini-3.1-pro-preview", {"reasoning_effort": "low"}, {"thinkingLevel": "LOW"}),
    ("gemini-3.1-pro-preview", {"thinking_budget": 2048, "reasoning_effort": "high"}, {"thinkingBudget": 2048}),
    ("gemini-3-flash", {}, None),
])
def test_gemini_gets_a_budget_or_a_level_never_both(model, changes, config):
    payload = gemini.encode_request(ChatRequest(messages=[Message("user", [Text("hi")])], **changes), model=model)
    assert payload.get("generationConfig", {}).get("thinkingConfig") == config


def test_gemini_gets_structured_output_and_candidate_count():
    schema = {"$schema": "x", "type": "object", "additionalProperties": False,
              "properties": {"a": {"type": "string"}}}
    request = ChatRequest(messages=[Message("user", [Text("hi")])], n=2,
                          response_format={"type": "json_schema", "name": "r", "schema": schema})
    config = gemini.encode_request(request, model="gemini-2.5-flash")["generationConfig"]
    assert config == {"candidateCount": 2, "responseMimeType": "application/json",
                      "responseSchema": {"type": "object", "properties": {"a": {"type": "string"}}}}


def test_replayed_calls_carry_a_signature_on_gemini_3_only():
    request = ChatRequest(messages=[Message("user", [Text("hi")]), Message("assistant", [
        ToolCall("a", "f", "{}"), ToolCall("b", "f", "{}")]), Message("tool", [ToolResult("a", "1", "f"),
                                                                               ToolResult("b", "2", "f")])])
    calls = gemini.encode_request(request, model="gemini-3-pro-preview")["contents"][1]["parts"]
    # Only the first call of a step carries it (parallel calls share the first one's).
    assert [c.get("thoughtSignature") for c in calls] == [gemini.SKIP_SIGNATURE, None]
    for model in ("gemini-2.5-pro", "gemma-3-27b-it", ""):
        calls = gemini.encode_request(request, model=model)["contents"][1]["parts"]
        assert all("thoughtSignature" not in c for c in calls)


def test_geminis_own_signatures_go_back_on_the_part_they_came_with():
    answer = gemini.decode_response({"candidates": [{"content": {"role": "model", "parts": [
        {"text": "Thinking about it", "thought": True},
        {"functionCall": {"name": "f", "args": {"x": 1}}, "thoughtSignature": "real-sig"}]},
        "finishReason": "STOP"}], "responseId": "r", "modelVersion": "gemini-3-pro-preview"})
    assert answer.parts[:2] == [Reasoning("Thinking about it", wire="gemini"), Reasoning("", "real-sig", wire="gemini")]
    assert isinstance(answer.parts[2], ToolCall) and answer.finish == "tool_use"
    request = ChatRequest(messages=[Message("user", [Text("hi")]), Message("assistant", answer.parts),
                                    Message("tool", [ToolResult(answer.parts[2].id, "ok", "f")])])
    parts = gemini.encode_request(request, model="gemini-3-pro-preview")["contents"][1]["parts"]
    assert parts == [{"text": "Thinking about it", "thought": True},
                     {"functionCall": {"name": "f", "args": {"x": 1}}, "thoughtSignature": "real-sig"}]


GEMINI_USAGE = {"promptTokenCount": 1000, "cachedContentTokenCount": 600, "candidatesTokenCount": 40,
                "thoughtsTokenCount": 60, "toolUsePromptTokenCount": 5, "totalTokenCount": 1105}


def test_gemini_usage_counts_thoughts_as_output_and_cached_content_as_part_of_the_prompt():
    answer = gemini.decode_response({"candidates": [{"content": {"parts": [{"text": "x"}]}}],
                                     "usageMetadata": GEMINI_USAGE})
    assert answer.usage == Usage(1005, 100, cache_read_tokens=600, reasoning_tokens=60)
    event = b"data: " + orjson.dumps({"candidates": [], "usageMetadata": GEMINI_USAGE}) + b"\r\n\r\n"
    assert gemini.stream_usage(event) == StreamUsage(1005, 100, cache_read_tokens=600, reasoning_tokens=60)
    assert gemini.stream_usage(b'data: {"candidates": []}\r\n\r\n') is None


def test_a_gemini_stream_gives_thoughts_and_signatures_as_reasoning():
    stream = b"".join(b"data: " + orjson.dumps(c) + b"\r\n\r\n" for c in [
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hmm", "thought": True}]}}],
         "responseId": "r", "modelVersion": "gemini-3-pro-preview"},
        {"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "f", "args": {}}, "thoughtSignature": "s1"}]}, "finishReason": "STOP"}],
         "usageMetadata": GEMINI_USAGE},
    ])
    decoder = gemini.StreamDecoder()
    events = [e for n, d in SSEParser().feed(stream) for e in decoder.feed(n, d)] + decoder.close()
    assert events[1:3] == [ReasoningDelta("Hmm", wire="gemini"), ReasoningDelta("", "s1", wire="gemini")]
    assert isinstance(events[3], ToolCallStart) and isinstance(events[4], ToolCallDelta)
    assert events[-1] == StreamUsage(1005, 100, cache_read_tokens=600, reasoning_tokens=60)


def test_geminis_schema_dialect_becomes_json_schema():
    assert json_schema_from_gemini({
        "type": "OBJECT", "propertyOrdering": ["a"], "required": ["a"],
        "properties": {"a": {"type": "ARRAY", "items": {"type": "STRING", "enum": ["X"]}},
                       "type": {"type": "INTEGER", "nullable": True}}}) == {
        "type": "object", "required": ["a"],
        "properties": {"a": {"type": "array", "items": {"type": "string", "enum": ["X"]}},
                       "type": {"type": ["integer", "null"]}}}
