"""Gemini generateContent as a caller's format: Gemini CLI and the google-genai SDK (issue #14).

The fixtures are real requests captured from Gemini CLI 0.61.0 by
tests/fixtures/capture_agent_requests.py; answers are checked with the google-genai
SDK's own types (extra fields forbidden) and, end to end, its own client.
"""
from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from proxy.errors import GatewayError
from proxy.parsing import validate_gemini_generate
from proxy.providers import anthropic, gemini_caller, openai
from proxy.providers.ir import (
    ChatResponse,
    Image,
    Reasoning,
    ReasoningDelta,
    StreamEvent,
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
from tests.fixtures.capture_agent_requests import require_agent, run_gemini
from tests.proxy.providers.canned import serve

genai_types = pytest.importorskip("google.genai.types")

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def captured(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


GEMINI_CLI = captured("gemini_cli_request")
GEMINI_CLI_ROUTER = captured("gemini_cli_router_request")
GEMINI_CLI_25 = captured("gemini_cli_25_request")
GEMINI_CLI_TOOL_TURN = captured("gemini_cli_tool_turn_request")


def user(*parts: dict, **fields) -> dict:
    return {"contents": [{"role": "user", "parts": list(parts) or [{"text": "hi"}]}], **fields}


# --- The captured requests -------------------------------------------------------------------


@pytest.mark.parametrize("fixture", [GEMINI_CLI, GEMINI_CLI_ROUTER, GEMINI_CLI_25, GEMINI_CLI_TOOL_TURN],
                         ids=["default", "router", "gemini-2.5", "tool-turn"])
def test_every_captured_gemini_cli_request_passes_validation_and_decodes(fixture):
    assert fixture["headers"]["x-goog-api-key"] == "tg-REDACTED"
    assert "model" not in fixture["body"]  # the model is in the URL
    validate_gemini_generate(fixture["body"])
    request = gemini_caller.decode_request(fixture["body"], stream=":streamGenerateContent" in fixture["path"])
    assert request.messages[0].role == "user"
    assert request.temperature == 1 and request.top_p == 0.95  # topK (64) has no counterpart: dropped


def test_the_default_request_declares_functions_only_and_asks_for_high_thinking():
    sent = GEMINI_CLI["body"]
    assert [list(tool) for tool in sent["tools"]] == [["functionDeclarations"]]
    request = gemini_caller.decode_request(sent, stream=True)
    assert request.stream is True
    assert request.system == [sent["systemInstruction"]["parts"][0]["text"]]
    assert [t.name for t in request.tools] == [d["name"] for d in sent["tools"][0]["functionDeclarations"]]
    assert request.tools[0].parameters == sent["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]
    assert sent["generationConfig"]["thinkingConfig"]["thinkingLevel"] == "HIGH"
    assert (request.reasoning_effort, request.thinking_budget) == ("high", None)


def test_a_pinned_gemini_25_request_maps_its_thinking_budget():
    request = gemini_caller.decode_request(GEMINI_CLI_25["body"])
    assert request.thinking_budget == GEMINI_CLI_25["body"]["generationConfig"]["thinkingConfig"]["thinkingBudget"]
    assert request.reasoning_effort is None


def test_the_router_request_asks_for_json_with_gemini_types_made_standard():
    request = gemini_caller.decode_request(GEMINI_CLI_ROUTER["body"])
    assert request.response_format is not None and request.response_format["type"] == "json_schema"
    schema = request.response_format["schema"]
    assert schema["type"] == "object" and schema["properties"]["complexity_score"]["type"] == "integer"
    payload = openai.encode_request(request, model="gpt-4o", stream=False)
    assert payload["response_format"]["json_schema"]["schema"] == schema


def test_the_tool_turn_pairs_the_call_and_its_response_and_keeps_the_signature_for_gemini_only():
    request = gemini_caller.decode_request(GEMINI_CLI_TOOL_TURN["body"], stream=True)
    assert [m.role for m in request.messages] == ["user", "assistant", "tool"]
    signature, call = request.messages[1].parts
    assert signature == Reasoning("", "c2lnbmF0dXJlLWNhcHR1cmU=", wire="gemini")
    assert call == ToolCall("read_file_1796123839296_0", "read_file", '{"file_path":"hello.txt"}')
    # Gemini CLI answers {"output": "..."}: handed on as the text itself.
    assert request.messages[2].parts == [ToolResult(call.id, "hello from the capture\n", "read_file")]
    payload = anthropic.encode_request(request, model="claude-sonnet-4-5", default_max_tokens=8192, stream=True)
    assert payload["messages"][1]["content"] == [{"type": "tool_use", "id": "read_file_1796123839296_0",
                                                  "name": "read_file", "input": {"file_path": "hello.txt"}}]
    assert "c2lnbmF0dXJl" not in orjson.dumps(payload).decode()
    assert "thinking" not in payload  # a tool loop without Anthropic's own signed thinking


# --- Validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(("sent", "param"), [
    ({}, "contents"), ({"contents": []}, "contents"), ({"contents": "hi"}, "contents"),
    ({"contents": ["hi"]}, "contents[0]"), ({"contents": [{"role": 1, "parts": []}]}, "contents[0].role"),
    ({"contents": [{"role": "user"}]}, "contents[0].parts"), ({"contents": [{"parts": ["x"]}]}, "contents[0].parts"),
    (user(generationConfig=[]), "generationConfig"),
    (user(generationConfig={"maxOutputTokens": 0}), "generationConfig.maxOutputTokens"),
])
def test_validation_refuses_what_the_gateway_cannot_read(sent, param):
    with pytest.raises(GatewayError) as caught:
        validate_gemini_generate(sent)
    assert caught.value.status == 400 and caught.value.param == param


def test_validation_lets_the_rest_through():
    validate_gemini_generate(user({"text": "x", "mediaResolution": "HIGH"}, safetySettings=[{"category": "x"}],
                                  tools=[{"googleSearch": {}}], cachedContent="cachedContents/1",
                                  generationConfig={"seed": 1, "responseModalities": ["AUDIO"]}, labels={"a": "b"}))


# --- Decoding parts and settings -------------------------------------------------------------


def test_calls_and_responses_without_ids_are_paired_by_name_and_order():
    request = gemini_caller.decode_request({"contents": [
        {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "weather", "args": {"city": "Paris"}}},
                                    {"functionCall": {"name": "weather", "args": {"city": "Rome"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "weather", "response": {"temp": 20}}},
                                   {"functionResponse": {"name": "weather", "response": {"error": "down"}}},
                                   {"text": "Thanks"}]},
    ]})
    first, second = request.messages[1].parts
    assert isinstance(first, ToolCall) and isinstance(second, ToolCall) and first.id != second.id
    assert request.messages[2].parts == [ToolResult(first.id, '{"temp":20}', "weather"),
                                         ToolResult(second.id, "down", "weather", True)]
    assert request.messages[3].parts == [Text("Thanks")]


def test_inline_images_and_text_are_translated_and_other_media_refused():
    text = base64.b64encode(b"plain notes").decode()
    request = gemini_caller.decode_request(user(
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0K"}},
        {"inlineData": {"mimeType": "text/plain", "data": text}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg"}}))
    assert request.messages[0].parts == [Image(media_type="image/png", data="iVBORw0K"), Text("plain notes"),
                                         Image(url="https://example.com/cat.jpg")]
    for part in ({"inlineData": {"mimeType": "application/pdf", "data": "JVBE"}},
                 {"fileData": {"mimeType": "image/png", "fileUri": "gs://bucket/cat.png"}},
                 {"fileData": {"mimeType": "application/pdf",
                               "fileUri": "https://generativelanguage.googleapis.com/v1beta/files/abc"}},
                 {"videoMetadata": {}, "mysteryPart": {}}):
        with pytest.raises(TranslationError) as caught:
            gemini_caller.decode_request(user({"text": "see"}, part))
        assert caught.value.param == "contents[0].parts[1]"


def test_googles_own_tools_are_left_out_and_the_calling_mode_is_kept():
    declaration = {"name": "lookup", "description": "Look up", "parameters": {
        "type": "OBJECT", "properties": {"q": {"type": "STRING", "nullable": True}}, "propertyOrdering": ["q"]}}
    request = gemini_caller.decode_request(user(
        tools=[{"googleSearch": {}}, {"codeExecution": {}}, {"urlContext": {}},
               {"functionDeclarations": [declaration, {"name": "other"}]}],
        toolConfig={"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["lookup"]}}))
    assert [t.name for t in request.tools] == ["lookup", "other"]
    assert request.tools[0].parameters == {"type": "object", "properties": {"q": {"type": ["string", "null"]}}}
    assert request.tool_choice == ToolChoice("tool", "lookup")
    none = gemini_caller.decode_request(user(tools=[{"functionDeclarations": [declaration]}],
                                             toolConfig={"functionCallingConfig": {"mode": "NONE"}}))
    assert none.tool_choice == ToolChoice("none")


@pytest.mark.parametrize(("thinking", "effort", "budget"), [
    ({"thinkingLevel": "LOW"}, "low", None), ({"thinkingLevel": "minimal"}, "minimal", None),
    ({"thinkingBudget": 2048, "includeThoughts": True}, None, 2048), ({"thinkingBudget": -1}, "medium", None),
    ({"thinkingBudget": 0}, None, 0), ({"includeThoughts": True}, None, None),
])
def test_thinking_config_becomes_the_irs_effort_or_budget(thinking, effort, budget):
    request = gemini_caller.decode_request(user(generationConfig={"thinkingConfig": thinking}))
    assert (request.reasoning_effort, request.thinking_budget) == (effort, budget)


def test_generation_config_is_translated():
    request = gemini_caller.decode_request(user(systemInstruction={"parts": [{"text": "Be brief."}]}, generationConfig={
        "temperature": 0.3, "topP": 0.8, "topK": 4, "maxOutputTokens": 99, "stopSequences": ["END"],
        "candidateCount": 2, "responseMimeType": "application/json", "seed": 7}))
    assert (request.temperature, request.top_p, request.max_tokens, request.stop, request.n) == (
        0.3, 0.8, 99, ["END"], 2)
    assert request.system == ["Be brief."] and request.response_format == {"type": "json_object"}


@pytest.mark.parametrize(("sent", "param"), [
    (user(cachedContent="cachedContents/abc"), "cachedContent"),
    (user(generationConfig={"responseModalities": ["TEXT", "IMAGE"]}), "generationConfig.responseModalities"),
    (user(generationConfig={"temperature": "warm"}), "generationConfig.temperature"),
    (user(generationConfig={"stopSequences": "END"}), "generationConfig.stopSequences"),
    (user(systemInstruction=5), "systemInstruction"), (user(tools={"functionDeclarations": []}), "tools"),
    (user({"functionCall": {"args": {}}}), "contents[0].parts[0]"), (user({"text": 5}), "contents[0].parts[0]"),
])
def test_what_another_provider_cannot_do_is_refused_with_its_place(sent, param):
    with pytest.raises(TranslationError) as caught:
        gemini_caller.decode_request(sent)
    assert caught.value.param == param and caught.value.status == 400


# --- Answers, checked with the google-genai SDK's own types --------------------------------


ANSWER = ChatResponse(
    id="msg_1", model="claude-sonnet-4-5", finish="tool_use",
    parts=[Reasoning("Thinking it over.", "anthropic-sig", wire="anthropic"), Text("Let me look."),
           ToolCall("toolu_1", "read_file", '{"file_path":"a.txt"}')],
    usage=Usage(1300, 50, cache_read_tokens=1000, reasoning_tokens=20),
)


def test_an_answer_is_a_generate_content_response_the_sdk_reads():
    body = gemini_caller.encode_response(ANSWER)
    parsed = genai_types.GenerateContentResponse.model_validate(body)  # extra fields are forbidden there
    assert parsed.text == "Let me look."
    assert parsed.function_calls[0].name == "read_file" and parsed.function_calls[0].args == {"file_path": "a.txt"}
    assert parsed.function_calls[0].id == "toolu_1"  # Gemini CLI sends it back with the result
    part = parsed.candidates[0].content.parts[0]
    assert part.thought is True and part.text == "Thinking it over." and part.thought_signature is None
    assert parsed.candidates[0].finish_reason == genai_types.FinishReason.STOP
    usage = parsed.usage_metadata
    assert (usage.prompt_token_count, usage.candidates_token_count, usage.thoughts_token_count,
            usage.cached_content_token_count, usage.total_token_count) == (1300, 30, 20, 1000, 1350)
    assert (parsed.model_version, parsed.response_id) == ("claude-sonnet-4-5", "msg_1")


@pytest.mark.parametrize(("finish", "reason"), [("end", "STOP"), ("max_tokens", "MAX_TOKENS"),
                                                ("content_filter", "SAFETY"), ("stop_sequence", "STOP")])
def test_finish_reasons_are_geminis(finish, reason):
    body = gemini_caller.encode_response(ChatResponse("r", "m", [Text("x")], finish=finish))
    assert body["candidates"][0]["finishReason"] == reason


def test_only_a_gemini_providers_signature_reaches_a_gemini_caller_on_the_part_it_came_with():
    body = gemini_caller.encode_response(ChatResponse("r", "m", [
        Reasoning("", "gemini-sig", wire="gemini"), Reasoning("", "openai-sig", wire="openai"),
        ToolCall("c", "f", "{}"), Reasoning("", "last-sig", wire="gemini")]))
    assert body["candidates"][0]["content"]["parts"] == [
        {"functionCall": {"id": "c", "name": "f", "args": {}}, "thoughtSignature": "gemini-sig"},
        {"text": "", "thoughtSignature": "last-sig"}]
    encoder = gemini_caller.StreamEncoder()
    events = [ReasoningDelta("", "s1", wire="gemini"), ToolCallStart(0, "c", "f"), ToolCallDelta(0, "{}"),
              ReasoningDelta("", "s2", wire="gemini"), TextDelta("x"), ReasoningDelta("", "s3", wire="gemini")]
    wire = b"".join(encoder.encode(e) for e in events) + encoder.tail()
    parts = [orjson.loads(d)["candidates"][0]["content"]["parts"] for _, d in SSEParser().feed(wire)]
    assert [[p.get("thoughtSignature") for p in chunk] for chunk in parts] == [["s1"], ["s2"], ["s3"]]


STREAM: list[StreamEvent] = [
    StreamStart("msg_1", "claude-sonnet-4-5", 1300),
    ReasoningDelta("Thinking", wire="anthropic"), ReasoningDelta("", "sig", wire="anthropic"),
    TextDelta("Let me "), TextDelta("look."),
    ToolCallStart(0, "toolu_1", "read_file"), ToolCallDelta(0, '{"file_path":'), ToolCallDelta(0, '"a.txt"}'),
    ToolCallStart(1, "toolu_2", "read_file"), ToolCallDelta(1, '{"file_path":"b.txt"}'),
    StreamFinish("tool_use"), StreamUsage(1300, 50, cache_read_tokens=1000, reasoning_tokens=20),
]


def _encode(encoder: gemini_caller.StreamEncoder, events: list[StreamEvent]) -> bytes:
    return b"".join(encoder.encode(e) for e in events) + encoder.tail() + encoder.terminal


def test_a_stream_is_one_sdk_readable_chunk_per_event_over_sse():
    encoder = gemini_caller.StreamEncoder()
    wire = _encode(encoder, STREAM)
    assert encoder.content_type == "text/event-stream" and wire.endswith(b"\r\n\r\n")
    chunks = [genai_types.GenerateContentResponse.model_validate_json(data) for _, data in SSEParser().feed(wire)]
    assert [c.candidates[0].content.parts[0].thought for c in chunks[:1]] == [True]
    assert "".join(c.text or "" for c in chunks) == "Let me look."
    calls = [call for c in chunks for call in c.function_calls or []]
    assert [(c.id, c.args) for c in calls] == [("toolu_1", {"file_path": "a.txt"}), ("toolu_2", {"file_path": "b.txt"})]
    last = chunks[-1]
    assert last.candidates[0].finish_reason == genai_types.FinishReason.STOP
    assert last.candidates[0].content.parts == [] and last.usage_metadata.thoughts_token_count == 20
    assert all(c.response_id == "msg_1" and c.model_version == "claude-sonnet-4-5" for c in chunks)
    # Each function call goes out whole, in a chunk of its own, once its arguments are complete.
    assert [len(c.function_calls) for c in chunks if c.function_calls] == [1, 1]


def test_without_alt_sse_the_stream_is_one_json_array_written_as_it_grows():
    encoder = gemini_caller.StreamEncoder(sse=False)
    pieces = [encoder.encode(e) for e in STREAM] + [encoder.tail()]
    assert encoder.content_type == "application/json"
    assert pieces[0] == b"" and pieces[1].startswith(b"[{") and pieces[3].startswith(b"\n,{")
    terminal = encoder.terminal
    assert terminal == encoder.terminal and terminal.endswith(b"\n]")  # the pipeline reads it twice
    chunks = orjson.loads(b"".join(pieces) + terminal)
    assert all(genai_types.GenerateContentResponse.model_validate(c) for c in chunks)
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


def test_an_empty_answer_still_ends_with_a_finish_reason():
    for sse in (True, False):
        encoder = gemini_caller.StreamEncoder(model="m", sse=sse)
        wire = _encode(encoder, [])
        data = [d for _, d in SSEParser().feed(wire)] if sse else [orjson.dumps(c) for c in orjson.loads(wire)]
        assert [orjson.loads(d)["candidates"][0]["finishReason"] for d in data] == ["STOP"]


# --- Errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "name"), [
    (400, "INVALID_ARGUMENT"), (401, "UNAUTHENTICATED"), (403, "PERMISSION_DENIED"), (404, "NOT_FOUND"),
    (413, "INVALID_ARGUMENT"), (429, "RESOURCE_EXHAUSTED"), (500, "INTERNAL"), (502, "UNAVAILABLE"),
    (503, "UNAVAILABLE"), (504, "DEADLINE_EXCEEDED"), (529, "UNAVAILABLE"), (418, "FAILED_PRECONDITION"),
])
def test_errors_are_in_googles_shape(status, name):
    assert gemini_caller.error_body(status, "Nope.") == {"error": {"code": status, "message": "Nope.",
                                                                   "status": name}}


def test_an_error_inside_a_stream_keeps_the_streams_framing():
    sse = gemini_caller.StreamEncoder()
    sse.encode(TextDelta("partial"))
    event = sse.error_event("The provider stopped.", "stream_interrupted", 502)
    assert SSEParser().feed(event) == [(None, orjson.dumps(gemini_caller.error_body(502, "The provider stopped.")))]
    assert gemini_caller.sse_error_event("x", 503) == b'data: {"error":{"code":503,"message":"x","status":' \
                                                      b'"UNAVAILABLE"}}\r\n\r\n'
    array = gemini_caller.StreamEncoder(sse=False)
    wire = array.encode(TextDelta("partial")) + array.error_event("The provider stopped.", "x", 504)
    assert orjson.loads(wire)[-1] == {"error": {"code": 504, "message": "The provider stopped.",
                                                "status": "DEADLINE_EXCEEDED"}}


# --- End to end with the google-genai SDK's own client -------------------------------------


def _canned_answer(path: str, body: dict) -> tuple[str, bytes]:
    if ":streamGenerateContent" in path:
        encoder = gemini_caller.StreamEncoder(sse="alt=sse" in path)
        return encoder.content_type, _encode(encoder, STREAM)
    return "application/json", orjson.dumps(gemini_caller.encode_response(ANSWER))


@pytest.fixture
def canned_gemini() -> Iterator[tuple[str, list[dict]]]:
    """A local server answering generateContent and streamGenerateContent with this module's encoders."""
    with serve(_canned_answer) as server:
        yield server


def test_the_google_genai_client_reads_our_answers_and_streams(canned_gemini):
    from google import genai

    url, seen = canned_gemini
    client = genai.Client(api_key="tg-test", http_options=genai_types.HttpOptions(base_url=url))
    answer = client.models.generate_content(model="any-route", contents="hi")
    assert answer.text == "Let me look." and answer.function_calls[0].name == "read_file"
    chunks = list(client.models.generate_content_stream(model="any-route", contents="hi"))
    assert "".join(c.text or "" for c in chunks) == "Let me look."
    calls = [call.args for c in chunks for call in c.function_calls or []]
    assert calls == [{"file_path": "a.txt"}, {"file_path": "b.txt"}]
    assert chunks[-1].usage_metadata.total_token_count == 1350
    # google-genai 3.x calls /v1/ by default (Gemini CLI's JS SDK calls /v1beta/): the gateway serves both.
    assert [s["path"] for s in seen] == ["/v1/models/any-route:generateContent",
                                         "/v1/models/any-route:streamGenerateContent?alt=sse"]
    # What the SDK sent decodes here, as Gemini CLI's requests do.
    validate_gemini_generate(seen[0]["body"])
    assert gemini_caller.decode_request(seen[0]["body"]).messages[0].parts == [Text("hi")]


def _cli_turns(path: str, body: dict) -> tuple[str, bytes]:
    """A Claude-like provider's answers as Gemini CLI gets them: a read_file call, then the answer."""
    if ":generateContent" in path:  # the CLI's model router wants a JSON verdict
        verdict = orjson.dumps({"complexity_reasoning": "a file read", "complexity_score": 10}).decode()
        return "application/json", orjson.dumps(gemini_caller.encode_response(ChatResponse("r", "c", [Text(verdict)])))
    encoder = gemini_caller.StreamEncoder(sse="alt=sse" in path)
    if any("functionResponse" in part for part in body["contents"][-1]["parts"]):
        events: list[StreamEvent] = [StreamStart("msg_2", "claude", 20), ReasoningDelta("Got it.", wire="anthropic"),
                                     TextDelta("The file says: "), TextDelta("hello"), StreamFinish("end"),
                                     StreamUsage(20, 5, cache_read_tokens=10)]
    else:
        events = [StreamStart("msg_1", "claude", 10), ReasoningDelta("Let me read it.", wire="anthropic"),
                  ReasoningDelta("", "anthropic-signature", wire="anthropic"), TextDelta("Reading."),
                  ToolCallStart(0, "toolu_01ABC", "read_file"), ToolCallDelta(0, '{"file_path": '),
                  ToolCallDelta(0, '"hello.txt"}'), StreamFinish("tool_use"), StreamUsage(10, 5)]
    return encoder.content_type, _encode(encoder, events)


@pytest.mark.e2e
def test_gemini_cli_runs_a_tool_turn_on_our_stream_and_sends_the_result_back():
    require_agent("gemini")
    with serve(_cli_turns) as (url, seen), tempfile.TemporaryDirectory() as home:
        (Path(home) / "hello.txt").write_text("hello from the gateway test\n")
        result = run_gemini(url, home, prompt="What does hello.txt say?")
    assert result.returncode == 0 and "The file says: hello" in result.stdout, result.stderr[-2000:]
    follow_up = seen[-1]["body"]
    validate_gemini_generate(follow_up)
    request = gemini_caller.decode_request(follow_up, stream=True)
    call, answer = request.messages[-2].parts[-1], request.messages[-1].parts[-1]
    assert isinstance(call, ToolCall) and call.id == "toolu_01ABC" and call.name == "read_file"
    assert answer == ToolResult("toolu_01ABC", "hello from the gateway test\n", "read_file")
    # The CLI marks a call that came without a signature with Google's skip value; it stays Gemini's.
    assert "anthropic-signature" not in orjson.dumps(follow_up).decode()
