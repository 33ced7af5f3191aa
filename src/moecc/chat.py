"""python -m moecc.chat: an interactive conversation with a model.

    python -m moecc.chat --model qwen3.moecc

Each turn re-renders the whole history with the model's chat template; the KV cache is reused up
to where the new prompt differs from what it holds, so a turn processes only what changed.
`/reset` starts over, `/exit` (or Ctrl-D) quits, Ctrl-C stops the current answer.  Thinking
(`<think>...</think>`) is shown dimmed, or hidden with --hide-thinking.
"""
from __future__ import annotations

import sys

from .generate import build_parser, open_model, sampling_kwargs
from .server.parsers import THINK_OPEN, Qwen3OutputParser

DIM, RESET = "\x1b[2m", "\x1b[0m"


class ThinkingFilter:
    """Styles or hides the thinking part of streamed text, split from the answer by the parser the
    server uses (tool calls stay text here).

    A Thinking-2507 template opens `<think>` itself, in the prompt: then the answer starts
    inside the thinking part, and only `</think>` appears in the output."""

    def __init__(self, starts_thinking: bool, hide: bool, dim: bool):
        self.starts_thinking = starts_thinking
        self._parser = Qwen3OutputParser(starts_thinking=starts_thinking, tool_calls=False)
        self._hide, self._dim = hide, dim

    def feed(self, text: str, final: bool = False) -> str:
        parsed = self._parser.feed(text)
        if final:
            parsed += self._parser.finish()
        return self._style(parsed.reasoning) + parsed.content

    def _style(self, thinking: str) -> str:
        if not thinking or self._hide:
            return ""
        return f"{DIM}{thinking}{RESET}" if self._dim else thinking


def answer(model, messages: list[dict], args, out) -> str:
    """Stream the model's reply to `messages` to `out`; returns the reply text (thinking included)."""
    prompt = model.apply_chat_template(messages, enable_thinking=args.think)
    shown = ThinkingFilter(starts_thinking=prompt.rstrip().endswith(THINK_OPEN),
                           hide=args.hide_thinking, dim=out.isatty())
    reply = [THINK_OPEN + "\n"] if shown.starts_thinking else []
    try:
        for step in model.chat(messages, args.max_tokens, enable_thinking=args.think, **sampling_kwargs(args)):
            reply.append(step.text)
            out.write(shown.feed(step.text, final=step.finish_reason is not None))
            out.flush()
    except KeyboardInterrupt:
        out.write(shown.feed("", final=True) + "\n[stopped]")
    stats = model.stats
    print(f"\n{DIM if out.isatty() else ''}[{stats.prefilled_tokens} prompt tokens processed "
          f"({stats.reused_tokens} reused), {stats.prefill_tokens_per_second:.1f} tok/s; "
          f"{stats.generated_tokens} generated, {stats.decode_tokens_per_second:.1f} tok/s]"
          f"{RESET if out.isatty() else ''}", file=sys.stderr)
    if stats.finish_reason == "context":
        print("moecc: the context is full; /reset to start over (or load with a larger --ctx)", file=sys.stderr)
    return "".join(reply)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("python -m moecc.chat", "Chat with a Qwen3-MoE model (.moecc file).")
    parser.set_defaults(max_tokens=2048)
    parser.add_argument("--hide-thinking", action="store_true", help="do not show the thinking text")
    args = parser.parse_args(argv)
    from .formats import FormatError
    try:
        model = open_model(args)
        if model.chat_template is None:
            raise ValueError("this model has no chat template; use python -m moecc.generate")
    except (FormatError, ValueError, OSError) as e:
        print(f"moecc: error: {e}", file=sys.stderr)
        return 2
    opening = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(opening)
    print("moecc chat: /reset starts over, /exit quits, Ctrl-C stops an answer", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if line.strip() == "/exit":
            return 0
        if line.strip() == "/reset":
            messages = list(opening)
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        try:
            reply = answer(model, messages, args, sys.stdout)
        except ValueError as e:  # e.g. the conversation outgrew the context
            print(f"moecc: error: {e}", file=sys.stderr)
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": reply})


if __name__ == "__main__":
    sys.exit(main())
