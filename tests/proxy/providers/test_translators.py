"""Translators on payloads shaped like the providers' documented examples."""
from __future__ import annotations

import orjson

from proxy.providers import anthropic, gemini, openai
from proxy.providers.ir import (
    Image,
    Reasoning,
    StreamFinish,
    StreamStart,
    StreamUsage,
    Text,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolResult,
)
from proxy.providers.sse import SSEParser

# OpenAI's function-calling guide: a conversation with a tool call and its result.
OPENAI_TOOL_CONVERSATION = {
    "model": "gpt-4o",
    "messages": [
        {"role": "developer", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "text", "text": "What's the weather like in Paris today?"},
                                     {"type": "image_url", "image_url": {"url": "https://example.com/paris.jpg"}}]},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_12345xyz", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris, France\"}"}}]},
        {"role": "tool", "tool_call_id": "call_12345xyz", "content": "14 degrees Celsius"},
    ],
    "tools": [{"type": "function", "function": {
        "name": "get_weather", "description": "Get current temperature for a given location.",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"],
                       "additionalProperties": False}, "strict": True}}],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
    "max_completion_tokens": 300, "temperature": 1.5, "stop": "\n\n",
}


def test_an_openai_tool_conversation_becomes_an_anthropic_request():
    request = openai.decode_request(OPENAI_TOOL_CONVERSATION)
    payload = anthropic.encode_request(request, model="claude-sonnet-4-5", default_max_tokens=1024, stream=False)
    assert payload["system"] == "You are a helpful assistant."
    assert payload["max_tokens"] == 300
    assert payload["temperature"] == 1.0  # Anthropic's scale stops at 1
    assert payload["stop_sequences"] == ["\n\n"]
    assert payload["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "What's the weather like in Paris today?"},
                                     {"type": "image", "source": {"type": "url",
                                                                  "url": "https://example.com/paris.jpg"}}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_12345xyz", "name": "get_weather",
                                           "input": {"location": "Paris, France"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_12345xyz",
                                      "content": "14 degrees Celsius"}]},
    ]
    assert payload["tools"][0]["input_schema"]["required"] == ["location"]
    assert payload["tool_choice"] == {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}


def test_an_openai_tool_conversation_becomes_a_gemini_request():
    request = openai.decode_request(OPENAI_TOOL_CONVERSATION)
    payload = gemini.encode_request(request)
    assert payload["systemInstruction"] == {"parts": [{"text": "You are a helpful assistant."}]}
    assert payload["contents"][1] == {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"location": "Paris, France"}}}]}
    # The result names the function, which OpenAI's tool message does not: found from the call.
    assert payload["contents"][2] == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_weather", "response": {"content": "14 degrees Celsius"}}}]}
    declaration = payload["tools"][0]["functionDeclarations"][0]
    assert "additionalProperties" not in declaration["parameters"]
    assert payload["toolConfig"] == {"functionCallingConfig": {"mode": "ANY",
                                                               "allowedFunctionNames": ["get_weather"]}}
    assert payload["generationConfig"] == {"maxOutputTokens": 300, "temperature": 1.5, "stopSequences": ["\n\n"]}


# Anthropic's tool-use guide: the response that calls a tool.
ANTHROPIC_TOOL_RESPONSE = {
    "id": "msg_01Aq9w938a90dw8q", "model": "claude-sonnet-4-5", "stop_reason": "tool_use", "role": "assistant",
    "type": "message", "stop_sequence": None,
    "content": [
        {"type": "text", "text": "I'll check the current weather in San Francisco for you."},
        {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
         "input": {"location": "San Francisco, CA", "unit": "celsius"}},
    ],
    "usage": {"input_tokens": 472, "output_tokens": 91, "cache_read_input_tokens": 8},
}


def test_an_anthropic_tool_use_becomes_an_openai_completion():
    completion = openai.encode_response(anthropic.decode_response(ANTHROPIC_TOOL_RESPONSE))
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "I'll check the current weather in San Francisco for you."
    assert choice["message"]["tool_calls"] == [{
        "id": "toolu_01A09q90qw90lq917835lq9", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"location":"San Francisco, CA","unit":"celsius"}'}}]
    assert completion["usage"] == {"prompt_tokens": 480, "completion_tokens": 91, "total_tokens": 571,
                                   "prompt_tokens_details": {"cached_tokens": 8},
                                   "completion_tokens_details": {"reasoning_tokens": 0}}


# Anthropic's streaming guide: a tool_use stream, input_json_delta pieces included.
ANTHROPIC_TOOL_STREAM = b"""event: message_start
data: {"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-sonnet-4-5","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"location\\":"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \\"San Francisco, CA\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"""  # noqa: E501


def _decode(decoder, wire: bytes, step: int = 7) -> list:
    parser, events = SSEParser(), []
    for i in range(0, len(wire), step):
        for name, data in parser.feed(wire[i:i + step]):
            events += decoder.feed(name, data)
    return events + decoder.close()


def test_an_anthropic_tool_stream_decodes_event_by_event():
    events = _decode(anthropic.StreamDecoder(), ANTHROPIC_TOOL_STREAM)
    assert events == [
        StreamStart("msg_014p7gG3wDgGV9EUtLvnow3U", "claude-sonnet-4-5", 472),
        TextDelta("Okay"),
        ToolCallStart(0, "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather"),
        ToolCallDelta(0, '{"location":'),
        ToolCallDelta(0, ' "San Francisco, CA"}'),
        StreamFinish("tool_use"),
        StreamUsage(472, 89),
    ]


def test_an_anthropic_tool_stream_becomes_openai_chunks_as_it_arrives():
    encoder = openai.StreamEncoder(include_usage=True)
    chunks = [encoder.encode(e) for e in _decode(anthropic.StreamDecoder(), ANTHROPIC_TOOL_STREAM)]
    assert all(c.startswith(b"data: ") for c in chunks if c)
    tail = encoder.tail()
    usage = orjson.loads(tail.split(b"data: ")[-1])["usage"]
    assert usage == {"prompt_tokens": 472, "completion_tokens": 89, "total_tokens": 561,
                     "prompt_tokens_details": {"cached_tokens": 0},
                     "completion_tokens_details": {"reasoning_tokens": 0}}
    deltas = [orjson.loads(c[6:])["choices"][0]["delta"] for c in chunks if c]
    assert deltas[2]["tool_calls"][0]["function"]["name"] == "get_weather"


# OpenAI's streaming guide: tool call deltas.
OPENAI_TOOL_STREAM = b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in [
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o", "choices": [
        {"index": 0, "delta": {"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "type": "function",
             "function": {"name": "get_weather", "arguments": ""}}]}, "finish_reason": None}]},
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o", "choices": [
        {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"location\":"}}]},
         "finish_reason": None}]},
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o", "choices": [
        {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]},
         "finish_reason": None}]},
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o", "choices": [
        {"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o", "choices": [],
     "usage": {"prompt_tokens": 80, "completion_tokens": 17, "total_tokens": 97}},
]) + b"data: [DONE]\n\n"


def test_an_openai_tool_stream_becomes_anthropic_events():
    encoder = anthropic.StreamEncoder()
    wire = b"".join(encoder.encode(e) for e in _decode(openai.StreamDecoder(), OPENAI_TOOL_STREAM))
    wire += encoder.tail() + encoder.terminal
    events = [(n, orjson.loads(d)) for n, d in SSEParser().feed(wire)]
    assert [n for n, _ in events] == ["message_start", "content_block_start", "content_block_delta",
                                      "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert events[1][1]["content_block"] == {"type": "tool_use", "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA",
                                             "name": "get_weather", "input": {}}
    assert events[5][1] == {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                            "usage": {"output_tokens": 17, "input_tokens": 80, "cache_read_input_tokens": 0,
                                      "cache_creation_input_tokens": 0, "cache_creation": {
                                          "ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}}}


# Gemini's function-calling docs: a functionCall answer, streamed with CRLF-terminated SSE events.
GEMINI_STREAM = (
    b'data: {"candidates": [{"content": {"parts": [{"text": "Let me check"}],"role": "model"},"index": 0}],'
    b'"usageMetadata": {"promptTokenCount": 30,"totalTokenCount": 30},"modelVersion": "gemini-2.5-flash",'
    b'"responseId": "abc"}\r\n\r\n'
    b'data: {"candidates": [{"content": {"parts": [{"functionCall": {"name": "schedule_meeting",'
    b'"args": {"topic": "Q3 planning","attendees": ["Bob","Alice"]}}}],"role": "model"},'
    b'"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 30,"candidatesTokenCount": 12,'
    b'"thoughtsTokenCount": 5,"totalTokenCount": 47},"modelVersion": "gemini-2.5-flash","responseId": "abc"}\r\n\r\n'
)


def test_a_gemini_stream_with_crlf_events_decodes_whatever_the_chunking():
    for step in (1, 5, 64, len(GEMINI_STREAM)):
        events = _decode(gemini.StreamDecoder(), GEMINI_STREAM, step)
        assert events[0] == StreamStart("abc", "gemini-2.5-flash")
        assert events[1] == TextDelta("Let me check")
        assert isinstance(events[2], ToolCallStart) and events[2].name == "schedule_meeting"
        assert orjson.loads(events[3].arguments) == {"topic": "Q3 planning", "attendees": ["Bob", "Alice"]}
        assert events[4:] == [StreamFinish("tool_use"), StreamUsage(30, 17, reasoning_tokens=5)]


def test_a_gemini_answer_becomes_an_anthropic_message():
    answer = gemini.decode_response({
        "candidates": [{"content": {"parts": [{"text": "Hi", "thought": True}, {"text": "Hello there"}],
                                    "role": "model"}, "finishReason": "MAX_TOKENS"}],
        "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2}, "modelVersion": "gemini-2.5-pro",
        "responseId": "r1"})
    message = anthropic.encode_response(answer)
    assert message["content"] == [{"type": "text", "text": "Hello there"}]
    assert message["stop_reason"] == "max_tokens"
    assert message["usage"]["input_tokens"] == 4 and message["usage"]["output_tokens"] == 2


def test_an_anthropic_request_with_tool_results_and_images_decodes():
    request = anthropic.decode_request({
        "model": "m", "max_tokens": 10, "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                                                      "data": "/9j/4AAQ"}},
                                         {"type": "text", "text": "What is this?"}]},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "x"},
                                              {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
                                          "content": [{"type": "text", "text": "failed"}]},
                                         {"type": "text", "text": "Try again"}]},
        ]})
    assert request.system == ["Be brief."]
    assert request.messages[0].parts == [Image(media_type="image/jpeg", data="/9j/4AAQ"), Text("What is this?")]
    assert request.messages[1].parts == [Reasoning("hm", "x", wire="anthropic"), ToolCall("toolu_1", "look", "{}")]
    assert request.messages[2].parts == [ToolResult("toolu_1", "failed", "look", True)]
    assert request.messages[3].parts == [Text("Try again")]
    payload = openai.encode_request(request, model="gpt", stream=True)
    assert payload["messages"][1]["content"][0] == {"type": "image_url",
                                                    "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}
    assert payload["messages"][3] == {"role": "tool", "tool_call_id": "toolu_1", "content": "failed"}
    assert payload["stream_options"] == {"include_usage": True}


def test_the_sse_parser_follows_the_spec():
    parser = SSEParser()
    events = parser.feed(b": keep-alive\r\nevent: a\r\ndata: 1\r\ndata: 2\r")
    assert events == []
    assert parser.feed(b"\n\r\ndata:3\n\n") == [("a", b"1\n2"), (None, b"3")]
    assert parser.feed(b"data: 4") == []
    assert parser.close() == [(None, b"4")]
