"""The usage knobs: cached prompt tokens (read and written) and reasoning tokens, in every format's fields."""
from __future__ import annotations

from typing import Any

import anthropic
import orjson
import pytest

from proxy.sandbox import Usage, expected_usage

# count_tokens("Be brief.") + 4 + count_tokens("Say hello") = 10 prompt tokens; the reply
# "Sandbox reply to: Say hello" is 7 tokens.
CHAT = {"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "Say hello"}]}
RESPONSES = {"model": "m", "instructions": "Be brief.", "input": "Say hello"}
MESSAGES = {"model": "m", "max_tokens": 100, "system": "Be brief.",
            "messages": [{"role": "user", "content": "Say hello"}]}
GEMINI = {"systemInstruction": {"parts": [{"text": "Be brief."}]},
          "contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}
KNOBS = {"x-sandbox-cache-read-tokens": "4", "x-sandbox-cache-write-tokens": "3", "x-sandbox-reasoning-tokens": "5"}
OPENAI_AUTH = {"authorization": "Bearer sk-test"}
GEMINI_AUTH = {"x-goog-api-key": "sk-test"}
GENERATE = "/v1beta/models/sandbox-small:generateContent"
STREAM = "/v1beta/models/sandbox-small:streamGenerateContent"


@pytest.fixture
def claude(sandbox) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sandbox.url, api_key="sk-test", max_retries=0, timeout=10)


def sse_data(raw: str) -> list[dict]:
    blocks = raw.replace("\r\n", "\n").split("\n\n")
    return [orjson.loads(line[6:]) for block in blocks for line in block.split("\n")
            if line.startswith("data: ") and line != "data: [DONE]"]


def configure(sandbox, **knobs: Any) -> None:
    sandbox.http.post(f"{sandbox.url}/_sandbox/config", json=knobs).raise_for_status()


def test_the_rule_caps_reads_writes_and_reasoning():
    assert expected_usage("openai", CHAT) == Usage(10, 7)
    assert expected_usage("openai", CHAT, cache_read_tokens=4, cache_write_tokens=3, reasoning_tokens=5) == \
        Usage(10, 12, cache_read_tokens=4, cache_write_tokens=3, reasoning_tokens=5)
    # Percentages of the prompt, rounded down; tokens win over a percentage; never past the prompt.
    assert expected_usage("openai", CHAT, cache_read_percent=55, cache_write_percent=100) == Usage(10, 7, 5, 5)
    assert expected_usage("openai", CHAT, cache_read_tokens=2, cache_read_percent=90) == Usage(10, 7, 2)
    assert expected_usage("openai", CHAT, cache_read_tokens=50, cache_write_tokens=50) == Usage(10, 7, 10, 0)
    # Reasoning counts within max_tokens, and never cuts the visible reply.
    assert expected_usage("openai", {**CHAT, "max_tokens": 9}, reasoning_tokens=5) == Usage(10, 9, reasoning_tokens=2)


def test_openai_chat_reports_cached_and_reasoning_tokens_in_its_details(sandbox, oai):
    response = oai.chat.completions.create(**CHAT, extra_headers=KNOBS)
    usage = response.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (10, 12, 22)
    assert (usage.prompt_tokens_details.cached_tokens, usage.prompt_tokens_details.cache_write_tokens) == (4, 3)
    assert usage.completion_tokens_details.reasoning_tokens == 5
    chunks = list(oai.chat.completions.create(**CHAT, stream=True, stream_options={"include_usage": True},
                                              extra_headers=KNOBS))
    assert chunks[-1].usage == usage


def test_openai_responses_report_them_in_input_and_output_details(sandbox, oai):
    usage = oai.responses.create(**RESPONSES, extra_headers=KNOBS).usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (10, 12, 22)
    assert (usage.input_tokens_details.cached_tokens, usage.input_tokens_details.cache_write_tokens) == (4, 3)
    assert usage.output_tokens_details.reasoning_tokens == 5
    with oai.responses.stream(**RESPONSES, extra_headers=KNOBS) as stream:
        assert stream.get_final_response().usage == usage


def test_anthropic_leaves_cache_reads_and_writes_out_of_input_tokens(sandbox, claude):
    usage = claude.messages.create(**MESSAGES, extra_headers=KNOBS).usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (3, 4, 3)
    assert usage.output_tokens == 12  # thinking is billed as output
    with claude.messages.stream(**MESSAGES, extra_headers=KNOBS) as stream:
        final = stream.get_final_message().usage
    assert (final.input_tokens, final.cache_read_input_tokens, final.cache_creation_input_tokens,
            final.output_tokens) == (3, 4, 3, 12)


def test_gemini_counts_cached_tokens_in_the_prompt_and_thoughts_apart(sandbox):
    metadata = sandbox.http.post(f"{sandbox.url}{GENERATE}", json=GEMINI,
                                 headers={**GEMINI_AUTH, **KNOBS}).json()["usageMetadata"]
    assert metadata == {"promptTokenCount": 10, "candidatesTokenCount": 7, "totalTokenCount": 22,
                        "cachedContentTokenCount": 4, "thoughtsTokenCount": 5}
    events = sse_data(sandbox.http.post(f"{sandbox.url}{STREAM}", params={"alt": "sse"}, json=GEMINI,
                                        headers={**GEMINI_AUTH, **KNOBS}).text)
    assert events[-1]["usageMetadata"] == metadata


def test_without_knobs_the_usage_fields_are_the_plain_ones(sandbox):
    chat = sandbox.http.post(f"{sandbox.url}/v1/chat/completions", json=CHAT, headers=OPENAI_AUTH).json()
    assert chat["usage"] == {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17}
    messages = sandbox.http.post(f"{sandbox.url}/v1/messages", json=MESSAGES,
                                 headers={"x-api-key": "k", "anthropic-version": "2023-06-01"}).json()
    assert messages["usage"] == {"input_tokens": 10, "output_tokens": 7}
    gemini = sandbox.http.post(f"{sandbox.url}{GENERATE}", json=GEMINI, headers=GEMINI_AUTH).json()
    assert gemini["usageMetadata"] == {"promptTokenCount": 10, "candidatesTokenCount": 7, "totalTokenCount": 17}


def test_the_server_wide_knobs_apply_to_every_request_and_headers_override_them(sandbox, oai, claude):
    configure(sandbox, cache_read_percent=50, reasoning_tokens=2)
    usage = oai.chat.completions.create(**CHAT).usage
    assert (usage.prompt_tokens_details.cached_tokens, usage.completion_tokens_details.reasoning_tokens) == (5, 2)
    assert claude.messages.create(**MESSAGES).usage.cache_read_input_tokens == 5
    overridden = oai.chat.completions.create(**CHAT, extra_headers={"x-sandbox-cache-read-percent": "0",
                                                                    "x-sandbox-reasoning-tokens": "0"}).usage
    assert overridden.prompt_tokens_details is None and overridden.completion_tokens == 7
    # Token counting is not a model call: no cache there.
    counted = sandbox.http.post(f"{sandbox.url}/v1/messages/count_tokens", json=MESSAGES,
                                headers={"x-api-key": "k", "anthropic-version": "2023-06-01"}).json()
    assert counted == {"input_tokens": 10}


def test_it_rejects_bad_usage_knobs(sandbox):
    response = sandbox.http.post(f"{sandbox.url}/v1/chat/completions", json=CHAT,
                                 headers={**OPENAI_AUTH, "x-sandbox-cache-read-percent": "101"})
    assert response.status_code == 400 and "x-sandbox-cache-read-percent" in response.json()["error"]["message"]
    bad = sandbox.http.post(f"{sandbox.url}/_sandbox/config", json={"reasoning_tokens": -1})
    assert bad.status_code == 400 and "reasoning_tokens" in bad.json()["error"]
