"""Property tests: the internal representation survives a trip through each wire format and back."""
from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.providers import anthropic, openai
from proxy.providers.ir import (
    ChatRequest,
    ChatResponse,
    Message,
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
    Usage,
    fill_tool_result_names,
)
from proxy.providers.sse import SSEParser

words = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=30)
idents = st.from_regex(r"[A-Za-z0-9_-]{4,20}", fullmatch=True)
names = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
arguments = st.dictionaries(names, st.one_of(st.integers(-1000, 1000), words, st.booleans()), max_size=3).map(
    lambda d: orjson.dumps(d).decode())


@st.composite
def conversations(draw) -> list[Message]:
    """Alternating turns, as both formats require: user, assistant (maybe calling tools), their results..."""
    messages: list[Message] = []
    turns = draw(st.integers(1, 4))
    for turn in range(turns):
        messages.append(Message("user", [Text(t) for t in draw(st.lists(words, min_size=1, max_size=2))]))
        if turn < turns - 1 or draw(st.booleans()):
            parts: list = [Text(draw(words))] if draw(st.booleans()) else []
            calls = draw(st.lists(st.tuples(idents, names, arguments), max_size=2, unique_by=lambda c: c[0]))
            parts += [ToolCall(*c) for c in calls]
            if not parts:
                parts = [Text(draw(words))]
            messages.append(Message("assistant", parts))
            if calls:
                messages.append(Message("tool", [ToolResult(c[0], draw(words)) for c in calls]))
                messages.append(Message("assistant", [Text(draw(words))]))
    fill_tool_result_names(messages)
    return messages


@st.composite
def requests(draw) -> ChatRequest:
    tools = draw(st.lists(st.builds(ToolDef, names, st.none() | words,
                                    st.just({"type": "object", "properties": {"x": {"type": "string"}}})),
                          max_size=2, unique_by=lambda t: t.name))
    choice = None
    if tools:
        choice = draw(st.none() | st.sampled_from([ToolChoice("auto"), ToolChoice("required"), ToolChoice("none"),
                                                    ToolChoice("tool", tools[0].name)]))
    return ChatRequest(
        messages=draw(conversations()), system=draw(st.lists(words, max_size=1)), tools=tools, tool_choice=choice,
        max_tokens=draw(st.integers(1, 100_000)), temperature=draw(st.none() | st.floats(0, 1)),
        top_p=draw(st.none() | st.floats(0, 1)), stop=draw(st.lists(words, max_size=3)),
        stream=draw(st.booleans()), user=draw(st.none() | words),
    )


@settings(max_examples=150, deadline=None)
@given(requests())
def test_an_openai_request_round_trips(request):
    encoded = openai.encode_request(request, model="m", stream=request.stream)
    decoded = openai.decode_request(orjson.loads(orjson.dumps(encoded)))
    decoded.include_usage = False
    assert decoded == request


@settings(max_examples=150, deadline=None)
@given(requests())
def test_an_anthropic_request_round_trips(request):
    encoded = anthropic.encode_request(request, model="m", default_max_tokens=1, stream=request.stream)
    assert anthropic.decode_request(orjson.loads(orjson.dumps(encoded))) == request


@st.composite
def responses(draw) -> ChatResponse:
    parts: list = [Text(draw(words))] if draw(st.booleans()) else []
    parts += [ToolCall(*c) for c in draw(st.lists(st.tuples(idents, names, arguments), max_size=2))]
    finish = "tool_use" if any(isinstance(p, ToolCall) for p in parts) else draw(
        st.sampled_from(["end", "max_tokens", "content_filter"]))
    return ChatResponse(id=draw(idents), model=draw(names), parts=parts or [Text(draw(words))], finish=finish,
                        usage=Usage(draw(st.integers(0, 10**6)), draw(st.integers(0, 10**6))))


@settings(max_examples=150, deadline=None)
@given(responses())
def test_a_response_round_trips_through_openai(response):
    assert openai.decode_response(orjson.loads(orjson.dumps(openai.encode_response(response)))) == response


@settings(max_examples=150, deadline=None)
@given(responses())
def test_a_response_round_trips_through_anthropic(response):
    assert anthropic.decode_response(orjson.loads(orjson.dumps(anthropic.encode_response(response)))) == response


def _events_of(response: ChatResponse, pieces: int) -> list:
    events: list = [StreamStart(response.id, response.model)]
    tools = 0
    for part in response.parts:
        if isinstance(part, Text):
            size = max(1, len(part.text) // pieces)
            events += [TextDelta(part.text[i:i + size]) for i in range(0, len(part.text), size)]
        else:
            events.append(ToolCallStart(tools, part.id, part.name))
            events += [ToolCallDelta(tools, part.arguments[i:i + 3]) for i in range(0, len(part.arguments), 3)]
            tools += 1
    return [*events, StreamFinish(response.finish), StreamUsage(response.usage.input_tokens,
                                                               response.usage.output_tokens)]


def _collect(events: list) -> ChatResponse:
    """Fold stream events back into a response, as a client library would."""
    text, calls, finish, usage, start = "", {}, "end", Usage(), None
    for event in events:
        if isinstance(event, StreamStart):
            start = event
            usage.input_tokens = event.input_tokens if event.input_tokens is not None else usage.input_tokens
        elif isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, ToolCallStart):
            calls[event.index] = [event.id, event.name, ""]
        elif isinstance(event, ToolCallDelta):
            calls[event.index][2] += event.arguments
        elif isinstance(event, StreamFinish):
            finish = event.finish
        elif isinstance(event, StreamUsage):
            usage = Usage(event.input_tokens if event.input_tokens is not None else usage.input_tokens,
                          event.output_tokens)
    parts = ([Text(text)] if text else []) + [ToolCall(*c) for _, c in sorted(calls.items())]
    return ChatResponse(id=start.id, model=start.model, parts=parts, finish=finish, usage=usage)


@settings(max_examples=100, deadline=None)
@given(responses(), st.integers(1, 5), st.integers(1, 40))
def test_a_stream_round_trips_through_each_format_in_any_chunking(response, pieces, cut):
    for encoder, decoder in ((openai.StreamEncoder(include_usage=True), openai.StreamDecoder()),
                             (anthropic.StreamEncoder(), anthropic.StreamDecoder())):
        wire = b"".join(encoder.encode(e) for e in _events_of(response, pieces)) + encoder.tail() + encoder.terminal
        parser, out = SSEParser(), []
        for i in range(0, len(wire), cut):
            for name, data in parser.feed(wire[i:i + cut]):
                out += decoder.feed(name, data)
        for name, data in parser.close():
            out += decoder.feed(name, data)
        collected = _collect(out + decoder.close())
        expected = ChatResponse(response.id, response.model, [Text("".join(
            p.text for p in response.parts if isinstance(p, Text)))] if any(
            isinstance(p, Text) for p in response.parts) else [], response.finish, None, response.usage)
        expected.parts += [p for p in response.parts if isinstance(p, ToolCall)]
        assert collected == expected
