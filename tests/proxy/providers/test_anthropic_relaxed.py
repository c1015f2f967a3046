"""Anthropic Messages as Claude Code sends it today: validated less, translated or refused clearly (issue #14).

The fixtures are real requests captured from Claude Code 2.1.197 by
tests/fixtures/capture_agent_requests.py.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.errors import GatewayError
from proxy.parsing import validate_anthropic_messages
from proxy.providers import anthropic, gemini, openai
from proxy.providers.common import SYSTEM_NOTE_PREFIX
from proxy.providers.ir import (
    ChatRequest,
    ChatResponse,
    Message,
    Reasoning,
    ReasoningDelta,
    StreamFinish,
    StreamStart,
    StreamUsage,
    Text,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolChoice,
    ToolResult,
    TranslationError,
    Usage,
)
from proxy.providers.sse import SSEParser
from tests.fixtures.capture_agent_requests import require_agent, run_claude
from tests.proxy.providers.canned import serve

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def captured(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


CLAUDE_CODE = captured("claude_code_request")
CLAUDE_CODE_SONNET_45 = captured("claude_code_sonnet45_request")
CLAUDE_CODE_TOOL_TURN = captured("claude_code_tool_turn_request")


def body(**changes) -> dict:
    return {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], **changes}


# --- The captured requests -------------------------------------------------------------------


def test_the_captured_claude_code_request_is_what_the_issue_describes():
    sent = CLAUDE_CODE["body"]
    assert CLAUDE_CODE["headers"]["user-agent"].startswith("claude-cli/2.1.197")
    assert len(CLAUDE_CODE["headers"]["anthropic-beta"].split(",")) == 8
    assert "mid-conversation-system-2026-04-07" in CLAUDE_CODE["headers"]["anthropic-beta"]
    assert CLAUDE_CODE["headers"]["x-api-key"] == "tg-REDACTED"
    assert sent["model"] == "claude-opus-4-8" and sent["stream"] is True
    assert sent["messages"][1]["role"] == "system"
    assert sent["thinking"] == {"type": "adaptive"} and sent["output_config"] == {"effort": "high"}
    assert {"context_management", "metadata"} <= set(sent)
    assert any("cache_control" in block for block in sent["system"])


@pytest.mark.parametrize("fixture", [CLAUDE_CODE, CLAUDE_CODE_SONNET_45, CLAUDE_CODE_TOOL_TURN],
                         ids=["default", "sonnet-4-5", "tool-turn"])
def test_every_captured_claude_code_request_passes_validation(fixture):
    validate_anthropic_messages(fixture["body"])


def test_the_claude_code_request_decodes_with_its_system_message_in_place():
    sent = CLAUDE_CODE["body"]
    request = anthropic.decode_request(sent)
    assert request.system == ["\n".join(block["text"] for block in sent["system"])]
    assert [m.role for m in request.messages] == ["user", "system"]
    assert request.messages[1].parts == [Text(sent["messages"][1]["content"])]
    assert request.reasoning_effort == "high"  # thinking adaptive + output_config.effort high
    assert request.thinking_budget is None
    assert request.max_tokens == sent["max_tokens"] and request.stream is True
    assert [t.name for t in request.tools] == [t["name"] for t in sent["tools"]]
    assert request.tools[0].parameters == sent["tools"][0]["input_schema"]
    assert request.user == sent["metadata"]["user_id"]


def test_the_older_models_request_maps_its_thinking_budget():
    request = anthropic.decode_request(CLAUDE_CODE_SONNET_45["body"])
    assert request.thinking_budget == CLAUDE_CODE_SONNET_45["body"]["thinking"]["budget_tokens"] == 31999
    assert [m.role for m in request.messages] == ["user"]


def test_the_tool_turn_keeps_the_signed_thinking_before_the_call():
    request = anthropic.decode_request(CLAUDE_CODE_TOOL_TURN["body"])
    assert [m.role for m in request.messages] == ["user", "system", "assistant", "tool"]
    thinking, call = request.messages[2].parts
    assert thinking == Reasoning("I should read the file.", "c2lnbmF0dXJlLWNhcHR1cmU=", wire="anthropic")
    assert isinstance(call, ToolCall) and call.name == "Read"
    (result,) = request.messages[3].parts
    assert isinstance(result, ToolResult) and result.tool_call_id == call.id and result.name == "Read"
    assert "hello from the capture" in result.content


def test_the_claude_code_tool_turn_crosses_to_openai_without_its_reasoning():
    request = anthropic.decode_request(CLAUDE_CODE_TOOL_TURN["body"])
    payload = openai.encode_request(request, model="gpt-5", stream=True)
    roles = [m["role"] for m in payload["messages"]]
    assert roles == ["system", "user", "system", "assistant", "tool"]
    assert payload["messages"][2]["content"] == CLAUDE_CODE_TOOL_TURN["body"]["messages"][1]["content"]
    assert "I should read the file." not in orjson.dumps(payload).decode()
    assert payload["reasoning_effort"] == "high"


def test_the_claude_code_tool_turn_crosses_to_gemini_with_the_system_note_and_a_skip_signature():
    request = anthropic.decode_request(CLAUDE_CODE_TOOL_TURN["body"])
    payload = gemini.encode_request(request, model="gemini-3-pro-preview")
    assert [c["role"] for c in payload["contents"]] == ["user", "model", "user"]
    assert payload["contents"][0]["parts"][-1]["text"].startswith(SYSTEM_NOTE_PREFIX + "Available agent types")
    call = payload["contents"][1]["parts"][0]
    # Anthropic's signature means nothing to Gemini 3, which wants one: Google's documented skip value.
    assert call["thoughtSignature"] == gemini.SKIP_SIGNATURE and call["functionCall"]["name"] == "Read"
    assert payload["generationConfig"]["thinkingConfig"] == {"thinkingLevel": "HIGH"}


# --- Validation: only what the gateway must understand -------------------------------------


@pytest.mark.parametrize("changes", [
    {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]},
    {"messages": [{"role": "user", "content": [{"type": "container_upload", "file_id": "f"},
                                               {"type": "brand_new_block", "x": 1}]}]},
    {"thinking": {"type": "enabled", "budget_tokens": 2048}}, {"thinking": {"type": "adaptive"}},
    {"thinking": {"type": "disabled"}}, {"output_config": {"effort": "max"}},
    {"context_management": {"edits": []}}, {"metadata": {"user_id": "u"}}, {"service_tier": "auto"},
    {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}}, {"top_k": 5},
    {"tools": [{"type": "web_search_20250305", "name": "web_search"}, {"type": "bash_20250124", "name": "bash"}]},
    {"stop_sequences": ["x"]}, {"system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}]},
    {"temperature": "left for Anthropic to judge"},
], ids=lambda c: next(iter(c)))
def test_validation_lets_anthropics_current_fields_through(changes):
    validate_anthropic_messages(body(**changes))


@pytest.mark.parametrize(("changes", "param"), [
    ({"model": ""}, "model"), ({"model": 3}, "model"), ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"), ({"messages": ["hi"]}, "messages.0"),
    ({"messages": [{"content": "hi"}]}, "messages.0.role"), ({"messages": [{"role": {"a": 1}, "content": "x"}]},
                                                             "messages.0.role"),
    ({"messages": [{"role": "user"}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages.0.content.0"),
    ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": True}, "max_tokens"), ({"stream": "yes"}, "stream"),
])
def test_validation_refuses_what_the_gateway_cannot_read(changes, param):
    with pytest.raises(GatewayError) as caught:
        validate_anthropic_messages(body(**changes))
    assert caught.value.status == 400 and caught.value.param == param


# --- Cross format: translated, dropped or refused ------------------------------------------


def test_blocks_of_every_kind_are_translated_or_dropped():
    request = anthropic.decode_request(body(
        system="Be brief.",
        messages=[
            {"role": "system", "content": [{"type": "text", "text": "Leading system message."}]},
            {"role": "user", "content": [
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Notes"},
                 "title": "notes.txt", "cache_control": {"type": "ephemeral"}},
                {"type": "search_result", "source": "https://x", "title": "Result",
                 "content": [{"type": "text", "text": "found"}]},
                {"type": "text", "text": "Summarise."}]},
            {"role": "assistant", "content": [
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}},
                {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": [
                    {"type": "web_search_result", "url": "https://a.example", "title": "A",
                     "encrypted_content": "e"}]},
                {"type": "text", "text": "Done.", "citations": []}]},
        ],
        tools=[{"name": "custom_tool", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}},
               {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
               {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}],
        top_k=5, context_management={"edits": []}, service_tier="auto",
    ))
    assert request.system == ["Be brief.", "Leading system message."]
    assert request.messages[0].parts == [Text("notes.txt\n\nNotes"), Text("Result\nfound"), Text("Summarise.")]
    assert request.messages[1].parts == [Reasoning("", "opaque", redacted=True, wire="anthropic"),
                                         Text("A (https://a.example)"), Text("Done.")]
    assert [t.name for t in request.tools] == ["custom_tool"]


@pytest.mark.parametrize(("block", "param"), [
    ({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
     "messages.0.content.0"),
    ({"type": "image", "source": {"type": "file", "file_id": "file_1"}}, "messages.0.content.0"),
    ({"type": "hologram", "data": "?"}, "messages.0.content.0"),
])
def test_blocks_another_provider_cannot_take_are_refused_with_their_place(block, param):
    with pytest.raises(TranslationError) as caught:
        anthropic.decode_request(body(messages=[{"role": "user", "content": [block]}]))
    assert caught.value.param == param and caught.value.status == 400


@pytest.mark.parametrize(("changes", "param"), [
    ({"temperature": "hot"}, "temperature"), ({"top_p": [1]}, "top_p"), ({"stop_sequences": "x"}, "stop_sequences"),
    ({"system": 5}, "system"), ({"tools": "all"}, "tools"), ({"tools": [{"input_schema": {}}]}, "tools.0.name"),
    ({"tool_choice": {"type": "sometimes"}}, "tool_choice"), ({"thinking": {"type": "enabled"}},
                                                             "thinking.budget_tokens"),
    ({"messages": [{"role": "narrator", "content": "x"}]}, "messages.0.role"),
])
def test_fields_of_the_wrong_type_are_refused_when_translating(changes, param):
    with pytest.raises(TranslationError) as caught:
        anthropic.decode_request(body(**changes))
    assert caught.value.param == param


@pytest.mark.parametrize(("changes", "effort", "budget"), [
    ({"thinking": {"type": "adaptive"}}, "high", None),
    ({"thinking": {"type": "adaptive"}, "output_config": {"effort": "low"}}, "low", None),
    ({"output_config": {"effort": "max"}}, "high", None), ({"output_config": {"effort": "xhigh"}}, "high", None),
    ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, None, 2048),
    ({"thinking": {"type": "disabled"}}, None, None),
])
def test_thinking_and_effort_become_the_irs_effort_or_budget(changes, effort, budget):
    request = anthropic.decode_request(body(**changes))
    assert (request.reasoning_effort, request.thinking_budget) == (effort, budget)


def test_structured_output_and_parallel_tool_use_are_translated():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    request = anthropic.decode_request(body(
        output_config={"format": {"type": "json_schema", "schema": schema}},
        tools=[{"name": "t", "input_schema": {"type": "object"}}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True}))
    assert request.response_format == {"type": "json_schema", "name": "response", "schema": schema, "strict": True}
    assert request.tool_choice == ToolChoice("required") and request.parallel_tool_calls is False
    payload = openai.encode_request(request, model="gpt-4o", stream=False)
    assert payload["response_format"] == {"type": "json_schema",
                                          "json_schema": {"name": "response", "schema": schema, "strict": True}}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(
    st.sampled_from(["system", "tools", "tool_choice", "thinking", "output_config", "temperature", "top_p",
                     "stop_sequences", "metadata", "max_tokens"]),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                 max_leaves=10), max_size=4),
    st.lists(st.fixed_dictionaries({"type": st.sampled_from(
        ["text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking", "server_tool_use",
         "web_search_tool_result", "search_result", "whatever"])},
        optional={"text": st.none() | st.text(max_size=5), "source": st.none() | st.dictionaries(
            st.sampled_from(["type", "data", "url", "media_type"]), st.text(max_size=5)),
                  "content": st.none() | st.integers() | st.text(max_size=5), "input": st.none() | st.integers()}),
        max_size=4))
def test_decoding_anything_validation_lets_through_is_a_request_or_a_translation_error(fields, blocks):
    sent = {**body(), **fields, "messages": [{"role": "user", "content": blocks or "hi"},
                                             {"role": "system", "content": "s"}]}
    try:
        validate_anthropic_messages(sent)
    except GatewayError:
        return
    try:
        request = anthropic.decode_request(sent)
    except TranslationError:
        return
    openai.encode_request(request, model="gpt-5", stream=True)
    gemini.encode_request(request, model="gemini-3-flash")


# --- Encoding the new IR for Anthropic (OpenAI and Gemini callers) --------------------------


def _conversation(**changes) -> ChatRequest:
    return ChatRequest(messages=[
        Message("user", [Text("Weather?")]),
        Message("assistant", [ToolCall("call_1", "get_weather", '{"city":"Paris"}')]),
        Message("system", [Text("Answer in French.")]),
        Message("tool", [ToolResult("call_1", "sunny", "get_weather")]),
    ], **changes)


def test_a_system_message_inside_the_conversation_is_folded_into_the_user_turn_after_the_results():
    payload = anthropic.encode_request(_conversation(), model="claude", default_max_tokens=100, stream=False)
    assert payload["messages"][2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
        {"type": "text", "text": SYSTEM_NOTE_PREFIX + "Answer in French."}]}


@pytest.mark.parametrize(("changes", "max_tokens", "thinking"), [
    ({"reasoning_effort": "low"}, 8000, {"type": "enabled", "budget_tokens": 1024}),
    ({"reasoning_effort": "medium"}, 8000, {"type": "enabled", "budget_tokens": 4096}),
    ({"reasoning_effort": "high"}, 8000, {"type": "enabled", "budget_tokens": 7999}),  # bounded below max_tokens
    ({"thinking_budget": 3000}, 8000, {"type": "enabled", "budget_tokens": 3000}),
    ({"reasoning_effort": "high"}, 1000, None),  # no room for Anthropic's minimum budget
    ({"thinking_budget": 0}, 8000, None),
])
def test_effort_and_budget_become_anthropic_thinking(changes, max_tokens, thinking):
    request = ChatRequest(messages=[Message("user", [Text("hi")])], max_tokens=max_tokens, temperature=0.2,
                          top_p=0.9, **changes)
    payload = anthropic.encode_request(request, model="claude", default_max_tokens=100, stream=False)
    assert payload.get("thinking") == thinking
    # With thinking on, Anthropic accepts only the default temperature and a top_p of 0.95 or more.
    assert ("temperature" in payload, "top_p" in payload) == ((False, False) if thinking else (True, True))


def test_thinking_stays_off_where_anthropic_would_refuse_it():
    forced = _conversation(reasoning_effort="high", max_tokens=8000, tool_choice=ToolChoice("required"),
                           tools=[])
    assert "thinking" not in anthropic.encode_request(forced, model="c", default_max_tokens=1, stream=False)
    # A tool loop whose last call came without Anthropic's signed thinking (another format's caller).
    loop = _conversation(reasoning_effort="high", max_tokens=8000)
    assert "thinking" not in anthropic.encode_request(loop, model="c", default_max_tokens=1, stream=False)
    signed = _conversation(reasoning_effort="high", max_tokens=8000)
    signed.messages[1].parts.insert(0, Reasoning("plan", "sig", wire="anthropic"))
    payload = anthropic.encode_request(signed, model="c", default_max_tokens=1, stream=False)
    assert payload["thinking"]["type"] == "enabled"
    assert payload["messages"][1]["content"][0] == {"type": "thinking", "thinking": "plan", "signature": "sig"}


def test_reasoning_of_other_providers_and_several_answers_do_not_go_to_anthropic():
    request = _conversation()
    request.messages[1].parts.insert(0, Reasoning("thought", "gemini-sig", wire="gemini"))
    payload = anthropic.encode_request(request, model="c", default_max_tokens=10, stream=False)
    assert "gemini-sig" not in orjson.dumps(payload).decode()
    with pytest.raises(TranslationError) as caught:
        anthropic.encode_request(_conversation(n=2), model="c", default_max_tokens=10, stream=False)
    assert caught.value.param == "n"


def test_structured_output_asked_of_anthropic_becomes_an_instruction():
    request = ChatRequest(messages=[Message("user", [Text("hi")])], system=["Be brief."],
                          response_format={"type": "json_schema", "name": "r", "schema": {"type": "object"}})
    payload = anthropic.encode_request(request, model="c", default_max_tokens=10, stream=False)
    assert payload["system"][0] == {"type": "text", "text": "Be brief."}
    assert '{"type":"object"}' in payload["system"][1]["text"]


# --- Usage with cache and reasoning classes -------------------------------------------------


ANTHROPIC_USAGE = {"input_tokens": 10, "output_tokens": 50, "cache_read_input_tokens": 1000,
                   "cache_creation_input_tokens": 300,
                   "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200}}


def test_anthropic_usage_counts_the_whole_prompt_and_comes_back_as_anthropic_wrote_it():
    answer = anthropic.decode_response({"id": "msg_1", "model": "claude", "content": [], "stop_reason": "end_turn",
                                        "usage": ANTHROPIC_USAGE})
    assert answer.usage == Usage(1310, 50, cache_read_tokens=1000, cache_write_tokens=300, cache_write_1h_tokens=200)
    assert anthropic.encode_response(answer)["usage"] == ANTHROPIC_USAGE
    assert openai.encode_response(answer)["usage"]["prompt_tokens_details"] == {"cached_tokens": 1000}


def test_openai_usage_details_cross_to_anthropic():
    answer = openai.decode_response({"id": "c", "model": "gpt-5", "choices": [
        {"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 40, "prompt_tokens_details": {"cached_tokens": 64},
                  "completion_tokens_details": {"reasoning_tokens": 30}}})
    assert answer.usage == Usage(100, 40, cache_read_tokens=64, reasoning_tokens=30)
    usage = anthropic.encode_response(answer)["usage"]
    assert (usage["input_tokens"], usage["cache_read_input_tokens"], usage["output_tokens"]) == (36, 64, 40)


ANTHROPIC_THINKING_STREAM = b"".join(b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
                                     for name, data in [
    ("message_start", {"type": "message_start", "message": {"id": "msg_1", "model": "claude", "usage": {
        "input_tokens": 10, "cache_read_input_tokens": 90, "cache_creation_input_tokens": 0, "output_tokens": 1}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "thinking_delta", "thinking": "Let me think."}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "signature_delta", "signature": "sig=="}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("content_block_start", {"type": "content_block_start", "index": 1,
                             "content_block": {"type": "text", "text": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1,
                             "delta": {"type": "text_delta", "text": "Hi"}}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                       "usage": {"output_tokens": 20}}),
])


def test_anthropic_thinking_streams_as_reasoning_and_usage_keeps_the_cache_classes():
    decoder = anthropic.StreamDecoder()
    events = [e for name, data in SSEParser().feed(ANTHROPIC_THINKING_STREAM) for e in decoder.feed(name, data)]
    assert events[0] == StreamStart("msg_1", "claude", 100)
    assert events[1:4] == [ReasoningDelta("Let me think.", wire="anthropic"),
                           ReasoningDelta("", "sig==", wire="anthropic"), TextDelta("Hi")]
    assert events[-1] == StreamUsage(100, 20, cache_read_tokens=90)
    start = SSEParser().feed(ANTHROPIC_THINKING_STREAM)[0]
    assert anthropic.stream_usage_detail(b"event: message_start\ndata: " + start[1] + b"\n\n") == StreamUsage(
        100, 1, cache_read_tokens=90)
    assert anthropic.stream_usage(b"event: message_start\ndata: " + start[1] + b"\n\n") == (100, None)


def test_an_anthropic_caller_sees_only_anthropics_own_reasoning_in_a_stream():
    encoder = anthropic.StreamEncoder()
    foreign = encoder.encode(StreamStart("m", "x", 10)) + encoder.encode(ReasoningDelta("gemini thought",
                                                                                         wire="gemini"))
    assert b"thinking" not in foreign
    own = encoder.encode(ReasoningDelta("mine", wire="anthropic")) + encoder.encode(
        ReasoningDelta("", "sig", wire="anthropic")) + encoder.encode(TextDelta("Hi"))
    events = [(n, orjson.loads(d)) for n, d in SSEParser().feed(foreign + own + encoder.tail())]
    assert events[1][1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert [e[1]["delta"] for e in events if e[0] == "content_block_delta"][:2] == [
        {"type": "thinking_delta", "thinking": "mine"}, {"type": "signature_delta", "signature": "sig"}]


def test_an_anthropic_answer_with_thinking_reaches_an_openai_caller_as_text_only():
    answer = ChatResponse("msg", "claude", [Reasoning("why", "sig", wire="anthropic"), Text("Because.")])
    assert openai.encode_response(answer)["choices"][0]["message"]["content"] == "Because."
    assert anthropic.encode_response(answer)["content"][0] == {"type": "thinking", "thinking": "why",
                                                               "signature": "sig"}


def _claude_turns(target: Path):
    """Another provider's answers as Claude Code gets them: a Read of `target`, then the answer."""

    def respond(path: str, sent: dict) -> tuple[str, bytes]:
        encoder = anthropic.StreamEncoder(model=sent.get("model", ""))
        last = sent["messages"][-1]["content"]
        if isinstance(last, list) and any(block.get("type") == "tool_result" for block in last):
            events: list = [StreamStart("gen-2", "gemini-3-pro", 20), ReasoningDelta("Done.", "g-sig", wire="gemini"),
                            TextDelta("The file says: "), TextDelta("hello"), StreamFinish("end"),
                            StreamUsage(120, 5, cache_read_tokens=100)]
        else:
            events = [StreamStart("gen-1", "gemini-3-pro", 10), ReasoningDelta("Read it.", "g-sig", wire="gemini"),
                      TextDelta("Reading."), ToolCallStart(0, "call_gemini/1", "Read"),
                      ToolCallDelta(0, orjson.dumps({"file_path": str(target)}).decode()), StreamFinish("tool_use"),
                      StreamUsage(10, 5)]
        return "text/event-stream", b"".join(encoder.encode(e) for e in events) + encoder.tail() + encoder.terminal

    return respond


@pytest.mark.e2e
def test_claude_code_runs_a_tool_turn_on_a_translated_stream():
    require_agent("claude")
    with tempfile.TemporaryDirectory() as home:
        hello = Path(home) / "hello.txt"
        hello.write_text("hello from the gateway test\n")
        with serve(_claude_turns(hello)) as (url, seen):
            result = run_claude(url, home, prompt="What does hello.txt say?")
    assert result.returncode == 0 and "The file says: hello" in result.stdout, result.stderr[-2000:]
    follow_up = seen[-1]["body"]
    validate_anthropic_messages(follow_up)
    request = anthropic.decode_request(follow_up)
    call = request.messages[-2].parts[-1]
    assert isinstance(call, ToolCall) and call.id == "call_gemini_1"  # made safe for Anthropic's id rules
    (answer,) = request.messages[-1].parts
    assert isinstance(answer, ToolResult) and answer.tool_call_id == call.id and "hello from" in answer.content
    # Gemini's reasoning was not shown as a thinking block, so no foreign signature came back.
    assert "g-sig" not in orjson.dumps(follow_up).decode()
