"""The sandbox's OpenAI Responses API (/v1/responses), through the official SDK and raw HTTP."""
from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest

from proxy.sandbox import expected_usage

AUTH = {"authorization": "Bearer sk-test"}
HELLO = {"model": "sandbox-small", "instructions": "Be brief.", "input": "Say hello"}
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather of a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
    "required": ["city", "unit"]}}
WEATHER_ARGUMENTS = '{"city":"sandbox","unit":"C"}'
TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added", *["response.output_text.delta"] * 8, "response.output_text.done",
               "response.content_part.done", "response.output_item.done", "response.completed"]
CALL_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               *["response.function_call_arguments.delta"] * 8, "response.function_call_arguments.done",
               "response.output_item.done", "response.completed"]


def post(sandbox, body: Any, headers: dict | None = None) -> httpx.Response:
    return sandbox.http.post(f"{sandbox.url}/v1/responses", content=orjson.dumps(body),
                             headers={**AUTH, **(headers or {})})


def sse_events(raw: str) -> list[tuple[str, dict]]:
    """(event name, parsed data) of each SSE event."""
    events = []
    for block in raw.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        if "data" in fields:
            events.append((fields.get("event", ""), orjson.loads(fields["data"])))
    return events


def test_it_answers_a_string_input_with_instructions_for_the_sdk(oai):
    response = oai.responses.create(**HELLO)
    assert response.output_text == "Sandbox reply to: Say hello"
    assert (response.status, response.incomplete_details, response.model) == ("completed", None, "sandbox-small")
    assert response.id.startswith("resp_") and response.output[0].id.startswith("msg_")
    assert response.instructions == "Be brief."
    usage = response.usage
    # The same conversation as Chat Completions' HELLO: the same counts.
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (10, 7, 17)
    assert (usage.input_tokens_details.cached_tokens, usage.output_tokens_details.reasoning_tokens) == (0, 0)
    chat = {"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "Say hello"}]}
    assert expected_usage("openai.responses", HELLO) == expected_usage("openai", chat)


def test_it_streams_numbered_events_in_the_api_order(sandbox):
    response = post(sandbox, {**HELLO, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert [name for name, _ in events] == TEXT_EVENTS
    assert all(name == data["type"] for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(TEXT_EVENTS)))
    created, final = events[0][1]["response"], events[-1][1]["response"]
    assert (created["status"], created["output"], created["usage"]) == ("in_progress", [], None)
    assert created["id"] == final["id"]
    deltas = "".join(data["delta"] for name, data in events if name == "response.output_text.delta")
    assert deltas == "Sandbox reply to: Say hello" == final["output"][0]["content"][0]["text"]
    assert events[-4][1]["text"] == deltas  # output_text.done
    assert final["usage"]["input_tokens"] == 10 and final["usage"]["output_tokens"] == 7
    assert "[DONE]" not in response.text  # the Responses stream has no sentinel


def test_the_sdk_stream_helper_accepts_the_events_and_rebuilds_the_response(oai):
    with oai.responses.stream(**HELLO) as stream:
        names = [event.type for event in stream]
        final = stream.get_final_response()
    assert names == TEXT_EVENTS
    assert final.output_text == "Sandbox reply to: Say hello"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (10, 7)

    deltas = [event.delta for event in oai.responses.create(**HELLO, stream=True)
              if event.type == "response.output_text.delta"]
    assert "".join(deltas) == "Sandbox reply to: Say hello"


def test_it_calls_the_first_function_tool_like_the_chat_format(oai):
    body = {"model": "m", "input": "Weather in Paris?",
            "tools": [{"type": "web_search"}, WEATHER, {"type": "custom", "name": "apply_patch"}]}
    response = oai.responses.create(**body)
    (call,) = response.output
    assert (call.type, call.name, call.arguments, call.status) == ("function_call", "get_weather",
                                                                   WEATHER_ARGUMENTS, "completed")
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    # Completion tokens count the arguments' JSON, as in every format.
    assert response.usage.output_tokens == expected_usage("openai.responses", body).completion_tokens == 8

    with oai.responses.stream(**body) as stream:
        names = [event.type for event in stream]
        final = stream.get_final_response()
    assert names == CALL_EVENTS
    assert final.output[0].arguments == WEATHER_ARGUMENTS


def test_it_streams_function_call_arguments_in_pieces(sandbox):
    events = sse_events(post(sandbox, {"model": "m", "input": "Weather?", "tools": [WEATHER], "stream": True},
                             headers={"x-sandbox-chunks": "3"}).text)
    added = events[2][1]
    assert added["item"] == {"id": added["item"]["id"], "type": "function_call", "status": "in_progress",
                             "arguments": "", "call_id": added["item"]["call_id"], "name": "get_weather"}
    pieces = [data["delta"] for name, data in events if name == "response.function_call_arguments.delta"]
    assert len(pieces) == 3 and "".join(pieces) == WEATHER_ARGUMENTS
    done = events[-3][1]
    assert (done["type"], done["arguments"], done["item_id"]) == ("response.function_call_arguments.done",
                                                                  WEATHER_ARGUMENTS, added["item"]["id"])
    assert events[-2][1]["item"]["status"] == "completed"


def test_it_honours_tool_choice(oai):
    other = {**WEATHER, "name": "get_time", "parameters": {"type": "object", "properties": {}}}
    none = oai.responses.create(model="m", input="Hi", tools=[WEATHER, other], tool_choice="none")
    assert none.output_text == "Sandbox reply to: Hi"
    forced = oai.responses.create(model="m", input="Hi", tools=[WEATHER, other],
                                  tool_choice={"type": "function", "name": "get_time"})
    assert (forced.output[0].name, forced.output[0].arguments) == ("get_time", "{}")


def test_it_replies_to_a_function_call_output_item(oai):
    history = [{"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
               {"type": "reasoning", "id": "rs_1", "summary": []},
               {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": WEATHER_ARGUMENTS},
               {"type": "function_call_output", "call_id": "call_1", "output": "Sunny, 21 C"}]
    response = oai.responses.create(model="m", input=history, tools=[WEATHER])
    assert response.output_text == "Tool result received: Sunny, 21 C"
    parts = [{"type": "input_text", "text": "Sunny"}, {"type": "input_image", "image_url": "data:,"}]
    response = oai.responses.create(model="m", input=[*history[:3], {**history[3], "output": parts}], tools=[WEATHER])
    assert response.output_text == "Tool result received: Sunny"


def test_it_counts_a_conversation_the_same_as_chat_completions():
    chat = {"model": "m", "tools": [{"type": "function", "function": {
                "name": WEATHER["name"], "description": WEATHER["description"], "parameters": WEATHER["parameters"]}}],
            "messages": [{"role": "developer", "content": "Be brief."},
                         {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                                                      {"type": "image_url", "image_url": {"url": "data:,"}}]},
                         {"role": "assistant", "content": "Let me look.", "tool_calls": [
                             {"id": "c1", "type": "function",
                              "function": {"name": "get_weather", "arguments": '{"unit": "C", "city": "x"}'}}]},
                         {"role": "tool", "tool_call_id": "c1", "content": "Sunny"}]}
    responses = {"model": "m", "tools": [WEATHER], "instructions": "Be brief.",
                 "input": [{"role": "user", "content": [{"type": "input_text", "text": "Weather?"},
                                                        {"type": "input_image", "image_url": "data:,"}]},
                           {"type": "message", "role": "assistant",
                            "content": [{"type": "output_text", "text": "Let me look."}]},
                           {"type": "function_call", "call_id": "c1", "name": "get_weather",
                            "arguments": '{"city":"x","unit":"C"}'},
                           {"type": "function_call_output", "call_id": "c1", "output": "Sunny"}]}
    assert expected_usage("openai.responses", responses) == expected_usage("openai", chat)


def test_it_stops_at_max_output_tokens_as_incomplete(sandbox, oai):
    body = {"model": "m", "input": "Say hello to everybody in the room", "max_output_tokens": 3}
    response = oai.responses.create(**body)
    assert (response.status, response.incomplete_details.reason) == ("incomplete", "max_output_tokens")
    assert response.output[0].status == "incomplete"
    assert response.output_text == "Sandbox repl" and response.usage.output_tokens == 3
    events = sse_events(post(sandbox, {**body, "stream": True}).text)
    name, last = events[-1]
    assert (name, last["response"]["status"]) == ("response.incomplete", "incomplete")
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "m"}, "input"),
    ({"model": "m", "input": []}, "input"),
    ({"input": "hi"}, "model"),
    ({"model": "m", "input": [{"type": "message", "role": "robot", "content": "hi"}]}, "input[0].role"),
    ({"model": "m", "input": [{"content": "hi"}]}, "input[0]"),
    ({"model": "m", "input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ({"model": "m", "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "m", "input": "hi", "tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"model": "m", "input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
     "tool_choice"),
])
def test_it_rejects_bad_bodies_in_the_openai_error_shape(sandbox, body, param):
    response = post(sandbox, body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["error"]["param"] == param


def test_it_fails_responses_calls_like_the_other_generation_calls(sandbox, oai):
    with pytest.raises(openai.RateLimitError):
        oai.responses.create(**HELLO, extra_headers={"x-sandbox-fail-status": "429"})
    sandbox.http.post(f"{sandbox.url}/_sandbox/config", json={"require_key": "sk-upstream"}).raise_for_status()
    with pytest.raises(openai.AuthenticationError):
        oai.responses.create(**HELLO)
    stats = sandbox.http.get(f"{sandbox.url}/_sandbox/stats").json()
    assert stats["by_path"] == {"/v1/responses": 2} and stats["by_status"] == {"429": 1, "401": 1}


def test_it_cuts_a_responses_stream_after_disconnect_after_events(sandbox):
    with sandbox.http.stream("POST", f"{sandbox.url}/v1/responses", json={**HELLO, "stream": True},
                             headers={**AUTH, "x-sandbox-disconnect-after": "5"}) as response:
        received = []
        with pytest.raises(httpx.RemoteProtocolError):
            received.extend(line for line in response.iter_lines() if line.startswith("event: "))
    assert received == [f"event: {name}" for name in TEXT_EVENTS[:5]]
