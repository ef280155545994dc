"""Incremental SSE usage tracking: every dialect, arbitrary chunking, hostile input."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.cost import SSEUsageTracker, Usage
from sluicegate.cost.encodings import get_encoding


def n(text: str) -> int:
    """Exact o200k count; tests that need it skip when tiktoken is not installed."""
    pytest.importorskip("tiktoken")
    enc = get_encoding("o200k_base")
    assert enc is not None
    return len(enc.encode_ordinary(text))


def sse(*events: dict[str, Any] | str, named: bool = False) -> bytes:
    out = []
    for event in events:
        data = event if isinstance(event, str) else json.dumps(event, ensure_ascii=False)
        name = f"event: {event['type']}\n" if named and isinstance(event, dict) else ""
        out.append(f"{name}data: {data}\n\n")
    return "".join(out).encode()


def chat_chunk(
    delta: dict[str, Any], usage: Any = None, finish: str | None = None
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        "usage": usage,
    }


CHAT_USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 6,
    "total_tokens": 18,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 0},
}
CHAT_TEXT = ["", "Hello", " there, ", "世界", "! 👋"]
CHAT_EVENTS: list[dict[str, Any] | str] = [
    chat_chunk({"role": "assistant", "content": ""}),
    *[chat_chunk({"content": t}) for t in CHAT_TEXT[1:]],
    chat_chunk({}, finish="stop"),
]
OPENAI_STREAM = sse(*CHAT_EVENTS, {"choices": [], "usage": CHAT_USAGE}, "[DONE]")
OPENAI_STREAM_NO_USAGE = sse(*CHAT_EVENTS, "[DONE]")

ANTHROPIC_STREAM = sse(
    {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "claude-sonnet-4-5",
            "usage": {
                "input_tokens": 25,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 10,
                "output_tokens": 1,
            },
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 15},
    },
    {"type": "message_stop"},
    named=True,
)
ANTHROPIC_USAGE = Usage(
    prompt_tokens=35, completion_tokens=15, total_tokens=50, cached_prompt_tokens=10
)

RESPONSES_USAGE = {
    "input_tokens": 36,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 87,
    "output_tokens_details": {"reasoning_tokens": 64},
    "total_tokens": 123,
}
RESPONSES_STREAM = sse(
    {"type": "response.created", "sequence_number": 0, "response": {"id": "r", "usage": None}},
    {"type": "response.output_text.delta", "item_id": "m", "delta": "Hi"},
    {"type": "response.output_text.delta", "item_id": "m", "delta": " there"},
    {
        "type": "response.completed",
        "response": {
            "id": "r",
            "status": "completed",
            "output": [
                {"type": "message", "content": [{"type": "output_text", "text": "Hi there"}]}
            ],
            "usage": RESPONSES_USAGE,
            "metadata": {},
        },
    },
    named=True,
)

STREAMS = {
    "openai": (OPENAI_STREAM, "openai"),
    "openai-no-usage": (OPENAI_STREAM_NO_USAGE, "openai"),
    "anthropic": (ANTHROPIC_STREAM, "anthropic"),
    "responses": (RESPONSES_STREAM, "openai"),
}


def run(chunks: list[bytes], dialect: str, **kw: Any) -> tuple[Usage | None, SSEUsageTracker]:
    tracker = SSEUsageTracker(dialect, model="gpt-4o", **kw)  # type: ignore[arg-type]
    for chunk in chunks:
        tracker.feed(chunk)
    tracker.close()
    return tracker.usage(prompt_tokens=100), tracker


def test_openai_final_usage_chunk() -> None:
    usage, tracker = run([OPENAI_STREAM], "openai")
    assert usage == Usage(12, 6, 18, cached_prompt_tokens=4)
    assert tracker.done and tracker.final


def test_openai_without_usage_counts_streamed_text() -> None:
    usage, tracker = run([OPENAI_STREAM_NO_USAGE], "openai")
    assert tracker.done and not tracker.final and tracker.reported is None
    assert usage == Usage(100, n("".join(CHAT_TEXT)), 100 + n("".join(CHAT_TEXT)), source="counted")


def test_anthropic_merges_start_and_delta() -> None:
    usage, tracker = run([ANTHROPIC_STREAM], "anthropic")
    assert usage == ANTHROPIC_USAGE
    assert tracker.done


def test_responses_completed_event() -> None:
    usage, tracker = run([RESPONSES_STREAM], "openai")
    assert usage == Usage(36, 87, 123, reasoning_tokens=64)
    assert tracker.done


def test_tool_call_and_thinking_deltas_are_counted() -> None:
    openai = sse(
        chat_chunk({"tool_calls": [{"index": 0, "function": {"name": "get_weather"}}]}),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    )
    usage, _ = run([openai], "openai")
    assert usage is not None and usage.completion_tokens == n('get_weather{"city":"Paris"}')
    anthropic = sse(
        {"type": "content_block_start", "content_block": {"type": "tool_use", "name": "lookup"}},
        {"type": "content_block_delta", "delta": {"type": "thinking_delta", "thinking": "Hmm. "}},
        {
            "type": "content_block_delta",
            "delta": {"type": "input_json_delta", "partial_json": "{}"},
        },
        {"type": "content_block_delta", "delta": {"type": "signature_delta", "signature": "s"}},
    )
    usage, _ = run([anthropic], "anthropic")
    assert usage is not None and usage.completion_tokens == n("lookupHmm. {}")
    responses = sse(
        {"type": "response.function_call_arguments.delta", "delta": '{"q":1}'},
        {"type": "response.reasoning_summary_text.delta", "delta": "Thinking"},
        {"type": "response.output_text.done", "text": "ignored: already streamed"},
    )
    usage, _ = run([responses], "openai")
    assert usage is not None and usage.completion_tokens == n('{"q":1}Thinking')


@pytest.mark.parametrize("name", sorted(STREAMS))
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_every_split_point_gives_the_same_result(name: str, newline: str) -> None:
    stream, dialect = STREAMS[name]
    stream = stream.replace(b"\n", newline.encode())
    whole, _ = run([stream], dialect)
    assert whole is not None
    for cut in range(1, len(stream)):
        assert run([stream[:cut], stream[cut:]], dialect)[0] == whole, cut
    assert run([stream[i : i + 1] for i in range(len(stream))], dialect)[0] == whole
    rng = random.Random(name + newline)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(stream)), 6))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        assert run(chunks, dialect)[0] == whole


def test_missing_final_blank_line_needs_close() -> None:
    stream = OPENAI_STREAM.replace(b"data: [DONE]\n\n", b"").rstrip(b"\n")
    tracker = SSEUsageTracker("openai")
    tracker.feed(stream)
    assert not tracker.final
    tracker.close()
    assert tracker.usage() == Usage(12, 6, 18, cached_prompt_tokens=4)
    tracker.feed(b"data: garbage after close\n\n")  # ignored
    tracker.close()  # idempotent


def test_anthropic_stream_cut_before_message_delta() -> None:
    cut = ANTHROPIC_STREAM.split(b"event: message_delta")[0]
    usage, tracker = run([cut], "anthropic")
    assert not tracker.final
    # prompt from message_start, output from the counted text (larger than the interim 1)
    assert usage == Usage(
        35, n("Hello!"), 35 + n("Hello!"), cached_prompt_tokens=10, source="counted"
    )


def test_comments_other_fields_and_multiline_data() -> None:
    stream = (
        b": keep-alive\n\nid: 7\nretry: 1000\nevent: x\n\n"
        b'data: {"choices": [],\ndata:  "usage": {"prompt_tokens": 3, "completion_tokens": 2}}\n\n'
    )
    usage, _ = run([stream], "openai")
    assert usage == Usage(3, 2, 5)


def test_events_without_blank_lines_between_them() -> None:
    lines = b"".join(
        b"data: " + json.dumps(e).encode() + b"\n"
        for e in (chat_chunk({"content": "Hi"}), {"choices": [], "usage": CHAT_USAGE})
    )
    usage, _ = run([lines + b"\n"], "openai")
    assert usage == Usage(12, 6, 18, cached_prompt_tokens=4)


def test_overlong_completed_event_salvages_usage_from_tail() -> None:
    big = {
        "type": "response.completed",
        "response": {
            "output": [
                {"type": "message", "content": [{"type": "output_text", "text": "x" * 50_000}]}
            ],
            "tools": [{"type": "function", "name": "f", "description": "usage: none"}],
            "usage": RESPONSES_USAGE,
            "user": None,
            "metadata": {"usage": "not the usage object"},
        },
    }
    stream = sse({"type": "response.output_text.delta", "delta": "x" * 10}, big)
    for chunk_size in (7, 1000, len(stream)):
        chunks = [stream[i : i + chunk_size] for i in range(0, len(stream), chunk_size)]
        usage, tracker = run(chunks, "openai", max_line_bytes=4096, tail_bytes=1024)
        assert usage == Usage(36, 87, 123, reasoning_tokens=64), chunk_size
        assert tracker.done and tracker.final


def test_overlong_line_without_usage_in_tail_yields_counted() -> None:
    big = {"type": "response.completed", "response": {"usage": RESPONSES_USAGE, "pad": "y" * 9000}}
    stream = sse({"type": "response.output_text.delta", "delta": "Hello"}, big)
    usage, _ = run([stream], "openai", max_line_bytes=2048, tail_bytes=512)
    assert usage is not None and usage.source == "counted"
    assert usage.completion_tokens == n("Hello")


def test_memory_stays_bounded() -> None:
    tracker = SSEUsageTracker("openai", max_line_bytes=4096, tail_bytes=1024, text_batch_chars=2048)
    tracker.feed(b"data: ")
    for size in (65536, 100, 5000, 1024):  # ~13 MB line that never ends, in odd chunk sizes
        for _ in range(50):
            tracker.feed(b"z" * size)
            assert len(tracker._line) <= 4096
    tracker.close()
    assert tracker.usage() is None

    tracker = SSEUsageTracker("openai", text_batch_chars=2048)
    chunk = sse(chat_chunk({"content": "word " * 100}))
    for _ in range(2000):  # ~1 MB of streamed text
        tracker.feed(chunk)
        assert tracker._pending_chars < 2048 + 500
    exact = n("word " * 100 * 2000)  # counting in batches loses at most a token per batch
    assert exact <= tracker.counted_output_tokens() <= exact * 1.01


def test_text_is_not_counted_after_final_usage() -> None:
    tracker = SSEUsageTracker("openai")
    tracker.feed(sse({"choices": [], "usage": CHAT_USAGE}, chat_chunk({"content": "late text"})))
    assert tracker.counted_output_tokens() == 0
    assert tracker.usage() == Usage(12, 6, 18, cached_prompt_tokens=4)


def test_fallback_counting_without_tiktoken() -> None:
    tracker = SSEUsageTracker("openai", use_tiktoken=False)
    tracker.feed(OPENAI_STREAM_NO_USAGE)
    usage = tracker.usage()
    assert usage is not None and usage.source == "counted" and usage.completion_tokens > 0


@pytest.mark.parametrize(
    "stream",
    [
        b"",
        b"\n\n\n",
        b"data: \n\n",
        b"data: {not json\n\n",
        b"data: [1, 2, 3]\n\n",
        b'data: null\n\ndata: 42\n\ndata: "usage"\n\n',
        b"data: \xff\xfe\x00garbage\n\n",
        b'data: {"choices": "x", "usage": "lots"}\n\n',
        b'data: {"choices": [null, 1, {"delta": 5}, {"delta": {"content": 7}}]}\n\n',
        b'data: {"type": "message_start", "message": "x"}\n\n',
        b'data: {"type": "message_delta", "usage": {"output_tokens": -4}}\n\n',
        b'data: {"type": "content_block_delta", "delta": null}\n\n',
        b'data: {"type": "response.completed", "response": {"usage": {"input_tokens": "9"}}}\n\n',
        b'data: {"type": 5, "usage": {"prompt_tokens": true}}\n\n',
        b"data: " + b"[" * 100_000 + b"\n\n",
        b"event: message_start\nno colon line\n:comment\n\n",
        b"HTTP/1.1 500 Internal Server Error\r\n\r\n<html>oops</html>",
    ],
)
@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
def test_malformed_streams_never_raise(stream: bytes, dialect: str) -> None:
    tracker = SSEUsageTracker(dialect)  # type: ignore[arg-type]
    tracker.feed(stream)
    tracker.close()
    assert tracker.usage() is None
    assert tracker.reported is None


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(
        st.binary(max_size=64)
        | st.sampled_from(
            [b"data: ", b"\n", b"\r\n", b"\n\n", b"{", b"}", b'"usage":', b'{"prompt_tokens":1}']
        ),
        max_size=40,
    ),
    dialect=st.sampled_from(["openai", "anthropic"]),
)
def test_fuzzed_chunks_never_raise(chunks: list[bytes], dialect: str) -> None:
    tracker = SSEUsageTracker(dialect, max_line_bytes=256, tail_bytes=64)  # type: ignore[arg-type]
    for chunk in chunks:
        tracker.feed(chunk)
    tracker.close()
    usage = tracker.usage(prompt_tokens=3)
    assert usage is None or usage.total_tokens >= 0
