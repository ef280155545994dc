"""How the gateway recognises retries and pipelines from request headers."""

from __future__ import annotations

import pytest

from sluicegate.gateway.proxy import retry_attempt, trace_id


@pytest.mark.parametrize(
    ("headers", "attempt"),
    [
        ({}, 0),
        ({"x-stainless-retry-count": "0"}, 0),
        ({"x-stainless-retry-count": "2"}, 2),
        ({"retry-attempt": "1"}, 1),
        ({"x-retry-attempt": "3"}, 3),
        ({"x-stainless-retry-count": "abc"}, 0),
        ({"x-stainless-retry-count": "-1"}, 0),
        ({"x-stainless-retry-count": "99999"}, 1000),
    ],
)
def test_retry_attempt(headers: dict[str, str], attempt: int) -> None:
    assert retry_attempt(headers) == attempt


def test_trace_id() -> None:
    tp = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
    assert trace_id({"traceparent": tp}) == "4bf92f3577b34da6a3ce929d0e0e4736"
    zero = "00-" + "0" * 32 + "-00f067aa0ba902b7-01"
    assert trace_id({"traceparent": zero, "x-agent-pipeline-id": "p1"}) == "p1"
    assert trace_id({"traceparent": "garbage"}) is None
    assert trace_id({"x-agent-pipeline-id": "x" * 500}) == "x" * 128
