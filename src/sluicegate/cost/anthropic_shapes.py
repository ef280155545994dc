"""Prompt walkers for Anthropic request bodies: Messages (and count_tokens), legacy Complete.

Why these rules: ``system`` (a string or text blocks), every message's content blocks, tool
definitions and tool inputs/results are what Claude reads. Tool use also adds a hidden system
prompt that Anthropic documents (:data:`~sluicegate.cost.parts.ANTHROPIC_TOOL_SYSTEM_PROMPT`).
Images and PDFs cannot be sized without decoding them, so they get placeholder reservations.
Earlier ``thinking`` blocks are counted even though the API may drop them from context: an
overestimate, settled later. ``redacted_thinking`` is opaque and not counted.

Claude's tokenizer is not public. Counting uses o200k as an approximation (documented in
docs/tokens.md): expect the real ``input_tokens`` to differ by 10-30% depending on model
generation and language; settlement corrects each reservation from the reported usage.
"""

from __future__ import annotations

from .parts import (
    ANTHROPIC_IMAGE_TOKENS,
    ANTHROPIC_TOOL_SYSTEM_PROMPT,
    FILE_TOKENS,
    REPLY_PRIMING,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_TOOL,
    TOKENS_PER_TOOL_CALL,
    PromptParts,
    as_dict,
    as_list,
)

# Blocks that are pure bookkeeping for the API and carry no prompt text.
_SILENT_BLOCKS = frozenset({"redacted_thinking", "container_upload", "cache_control"})


_MAX_DEPTH = 8  # tool_result / document / search_result nest blocks; real bodies nest 2-3 deep


def _document(parts: PromptParts, block: dict[str, object], depth: int) -> None:
    source = as_dict(block.get("source"))
    parts.text(block.get("title"))
    parts.text(block.get("context"))
    if source.get("type") == "text":
        parts.text(source.get("data"))
    elif source.get("type") == "content":
        blocks(parts, source.get("content"), depth + 1)
    else:  # base64 / url / file PDFs: page count unknown here
        parts.add(FILE_TOKENS)


def blocks(parts: PromptParts, value: object, depth: int = 0) -> None:
    """A ``content`` (or ``system``) value: a string or a list of content blocks."""
    if isinstance(value, str):
        parts.text(value)
        return
    if depth > _MAX_DEPTH:
        parts.json(value)  # absurdly nested: count it as JSON instead of recursing
        return
    for item in as_list(value):
        block = as_dict(item)
        kind = block.get("type")
        if kind == "text":
            parts.text(block.get("text"))
        elif kind == "image":
            parts.add(ANTHROPIC_IMAGE_TOKENS)
        elif kind == "document":
            _document(parts, block, depth)
        elif kind in ("tool_use", "server_tool_use", "mcp_tool_use"):
            parts.add(TOKENS_PER_TOOL_CALL)
            parts.text(block.get("name"))
            parts.json(block.get("input"))
        elif kind in ("tool_result", "mcp_tool_result"):
            parts.add(TOKENS_PER_TOOL_CALL)
            blocks(parts, block.get("content"), depth + 1)
        elif kind == "thinking":
            parts.text(block.get("thinking"))
        elif kind == "search_result":
            parts.text(block.get("title"))
            parts.text(block.get("source"))
            blocks(parts, block.get("content"), depth + 1)
        elif not block or isinstance(kind, str) and kind in _SILENT_BLOCKS:
            continue
        else:  # web_search_tool_result and future block types: count their JSON
            parts.json(block)


def messages(body: dict[str, object]) -> PromptParts:
    """``POST /v1/messages`` and ``/v1/messages/count_tokens``."""
    parts = PromptParts()
    system = body.get("system")
    if system:
        parts.add(TOKENS_PER_MESSAGE)
        blocks(parts, system)
    conversation = as_list(body.get("messages"))
    for item in conversation:
        message = as_dict(item)
        parts.add(TOKENS_PER_MESSAGE)
        parts.role(message.get("role"))
        blocks(parts, message.get("content"))
    if conversation:
        parts.add(REPLY_PRIMING)
    tools = [as_dict(t) for t in as_list(body.get("tools"))]
    tools = [t for t in tools if t]
    if tools:
        parts.add(ANTHROPIC_TOOL_SYSTEM_PROMPT)
    for tool in tools:
        parts.add(TOKENS_PER_TOOL)
        parts.json(tool)
    return parts


def complete(body: dict[str, object]) -> PromptParts:
    """``POST /v1/complete`` (legacy Text Completions): the ``prompt`` string."""
    parts = PromptParts()
    parts.text(body.get("prompt"))
    return parts
