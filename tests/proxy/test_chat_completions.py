from __future__ import annotations

import httpx
import orjson
import pytest
from django.test import override_settings

from proxy.models import Deployment, ModelRoute, Provider
from tests.proxy.client import call, chat
from tests.servers import free_port

HELLO = {"model": "demo", "messages": [{"role": "user", "content": "hello there"}]}


def sandbox_requests(sandbox_url: str, limit: int = 1) -> list[dict]:
    return httpx.get(f"{sandbox_url}/_sandbox/requests", params={"limit": limit}).json()["requests"]


@pytest.fixture
def alice(personas):
    return personas.alice_key


@pytest.mark.django_db
def test_it_answers_a_chat_completion_from_the_sandbox(alice, demo_route):
    response = chat(alice, HELLO)
    assert response.status_code == 200
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"]["role"] == "assistant"
    assert data["choices"][0]["message"]["content"]
    assert data["usage"]["prompt_tokens"] > 0
    assert response.headers["x-request-id"].startswith("req_")
    assert float(response.headers["x-tollgate-overhead-ms"]) >= 0
    assert response.headers["x-tollgate-provider"] == "sandbox"
    assert response.headers["x-tollgate-attempts"] == "1"


@pytest.mark.django_db
def test_it_sends_the_upstream_model_name_and_the_providers_credential(alice, demo_route, sandbox_url,
                                                                       monkeypatch):
    monkeypatch.setenv("TOLLGATE_PROVIDER_SANDBOX_TEST_KEY", "sk-upstream-secret")
    Provider.objects.filter(name="sandbox").update(api_key_env="TOLLGATE_PROVIDER_SANDBOX_TEST_KEY")
    response = chat(alice, HELLO, headers={"Cookie": "session=1", "X-Forwarded-Host": "evil"})
    assert response.status_code == 200
    seen = sandbox_requests(sandbox_url)[0]
    assert seen["body"]["model"] == "sandbox-model"
    assert seen["headers"]["authorization"] == "Bearer sk-upstream-secret"
    assert alice not in orjson.dumps(seen).decode()
    assert "cookie" not in seen["headers"]
    assert "x-forwarded-host" not in seen["headers"]


@pytest.mark.django_db
def test_it_streams_and_strips_the_usage_chunk_the_client_did_not_ask_for(alice, demo_route, sandbox_url):
    response = chat(alice, {**HELLO, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = response.sse_events()
    assert events[-1] == b"data: [DONE]"
    chunks = [orjson.loads(e[len(b"data: "):]) for e in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk["choices"] for chunk in chunks), "the usage-only chunk must be removed"
    # ...but the gateway asked for it upstream, to meter the stream.
    assert sandbox_requests(sandbox_url)[0]["body"]["stream_options"] == {"include_usage": True}


@pytest.mark.django_db
def test_it_keeps_the_usage_chunk_when_the_client_asked(alice, demo_route):
    body = {**HELLO, "stream": True, "stream_options": {"include_usage": True}}
    events = chat(alice, body).sse_events()
    last = orjson.loads(events[-2][len(b"data: "):])
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] > 0


@pytest.mark.django_db
def test_stream_and_non_stream_report_the_same_usage(alice, demo_route):
    plain = chat(alice, HELLO).json()["usage"]
    events = chat(alice, {**HELLO, "stream": True, "stream_options": {"include_usage": True}}).sse_events()
    streamed = orjson.loads(events[-2][len(b"data: "):])["usage"]
    assert plain == streamed


@pytest.mark.django_db
def test_it_passes_tools_through_and_returns_tool_calls(alice, demo_route):
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    data = chat(alice, {**HELLO, "tools": tools}).json()
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call_ = choice["message"]["tool_calls"][0]
    assert call_["function"]["name"] == "get_weather"
    assert "city" in orjson.loads(call_["function"]["arguments"])


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b"", None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "demo"}', "messages"),
        (b'{"model": "demo", "messages": []}', "messages"),
        (b'{"model": 7, "messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "demo", "messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role"),
        (b'{"model": "demo", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
        (b'{"model": "demo", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
        (b'{"model": "demo", "messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}',
         "max_tokens"),
        (b'{"model": "demo", "messages": [{"role": "user", "content": "x"}], "temperature": true}',
         "temperature"),
        (b"\xff\xfe{}", None),
        (b"[" * 5000 + b"]" * 5000, None),
    ],
)
def test_it_rejects_bad_bodies_with_a_400_in_openai_shape(alice, demo_route, raw, param):
    response = chat(alice, None, raw=raw)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


@pytest.mark.django_db
@override_settings(TOLLGATE_MAX_BODY_BYTES=2048)
def test_it_refuses_a_body_over_the_limit_with_413(alice, demo_route):
    body = {**HELLO, "messages": [{"role": "user", "content": "x" * 5000}]}
    response = chat(alice, body)
    assert response.status_code == 413
    assert "limit" in response.json()["error"]["message"]


@pytest.mark.django_db
def test_it_answers_404_for_an_unknown_model(alice, demo_route):
    response = chat(alice, {**HELLO, "model": "gpt-9"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


@pytest.mark.django_db
def test_a_key_limited_to_some_routes_cannot_use_others(personas, demo_route, sandbox_provider):
    from budgets.keys import key_issue

    other = ModelRoute.objects.create(model="other")
    Deployment.objects.create(route=other, provider=sandbox_provider, upstream_model="m")
    limited = key_issue(consumer=personas.bob, allowed_routes=["other"]).plaintext
    assert chat(limited, {**HELLO, "model": "other"}).status_code == 200
    assert chat(limited, HELLO).status_code == 404
    listed = call("GET", "/v1/models", key=limited).json()
    assert [m["id"] for m in listed["data"]] == ["other"]


@pytest.mark.django_db
def test_it_lists_models_in_openai_shape(alice, demo_route):
    response = call("GET", "/v1/models", key=alice)
    assert response.status_code == 200
    data = response.json()
    assert data["object"] == "list"
    assert data["data"][0] == {"id": "demo", "object": "model", "created": data["data"][0]["created"],
                               "owned_by": "tollgate"}
    assert call("GET", "/v1/models/demo", key=alice).json()["id"] == "demo"
    assert call("GET", "/v1/models", key=None).status_code == 401


@pytest.mark.django_db
def test_it_answers_405_to_a_get_on_chat_completions(alice, demo_route):
    response = call("GET", "/v1/chat/completions", key=alice)
    assert response.status_code == 405
    assert response.json()["error"]["message"]


@pytest.mark.django_db
def test_an_unreachable_upstream_is_a_502_with_a_clear_message(alice, demo_route):
    Provider.objects.filter(name="sandbox").update(base_url=f"http://127.0.0.1:{free_port()}/v1")
    response = chat(alice, HELLO)
    assert response.status_code == 502
    error = response.json()["error"]
    assert "could not be reached" in error["message"]
    assert error["code"] == "connect_error"


@pytest.mark.django_db
def test_upstream_errors_pass_through_with_their_status(alice, demo_route, sandbox_provider,
                                                        django_capture_on_commit_callbacks):
    assert chat(alice, HELLO).status_code == 200
    # The sandbox fails on demand; its own OpenAI-shaped error body comes back.
    # Saving the provider also proves a change reaches the cached route table.
    with django_capture_on_commit_callbacks(execute=True):
        sandbox_provider.extra_headers = {"x-sandbox-fail-status": "400"}
        sandbox_provider.save()
    response = chat(alice, HELLO)
    assert response.status_code == 400
    assert response.json()["error"]["message"]


@pytest.mark.django_db
def test_a_failing_deployment_fails_over_to_the_next(alice, demo_route, sandbox_url):
    broken = Provider.objects.create(name="broken", kind="sandbox", base_url=f"http://127.0.0.1:{free_port()}/v1")
    Deployment.objects.filter(route=demo_route).update(priority=1)
    Deployment.objects.create(route=demo_route, provider=broken, upstream_model="m", priority=0)
    response = chat(alice, HELLO)
    assert response.status_code == 200
    assert response.headers["x-tollgate-provider"] == "sandbox"
    assert response.headers["x-tollgate-attempts"] == "2"
