"""Offline tiktoken encodings: pinned data, no network, graceful absence."""

from __future__ import annotations

import hashlib
import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from sluicegate.cost import encodings
from sluicegate.cost.encodings import (
    SPECS,
    EncodingDataError,
    encoding_for_model,
    get_encoding,
    read_ranks,
)
from sluicegate.cost.estimate import TokenCounter, count_tokens

tiktoken_load = pytest.importorskip("tiktoken.load")
tiktoken_registry = pytest.importorskip("tiktoken.registry")


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    encodings.clear_cache()
    yield
    encodings.clear_cache()


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Any attempt to download (socket, tiktoken's loader or registry) fails the test."""

    def refuse(*args: object, **kwargs: object) -> Any:
        raise AssertionError("network or tiktoken download path used")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(tiktoken_load, "read_file", refuse)
    monkeypatch.setattr(tiktoken_load, "read_file_cached", refuse)
    monkeypatch.setattr(tiktoken_registry, "get_encoding", refuse)


@pytest.mark.usefixtures("no_network")
def test_known_token_ids_offline() -> None:
    o200k = get_encoding("o200k_base")
    cl100k = get_encoding("cl100k_base")
    assert o200k is not None and cl100k is not None
    assert o200k.encode_ordinary("hello world") == [24912, 2375]
    assert cl100k.encode_ordinary("hello world") == [15339, 1917]
    # the OpenAI cookbook's example ("How to count tokens with tiktoken")
    assert cl100k.encode_ordinary("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]
    assert len(o200k.encode_ordinary("tiktoken is great!")) == 6
    assert o200k.n_vocab == 200019 and cl100k.n_vocab == 100277


@pytest.mark.usefixtures("no_network")
def test_count_tokens_uses_tiktoken_offline() -> None:
    assert count_tokens("hello world", model="gpt-4o") == 2
    assert TokenCounter("o200k_base").method == "tiktoken:o200k_base"
    # special-token text in user content is plain text, never an error
    assert count_tokens("<|endoftext|>", model="gpt-4o") > 1


def test_shipped_files_match_tiktoken_pins() -> None:
    """The hashes we pin are the ones tiktoken pins for the same URLs (no drift)."""
    import tiktoken_ext.openai_public as public

    seen: dict[str, str | None] = {}

    def capture(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        seen[url.rsplit("/", 1)[-1]] = expected_hash
        return {}

    original = public.load_tiktoken_bpe
    public.load_tiktoken_bpe = capture  # type: ignore[assignment]
    try:
        o200k, cl100k = public.o200k_base(), public.cl100k_base()
    finally:
        public.load_tiktoken_bpe = original
    for spec, reference in ((SPECS["o200k_base"], o200k), (SPECS["cl100k_base"], cl100k)):
        assert seen[spec.filename] == spec.sha256
        assert reference["pat_str"] == spec.pat_str
        assert reference["special_tokens"] == spec.special_tokens
        data = encodings.resources.files("sluicegate.cost").joinpath("data", spec.filename)
        assert hashlib.sha256(data.read_bytes()).hexdigest() == spec.sha256


def test_corrupt_data_is_rejected_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EncodingDataError, match="sha256"):
        read_ranks(SPECS["o200k_base"], b"aGVsbG8= 0\n")
    monkeypatch.setattr(encodings, "read_ranks", lambda spec: read_ranks(spec, b"x 0\n"))
    assert get_encoding("o200k_base") is None
    counter = TokenCounter("o200k_base")
    assert counter.method == "fallback"
    assert counter("hello world") >= 1


def test_missing_tiktoken_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # makes ``import tiktoken`` fail
    assert get_encoding("cl100k_base") is None
    assert encodings.preload() == {"cl100k_base": False, "o200k_base": False}
    assert count_tokens("hello world", model="gpt-4") >= 1


def test_failure_is_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def broken(spec: object) -> Any:
        calls.append(spec)
        raise EncodingDataError("boom")

    monkeypatch.setattr(encodings, "build_encoding", broken)
    assert get_encoding("o200k_base") is None
    assert get_encoding("o200k_base") is None
    assert len(calls) == 1


def test_encodings_are_cached_objects() -> None:
    assert get_encoding("o200k_base") is get_encoding("o200k_base")
    assert encodings.preload("o200k_base") == {"o200k_base": True}


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("o1-preview", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("gpt-oss-120b", "o200k_base"),
        ("ft:gpt-4o-mini:acme::abc123", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("GPT-4O", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo-2024-04-09", "cl100k_base"),
        ("gpt-4-32k", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),
        ("ft:gpt-3.5-turbo:acme::x", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
        ("llama-3-70b", "o200k_base"),
        ("", "o200k_base"),
        (None, "o200k_base"),
        (42, "o200k_base"),
    ],
)
def test_encoding_for_model(model: object, expected: str) -> None:
    assert encoding_for_model(model) == expected


def test_anthropic_always_o200k() -> None:
    assert encoding_for_model("gpt-4", dialect="anthropic") == "o200k_base"
    assert encoding_for_model("claude-sonnet-4-5", dialect="anthropic") == "o200k_base"


def test_cost_package_imports_only_stdlib_and_lazily_tiktoken() -> None:
    """The core must import without web frameworks; tiktoken is imported only when first used."""
    import ast
    import pathlib
    import subprocess

    package = pathlib.Path(encodings.__file__).parent
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert roots <= sys.stdlib_module_names | {"tiktoken"}, (path.name, roots)
    code = "import sys, sluicegate.cost; assert 'tiktoken' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
