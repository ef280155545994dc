"""Usage of a streamed (Server-Sent Events) response, tracked incrementally as bytes pass through.

Why incremental: the gateway relays the stream to the client as it arrives and must not delay or
buffer it, yet it needs the final usage to settle the token reservation. The tracker is fed each
raw chunk (chunks split lines and events anywhere), keeps only a bounded partial line, and never
holds the whole stream:

* OpenAI Chat / legacy completions: the final chunk's ``usage`` (sent when the request has
  ``stream_options.include_usage``; some compatible servers send it on every chunk, the last wins).
* Anthropic: ``message_start`` ``message.usage`` (input and cache tokens) merged with the
  cumulative ``message_delta`` ``usage`` (output tokens).
* Responses API: ``response.completed`` (or ``.incomplete`` / ``.failed``) ``response.usage``.

Streamed text (chat ``delta.content``, tool-call arguments, Anthropic text/thinking/input-JSON
deltas, Responses ``*.delta`` events) is counted too, in batches of :attr:`text_batch_chars`
characters, so that when no usage arrives (include_usage not set, stream cut) the output can
still be charged. Pending text is kept only until the next batch is counted, and is discarded
unread if the upstream reports usage.

A line longer than ``max_line_bytes`` (a huge ``response.completed`` event echoing the whole
output) is not kept: only its head and a tail window are, and the usage object is salvaged from
the tail, where the Responses API serialises it. Malformed data never raises; it just yields no
usage. The tracker expects a decoded byte stream (undo any ``Content-Encoding`` first).
"""

from __future__ import annotations

import json
import re
from typing import Final

from .encodings import encoding_for_model
from .estimate import Dialect, TokenCounter
from .parts import as_dict, as_list
from .usage import Usage, usage_from_object

_FINAL_RESPONSE_EVENTS: Final = frozenset(
    {"response.completed", "response.incomplete", "response.failed"}
)
_RESPONSE_TEXT_EVENTS: Final = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_text.delta",
    }
)
_ANTHROPIC_DELTA_KEYS: Final = ("text", "partial_json", "thinking")
_CHAT_DELTA_KEYS: Final = ("content", "refusal", "reasoning_content", "reasoning")
_TYPE_RE: Final = re.compile(rb'"type"\s*:\s*"([^"\\]{1,64})"')
_USAGE_KEY_RE: Final = re.compile(r'"usage"\s*:\s*')
_HEAD_BYTES: Final = 512


class SSEUsageTracker:
    """Feed raw SSE bytes with :meth:`feed`; read :meth:`usage` when the stream ends.

    ``model`` selects the encoding for counting streamed text (o200k when unknown, and for
    Anthropic). Memory is bounded by ``max_line_bytes`` plus ``text_batch_chars``.
    """

    def __init__(
        self,
        dialect: Dialect,
        *,
        model: str | None = None,
        use_tiktoken: bool = True,
        max_line_bytes: int = 256 * 1024,
        tail_bytes: int = 64 * 1024,
        text_batch_chars: int = 16 * 1024,
    ) -> None:
        self.dialect: Dialect = dialect
        self.max_line_bytes = max_line_bytes
        self.tail_bytes = min(tail_bytes, max_line_bytes)
        self.text_batch_chars = text_batch_chars
        self._model = model
        self._use_tiktoken = use_tiktoken
        self._counter: TokenCounter | None = None  # built on first text batch, if ever
        # line assembly
        self._line = bytearray()
        self._line_head = b""  # first bytes of an overlong line (to know its field and type)
        self._overflow = False
        self._after_cr = False
        # current event
        self._data: list[bytes] = []
        self._data_size = 0
        self._salvaged: object = None
        self._salvaged_type: str | None = None
        # results
        self._usage_fields: dict[str, object] = {}
        self._final = False
        self._pending: list[str] = []
        self._pending_chars = 0
        self._counted = 0
        self._saw_text = False
        self.done = False
        self.closed = False

    # -- byte level ------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        """Consume one chunk exactly as received; cost is linear in the chunk's size."""
        if self.closed or not chunk:
            return
        chunk = bytes(chunk)
        if self._after_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]  # the LF of a CRLF split across chunks
        self._after_cr = chunk[-1:] == b"\r"
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = chunk.split(b"\n")
        for piece in lines[:-1]:
            if self._line or self._overflow:
                self._append(piece)
                self._end_line()
            else:  # the common case: a whole line inside this chunk, no copy needed
                self._complete_line(piece)
        self._append(lines[-1])

    def close(self) -> None:
        """End of stream: handle a final line or event that lacked its terminating newline."""
        if self.closed:
            return
        if self._line or self._overflow:
            self._end_line()
        self._dispatch()
        self.closed = True

    def _append(self, piece: bytes) -> None:
        """Add to the partial line; past ``max_line_bytes`` keep only its head and a tail."""
        if not piece:
            return
        if not self._overflow:
            if len(self._line) + len(piece) <= self.max_line_bytes:
                self._line += piece
                return
            self._overflow = True
            self._line_head = (bytes(self._line[:_HEAD_BYTES]) + piece[:_HEAD_BYTES])[:_HEAD_BYTES]
        if len(piece) >= self.tail_bytes:
            self._line[:] = piece[len(piece) - self.tail_bytes :]
        else:
            self._line += piece
            if len(self._line) > self.tail_bytes:
                del self._line[: len(self._line) - self.tail_bytes]

    def _end_line(self) -> None:
        line, overflow, head = bytes(self._line), self._overflow, self._line_head
        self._line.clear()
        self._overflow = False
        self._line_head = b""
        if overflow:
            self._overlong_line(head, line)
        else:
            self._complete_line(line)

    def _complete_line(self, line: bytes) -> None:
        if not line:
            self._dispatch()
        elif len(line) > self.max_line_bytes:
            self._overlong_line(line[:_HEAD_BYTES], line[-self.tail_bytes :])
        elif line[:1] != b":":  # ":" starts a comment (keep-alive)
            field, _, value = line.partition(b":")
            if field == b"data":
                self._add_data(value[1:] if value[:1] == b" " else value)

    def _add_data(self, value: bytes) -> None:
        self._data_size += len(value)
        if self._data_size > self.max_line_bytes:  # many data lines in one event: give up on it
            self._data.clear()
            return
        self._data.append(value)

    def _overlong_line(self, head: bytes, tail: bytes) -> None:
        """Salvage the event type from the head and the usage object from the tail."""
        self._data.clear()
        self._data_size = self.max_line_bytes + 1  # the event's data is unusable
        if not head.startswith(b"data:"):
            return
        found = _TYPE_RE.search(head)
        self._salvaged_type = found.group(1).decode("ascii", "replace") if found else None
        decoder = json.JSONDecoder()
        text = tail.decode("utf-8", "replace")
        starts = [m.end() for m in _USAGE_KEY_RE.finditer(text)]
        for start in reversed(starts):
            try:
                value, _ = decoder.raw_decode(text, start)
            except (ValueError, RecursionError):
                continue
            if usage_from_object(value, self.dialect) is not None:
                self._salvaged = value
                return

    def _dispatch(self) -> None:
        data, self._data = self._data, []
        self._data_size = 0
        salvaged, self._salvaged = self._salvaged, None
        salvaged_type, self._salvaged_type = self._salvaged_type, None
        if salvaged is not None:
            completed = salvaged_type in _FINAL_RESPONSE_EVENTS
            final = completed or salvaged_type in ("message_delta", None)
            self._on_usage(salvaged, final=final)
            self.done = self.done or completed
        if not data:
            return
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        if not self._on_payload(payload) and len(data) > 1:
            for line in data:  # non-conforming servers omit the blank line between events
                self._on_payload(line)

    # -- event level -----------------------------------------------------------------------

    def _on_payload(self, payload: bytes) -> bool:
        if payload == b"[DONE]":
            self.done = True
            return True
        try:
            event = json.loads(payload)
        except (ValueError, RecursionError):
            return False
        if isinstance(event, dict):
            self._on_event(event)
        return True

    def _on_event(self, event: dict[str, object]) -> None:
        kind = event.get("type")
        if isinstance(kind, str):
            if kind.startswith("response."):
                self._on_responses_event(kind, event)
                return
            if kind.startswith(("message_", "content_block_")):
                self._on_anthropic_event(kind, event)
                return
        for raw_choice in as_list(event.get("choices")):  # OpenAI chat / completions chunk
            choice = as_dict(raw_choice)
            self._text(choice.get("text"))
            delta = as_dict(choice.get("delta"))
            for key in _CHAT_DELTA_KEYS:
                self._text(delta.get(key))
            for call in as_list(delta.get("tool_calls")):
                function = as_dict(as_dict(call).get("function"))
                self._text(function.get("name"))
                self._text(function.get("arguments"))
        usage = as_dict(event.get("usage"))
        if usage:  # null on every chunk but the last when stream_options.include_usage is set
            self._on_usage(usage, final="completion_tokens" in usage or "output_tokens" in usage)

    def _on_responses_event(self, kind: str, event: dict[str, object]) -> None:
        if kind in _RESPONSE_TEXT_EVENTS:
            self._text(event.get("delta"))
        elif kind in _FINAL_RESPONSE_EVENTS:
            self._on_usage(as_dict(event.get("response")).get("usage"), final=True)
            self.done = True

    def _on_anthropic_event(self, kind: str, event: dict[str, object]) -> None:
        if kind == "content_block_delta":
            delta = as_dict(event.get("delta"))
            for key in _ANTHROPIC_DELTA_KEYS:
                self._text(delta.get(key))
        elif kind == "content_block_start":
            block = as_dict(event.get("content_block"))
            self._text(block.get("text"))
            self._text(block.get("name"))
        elif kind == "message_start":
            self._on_usage(as_dict(event.get("message")).get("usage"), final=False)
        elif kind == "message_delta":
            self._on_usage(event.get("usage"), final=True)
        elif kind == "message_stop":
            self.done = True

    def _on_usage(self, value: object, *, final: bool) -> None:
        usage = as_dict(value)
        if not usage or usage_from_object(usage, self.dialect) is None:
            return
        # Anthropic's message_delta counts are cumulative; later values replace earlier ones.
        self._usage_fields.update({k: v for k, v in usage.items() if v is not None})
        self._final = self._final or final

    # -- text counting ---------------------------------------------------------------------

    def _text(self, value: object) -> None:
        if not isinstance(value, str) or not value:
            return
        self._saw_text = True
        if self._final:
            return  # usage already reported; nothing left to count
        self._pending.append(value)
        self._pending_chars += len(value)
        if self._pending_chars >= self.text_batch_chars:
            self._count_pending()

    def _count_pending(self) -> None:
        if not self._pending:
            return
        if self._counter is None:
            encoding = encoding_for_model(self._model, dialect=self.dialect)
            self._counter = TokenCounter(encoding, use_tiktoken=self._use_tiktoken)
        self._counted += self._counter("".join(self._pending))
        self._pending.clear()
        self._pending_chars = 0

    # -- results ---------------------------------------------------------------------------

    @property
    def reported(self) -> Usage | None:
        """What the upstream reported so far (possibly partial, e.g. Anthropic input only)."""
        return usage_from_object(self._usage_fields, self.dialect) if self._usage_fields else None

    @property
    def final(self) -> bool:
        """True once the stream's final usage (not just a partial) has been seen."""
        return self._final

    def counted_output_tokens(self) -> int:
        """Tokens of all streamed text seen so far, counted locally."""
        self._count_pending()
        return self._counted

    def usage(self, *, prompt_tokens: int | None = None) -> Usage | None:
        """The stream's usage: as reported if final, else reconstructed from what was seen.

        Without a final report, prompt tokens come from a partial report (Anthropic's
        ``message_start``) or else from ``prompt_tokens`` (pass the request's estimate), and
        output tokens are the larger of any partial report and the counted streamed text; the
        result is marked ``source="counted"``. ``None`` when the stream showed neither usage
        nor text. Call :meth:`close` first so an unterminated last event is included.
        """
        reported = self.reported
        if reported is not None and self._final:
            return reported
        if reported is None and not self._saw_text:
            return None
        counted = self.counted_output_tokens()
        prompt = reported.prompt_tokens if reported is not None else 0
        if not prompt and prompt_tokens is not None:
            prompt = max(0, prompt_tokens)
        output = max(reported.completion_tokens if reported is not None else 0, counted)
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=output,
            total_tokens=prompt + output,
            cached_prompt_tokens=reported.cached_prompt_tokens if reported else 0,
            cache_creation_tokens=reported.cache_creation_tokens if reported else 0,
            source="counted",
        )
