"""Prompt walkers for OpenAI request bodies: chat completions, legacy completions, embeddings,
and the Responses API.

Why these rules: they follow what the upstream actually feeds the model. Message framing follows
the OpenAI cookbook (:mod:`sluicegate.cost.parts`). Tool and function definitions, and
``response_format`` / ``text.format`` JSON schemas, are injected into the prompt server-side, so
they are counted as compact JSON (slightly more than OpenAI's internal TypeScript-like rendering:
an overestimate, which is the safe side for a reservation). Base64 media is never tokenized as
text; images, audio and files get the placeholder sizes from :mod:`sluicegate.cost.parts`.

What cannot be seen is not counted: ``previous_response_id`` / ``conversation`` context, stored
prompts (``prompt: {id}``) and ``item_reference`` items live on OpenAI's side. Settlement from
the reported usage corrects those reservations.
"""

from __future__ import annotations

from .parts import (
    AUDIO_TOKENS,
    FILE_TOKENS,
    IMAGE_LOW_DETAIL_TOKENS,
    IMAGE_TOKENS,
    REPLY_PRIMING,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_NAME,
    TOKENS_PER_TOOL,
    TOKENS_PER_TOOL_CALL,
    PromptParts,
    as_dict,
    as_list,
)

_TEXT_PART_KEYS = ("text", "refusal")


def _image(part: dict[str, object]) -> int:
    detail = part.get("detail")
    if detail is None:
        detail = as_dict(part.get("image_url")).get("detail")
    return IMAGE_LOW_DETAIL_TOKENS if detail == "low" else IMAGE_TOKENS


def content(parts: PromptParts, value: object) -> None:
    """A ``content`` field: a string, or an array of typed parts (chat and Responses shapes)."""
    if isinstance(value, str):
        parts.text(value)
        return
    for item in as_list(value):
        if isinstance(item, str):
            parts.text(item)
            continue
        part = as_dict(item)
        kind = part.get("type")
        if kind in ("image_url", "input_image", "image"):
            parts.add(_image(part))
        elif kind in ("input_audio", "audio"):
            parts.add(AUDIO_TOKENS)
        elif kind in ("file", "input_file"):
            parts.add(FILE_TOKENS)
        else:  # text, input_text, output_text, refusal, and unknown text-like parts
            for key in _TEXT_PART_KEYS:
                parts.text(part.get(key))


def tools(parts: PromptParts, value: object) -> None:
    """``tools`` (chat: ``{type, function: {...}}``; Responses: flat) or legacy ``functions``."""
    for item in as_list(value):
        tool = as_dict(item)
        if not tool:
            continue
        parts.add(TOKENS_PER_TOOL)
        parts.json(tool.get("function", tool))


def _tool_calls(parts: PromptParts, value: object) -> None:
    for item in as_list(value):
        call = as_dict(item)
        function = as_dict(call.get("function")) or as_dict(call.get("custom"))
        parts.add(TOKENS_PER_TOOL_CALL)
        parts.text(function.get("name"))
        parts.text(function.get("arguments"))
        parts.text(function.get("input"))


def chat(body: dict[str, object]) -> PromptParts:
    """``POST /v1/chat/completions``."""
    parts = PromptParts()
    messages = as_list(body.get("messages"))
    for item in messages:
        message = as_dict(item)
        parts.add(TOKENS_PER_MESSAGE)
        parts.role(message.get("role"))
        if message.get("name"):
            parts.add(TOKENS_PER_NAME)
            parts.text(message.get("name"))
        content(parts, message.get("content"))
        parts.text(message.get("refusal"))
        _tool_calls(parts, message.get("tool_calls"))
        legacy_call = as_dict(message.get("function_call"))
        if legacy_call:
            parts.add(TOKENS_PER_TOOL_CALL)
            parts.text(legacy_call.get("name"))
            parts.text(legacy_call.get("arguments"))
        parts.text(message.get("tool_call_id"))
    if messages:
        parts.add(REPLY_PRIMING)
    tools(parts, body.get("tools"))
    tools(parts, body.get("functions"))
    response_format = as_dict(body.get("response_format"))
    if response_format.get("type") == "json_schema":
        parts.json(response_format.get("json_schema"))
    return parts


def _prompt_like(parts: PromptParts, value: object) -> None:
    """A string, a list of strings, a list of token ids, or a list of token-id lists."""
    if isinstance(value, str):
        parts.text(value)
        return
    if parts.token_ids(value):
        return
    for item in as_list(value):
        if not parts.token_ids(item):
            parts.text(item)


def completions(body: dict[str, object]) -> PromptParts:
    """``POST /v1/completions`` (legacy): ``prompt`` and ``suffix``, no message framing."""
    parts = PromptParts()
    _prompt_like(parts, body.get("prompt"))
    parts.text(body.get("suffix"))
    return parts


def embeddings(body: dict[str, object]) -> PromptParts:
    """``POST /v1/embeddings``: ``input`` is text, a list of texts, or token ids."""
    parts = PromptParts()
    _prompt_like(parts, body.get("input"))
    return parts


def _response_item(parts: PromptParts, item: dict[str, object]) -> None:
    kind = item.get("type")
    if kind in ("message", None) or "role" in item:
        parts.add(TOKENS_PER_MESSAGE)
        parts.role(item.get("role"))
        content(parts, item.get("content"))
    elif kind in ("function_call", "custom_tool_call"):
        parts.add(TOKENS_PER_TOOL_CALL)
        parts.text(item.get("name"))
        parts.text(item.get("arguments"))
        parts.text(item.get("input"))
    elif kind in ("function_call_output", "custom_tool_call_output"):
        parts.add(TOKENS_PER_TOOL_CALL)
        output = item.get("output")
        content(parts, output)
    elif kind == "reasoning":
        for summary in as_list(item.get("summary")):
            parts.text(as_dict(summary).get("text"))
    elif kind == "item_reference":
        return  # server-side item: invisible here, see module docstring
    else:  # computer/web/file-search calls, MCP items, ...: count their JSON, minus nothing
        parts.add(TOKENS_PER_TOOL_CALL)
        parts.json(item)


def responses(body: dict[str, object]) -> PromptParts:
    """``POST /v1/responses``: ``instructions`` plus ``input`` (a string or a list of items)."""
    parts = PromptParts()
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        parts.add(TOKENS_PER_MESSAGE)
        parts.text(instructions)
    value = body.get("input")
    if isinstance(value, str):
        parts.add(TOKENS_PER_MESSAGE)
        parts.text(value)
    else:
        for item in as_list(value):
            if isinstance(item, dict):
                _response_item(parts, item)
    parts.add(REPLY_PRIMING)
    tools(parts, body.get("tools"))
    text_format = as_dict(as_dict(body.get("text")).get("format"))
    if text_format.get("type") == "json_schema":
        parts.json(text_format.get("schema"))
    return parts
