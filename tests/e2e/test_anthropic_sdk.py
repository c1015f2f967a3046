"""The official anthropic SDK against the real server, served by Anthropic, OpenAI and Gemini deployments."""
from __future__ import annotations

from types import SimpleNamespace

import anthropic
import pytest

from proxy.sandbox import expected_usage

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

MESSAGES = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": "Say hello"}]
TOOLS = [{"name": "get_weather", "description": "Weather for a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
ROUTES = ["claude", "gpt", "gem"]


@pytest.fixture(scope="module")
def gateway(provider_gateway) -> SimpleNamespace:
    return provider_gateway


@pytest.fixture
def client(gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0, timeout=20)


@pytest.mark.parametrize("model", ROUTES)
def test_it_answers_a_message(client, model):
    raw = client.messages.with_raw_response.create(model=model, max_tokens=100, system="Be brief.",
                                                   messages=MESSAGES)
    message = raw.parse()
    assert message.content[0].text == "Sandbox reply to: Say hello"
    assert message.stop_reason == "end_turn"
    usage = expected_usage("anthropic", {"model": "m", "max_tokens": 100, "system": "Be brief.",
                                         "messages": MESSAGES})
    assert (message.usage.input_tokens, message.usage.output_tokens) == (usage.prompt_tokens,
                                                                         usage.completion_tokens)
    assert raw.headers["x-tollgate-provider"] == {"claude": "e2e-anthropic", "gpt": "e2e-openai",
                                                  "gem": "e2e-gemini"}[model]


@pytest.mark.parametrize("model", ROUTES)
def test_it_streams_a_message(client, model):
    with client.messages.stream(model=model, max_tokens=100, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Sandbox reply to: Say hello"
    usage = expected_usage("anthropic", {"model": "m", "max_tokens": 100, "messages": MESSAGES})
    assert final.usage.output_tokens == usage.completion_tokens
    assert final.usage.input_tokens == usage.prompt_tokens
    assert final.stop_reason == "end_turn"


@pytest.mark.parametrize("model", ROUTES)
def test_it_calls_tools_and_takes_their_results(client, model):
    message = client.messages.create(model=model, max_tokens=100, messages=MESSAGES, tools=TOOLS,
                                     tool_choice={"type": "any"})
    assert message.stop_reason == "tool_use"
    call = message.content[-1]
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "sandbox"}
    follow_up = [*MESSAGES, {"role": "assistant", "content": message.content},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]}]
    answer = client.messages.create(model=model, max_tokens=100, messages=follow_up, tools=TOOLS)
    assert answer.content[0].text == "Tool result received: sunny"

    with client.messages.stream(model=model, max_tokens=100, messages=MESSAGES, tools=TOOLS) as stream:
        final = stream.get_final_message()
    assert final.content[-1].input == {"city": "sandbox"}
    assert final.stop_reason == "tool_use"


def test_it_cuts_at_max_tokens_and_stop_sequences(client):
    for model in ROUTES:
        cut = client.messages.create(model=model, max_tokens=2, messages=MESSAGES)
        assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 2
    native = client.messages.create(model="claude", max_tokens=100, messages=MESSAGES, stop_sequences=["hello"])
    assert native.content[0].text == "Sandbox reply to: Say " and native.stop_reason == "stop_sequence"


def test_errors_come_back_in_anthropics_shape(gateway, client):
    bad = anthropic.Anthropic(base_url=gateway.url, api_key="tg-nonsense", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="claude", max_tokens=10, messages=MESSAGES)
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="no-such-model", max_tokens=10, messages=MESSAGES)
    assert caught.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="claude", max_tokens=10, messages=[])


def test_it_fails_over_on_529(client):
    raw = client.messages.with_raw_response.create(model="fail-529", max_tokens=50, messages=MESSAGES)
    assert raw.parse().content[0].text == "Sandbox reply to: Say hello"
    assert raw.headers["x-tollgate-provider"] == "e2e-openai"


def test_a_stream_cut_mid_way_ends_with_an_error_event(client):
    with pytest.raises(anthropic.APIStatusError) as caught:
        with client.messages.stream(model="cut-claude", max_tokens=100, messages=MESSAGES) as stream:
            for _ in stream:
                pass
    assert "ended early" in str(caught.value)


def test_it_counts_tokens(client):
    counted = client.messages.count_tokens(model="claude", messages=MESSAGES)
    assert counted.input_tokens == expected_usage("anthropic", {"model": "m", "max_tokens": 1,
                                                                "messages": MESSAGES}).prompt_tokens
    assert client.messages.count_tokens(model="gpt", messages=MESSAGES).input_tokens > 0


def test_it_lists_models_for_the_anthropic_sdk(client):
    assert {"claude", "gpt", "gem"} <= {m.id for m in client.models.list()}
