"""python -m moecc.generate: stream a model's continuation of a prompt to stdout.

    python -m moecc.generate --model qwen3.moecc --prompt "Once upon a time" --max-tokens 64

The prompt goes through the model's chat template (as a user message) unless --raw is given.
With no --model it runs the bundled demo model (tiny, trained on the Python standard library's
sources).  Token counts and prefill / decode speed go to stderr at the end.  Under mpiexec with
more than one rank the ranks share the experts out (moecc.parallel) and rank 0 prints; an error
that leaves other ranks waiting ends the whole job.
"""
from __future__ import annotations

import argparse
import os
import sys

DEMO_MODEL = os.path.join(os.path.dirname(__file__), "demo", "demo.moecc")


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options every moecc command that runs a model shares."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--model", help="the .moecc or .gguf file (default: the bundled demo model, trained on Python sources)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all this process may use)")
    p.add_argument("--ctx", type=int, default=None,
                   help="context length in tokens (default: the model's, at most 4096)")
    p.add_argument("--kv-cache", choices=("f16", "f32"), default="f16",
                   help="KV cache storage: f16 (default; half the memory) or f32 (exact)")
    p.add_argument("--max-tokens", type=int, default=256, help="most tokens to generate (default 256)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature; 0 is greedy (default: the model's generation_config)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with this probability")
    p.add_argument("--min-p", type=float, default=None, help="drop tokens below min-p times the top probability")
    p.add_argument("--repetition-penalty", type=float, default=None, help="> 1 discourages repeating tokens")
    p.add_argument("--presence-penalty", type=float, default=None, help="subtracted from already generated tokens")
    p.add_argument("--frequency-penalty", type=float, default=None,
                   help="subtracted from a generated token once per time it was generated")
    p.add_argument("--seed", type=int, default=None, help="random seed: the same seed gives the same tokens")
    p.add_argument("--stop", action="append", default=None, metavar="STRING",
                   help="stop when this string appears (not printed); repeatable")
    p.add_argument("--system", default=None, help="a system message (chat template only)")
    think = p.add_mutually_exclusive_group()
    think.add_argument("--think", dest="think", action="store_true", default=None,
                       help="enable the model's thinking (enable_thinking=True in the chat template)")
    think.add_argument("--no-think", dest="think", action="store_false", help="enable_thinking=False")
    return p


def sampling_kwargs(args: argparse.Namespace) -> dict:
    return dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repetition_penalty=args.repetition_penalty, presence_penalty=args.presence_penalty,
                frequency_penalty=args.frequency_penalty, seed=args.seed, stop=args.stop)


def job_communicator():
    """MPI.COMM_WORLD when mpiexec started this process as one of several ranks, else None."""
    from .parallel import launched_ranks, world
    return world() if launched_ranks() > 1 else None


def speaks(comm) -> bool:
    """Whether this process prints: it runs alone, or it is rank 0."""
    return comm is None or comm.Get_rank() == 0


def open_model(args: argparse.Namespace, comm=None):
    import moecc
    path = args.model or DEMO_MODEL
    if args.model is None and speaks(comm):
        print("moecc: no --model given; running the bundled demo model, 2.3M parameters trained for minutes on "
              "the Python standard library's sources (it writes code-like text, it does not answer)", file=sys.stderr)
    return moecc.load(path, threads=args.threads, ctx=args.ctx, kv_cache=args.kv_cache, comm=comm)


def fail(comm, message: str, code: int) -> int:
    """Report an error of this process; under MPI end the whole job, whose other ranks may be
    waiting for this one."""
    if comm is not None:
        from .parallel import abort
        abort(message, code)
    print(f"moecc: {message}", file=sys.stderr)
    return code


def print_stats(stats) -> None:
    if stats.finish_reason == "context":
        print("\nmoecc: the context is full; generation stopped (load with a larger --ctx to go on)", file=sys.stderr)
    print(f"\nprompt: {stats.prompt_tokens} tokens, {stats.prefill_tokens_per_second:.1f} tok/s | "
          f"generated: {stats.generated_tokens} tokens, {stats.decode_tokens_per_second:.1f} tok/s",
          file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("python -m moecc.generate", "Generate text with a Qwen3-MoE model (.moecc or GGUF file).")
    parser.add_argument("--prompt", default="Once upon a time", help="the prompt text (default: %(default)r)")
    parser.add_argument("--raw", action="store_true",
                        help="send the prompt as it is, without the model's chat template")
    args = parser.parse_args(argv)
    from moecc.formats import FormatError
    from moecc.parallel import ShardError
    comm = None
    try:
        comm = job_communicator()
        model = open_model(args, comm)
        prompt = args.prompt
        if model.chat_template is not None and not args.raw:
            messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
                [{"role": "user", "content": args.prompt}]
            prompt = model.apply_chat_template(messages, enable_thinking=args.think)
        steps = model.generate(prompt, args.max_tokens, **sampling_kwargs(args))
        if prompt.rstrip().endswith("<think>") and speaks(comm):  # a template that opens the thinking itself (2507)
            sys.stdout.write("<think>\n")
        for step in steps:
            if speaks(comm):
                sys.stdout.write(step.text)
                sys.stdout.flush()
    except ShardError as e:  # raised on every rank alike
        if speaks(comm):
            print(f"moecc: error: {e}", file=sys.stderr)
        return 2
    except (FormatError, ValueError, OSError) as e:
        return fail(comm, f"error: {e}", 2)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return fail(comm, "interrupted", 130)
    if speaks(comm):
        print_stats(model.stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
