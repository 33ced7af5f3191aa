"""moecc-serve (also `python -m moecc.serve`): an OpenAI-compatible HTTP server for a .moecc file.

    moecc-serve --model qwen3.moecc --port 8000 --parallel 8

The port is bound first, then the model loads on a thread while /health answers 503 "loading";
a model that fails to load is reported on /health and the process exits with status 1 and the
reason. The routes are moecc.server.http's; decoding runs on the scheduler's engine thread.

Under mpiexec with more than one rank the experts are shared out (moecc.parallel): rank 0 does
all the above (its /health says "ok" once every rank has loaded) and sends each step to the
other ranks, which only load their share and run the steps (parallel.follow_steps).  Rank 0
ends them when it stops (SIGINT / SIGTERM, which mpiexec passes to every rank); anything else
that stops rank 0 ends the whole job, so no rank is ever left waiting.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading

DEFAULT_PORT = 8000
GRACEFUL_SHUTDOWN_SECONDS = 5  # on SIGINT / SIGTERM, how long open requests may go on
# the other ranks of a job, signalled, wait this long for rank 0 to end them (it was signalled too)
FOLLOWER_GRACE_SECONDS = GRACEFUL_SHUTDOWN_SECONDS + 5


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


def _check(args: argparse.Namespace, comm) -> str | None:
    """What is wrong with the flags, if anything (the same on every rank: they share the command line)."""
    if args.parallel < 1:
        return f"--parallel must be at least 1, got {args.parallel}"
    if args.max_queue < 0:
        return f"--max-queue must be 0 or more, got {args.max_queue}"
    if not 0 <= args.port < 65536:
        return f"--port must be in 0..65535, got {args.port}"
    if comm is None and not os.path.isfile(args.model):  # (under MPI each host has its own: load checks it)
        return f"{args.model}: no such file; give the .moecc file made by moecc-convert"
    if comm is not None:
        from mpi4py import MPI
        if MPI.Query_thread() < MPI.THREAD_SERIALIZED:
            return ("this MPI library runs without thread support, and the server calls MPI from its "
                    "engine thread: use one that has it (the mpich wheel: pip install 'moecc[mpi]')")
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .generate import job_communicator, speaks
    from .parallel import ShardError, abort
    try:
        comm = job_communicator()
    except ShardError as e:
        print(f"moecc-serve: error: {e}", file=sys.stderr)
        return 2
    problem = _check(args, comm)
    if problem:
        if speaks(comm):
            print(f"moecc-serve: error: {problem}", file=sys.stderr)
        return 2
    if comm is None:
        return _serve(args, None)
    try:  # an exception here would leave the other ranks waiting for this one
        return _serve(args, comm) if comm.Get_rank() == 0 else _follow(args, comm)
    except BaseException as e:
        abort(f"moecc-serve failed: {e!r}")


def _open_model(args: argparse.Namespace, comm):
    """The model this rank serves, its weights read into memory before /health says ok (as
    llama-server's warm-up run does): a file not yet in the page cache is then read from disk
    while the server says it is loading, not by the first requests."""
    from .engine import LoadedModel
    model = LoadedModel(args.model, threads=args.threads, ctx=args.ctx, kv_cache=args.kv_cache,
                        slots=args.parallel, comm=comm)
    try:
        model.touch()
    except BaseException:
        model.close()
        raise
    return model


def _serve(args: argparse.Namespace, comm) -> int:
    """The server (rank 0 of an expert-parallel job, which sends every step to the other ranks)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    import uvicorn

    from .parallel import ShardError, StopSignals, abort
    from .server.http import ServerState, create_app

    try:
        sock = socket.create_server((args.host, args.port))
    except OSError as e:
        problem = f"cannot listen on {args.host}:{args.port}: {e}"
        if comm is not None:
            comm.bcast(problem, root=0)  # the other ranks end too
        print(f"moecc-serve: error: {problem}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    print(f"moecc-serve: listening on {host}:{port}; loading {args.model}", file=sys.stderr, flush=True)
    if comm is not None:
        comm.bcast(None, root=0)  # listening: the other ranks load
    name = os.path.splitext(os.path.basename(args.model))[0]
    state = ServerState(model_name=name)
    server = uvicorn.Server(uvicorn.Config(create_app(state, api_key=args.api_key), log_config=None,
                                           access_log=False, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS))

    def load() -> None:
        try:
            state.load(lambda: _open_model(args, comm), args.max_queue)
        except Exception as e:  # reported on /health until the server has stopped, then below
            if comm is not None and not isinstance(e, ShardError):  # every rank loaded; they wait for steps
                abort(f"the server failed to start: {e!r}")
            server.should_exit = True
            return
        model = state.model
        ranks = f" per rank, the experts shared by {comm.Get_size()} ranks" if comm is not None else ""
        print(f"moecc-serve: {name} on http://{host}:{port}/v1: {args.parallel} slots of {model.ctx} tokens, "
              f"KV caches {model.memory_plan.kv_bytes / 2**20:.1f} MiB ({args.kv_cache}), "
              f"{model.threads} threads{ranks}", file=sys.stderr, flush=True)

    loader = threading.Thread(target=load, name="moecc-load", daemon=True)
    loader.start()
    if comm is not None:
        StopSignals()  # after serving, the signal uvicorn raises again must not end this rank: the others follow it
    try:
        server.run(sockets=[sock])
    finally:
        if comm is not None:
            loader.join()  # the other ranks load too: they are ended below once they follow the steps
        if state.scheduler is not None:
            stopped = state.scheduler.stop()
            if comm is not None:
                if not stopped:
                    abort("the engine thread did not stop")
                state.scheduler.broadcast.end()
    if state.status == "error":
        print(f"moecc-serve: error: the model failed to load: {state.error}", file=sys.stderr)
        return 1
    return 0


def _follow(args: argparse.Namespace, comm) -> int:
    """Another rank of an expert-parallel server: load this rank's share, run every step rank 0
    sends until it ends them.  It prints nothing: rank 0 reports for the job."""
    from .parallel import ShardError, StopSignals, follow_steps
    stop = StopSignals()  # from here on rank 0 ends this rank
    if comm.bcast(None, root=0) is not None:  # rank 0 cannot listen
        return 2
    try:
        model = _open_model(args, comm)
    except ShardError:  # raised on every rank alike
        return 1
    with model:
        follow_steps(model.net, stop, FOLLOWER_GRACE_SECONDS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
