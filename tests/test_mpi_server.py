"""moecc-serve under `mpiexec -n 2` (rank 0 serves, rank 1 follows its steps), driven with the
`openai` client on 127.0.0.1: concurrent streams give what one process gives; SIGTERM to mpiexec
ends every rank cleanly; a follower that is killed or signalled alone ends the job within a
bound; /health reports a rank that could not load.  Every wait is bounded.

Skipped only where no MPI can be had, as tests/test_mpi.py (a failure under MOECC_REQUIRE_MPI=1).
"""
import collections
import concurrent.futures
import itertools
import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

import moecc
from conftest import START_TIMEOUT, Server
from moecc.serve import FOLLOWER_GRACE_SECONDS
from moecc.server.parsers import THINK_OPEN, Qwen3OutputParser

REQUEST_TIMEOUT = 60
END_TIMEOUT = 15  # seconds a job may take to end once it should
FLAGS = ("--parallel", "4", "--ctx", "512", "--kv-cache", "f32", "--threads", "1")


@pytest.fixture(scope="module")
def model_path(converted):
    return converted("main", "f32")


def rank_pids(job: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of the processes of an mpiexec job (its descendants, by their PMI_RANK; Linux /proc)."""
    children = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                children[int(f.read().rsplit(")", 1)[1].split()[1])].append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    ranks, todo = {}, [job.pid]
    while todo:
        for child in children[todo.pop()]:
            todo.append(child)
            try:
                with open(f"/proc/{child}/environ", "rb") as f:
                    variables = f.read().split(b"\0")
            except OSError:
                continue
            ranks.update((int(v[len(b"PMI_RANK="):]), child) for v in variables if v.startswith(b"PMI_RANK="))
    return ranks


def _ended(server: Server, timeout: float) -> float:
    """Seconds until the job ended (at most `timeout`; past it the job is killed and the test fails)."""
    started = time.monotonic()
    try:
        server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        for pid in rank_pids(server.proc).values():
            os.kill(pid, signal.SIGKILL)
        server.proc.kill()
        server.proc.wait(10)
        raise AssertionError(f"the job did not end within {timeout} s: " + "".join(server.lines))
    time.sleep(0.1)  # the reader thread takes the last lines
    return time.monotonic() - started


def _two_ranks(mpiexec, *args) -> Server:
    return Server(*args, launcher=(mpiexec, "-n", "2")).wait_ready()


def test_two_ranks_serve_what_one_process_computes_and_sigterm_ends_both(mpiexec, model_path):
    """Four concurrent streams (chat and completions, one prompt longer than a step's rows; again
    from the slots' cached prefixes) and a seeded sampled request give what Model.generate
    gives; SIGTERM to mpiexec ends both ranks cleanly."""
    server = _two_ranks(mpiexec, "--model", model_path, *FLAGS)
    try:
        assert sorted(rank_pids(server.proc)) == [0, 1]
        assert any("the experts shared by 2 ranks" in line for line in server.lines), server.lines
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=REQUEST_TIMEOUT,
                               max_retries=0)
        alone = moecc.load(model_path, threads=1, ctx=512, kv_cache="f32")
        chats = ["Tell me about experts.", "Why " + "route tokens? " * 60]
        texts = ["The router picks", "Once upon a time"]

        def expected_chat(content):
            prompt = alone.apply_chat_template([{"role": "user", "content": content}])
            text = "".join(s.text for s in alone.generate(prompt, 20, temperature=0))
            parser = Qwen3OutputParser(starts_thinking=prompt.rstrip().endswith(THINK_OPEN))
            parsed = parser.feed(text) + parser.finish()
            return parsed.reasoning, parsed.content

        def chat(content):
            stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": content}],
                                                    max_tokens=20, temperature=0, stream=True,
                                                    stream_options={"include_usage": True})
            chunks = list(stream)
            deltas = [c.choices[0].delta for c in chunks if c.choices]
            reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
            return (reasoning, "".join(d.content or "" for d in deltas)), chunks[-1].usage

        def complete(prompt):
            stream = client.completions.create(model="m", prompt=prompt, max_tokens=20, temperature=0, stream=True,
                                               stream_options={"include_usage": True})
            chunks = list(stream)
            return "".join(c.choices[0].text for c in chunks if c.choices), chunks[-1].usage

        expected = [expected_chat(c) for c in chats] + \
            ["".join(s.text for s in alone.generate(t, 20, temperature=0)) for t in texts]
        long_prompt = alone.apply_chat_template([{"role": "user", "content": chats[1]}])
        assert len(alone.tokenizer.encode(long_prompt)) > alone.net.rows  # prefilled in chunks between decode steps
        for round in range(2):
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                results = [f.result(timeout=REQUEST_TIMEOUT) for f in
                           [pool.submit(chat, c) for c in chats] + [pool.submit(complete, t) for t in texts]]
            assert [got for got, _ in results] == expected, f"round {round}"
            cached = [usage.prompt_tokens_details.cached_tokens for _, usage in results[:2]]
            assert all(c > 0 for c in cached) if round else cached == [0, 0]
        sampled = client.completions.create(model="m", prompt="Once upon", max_tokens=16, temperature=1.0,
                                            top_p=1.0, seed=7, extra_body={"top_k": 0}).choices[0].text
        assert sampled == "".join(s.text for s in alone.generate("Once upon", 16, temperature=1.0, top_p=1.0,
                                                                top_k=0, seed=7))
        server.proc.send_signal(signal.SIGTERM)
        _ended(server, END_TIMEOUT)
        output = "".join(server.lines)
        assert server.proc.returncode == 0, output
        assert "BAD TERMINATION" not in output and "Traceback" not in output and "Abort" not in output, output
    finally:
        if server.proc.poll() is None:
            server.stop()


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_follower_killed_or_signalled_alone_ends_the_job(mpiexec, model_path, signum):
    """SIGKILL mid-stream: mpiexec ends the job at once and the client's stream breaks.  SIGTERM to
    rank 1 alone: it waits for rank 0 to end the server (as after a SIGTERM to mpiexec), which
    does not come, then ends the job."""
    server = _two_ranks(mpiexec, "--model", model_path, *FLAGS)
    try:
        follower = rank_pids(server.proc)[1]
        if signum == signal.SIGKILL:
            body = {"prompt": "Once", "max_tokens": 400, "temperature": 0, "stream": True}
            with pytest.raises(httpx.TransportError):
                with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=REQUEST_TIMEOUT) as r:
                    lines = r.iter_lines()
                    next(lines)
                    os.kill(follower, signum)
                    for _ in lines:
                        pass
        else:
            os.kill(follower, signum)
        took = _ended(server, FOLLOWER_GRACE_SECONDS + END_TIMEOUT)
        output = "".join(server.lines)
        assert server.proc.returncode != 0, output
        if signum == signal.SIGKILL:
            assert took < 10 and "BAD TERMINATION" in output and "Killed (signal 9)" in output, output
        else:
            assert FOLLOWER_GRACE_SECONDS <= took < FOLLOWER_GRACE_SECONDS + 10, output
            assert (f"moecc: rank 1 of 2: stopped by SIGTERM, and rank 0 did not end the server within "
                    f"{FOLLOWER_GRACE_SECONDS} s; ending the job") in output
    finally:
        if server.proc.poll() is None:
            server.stop()


@pytest.mark.parametrize("changes, message", [
    ({"--model": "{tmp}/absent.moecc"}, "rank 1 of 2 could not load the model: {tmp}/absent.moecc: no such file"),
    ({"--kv-cache": "f16"}, "rank 1 runs with ctx=512, slots=4, kv_cache='f16' but rank 0 with ctx=512, slots=4, "
                            "kv_cache='f32'; give every rank the same"),
], ids=["missing-file", "other-kv-cache"])
def test_health_waits_for_every_rank_and_reports_one_that_cannot_run(mpiexec, model_path, tmp_path, changes, message):
    """Rank 0 loads, rank 1 cannot, or would run another KV cache: /health never says ok, every
    rank exits with 1 and rank 0 says why, naming rank 1."""
    flags = {**dict(zip(FLAGS[::2], FLAGS[1::2])), "--model": model_path}
    rank0 = (sys.executable, "-m", "moecc.serve", "--host", "127.0.0.1", "--port", "0", *itertools.chain(*flags.items()))
    rank1 = {**flags, **{flag: value.format(tmp=tmp_path) for flag, value in changes.items()}}
    # rank 1 runs the Server's own command line, after the launcher's ":"
    server = Server(*itertools.chain(*rank1.items()), launcher=(mpiexec, "-n", "1", *rank0, ":", "-n", "1"))
    try:
        server.wait_listening()
        seen, deadline = set(), time.monotonic() + START_TIMEOUT
        while server.proc.poll() is None and time.monotonic() < deadline:
            try:
                seen.add(httpx.get(server.url + "/health", timeout=5).json()["status"])
            except httpx.TransportError:  # not serving yet, or gone
                pass
            time.sleep(0.02)
        _ended(server, END_TIMEOUT)
        output = "".join(server.lines)
        assert "ok" not in seen and server.proc.returncode == 1, (seen, output)
        errors = [line for line in output.splitlines() if line.startswith(("moecc-serve: error", "moecc: "))]
        assert errors == [f"moecc-serve: error: the model failed to load: {message.format(tmp=tmp_path)}"], output
    finally:
        if server.proc.poll() is None:
            server.stop()
