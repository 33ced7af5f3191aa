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

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
DIM, RESET = "\x1b[2m", "\x1b[0m"


class ThinkingFilter:
    """Splits streamed text into thinking and answer, styling or hiding the thinking part.

    A Thinking-2507 template opens `<think>` itself, in the prompt: then the answer starts
    inside the thinking part, and only `</think>` appears in the output."""

    def __init__(self, starts_thinking: bool, hide: bool, dim: bool):
        self.thinking = starts_thinking
        self._hide, self._dim = hide, dim
        self._pending = ""
        self._started = False

    def feed(self, text: str, final: bool = False) -> str:
        self._pending += text
        out = []
        while self._pending:
            tag = THINK_CLOSE if self.thinking else THINK_OPEN
            at = self._pending.find(tag)
            if at < 0:
                # keep back a possible beginning of the tag
                keep = 0 if final else max((n for n in range(1, len(tag)) if self._pending.endswith(tag[:n])), default=0)
                piece, self._pending = self._pending[:len(self._pending) - keep], self._pending[len(self._pending) - keep:]
                out.append(self._style(piece))
                break
            out.append(self._style(self._pending[:at]))
            self._pending = self._pending[at + len(tag):]
            self.thinking = not self.thinking
            if not self.thinking:
                self._pending = self._pending.lstrip("\n")
        return "".join(out)

    def _style(self, piece: str) -> str:
        if not piece or not self.thinking:
            return piece
        if self._hide:
            return ""
        return f"{DIM}{piece}{RESET}" if self._dim else piece


def answer(model, messages: list[dict], args, out) -> str:
    """Stream the model's reply to `messages` to `out`; returns the reply text (thinking included)."""
    prompt = model.apply_chat_template(messages, enable_thinking=args.think)
    shown = ThinkingFilter(starts_thinking=prompt.rstrip().endswith(THINK_OPEN),
                           hide=args.hide_thinking, dim=out.isatty())
    reply = [THINK_OPEN + "\n"] if shown.thinking else []
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
    parser = build_parser("python -m moecc.chat", "Chat with a Qwen3-MoE model (.moecc or GGUF file).")
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
