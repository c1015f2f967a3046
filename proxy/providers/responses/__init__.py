"""OpenAI Responses API wire format (`POST /v1/responses`): the caller side and the provider side.

A package because the format has four clear parts: `request` (a caller's body to the
IR), `response` and `stream` (the IR to a caller's Response object and event stream),
`provider` (the IR to an OpenAI Responses upstream and back); `common` holds what they share.

What a cross-format call does with a Responses body (a same-format call passes it through
untouched, and OpenAI itself decides):

- Translated: `input` (a string, or items: messages of role user / assistant / system /
  developer with string or input_text / output_text / refusal / input_image content,
  function_call, function_call_output, custom_tool_call, custom_tool_call_output,
  local_shell_call and its output, reasoning), `instructions` and leading system/developer
  messages (the system prompt; later ones stay in place), function tools (flat shape),
  `tool_choice`, `parallel_tool_calls`, `max_output_tokens`, `temperature`, `top_p`,
  `reasoning.effort` (xhigh and max become high; none leaves the provider's default),
  `text.format` (json_schema, json_object, text), `stream`, `user`.
- Codex CLI's default tool kinds, on purpose: a freeform (`custom`) tool such as
  apply_patch becomes a function taking one string argument `input` (its grammar goes
  into the description), and its calls go back to the caller as `custom_tool_call` items;
  `web_search` and `local_shell` tools are left out (the model does not see them), and a
  `web_search_call` item in the history is dropped. So Codex works on Anthropic and Gemini.
- Images inside a tool's output (Codex's view_image) go to the provider as a user turn
  right after the run of tool results; the tool result says so.
- Another provider's reasoning signature (Anthropic thinking) goes back to the caller in
  the reasoning item's `encrypted_content`, tagged, when the caller includes
  `reasoning.encrypted_content`, and is restored when the caller sends it back, since
  Anthropic refuses a tool-use turn whose thinking lost its signature. OpenAI would refuse
  the tag: `strip_foreign_reasoning(body)` drops such items before a same-format call.
- Accepted and ignored by the translation: store, include, prompt_cache_key,
  prompt_cache_retention, metadata, safety_identifier, service_tier, truncation,
  text.verbosity, reasoning.summary, max_tool_calls, top_logprobs, stream_options,
  context_management. The Response echoes them where OpenAI does, with `store: false`.
- Refused with a TranslationError naming the `param`: previous_response_id, conversation,
  prompt (stored template), background true, item_reference and compaction items (all need
  state kept by OpenAI), other built-in tools (file_search, code_interpreter, computer use,
  image_generation, mcp, web_search_preview, shell, apply_patch, ...) and their call items,
  tool_choice naming a built-in tool or allowed_tools, input_file parts, images given by
  file_id, other content part types.
- Malformed input (wrong types, missing fields): a GatewayError ("invalid_request") with `param`.
"""
from __future__ import annotations

from proxy.providers.responses.common import (
    TERMINAL_EVENTS,
    error_body,
    stream_error,
    strip_foreign_reasoning,
)
from proxy.providers.responses.provider import (
    OpenAIResponsesAdapter,
    StreamDecoder,
    decode_response,
    encode_request,
    stream_usage,
)
from proxy.providers.responses.request import decode_request
from proxy.providers.responses.response import encode_response
from proxy.providers.responses.stream import StreamEncoder

__all__ = [
    "TERMINAL_EVENTS",
    "OpenAIResponsesAdapter",
    "StreamDecoder",
    "StreamEncoder",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "error_body",
    "stream_error",
    "stream_usage",
    "strip_foreign_reasoning",
]
