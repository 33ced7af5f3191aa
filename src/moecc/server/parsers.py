"""Qwen3's output as OpenAI clients expect it: thinking, answer and tool calls, from streamed text.

A Qwen3 model writes `<think>\\n...\\n</think>\\n\\n` before its answer and calls a tool as
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`. A Thinking-2507 template opens
`<think>` in the prompt itself, so the output starts inside the thinking (`starts_thinking`);
with `enable_thinking` false the template closes an empty one, so the output is all answer.

The parser reads the generated text piece by piece (as tokens produce it) and splits it into
`reasoning` (OpenAI's `reasoning_content`), `content` and finished `tool_calls`. A piece that
could be the beginning of a tag is held back until the next one shows whether it is, so a tag
split across tokens (`<` + `/think>`) never leaks into either channel. Deliberate choices:

- `<think>` opens the thinking only before any answer text; later it is answer text.
- A `<tool_call>` inside the thinking is thinking: the model is reasoning about a call, not
  making one. Only calls in the answer become `tool_calls`.
- A tool call is passed on when its `</tool_call>` arrives (OpenAI clients accumulate argument
  deltas; one delta holding all of them is a valid stream). One whose JSON does not parse, or
  is not an object with a string `name`, is returned as content, tags included, as is a call
  the output ends inside.
- The newlines right after `<think>`, `</think>` and `</tool_call>` are dropped (they are the
  template's formatting, not text).
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"

_THINKING, _ANSWER, _TOOL_CALL = "thinking", "answer", "tool_call"


@dataclass(frozen=True)
class ToolCall:
    index: int  # the call's place among this response's calls
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


@dataclass
class Parsed:
    """What a piece of output adds to each channel."""
    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.tool_calls)

    def __add__(self, later: "Parsed") -> "Parsed":
        return Parsed(self.reasoning + later.reasoning, self.content + later.content,
                      self.tool_calls + later.tool_calls)


class Qwen3OutputParser:
    def __init__(self, starts_thinking: bool = False, tool_calls: bool = True):
        """`tool_calls`: whether `<tool_call>` blocks become ToolCalls (else they are answer text)."""
        self._parse_tool_calls = tool_calls
        self._state = _THINKING if starts_thinking else _ANSWER
        self._pending = ""  # text not yet assigned to a channel
        self._call = ""  # the text of the tool call being read
        self._answered = False  # answer text (not just whitespace) has been given out
        self._strip_newlines = starts_thinking
        self.tool_calls: list[ToolCall] = []

    def feed(self, text: str) -> Parsed:
        """The channels' share of `text` that is certain now."""
        self._pending += text
        return self._drain(final=False)

    def finish(self) -> Parsed:
        """Everything still held back, at the end of the output."""
        out = self._drain(final=True)
        if self._state == _TOOL_CALL:  # the output ended inside a call: it was not one
            self._emit(out, _ANSWER, TOOL_OPEN + self._call)
            self._call, self._state = "", _ANSWER
        return out

    def _tags(self) -> tuple[str, ...]:
        if self._state == _THINKING:
            return (THINK_CLOSE,)
        if self._state == _TOOL_CALL:
            return (TOOL_CLOSE,)
        tags = (TOOL_OPEN,) if self._parse_tool_calls else ()
        return tags if self._answered else tags + (THINK_OPEN,)

    def _drain(self, final: bool) -> Parsed:
        out = Parsed()
        while self._pending:
            tags = self._tags()
            found = [(at, tag) for tag in tags if (at := self._pending.find(tag)) >= 0]
            if not found:
                keep = 0 if final else max((n for tag in tags for n in range(1, len(tag))
                                            if self._pending.endswith(tag[:n])), default=0)
                cut = len(self._pending) - keep
                self._emit(out, self._state, self._pending[:cut])
                self._pending = self._pending[cut:]
                break
            at, tag = min(found)
            self._emit(out, self._state, self._pending[:at])
            self._pending = self._pending[at + len(tag):]
            self._switch(out, tag)
        return out

    def _switch(self, out: Parsed, tag: str) -> None:
        if tag == THINK_OPEN:
            self._state = _THINKING
        elif tag == THINK_CLOSE:
            self._state = _ANSWER
        elif tag == TOOL_OPEN:
            self._state, self._call = _TOOL_CALL, ""
            return
        else:  # TOOL_CLOSE
            call = self._parse_call(self._call)
            if call is None:
                self._emit(out, _ANSWER, TOOL_OPEN + self._call + TOOL_CLOSE)
            else:
                self.tool_calls.append(call)
                out.tool_calls.append(call)
            self._state, self._call = _ANSWER, ""
        self._strip_newlines = True

    def _emit(self, out: Parsed, state: str, text: str) -> None:
        if state == _TOOL_CALL:
            self._call += text
            return
        if self._strip_newlines:
            text = text.lstrip("\n")
            self._strip_newlines = not text
        if state == _THINKING:
            out.reasoning += text
        else:
            out.content += text
            self._answered = self._answered or bool(text.strip())

    def _parse_call(self, text: str) -> ToolCall | None:
        try:
            call = json.loads(text)
        except ValueError:
            return None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return None
        arguments = call.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        return ToolCall(len(self.tool_calls), f"call_{uuid.uuid4().hex[:24]}", call["name"], arguments)
