"""Embeddings: /v1/embeddings (OpenAI's format) and Gemini's embedContent / batchEmbedContents, served by
OpenAI-format and Gemini providers, refused by Anthropic ones."""
from __future__ import annotations

import base64
import struct

import httpx
import pytest

from proxy.sandbox.embeddings import embedding_vector
from tests.proxy.client import call


def embed(key, body):
    return call("POST", "/v1/embeddings", key=key, body=body)


def gemini(key, model, method, body):
    return call("POST", f"/v1beta/models/{model}:{method}", body=body, headers={"x-goog-api-key": key})


def seen(sandbox_url: str, fmt: str) -> dict:
    return httpx.get(f"{sandbox_url}/_sandbox/requests", params={"format": fmt, "limit": 1}).json()["requests"][0]


@pytest.mark.django_db
@pytest.mark.parametrize("route, fmt", [("openai-route", "openai.embeddings"),
                                        ("compatible-route", "openai.embeddings"),
                                        ("sandbox-route", "openai.embeddings"),
                                        ("gemini-route", "gemini.batchEmbedContents")])
def test_openai_embeddings_from_every_provider_that_has_them(alice, kinds, sandbox_url, route, fmt):
    response = embed(alice, {"model": route, "input": ["hello", "world"], "dimensions": 16})
    assert response.status_code == 200, response.content
    data = response.json()
    assert [d["index"] for d in data["data"]] == [0, 1]
    assert data["data"][0]["embedding"] == pytest.approx(embedding_vector("hello", 16), abs=1e-6)
    assert data["usage"]["prompt_tokens"] == 4  # "hello" and "world": 2 each
    assert seen(sandbox_url, fmt)


@pytest.mark.django_db
def test_base64_vectors_from_gemini(alice, kinds):
    data = embed(alice, {"model": "gemini-route", "input": "hello", "encoding_format": "base64"}).json()
    raw = base64.b64decode(data["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(embedding_vector("hello"), abs=1e-6)


@pytest.mark.django_db
def test_what_a_provider_cannot_embed_is_a_400(alice, kinds):
    anthropic = embed(alice, {"model": "anthropic-route", "input": "hello"})
    assert anthropic.status_code == 400 and "no embeddings" in anthropic.json()["error"]["message"]
    token_ids = embed(alice, {"model": "gemini-route", "input": [15339, 1917]})
    assert token_ids.status_code == 400 and token_ids.json()["error"]["param"] == "input"
    assert embed(alice, {"model": "openai-route", "input": [15339, 1917]}).status_code == 200
    assert embed(alice, {"model": "openai-route", "input": []}).status_code == 400
    assert embed(alice, {"model": "openai-route", "input": ["a", 1]}).status_code == 400


@pytest.mark.django_db
@pytest.mark.parametrize("route, fmt", [("gemini-route", "gemini.embedContent"),
                                        ("openai-route", "openai.embeddings")])
def test_gemini_embed_content(alice, kinds, sandbox_url, route, fmt):
    response = gemini(alice, route, "embedContent", {"content": {"parts": [{"text": "hello"}]},
                                                     "outputDimensionality": 8})
    assert response.status_code == 200, response.content
    assert response.json()["embedding"]["values"] == pytest.approx(embedding_vector("hello", 8), abs=1e-6)
    assert seen(sandbox_url, fmt)


@pytest.mark.django_db
@pytest.mark.parametrize("route", ["gemini-route", "openai-route"])
def test_gemini_batch_embed_contents(alice, kinds, sandbox_url, route):
    body = {"requests": [{"model": f"models/{route}", "content": {"parts": [{"text": text}]}}
                         for text in ("hello", "world")]}
    response = gemini(alice, route, "batchEmbedContents", body)
    assert response.status_code == 200, response.content
    values = [e["values"] for e in response.json()["embeddings"]]
    assert values[1] == pytest.approx(embedding_vector("world"), abs=1e-6)
    if route == "gemini-route":  # each request's model is the upstream one
        upstream = seen(sandbox_url, "gemini.batchEmbedContents")["body"]["requests"]
        assert {r["model"] for r in upstream} == {"models/up-gemini"}


@pytest.mark.django_db
def test_gemini_embeddings_errors(alice, kinds):
    empty = gemini(alice, "gemini-route", "embedContent", {"content": {"parts": []}})
    assert empty.status_code == 400 and empty.json()["error"]["status"] == "INVALID_ARGUMENT"
    refused = gemini(alice, "anthropic-route", "embedContent", {"content": {"parts": [{"text": "x"}]}})
    assert refused.status_code == 400 and refused.json()["error"]["status"] == "INVALID_ARGUMENT"
