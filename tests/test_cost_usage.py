"""Usage parsing from non-streamed JSON responses."""

from __future__ import annotations

from typing import Any

import pytest

from sluicegate.cost import Usage, parse_usage_json, response_text


def test_openai_chat_usage() -> None:
    body = {
        "object": "chat.completion",
        "choices": [{"message": {"role": "assistant", "content": "Hi!"}}],
        "usage": {
            "prompt_tokens": 19,
            "completion_tokens": 10,
            "total_tokens": 29,
            "prompt_tokens_details": {"cached_tokens": 8, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 4},
        },
    }
    assert parse_usage_json(body, "openai") == Usage(
        prompt_tokens=19,
        completion_tokens=10,
        total_tokens=29,
        cached_prompt_tokens=8,
        reasoning_tokens=4,
    )


def test_openai_embeddings_usage_has_no_completion() -> None:
    usage = parse_usage_json({"usage": {"prompt_tokens": 8, "total_tokens": 8}}, "openai")
    assert usage == Usage(prompt_tokens=8, completion_tokens=0, total_tokens=8)


def test_responses_api_usage() -> None:
    body = {
        "object": "response",
        "usage": {
            "input_tokens": 328,
            "input_tokens_details": {"cached_tokens": 300},
            "output_tokens": 52,
            "output_tokens_details": {"reasoning_tokens": 20},
            "total_tokens": 380,
        },
    }
    usage = parse_usage_json(body, "openai")
    assert usage == Usage(
        prompt_tokens=328,
        completion_tokens=52,
        total_tokens=380,
        cached_prompt_tokens=300,
        reasoning_tokens=20,
    )
    assert usage is not None and usage.uncached_prompt_tokens == 28


def test_anthropic_usage_adds_cache_tokens_to_prompt() -> None:
    body = {
        "type": "message",
        "usage": {
            "input_tokens": 21,
            "cache_creation_input_tokens": 188086,
            "cache_read_input_tokens": 1000,
            "output_tokens": 393,
            "server_tool_use": {"web_search_requests": 0},
            "service_tier": "standard",
        },
    }
    usage = parse_usage_json(body, "anthropic")
    assert usage == Usage(
        prompt_tokens=21 + 188086 + 1000,
        completion_tokens=393,
        total_tokens=21 + 188086 + 1000 + 393,
        cached_prompt_tokens=1000,
        cache_creation_tokens=188086,
    )
    assert usage is not None and usage.uncached_prompt_tokens == 21


def test_anthropic_null_cache_fields() -> None:
    body = {
        "usage": {
            "input_tokens": 12,
            "output_tokens": 6,
            "cache_creation_input_tokens": None,
            "cache_read_input_tokens": None,
        }
    }
    assert parse_usage_json(body, "anthropic") == Usage(12, 6, 18)


def test_stream_event_wrappers() -> None:
    completed = {"type": "response.completed", "response": {"usage": {"input_tokens": 5}}}
    assert parse_usage_json(completed, "openai") == Usage(5, 0, 5)
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 7, "output_tokens": 1}}}
    assert parse_usage_json(start, "anthropic") == Usage(7, 1, 8)


def test_reported_total_kept_when_larger() -> None:
    body = {"usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 12}}
    usage = parse_usage_json(body, "openai")
    assert usage is not None and usage.total_tokens == 12


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "usage",
        {},
        {"usage": None},
        {"usage": "lots"},
        {"usage": []},
        {"usage": {}},
        {"usage": {"prompt_tokens": "10", "completion_tokens": None}},
        {"usage": {"prompt_tokens": -1}},
        {"usage": {"prompt_tokens": True, "completion_tokens": False}},
        {"usage": {"input_tokens": 1.5}},
        {"response": "x", "message": 3},
    ],
)
@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_malformed_usage_is_none(body: Any, dialect: str) -> None:
    assert parse_usage_json(body, dialect) is None


def test_partially_valid_usage_keeps_valid_fields() -> None:
    body = {
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": "x",
            "prompt_tokens_details": {"cached_tokens": 99},
        }
    }
    # cached can never exceed the prompt it is part of
    assert parse_usage_json(body, "openai") == Usage(10, 0, 10, cached_prompt_tokens=10)


def test_response_text_all_dialects() -> None:
    chat = {
        "choices": [
            {
                "message": {
                    "content": "Hello",
                    "tool_calls": [{"function": {"name": "f", "arguments": '{"a":1}'}}],
                }
            },
            {"text": "legacy"},
        ]
    }
    assert response_text(chat) == 'Hello\nf\n{"a":1}\nlegacy'
    responses = {
        "output": [
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "thought"}]},
            {"type": "message", "content": [{"type": "output_text", "text": "Answer"}]},
            {"type": "function_call", "name": "f", "arguments": "{}"},
        ]
    }
    assert response_text(responses) == "thought\nAnswer\n{}"
    anthropic = {
        "type": "message",
        "content": [
            {"type": "thinking", "thinking": "hmm"},
            {"type": "text", "text": "Hi"},
            {"type": "tool_use", "name": "g", "input": {"q": "x"}},
        ],
    }
    assert response_text(anthropic) == 'hmm\nHi\ng\n{"q":"x"}'
    assert response_text(None) == ""  # type: ignore[arg-type]
    assert response_text({"choices": [None, {"message": 5}], "output": "x"}) == ""
