"""The request log names each call's wire format, so end-to-end tests can check what went upstream."""
from __future__ import annotations

OPENAI = {"authorization": "Bearer sk-test"}
ANTHROPIC = {"x-api-key": "sk-test", "anthropic-version": "2023-06-01"}
GEMINI = {"x-goog-api-key": "sk-test"}
HI = [{"role": "user", "content": "hi"}]
GEMINI_HI = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
CALLS = [  # (path, body, headers, query, format)
    ("/v1/chat/completions", {"model": "m", "messages": HI}, OPENAI, {}, "openai.chat"),
    ("/v1/responses", {"model": "m", "input": "hi", "stream": True}, OPENAI, {}, "openai.responses"),
    ("/v1/embeddings", {"model": "m", "input": "hi"}, OPENAI, {}, "openai.embeddings"),
    ("/v1/messages", {"model": "m", "max_tokens": 9, "messages": HI}, ANTHROPIC, {}, "anthropic.messages"),
    ("/v1/messages/count_tokens", {"model": "m", "messages": HI}, ANTHROPIC, {}, "anthropic.count_tokens"),
    ("/v1beta/models/m:generateContent", GEMINI_HI, GEMINI, {}, "gemini.generateContent"),
    ("/v1beta/models/m:streamGenerateContent", GEMINI_HI, GEMINI, {"alt": "sse"}, "gemini.streamGenerateContent"),
    ("/v1beta/models/m:countTokens", GEMINI_HI, GEMINI, {}, "gemini.countTokens"),
    ("/v1beta/models/m:embedContent", {"content": {"parts": [{"text": "hi"}]}}, GEMINI, {}, "gemini.embedContent"),
    ("/v1beta/models/m:batchEmbedContents", {"requests": [{"content": {"parts": [{"text": "hi"}]}}]}, GEMINI, {},
     "gemini.batchEmbedContents"),
]


def requests_seen(sandbox, **params: str | int) -> list[dict]:
    return sandbox.http.get(f"{sandbox.url}/_sandbox/requests", params=params).json()["requests"]


def test_it_records_the_format_of_every_call(sandbox):
    for path, body, headers, query, _ in CALLS:
        assert sandbox.http.post(f"{sandbox.url}{path}", json=body, headers=headers, params=query).status_code == 200
    sandbox.http.get(f"{sandbox.url}/v1/models", headers=OPENAI)
    sandbox.http.get(f"{sandbox.url}/v1/models", headers=ANTHROPIC)
    sandbox.http.get(f"{sandbox.url}/v1beta/models", headers=GEMINI)
    sandbox.http.post(f"{sandbox.url}/v1/nowhere", headers=OPENAI)
    seen = requests_seen(sandbox)
    assert [r["format"] for r in reversed(seen)] == [fmt for *_, fmt in CALLS] + [
        "openai.models", "anthropic.models", "gemini.models", None]
    responses = next(r for r in seen if r["format"] == "openai.responses")
    assert (responses["path"], responses["body"]["stream"]) == ("/v1/responses", True)


def test_it_filters_the_log_by_format_newest_first(sandbox):
    for text in ("one", "two", "three"):
        sandbox.http.post(f"{sandbox.url}/v1/embeddings", json={"model": "m", "input": text}, headers=OPENAI)
        sandbox.http.post(f"{sandbox.url}/v1/responses", json={"model": "m", "input": text}, headers=OPENAI)
    embeddings = requests_seen(sandbox, format="openai.embeddings")
    assert [r["body"]["input"] for r in embeddings] == ["three", "two", "one"]
    assert [r["body"]["input"] for r in requests_seen(sandbox, format="openai.responses", limit=2)] == ["three", "two"]
    assert requests_seen(sandbox, format="openai.chat") == []


def test_it_records_calls_that_fail_or_are_refused_too(sandbox):
    sandbox.http.post(f"{sandbox.url}/v1/responses", json={"model": "m", "input": "hi"},
                      headers={**OPENAI, "x-sandbox-fail-status": "529"})
    sandbox.http.post(f"{sandbox.url}/v1beta/models/m:embedContent", json={})
    assert [r["format"] for r in requests_seen(sandbox)] == ["gemini.embedContent", "openai.responses"]
