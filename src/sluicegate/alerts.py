"""Alert delivery: structured log lines always, webhooks when the policy names them.

``AlertSink.emit`` is what the engine calls (``engine.on_alert``); it never blocks and never
raises: events go into a bounded queue, and a background task POSTs each one as JSON to every
webhook, retrying with exponential backoff. A full queue drops the event (counted), because an
alert storm must never slow the request path down.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

_logger = logging.getLogger("sluicegate.alerts")

Poster = Callable[[str, dict[str, Any], float], Awaitable[int]]


async def _httpx_post(url: str, event: dict[str, Any], timeout: float) -> int:
    import httpx

    async with httpx.AsyncClient(timeout=timeout) as client:
        response = await client.post(url, json=event)
        return response.status_code


class AlertSink:
    """Fan an alert out to the log and to webhooks, off the request path."""

    def __init__(
        self,
        webhooks: Sequence[str] = (),
        *,
        timeout: float = 2.0,
        attempts: int = 5,
        backoff: float = 0.2,
        max_queue: int = 1000,
        post: Poster = _httpx_post,
    ) -> None:
        self.webhooks = tuple(webhooks)
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self._post = post
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(max_queue)
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def emit(self, event: dict[str, Any]) -> None:
        """Log the event and queue it for the webhooks; never blocks, never raises."""
        _logger.warning("alert %s", json.dumps(event, sort_keys=True))
        if not self.webhooks:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._deliver())

    async def _deliver(self) -> None:
        while not self._queue.empty():
            event = self._queue.get_nowait()
            for url in self.webhooks:
                await self._send(url, event)

    async def _send(self, url: str, event: dict[str, Any]) -> None:
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                status = await self._post(url, event, self.timeout)
                if 200 <= status < 300:
                    self.delivered += 1
                    return
                why = f"HTTP {status}"
            except Exception as exc:  # noqa: BLE001 - any delivery failure is retried
                why = type(exc).__name__
            if attempt < self.attempts:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.failed += 1
        _logger.error("alert webhook %s failed after %d attempts (%s)", url, self.attempts, why)

    async def drain(self) -> None:
        """Wait until every queued alert has been delivered or given up on."""
        if self._task is not None:
            await self._task

    async def aclose(self) -> None:
        await self.drain()
