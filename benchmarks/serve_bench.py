"""Concurrent streams through moecc-serve and llama.cpp's llama-server, side by side.

    python benchmarks/serve_bench.py --moecc /work/scratch/syn8-q4.moecc --hf /work/scratch/syn8 \\
        --streams 1,2,4,8,16 --rounds 3 --json serve.json
    python benchmarks/serve_bench.py --moecc FILE.moecc --gguf FILE.gguf ...    # a GGUF made already
    python benchmarks/serve_bench.py --moecc FILE.moecc --no-peer --rounds 1     # moecc alone
    python benchmarks/serve_bench.py --moecc FILE.moecc --steady 10              # one stream, warm

In every round, for every stream count N, each server (their order alternating round by round)
is started with N slots (`moecc-serve --parallel N --ctx C`, `llama-server -np N -c N*C`, the
same threads), and N clients send one streamed `/v1/completions` request each at the same
moment: a prompt of `--prompt` random token ids (different per stream and round, the same for
both servers), `--tokens` tokens greedy (`ignore_eos` for llama-server). Per stream: the time to
first token (request sent to first text chunk) and its decode rate (tokens after the first over
the time from first to last chunk). Per turn: the aggregate decode rate, all streams' tokens
after their first over the time from the first stream's first token to the last stream's end.
The single-stream baseline is `Model.generate` on the same file and prompt length, timed in the
same round (issue 11's target: one stream through the server within 5% of it).

With `--steady N`, only the single-stream target is measured, without restarts: one warm
moecc-serve (one slot) and one warm `Model.generate` in this process take N turns each of the
same prompt, alternating which goes first, and the median of the N per-pair ratios is printed
(a turn of either is one `--tokens` stream; restarting a server per turn adds its noise).

The GGUF is the peer harness's pure Q4_0 (`../shared/peer/llamacpp_bench.py HF --quant q4`, made
on first use from `--hf`), llama-server is `../shared/peer/llamacpp_tools.py build`'s. Each
turn first waits (up to `--wait-idle` s) for other processes to go quiet and reports the CPU
share others took during it (`contended` above 5%), as moecc-bench does. Prints a table per
stream count (medians over rounds; each ratio the median of its per-round ratios) and, with
--json, every turn.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

import httpx
import numpy as np

from moecc import bench
from moecc.engine import default_threads

PEER_TOOLS = os.path.join(os.path.dirname(bench.PEER_SCRIPT), "llamacpp_tools.py")
START_TIMEOUT = 600  # seconds for a server to load and answer /health
REQUEST_TIMEOUT = 600


class ServerProcess:
    """A server started on a free port, ready when /health says 200; stopped on exit."""

    def __init__(self, name: str, cmd: list[str], port: int):
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def __enter__(self):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"{self.name} did not become ready in {START_TIMEOUT} s")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def moecc_server(path: str, streams: int, ctx: int, threads: int) -> ServerProcess:
    port = free_port()
    return ServerProcess("moecc-serve", [sys.executable, "-m", "moecc.serve", "--model", path, "--port", str(port),
                                         "--parallel", str(streams), "--ctx", str(ctx), "--threads", str(threads)],
                         port)


def llama_server(gguf: str, streams: int, ctx: int, threads: int) -> ServerProcess:
    program = subprocess.run([sys.executable, PEER_TOOLS, "path", "llama-server"], check=True, capture_output=True,
                             text=True).stdout.strip().splitlines()[-1]
    port = free_port()
    return ServerProcess("llama-server", [program, "-m", gguf, "--host", "127.0.0.1", "--port", str(port),
                                          "-np", str(streams), "-c", str(streams * ctx), "-t", str(threads)], port)


async def one_stream(client: httpx.AsyncClient, url: str, prompt: list[int], tokens: int) -> dict:
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    sent = time.perf_counter()
    chunks, first, usage = [], None, None
    async with client.stream("POST", url + "/v1/completions", json=body, timeout=REQUEST_TIMEOUT) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{url}: {r.status_code} {(await r.aread())[:500]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: "):])
            if event.get("usage"):
                usage = event["usage"]
            if any(c.get("text") for c in event.get("choices", [])):
                now = time.perf_counter()
                first = first or now
                chunks.append(now)
    generated = usage["completion_tokens"] if usage else len(chunks)
    return {"sent": sent, "first": first, "end": chunks[-1], "tokens": generated,
            "ttft": first - sent, "decode_tok_s": (generated - 1) / (chunks[-1] - first) if chunks[-1] > first else None}


async def streams_together(url: str, prompts: list[list[int]], tokens: int) -> list[dict]:
    limits = httpx.Limits(max_connections=len(prompts) + 2)
    async with httpx.AsyncClient(limits=limits) as client:
        return await asyncio.gather(*(one_stream(client, url, p, tokens) for p in prompts))


def turn(server: ServerProcess, prompts: list[list[int]], tokens: int, wait_idle: float) -> dict:
    bench.wait_until_idle(wait_idle)
    with bench.OtherLoad(pids=(server.proc.pid,)) as other:
        runs = asyncio.run(streams_together(server.url, prompts, tokens))
    window = max(r["end"] for r in runs) - min(r["first"] for r in runs)
    return {"engine": server.name, "streams": len(prompts), "other_load": round(other.fraction, 3),
            "contended": other.fraction > bench.CONTENDED,
            "aggregate_decode_tok_s": sum(r["tokens"] - 1 for r in runs) / window if window > 0 else None,
            "ttft_median_s": statistics.median(r["ttft"] for r in runs),
            "ttft_max_s": max(r["ttft"] for r in runs),
            "stream_decode_tok_s": [r["decode_tok_s"] for r in runs], "tokens": [r["tokens"] for r in runs]}


def generate_baseline(path: str, prompt: list[int], tokens: int, ctx: int, threads: int, wait_idle: float) -> dict:
    """Model.generate on one stream: the rate the server's single stream is held to."""
    import moecc
    bench.wait_until_idle(wait_idle)
    with moecc.load(path, threads=threads, ctx=ctx) as model:
        model.touch()  # as moecc-serve does before it says it is ready
        with bench.OtherLoad() as other:
            steps = list(model.generate(prompt, tokens, temperature=0))
        stats = model.stats
    return {"engine": "Model.generate", "streams": 1, "tokens": len(steps), "other_load": round(other.fraction, 3),
            "contended": other.fraction > bench.CONTENDED, "decode_tok_s": stats.decode_tokens_per_second,
            "ttft_s": stats.prefill_seconds}


def steady_single_stream(path: str, prompt: list[int], tokens: int, ctx: int, threads: int, pairs: int) -> list[dict]:
    """`pairs` alternating turns of one warm moecc-serve stream and one warm Model.generate."""
    import moecc

    async def one():
        async with httpx.AsyncClient() as client:
            return await one_stream(client, server.url, prompt, tokens)
    with moecc_server(path, 1, ctx, threads) as server, moecc.load(path, threads=threads, ctx=ctx) as model:
        model.touch()

        def served() -> float:
            return asyncio.run(one())["decode_tok_s"]

        def generated() -> float:
            list(model.generate(prompt, tokens, temperature=0))
            return model.stats.decode_tokens_per_second
        served(), generated()  # warm-up: code paths, the server's first request
        turns = []
        for i in range(pairs):
            if i % 2:
                g, s = generated(), served()
            else:
                s, g = served(), generated()
            turns.append({"pair": i, "served_tok_s": s, "generate_tok_s": g, "ratio": s / g})
            print(f"pair {i + 1}: moecc-serve {s:.1f} tok/s, Model.generate {g:.1f} tok/s, ratio {s / g:.3f}",
                  file=sys.stderr, flush=True)
    ratios = [t["ratio"] for t in turns]
    print(f"one warm stream through moecc-serve / Model.generate: {statistics.median(ratios):.3f} (median of "
          f"{pairs} alternating pairs; range {min(ratios):.3f}-{max(ratios):.3f}; target >= 0.95)")
    return turns


def median_of(turns: list[dict], engine: str, streams: int, key: str):
    values = [t[key] for t in turns if t["engine"] == engine and t["streams"] == streams and t[key] is not None]
    return statistics.median(values) if values else None


def rate_of(turns: list[dict], engine: str, streams: int, round_: int):
    """The decode rate of one turn: aggregate through a server, per stream for Model.generate."""
    key = "decode_tok_s" if engine == "Model.generate" else "aggregate_decode_tok_s"
    found = [t[key] for t in turns if t["engine"] == engine and t["streams"] == streams and t["round"] == round_]
    return found[0] if found else None


def median_ratio(turns: list[dict], a: tuple[str, int], b: tuple[str, int]):
    """The median over rounds of rate(a) / rate(b) in the same round, and the per-round ratios."""
    ratios = []
    for round_ in sorted({t["round"] for t in turns}):
        x, y = rate_of(turns, *a, round_), rate_of(turns, *b, round_)
        if x and y:
            ratios.append(x / y)
    return (statistics.median(ratios), ratios) if ratios else (None, ratios)


def report(turns: list[dict], stream_counts: list[int], peer: bool) -> None:
    """Medians over rounds of the rates, and of each round's ratios (the rounds alternate the order)."""
    base = median_of(turns, "Model.generate", 1, "decode_tok_s")
    print(f"Model.generate, one stream: {base:.1f} tok/s decode (median over rounds)")
    head = "| streams | moecc agg tok/s | moecc TTFT med / max s |"
    if peer:
        head += " llama-server agg tok/s | llama-server TTFT med / max s | moecc / llama-server (median of rounds) |"
    print(head)
    print("|" + " ---: |" * (head.count("|") - 1))
    for n in stream_counts:
        row = [str(n)]
        for engine in ("moecc-serve",) + (("llama-server",) if peer else ()):
            agg = median_of(turns, engine, n, "aggregate_decode_tok_s")
            row += [f"{agg:.1f}" if agg else "-",
                    f"{median_of(turns, engine, n, 'ttft_median_s'):.3f} / {median_of(turns, engine, n, 'ttft_max_s'):.3f}"]
        if peer:
            ratio, _ = median_ratio(turns, ("moecc-serve", n), ("llama-server", n))
            row.append(f"{ratio:.2f}×" if ratio else "-")
        print("| " + " | ".join(row) + " |")

    def ratio_line(what: str, a: tuple[str, int], b: tuple[str, int], target: str) -> None:
        ratio, ratios = median_ratio(turns, a, b)
        if ratio:
            print(f"{what}: {ratio:.3f} ({', '.join(f'{r:.3f}' for r in ratios)} by round; target {target})")
    ratio_line("one stream through moecc-serve / Model.generate", ("moecc-serve", 1), ("Model.generate", 1), ">= 0.95")
    ratio_line("8 streams / 1 stream, moecc-serve aggregate", ("moecc-serve", 8), ("moecc-serve", 1), ">= 2")
    contended = sum(t["contended"] for t in turns)
    if contended:
        print(f"{contended} of {len(turns)} turns were contended (others used > {bench.CONTENDED:.0%} of the CPUs)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moecc", required=True, help="the .moecc file moecc-serve runs")
    peer = ap.add_mutually_exclusive_group()
    peer.add_argument("--hf", help="the checkpoint folder the peer harness makes its pure Q4_0 GGUF of")
    peer.add_argument("--gguf", help="the GGUF llama-server runs")
    peer.add_argument("--no-peer", action="store_true", help="moecc-serve (and Model.generate) only")
    ap.add_argument("--streams", default="1,2,4,8,16", help="comma list of concurrent stream counts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens per stream")
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per stream")
    ap.add_argument("--ctx", type=int, default=512, help="context per slot, both servers")
    ap.add_argument("--threads", type=int, default=default_threads(), help="CPU threads of each engine")
    ap.add_argument("--wait-idle", type=float, default=300, help="seconds to wait for a quiet machine per turn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steady", type=int, metavar="N",
                    help="only one stream: N alternating pairs of a warm server and a warm Model.generate")
    ap.add_argument("--json", help="write every turn here")
    args = ap.parse_args(argv)
    stream_counts = [int(n) for n in args.streams.split(",")]
    if args.prompt + args.tokens > args.ctx:
        ap.error(f"--prompt + --tokens ({args.prompt + args.tokens}) must fit in --ctx ({args.ctx})")
    if args.steady:
        import moecc
        with moecc.load(args.moecc, threads=1, ctx=16) as model:
            vocab = model.config.vocab_size
        prompt = np.random.default_rng(args.seed).integers(0, vocab, args.prompt).tolist()
        turns = steady_single_stream(args.moecc, prompt, args.tokens, args.ctx, args.threads, args.steady)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "steady": turns}, f, indent=1)
        return 0
    if not args.no_peer and not (args.hf or args.gguf):
        ap.error("give --hf (to make the GGUF) or --gguf, or --no-peer")
    gguf = args.gguf
    if args.hf:
        hf = bench.Subject(label="peer", layers=0, path="", hf=args.hf, prepare_s=None, decode_bytes={})
        gguf = bench.run_peer(hf, "q4", args.threads, 0, 0, 1)["file"]  # made once, then reused
    import moecc
    with moecc.load(args.moecc, threads=1, ctx=16) as model:
        vocab = model.config.vocab_size
    rng = np.random.default_rng(args.seed)
    turns = []
    for round_ in range(args.rounds):
        engines = ["moecc-serve"] + ([] if args.no_peer else ["llama-server"])
        if round_ % 2:
            engines.reverse()
        prompt_of = {n: [rng.integers(0, vocab, args.prompt).tolist() for _ in range(n)] for n in stream_counts}
        baseline = generate_baseline(args.moecc, prompt_of[stream_counts[0]][0], args.tokens, args.ctx,
                                     args.threads, args.wait_idle)
        baseline["round"] = round_
        turns.append(baseline)
        for n in stream_counts:
            for engine in engines:
                start = moecc_server if engine == "moecc-serve" else llama_server
                with start(args.moecc if engine == "moecc-serve" else gguf, n, args.ctx, args.threads) as server:
                    result = turn(server, prompt_of[n], args.tokens, args.wait_idle)
                result["round"] = round_
                turns.append(result)
                print(f"round {round_ + 1}, {n} streams, {engine}: {result['aggregate_decode_tok_s']:.1f} tok/s "
                      f"aggregate, TTFT median {result['ttft_median_s']:.3f} s"
                      f"{' (contended)' if result['contended'] else ''}", file=sys.stderr, flush=True)
    report(turns, stream_counts, peer=not args.no_peer)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "gguf": gguf, "turns": turns}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
