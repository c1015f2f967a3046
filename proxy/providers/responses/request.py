"""A Responses API request body in, the internal representation out (the caller side's decode)."""
from __future__ import annotations

import logging
from typing import Any

import orjson

from proxy.errors import GatewayError
from proxy.providers.ir import (
    ChatRequest,
    Effort,
    Image,
    Message,
    Part,
    Role,
    Text,
    ToolCall,
    ToolChoice,
    ToolDef,
    ToolResult,
    TranslationError,
    fill_tool_result_names,
    parse_data_url,
)
from proxy.providers.responses.common import CUSTOM_TOOL_PARAMETERS, reasoning_part, reasoning_text

logger = logging.getLogger(__name__)

# Tool kinds Codex CLI sends by default that have no counterpart elsewhere: left out of a
# cross-format call rather than refusing it (the model simply does not see them).
DROPPED_TOOLS = frozenset({"web_search", "local_shell"})
# Items that only mean something to OpenAI (its own tools' calls): refused, not guessed at.
_OPENAI_ITEMS = frozenset({
    "file_search_call", "computer_call", "computer_call_output", "code_interpreter_call", "image_generation_call",
    "mcp_call", "mcp_list_tools", "mcp_approval_request", "mcp_approval_response", "shell_call", "shell_call_output",
    "apply_patch_call", "apply_patch_call_output", "tool_search_call", "tool_search_output",
})
_EFFORTS: dict[str, Effort | None] = {
    "minimal": "minimal", "low": "low", "medium": "medium", "high": "high",
    # The IR knows four levels: OpenAI's newer extremes go to the nearest one.
    "xhigh": "high", "max": "high", "none": None,
}
# Body fields that need conversation state or stored objects kept by OpenAI.
_STATEFUL = {
    "previous_response_id": "previous_response_id needs the conversation state kept by the provider",
    "conversation": "conversation needs the conversation state kept by the provider",
    "prompt": "prompt refers to a prompt template stored at OpenAI",
}
_STATEFUL_HINT = "; send the whole conversation in 'input' instead, or use a route served by OpenAI."


def _invalid(message: str, param: str | None) -> GatewayError:
    return GatewayError("invalid_request", message, param=param)


def _string(value: Any, where: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise _invalid(f"'{where}' must be a string.", where)
    return value


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"'{name}' must be a number.", name)
    return value


def _image(part: dict[str, Any], where: str) -> Image:
    url = part.get("image_url")
    if isinstance(url, str):
        inline = parse_data_url(url)
        return Image(media_type=inline[0], data=inline[1]) if inline else Image(url=url)
    if part.get("file_id") is not None:
        raise TranslationError(f"'{where}' refers to a file stored at OpenAI (file_id); give the image as "
                               "'image_url' (a URL or a data URL) to use it with this provider.", param=where)
    raise _invalid(f"'{where}' needs an 'image_url'.", where)


def _content(content: Any, role: str, where: str) -> list[Part]:
    """The parts of a message item's `content` (a string or a list of content parts)."""
    if isinstance(content, str):
        return [Text(content)]
    if not isinstance(content, list):
        raise _invalid(f"'{where}' must be a string or a list of content parts.", where)
    parts: list[Part] = []
    for index, part in enumerate(content):
        at = f"{where}[{index}]"
        if not isinstance(part, dict):
            raise _invalid(f"'{at}' must be an object.", at)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            parts.append(Text(_string(part.get("text"), f"{at}.text") or ""))
        elif kind == "refusal":
            parts.append(Text(_string(part.get("refusal"), f"{at}.refusal") or ""))
        elif kind == "input_image" and role == "user":
            parts.append(_image(part, at))
        elif kind == "input_file":
            raise TranslationError(f"'{at}' is a file (input_file), which cannot be sent to this provider; send "
                                   "its text, or images as input_image.", param=at)
        else:
            raise TranslationError(f"Content parts of type {kind!r} ('{at}') cannot be sent to this provider in a "
                                   f"{role} message.", param=at)
    return parts


def _output(output: Any, where: str) -> tuple[str, list[Image]]:
    """A tool output's text, and the images in it (which the IR carries in a user turn)."""
    if isinstance(output, str):
        return output, []
    if not isinstance(output, list):
        raise _invalid(f"'{where}' must be a string or a list of content parts.", where)
    texts: list[str] = []
    images: list[Image] = []
    for index, part in enumerate(output):
        at = f"{where}[{index}]"
        if not isinstance(part, dict):
            raise _invalid(f"'{at}' must be an object.", at)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            texts.append(_string(part.get("text"), f"{at}.text") or "")
        elif kind == "input_image":
            images.append(_image(part, at))
        else:
            raise TranslationError(f"Tool output parts of type {kind!r} ('{at}') cannot be sent to this provider.",
                                   param=at)
    text = "\n".join(texts)
    if images:
        note = "(The tool's image output follows in the next user message.)"
        text = f"{text}\n{note}" if text else note
    return text, images


class _Conversation:
    """Input items as IR messages: an assistant turn gathers its text, reasoning and calls; a run of
    tool outputs is one tool turn, and images from tool outputs follow it as a user turn."""

    def __init__(self) -> None:
        self.system: list[str] = []
        self.messages: list[Message] = []
        self.tool_images: list[Image] = []

    def _flush_images(self) -> None:
        if self.tool_images:
            self.messages.append(Message("user", list(self.tool_images)))
            self.tool_images.clear()

    def add(self, role: Role, parts: list[Part]) -> None:
        if role != "tool":
            self._flush_images()
        last = self.messages[-1] if self.messages else None
        if last is not None and last.role == role and role in ("assistant", "tool"):
            last.parts.extend(parts)
        else:
            self.messages.append(Message(role, parts))

    def message(self, item: dict[str, Any], where: str) -> None:
        role = item.get("role")
        content = item.get("content")
        if role in ("system", "developer"):
            parts = _content(content, "system", f"{where}.content")
            text = "\n".join(p.text for p in parts if isinstance(p, Text))
            # Leading instructions are the system prompt; later ones stay where they were said.
            if self.messages:
                self.add("system", [Text(text)])
            elif text:
                self.system.append(text)
        elif role in ("user", "assistant"):
            parts = _content(content, role, f"{where}.content")
            if role == "user" or parts:
                self.add(role, parts)
        else:
            raise _invalid(f"'{where}.role' must be one of user, assistant, system, developer.", f"{where}.role")

    def item(self, item: Any, where: str) -> None:
        if not isinstance(item, dict):
            raise _invalid(f"'{where}' must be an object.", where)
        kind = item.get("type")
        if kind is not None and not isinstance(kind, str):
            raise _invalid(f"'{where}.type' must be a string.", f"{where}.type")
        if kind == "message" or (kind is None and "role" in item):
            self.message(item, where)
        elif kind == "function_call":
            arguments = item.get("arguments")
            if not isinstance(arguments, str):  # some clients send the object itself
                arguments = orjson.dumps(arguments if arguments is not None else {}).decode()
            self.add("assistant", [ToolCall(_string(item.get("call_id"), f"{where}.call_id") or "",
                                            _string(item.get("name"), f"{where}.name") or "", arguments)])
        elif kind == "custom_tool_call":
            # A freeform tool is a function of one string argument for other providers.
            arguments = orjson.dumps({"input": _string(item.get("input"), f"{where}.input")}).decode()
            self.add("assistant", [ToolCall(_string(item.get("call_id"), f"{where}.call_id") or "",
                                            _string(item.get("name"), f"{where}.name") or "", arguments)])
        elif kind == "local_shell_call":
            # Kept as a call of a tool named local_shell so that its output still has a call to answer.
            call_id = item.get("call_id") or item.get("id")
            self.add("assistant", [ToolCall(_string(call_id, f"{where}.call_id") or "", "local_shell",
                                            orjson.dumps(item.get("action") or {}).decode())])
        elif kind in ("function_call_output", "custom_tool_call_output", "local_shell_call_output"):
            call_id = item.get("id") if kind == "local_shell_call_output" else item.get("call_id")
            text, images = _output(item.get("output"), f"{where}.output")
            self.add("tool", [ToolResult(_string(call_id, f"{where}.call_id") or "", text)])
            self.tool_images.extend(images)
        elif kind == "reasoning":
            self.add("assistant", [_reasoning(item)])
        elif kind == "web_search_call":
            pass  # OpenAI's own search step: its results never were in the conversation
        elif kind == "item_reference":
            raise TranslationError(f"'{where}' (item_reference) needs the conversation state kept by the provider"
                                   + _STATEFUL_HINT, param=where)
        elif kind in ("compaction", "compaction_summary"):
            raise TranslationError(f"'{where}' is a conversation compacted by OpenAI (encrypted), which only OpenAI "
                                   "can read; use a route served by OpenAI for this conversation.", param=where)
        elif kind in _OPENAI_ITEMS:
            raise TranslationError(f"'{where}' ({kind}) is the call of a tool only OpenAI runs, and cannot be sent "
                                   "to this provider.", param=where)
        else:
            raise TranslationError(f"Input items of type {kind!r} ('{where}') cannot be sent to this provider.",
                                   param=where)

    def finish(self) -> list[Message]:
        self._flush_images()
        fill_tool_result_names(self.messages)
        return self.messages


def _reasoning(item: dict[str, Any]) -> Part:
    encrypted = item.get("encrypted_content")
    return reasoning_part(reasoning_text(item), encrypted if isinstance(encrypted, str) else None)


def _tool(tool: Any, where: str) -> ToolDef | None:
    if not isinstance(tool, dict):
        raise _invalid(f"'{where}' must be an object.", where)
    kind = tool.get("type")
    if not isinstance(kind, str):
        raise _invalid(f"'{where}.type' must be a string.", f"{where}.type")
    if kind == "function":
        if "name" not in tool and isinstance(tool.get("function"), dict):
            raise _invalid(f"'{where}' nests its definition under 'function' (the Chat Completions shape); the "
                           "Responses API takes name, description and parameters at the top level of the tool.",
                           where)
        parameters = tool.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise _invalid(f"'{where}.parameters' must be a JSON schema object.", f"{where}.parameters")
        return ToolDef(_string(tool.get("name"), f"{where}.name") or "",
                       _string(tool.get("description"), f"{where}.description", optional=True), parameters)
    if kind == "custom":
        description = _string(tool.get("description"), f"{where}.description", optional=True) or ""
        # The model gets the raw-text contract, and the grammar if there is one, in words.
        description += "\n\nPut the whole input, as raw text, in the string argument `input`."
        form = tool.get("format")
        if isinstance(form, dict) and form.get("type") == "grammar" and isinstance(form.get("definition"), str):
            description += f"\nThe input must follow this {form.get('syntax') or ''} grammar:\n{form['definition']}"
        return ToolDef(_string(tool.get("name"), f"{where}.name") or "", description.strip(),
                       CUSTOM_TOOL_PARAMETERS)
    if kind in DROPPED_TOOLS:
        logger.debug("left out the built-in tool %r (%s) of a cross-format call", kind, where)
        return None
    raise TranslationError(f"The built-in tool '{kind}' ('{where}') is only available on OpenAI providers.",
                           param=where)


def _tools(tool: Any, where: str) -> list[ToolDef]:
    """A tool as IR tool definitions: a `namespace` (Codex CLI groups its sub-agent tools in one)
    gives its function tools, flattened under their own names; a dropped built-in gives none."""
    if isinstance(tool, dict) and tool.get("type") == "namespace":
        inner = tool.get("tools")
        if not isinstance(inner, list):
            raise _invalid(f"'{where}.tools' must be a list.", f"{where}.tools")
        return [t for index, item in enumerate(inner) if (t := _tool(item, f"{where}.tools[{index}]")) is not None]
    found = _tool(tool, where)
    return [] if found is None else [found]


def _tool_choice(choice: Any) -> ToolChoice | None:
    if choice is None:
        return None
    if choice in ("auto", "none", "required"):
        return ToolChoice(choice)
    if not isinstance(choice, dict):
        raise _invalid("'tool_choice' must be auto, none, required or an object.", "tool_choice")
    kind = choice.get("type")
    if kind in ("function", "custom"):
        return ToolChoice("tool", _string(choice.get("name"), "tool_choice.name"))
    if kind == "allowed_tools":
        raise TranslationError("tool_choice 'allowed_tools' cannot be sent to this provider; leave tools out of "
                               "'tools' instead.", param="tool_choice")
    raise TranslationError(f"tool_choice names the built-in tool {kind!r}, which is only available on OpenAI "
                           "providers.", param="tool_choice")


def _response_format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise _invalid("'text' must be an object.", "text")
    form = text.get("format")
    if form is None:
        return None
    if not isinstance(form, dict):
        raise _invalid("'text.format' must be an object.", "text.format")
    kind = form.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = form.get("schema")
        if not isinstance(schema, dict):
            raise _invalid("'text.format.schema' must be a JSON schema object.", "text.format.schema")
        name = _string(form.get("name", "response"), "text.format.name")
        return {"type": "json_schema", "name": name, "schema": schema, "strict": form.get("strict") is True}
    raise TranslationError(f"text.format of type {kind!r} cannot be sent to this provider.", param="text.format.type")


def _effort(reasoning: Any) -> Effort | None:
    if reasoning is None:
        return None
    if not isinstance(reasoning, dict):
        raise _invalid("'reasoning' must be an object.", "reasoning")
    effort = reasoning.get("effort")
    if effort is None:
        return None
    if not isinstance(effort, str) or effort not in _EFFORTS:
        raise _invalid(f"'reasoning.effort' must be one of {', '.join(_EFFORTS)}.", "reasoning.effort")
    return _EFFORTS[effort]


def decode_request(body: dict[str, Any]) -> ChatRequest:
    """A Responses body as the internal representation, or a GatewayError (bad input) /
    TranslationError (valid, but not expressible for another provider) naming the `param`."""
    if not isinstance(body, dict):
        raise _invalid("The request body must be a JSON object.", None)
    for name, reason in _STATEFUL.items():
        if body.get(name) is not None:
            raise TranslationError(reason + _STATEFUL_HINT, param=name)
    if body.get("background") is True:
        raise TranslationError("background responses need the provider to keep the response; use a route served "
                               "by OpenAI, or leave 'background' out.", param="background")
    conversation = _Conversation()
    instructions = _string(body.get("instructions"), "instructions", optional=True)
    raw = body.get("input")
    if isinstance(raw, str):
        conversation.add("user", [Text(raw)])
    elif isinstance(raw, list):
        for index, item in enumerate(raw):
            conversation.item(item, f"input[{index}]")
    else:
        raise _invalid("'input' must be a string or a list of input items.", "input")
    messages = conversation.finish()
    raw_tools = body.get("tools")
    if raw_tools is not None and not isinstance(raw_tools, list):
        raise _invalid("'tools' must be a list.", "tools")
    tools = [t for index, tool in enumerate(raw_tools or []) for t in _tools(tool, f"tools[{index}]")]
    max_tokens = body.get("max_output_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise _invalid("'max_output_tokens' must be a positive integer.", "max_output_tokens")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _invalid("'parallel_tool_calls' must be a boolean.", "parallel_tool_calls")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _invalid("'stream' must be a boolean.", "stream")
    return ChatRequest(
        messages=messages,
        system=([instructions] if instructions else []) + conversation.system,
        tools=tools,
        tool_choice=_tool_choice(body.get("tool_choice")),
        parallel_tool_calls=parallel,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature"),
        top_p=_number(body, "top_p"),
        stream=bool(stream),
        user=_string(body.get("user"), "user", optional=True),
        reasoning_effort=_effort(body.get("reasoning")),
        response_format=_response_format(body.get("text")),
    )
