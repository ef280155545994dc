"""Priority admission queue: refused calls whose class may wait are retried in priority order.

Why not let the engine hold the wait: the engine can admit a call "after ``delay``" by reserving a
future slot in every bucket. That reservation is taken the moment a batch call arrives, so a
realtime call arriving a millisecond later finds the capacity gone. Here waiting calls hold
nothing: the gateway always decides with ``max_wait=0``; a refused call whose class allows waiting
(and whose retry time fits its remaining wait) joins its upstream's queue, and one dispatcher per
queue re-decides due entries in ``(priority, arrival)`` order whenever capacity should have
returned. So the lowest priority number goes first, realtime (``max_wait: 0``) never waits, and
arrivals of a class do not overtake queued calls of the same or a more important class: while
such calls are queued, a new arrival joins the queue instead of deciding directly.

Entries are retried individually (each at its own ``retry_after``), so a call blocked on its own
tenant's limit does not hold up other tenants' calls behind it.
"""

from __future__ import annotations

import asyncio
import bisect
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from sluicegate.engine import Decision, Engine, RequestContext

#: Entries due this close together are decided in one pass, in priority order: two calls that
#: wait for the same freed slot compute due times that differ only by float rounding.
_SLACK = 0.002


@dataclass(order=True)
class _Entry:
    priority: int
    seq: int
    ctx: RequestContext = field(compare=False)
    deadline: float = field(compare=False)
    due: float = field(compare=False)
    future: asyncio.Future[Decision] = field(compare=False)
    last: Decision | None = field(compare=False)
    class_name: str = field(compare=False)


class AdmissionQueue:
    """One upstream's queue of waiting calls (see module docstring)."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name
        self._entries: list[_Entry] = []
        self._seq = 0
        self._priorities: Counter[int] = Counter()
        self.depth: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def must_queue(self, priority: int) -> bool:
        """True while a call of ``priority`` or more important is waiting (keep their order)."""
        return bool(self._priorities) and min(self._priorities) <= priority

    async def wait(
        self,
        ctx: RequestContext,
        *,
        priority: int,
        class_name: str,
        max_wait: float,
        last: Decision | None,
    ) -> Decision:
        """Wait (at most ``max_wait``) until the engine admits ``ctx``; the final decision."""
        now = self.engine.clock.now()
        due = now
        if last is not None and last.retry_after is not None:
            due = now + last.retry_after
        loop = asyncio.get_running_loop()
        self._seq += 1
        entry = _Entry(
            priority,
            self._seq,
            replace(ctx, max_wait=0.0),
            now + max_wait,
            due,
            loop.create_future(),
            last,
            class_name,
        )
        bisect.insort(self._entries, entry)
        self._priorities[priority] += 1
        self.depth[class_name] += 1
        self._kick()
        try:
            return await entry.future
        finally:
            if not entry.future.done():
                entry.future.cancel()
                self._remove(entry)
                self._kick()

    def _remove(self, entry: _Entry) -> None:
        try:
            self._entries.remove(entry)
        except ValueError:
            return
        self._priorities[entry.priority] -= 1
        if self._priorities[entry.priority] <= 0:
            del self._priorities[entry.priority]
        self.depth[entry.class_name] -= 1
        if self.depth[entry.class_name] <= 0:
            del self.depth[entry.class_name]

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        elif self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        clock = self.engine.clock
        while self._entries:
            assert self._wake is not None
            self._wake.clear()
            now = clock.now()
            next_due = math.inf
            for entry in list(self._entries):
                if entry.future.done():
                    self._remove(entry)
                    continue
                if entry.due <= now + _SLACK:
                    decision = await self.engine.decide(entry.ctx)
                    now = clock.now()
                    if entry.future.done():  # the caller went away while we decided
                        if decision.allowed:
                            await self.engine.settle(decision.id, 0.0)
                        self._remove(entry)
                        continue
                    retry = decision.retry_after
                    if decision.allowed:
                        self._finish(entry, decision)
                        continue
                    entry.last = decision
                    if retry is None or math.isinf(retry) or now + retry > entry.deadline:
                        self._finish(entry, decision)
                        continue
                    entry.due = now + max(retry, 0.0005)
                next_due = min(next_due, entry.due)
            if not self._entries:
                break
            timeout = max(0.0, next_due - clock.now())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    def _finish(self, entry: _Entry, decision: Decision) -> None:
        self._remove(entry)
        if not entry.future.done():
            entry.future.set_result(decision)

    def snapshot(self) -> dict[str, Any]:
        return {"waiting": len(self._entries), "by_class": dict(self.depth)}

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for entry in self._entries:
            if not entry.future.done():
                entry.future.cancel()
        self._entries.clear()
