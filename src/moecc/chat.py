"""python -m moecc.chat: an interactive conversation with a model.

    python -m moecc.chat --model qwen3.moecc

Each turn re-renders the whole history with the model's chat template; the KV cache is reused up
to where the new prompt differs from what it holds, so a turn processes only what changed.
`/reset` starts over, `/exit` (or Ctrl-D) quits, Ctrl-C stops the current answer.  Thinking
(`<think>...</think>`) is shown dimmed, or hidden with --hide-thinking.  Under mpiexec with more
than one rank the ranks share the experts out: rank 0 reads the lines and prints, every rank
answers each one; there Ctrl-C ends the whole job.
"""
from __future__ import annotations

import os
import sys

from .generate import build_parser, fail, job_communicator, open_model, sampling_kwargs, speaks
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


def answer(model, messages: list[dict], args, out, err=None, stoppable: bool = True) -> str:
    """Stream the model's reply to `messages` to `out` (the speed line to `err`, default
    stderr); returns the reply text (thinking included).  Ctrl-C stops the answer if
    `stoppable` (one process: no other rank to fall out of step with)."""
    err = sys.stderr if err is None else err
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
        if not stoppable:
            raise
        out.write(shown.feed("", final=True) + "\n[stopped]")
    stats = model.stats
    print(f"\n{DIM if out.isatty() else ''}[{stats.prefilled_tokens} prompt tokens processed "
          f"({stats.reused_tokens} reused), {stats.prefill_tokens_per_second:.1f} tok/s; "
          f"{stats.generated_tokens} generated, {stats.decode_tokens_per_second:.1f} tok/s]"
          f"{RESET if out.isatty() else ''}", file=err)
    if stats.finish_reason == "context":
        print("moecc: the context is full; /reset to start over (or load with a larger --ctx)", file=err)
    return "".join(reply)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("python -m moecc.chat", "Chat with a Qwen3-MoE model (.moecc or GGUF file).")
    parser.set_defaults(max_tokens=2048)
    parser.add_argument("--hide-thinking", action="store_true", help="do not show the thinking text")
    args = parser.parse_args(argv)
    from .formats import FormatError
    from .parallel import ShardError
    comm = None
    try:
        comm = job_communicator()
        model = open_model(args, comm)
        if model.chat_template is None:
            raise ValueError("this model has no chat template; use python -m moecc.generate")
    except ShardError as e:  # raised on every rank alike
        if speaks(comm):
            print(f"moecc: error: {e}", file=sys.stderr)
        return 2
    except (FormatError, ValueError, OSError) as e:
        return fail(comm, f"error: {e}", 2)
    if comm is None:
        return converse(model, args, read_line, sys.stdout, sys.stderr, stoppable=True)
    try:
        if speaks(comm):
            return converse(model, args, lambda: comm.bcast(read_line(), root=0), sys.stdout, sys.stderr,
                            stoppable=False)
        with open(os.devnull, "w") as silent:
            return converse(model, args, lambda: comm.bcast(None, root=0), silent, silent, stoppable=False)
    except KeyboardInterrupt:
        return fail(comm, "interrupted", 130)
    except Exception as e:
        return fail(comm, f"error: {e}", 2)


def read_line() -> str | None:
    """The user's next line; None at the end of the input or on Ctrl-C."""
    try:
        return input("> ")
    except (EOFError, KeyboardInterrupt):
        print()
        return None


def converse(model, args, next_line, out, err, stoppable: bool) -> int:
    """The conversation: lines from next_line() (None: quit), answers to out, notes to err."""
    opening = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(opening)
    print(f"moecc chat: /reset starts over, /exit quits, Ctrl-C {'stops an answer' if stoppable else 'ends the job'}",
          file=err)
    while True:
        line = next_line()
        if line is None or line.strip() == "/exit":
            return 0
        if line.strip() == "/reset":
            messages = list(opening)
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        try:
            reply = answer(model, messages, args, out, err, stoppable)
        except ValueError as e:  # e.g. the conversation outgrew the context (on every rank alike)
            print(f"moecc: error: {e}", file=err)
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": reply})


if __name__ == "__main__":
    sys.exit(main())
