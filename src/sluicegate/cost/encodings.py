"""Offline tiktoken encodings: which BPE a model uses, and loading it without the network.

Why this module exists: ``tiktoken.get_encoding`` downloads its BPE ranks from
``openaipublic.blob.core.windows.net`` on first use and caches them in a temp directory. A
gateway must never do network I/O on its request path, and its hosts often have no egress at all.
So sluicegate ships the two encodings it needs (``cl100k_base``, ``o200k_base``) as package data,
verifies them against the SHA-256 that tiktoken itself pins, and builds ``tiktoken.Encoding``
objects directly from the ranks. tiktoken's loader, registry, plugin discovery and cache directory
are never used, so no environment variable is read or mutated and nothing is written to disk.

The split regexes and special tokens below are copied from ``tiktoken_ext/openai_public.py``
(tiktoken 0.14, MIT); a test cross-checks them against the installed tiktoken.

tiktoken is optional: :func:`get_encoding` returns ``None`` when it is not installed or the data
is missing or corrupt, and callers fall back to the calibrated estimator in
:mod:`sluicegate.cost.fallback`. The failure is remembered, so a broken install costs one attempt,
not one per request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:  # pragma: no cover - typing only
    import tiktoken

EncodingName = Literal["cl100k_base", "o200k_base"]

#: The encoding used when a model is unknown, and for Anthropic (whose tokenizer is not public).
DEFAULT_ENCODING: Final[EncodingName] = "o200k_base"

_O200K_PAT: Final = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_CL100K_PAT: Final = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)


@dataclass(frozen=True, slots=True)
class EncodingSpec:
    """Everything needed to build one encoding offline.

    ``sha256`` is the ``expected_hash`` tiktoken pins for the same file, so a file that passes
    here is byte-identical to the one tiktoken would download.
    """

    name: EncodingName
    filename: str
    sha256: str
    pat_str: str
    special_tokens: dict[str, int]


SPECS: Final[dict[EncodingName, EncodingSpec]] = {
    "cl100k_base": EncodingSpec(
        name="cl100k_base",
        filename="cl100k_base.tiktoken",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=_CL100K_PAT,
        special_tokens={
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
    "o200k_base": EncodingSpec(
        name="o200k_base",
        filename="o200k_base.tiktoken",
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str=_O200K_PAT,
        special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    ),
}

# Prefix → encoding, checked in order (o200k families first, because "gpt-4" is a prefix of
# "gpt-4o" and "gpt-4.1"). Mirrors tiktoken.model for the models that matter today; older
# p50k/r50k models are approximated with cl100k since sluicegate does not ship those files.
_PREFIXES: Final[tuple[tuple[str, EncodingName], ...]] = (
    ("gpt-4o", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("gpt-oss", "o200k_base"),  # o200k_harmony: same ranks, extra special tokens only
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("codex", "o200k_base"),
    ("computer-use", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5", "cl100k_base"),
    ("gpt-35", "cl100k_base"),
    ("text-embedding", "cl100k_base"),
    ("davinci", "cl100k_base"),
    ("babbage", "cl100k_base"),
    ("text-davinci", "cl100k_base"),
)


def encoding_for_model(model: object, *, dialect: str = "openai") -> EncodingName:
    """Pick the BPE for a model name; anything unknown (and every Anthropic model) gets o200k.

    Accepts any object because it is fed straight from untrusted request bodies. Provider
    prefixes (``openai/gpt-4o``) and fine-tune prefixes (``ft:gpt-4o-mini:org::id``) are
    stripped. Anthropic's tokenizer is not published; o200k is a documented approximation
    (see docs/tokens.md), corrected at settlement from the reported usage.
    """
    if dialect == "anthropic" or not isinstance(model, str):
        return DEFAULT_ENCODING
    name = model.strip().lower().rsplit("/", 1)[-1]
    name = name.removeprefix("ft:")
    for prefix, enc in _PREFIXES:
        if name.startswith(prefix):
            return enc
    return DEFAULT_ENCODING


class EncodingDataError(Exception):
    """A shipped encoding file is missing, corrupt or does not match its pinned hash."""


def read_ranks(spec: EncodingSpec, data: bytes | None = None) -> dict[bytes, int]:
    """Parse a ``.tiktoken`` file (``base64(token) rank`` per line) after verifying its hash.

    ``data`` defaults to the file shipped in ``sluicegate/cost/data``; read through
    ``importlib.resources`` so it also works from a zipped install.
    """
    if data is None:
        try:
            data = resources.files("sluicegate.cost").joinpath("data", spec.filename).read_bytes()
        except OSError as exc:
            raise EncodingDataError(f"{spec.filename}: cannot read: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise EncodingDataError(f"{spec.filename}: sha256 {digest} != pinned {spec.sha256}")
    ranks: dict[bytes, int] = {}
    try:
        for line in data.splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    except (ValueError, binascii.Error) as exc:  # pragma: no cover - hash already vouches
        raise EncodingDataError(f"{spec.filename}: malformed line") from exc
    return ranks


def build_encoding(spec: EncodingSpec) -> tiktoken.Encoding:
    """Construct a ``tiktoken.Encoding`` from shipped data; raises ImportError/EncodingDataError."""
    import tiktoken

    return tiktoken.Encoding(
        spec.name,
        pat_str=spec.pat_str,
        mergeable_ranks=read_ranks(spec),
        special_tokens=dict(spec.special_tokens),
    )


_lock = threading.Lock()
_cache: dict[EncodingName, tiktoken.Encoding | None] = {}


def get_encoding(name: EncodingName) -> tiktoken.Encoding | None:
    """The cached encoding, or ``None`` if tiktoken or its data is unavailable.

    Building o200k takes a few hundred milliseconds (200k ranks), so call :func:`preload` at
    startup to keep that off the first request. The lock makes concurrent first calls from
    worker threads build it once.
    """
    try:
        return _cache[name]
    except KeyError:
        pass
    with _lock:
        if name not in _cache:
            try:
                _cache[name] = build_encoding(SPECS[name])
            except (ImportError, EncodingDataError, ValueError):
                _cache[name] = None
        return _cache[name]


def preload(*names: EncodingName) -> dict[EncodingName, bool]:
    """Build encodings ahead of traffic; returns which ones are usable (for startup logs)."""
    wanted = names or tuple(SPECS)
    return {n: get_encoding(n) is not None for n in wanted}


def clear_cache() -> None:
    """Forget built encodings and remembered failures (tests, or after installing tiktoken)."""
    with _lock:
        _cache.clear()
