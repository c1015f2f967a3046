"""The sandbox's embeddings: OpenAI /v1/embeddings (through the SDK) and Gemini embedContent."""
from __future__ import annotations

import base64
import math
import struct

import openai
import pytest

from proxy.sandbox import count_tokens
from proxy.sandbox.embeddings import EMBEDDING_DIMENSIONS, MAX_EMBEDDING_DIMENSIONS, embedding_vector

OPENAI_AUTH = {"authorization": "Bearer sk-test"}
GEMINI_AUTH = {"x-goog-api-key": "sk-test"}
EMBED = "/v1beta/models/sandbox-embed:embedContent"
BATCH = "/v1beta/models/sandbox-embed:batchEmbedContents"


def gemini_content(text: str) -> dict:
    return {"parts": [{"text": text}]}


def test_it_makes_unit_float32_vectors_from_a_hash_of_the_text():
    vector = embedding_vector("hello")
    assert len(vector) == EMBEDDING_DIMENSIONS
    assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, rel_tol=1e-6)
    assert vector == embedding_vector("hello") != embedding_vector("hello!")
    assert vector == list(struct.unpack(f"<{len(vector)}f", struct.pack(f"<{len(vector)}f", *vector)))
    # A shorter vector is the start of the longer one, renormalised.
    short, long = embedding_vector("hello", 8), embedding_vector("hello", 1024)
    norm = math.sqrt(sum(v * v for v in long[:8]))
    assert all(math.isclose(s, v / norm, rel_tol=1e-5) for s, v in zip(short, long[:8], strict=True))


def test_the_sdk_decodes_its_default_base64_answer_to_the_same_floats(sandbox, oai):
    response = oai.embeddings.create(model="sandbox-embed", input="hello")
    assert response.model == "sandbox-embed" and response.object == "list"
    (item,) = response.data
    assert (item.object, item.index) == ("embedding", 0)
    assert item.embedding == embedding_vector("hello")
    assert (response.usage.prompt_tokens, response.usage.total_tokens) == (count_tokens("hello"),) * 2
    sent = sandbox.http.get(f"{sandbox.url}/_sandbox/requests", params={"limit": 1}).json()["requests"][0]
    assert sent["body"]["encoding_format"] == "base64"  # the SDK asks for base64 unless told otherwise


def test_it_answers_floats_or_base64_as_asked(sandbox):
    body = {"model": "m", "input": "hello", "encoding_format": "float"}
    floats = sandbox.http.post(f"{sandbox.url}/v1/embeddings", json=body, headers=OPENAI_AUTH).json()
    assert floats["data"][0]["embedding"] == embedding_vector("hello")
    raw = sandbox.http.post(f"{sandbox.url}/v1/embeddings", json={**body, "encoding_format": "base64"},
                            headers=OPENAI_AUTH).json()["data"][0]["embedding"]
    decoded = base64.b64decode(raw)
    assert list(struct.unpack(f"<{len(decoded) // 4}f", decoded)) == embedding_vector("hello")


def test_it_embeds_a_list_of_strings_in_order_and_counts_their_tokens(oai):
    texts = ["first text", "the second, longer text", "é"]
    response = oai.embeddings.create(model="m", input=texts, encoding_format="float")
    assert [item.index for item in response.data] == [0, 1, 2]
    assert [item.embedding for item in response.data] == [embedding_vector(t) for t in texts]
    assert response.usage.prompt_tokens == sum(count_tokens(t) for t in texts) == response.usage.total_tokens


def test_it_embeds_token_arrays_and_counts_one_token_per_id(oai):
    one = oai.embeddings.create(model="m", input=[15339, 1917], encoding_format="float")
    assert len(one.data) == 1 and one.usage.prompt_tokens == 2
    assert one.data[0].embedding == embedding_vector("[15339,1917]")
    many = oai.embeddings.create(model="m", input=[[1, 2, 3], [4]], encoding_format="float")
    assert len(many.data) == 2 and many.usage.prompt_tokens == 4


def test_it_honours_dimensions(oai):
    response = oai.embeddings.create(model="m", input="hello", dimensions=64)
    assert response.data[0].embedding == embedding_vector("hello", 64)


def test_gemini_embed_content_gives_the_openai_vector_of_the_same_text(sandbox):
    response = sandbox.http.post(f"{sandbox.url}{EMBED}", headers=GEMINI_AUTH,
                                 json={"model": "models/sandbox-embed", "content": gemini_content("hello"),
                                       "taskType": "RETRIEVAL_QUERY"})
    assert response.status_code == 200
    assert response.json() == {"embedding": {"values": embedding_vector("hello")}}
    short = sandbox.http.post(f"{sandbox.url}{EMBED}", headers=GEMINI_AUTH,
                              json={"content": gemini_content("hello"), "outputDimensionality": 16}).json()
    assert short["embedding"]["values"] == embedding_vector("hello", 16)
    snake = sandbox.http.post(f"{sandbox.url}{EMBED}", params={"key": "k"},
                              json={"content": gemini_content("hello"), "output_dimensionality": 16}).json()
    assert snake == short


def test_gemini_batch_embed_contents_answers_each_request_in_order(sandbox):
    requests = [{"model": "models/sandbox-embed", "content": gemini_content(t)} for t in ("one", "two")]
    response = sandbox.http.post(f"{sandbox.url}{BATCH}", headers=GEMINI_AUTH, json={"requests": requests})
    assert response.json() == {"embeddings": [{"values": embedding_vector("one")},
                                              {"values": embedding_vector("two")}]}


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "hello"}, "model"),
    ({"model": "m", "input": ""}, "input"),
    ({"model": "m", "input": []}, "input"),
    ({"model": "m", "input": ["a", 1]}, "input"),
    ({"model": "m", "input": [[1], []]}, "input"),
    ({"model": "m", "input": ["a"] * 2049}, "input"),
    ({"model": "m", "input": "a", "encoding_format": "hex"}, "encoding_format"),
    ({"model": "m", "input": "a", "dimensions": 0}, "dimensions"),
    ({"model": "m", "input": "a", "dimensions": MAX_EMBEDDING_DIMENSIONS + 1}, "dimensions"),
])
def test_it_rejects_bad_openai_bodies_in_the_openai_error_shape(sandbox, body, param):
    response = sandbox.http.post(f"{sandbox.url}/v1/embeddings", json=body, headers=OPENAI_AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(("path", "body"), [
    (EMBED, {}),
    (EMBED, {"content": {"parts": []}}),
    (EMBED, {"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": ""}}]}}),
    (EMBED, {"content": gemini_content("a"), "outputDimensionality": -1}),
    (BATCH, {"requests": []}),
    (BATCH, {"requests": [{"model": "models/other", "content": gemini_content("a")}]}),
    (BATCH, [1, 2]),
])
def test_it_rejects_bad_gemini_bodies_in_the_gemini_error_shape(sandbox, path, body):
    response = sandbox.http.post(f"{sandbox.url}{path}", json=body, headers=GEMINI_AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_embedding_calls_fail_and_need_a_key_like_the_other_model_calls(sandbox, oai):
    with pytest.raises(openai.RateLimitError):
        oai.embeddings.create(model="m", input="hello", extra_headers={"x-sandbox-fail-status": "429"})
    failed = sandbox.http.post(f"{sandbox.url}{EMBED}", json={"content": gemini_content("a")},
                               headers={**GEMINI_AUTH, "x-sandbox-fail-status": "503"})
    assert (failed.status_code, failed.json()["error"]["status"]) == (503, "UNAVAILABLE")
    assert sandbox.http.post(f"{sandbox.url}{BATCH}", json={"requests": []}).status_code == 401
