"""moecc-serve as clients use it: the real server in a subprocess on 127.0.0.1 (a free port),
driven with the official `openai` client and raw HTTP (SSE framing, errors). Every wait is bounded."""
import concurrent.futures
import json
import re
import time

import httpx
import openai
import pytest

from conftest import START_TIMEOUT, Server

KEY = "test-key"
REQUEST_TIMEOUT = 60


@pytest.fixture(scope="module")
def model_path(converted):
    return converted("main", "f32")


@pytest.fixture(scope="module")
def server(model_path):
    s = Server("--model", model_path, "--parallel", "8", "--ctx", "4096", "--kv-cache", "f32", "--threads", "2",
               "--api-key", KEY)
    try:
        yield s.wait_ready()
    finally:
        s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, timeout=REQUEST_TIMEOUT, max_retries=0)


def _post(server, path, body, key=KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.post(server.url + path, content=content, headers=headers, timeout=REQUEST_TIMEOUT, **kw)


def _metric(server, name):
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0  # a labelled counter appears once it moves


def _sse_events(response):
    """The `data:` payloads of an SSE response, checking OpenAI's framing: data lines, blank lines between."""
    events, lines = [], list(response.iter_lines())
    for i, line in enumerate(lines):
        if line:
            assert line.startswith("data: "), line
            events.append(line[len("data: "):])
            assert i + 1 < len(lines) and lines[i + 1] == "", "an event not followed by a blank line"
    return events


MESSAGES = [{"role": "user", "content": "Tell me about experts."}]


def test_chat_completion(client):
    r = client.chat.completions.create(model="main", messages=MESSAGES, max_tokens=12, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "length" and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert r.usage.completion_tokens == 12 and r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")


def test_streamed_chat_equals_the_whole_response(client):
    whole = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=16, temperature=0)
    stream = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=16, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0  # the same prompt ran just before


def test_sse_framing_as_openai(server):
    body = {"messages": MESSAGES, "max_tokens": 5, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=REQUEST_TIMEOUT,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and "usage" in c for c in chunks)
    assert all(c["usage"] is None for c in chunks[:-1]) and chunks[-1]["usage"]["completion_tokens"] == 5
    assert len({c["id"] for c in chunks}) == 1
    # without include_usage: no usage field and no usage chunk
    body.pop("stream_options")
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=REQUEST_TIMEOUT,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        events = _sse_events(r)
    assert events[-1] == "[DONE]" and all("usage" not in json.loads(e) for e in events[:-1])


def test_completions_text_and_token_ids(client, model_path):
    import moecc
    alone = moecc.load(model_path, threads=1, ctx=512, kv_cache="f32")
    ids = alone.tokenizer.encode("The router picks")
    expected = "".join(s.text for s in alone.generate(ids, 10, temperature=0))
    r = client.completions.create(model="m", prompt="The router picks", max_tokens=10, temperature=0)
    assert r.choices[0].text == expected and r.usage.prompt_tokens == len(ids)
    r = client.completions.create(model="m", prompt=ids, max_tokens=10, temperature=0)
    assert r.choices[0].text == expected
    stream = client.completions.create(model="m", prompt=ids, max_tokens=10, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in stream) == expected


def test_stop_strings_and_seeds(client):
    base = dict(model="m", prompt="Once upon", max_tokens=24, temperature=1.0, top_p=1.0, extra_body={"top_k": 0})
    a = client.completions.create(seed=7, **base).choices[0].text
    assert client.completions.create(seed=7, **base).choices[0].text == a
    others = {client.completions.create(seed=s, **base).choices[0].text for s in (8, 9, 10)}
    assert others != {a}
    stop = a[len(a) // 2:len(a) // 2 + 2]
    cut = client.completions.create(seed=7, stop=[stop], **base).choices[0]
    assert cut.finish_reason == "stop" and cut.text == a[:a.index(stop)]


def test_logprobs_shapes(client):
    r = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=4, temperature=0, logprobs=True,
                                       top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    for entry in content:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)  # greedy: the top token
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob >= entry.top_logprobs[2].logprob
    r = client.completions.create(model="m", prompt="abc", max_tokens=3, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 3
    assert all(len(top) == 2 for top in lp.top_logprobs)


def test_eight_concurrent_streams_each_equal_its_solo_output(client):
    prompts = [f"Question {i}: " + "mixture of experts " * i for i in range(8)]

    def run(prompt):
        stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}],
                                                max_tokens=20, temperature=0, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    solo = [run(p) for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(run, prompts, timeout=REQUEST_TIMEOUT))
    assert together == solo


def test_a_disconnect_mid_stream_frees_its_slot_and_the_others_finish(server, client):
    def run(prompt):
        return client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}],
                                              max_tokens=40, temperature=0).choices[0].message.content

    cancelled = 'moecc_requests_total{finish_reason="cancelled"}'
    before = _metric(server, cancelled)
    expected = run("keep going")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        others = [pool.submit(run, "keep going") for _ in range(2)]
        # ignore_eos: the stream must still run when the client goes (this prompt reaches EOS soon)
        body = {"messages": MESSAGES, "max_tokens": 4000, "temperature": 0, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=REQUEST_TIMEOUT,
                          headers={"Authorization": f"Bearer {KEY}"}) as r:
            lines = r.iter_lines()
            for _ in range(6):
                next(lines)
        # the client has gone after a few tokens of 4000
        assert [f.result(timeout=REQUEST_TIMEOUT) for f in others] == [expected, expected]
    deadline = time.monotonic() + 10
    while _metric(server, "moecc_slots_busy") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _metric(server, "moecc_slots_busy") == 0 and _metric(server, "moecc_requests_running") == 0
    assert _metric(server, cancelled) == before + 1  # stopped by the disconnect, not by finishing


def test_ignore_eos_generates_past_eos(client):
    """This prompt reaches EOS within 40 tokens; with ignore_eos the request runs to max_tokens."""
    def run(**extra):
        return client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=40, temperature=0,
                                              extra_body=extra)
    natural, forced = run(), run(ignore_eos=True)
    assert natural.choices[0].finish_reason == "stop" and natural.usage.completion_tokens < 40
    assert forced.choices[0].finish_reason == "length" and forced.usage.completion_tokens == 40


def test_metrics_move(server, client):
    before = {m: _metric(server, m) for m in ("moecc_prompt_tokens_total", "moecc_generated_tokens_total",
                                                "moecc_time_to_first_token_seconds_count")}
    r = client.completions.create(model="m", prompt=[1, 2, 3, 4], max_tokens=6, temperature=0)
    assert r.usage.completion_tokens == 6
    assert _metric(server, "moecc_prompt_tokens_total") == before["moecc_prompt_tokens_total"] + 4
    assert _metric(server, "moecc_generated_tokens_total") == before["moecc_generated_tokens_total"] + 6
    assert _metric(server, "moecc_time_to_first_token_seconds_count") == \
        before["moecc_time_to_first_token_seconds_count"] + 1
    for name in ("moecc_requests_queued", "moecc_time_per_output_token_seconds_count"):
        _metric(server, name)


def test_models_tokenize_detokenize(server, client):
    assert [m.id for m in client.models.list().data] == ["main-f32"]  # the file's name
    tokens = _post(server, "/tokenize", {"content": "Hello experts"}).json()["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    assert _post(server, "/detokenize", {"tokens": tokens}).json() == {"content": "Hello experts"}
    r = _post(server, "/detokenize", {"tokens": [1, 10**6]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"


def test_the_api_key_is_required_except_on_health(server):
    for key in (None, "wrong"):
        for method, path in [("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("GET", "/v1/models"),
                             ("GET", "/metrics"), ("POST", "/tokenize"), ("POST", "/detokenize")]:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            r = httpx.request(method, server.url + path, json={"prompt": "x"}, headers=headers, timeout=10)
            assert r.status_code == 401, (key, path)
            assert r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(server.url + "/health", timeout=10).json() == {"status": "ok"}
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0, timeout=10)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


@pytest.mark.parametrize("body, param, message", [
    ("{not json", None, "not valid JSON"),
    ("[1, 2]", None, "JSON object"),
    ({"messages": "hi"}, "messages", "messages"),
    ({"messages": []}, "messages", "at least 1"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages", "role"),
    ({"messages": MESSAGES, "max_tokens": "5"}, "max_tokens", "valid integer"),
    ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ({"messages": MESSAGES, "temperature": 2.5}, "temperature", "less than or equal to 2"),
    ({"messages": MESSAGES, "top_p": 0}, "top_p", "greater than 0"),
    ({"messages": MESSAGES, "min_p": 1}, "min_p", "less than 1"),
    ({"messages": MESSAGES, "frequency_penalty": -3}, "frequency_penalty", "greater than or equal to -2"),
    ({"messages": MESSAGES, "top_logprobs": 21, "logprobs": True}, "top_logprobs", "less than or equal to 20"),
    ({"messages": MESSAGES, "stream": "yes"}, "stream", "valid boolean"),
    ({"messages": MESSAGES, "n": 2}, "n", "n > 1"),
    ({"messages": MESSAGES, "chat_template_kwargs": {"enable_thinking": "no"}}, "chat_template_kwargs",
     "enable_thinking"),
])
def test_bad_chat_requests_get_400_naming_the_field(server, body, param, message):
    r = _post(server, "/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param and message in error["message"]


def test_a_prompt_past_the_context_gets_400(server, client):
    r = _post(server, "/v1/completions", {"prompt": [7] * 5000, "max_tokens": 2})
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == "prompt" and error["code"] == "context_length_exceeded"
    assert "5000 tokens" in error["message"] and "4096" in error["message"]
    with pytest.raises(openai.BadRequestError, match="context holds 4096"):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "experts " * 5000}])
    r = _post(server, "/v1/completions", {"prompt": [1, 99999]})
    assert r.status_code == 400 and "outside the vocabulary" in r.json()["error"]["message"]


def test_unknown_fields_are_ignored_and_the_server_survives_bad_requests(server, client):
    r = _post(server, "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 2, "user": "u1",
                                              "parallel_tool_calls": False, "made_up": {"x": 1}})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    for junk in (b"\xff\xfe", b"", b"null", json.dumps({"messages": [{"role": "user", "content": [{"type": "image"}]}]})):
        assert _post(server, "/v1/chat/completions", junk).status_code == 400
    assert client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=2).usage.completion_tokens == 2


def test_thinking_switch_and_tools_reach_the_template(client):
    """enable_thinking false and tools change the prompt the template renders (usage shows its length)."""
    plain = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=1)
    no_think = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=1,
                                              extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    with_tools = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=1, tools=tools)
    assert no_think.usage.prompt_tokens > plain.usage.prompt_tokens  # the empty <think></think>
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens + 20
    history = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"}]
    after_call = client.chat.completions.create(model="m", messages=history, max_tokens=1, tools=tools)
    assert after_call.usage.prompt_tokens > with_tools.usage.prompt_tokens


def test_a_full_queue_gets_503_with_retry_after(model_path):
    # a context longer than the model's (a warning) so that the first request runs for many seconds
    server = Server("--model", model_path, "--parallel", "1", "--max-queue", "1", "--ctx", "32768",
                    "--threads", "1")
    try:
        server.wait_ready()
        long_body = {"prompt": [1, 2, 3], "max_tokens": 32000, "temperature": 0, "stream": True}
        with httpx.stream("POST", server.url + "/v1/completions", json=long_body, timeout=REQUEST_TIMEOUT) as first:
            lines = first.iter_lines()  # kept: a dropped iterator would close the response
            next(lines)  # it holds the only slot now
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(httpx.post, server.url + "/v1/completions",
                                      json={"prompt": [4, 5], "max_tokens": 3}, timeout=REQUEST_TIMEOUT)
                deadline = time.monotonic() + 10
                while not _metric(server, "moecc_requests_queued") and time.monotonic() < deadline:
                    time.sleep(0.02)
                r = httpx.post(server.url + "/v1/completions", json={"prompt": [6], "max_tokens": 3}, timeout=10)
                assert r.status_code == 503, r.text
                assert int(r.headers["retry-after"]) >= 1
                assert r.json()["error"]["code"] == "queue_full"
                first.close()  # its client goes away: the waiting request gets the slot and finishes
                done = waiting.result(timeout=REQUEST_TIMEOUT)
        assert done.status_code == 200 and done.json()["usage"]["completion_tokens"] == 3
    finally:
        server.stop()


def test_a_model_that_fails_to_load_is_reported_and_the_server_exits(tmp_path):
    bad = tmp_path / "broken.moecc"
    bad.write_bytes(b"MOECC" + bytes(100))
    server = Server("--model", str(bad))
    try:
        assert server.proc.wait(START_TIMEOUT) == 1
    finally:
        server.stop()
    time.sleep(0.1)  # the reader thread takes the last lines
    lines = "".join(server.lines)
    assert "moecc-serve: error: the model failed to load:" in lines and str(bad) in lines


def test_health_says_loading_then_the_load_error(model_path):
    """The app before its model is ready (in process: the real app, no server)."""
    from fastapi.testclient import TestClient
    from moecc.server.http import ServerState, create_app
    state = ServerState("m")
    with TestClient(create_app(state)) as http:
        r = http.get("/health")
        assert r.status_code == 503 and r.json() == {"status": "loading"}
        r = http.post("/v1/completions", json={"prompt": "x"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "loading" in r.json()["error"]["message"]

        def fail():
            raise OSError("disk on fire")
        with pytest.raises(OSError):
            state.load(fail, max_queue=1)
        r = http.get("/health")
        assert r.status_code == 500 and r.json() == {"status": "error", "message": "disk on fire"}


@pytest.mark.parametrize("args, message", [
    (["--parallel", "0"], "--parallel must be at least 1"),
    (["--max-queue", "-1"], "--max-queue must be 0 or more"),
    (["--port", "70000"], "--port must be in 0..65535"),
])
def test_bad_flags_are_one_line_errors(model_path, capsys, args, message):
    from moecc import serve
    assert serve.main(["--model", model_path, *args]) == 2
    assert capsys.readouterr().err.strip() == f"moecc-serve: error: {message}, got {args[1]}"


def test_a_missing_model_file_is_a_one_line_error(tmp_path, capsys):
    from moecc import serve
    assert serve.main(["--model", str(tmp_path / "none.moecc")]) == 2
    assert "no such file" in capsys.readouterr().err
