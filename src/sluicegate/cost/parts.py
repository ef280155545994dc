"""The intermediate form between a request body and a token count.

Why: walking a body (which fields hold prompt text, which are images, what overhead each message
adds) is independent of how text is tokenized. Walkers fill a :class:`PromptParts` with the
strings to tokenize plus a fixed number of tokens that need no tokenizer (per-message overhead,
token-id arrays, image placeholders); :mod:`sluicegate.cost.estimate` then counts the strings
with tiktoken or the fallback. That keeps walkers testable without tiktoken and lets one body be
counted with either method.

Bodies are untrusted JSON: every helper here accepts ``object`` and ignores what it does not
understand rather than raising.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Final

#: OpenAI cookbook ("How to count tokens with tiktoken"): every message is wrapped as
#: ``<|start|>{role/name}\n{content}<|end|>\n`` (3 tokens beyond role and content), and every
#: reply is primed with ``<|start|>assistant<|message|>`` (3 tokens). Applied to Anthropic too,
#: whose framing is not published but is of the same order.
TOKENS_PER_MESSAGE: Final = 3
TOKENS_PER_NAME: Final = 1
REPLY_PRIMING: Final = 3
#: Per tool definition, beyond its serialized JSON (the cookbook's function-calling recipe adds
#: ~7-12 framing tokens per function for gpt-4o; JSON punctuation already overcounts the rest).
TOKENS_PER_TOOL: Final = 8
#: Per tool call or tool result item in the conversation.
TOKENS_PER_TOOL_CALL: Final = 3
#: Anthropic documents a hidden tool-use system prompt of 346 tokens (tool_choice auto/none) or
#: 313 (any/tool) for current Claude models; the larger one is reserved whenever tools are sent.
ANTHROPIC_TOOL_SYSTEM_PROMPT: Final = 346

# Inputs whose size cannot be known without decoding media. These are reservations, settled
# later from reported usage. OpenAI: a high/auto-detail image is 85 + 170 per 512 px tile
# (765 for a 1024x1024 image), low detail is 85. Anthropic: (w*h)/750, at most ~1600 for an image
# within its default size limits. Audio and files (PDF pages) vary too much to guess well.
IMAGE_TOKENS: Final = 765
IMAGE_LOW_DETAIL_TOKENS: Final = 85
ANTHROPIC_IMAGE_TOKENS: Final = 1600
AUDIO_TOKENS: Final = 500
FILE_TOKENS: Final = 1500

KNOWN_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

#: Clamp for counts read from bodies (``max_tokens``, ``n``), so absurd values stay integers
#: of sane size; anything that large is refused by limits anyway.
MAX_COUNT: Final = 1 << 31
MAX_CHOICES: Final = 128


@dataclass(slots=True)
class PromptParts:
    """Strings to tokenize and tokens already known, accumulated by a body walker."""

    texts: list[str] = field(default_factory=list)
    fixed: int = 0

    def text(self, value: object) -> None:
        """Add a string field; anything that is not a non-empty string is ignored."""
        if isinstance(value, str) and value:
            self.texts.append(value)

    def role(self, value: object) -> None:
        """A message role: the standard ones are a single token in every OpenAI encoding."""
        if isinstance(value, str) and value in KNOWN_ROLES:
            self.fixed += 1
        else:
            self.text(value)

    def json(self, value: object) -> None:
        """Add a structure (tool schema, tool-call input) as compact JSON text."""
        if value is not None:
            self.texts.append(compact_json(value))

    def add(self, tokens: int) -> None:
        self.fixed += tokens

    def token_ids(self, value: object) -> bool:
        """Add a list of token ids (legacy prompts, embeddings input); True if it was one."""
        if isinstance(value, list) and value and all(type(v) is int for v in value):
            self.fixed += len(value)
            return True
        return False


def compact_json(value: object) -> str:
    """JSON text for counting; never raises (falls back to ``repr``)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return repr(value)


def as_count(value: object) -> int | None:
    """A non-negative integer from untrusted JSON (bools and negatives rejected), clamped."""
    if type(value) is int:
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    else:
        return None
    return min(number, MAX_COUNT) if number >= 0 else None


def as_list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def as_dict(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def reserved_output(
    body: dict[str, object], keys: tuple[str, ...], default: int, *, choices: int = 1
) -> int:
    """The first valid output cap among ``keys``, else ``default``; times the number of choices."""
    for key in keys:
        cap = as_count(body.get(key))
        if cap is not None:
            return min(cap * choices, MAX_COUNT)
    return min(max(default, 0) * choices, MAX_COUNT)


def choices(body: dict[str, object], *keys: str) -> int:
    """How many completions the upstream will generate (``n``, ``best_of``), at least 1."""
    counts = [as_count(body.get(k)) for k in keys]
    return max(1, min(MAX_CHOICES, max((c for c in counts if c is not None), default=1)))
