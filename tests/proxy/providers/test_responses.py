"""The OpenAI Responses codec: caller bodies (Codex CLI's among them) in, Responses and their events out,
checked against the official SDK's own models; and the provider side on OpenAI's documented shapes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from proxy.errors import GatewayError
from proxy.providers import anthropic, responses
from proxy.providers.ir import (
    ChatRequest,
    ChatResponse,
    Image,
    Message,
    Reasoning,
    ReasoningDelta,
    StreamError,
    StreamFinish,
    StreamStart,
    StreamUsage,
    Text,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolChoice,
    ToolDef,
    ToolResult,
    TranslationError,
    Usage,
)
from proxy.providers.responses.common import CUSTOM_TOOL_PARAMETERS
from proxy.providers.sse import SSEParser

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CODEX_REQUEST = json.loads((FIXTURES / "codex_like_responses_request.json").read_text())
EVENTS = TypeAdapter(ResponseStreamEvent)


def _events(data: bytes) -> list[tuple[str | None, dict[str, Any]]]:
    return [(name, orjson.loads(payload)) for name, payload in SSEParser().feed(data)]


def _validated(data: bytes) -> list[Any]:
    """Each event checked by the SDK's discriminated union; sequence numbers count from 0 without gaps."""
    events = _events(data)
    for name, payload in events:
        assert name == payload["type"]
    assert [p["sequence_number"] for _, p in events] == list(range(len(events)))
    return [EVENTS.validate_python(payload) for _, payload in events]


# --- Caller side: decode ------------------------------------------------------------------


def test_it_decodes_a_string_input():
    request = responses.decode_request({"model": "gpt-5", "input": "Say hi", "instructions": "Be brief."})
    assert request.messages == [Message("user", [Text("Say hi")])]
    assert request.system == ["Be brief."]
    assert request.stream is False
    assert request.tools == []


def test_it_decodes_the_settings_it_can_translate():
    request = responses.decode_request({
        "model": "gpt-5", "input": "x", "max_output_tokens": 500, "temperature": 0.2, "top_p": 0.9,
        "parallel_tool_calls": False, "stream": True, "user": "u-1", "reasoning": {"effort": "xhigh"},
        "tools": [{"type": "function", "name": "get_weather", "description": "Weather", "strict": True,
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "text": {"format": {"type": "json_schema", "name": "weather", "strict": True,
                            "schema": {"type": "object", "properties": {"t": {"type": "number"}}}}, "verbosity": "low"},
        # Accepted and ignored by the translation:
        "store": True, "include": ["reasoning.encrypted_content"], "prompt_cache_key": "k", "metadata": {"a": "b"},
        "service_tier": "auto", "truncation": "auto", "safety_identifier": "s",
    })
    assert (request.max_tokens, request.temperature, request.top_p) == (500, 0.2, 0.9)
    assert request.parallel_tool_calls is False and request.stream is True and request.user == "u-1"
    assert request.reasoning_effort == "high"
    assert request.tools == [ToolDef("get_weather", "Weather", {"type": "object",
                                                                 "properties": {"city": {"type": "string"}}})]
    assert request.tool_choice == ToolChoice("tool", "get_weather")
    assert request.response_format == {"type": "json_schema", "name": "weather", "strict": True,
                                       "schema": {"type": "object", "properties": {"t": {"type": "number"}}}}
    assert responses.decode_request({"input": "x", "text": {"format": {"type": "json_object"}}}).response_format \
        == {"type": "json_object"}
    assert responses.decode_request({"input": "x", "text": {"format": {"type": "text"}}}).response_format is None


def test_it_decodes_a_codex_cli_request():
    request = responses.decode_request(CODEX_REQUEST)
    # instructions and the leading developer message are the system prompt
    assert request.system[0] == CODEX_REQUEST["instructions"]
    assert request.system[1].startswith("<permissions instructions>")
    assert request.stream is True and request.parallel_tool_calls is False
    assert request.reasoning_effort == "medium" and request.tool_choice == ToolChoice("auto")
    # web_search is left out; apply_patch (freeform) becomes a function of one string
    assert [t.name for t in request.tools] == ["shell", "update_plan", "apply_patch", "view_image"]
    apply_patch = request.tools[2]
    assert apply_patch.parameters["required"] == ["input"]
    assert "raw text" in apply_patch.description and "begin_patch" in apply_patch.description

    roles = [m.role for m in request.messages]
    assert roles == ["user", "user", "user", "assistant", "tool", "assistant", "tool", "assistant", "user",
                     "assistant", "tool", "user"]
    first_turn = request.messages[3].parts
    assert first_turn[0] == Reasoning("**Running the failing test**\n\nI'll reproduce the failure first.",
                                      "gAAAAABo9x1Q3c2VjcmV0LXJlYXNvbmluZy1zdGF0ZS0x", wire="responses")
    assert isinstance(first_turn[1], ToolCall) and first_turn[1].name == "shell"
    assert request.messages[4].parts[0].name == "shell"  # the result knows its tool's name (Gemini needs it)
    patch_turn = request.messages[5].parts
    assert patch_turn[0] == Reasoning("", "gAAAAABo9x1R3c2VjcmV0LXJlYXNvbmluZy1zdGF0ZS0y", wire="responses")
    assert orjson.loads(patch_turn[1].arguments) == {"input": CODEX_REQUEST["input"][8]["input"]}
    assert request.messages[6].parts[0].content.startswith("Exit code: 0")
    # the web_search_call is dropped; view_image's picture follows its tool result as a user turn
    assert [type(p) for p in request.messages[9].parts] == [ToolCall]
    assert "image output follows" in request.messages[10].parts[0].content
    assert request.messages[11].parts == [Image(media_type="image/png",
                                                data=CODEX_REQUEST["input"][14]["output"][0]["image_url"][22:])]


def test_a_codex_request_becomes_an_anthropic_request():
    payload = anthropic.encode_request(responses.decode_request(CODEX_REQUEST), model="claude-sonnet-4-5",
                                       default_max_tokens=4096, stream=True)
    assert [t["name"] for t in payload["tools"]] == ["shell", "update_plan", "apply_patch", "view_image"]
    assert payload["tools"][2]["input_schema"]["properties"]["input"]["type"] == "string"
    assert [m["role"] for m in payload["messages"]] == ["user", "assistant", "user", "assistant", "user",
                                                        "assistant", "user", "assistant", "user"]
    last = payload["messages"][-1]["content"]
    assert [b["type"] for b in last] == ["tool_result", "image"]


def test_it_keeps_later_developer_messages_in_place():
    request = responses.decode_request({"input": [
        {"role": "user", "content": "a"}, {"role": "developer", "content": "Now answer in French."},
        {"role": "user", "content": "b"}]})
    assert request.system == []
    assert [m.role for m in request.messages] == ["user", "system", "user"]


def test_a_local_shell_history_still_pairs_calls_and_outputs():
    request = responses.decode_request({"input": [
        {"role": "user", "content": "list files"},
        {"type": "local_shell_call", "call_id": "ls1", "status": "completed",
         "action": {"type": "exec", "command": ["ls"], "env": {}}},
        {"type": "function_call_output", "call_id": "ls1", "output": "a.py"}],
        "tools": [{"type": "local_shell"}]})
    assert request.tools == []
    assert request.messages[1].parts[0].name == "local_shell"
    assert request.messages[2].parts == [ToolResult("ls1", "a.py", "local_shell")]


@pytest.mark.parametrize(("body", "error", "param"), [
    ({"input": "x", "previous_response_id": "resp_1"}, TranslationError, "previous_response_id"),
    ({"input": "x", "conversation": "conv_1"}, TranslationError, "conversation"),
    ({"input": "x", "background": True}, TranslationError, "background"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, TranslationError, "input[0]"),
    ({"input": [{"type": "compaction", "encrypted_content": "x"}]}, TranslationError, "input[0]"),
    ({"input": "x", "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, TranslationError, "tools[0]"),
    ({"input": "x", "tools": [{"type": "web_search_preview"}]}, TranslationError, "tools[0]"),
    ({"input": "x", "tool_choice": {"type": "web_search_preview"}}, TranslationError, "tool_choice"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]}, TranslationError,
     "input[0].content[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]}, TranslationError,
     "input[0].content[0]"),
    ({"input": [{"type": "code_interpreter_call", "id": "ci_1"}]}, TranslationError, "input[0]"),
    ({"input": "x", "text": {"format": {"type": "grammar"}}}, TranslationError, "text.format.type"),
    ({}, GatewayError, "input"),
    ({"input": 5}, GatewayError, "input"),
    ({"input": ["hi"]}, GatewayError, "input[0]"),
    ({"input": [{"role": "tool", "content": "x"}]}, GatewayError, "input[0].role"),
    ({"input": [{"role": "user", "content": 7}]}, GatewayError, "input[0].content"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, GatewayError, "input[0].call_id"),
    ({"input": "x", "tools": [{"type": "function", "function": {"name": "f"}}]}, GatewayError, "tools[0]"),
    ({"input": "x", "tools": [{"type": "function", "name": "f", "parameters": "{}"}]}, GatewayError,
     "tools[0].parameters"),
    ({"input": "x", "tools": {"type": "function"}}, GatewayError, "tools"),
    ({"input": "x", "max_output_tokens": "10"}, GatewayError, "max_output_tokens"),
    ({"input": "x", "temperature": True}, GatewayError, "temperature"),
    ({"input": "x", "reasoning": {"effort": "extreme"}}, GatewayError, "reasoning.effort"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}, GatewayError, "text.format.schema"),
    ({"input": "x", "stream": "yes"}, GatewayError, "stream"),
])
def test_it_refuses_bad_or_untranslatable_input_naming_the_param(body, error, param):
    with pytest.raises(error) as raised:
        responses.decode_request(body)
    assert raised.value.param == param
    assert raised.value.status == 400
    assert raised.value.message


def test_a_previous_response_id_refusal_says_why():
    with pytest.raises(TranslationError, match="conversation state kept by the provider"):
        responses.decode_request({"input": "x", "previous_response_id": "resp_1"})
    with pytest.raises(TranslationError, match="only available on OpenAI providers"):
        responses.decode_request({"input": "x", "tools": [{"type": "code_interpreter", "container": {}}]})


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                         st.sampled_from(["type", "role", "content", "name", "call_id", "output", "input", "text",
                                          "arguments", "image_url", "summary", "format", "effort", "schema"]),
                         inner, max_size=4), max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["input", "tools", "tool_choice", "text", "reasoning", "instructions",
                                        "max_output_tokens", "stream"]), _json, max_size=5))
def test_any_body_decodes_or_is_refused_as_a_400(body):
    try:
        responses.decode_request(body)
    except GatewayError as error:
        assert error.status == 400


# --- Caller side: encode ------------------------------------------------------------------


def _answer(**kw: Any) -> ChatResponse:
    return ChatResponse(id="msg_01XFDUDYJgAACzvnptvVoYEL", model="claude-sonnet-4-5", **kw)


def test_a_response_is_one_the_sdk_reads():
    answer = _answer(parts=[Reasoning("Thinking about it.", "sig-abc", wire="anthropic"), Text("The answer "),
                            Text("is 4."), ToolCall("toolu_01", "shell", '{"command":["ls"]}'),
                            ToolCall("toolu_02", "apply_patch", '{"input":"*** Begin Patch\\n*** End Patch\\n"}')],
                     finish="tool_use",
                     usage=Usage(input_tokens=1200, output_tokens=300, cache_read_tokens=1000, reasoning_tokens=120))
    body = responses.encode_response(answer, CODEX_REQUEST)
    parsed = Response.model_validate(body)
    assert parsed.output_text == "The answer is 4."
    assert parsed.id.startswith("resp_") and parsed.status == "completed" and parsed.store is False
    assert [item.type for item in parsed.output] == ["reasoning", "message", "function_call", "custom_tool_call"]
    assert parsed.output[2].call_id == "toolu_01" and parsed.output[2].id.startswith("fc_")
    assert parsed.output[3].input == "*** Begin Patch\n*** End Patch\n"
    usage = parsed.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (1200, 300, 1500)
    assert usage.input_tokens_details.cached_tokens == 1000 and usage.output_tokens_details.reasoning_tokens == 120
    assert parsed.instructions == CODEX_REQUEST["instructions"] and parsed.parallel_tool_calls is False
    # the Anthropic signature rides in encrypted_content and comes back as Anthropic's
    reasoning = body["output"][0]
    assert reasoning["summary"] == [{"type": "summary_text", "text": "Thinking about it."}]
    back = responses.decode_request({"input": [{"role": "user", "content": "q"}, reasoning]})
    assert back.messages[1].parts == [Reasoning("Thinking about it.", "sig-abc", wire="anthropic")]


def test_the_sdk_client_parses_an_encoded_response():
    body = responses.encode_response(_answer(parts=[Text("Hello!")]), {"model": "m", "input": "hi"})

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=body)

    client = openai.OpenAI(api_key="tg-test", base_url="http://gateway.test/v1",
                           http_client=httpx.Client(transport=httpx.MockTransport(handler)))
    assert client.responses.create(model="m", input="hi").output_text == "Hello!"


def test_a_cut_short_response_is_incomplete():
    body = responses.encode_response(_answer(parts=[Text("Once upon")], finish="max_tokens"), {"input": "x"})
    parsed = Response.model_validate(body)
    assert parsed.status == "incomplete"
    assert parsed.incomplete_details.reason == "max_output_tokens"
    assert parsed.output[0].status == "incomplete"


def test_encrypted_reasoning_goes_out_only_when_asked_for():
    answer = _answer(parts=[Reasoning("r", "opaque", wire="responses"), Text("ok")])
    assert "encrypted_content" not in responses.encode_response(answer, {"input": "x"})["output"][0]
    asked = responses.encode_response(answer, {"input": "x", "include": ["reasoning.encrypted_content"]})
    assert asked["output"][0]["encrypted_content"] == "opaque"


def test_foreign_reasoning_is_stripped_before_a_call_to_openai():
    body = {"input": [{"type": "reasoning", "summary": [], "encrypted_content": "tollgate:anthropic:signed:x"},
                      {"type": "reasoning", "summary": [], "encrypted_content": "gAAAA"}]}
    assert responses.strip_foreign_reasoning(body) is True
    assert [i["encrypted_content"] for i in body["input"]] == ["gAAAA"]
    assert responses.strip_foreign_reasoning(body) is False


# --- Caller side: stream ------------------------------------------------------------------


def _stream(encoder: responses.StreamEncoder, events: list[Any]) -> bytes:
    return b"".join(encoder.encode(e) for e in events) + encoder.tail() + encoder.terminal


def test_a_text_stream_is_one_the_sdk_reads():
    encoder = responses.StreamEncoder(request={"model": "fast", "input": "hi"})
    data = _stream(encoder, [StreamStart("msg_1", "claude-haiku-4-5", 12), TextDelta("Hel"), TextDelta("lo!"),
                             StreamFinish("end"), StreamUsage(12, 5, cache_read_tokens=4)])
    events = _validated(data)
    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    final = events[-1].response
    assert final.output_text == "Hello!" and final.status == "completed"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (12, 5)
    assert final.usage.input_tokens_details.cached_tokens == 4
    assert encoder.terminal == data[-len(encoder.terminal):]  # built once, held by the relay


def test_a_tool_call_stream_is_one_the_sdk_reads():
    encoder = responses.StreamEncoder(request=CODEX_REQUEST, upstream_wire="anthropic")
    data = _stream(encoder, [
        StreamStart("msg_2", "claude-sonnet-4-5"), ReasoningDelta("Let me "), ReasoningDelta("look."),
        ReasoningDelta(signature="sig-1"), TextDelta("Checking."),
        ToolCallStart(0, "toolu_a", "shell"), ToolCallDelta(0, '{"command":'), ToolCallDelta(0, '["ls"]}'),
        ToolCallStart(1, "toolu_b", "apply_patch"), ToolCallDelta(1, '{"input":"*** Begin'),
        ToolCallDelta(1, ' Patch\\n"}'), StreamFinish("tool_use"), StreamUsage(100, 40, reasoning_tokens=10)])
    events = _validated(data)
    kinds = [e.type for e in events]
    assert kinds[:5] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.reasoning_summary_part.added", "response.reasoning_summary_text.delta"]
    assert kinds.count("response.function_call_arguments.delta") == 2
    assert kinds[-6:] == ["response.function_call_arguments.done", "response.output_item.done",
                          "response.custom_tool_call_input.delta", "response.custom_tool_call_input.done",
                          "response.output_item.done", "response.completed"]
    done = [e.item for e in events if e.type == "response.output_item.done"]
    assert [i.type for i in done] == ["reasoning", "message", "function_call", "custom_tool_call"]
    assert done[0].summary[0].text == "Let me look."
    assert done[0].encrypted_content == "tollgate:anthropic:signed:sig-1"
    assert done[2].arguments == '{"command":["ls"]}' and done[2].call_id == "toolu_a"
    assert done[3].input == "*** Begin Patch\n" and done[3].call_id == "toolu_b"
    final = events[-1].response
    assert [i.type for i in final.output] == ["reasoning", "message", "function_call", "custom_tool_call"]
    assert final.output_text == "Checking."
    assert final.usage.output_tokens_details.reasoning_tokens == 10


def test_a_max_tokens_stream_ends_incomplete():
    encoder = responses.StreamEncoder(request={"input": "x"})
    events = _validated(_stream(encoder, [TextDelta("Once"), StreamFinish("max_tokens"), StreamUsage(3, 1)]))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


def test_an_error_in_the_stream_ends_it_failed():
    encoder = responses.StreamEncoder(request={"input": "x"})
    data = encoder.encode(TextDelta("partial")) + encoder.error_event("The provider's stream ended early",
                                                                      "stream_interrupted")
    events = _validated(data)
    assert [e.type for e in events][-2:] == ["error", "response.failed"]
    assert events[-2].code == "stream_interrupted"
    assert events[-1].response.error.message == "The provider's stream ended early"
    assert events[-1].response.status == "failed"
    via_ir = responses.StreamEncoder(request={"input": "x"}).encode(StreamError("overloaded", 529))
    assert [e.type for e in _validated(via_ir)][-2:] == ["error", "response.failed"]


def test_a_stream_error_outside_an_encoder_is_well_formed():
    events = _validated(responses.stream_error("The gateway failed to handle this request.", "internal_error", 500))
    assert [e.type for e in events] == ["error", "response.failed"]
    assert events[1].response.error.code == "server_error"


def test_the_sdk_stream_helper_accumulates_an_encoded_stream():
    encoder = responses.StreamEncoder(request={"model": "m", "input": "hi"})
    data = _stream(encoder, [StreamStart("x", "m"), TextDelta("Hi "), TextDelta("there"),
                             ToolCallStart(0, "call_1", "f"), ToolCallDelta(0, "{}"), StreamFinish("tool_use")])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=data, headers={"content-type": "text/event-stream"})

    client = openai.OpenAI(api_key="tg-test", base_url="http://gateway.test/v1",
                           http_client=httpx.Client(transport=httpx.MockTransport(handler)))
    with client.responses.stream(model="m", input="hi") as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.output_text == "Hi there"
    assert final.output[1].name == "f"


# --- Provider side ------------------------------------------------------------------------

# A reasoning model's answer as OpenAI documents it, with cached and reasoning tokens.
OPENAI_RESPONSE = {
    "id": "resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41", "object": "response", "created_at": 1741476777,
    "status": "completed", "error": None, "incomplete_details": None, "model": "o3-2025-04-16",
    "output": [
        {"type": "reasoning", "id": "rs_6876cf02e0bc8192b74af0fb64b715ff06fa2fcced15a5ac",
         "summary": [{"type": "summary_text", "text": "**Checking the weather**"}],
         "encrypted_content": "gAAAAABodsS_enc"},
        {"type": "message", "id": "msg_67ccd3acc8d48190a77525dc6de64b4104becb25c45c1d41", "status": "completed",
         "role": "assistant", "content": [{"type": "output_text", "text": "Let me check.", "annotations": []}]},
        {"type": "function_call", "id": "fc_12345xyz", "call_id": "call_12345xyz", "name": "get_weather",
         "arguments": "{\"location\":\"Paris, France\"}", "status": "completed"},
    ],
    "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "store": False,
    "usage": {"input_tokens": 1850, "input_tokens_details": {"cached_tokens": 1536}, "output_tokens": 420,
              "output_tokens_details": {"reasoning_tokens": 384}, "total_tokens": 2270},
}


def test_it_decodes_an_openai_response():
    answer = responses.decode_response(OPENAI_RESPONSE)
    assert answer.parts == [
        Reasoning("**Checking the weather**", "gAAAAABodsS_enc", wire="responses"), Text("Let me check."),
        ToolCall("call_12345xyz", "get_weather", '{"location":"Paris, France"}')]
    assert answer.finish == "tool_use" and answer.model == "o3-2025-04-16"
    assert answer.usage == Usage(1850, 420, cache_read_tokens=1536, reasoning_tokens=384)
    cut = responses.decode_response({**OPENAI_RESPONSE, "status": "incomplete", "output": [],
                                     "incomplete_details": {"reason": "max_output_tokens"}})
    assert cut.finish == "max_tokens"


def test_a_failed_openai_response_is_a_provider_error():
    from proxy.providers.base import ProviderError

    with pytest.raises(ProviderError) as raised:
        responses.decode_response({**OPENAI_RESPONSE, "status": "failed",
                                   "error": {"code": "server_error", "message": "boom"}})
    assert raised.value.status == 500 and raised.value.retryable


def test_it_encodes_a_request_for_an_openai_responses_model():
    request = ChatRequest(
        messages=[Message("user", [Text("Weather in Paris?"), Image(url="https://example.com/p.jpg")]),
                  Message("assistant", [Reasoning("thinking", "gAAAA_enc", wire="responses"),
                                        Reasoning("claude thought", "sig", wire="anthropic"),
                                        Text("Checking."), ToolCall("call_1", "get_weather", '{"city":"Paris"}')]),
                  Message("tool", [ToolResult("call_1", "14C", "get_weather")]),
                  Message("system", [Text("Answer in French.")])],
        system=["You are helpful."], tools=[ToolDef("get_weather", "Weather", {"type": "object"})],
        tool_choice=ToolChoice("tool", "get_weather"), max_tokens=800, thinking_budget=10000,
        response_format={"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True})
    payload = responses.encode_request(request, model="o3", stream=True)
    assert payload["instructions"] == "You are helpful."
    assert payload["input"] == [
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Weather in Paris?"},
            {"type": "input_image", "image_url": "https://example.com/p.jpg", "detail": "auto"}]},
        {"type": "reasoning", "encrypted_content": "gAAAA_enc", "summary": [{"type": "summary_text",
                                                                             "text": "thinking"}]},
        {"type": "message", "role": "assistant", "content": "Checking."},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "14C"},
        {"type": "message", "role": "developer", "content": "Answer in French."},
    ]
    assert payload["tools"] == [{"type": "function", "name": "get_weather", "description": "Weather",
                                 "parameters": {"type": "object"}, "strict": False}]
    assert payload["tool_choice"] == {"type": "function", "name": "get_weather"}
    assert payload["max_output_tokens"] == 800 and payload["store"] is False and payload["stream"] is True
    assert payload["reasoning"] == {"effort": "medium"}
    assert payload["include"] == ["reasoning.encrypted_content"]
    assert payload["text"] == {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"},
                                          "strict": True}}
    with pytest.raises(TranslationError) as raised:
        responses.encode_request(ChatRequest(messages=[], stop=["\n"]), model="o3", stream=False)
    assert raised.value.param == "stop"


def test_a_codex_request_round_trips_through_the_provider_side():
    payload = responses.encode_request(responses.decode_request(CODEX_REQUEST), model="gpt-5", stream=True)
    kinds = [item["type"] for item in payload["input"]]
    assert kinds.count("reasoning") == 2 and kinds.count("function_call_output") == 3
    assert payload["include"] == ["reasoning.encrypted_content"]


def _sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events)


# An OpenAI reasoning model's stream, as its events come (abridged to what the decoder reads).
OPENAI_STREAM = _sse(
    {"type": "response.created", "sequence_number": 0,
     "response": {"id": "resp_abc", "object": "response", "status": "in_progress", "model": "o4-mini", "output": []}},
    {"type": "response.in_progress", "sequence_number": 1, "response": {"id": "resp_abc", "status": "in_progress"}},
    {"type": "response.output_item.added", "sequence_number": 2, "output_index": 0,
     "item": {"id": "rs_1", "type": "reasoning", "summary": []}},
    {"type": "response.reasoning_summary_part.added", "sequence_number": 3, "item_id": "rs_1", "output_index": 0,
     "summary_index": 0, "part": {"type": "summary_text", "text": ""}},
    {"type": "response.reasoning_summary_text.delta", "sequence_number": 4, "item_id": "rs_1", "output_index": 0,
     "summary_index": 0, "delta": "**Planning**"},
    {"type": "response.output_item.done", "sequence_number": 5, "output_index": 0,
     "item": {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "**Planning**"}],
              "encrypted_content": "gAAAA_stream"}},
    {"type": "response.output_item.added", "sequence_number": 6, "output_index": 1,
     "item": {"id": "msg_1", "type": "message", "status": "in_progress", "role": "assistant", "content": []}},
    {"type": "response.output_text.delta", "sequence_number": 7, "item_id": "msg_1", "output_index": 1,
     "content_index": 0, "delta": "Sure", "logprobs": []},
    {"type": "response.output_text.delta", "sequence_number": 8, "item_id": "msg_1", "output_index": 1,
     "content_index": 0, "delta": ".", "logprobs": []},
    {"type": "response.output_item.added", "sequence_number": 9, "output_index": 2,
     "item": {"id": "fc_1", "type": "function_call", "status": "in_progress", "arguments": "",
              "call_id": "call_9", "name": "get_weather"}},
    {"type": "response.function_call_arguments.delta", "sequence_number": 10, "item_id": "fc_1", "output_index": 2,
     "delta": "{\"city\":"},
    {"type": "response.function_call_arguments.delta", "sequence_number": 11, "item_id": "fc_1", "output_index": 2,
     "delta": "\"Paris\"}"},
    {"type": "response.function_call_arguments.done", "sequence_number": 12, "item_id": "fc_1", "output_index": 2,
     "arguments": "{\"city\":\"Paris\"}"},
    {"type": "response.output_item.done", "sequence_number": 13, "output_index": 2,
     "item": {"id": "fc_1", "type": "function_call", "status": "completed", "arguments": "{\"city\":\"Paris\"}",
              "call_id": "call_9", "name": "get_weather"}},
    {"type": "response.completed", "sequence_number": 14,
     "response": {"id": "resp_abc", "status": "completed", "model": "o4-mini", "output": [],
                  "usage": {"input_tokens": 2048, "input_tokens_details": {"cached_tokens": 1920},
                            "output_tokens": 230, "output_tokens_details": {"reasoning_tokens": 192},
                            "total_tokens": 2278}}},
)


def test_it_decodes_an_openai_stream():
    parser, decoder = SSEParser(), responses.StreamDecoder()
    events = []
    # Fed in uneven chunks, as the network gives them.
    for start in range(0, len(OPENAI_STREAM), 97):
        for name, data in parser.feed(OPENAI_STREAM[start:start + 97]):
            events.extend(decoder.feed(name, data))
    events.extend(decoder.close())
    assert events == [
        StreamStart("resp_abc", "o4-mini"), ReasoningDelta("**Planning**"), ReasoningDelta(signature="gAAAA_stream"),
        TextDelta("Sure"), TextDelta("."), ToolCallStart(0, "call_9", "get_weather"),
        ToolCallDelta(0, '{"city":'), ToolCallDelta(0, '"Paris"}'), StreamFinish("tool_use"),
        StreamUsage(2048, 230, cache_read_tokens=1920, reasoning_tokens=192)]


def test_a_decoded_openai_stream_encodes_back_for_a_responses_caller():
    parser, decoder = SSEParser(), responses.StreamDecoder()
    encoder = responses.StreamEncoder(request={"input": "x", "include": ["reasoning.encrypted_content"]},
                                      upstream_wire="responses")
    out = b"".join(encoder.encode(e) for name, data in parser.feed(OPENAI_STREAM) for e in decoder.feed(name, data))
    events = _validated(out + encoder.tail() + encoder.terminal)
    final = events[-1].response
    assert final.output[0].encrypted_content == "gAAAA_stream"
    assert final.usage.input_tokens_details.cached_tokens == 1920


def test_stream_errors_are_decoded():
    decoder = responses.StreamDecoder()
    assert decoder.feed("error", b'{"type":"error","code":"rate_limit_exceeded","message":"Slow down",'
                                 b'"sequence_number":0}') == [StreamError("Slow down", 429)]
    failed = orjson.dumps({"type": "response.failed", "sequence_number": 3, "response": {
        "id": "resp_1", "status": "failed", "error": {"code": "server_error", "message": "boom"}}})
    assert responses.StreamDecoder().feed("response.failed", failed)[-1] == StreamError("boom", 500)


def test_stream_usage_reads_the_terminal_event_only():
    completed = OPENAI_STREAM.split(b"\n\n")[-2] + b"\n\n"
    assert responses.stream_usage(completed) == Usage(2048, 230, cache_read_tokens=1920, reasoning_tokens=192)
    assert responses.stream_usage(OPENAI_STREAM.split(b"\n\n")[0] + b"\n\n") is None
    assert completed.startswith(responses.TERMINAL_EVENTS)


REAL_CODEX = json.loads((FIXTURES / "codex_responses_request.json").read_text())


def test_it_decodes_the_request_codex_cli_sends_by_default():
    """The body captured from Codex CLI itself (tests/fixtures/capture_agent_requests.py)."""
    body = REAL_CODEX["body"]
    request = responses.decode_request(body)
    assert request.stream is True
    assert request.messages, "the user's prompt reaches the IR"
    assert {tool.name for tool in request.tools}, "Codex's function tools survive the translation"


CODEX_DEFAULT = json.loads((FIXTURES / "codex_default_request.json").read_text())


def test_it_decodes_codex_cli_on_its_own_default_model_with_the_tools_of_its_additional_tools_item():
    """Codex CLI 0.169 without a model in config.toml sends no `tools`, but an additional_tools input item."""
    body = CODEX_DEFAULT["body"]
    assert "tools" not in body and body["input"][0]["type"] == "additional_tools"
    request = responses.decode_request(body)
    names = [tool.name for tool in request.tools]
    # Each namespace's tools, flattened; the freeform exec tool as a function of one string.
    assert {"exec", "wait", "sleep", "spawn_agent"} <= set(names) and len(names) == len(set(names))
    assert next(t for t in request.tools if t.name == "exec").parameters == CUSTOM_TOOL_PARAMETERS
    assert request.messages[-1].role == "user"


def test_an_additional_tools_item_without_a_tool_list_is_a_400():
    body = {"model": "m", "input": [{"type": "additional_tools", "role": "developer", "tools": "exec"},
                                    {"role": "user", "content": "hi"}]}
    with pytest.raises(GatewayError) as caught:
        responses.decode_request(body)
    assert caught.value.param == "input[0].tools"


def test_a_call_of_codex_clis_exec_tool_goes_back_as_a_custom_tool_call():
    """exec is a freeform tool inside a namespace of the additional_tools item; Codex refuses a
    function_call for it ("tool exec invoked with incompatible payload")."""
    body = CODEX_DEFAULT["body"]
    answer = _answer(parts=[ToolCall("toolu_01", "exec", '{"input":"1 + 1"}'), ToolCall("toolu_02", "wait", "{}")],
                     finish="tool_use")
    items = Response.model_validate(responses.encode_response(answer, body)).output
    assert [item.type for item in items] == ["custom_tool_call", "function_call"]
    assert items[0].name == "exec" and items[0].input == "1 + 1"
    streamed = _validated(_stream(responses.StreamEncoder(request=body, upstream_wire="anthropic"), [
        StreamStart("msg_1", "claude-sonnet-4-5"), ToolCallStart(0, "toolu_01", "exec"),
        ToolCallDelta(0, '{"input":"1 + 1"}'), StreamFinish("tool_use"), StreamUsage(10, 5)]))
    done = [e.item for e in streamed if e.type == "response.output_item.done"]
    assert [(item.type, item.input) for item in done] == [("custom_tool_call", "1 + 1")]
