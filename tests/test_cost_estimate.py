"""Request-body token estimates for every supported body shape."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.cost import TokenEstimate, estimate_request
from sluicegate.cost.encodings import get_encoding
from sluicegate.cost.estimate import body_kind
from sluicegate.cost.parts import (
    ANTHROPIC_IMAGE_TOKENS,
    ANTHROPIC_TOOL_SYSTEM_PROMPT,
    IMAGE_LOW_DETAIL_TOKENS,
    IMAGE_TOKENS,
    TOKENS_PER_TOOL,
)

try:
    import tiktoken  # noqa: F401

    HAVE_TIKTOKEN = True
except ImportError:
    HAVE_TIKTOKEN = False
requires_tiktoken = pytest.mark.skipif(not HAVE_TIKTOKEN, reason="tiktoken not installed")

CHAT = "/v1/chat/completions"


def n(text: str, encoding: str = "o200k_base") -> int:
    pytest.importorskip("tiktoken")
    enc = get_encoding(encoding)  # type: ignore[arg-type]
    assert enc is not None
    return len(enc.encode_ordinary(text))


def est(body: Any, path: str = CHAT, dialect: str = "openai", **kw: Any) -> TokenEstimate:
    kw.setdefault("default_output", 500)
    return estimate_request(body, dialect, path, **kw)  # type: ignore[arg-type]


# The OpenAI cookbook's example, whose counts the cookbook verified against the API:
# 129 prompt tokens for gpt-3.5-turbo / gpt-4 (cl100k) and 124 for gpt-4o / gpt-4o-mini (o200k).
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]


@requires_tiktoken
@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-3.5-turbo", 129), ("gpt-4", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124)],
)
def test_chat_matches_openai_cookbook(model: str, expected: int) -> None:
    result = est({"model": model, "messages": COOKBOOK_MESSAGES, "max_tokens": 1})
    assert result.prompt_tokens == expected
    assert result.reserved_output == 1
    assert result.total == expected + 1
    assert result.kind == "chat"
    assert result.method == ("tiktoken:o200k_base" if "4o" in model else "tiktoken:cl100k_base")


@requires_tiktoken
def test_fallback_close_to_tiktoken_on_cookbook_example() -> None:
    body = {"model": "gpt-4o", "messages": COOKBOOK_MESSAGES}
    exact, rough = est(body), est(body, use_tiktoken=False)
    assert rough.method == "fallback"
    assert exact.prompt_tokens <= rough.prompt_tokens <= exact.prompt_tokens * 1.2


def test_chat_content_parts_equal_plain_string() -> None:
    text = "Describe the weather in Paris today."
    plain = est({"messages": [{"role": "user", "content": text}]})
    parts = est({"messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]})
    split = est(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Describe the weather"},
                        {"type": "text", "text": " in Paris today."},
                    ],
                }
            ]
        }
    )
    assert plain.prompt_tokens == parts.prompt_tokens == 3 + 1 + n(text) + 3
    assert split.prompt_tokens == 3 + 1 + n("Describe the weather") + n(" in Paris today.") + 3


def test_chat_images_use_placeholders_not_base64() -> None:
    huge = "data:image/png;base64," + "A" * 200_000

    def body(detail: str | None) -> dict[str, Any]:
        image: dict[str, Any] = {"url": huge}
        if detail:
            image["detail"] = detail
        return {
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": image}]}]
        }

    assert est(body(None)).prompt_tokens == 3 + 1 + IMAGE_TOKENS + 3
    assert est(body("high")).prompt_tokens == 3 + 1 + IMAGE_TOKENS + 3
    assert est(body("low")).prompt_tokens == 3 + 1 + IMAGE_LOW_DETAIL_TOKENS + 3


def test_chat_tools_and_tool_calls_count() -> None:
    function = {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
    base = {"messages": [{"role": "user", "content": "Weather in Paris?"}]}
    with_tools = {**base, "tools": [{"type": "function", "function": function}]}
    with_functions = {**base, "functions": [function]}
    schema = json.dumps(function, separators=(",", ":"))
    assert est(with_tools).prompt_tokens == est(base).prompt_tokens + TOKENS_PER_TOOL + n(schema)
    assert est(with_functions).prompt_tokens == est(with_tools).prompt_tokens

    conversation = {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 18}'},
        ]
    }
    tokens = est(conversation).prompt_tokens
    expected = (
        3 * 3  # three messages
        + 3  # reply priming
        + 3  # roles
        + n("Weather in Paris?")
        + 3  # tool call framing
        + n("get_weather")
        + n('{"city":"Paris"}')
        + n("call_1")
        + n('{"temp_c": 18}')
    )
    assert tokens == expected


def test_chat_json_schema_response_format_counts() -> None:
    base = {"messages": [{"role": "user", "content": "hi"}]}
    schema = {"name": "answer", "schema": {"type": "object", "properties": {"a": {}}}}
    formatted = {**base, "response_format": {"type": "json_schema", "json_schema": schema}}
    assert est(formatted).prompt_tokens == est(base).prompt_tokens + n(
        json.dumps(schema, separators=(",", ":"))
    )
    plain_json = {**base, "response_format": {"type": "json_object"}}
    assert est(plain_json).prompt_tokens == est(base).prompt_tokens


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, 500),
        ({"max_tokens": 64}, 64),
        ({"max_completion_tokens": 80, "max_tokens": 64}, 80),
        ({"max_tokens": 64, "n": 3}, 192),
        ({"n": 2}, 1000),
        ({"max_tokens": "64"}, 500),
        ({"max_tokens": -5}, 500),
        ({"max_tokens": True}, 500),
        ({"max_tokens": 64.0}, 64),
        ({"max_tokens": 64, "n": 10_000}, 64 * 128),
        ({"max_tokens": 10**40}, 1 << 31),
    ],
)
def test_chat_reserved_output(extra: dict[str, Any], expected: int) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], **extra}
    assert est(body).reserved_output == expected


def test_legacy_completions() -> None:
    path = "/v1/completions"
    assert est({"prompt": "Say this is a test"}, path).prompt_tokens == n("Say this is a test")
    assert est({"prompt": ["one", "two"]}, path).prompt_tokens == n("one") + n("two")
    assert est({"prompt": [1, 2, 3, 4]}, path).prompt_tokens == 4
    assert est({"prompt": [[1, 2], [3, 4, 5]]}, path).prompt_tokens == 5
    with_suffix = est({"prompt": "def f(", "suffix": "return x"}, path)
    assert with_suffix.prompt_tokens == n("def f(") + n("return x")
    assert with_suffix.kind == "completions"
    assert est({"prompt": "x", "max_tokens": 10, "n": 2, "best_of": 5}, path).reserved_output == 50


def test_embeddings_reserve_no_output() -> None:
    path = "/v1/embeddings"
    model = "text-embedding-3-small"
    single = est({"model": model, "input": "The food was delicious", "max_tokens": 99}, path)
    assert single.prompt_tokens == n("The food was delicious", "cl100k_base")
    assert single.reserved_output == 0 and single.kind == "embeddings"
    assert single.method == "tiktoken:cl100k_base"
    many = est({"model": model, "input": ["a cat", "a dog"]}, path)
    assert many.prompt_tokens == n("a cat", "cl100k_base") + n("a dog", "cl100k_base")
    assert est({"model": model, "input": [101, 102, 103]}, path).prompt_tokens == 3
    assert est({"model": model, "input": [[1, 2], [3]]}, path).prompt_tokens == 3


def test_responses_api() -> None:
    path = "/v1/responses"
    simple = est({"model": "gpt-5", "input": "Tell me a joke", "max_output_tokens": 300}, path)
    assert simple.prompt_tokens == 3 + n("Tell me a joke") + 3
    assert simple.reserved_output == 300 and simple.kind == "responses"

    with_instructions = est({"input": "Tell me a joke", "instructions": "Be terse."}, path)
    assert with_instructions.prompt_tokens == simple.prompt_tokens + 3 + n("Be terse.")
    assert with_instructions.reserved_output == 500

    items = est(
        {
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {"type": "function_call", "name": "w", "arguments": "{}", "call_id": "c"},
                {"type": "function_call_output", "call_id": "c", "output": "sunny"},
                {"type": "item_reference", "id": "msg_123"},
                {"role": "user", "content": [{"type": "input_image", "detail": "low"}]},
            ]
        },
        path,
    )
    expected = (3 + 1 + n("Weather?")) + (3 + n("w") + n("{}")) + (3 + n("sunny"))
    expected += 3 + 1 + IMAGE_LOW_DETAIL_TOKENS + 3
    assert items.prompt_tokens == expected

    counting = est({"input": "hi", "max_output_tokens": 50}, "/v1/responses/input_tokens")
    assert counting.reserved_output == 0 and counting.kind == "responses_input_tokens"


def test_responses_tools_and_schema() -> None:
    path = "/v1/responses"
    base = {"input": "hi"}
    tool = {"type": "function", "name": "f", "parameters": {"type": "object"}}
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    full = {**base, "tools": [tool], "text": {"format": {"type": "json_schema", "schema": schema}}}
    extra = TOKENS_PER_TOOL + n(json.dumps(tool, separators=(",", ":")))
    extra += n(json.dumps(schema, separators=(",", ":")))
    assert est(full, path).prompt_tokens == est(base, path).prompt_tokens + extra


def test_anthropic_messages() -> None:
    path = "/v1/messages"
    body = {
        "model": "claude-sonnet-4-5",
        "system": "You are terse.",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Hello, Claude"}],
    }
    result = est(body, path, "anthropic")
    assert result.prompt_tokens == (3 + n("You are terse.")) + (3 + 1 + n("Hello, Claude")) + 3
    assert result.reserved_output == 1024
    assert result.kind == "anthropic_messages" and result.method == "tiktoken:o200k_base"

    as_blocks = {
        **body,
        "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "x"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello, Claude"}]}],
    }
    assert est(as_blocks, path, "anthropic").prompt_tokens == result.prompt_tokens


def test_anthropic_tools_images_and_tool_results() -> None:
    path = "/v1/messages"
    tool = {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}
    base = {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    with_tools = {**base, "tools": [tool]}
    tool_cost = ANTHROPIC_TOOL_SYSTEM_PROMPT + TOKENS_PER_TOOL
    tool_cost += n(json.dumps(tool, separators=(",", ":")))
    assert (
        est(with_tools, path, "anthropic").prompt_tokens
        == est(base, path, "anthropic").prompt_tokens + tool_cost
    )

    conversation = {
        "max_tokens": 10,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "data": "A" * 100_000}},
                    {"type": "text", "text": "What is this?"},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Looks like a cat.", "signature": "zzz"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "tool_use", "id": "t1", "name": "lookup", "input": {"q": "cat"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "A domestic cat."}],
                    }
                ],
            },
        ],
    }
    expected = 3 * 3 + 3 + 3  # framing, priming, roles
    expected += ANTHROPIC_IMAGE_TOKENS + n("What is this?")
    expected += n("Looks like a cat.") + 3 + n("lookup") + n('{"q":"cat"}')
    expected += 3 + n("A domestic cat.")
    assert est(conversation, path, "anthropic").prompt_tokens == expected


def test_anthropic_count_tokens_and_legacy_complete() -> None:
    body = {"max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    counting = est(body, "/v1/messages/count_tokens", "anthropic")
    assert counting.reserved_output == 0 and counting.kind == "anthropic_count_tokens"
    legacy = est(
        {"prompt": "\n\nHuman: hi\n\nAssistant:", "max_tokens_to_sample": 256},
        "/v1/complete",
        "anthropic",
    )
    assert legacy.prompt_tokens == n("\n\nHuman: hi\n\nAssistant:")
    assert legacy.reserved_output == 256


@pytest.mark.parametrize(
    ("path", "body", "dialect", "kind"),
    [
        ("/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21", {}, "openai", "chat"),
        ("/v1/chat/completions/", {}, "openai", "chat"),
        ("/proxy/v1/embeddings", {}, "openai", "embeddings"),
        ("/v1/responses", {}, "openai", "responses"),
        ("/custom", {"messages": []}, "openai", "chat"),
        ("/custom", {"prompt": "x"}, "openai", "completions"),
        ("/custom", {"input": "x"}, "openai", "responses"),
        ("/custom", {"input": "x", "dimensions": 256}, "openai", "embeddings"),
        (
            "/custom",
            {"input": "x", "instructions": "y", "encoding_format": "f"},
            "openai",
            "responses",
        ),
        ("/custom", {"foo": 1}, "openai", "unknown"),
        ("/anthropic/v1/messages", {}, "anthropic", "anthropic_messages"),
        ("/custom", {"messages": []}, "anthropic", "anthropic_messages"),
        ("/custom", {"prompt": "x"}, "anthropic", "anthropic_complete"),
        ("/custom", {}, "anthropic", "unknown"),
    ],
)
def test_body_kind(path: str, body: dict[str, Any], dialect: str, kind: str) -> None:
    assert body_kind(body, dialect, path) == kind  # type: ignore[arg-type]


def test_unknown_endpoint_counts_whole_body_without_output() -> None:
    body = {"foo": "some text here", "bar": [1, 2, 3]}
    result = est(body, "/v1/whatever")
    assert result.kind == "unknown"
    assert result.prompt_tokens == n(json.dumps(body, separators=(",", ":")))
    assert result.reserved_output == 0


@requires_tiktoken
def test_model_override_selects_encoding() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert est(body, model="gpt-4").method == "tiktoken:cl100k_base"
    assert est({**body, "model": "gpt-4"}).method == "tiktoken:cl100k_base"
    assert est({**body, "model": "gpt-4"}, "/v1/messages", "anthropic").method.endswith(
        "o200k_base"
    )


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "text",
        {},
        {"messages": "not a list"},
        {"messages": [None, 1, "x", [], {"role": 5, "content": {"a": 1}}]},
        {"messages": [{"role": "user", "content": [None, 1, {"type": "text", "text": 5}]}]},
        {"messages": [{"role": "assistant", "tool_calls": "x", "function_call": 3}]},
        {"messages": [], "tools": {"a": 1}, "functions": [1, None]},
        {"input": {"weird": True}},
        {"input": [None, 1, {"type": "function_call_output", "output": {"x": 1}}]},
        {"prompt": [None, 1.5, [1, "a"]]},
        {"max_tokens": {"a": 1}, "n": "many"},
    ],
)
@pytest.mark.parametrize("path", [CHAT, "/v1/completions", "/v1/embeddings", "/v1/responses"])
def test_malformed_openai_bodies_never_raise(body: Any, path: str) -> None:
    for use_tiktoken in (True, False):
        result = est(body, path, use_tiktoken=use_tiktoken)
        assert result.prompt_tokens >= 0 and result.reserved_output >= 0


@pytest.mark.parametrize(
    "body",
    [
        {"system": 5, "messages": [{"content": [{"type": "image"}, {"type": "document"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "tool_result", "content": 7}]}]},
        {"system": [{"type": "text"}, None], "tools": [None, 3, {}]},
        {"messages": [{"content": [{"type": "document", "source": {"type": "content"}}]}]},
    ],
)
def test_malformed_anthropic_bodies_never_raise(body: Any) -> None:
    result = est(body, "/v1/messages", "anthropic")
    assert result.prompt_tokens >= 0


def test_deeply_nested_tool_results_are_bounded() -> None:
    content: Any = [{"type": "text", "text": "leaf"}]
    for _ in range(200):
        content = [{"type": "tool_result", "content": content}]
    body = {"messages": [{"role": "user", "content": content}]}
    assert est(body, "/v1/messages", "anthropic").prompt_tokens > 0


block_types = st.sampled_from(
    ["text", "image", "document", "tool_use", "tool_result", "thinking", "search_result",
     "image_url", "input_audio", "file", "function_call", "function_call_output", "reasoning",
     "item_reference", "message", "json_schema", "content", "base64", "redacted_thinking"]
)  # fmt: skip
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | block_types,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    *("role", "content", "type", "text", "input", "tools", "name", "source"),
                    *("data", "function", "arguments", "image_url", "detail", "output"),
                    *("summary", "thinking", "tool_calls", "function_call", "json_schema"),
                    *("format", "schema", "messages"),
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=30,
)
body_keys = st.sampled_from(
    [
        *("messages", "input", "prompt", "system", "tools", "instructions", "max_tokens", "n"),
        *("functions", "response_format", "text", "suffix", "best_of", "max_output_tokens"),
    ]
)


@settings(max_examples=1000, deadline=None)
@given(
    body=st.dictionaries(body_keys, json_values, max_size=5),
    path=st.sampled_from([CHAT, "/v1/completions", "/v1/embeddings", "/v1/responses", "/x"]),
    dialect=st.sampled_from(["openai", "anthropic"]),
)
def test_fuzzed_bodies_never_raise(body: dict[str, Any], path: str, dialect: str) -> None:
    result = est(body, path, dialect, use_tiktoken=False)
    assert result.prompt_tokens >= 0 and result.reserved_output >= 0
    assert result.total == result.prompt_tokens + result.reserved_output
