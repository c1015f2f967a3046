"""Failover seen through the official openai SDK on the real server: every cause, and the mid-stream cut."""
from __future__ import annotations

import json
from types import SimpleNamespace

import httpx
import openai
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def gateway(provider_gateway) -> SimpleNamespace:
    return provider_gateway


@pytest.fixture
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=gateway.key, max_retries=0, timeout=20)


def _statuses_seen(gateway, provider_header: str, value: str) -> list[int]:
    seen = httpx.get(f"{gateway.sandbox_url}/_sandbox/requests", params={"limit": 200}).json()["requests"]
    return [r for r in seen if r["headers"].get(provider_header) == value]


@pytest.mark.parametrize("cause", ["429", "500", "503", "529", "timeout", "down"])
@pytest.mark.parametrize("stream", [False, True])
def test_it_fails_over(client, gateway, cause, stream):
    """test_it_fails_over_on_429 / _500 / _503 / _529 / _timeout / _down, stream and not."""
    if stream:
        raw = client.chat.completions.with_raw_response.create(model=f"fail-{cause}", messages=MESSAGES,
                                                               stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        raw = client.chat.completions.with_raw_response.create(model=f"fail-{cause}", messages=MESSAGES)
        text = raw.parse().choices[0].message.content
    assert text == "Sandbox reply to: Say hello"
    assert raw.headers["x-tollgate-provider"] == "e2e-openai"
    assert int(raw.headers["x-tollgate-attempts"]) in (1, 2)  # 1 while a Retry-After cooldown skips it


def test_the_failing_providers_were_really_tried(gateway, client):
    client.chat.completions.create(model="fail-529", messages=MESSAGES)
    seen = httpx.get(f"{gateway.sandbox_url}/_sandbox/requests", params={"limit": 200}).json()["requests"]
    assert any(r["headers"].get("x-sandbox-fail-status") == "529" for r in seen)


@pytest.mark.parametrize("model", ["claude", "gem"])
def test_the_openai_sdk_is_served_by_anthropic_and_gemini(client, model):
    tools = [{"type": "function", "function": {"name": "lookup_order", "parameters": {
        "type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}]
    reply = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=50, temperature=0.3,
                                           stop=["zzz"])
    assert reply.choices[0].message.content == "Sandbox reply to: Say hello"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    called = client.chat.completions.create(model=model, messages=MESSAGES, tools=tools, tool_choice="required")
    call = called.choices[0].message.tool_calls[0]
    assert called.choices[0].finish_reason == "tool_calls"
    assert json.loads(call.function.arguments) == {"order_id": "sandbox"}
    follow = client.chat.completions.create(model=model, tools=tools, messages=[
        *MESSAGES, called.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "shipped"}])
    assert follow.choices[0].message.content == "Tool result received: shipped"
    chunks = list(client.chat.completions.create(model=model, messages=MESSAGES, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Sandbox reply to: Say hello"
    assert chunks[-1].usage.total_tokens == reply.usage.total_tokens


def test_a_stream_cut_mid_way_ends_with_an_error_and_no_retry(client):
    with pytest.raises(openai.APIError) as caught:
        for _ in client.chat.completions.create(model="cut", messages=MESSAGES, stream=True):
            pass
    assert "ended early" in str(caught.value)


def test_weighted_split_sends_about_two_thirds_to_anthropic(gateway):
    served = []
    with httpx.Client(base_url=gateway.url, headers={"authorization": f"Bearer {gateway.key}"}) as http:
        for _ in range(150):
            response = http.post("/v1/chat/completions", json={"model": "split", "messages": MESSAGES})
            served.append(response.headers["x-tollgate-provider"])
    share = served.count("e2e-anthropic") / len(served)
    assert abs(share - 10 / 15) < 0.16, share  # > 4 standard deviations for 150 picks
    assert served.count("e2e-openai") > 0


def test_x_provider_pins_the_provider(client):
    raw = client.chat.completions.with_raw_response.create(model="split", messages=MESSAGES,
                                                           extra_headers={"X-Provider": "e2e-openai"})
    assert raw.headers["x-tollgate-provider"] == "e2e-openai"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="split", messages=MESSAGES, extra_headers={"X-Provider": "e2e-gemini"})
    assert caught.value.body["code"] == "provider_not_in_route"
