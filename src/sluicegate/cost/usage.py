"""Usage reported by the upstream, normalised for settlement.

Why normalise: OpenAI Chat (``prompt_tokens`` / ``completion_tokens``), the Responses API
(``input_tokens`` / ``output_tokens``) and Anthropic (``input_tokens`` / ``output_tokens`` plus
cache fields) mean different things by similar names. In particular Anthropic's ``input_tokens``
*excludes* prompt-cache reads and writes, while OpenAI's prompt/input counts *include* cached
tokens. :class:`Usage` always means "everything the model read" by ``prompt_tokens``, so it is
comparable with :class:`~sluicegate.cost.estimate.TokenEstimate` whatever the provider, and keeps
the cache breakdown for policies that charge cached tokens differently (Anthropic does not count
cache reads towards its input-tokens-per-minute limit for most models).

Nothing here raises on malformed input: anything unusable yields ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .parts import as_count, as_dict, as_list, compact_json

Source = Literal["reported", "counted"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one response consumed.

    ``prompt_tokens`` includes cached and cache-creation tokens; ``completion_tokens`` includes
    reasoning tokens. ``source`` is ``"counted"`` when (part of) it was computed from streamed text
    because the upstream reported nothing (or the stream was cut before its final usage).
    """

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_prompt_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0
    source: Source = "reported"

    @property
    def uncached_prompt_tokens(self) -> int:
        """Prompt tokens that were neither read from nor written to a prompt cache."""
        return max(0, self.prompt_tokens - self.cached_prompt_tokens - self.cache_creation_tokens)


def _count(mapping: dict[str, object], key: str) -> int | None:
    return as_count(mapping.get(key))


def usage_from_object(value: object, dialect: str) -> Usage | None:
    """Normalise one ``usage`` object; ``None`` if it has no usable prompt or output count."""
    usage = as_dict(value)
    if not usage:
        return None
    if "prompt_tokens" in usage or "completion_tokens" in usage:  # Chat, completions, embeddings
        prompt = _count(usage, "prompt_tokens")
        output = _count(usage, "completion_tokens")
        cached = _count(as_dict(usage.get("prompt_tokens_details")), "cached_tokens")
        reasoning = _count(as_dict(usage.get("completion_tokens_details")), "reasoning_tokens")
        creation = None
    else:
        prompt = _count(usage, "input_tokens")
        output = _count(usage, "output_tokens")
        reasoning = _count(as_dict(usage.get("output_tokens_details")), "reasoning_tokens")
        if dialect == "anthropic":
            cached = _count(usage, "cache_read_input_tokens")
            creation = _count(usage, "cache_creation_input_tokens")
            if prompt is not None or cached or creation:
                prompt = (prompt or 0) + (cached or 0) + (creation or 0)
        else:  # Responses API: input_tokens already includes cached tokens
            cached = _count(as_dict(usage.get("input_tokens_details")), "cached_tokens")
            creation = None
    if prompt is None and output is None:
        return None
    prompt, output = prompt or 0, output or 0
    reported_total = _count(usage, "total_tokens") or 0
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=output,
        total_tokens=max(prompt + output, reported_total),
        cached_prompt_tokens=min(cached or 0, prompt),
        cache_creation_tokens=min(creation or 0, prompt),
        reasoning_tokens=min(reasoning or 0, output),
    )


def parse_usage_json(body: dict[str, object], dialect: str) -> Usage | None:
    """Usage of a non-streamed JSON response body, or ``None`` if it reports none.

    Also accepts the wrappers streaming events use (``{"response": {"usage": ...}}`` for the
    Responses API, ``{"message": {"usage": ...}}`` for Anthropic ``message_start``).
    """
    if not isinstance(body, dict):
        return None
    for holder in (body, as_dict(body.get("response")), as_dict(body.get("message"))):
        found = usage_from_object(holder.get("usage"), dialect)
        if found is not None:
            return found
    return None


def response_text(body: dict[str, object]) -> str:
    """The generated text of a non-streamed response (all dialects), to count when usage is absent.

    Includes tool-call arguments, refusals and visible reasoning, since those are output tokens.
    """
    if not isinstance(body, dict):
        return ""
    out: list[str] = []

    def add(value: object) -> None:
        if isinstance(value, str) and value:
            out.append(value)

    for raw_choice in as_list(body.get("choices")):  # OpenAI chat / completions
        choice = as_dict(raw_choice)
        add(choice.get("text"))
        message = as_dict(choice.get("message"))
        for key in ("content", "refusal", "reasoning_content", "reasoning"):
            add(message.get(key))
        for call in as_list(message.get("tool_calls")):
            function = as_dict(as_dict(call).get("function"))
            add(function.get("name"))
            add(function.get("arguments"))
    for raw_item in as_list(body.get("output")):  # Responses API
        item = as_dict(raw_item)
        add(item.get("arguments"))
        add(item.get("input"))
        for raw_part in as_list(item.get("content")) + as_list(item.get("summary")):
            part = as_dict(raw_part)
            add(part.get("text"))
            add(part.get("refusal"))
    if body.get("type") == "message":  # Anthropic
        for raw_block in as_list(body.get("content")):
            block = as_dict(raw_block)
            add(block.get("text"))
            add(block.get("thinking"))
            if block.get("type") == "tool_use":
                add(block.get("name"))
                add(compact_json(block.get("input")) if block.get("input") else None)
    return "\n".join(out)
