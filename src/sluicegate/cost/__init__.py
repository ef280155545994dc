"""Token costs of LLM calls: estimate before the call, measure after it.

Why a separate package: the engine needs a token reservation for every request (prompt tokens
plus the output the request may generate) and, after the upstream answers, the real usage to
settle the difference. Both depend only on request/response JSON and a tokenizer, never on a web
framework, so they live here and are shared by the proxy, the decision API and the simulator.

* :func:`estimate_request` -> :class:`TokenEstimate` (tiktoken offline, else a calibrated fallback)
* :func:`parse_usage_json` / :class:`SSEUsageTracker` -> :class:`Usage`
* :func:`preload` builds the tiktoken encodings at startup (a few hundred ms) instead of on the
  first request.

tiktoken is optional; see docs/tokens.md for methods, error bounds and approximations.
"""

from .encodings import DEFAULT_ENCODING, EncodingName, encoding_for_model, preload
from .estimate import Dialect, Kind, TokenCounter, TokenEstimate, count_tokens, estimate_request
from .sse import SSEUsageTracker
from .usage import Usage, parse_usage_json, response_text

__all__ = [
    "DEFAULT_ENCODING",
    "Dialect",
    "EncodingName",
    "Kind",
    "SSEUsageTracker",
    "TokenCounter",
    "TokenEstimate",
    "Usage",
    "count_tokens",
    "encoding_for_model",
    "estimate_request",
    "parse_usage_json",
    "preload",
    "response_text",
]
