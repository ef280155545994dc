"""Token estimate for one request body: prompt tokens plus the output it may generate.

Why both halves: a rate limiter that only counts prompt tokens admits a request that then
generates 30k tokens. Like OpenAI's own limiter, the reservation is prompt tokens plus the
request's output cap (``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens``, times
``n``), or a policy default when the request sets none. After the response, the engine settles
the reservation against the usage parsed by :mod:`sluicegate.cost.usage` or
:mod:`sluicegate.cost.sse`.

The body shape is chosen by the route's dialect and the request path (a suffix match, so
``/openai/deployments/x/chat/completions?api-version=...`` works); for unrecognised paths it is
guessed from the body's keys. Estimation never raises on malformed bodies: fields of the wrong
type are ignored, which undercounts garbage but never fails a request.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from . import anthropic_shapes, openai_shapes
from .encodings import EncodingName, encoding_for_model, get_encoding
from .fallback import estimate_tokens, raw_estimate
from .parts import PromptParts, as_dict, choices, reserved_output

Dialect = Literal["openai", "anthropic"]
Kind = Literal[
    "chat",
    "completions",
    "embeddings",
    "responses",
    "responses_input_tokens",
    "anthropic_messages",
    "anthropic_count_tokens",
    "anthropic_complete",
    "unknown",
]

FALLBACK: Final = "fallback"


@dataclass(frozen=True, slots=True)
class TokenEstimate:
    """What one request is expected to cost in tokens.

    ``method`` is ``"tiktoken:<encoding>"`` or ``"fallback"`` (the calibrated byte-class model),
    so logs and metrics can tell exact counts from estimates. ``kind`` is the body shape used.
    """

    prompt_tokens: int
    reserved_output: int
    method: str
    kind: Kind
    total: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "total", self.prompt_tokens + self.reserved_output)


class TokenCounter:
    """Counts strings with one method for one encoding: tiktoken when usable, else the fallback.

    Built once per request (cheap: encodings are cached process-wide), so every string of a body
    is counted consistently and ``method`` reports what was really used.
    """

    __slots__ = ("encoding", "method", "_bpe")

    def __init__(self, encoding: EncodingName, *, use_tiktoken: bool = True) -> None:
        self.encoding: EncodingName = encoding
        bpe = get_encoding(encoding) if use_tiktoken else None
        # encode_ordinary: text that looks like a special token is counted as plain text
        self._bpe: Callable[[str], list[int]] | None = bpe.encode_ordinary if bpe else None
        self.method = f"tiktoken:{encoding}" if bpe else FALLBACK

    def __call__(self, text: str) -> int:
        if not text:
            return 0
        return len(self._bpe(text)) if self._bpe else estimate_tokens(text, self.encoding)

    def parts(self, parts: PromptParts) -> int:
        """Total tokens of a walked body (fallback values are summed before rounding once)."""
        if self._bpe:
            encode = self._bpe
            return parts.fixed + sum(len(encode(t)) for t in parts.texts)
        raw = sum(raw_estimate(t, self.encoding) for t in parts.texts)
        return parts.fixed + math.ceil(raw)


def count_tokens(
    text: str, *, model: str | None = None, dialect: Dialect = "openai", use_tiktoken: bool = True
) -> int:
    """Tokens in one string for ``model`` (o200k when unknown); handy for callers and tests."""
    return TokenCounter(encoding_for_model(model, dialect=dialect), use_tiktoken=use_tiktoken)(text)


_OUTPUT_KEYS: Final = ("max_completion_tokens", "max_tokens", "max_output_tokens")
_OPENAI_SUFFIXES: Final[tuple[tuple[str, Kind], ...]] = (
    ("/chat/completions", "chat"),
    ("/completions", "completions"),
    ("/embeddings", "embeddings"),
    ("/responses/input_tokens", "responses_input_tokens"),
    ("/responses", "responses"),
)
_ANTHROPIC_SUFFIXES: Final[tuple[tuple[str, Kind], ...]] = (
    ("/messages/count_tokens", "anthropic_count_tokens"),
    ("/messages", "anthropic_messages"),
    ("/complete", "anthropic_complete"),
)
_RESPONSES_HINTS: Final = frozenset(
    {"instructions", "max_output_tokens", "previous_response_id", "reasoning", "text", "tools"}
)
_EMBEDDINGS_HINTS: Final = frozenset({"dimensions", "encoding_format"})


def body_kind(body: dict[str, object], dialect: Dialect, path: str) -> Kind:
    """Which body shape a request has, from its path, else from its keys."""
    route = path.split("?", 1)[0].rstrip("/")
    for suffix, kind in _ANTHROPIC_SUFFIXES if dialect == "anthropic" else _OPENAI_SUFFIXES:
        if route.endswith(suffix):
            return kind
    if dialect == "anthropic":
        if "messages" in body:
            return "anthropic_messages"
        return "anthropic_complete" if "prompt" in body else "unknown"
    if "messages" in body:
        return "chat"
    if "prompt" in body:
        return "completions"
    if "input" in body:
        # Both embeddings and Responses take ``input``; an embeddings body has neither
        # instructions nor output settings. When in doubt, Responses (it reserves output).
        if _RESPONSES_HINTS & body.keys() or not _EMBEDDINGS_HINTS & body.keys():
            return "responses"
        return "embeddings"
    return "unknown"


def _prompt(body: dict[str, object], kind: Kind) -> PromptParts:
    if kind == "chat":
        return openai_shapes.chat(body)
    if kind == "completions":
        return openai_shapes.completions(body)
    if kind == "embeddings":
        return openai_shapes.embeddings(body)
    if kind in ("responses", "responses_input_tokens"):
        return openai_shapes.responses(body)
    if kind in ("anthropic_messages", "anthropic_count_tokens"):
        return anthropic_shapes.messages(body)
    if kind == "anthropic_complete":
        return anthropic_shapes.complete(body)
    parts = PromptParts()  # unknown endpoint: count the whole body as text, generously
    parts.json(body)
    return parts


def _output(body: dict[str, object], kind: Kind, default_output: int) -> int:
    if kind in ("embeddings", "responses_input_tokens", "anthropic_count_tokens", "unknown"):
        return 0
    if kind == "chat":
        return reserved_output(body, _OUTPUT_KEYS, default_output, choices=choices(body, "n"))
    if kind == "completions":  # best_of completions are generated server-side, then n returned
        n = choices(body, "n", "best_of")
        return reserved_output(body, _OUTPUT_KEYS, default_output, choices=n)
    if kind == "anthropic_complete":
        return reserved_output(body, ("max_tokens_to_sample",), default_output)
    return reserved_output(body, _OUTPUT_KEYS, default_output)


def estimate_request(
    body: dict[str, object],
    dialect: Dialect,
    path: str,
    *,
    default_output: int,
    model: str | None = None,
    use_tiktoken: bool = True,
) -> TokenEstimate:
    """Estimate prompt tokens and reserve output tokens for one already-parsed JSON body.

    ``model`` overrides ``body["model"]`` for choosing the encoding (e.g. an Azure deployment
    whose model is known from the route). ``use_tiktoken=False`` forces the fallback (tests,
    benchmarks, or a deployment that wants identical cost on every replica whatever is installed).
    Never raises for malformed bodies; a non-dict body counts as empty.
    """
    if not isinstance(body, dict):
        body = {}
    kind = body_kind(body, dialect, path)
    counter = TokenCounter(
        encoding_for_model(model if model is not None else body.get("model"), dialect=dialect),
        use_tiktoken=use_tiktoken,
    )
    return TokenEstimate(
        prompt_tokens=counter.parts(_prompt(as_dict(body), kind)),
        reserved_output=_output(body, kind, default_output),
        method=counter.method,
        kind=kind,
    )
