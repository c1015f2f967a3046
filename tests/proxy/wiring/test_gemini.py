"""Gemini's API served by the gateway: generateContent, streamGenerateContent (SSE and the JSON array),
countTokens, the model list, errors in Google's shape, and keys in x-goog-api-key or ?key=."""
from __future__ import annotations

import httpx
import orjson
import pytest

from proxy.models import Provider
from tests.proxy.client import call

HELLO = {"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}
TOOLS = [{"functionDeclarations": [{"name": "lookup_order", "parameters": {
    "type": "OBJECT", "properties": {"order_id": {"type": "STRING"}}, "required": ["order_id"]}}]}]


def gemini(key, model, method, body=HELLO, *, query="", header="x-goog-api-key", prefix="/v1beta"):
    headers = {header: key} if key and header else {}
    return call("POST", f"{prefix}/models/{model}:{method}{query}", body=body, headers=headers)


def seen(sandbox_url: str, fmt: str) -> dict:
    return httpx.get(f"{sandbox_url}/_sandbox/requests", params={"format": fmt, "limit": 1}).json()["requests"][0]


def sse_chunks(raw: bytes) -> list[dict]:
    return [orjson.loads(line[5:]) for line in raw.replace(b"\r\n", b"\n").splitlines() if line.startswith(b"data:")]


def text_of(chunks: list[dict]) -> str:
    return "".join(p.get("text", "") for c in chunks for p in c["candidates"][0]["content"]["parts"])


@pytest.mark.django_db
@pytest.mark.parametrize("route, fmt", [("gemini-route", "gemini.generateContent"),
                                        ("sandbox-route", "openai.chat"), ("openai-route", "openai.chat"),
                                        ("anthropic-route", "anthropic.messages")])
def test_generate_content_is_served_by_every_provider_kind(alice, kinds, sandbox_url, route, fmt):
    response = gemini(alice, route, "generateContent")
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["candidates"][0]["content"]["parts"][0]["text"] == "Sandbox reply to: Say hello"
    assert data["usageMetadata"]["promptTokenCount"] == 7
    upstream = seen(sandbox_url, fmt)
    if route == "gemini-route":  # a pass-through: the body as sent, the model in the URL (with /v1beta added)
        assert upstream["path"] == "/v1beta/models/up-gemini:generateContent"
        # ... with the output bound the gateway reserved, which always goes upstream (issue #16).
        assert upstream["body"] == {**HELLO, "generationConfig": {"maxOutputTokens": 256}}
        assert upstream["headers"]["x-goog-api-key"] == "sk-wiring-upstream"


@pytest.mark.django_db
@pytest.mark.parametrize("route", ["gemini-route", "anthropic-route", "sandbox-route"])
def test_stream_generate_content_in_sse(alice, kinds, route):
    response = gemini(alice, route, "streamGenerateContent", query="?alt=sse")
    assert response.status_code == 200, response.content
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = sse_chunks(response.content)
    assert text_of(chunks) == "Sandbox reply to: Say hello"
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert chunks[-1]["usageMetadata"]["candidatesTokenCount"] == 7


@pytest.mark.django_db
@pytest.mark.parametrize("route", ["gemini-route", "anthropic-route"])
def test_stream_generate_content_without_alt_sse_is_a_json_array(alice, kinds, route):
    response = gemini(alice, route, "streamGenerateContent")
    assert response.status_code == 200, response.content
    chunks = orjson.loads(response.content)
    assert isinstance(chunks, list)
    assert text_of(chunks) == "Sandbox reply to: Say hello"
    assert chunks[-1]["usageMetadata"]["totalTokenCount"] == 14


@pytest.mark.django_db
@pytest.mark.parametrize("route", ["gemini-route", "anthropic-route", "openai-route"])
def test_a_function_call_round_trip(alice, kinds, route):
    first = gemini(alice, route, "generateContent", {**HELLO, "tools": TOOLS}).json()
    part = first["candidates"][0]["content"]["parts"][-1]
    assert part["functionCall"]["name"] == "lookup_order"
    assert part["functionCall"]["args"] == {"order_id": "sandbox"}
    second = gemini(alice, route, "streamGenerateContent", {"tools": TOOLS, "contents": [
        *HELLO["contents"], {"role": "model", "parts": [part]},
        {"role": "user", "parts": [{"functionResponse": {"name": "lookup_order", "response": {"result": "shipped"}}}]},
    ]}, query="?alt=sse")
    assert text_of(sse_chunks(second.content)) == "Tool result received: shipped"


@pytest.mark.django_db
def test_the_key_may_come_in_the_query_and_routes_under_v1_too(alice, kinds):
    assert gemini(alice, "gemini-route", "generateContent", query=f"?key={alice}", header=None).status_code == 200
    assert gemini(f"Bearer {alice}", "gemini-route", "generateContent", header="Authorization").status_code == 200
    assert gemini(alice, "anthropic-route", "generateContent", prefix="/v1").status_code == 200


@pytest.mark.django_db
def test_a_key_in_the_query_never_reaches_a_log_line(alice, kinds, caplog):
    from gateway_site.lib.logs import JsonFormatter, TextFormatter

    gemini(alice, "gemini-route", "generateContent", query=f"?alt=sse&key={alice}", header=None)
    gemini("AIza-not-a-gateway-key", "gemini-route", "generateContent", query="?key=AIzaSyNotAGatewayKey",
           header=None)
    lines = [f().format(r) for r in caplog.records for f in (JsonFormatter, TextFormatter)]
    access = "127.0.0.1 - \"POST /v1beta/models/m:generateContent?alt=sse&key=AIzaSyNotAGatewayKey HTTP/1.1\" 200"
    lines.append(TextFormatter().format(__import__("logging").makeLogRecord({"msg": access})))
    assert not [line for line in lines if alice in line or "AIzaSyNotAGatewayKey" in line]


@pytest.mark.django_db
def test_errors_are_in_googles_shape(alice, kinds):
    missing = gemini(None, "gemini-route", "generateContent")
    assert missing.status_code == 401
    assert missing.json()["error"]["status"] == "UNAUTHENTICATED"
    unknown = gemini(alice, "no-such-route", "generateContent")
    assert unknown.json() == {"error": {"code": 404, "message": unknown.json()["error"]["message"],
                                        "status": "NOT_FOUND"}}
    bad = gemini(alice, "gemini-route", "generateContent", {"contents": "hi"})
    assert bad.status_code == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT"
    path = call("GET", "/v1beta/tunedModels", headers={"x-goog-api-key": alice})
    assert path.status_code == 404 and path.json()["error"]["status"] == "NOT_FOUND"
    anonymous = call("GET", "/v1beta/tunedModels")
    assert anonymous.status_code == 401 and anonymous.json()["error"]["status"] == "UNAUTHENTICATED"


@pytest.mark.django_db
def test_the_model_list_and_a_model_in_geminis_shape(alice, kinds):
    listed = call("GET", "/v1beta/models", headers={"x-goog-api-key": alice}).json()
    names = [m["name"] for m in listed["models"]]
    assert "models/gemini-route" in names and "models/anthropic-route" in names
    assert "generateContent" in listed["models"][0]["supportedGenerationMethods"]
    one = call("GET", "/v1beta/models/gemini-route", headers={"x-goog-api-key": alice}).json()
    assert one["name"] == "models/gemini-route"
    v1 = call("GET", "/v1/models", headers={"x-goog-api-key": alice}).json()
    assert "models" in v1


@pytest.mark.django_db
@pytest.mark.parametrize("route, exact", [("gemini-route", "exact"), ("anthropic-route", "exact"),
                                          ("sandbox-route", "estimated")])
def test_count_tokens(alice, kinds, route, exact):
    plain = gemini(alice, route, "countTokens")
    assert plain.status_code == 200, plain.content
    assert plain.headers["x-tollgate-token-count"] == exact
    if exact == "exact":
        assert plain.json() == {"totalTokens": 7}  # the sandbox's count, whichever format asked it
    whole = gemini(alice, route, "countTokens", {"generateContentRequest": {
        "model": f"models/{route}", **HELLO, "systemInstruction": {"parts": [{"text": "Be terse."}]}}})
    assert whole.json()["totalTokens"] > plain.json()["totalTokens"]


@pytest.mark.django_db
def test_a_base_url_with_its_version_is_used_as_it_is(alice, kinds, sandbox_url):
    Provider.objects.filter(pk=kinds.gemini.pk).update(base_url=f"{sandbox_url}/v1beta")
    assert gemini(alice, "gemini-route", "generateContent").status_code == 200
    assert seen(sandbox_url, "gemini.generateContent")["path"] == "/v1beta/models/up-gemini:generateContent"
