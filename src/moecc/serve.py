"""moecc-serve (also `python -m moecc.serve`): an OpenAI-compatible HTTP server for a .moecc file.

    moecc-serve --model qwen3.moecc --port 8000 --parallel 8

The port is bound first, then the model loads on a thread while /health answers 503 "loading";
a model that fails to load is reported on /health and the process exits with status 1 and the
reason. The routes are moecc.server.http's; decoding runs on the scheduler's engine thread.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading

DEFAULT_PORT = 8000


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moecc-serve", description="Serve a .moecc model over OpenAI's HTTP API.")
    p.add_argument("--model", required=True, help="the .moecc file")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    p.add_argument("--parallel", type=int, default=4, help="sequences decoded together, one KV cache slot each (default 4)")
    p.add_argument("--ctx", type=int, default=None,
                   help="context length of each slot in tokens (default: the model's, at most 4096)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all this process may use)")
    p.add_argument("--kv-cache", choices=("f16", "f32"), default="f16",
                   help="KV cache storage: f16 (default; half the memory) or f32 (exact)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every route but /health")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait for a slot; more get 503 with Retry-After (default 64)")
    return p


def _check(args: argparse.Namespace) -> str | None:
    if args.parallel < 1:
        return f"--parallel must be at least 1, got {args.parallel}"
    if args.max_queue < 0:
        return f"--max-queue must be 0 or more, got {args.max_queue}"
    if not 0 <= args.port < 65536:
        return f"--port must be in 0..65535, got {args.port}"
    if not os.path.isfile(args.model):
        return f"{args.model}: no such file; give the .moecc file made by moecc-convert"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = _check(args)
    if problem:
        print(f"moecc-serve: error: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    import uvicorn

    from .engine import LoadedModel
    from .server.http import ServerState, create_app

    try:
        sock = socket.create_server((args.host, args.port))
    except OSError as e:
        print(f"moecc-serve: error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    name = os.path.splitext(os.path.basename(args.model))[0]
    state = ServerState(model_name=name)
    server = uvicorn.Server(uvicorn.Config(create_app(state, api_key=args.api_key), log_config=None,
                                           access_log=False, timeout_graceful_shutdown=5))

    def load() -> None:
        try:
            state.load(lambda: LoadedModel(args.model, threads=args.threads, ctx=args.ctx,
                                           kv_cache=args.kv_cache, slots=args.parallel), args.max_queue)
        except Exception:  # reported on /health until the server has stopped, then below
            server.should_exit = True
            return
        model = state.model
        print(f"moecc-serve: {name} on http://{host}:{port}/v1: {args.parallel} slots of {model.ctx} tokens, "
              f"KV caches {model.memory_plan.kv_bytes / 2**20:.1f} MiB ({args.kv_cache}), "
              f"{model.threads} threads", file=sys.stderr, flush=True)

    print(f"moecc-serve: listening on {host}:{port}; loading {args.model}", file=sys.stderr, flush=True)
    threading.Thread(target=load, name="moecc-load", daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        if state.scheduler is not None:
            state.scheduler.stop()
    if state.status == "error":
        print(f"moecc-serve: error: the model failed to load: {state.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
