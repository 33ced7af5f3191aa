"""Train a small Qwen3-MoE model on the Python standard library's sources: a checkpoint with
learned weights, for measuring quantization quality (moecc-perplexity) and for the demo.

    /work/venv-torch/bin/python tools/train_tiny.py -o /work/scratch/quality/tiny            # the test model
    /work/venv-torch/bin/python tools/train_tiny.py --size demo -o /work/scratch/quality/demo

Needs torch and transformers (never the tests).  Writes a Hugging Face checkpoint folder
(bf16 safetensors, config.json, generation_config.json, tokenizer.json, tokenizer_config.json),
train_log.json (settings, loss curve, held-out perplexity) and held_out.txt (the held-out
files, joined by blank lines: a text for moecc-perplexity).

Corpus (tools/stdlib_corpus.py): every `.py` file under `sysconfig.get_paths()["stdlib"]` (sources and their docstrings),
except site-packages and the test suites (directories named test, tests, idle_test), read as
UTF-8 (the few files that are not are skipped).  The split is by file and fixed:
a file is held out when zlib.crc32 of its path relative to the stdlib directory (with "/"
separators) is 0 mod 10 -- about a tenth of the files, the same ones on every machine with the
same Python.  The tokenizer and the model only ever see the training files.

Tokenizer: byte-level BPE trained with `tokenizers` on the training files, Qwen3's pipeline
(NFC, Qwen2's pre-tokenizer regex) and added tokens after the BPE ids (<|endoftext|>,
<|im_start|>, <|im_end|>, <think>, </think>, <tool_call>, </tool_call>, ...), Qwen3's chat
template (tests/data/qwen3_chat_template.jinja).  Files are joined with <|endoftext|>.

Model (--size test): 4 layers, hidden 256, 4 query heads and 2 KV heads of 64, 16 experts of
width 256 (top 2, norm_topk_prob), vocabulary 4096, untied lm_head: every matrix's input width
is 256, so every K quantization type applies.  --size demo is smaller (see SIZES).  AdamW with
warmup and cosine decay on random windows of the training tokens, the router's load-balancing
loss on (as in Qwen3's training); seeded, so a run on the same machine and Python repeats.

Held-out perplexity is scored as llama-perplexity scores it (moecc.perplexity: windows of ctx
tokens, the second half of each counted) in float32 by transformers.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from moecc import perplexity  # noqa: E402  (pure NumPy scoring; no compiled kernels)
from stdlib_corpus import corpus_files  # noqa: E402  (tools/, beside this file)
from moecc.synthetic.tokenizer import (QWEN3_ADDED_TOKENS, add_qwen3_tokens, set_qwen3_pipeline,  # noqa: E402
                                       tokenizer_config)

CHAT_TEMPLATE = ROOT / "tests" / "data" / "qwen3_chat_template.jinja"

SIZES = {
    # the test model: every input width 256 (K types), 16 experts (llama-quantize special-cases 8)
    "test": dict(vocab=4096, hidden=256, layers=4, heads=4, kv_heads=2, head_dim=64, experts=16, top_k=2,
                 moe_width=256, seq=256, batch=8, steps=120, lr=5e-3),
    # the bundled demo: a few MB in bf16
    "demo": dict(vocab=2048, hidden=128, layers=4, heads=4, kv_heads=2, head_dim=32, experts=8, top_k=2,
                 moe_width=128, seq=256, batch=8, steps=400, lr=5e-3),
}


def train_tokenizer(texts: list[str], vocab: int) -> Tokenizer:
    n_regular = vocab - len(QWEN3_ADDED_TOKENS)
    tok = Tokenizer(models.BPE(dropout=None, unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                               fuse_unk=False, byte_fallback=False))
    set_qwen3_pipeline(tok)
    trainer = trainers.BpeTrainer(vocab_size=n_regular, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.get_vocab_size() != n_regular:
        raise SystemExit(f"the corpus gave {tok.get_vocab_size()} BPE tokens, not {n_regular}")
    add_qwen3_tokens(tok, n_regular)
    return tok


def encode_files(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    """All files' tokens, each file followed by <|endoftext|>, as one int64 array."""
    eot = tok.token_to_id("<|endoftext|>")
    ids = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        ids += enc.ids
        ids.append(eot)
    return np.array(ids, np.int64)


def write_tokenizer(tok: Tokenizer, out: Path) -> dict:
    """tokenizer.json, tokenizer_config.json and generation_config.json; the special ids."""
    (out / "tokenizer.json").write_text(tok.to_str(pretty=True) + "\n", encoding="utf-8")
    n_regular = tok.get_vocab_size() - len(QWEN3_ADDED_TOKENS)
    config = tokenizer_config(n_regular, CHAT_TEMPLATE.read_text(encoding="utf-8"))
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
    ids = {"bos_token_id": tok.token_to_id("<|endoftext|>"),
           "eos_token_id": [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")],
           "pad_token_id": tok.token_to_id("<|endoftext|>")}
    generation = dict(ids, do_sample=True, temperature=0.6, top_k=20, top_p=0.95,
                      transformers_version=transformers.__version__)
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return ids


def model_config(size: dict, ids: dict) -> Qwen3MoeConfig:
    return Qwen3MoeConfig(
        vocab_size=size["vocab"], hidden_size=size["hidden"], num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"], num_key_value_heads=size["kv_heads"], head_dim=size["head_dim"],
        num_experts=size["experts"], num_experts_per_tok=size["top_k"], moe_intermediate_size=size["moe_width"],
        intermediate_size=4 * size["hidden"], decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True,
        tie_word_embeddings=False, rms_norm_eps=1e-6, max_position_embeddings=size["seq"],
        rope_parameters={"rope_type": "default", "rope_theta": 1e6}, hidden_act="silu", attention_bias=False,
        attention_dropout=0.0, use_sliding_window=False, initializer_range=0.02, output_router_logits=True,
        router_aux_loss_coef=0.001, bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"][0],
        pad_token_id=ids["pad_token_id"])


def learning_rate(step: int, steps: int, peak: float) -> float:
    warmup = max(1, steps // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))


def train(model: Qwen3MoeForCausalLM, tokens: np.ndarray, size: dict, steps: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=size["lr"], betas=(0.9, 0.95), weight_decay=0.1)
    seq, batch, log = size["seq"], size["batch"], []
    model.train()
    started = time.perf_counter()
    for step in range(steps):
        starts = rng.integers(0, len(tokens) - seq, batch)
        x = torch.from_numpy(np.stack([tokens[s:s + seq] for s in starts]))
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, steps, size["lr"])
        out = model(input_ids=x, labels=x)
        lm_loss = out.loss - model.config.router_aux_loss_coef * out.aux_loss  # what perplexity measures
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 10 == 0 or step == steps - 1:
            entry = {"step": step, "loss": round(lm_loss.item(), 4), "aux_loss": round(out.aux_loss.item(), 4),
                     "seconds": round(time.perf_counter() - started, 1)}
            log.append(entry)
            print(json.dumps(entry), flush=True)
    return log


@torch.no_grad()
def held_out_perplexity(model: Qwen3MoeForCausalLM, tokens: np.ndarray, ctx: int, max_windows: int) -> dict:
    """llama-perplexity's score over the first `max_windows` windows of the held-out tokens."""
    model.eval()
    windows = perplexity.windows(tokens, ctx)[:max_windows]
    scores = perplexity.TokenScores.empty()
    for window in windows:
        logits = model(input_ids=torch.from_numpy(window[None].astype(np.int64))).logits[0].float().numpy()
        scores.add(logits[perplexity.scored(ctx)], window)
    result = perplexity.summarize(scores)
    return {"ctx": ctx, "windows": len(windows), "tokens": result["tokens"], "ppl": result["ppl"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--out", required=True, help="the checkpoint folder to write (created)")
    p.add_argument("--size", choices=sorted(SIZES), default="test", help="model size preset (default: test)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--eval-windows", type=int, default=64, help="held-out windows of --size's seq length scored")
    args = p.parse_args(argv)
    size = SIZES[args.size]
    steps = size["steps"] if args.steps is None else args.steps
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    train_files, held_out_files = corpus_files()
    print(f"corpus: {stdlib}: {len(train_files)} training files, {len(held_out_files)} held out", flush=True)
    tok = train_tokenizer([text for _, text in train_files], size["vocab"])
    ids = write_tokenizer(tok, out)
    train_tokens = encode_files(tok, [text for _, text in train_files])
    held_out_tokens = encode_files(tok, [text for _, text in held_out_files])
    print(f"tokens: {len(train_tokens)} training, {len(held_out_tokens)} held out", flush=True)
    (out / "held_out.txt").write_text("\n\n".join(text for _, text in held_out_files), encoding="utf-8")

    config = model_config(size, ids)
    model = Qwen3MoeForCausalLM(config)
    log = train(model, train_tokens, size, steps, args.seed)
    model.config.output_router_logits = False
    evaluation = held_out_perplexity(model, held_out_tokens, size["seq"], args.eval_windows)
    print(f"held-out perplexity: {evaluation}", flush=True)
    model.to(torch.bfloat16).save_pretrained(str(out))

    record = {"size": args.size, "settings": dict(size, steps=steps, seed=args.seed, threads=args.threads),
              "python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
              "stdlib": str(stdlib), "train_files": len(train_files), "held_out_files": len(held_out_files),
              "train_tokens": int(len(train_tokens)), "held_out_tokens": int(len(held_out_tokens)),
              "parameters": sum(t.numel() for t in model.parameters()), "log": log, "held_out": evaluation,
              "held_out_paths": [rel for rel, _ in held_out_files]}
    (out / "train_log.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
