"""The scheduler (continuous batching), driven step by step: a sequence's tokens and logits do not
depend on its neighbours, prompts longer than a step are chunked between decode steps, a new
request goes to the slot holding its longest prefix, cancelling frees the slot, the queue is bounded."""
import numpy as np
import pytest

import moecc
from conftest import Reference, relative_error
from moecc.engine import LoadedModel
from moecc.sampler import SamplingParams, log_softmax
from moecc.server.metrics import Metrics
from moecc.server.scheduler import Job, QueueFull, Scheduler

TOLERANCE = 1e-5  # relative to the logits' scale, as tests/test_step.py
GREEDY = SamplingParams(temperature=0)
MAX_STEPS = 10_000  # no test loop runs unbounded


@pytest.fixture(scope="module")
def path(converted):
    return converted("main", "f32")


def _scheduler(path, slots, max_queue=64, ctx=512):
    model = LoadedModel(path, threads=2, ctx=ctx, kv_cache="f32", slots=slots)
    return Scheduler(model, max_queue, Metrics())


def _job(ids, max_tokens, outputs, params=GREEDY, top_logprobs=None, stops=()):
    return Job(ids=np.asarray(ids, np.int32), max_tokens=max_tokens, params=params, stops=list(stops),
               emit=outputs.append, top_logprobs=top_logprobs)


def _run_until_done(scheduler, outputs_of_jobs):
    for _ in range(MAX_STEPS):
        if all(outs and outs[-1].finish_reason for outs in outputs_of_jobs):
            return
        scheduler.step()
    raise AssertionError("the jobs did not finish")


def test_eight_sequences_together_each_equal_alone_and_transformers(path):
    """Greedy, f32 file and cache: each of 8 concurrent sequences (different lengths, started at
    different steps) gives the tokens it gives alone (and transformers' for its fixture prompts),
    and every step's logits within 1e-5 of the single-sequence Model's."""
    reference = Reference("main")
    rng = np.random.default_rng(11)
    prompts = [p.tolist() for p, _ in reference.greedy()] * 2
    prompts += [rng.integers(0, 768, n).tolist() for n in (1, 7, 300, 33)]  # 300: longer than a step's rows
    max_tokens = [24, 24, 24, 24, 5, 17, 9, 30]
    alone = moecc.load(path, threads=2, ctx=512, kv_cache="f32")
    solo = [[s.token for s in alone.generate(p, n, temperature=0)] for p, n in zip(prompts, max_tokens)]
    for (prompt, expected), tokens in zip(reference.greedy(), solo):
        assert tokens == expected.tolist()  # the single-sequence engine is transformers' greedy

    scheduler = _scheduler(path, slots=8)
    vocab = scheduler.model.config.vocab_size
    outputs = [[] for _ in prompts]
    jobs = [_job(p, n, out, top_logprobs=vocab) for p, n, out in zip(prompts, max_tokens, outputs)]
    for job in jobs[:3]:  # some start while others are already decoding
        scheduler.submit(job)
    scheduler.step()
    scheduler.step()
    for job in jobs[3:]:
        scheduler.submit(job)
    _run_until_done(scheduler, outputs)

    for i, (prompt, outs) in enumerate(zip(prompts, outputs)):
        tokens = [o.token for o in outs]
        assert tokens == solo[i], f"sequence {i}"
        expected = log_softmax_rows(alone.logits(prompt + tokens[:-1])[len(prompt) - 1:])
        got = np.full((len(outs), vocab), np.nan, np.float32)
        for row, o in enumerate(outs):
            ids, values = zip(*o.top_logprobs)
            got[row, list(ids)] = values
            assert o.logprob == pytest.approx(got[row, o.token])
        assert relative_error(got, expected) <= TOLERANCE, f"sequence {i}"
    assert scheduler.busy_slots == 0
    usage = outputs[0][-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (len(prompts[0]), 24)


def log_softmax_rows(logits):
    return np.stack([log_softmax(row) for row in logits])


def test_a_long_prompt_stalls_running_streams_by_one_chunk_at_most(path):
    scheduler = _scheduler(path, slots=2)
    rows = scheduler.model.net.rows
    running, long_prompt = [], []
    scheduler.submit(_job([5, 6, 7], 100, running))
    scheduler.step()  # its prompt, and its first token
    scheduler.submit(_job(list(range(700)), 3, long_prompt))
    steps = -(-700 // (rows - 1))  # each step: the running stream's token, then as much prompt as fits
    for step in range(1, steps + 1):
        assert not long_prompt
        scheduler.step()
        assert len(running) == 1 + step  # the running stream got a token every step
    assert len(long_prompt) == 1


def test_a_new_request_goes_to_the_slot_holding_its_longest_prefix(path):
    scheduler = _scheduler(path, slots=3)
    firsts = [list(range(10, 40)), list(range(100, 150)), list(range(200, 220))]
    done = [[] for _ in firsts]
    for prompt, out in zip(firsts, done):
        scheduler.submit(_job(prompt, 2, out))
    _run_until_done(scheduler, done)
    follow_up = firsts[1] + [done[1][0].token, 7, 8, 9]  # the second conversation's next turn
    out = []
    job = _job(follow_up, 2, out)
    scheduler.submit(job)
    _run_until_done(scheduler, [out])
    assert job.slot.index == 1
    assert out[-1].usage.cached_tokens == len(firsts[1]) + 1
    # the same tokens as from an empty cache
    fresh = _scheduler(path, slots=1)
    again = []
    fresh.submit(_job(follow_up, 2, again))
    _run_until_done(fresh, [again])
    assert [o.token for o in again] == [o.token for o in out] and again[-1].usage.cached_tokens == 0


def test_cancelling_frees_the_slot_and_the_others_go_on(path):
    scheduler = _scheduler(path, slots=2)
    kept, cancelled, waiting = [], [], []
    keep = _job([1, 2, 3], 12, kept)
    cancel = _job([4, 5, 6], 1000, cancelled)
    later = _job([7, 8], 4, waiting)
    for job in (keep, cancel, later):
        scheduler.submit(job)
    scheduler.step()
    scheduler.step()
    assert scheduler.busy_slots == 2 and not waiting
    scheduler.cancel(cancel)
    _run_until_done(scheduler, [kept, waiting])
    assert len(cancelled) == 2 and cancelled[-1].finish_reason is None  # no output after the cancel
    assert later.slot is cancel.slot
    alone = moecc.load(path, threads=2, ctx=512, kv_cache="f32")
    assert [o.token for o in kept] == [s.token for s in alone.generate([1, 2, 3], 12, temperature=0)]
    assert scheduler.busy_slots == 0


def test_a_cancelled_waiting_request_leaves_the_queue(path):
    scheduler = _scheduler(path, slots=1, max_queue=1)
    first, second = _job([1, 2], 50, []), _job([3, 4], 5, [])
    scheduler.submit(first)
    scheduler.step()
    scheduler.submit(second)
    with pytest.raises(QueueFull, match="1 requests are waiting"):
        scheduler.submit(_job([5], 5, []))
    scheduler.cancel(second)
    scheduler.submit(_job([5], 5, []))  # its place in the queue is free again


def test_stop_strings_and_seeds_as_the_single_sequence_model(path):
    alone = moecc.load(path, threads=2, ctx=512, kv_cache="f32")
    params = alone.sampling_params(temperature=0.9, top_k=50, seed=123, frequency_penalty=0.5)
    expected = list(alone.generate([3, 1, 4, 1, 5], 20, temperature=0.9, top_k=50, seed=123, frequency_penalty=0.5))
    text = "".join(s.text for s in expected)
    stop = text[len(text) // 2:len(text) // 2 + 3]
    expected_cut = "".join(s.text for s in alone.generate([3, 1, 4, 1, 5], 20, temperature=0.9, top_k=50, seed=123,
                                                          frequency_penalty=0.5, stop=[stop]))
    scheduler = _scheduler(path, slots=3)
    plain, cut, other = [], [], []
    scheduler.submit(_job([3, 1, 4, 1, 5], 20, plain, params=params))
    scheduler.submit(_job([3, 1, 4, 1, 5], 20, cut, params=params, stops=[stop]))
    scheduler.submit(_job([9, 9], 20, other, params=alone.sampling_params(temperature=1.0, seed=5)))
    _run_until_done(scheduler, [plain, cut, other])
    assert [o.token for o in plain] == [s.token for s in expected]
    assert "".join(o.text for o in cut) == expected_cut and cut[-1].finish_reason == "stop"
    assert stop not in expected_cut


def test_a_failing_step_fails_its_jobs_and_the_engine_goes_on(path):
    """Requests are checked before they reach the scheduler; should a step raise anyway, its jobs
    get an EngineFailure, their slots are freed and the next job runs normally."""
    from moecc.server.scheduler import EngineFailure
    scheduler = _scheduler(path, slots=2)
    broken, beside, after = [], [], []
    scheduler.submit(_job([1, 2], 5, beside))
    scheduler.submit(_job([10**6], 5, broken))  # outside the vocabulary: the step refuses it
    scheduler.step()
    assert isinstance(broken[-1], EngineFailure) and "outside" in str(broken[-1])
    assert isinstance(beside[-1], EngineFailure) and scheduler.busy_slots == 0
    scheduler.submit(_job([1, 2], 5, after))
    _run_until_done(scheduler, [after])
    alone = moecc.load(path, threads=2, ctx=512, kv_cache="f32")
    assert [o.token for o in after] == [s.token for s in alone.generate([1, 2], 5, temperature=0)]
