"""Alert delivery to a real HTTP receiver: exactly once per breaker trip, retried on failure."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sluicegate.alerts import AlertSink
from sluicegate.clock import VirtualClock
from sluicegate.engine import Engine, RequestContext
from sluicegate.policy import policy_from_text
from sluicegate.stores import MemoryStore

POLICY = policy_from_text(
    """
version: 1
default_tier: t
alerts: [{webhook: "http://127.0.0.1:1/hook", timeout: 1s}]
tiers:
  t:
    tenant: {requests: 1200/min, burst: 100}
pools:
  openai:
    requests: 1200/min
    burst: 200
    breaker: {share: 0.5, window: 30s, floor: 60/min, cooldown: 60s, min_volume: 20, pressure: 0}
"""
)


class Receiver:
    """A minimal HTTP/1.1 server that records POSTed JSON and can fail the first N."""

    def __init__(self, fail_first: int = 0) -> None:
        self.events: list[dict[str, Any]] = []
        self.fail_first = fail_first
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.decode("latin-1").split("\r\n"):
            if line.lower().startswith("content-length:"):
                length = int(line.split(":", 1)[1])
        body = await reader.readexactly(length)
        self.requests += 1
        if self.requests <= self.fail_first:
            writer.write(b"HTTP/1.1 500 Oops\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        else:
            self.events.append(json.loads(body))
            writer.write(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


async def serve(receiver: Receiver) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/hook"


async def test_breaker_trip_alert_arrives_once_at_a_real_receiver() -> None:
    receiver = Receiver(fail_first=2)  # the first two deliveries fail: retried with backoff
    server, url = await serve(receiver)
    sink = AlertSink([url], timeout=1.0, backoff=0.01)
    clock = VirtualClock(1000.0)
    engine = Engine(POLICY, MemoryStore(), clock, on_alert=sink.emit)
    try:
        for step in range(300):  # 30 s: one trip (cooldown 60 s)
            clock.advance(0.1)
            await engine.decide(RequestContext("runaway", "a", pool="openai"))
            if step % 10 == 0:
                await engine.decide(RequestContext("quiet", "a", pool="openai"))
        await sink.drain()
    finally:
        server.close()
        await server.wait_closed()
    assert [e["tenant"] for e in receiver.events] == ["runaway"]
    assert receiver.events[0]["event"] == "tenant_breaker_open"
    assert receiver.requests == 3 and sink.delivered == 1 and sink.failed == 0


async def test_unreachable_webhook_gives_up_and_never_raises() -> None:
    sink = AlertSink(["http://127.0.0.1:1/hook"], timeout=0.2, attempts=2, backoff=0.01)
    sink.emit({"event": "test"})
    await sink.drain()
    assert sink.failed == 1 and sink.delivered == 0
