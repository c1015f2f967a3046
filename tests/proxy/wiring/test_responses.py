"""POST /v1/responses: passed through to OpenAI-format providers, translated for the others."""
from __future__ import annotations

import httpx
import orjson
import pytest

from proxy.models import Deployment, ModelRoute
from proxy.routing import route_cache
from tests.proxy.client import call

TOOLS = [{"type": "function", "name": "lookup_order", "parameters": {
    "type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}]


def responses(key, body, **kwargs):
    return call("POST", "/v1/responses", key=key, body=body, **kwargs)


def seen(sandbox_url: str, fmt: str, limit: int = 1) -> list[dict]:
    return httpx.get(f"{sandbox_url}/_sandbox/requests", params={"format": fmt, "limit": limit}).json()["requests"]


def events(raw: bytes) -> list[dict]:
    out = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        for line in block.splitlines():
            if line.startswith(b"data:"):
                out.append(orjson.loads(line[5:]))
    return out


@pytest.mark.django_db
@pytest.mark.parametrize("route, fmt", [("sandbox-route", "openai.responses"), ("openai-route", "openai.responses"),
                                        ("compatible-route", "openai.chat"),
                                        ("anthropic-route", "anthropic.messages"),
                                        ("gemini-route", "gemini.generateContent")])
def test_it_answers_a_response_from_every_provider_kind(alice, kinds, sandbox_url, route, fmt):
    response = responses(alice, {"model": route, "input": "Say hello"})
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["object"] == "response"
    assert data["output"][-1]["content"][0]["text"] == "Sandbox reply to: Say hello"
    assert data["usage"]["input_tokens"] > 0
    upstream = seen(sandbox_url, fmt)[0]
    upstream_model = f"up-{route.removesuffix('-route')}"
    if fmt.startswith("gemini"):  # the model is in the URL, which the adapter gave /v1beta
        assert upstream["path"] == f"/v1beta/models/{upstream_model}:generateContent"
    else:
        assert upstream["body"]["model"] == upstream_model
    assert upstream["headers"].get("authorization", upstream["headers"].get("x-api-key", upstream["headers"].get(
        "x-goog-api-key"))).endswith("sk-wiring-upstream")
    assert alice not in orjson.dumps(upstream).decode()


@pytest.mark.django_db
@pytest.mark.parametrize("route", ["sandbox-route", "anthropic-route", "gemini-route", "compatible-route"])
def test_it_streams_a_function_call_round_trip(alice, kinds, route):
    first = responses(alice, {"model": route, "input": "Where is order 7?", "tools": TOOLS, "stream": True})
    assert first.status_code == 200, first.content
    got = events(first.content)
    assert got[0]["type"] == "response.created"
    assert got[-1]["type"] == "response.completed"
    call_item = next(i for i in got[-1]["response"]["output"] if i["type"] == "function_call")
    assert call_item["name"] == "lookup_order"
    assert orjson.loads(call_item["arguments"]) == {"order_id": "sandbox"}
    second = responses(alice, {"model": route, "stream": True, "tools": TOOLS, "input": [
        {"role": "user", "content": "Where is order 7?"},
        {"type": "function_call", "call_id": call_item["call_id"], "name": "lookup_order",
         "arguments": call_item["arguments"]},
        {"type": "function_call_output", "call_id": call_item["call_id"], "output": "shipped"}]})
    last = events(second.content)[-1]
    assert last["type"] == "response.completed"
    assert last["response"]["output"][-1]["content"][0]["text"] == "Tool result received: shipped"
    assert last["response"]["usage"]["output_tokens"] > 0


@pytest.mark.django_db
def test_it_sends_store_false_unless_the_route_allows_storing(alice, kinds, sandbox_url):
    assert responses(alice, {"model": "openai-route", "input": "hi"}).status_code == 200
    assert seen(sandbox_url, "openai.responses")[0]["body"]["store"] is False
    refused = responses(alice, {"model": "openai-route", "input": "hi", "store": True})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "store_not_allowed"
    assert responses(alice, {"model": "openai-route", "input": "hi", "store": False}).status_code == 200
    previous = responses(alice, {"model": "openai-route", "input": "hi", "previous_response_id": "resp_1"})
    assert previous.status_code == 400
    assert previous.json()["error"]["param"] == "previous_response_id"


@pytest.mark.django_db
def test_previous_response_id_goes_to_the_deployment_that_answered(alice, kinds, sandbox_url):
    route = ModelRoute.objects.get(model="openai-route")
    route.allow_store = True
    route.save()
    Deployment.objects.create(route=route, provider=kinds.sandbox, upstream_model="other", weight=1)
    first = responses(alice, {"model": "openai-route", "input": "hi"})
    assert "store" not in seen(sandbox_url, "openai.responses")[0]["body"]  # OpenAI's default: kept
    provider = first.headers["x-tollgate-provider"]
    for _ in range(4):
        follow = responses(alice, {"model": "openai-route", "input": "more",
                                   "previous_response_id": first.json()["id"]})
        assert follow.status_code == 200
        assert follow.headers["x-tollgate-provider"] == provider
    unknown = responses(alice, {"model": "openai-route", "input": "more", "previous_response_id": "resp_unknown"})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "previous_response_not_found"


@pytest.mark.django_db
def test_openai_built_in_tools_go_to_an_openai_deployment_or_are_refused(alice, kinds, sandbox_url):
    tools = [{"type": "file_search", "vector_store_ids": ["vs_1"]}]
    refused = responses(alice, {"model": "anthropic-route", "input": "find it", "tools": tools})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "tools[0]"
    route = ModelRoute.objects.get(model="anthropic-route")
    Deployment.objects.create(route=route, provider=kinds.openai, upstream_model="gpt", priority=1)
    route_cache.clear_local()  # the change's invalidation runs on commit, which a test never reaches
    served = responses(alice, {"model": "anthropic-route", "input": "find it", "tools": tools})
    assert served.status_code == 200
    assert served.headers["x-tollgate-provider"] == "openai-main"
    assert served.headers["x-tollgate-attempts"] == "1"


@pytest.mark.django_db
def test_errors_come_back_in_openais_shape(alice, kinds):
    bad = responses(alice, {"model": "sandbox-route", "input": 7})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "input"
    assert responses("tg-nope", {"model": "sandbox-route", "input": "x"}).json()["error"]["type"]
