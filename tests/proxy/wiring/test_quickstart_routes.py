"""The quickstart catches the coding agents' default model names, each in the agent's own wire format."""
from __future__ import annotations

import re
from io import StringIO

import orjson
import pytest
from django.core.management import call_command

from gateway_site.management.commands import quickstart
from tests.proxy.client import call

HELLO = "Say hello"


@pytest.fixture
def quickstart_key(db, sandbox_url, monkeypatch) -> str:
    monkeypatch.setattr(quickstart, "call_command", lambda *args, **kwargs: None)  # the test database is migrated
    out = StringIO()
    call_command("quickstart", no_serve=True, sandbox_port=int(sandbox_url.rsplit(":", 1)[1]), stdout=out)
    return re.search(r"\b(tg-[A-Za-z0-9_-]{20,})", out.getvalue()).group(1)


def _claude(key: str, model: str):
    return call("POST", "/v1/messages?beta=true", body={"model": model, "max_tokens": 64, "stream": True,
                                                        "messages": [{"role": "user", "content": HELLO}]},
                headers={"x-api-key": key, "anthropic-version": "2023-06-01"})


@pytest.mark.django_db
@pytest.mark.parametrize("model", ["claude-opus-4-8", "claude-haiku-4-5", "claude-haiku-4-5-20251001"])
def test_claude_codes_models(quickstart_key, model):
    response = _claude(quickstart_key, model)
    assert response.status_code == 200, response.content
    texts = [orjson.loads(line[5:])["delta"]["text"] for line in response.content.splitlines()
             if line.startswith(b"data:") and b'"text_delta"' in line]
    assert "".join(texts) == f"Sandbox reply to: {HELLO}"


@pytest.mark.django_db
@pytest.mark.parametrize("model", ["gpt-6.1-sol", "gpt-5-codex"])
def test_codex_clis_model(quickstart_key, model):
    response = call("POST", "/v1/responses", key=quickstart_key,
                    body={"model": model, "input": HELLO, "stream": True})
    assert response.status_code == 200, response.content
    assert b"event: response.completed" in response.content


@pytest.mark.django_db
@pytest.mark.parametrize("model", ["gemini-3.8-flash", "gemini-3.5-flash-lite", "gemini-3.1-pro-preview",
                                   "gemini-2.5-pro"])
def test_gemini_clis_models(quickstart_key, model):
    response = call("POST", f"/v1beta/models/{model}:streamGenerateContent?alt=sse",
                    headers={"x-goog-api-key": quickstart_key},
                    body={"contents": [{"role": "user", "parts": [{"text": HELLO}]}]})
    assert response.status_code == 200, response.content
    chunks = [orjson.loads(line[5:]) for line in response.content.splitlines() if line.startswith(b"data:")]
    assert "".join(p.get("text", "") for c in chunks for p in c["candidates"][0]["content"]["parts"]) == \
        f"Sandbox reply to: {HELLO}"
