"""Embeddings: OpenAI POST /v1/embeddings and Gemini :embedContent / :batchEmbedContents.

The vectors are deterministic (SHAKE-256 of the text), unit length and float32, so the same text
gets the same vector in both formats and in both OpenAI encodings (a gateway that translates one
format into the other can be checked value for value), and a shorter `dimensions` is a prefix of
the longer vector renormalised, as OpenAI's shortened embeddings are.
"""
from __future__ import annotations

import base64
import hashlib
import math
import struct
from typing import Any

from proxy.sandbox.config import is_int
from proxy.sandbox.fields import camel, check_list, check_object, check_positive_int, check_string
from proxy.sandbox.model import SandboxRequestError, canonical_json, count_tokens

EMBEDDING_DIMENSIONS = 256  # the default length; small, so tests and benchmarks stay cheap
MAX_EMBEDDING_DIMENSIONS = 4096
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit of inputs per request


def embedding_vector(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """The sandbox's embedding of `text`: `dimensions` float32 values of unit length."""
    words = struct.unpack(f"<{dimensions}I", hashlib.shake_256(text.encode("utf-8")).digest(4 * dimensions))
    values = [word / 2**31 - 1.0 for word in words]  # uniform in [-1, 1)
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    # Rounded to float32: the float and base64 encodings then carry exactly the same numbers.
    packed = struct.pack(f"<{dimensions}f", *(v / norm for v in values))
    return list(struct.unpack(f"<{dimensions}f", packed))


def _dimensions(value: Any, param: str) -> int:
    dimensions = check_positive_int(value, param) or EMBEDDING_DIMENSIONS
    if dimensions > MAX_EMBEDDING_DIMENSIONS:
        raise SandboxRequestError(f"'{param}' must be at most {MAX_EMBEDDING_DIMENSIONS}.", param)
    return dimensions


# OpenAI


def _openai_inputs(value: Any) -> list[tuple[str, int]]:
    """(text that is embedded, tokens it counts) of each input; a token array is embedded as its JSON."""
    error = SandboxRequestError("'input' must be a non-empty string, a list of non-empty strings, a list of "
                                "token ids or a list of token-id lists.", "input")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or len(value) > MAX_EMBEDDING_INPUTS:
        raise error
    if all(is_int(v) for v in value):
        return [(canonical_json(value), len(value))]
    if all(isinstance(v, str) and v for v in value):
        return [(text, count_tokens(text)) for text in value]
    if all(isinstance(v, list) and v and all(is_int(t) for t in v) for v in value):
        return [(canonical_json(tokens), len(tokens)) for tokens in value]
    raise error


def openai_answer(body: dict) -> dict:
    """The CreateEmbeddingResponse for an OpenAI embeddings request body; raises SandboxRequestError."""
    model = check_string(body.get("model"), "model", required=True)
    inputs = _openai_inputs(body.get("input"))
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise SandboxRequestError("'encoding_format' must be float or base64.", "encoding_format")
    dimensions = _dimensions(body.get("dimensions"), "dimensions")
    data = []
    for index, (text, _) in enumerate(inputs):
        vector: Any = embedding_vector(text, dimensions)
        if encoding == "base64":
            # Little-endian float32, which is what the SDK decodes (it asks for base64 by default).
            vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = sum(count for _, count in inputs)
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


# Gemini


def _gemini_embedding(request: dict, model: str, param: str) -> dict:
    """One ContentEmbedding; only the text parts of the content count, as in the real API."""
    if request.get("model") is not None and request["model"] != f"models/{model}":
        raise SandboxRequestError(f"'{param}model' must be the model of the URL, models/{model}.", f"{param}model")
    content = check_object(request.get("content"), f"{param}content")
    parts = check_list(content.get("parts"), f"{param}content.parts", non_empty=True)
    texts = [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]
    if not "".join(texts):
        raise SandboxRequestError(f"'{param}content' has no text to embed.", f"{param}content")
    dimensions = _dimensions(camel(request, "outputDimensionality", "output_dimensionality"),
                             f"{param}outputDimensionality")
    return {"values": embedding_vector("\n".join(texts), dimensions)}


def gemini_answer(action: str, body: dict, model: str) -> dict:
    """The answer to :embedContent or :batchEmbedContents; raises SandboxRequestError."""
    if action == "embedContent":
        return {"embedding": _gemini_embedding(body, model, "")}
    requests = check_list(body.get("requests"), "requests", non_empty=True)
    return {"embeddings": [_gemini_embedding(check_object(r, f"requests[{i}]"), model, f"requests[{i}].")
                           for i, r in enumerate(requests)]}

