"""Synthetic Hugging Face checkpoints with the geometry of Qwen3-30B-A3B, for benchmarks.

    python tools/make_synthetic.py --layers 8 --out /work/scratch/syn8

writes what a download of Qwen/Qwen3-30B-A3B holds, with random weights and fewer layers:
config.json, generation_config.json, model-0000K-of-0000N.safetensors shards (about 4 GB each)
with model.safetensors.index.json, and tokenizer.json / tokenizer_config.json / vocab.json /
merges.txt.  Both moecc-convert and llama.cpp's convert_hf_to_gguf.py read it, so the two
engines can be timed on the same weights.

Weights are bf16 draws of N(0, 0.02²) (norms are 1.0), per-expert keys as published
(`model.layers.L.mlp.experts.E.gate_proj.weight`).  A draw is a lookup of a random uint16 in
a table of the 65,536 quantile midpoints of that normal, rounded to bf16: exactly normal to
bf16 resolution (tails cut at 4.3 sigma), and several times faster than drawing floats and
rounding them.  Tensors stream to disk in chunks from two worker threads, so memory stays at a
few chunks whatever the checkpoint's size; each chunk has its own seed, so the output does not
depend on the thread count.

`write_quantized_model` (make_synthetic.py --quant q4, moecc-bench --synthetic) skips the
checkpoint: it writes the q4 / q8 .moecc file moecc-convert would make from one, straight from
random quantized values, so the full 48-layer model (17 GB at q4) needs no 61 GB bf16 source.

The tokenizer is a byte-level BPE with Qwen2's pre-tokenizer and exactly Qwen's layout: 151,643
regular tokens (256 bytes, then synthetic word-like merges) and Qwen3's 26 added tokens at ids
151,643.. (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, ...).  Its merges are not Qwen's, so
text encodes into different ids than the real model's; for timing that does not matter.
"""
from __future__ import annotations

import json
import os
import statistics
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

QUANTIZED = ("q8", "q4")  # what write_quantized_model writes

# config.json of Qwen/Qwen3-30B-A3B, but for num_hidden_layers / max_window_layers (set per call)
QWEN3_30B_A3B_CONFIG = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "decoder_sparse_step": 1,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 6144,
    "max_position_embeddings": 40960,
    "max_window_layers": 48,
    "mlp_only_layers": [],
    "model_type": "qwen3_moe",
    "moe_intermediate_size": 768,
    "norm_topk_prob": True,
    "num_attention_heads": 32,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 48,
    "num_key_value_heads": 4,
    "output_router_logits": False,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "router_aux_loss_coef": 0.001,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

GENERATION_CONFIG = {
    "bos_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
    "temperature": 0.6,
    "top_k": 20,
    "top_p": 0.95,
    "transformers_version": "4.51.0",
}

WEIGHT_STD = 0.02
DEFAULT_SHARD_BYTES = 4 << 30
_CHUNK_ELEMENTS = 8 << 20  # 16 MB of bf16 per generated chunk
_BF16_ONE = 0x3F80

# --------------------------------------------------------------------------------------------
# tokenizer

QWEN_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN_REGULAR_TOKENS = 151643  # ids below this are BPE tokens; Qwen's added tokens follow
# Qwen3's added tokens in id order: (content, special).  The tool / think tags are not special.
QWEN3_ADDED_TOKENS = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", True), ("<|fim_middle|>", True), ("<|fim_suffix|>", True), ("<|fim_pad|>", True),
    ("<|repo_name|>", True), ("<|file_sep|>", True), ("<tool_response>", False),
    ("</tool_response>", False), ("<think>", False), ("</think>", False),
]
# ChatML, as Qwen's templates render plain conversations (no tools, no thinking switches)
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map; its insertion order is Qwen's ids 0..255."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def bpe_vocab_and_merges(n_regular: int, seed: int = 0) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """`n_regular` byte-level BPE tokens: the 256 bytes, a few whitespace runs, then word-like
    merges (a word piece, with or without a leading space, extended by a letter run), drawn at
    random but every one a valid merge of two earlier tokens."""
    byte_char = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(byte_char.values())}
    merges: list[tuple[str, str]] = []

    def add(a: str, b: str) -> bool:
        if len(vocab) >= n_regular or a + b in vocab:
            return False
        vocab[a + b] = len(vocab)
        merges.append((a, b))
        return True

    space, newline = byte_char[ord(" ")], byte_char[ord("\n")]  # "Ġ", "Ċ"
    for a, b in [(space, space), (newline, newline), (space * 2, space * 2), (space * 4, space * 4)]:
        add(a, b)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    for c in letters:
        add(space, c)
    heads = letters + [space + c for c in letters]  # pieces that may start a word
    tails = letters[:]  # pieces that may continue one
    rng = np.random.default_rng(seed)
    while len(vocab) < n_regular:
        u = rng.random((2, 4096))
        for ua, ub in zip(u[0], u[1]):
            # favour early (short, common) pieces, as real merge lists do
            a = heads[int(len(heads) * ua * ua)]
            b = tails[int(len(tails) * ub * ub * ub)]
            if len(a) + len(b) <= 12 and add(a, b):
                heads.append(a + b)
                if a[0] != space:
                    tails.append(a + b)
            if len(vocab) >= n_regular:
                break
    return vocab, merges


def build_tokenizer(n_regular: int = QWEN_REGULAR_TOKENS):
    """A `tokenizers.Tokenizer` laid out like Qwen3's: BPE ids 0..n_regular-1, added tokens after."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    vocab, merges = bpe_vocab_and_merges(n_regular)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None,
                               continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                               byte_fallback=False, ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    for content, special in QWEN3_ADDED_TOKENS:
        at = AddedToken(content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=special)
        (tok.add_special_tokens if special else tok.add_tokens)([at])
    for i, (content, _) in enumerate(QWEN3_ADDED_TOKENS):
        assert tok.token_to_id(content) == n_regular + i, content
    return tok, vocab, merges


def tokenizer_files(vocab_size: int) -> tuple[dict[str, bytes], int]:
    """tokenizer.json, tokenizer_config.json, vocab.json, merges.txt as bytes, and the
    <|endoftext|> id (the number of regular tokens)."""
    n_regular = min(QWEN_REGULAR_TOKENS, vocab_size - len(QWEN3_ADDED_TOKENS))
    if n_regular < 256 + 4 + 52:
        raise ValueError(f"vocab_size {vocab_size} is too small for a byte-level BPE with Qwen's added tokens")
    tok, vocab, merges = build_tokenizer(n_regular)
    added = {str(n_regular + i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                                  "single_word": False, "special": s}
             for i, (c, s) in enumerate(QWEN3_ADDED_TOKENS)}
    config = {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added,
        "additional_special_tokens": [c for c, _ in QWEN3_ADDED_TOKENS[1:14]],
        "bos_token": None, "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": 131072,
        "pad_token": "<|endoftext|>", "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    files = {
        "tokenizer.json": tok.to_str(pretty=True).encode(),
        "vocab.json": json.dumps(vocab, ensure_ascii=False, separators=(",", ":")).encode(),
        "merges.txt": ("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)).encode(),
        "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False).encode(),
    }
    return files, n_regular


def synthetic_files(layers: int, vocab_size: int | None = None, **overrides) -> tuple[dict, dict[str, bytes]]:
    """The config dict and every non-weight file of a synthetic checkpoint with `layers` layers
    (config.json, generation_config.json and the tokenizer files), as bytes.  `overrides`
    replace config.json keys (e.g. hidden_size=64 for a tiny test model)."""
    cfg = dict(QWEN3_30B_A3B_CONFIG, num_hidden_layers=layers, max_window_layers=layers)
    if vocab_size is not None:
        cfg["vocab_size"] = vocab_size
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}")
    cfg.update(overrides)
    if layers < 1:
        raise ValueError("layers must be at least 1")
    files, n_regular = tokenizer_files(cfg["vocab_size"])
    gen = dict(GENERATION_CONFIG)
    if n_regular != QWEN_REGULAR_TOKENS:  # a small vocabulary moves the added tokens down
        cfg.update(bos_token_id=n_regular, eos_token_id=n_regular + 2)
        gen.update(bos_token_id=n_regular, eos_token_id=[n_regular + 2, n_regular], pad_token_id=n_regular)
    for name, data in (("config.json", cfg), ("generation_config.json", gen)):
        files[name] = (json.dumps(data, indent=2) + "\n").encode()
    return cfg, files


# --------------------------------------------------------------------------------------------
# weights


@dataclass(frozen=True)
class SyntheticTensor:
    name: str  # Hugging Face key
    shape: tuple[int, ...]
    fill: str  # "normal" (N(0, 0.02^2)) or "ones"

    @property
    def nbytes(self) -> int:
        return 2 * int(np.prod(self.shape, dtype=np.int64))


def hf_tensors(cfg: dict) -> list[SyntheticTensor]:
    """The tensors of a qwen3_moe checkpoint, with the published names (experts one by one)."""
    D, hd, E = cfg["hidden_size"], cfg["head_dim"], cfg["num_experts"]
    V, I, Id = cfg["vocab_size"], cfg["moe_intermediate_size"], cfg["intermediate_size"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    out = [SyntheticTensor("model.embed_tokens.weight", (V, D), "normal")]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        out += [SyntheticTensor(p + "input_layernorm.weight", (D,), "ones"),
                SyntheticTensor(p + "self_attn.q_proj.weight", (q, D), "normal"),
                SyntheticTensor(p + "self_attn.k_proj.weight", (kv, D), "normal"),
                SyntheticTensor(p + "self_attn.v_proj.weight", (kv, D), "normal"),
                SyntheticTensor(p + "self_attn.o_proj.weight", (D, q), "normal"),
                SyntheticTensor(p + "self_attn.q_norm.weight", (hd,), "ones"),
                SyntheticTensor(p + "self_attn.k_norm.weight", (hd,), "ones"),
                SyntheticTensor(p + "post_attention_layernorm.weight", (D,), "ones")]
        sparse = (layer not in cfg["mlp_only_layers"] and E > 0
                  and (layer + 1) % cfg["decoder_sparse_step"] == 0)
        if sparse:
            out.append(SyntheticTensor(p + "mlp.gate.weight", (E, D), "normal"))
            for e in range(E):
                out += [SyntheticTensor(p + f"mlp.experts.{e}.gate_proj.weight", (I, D), "normal"),
                        SyntheticTensor(p + f"mlp.experts.{e}.up_proj.weight", (I, D), "normal"),
                        SyntheticTensor(p + f"mlp.experts.{e}.down_proj.weight", (D, I), "normal")]
        else:
            out += [SyntheticTensor(p + "mlp.gate_proj.weight", (Id, D), "normal"),
                    SyntheticTensor(p + "mlp.up_proj.weight", (Id, D), "normal"),
                    SyntheticTensor(p + "mlp.down_proj.weight", (D, Id), "normal")]
    out.append(SyntheticTensor("model.norm.weight", (D,), "ones"))
    if not cfg["tie_word_embeddings"]:
        out.append(SyntheticTensor("lm_head.weight", (V, D), "normal"))
    return out


def normal_bf16_table(std: float = WEIGHT_STD) -> np.ndarray:
    """uint16 [65536]: bf16 bits of the 65,536 quantile midpoints of N(0, std^2); a uniform
    random uint16 indexes it to draw one weight."""
    inv = statistics.NormalDist(0.0, std).inv_cdf
    values = np.array([inv((i + 0.5) / 65536) for i in range(65536)], np.float32)
    bits = values.view(np.uint32)
    return ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)


def _chunk(table: np.ndarray, seed: int, name: str, index: int, count: int) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), index])
    return table[np.frombuffer(rng.bytes(2 * count), np.uint16)]


def _shards(tensors: list[SyntheticTensor], shard_bytes: int) -> list[list[SyntheticTensor]]:
    shards: list[list[SyntheticTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def _header(tensors: list[SyntheticTensor]) -> bytes:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for t in tensors:
        header[t.name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    return blob + b" " * (-len(blob) % 8)


def _chunks(tensors: list[SyntheticTensor], seed: int, table: np.ndarray,
            pool: ThreadPoolExecutor) -> Iterator[np.ndarray]:
    """The bytes of `tensors` in order, generated a few chunks ahead on the pool."""
    ones = np.full(_CHUNK_ELEMENTS, _BF16_ONE, np.uint16)
    jobs = []
    for t in tensors:
        n = t.nbytes // 2
        for i, start in enumerate(range(0, n, _CHUNK_ELEMENTS)):
            count = min(_CHUNK_ELEMENTS, n - start)
            jobs.append((t, i, count))
    pending: list = []
    for t, i, count in jobs:
        if t.fill == "ones":
            pending.append(ones[:count])
        else:
            pending.append(pool.submit(_chunk, table, seed, t.name, i, count))
        while len(pending) > 6:
            head = pending.pop(0)
            yield head if isinstance(head, np.ndarray) else head.result()
    for head in pending:
        yield head if isinstance(head, np.ndarray) else head.result()


def make_checkpoint(out_dir: str, layers: int = 8, vocab_size: int | None = None, seed: int = 0,
                    shard_bytes: int = DEFAULT_SHARD_BYTES, threads: int = 2, progress: bool = True,
                    **overrides) -> dict:
    """Write a synthetic Qwen3-30B-A3B-shaped checkpoint with `layers` layers into `out_dir`.
    `overrides` replace config.json keys (e.g. hidden_size=64 for a tiny test model).
    Returns {"bytes": weight bytes written, "shards": count, "config": the config dict}."""
    cfg, files = synthetic_files(layers, vocab_size, **overrides)
    os.makedirs(out_dir, exist_ok=True)
    for name, blob in files.items():
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(blob)

    tensors = hf_tensors(cfg)
    shards = _shards(tensors, shard_bytes)
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for f in os.listdir(out_dir):  # shards of an earlier, differently split checkpoint
        if f.endswith(".safetensors") and f not in names:
            os.remove(os.path.join(out_dir, f))
    table = normal_bf16_table()
    total = sum(t.nbytes for t in tensors)
    done = 0
    from tqdm import tqdm
    with ThreadPoolExecutor(max(1, threads)) as pool, \
            tqdm(total=total, unit="B", unit_scale=True, disable=not progress, desc=os.path.basename(out_dir)) as bar:
        for shard_name, shard in zip(names, shards):
            path = os.path.join(out_dir, shard_name)
            header = _header(shard)
            with open(path + ".partial", "wb") as f:
                f.write(struct.pack("<Q", len(header)))
                f.write(header)
                for chunk in _chunks(shard, seed, table, pool):
                    f.write(memoryview(chunk).cast("B"))
                    bar.update(chunk.nbytes)
                    done += chunk.nbytes
            os.replace(path + ".partial", path)
    index = {"metadata": {"total_size": total},
             "weight_map": {t.name: n for n, shard in zip(names, shards) for t in shard}}
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    return {"bytes": done, "shards": len(shards), "config": cfg}


# --------------------------------------------------------------------------------------------
# a quantized .moecc file straight from random bits

SYNTHETIC_MODEL = "qwen3-30b-a3b"  # the geometry write_quantized_model makes (moecc-bench --synthetic)
_BLOCK_BYTES = 16 << 20  # quantized tensors are generated and written in row blocks of about this size


def _quant_levels(dtype: str) -> np.ndarray:
    """The values a uniformly random stored byte (q8) or nibble (q4) decodes to, before the scale."""
    if dtype == "q4":
        return np.arange(16) - 8
    return np.maximum(np.arange(256, dtype=np.uint8).view(np.int8), -127)  # q8 never stores -128


def quantized_scale(dtype: str, std: float = WEIGHT_STD) -> float:
    """The group scale at which uniformly random quantized values have standard deviation `std`
    (the scale's sign is random too, so the weights average to zero)."""
    return std / float(np.sqrt(np.mean(np.square(_quant_levels(dtype), dtype=np.float64))))


def _random_rows(name: str, rows: int, K: int, scale: np.uint16, rng: np.random.Generator) -> np.ndarray:
    """uint8 [rows, row_bytes]: uniformly random q4 nibbles / q8 values, and fp16 block scales of
    magnitude `scale` (fp16 bits) with random signs -- all cut from one draw of raw bits (SFC64's
    raw output is ~4 GB/s, several times faster than rng.bytes)."""
    from .quant import GROUP, assemble
    value_bytes = K if name == "q8" else K // 2
    width = value_bytes + 2 * (K // GROUP)
    raw = rng.bit_generator.random_raw(-(-rows * width // 8)).view(np.uint8)[:rows * width].reshape(rows, width)
    values, scales = raw[:, :value_bytes], raw[:, value_bytes:].view(np.uint16)
    if name == "q8":
        np.maximum(values.view(np.int8), -127, out=values.view(np.int8))
    scales &= np.uint16(0x8000)
    scales |= scale
    return assemble(name, values, scales.view(np.float16))


def _quantized_model_parts(spec, name: str, seed: int, scale: np.uint16, normal: np.ndarray) -> Iterator[np.ndarray]:
    """The bytes of one tensor of write_quantized_model's file, in file order, in bounded blocks."""
    from . import storage
    from .quant import PANEL_ROWS, bf16_to_f32, to_panels
    count = int(np.prod(spec.shape))
    if spec.role == "norm":
        yield np.ones(count, np.float32)
    elif name == "f32":  # the router
        yield bf16_to_f32(_chunk(normal, seed, spec.name, 0, count))
    else:
        K = spec.shape[-1]
        rows = count // K
        # blocks of whole q4p panels; a q4p block is q4 rows laid out as panels
        step = max(PANEL_ROWS, _BLOCK_BYTES // storage.get(name).row_bytes(K) // PANEL_ROWS * PANEL_ROWS)
        for index, start in enumerate(range(0, rows, step)):
            rng = np.random.Generator(np.random.SFC64([seed, zlib.crc32(spec.name.encode()), index]))
            if name == "q4p":
                yield to_panels(_random_rows("q4", min(step, rows - start), K, scale, rng), K)
            else:
                yield _random_rows(name, min(step, rows - start), K, scale, rng)


def write_quantized_model(path: str, layers: int, quant: str = "q4", seed: int = 0,
                          vocab_size: int | None = None, progress: bool = True, **overrides) -> dict:
    """Write a .moecc file of Qwen3-30B-A3B's geometry with `layers` layers straight from random
    quantized data: the file moecc-convert would write from a synthetic checkpoint with
    `--quant quant` (same config, tensor table, embedded files), without the bf16 checkpoint
    (61 GB at 48 layers), through the converter's own write path.  Quantized values are
    uniformly random, block scales are +-quantized_scale(quant) so the weights have the
    checkpoint's std of 0.02; norms are 1.0; the router is f32 as the converter stores it, drawn
    as the checkpoint's bf16 weights are.  Tensors stream to the file in row blocks, so memory
    stays at one block.  `overrides` replace config keys (a tiny geometry for tests).  Returns
    {"bytes": file size, "config": config dict}."""
    from . import __version__
    from .config import Qwen3MoeConfig, tensor_specs
    from .convert import StoragePlan, write_model
    from .formats.huggingface import EMBEDDED_FILES
    if quant not in QUANTIZED:
        raise ValueError(f"quant must be one of {', '.join(QUANTIZED)}, not {quant!r}")
    raw_cfg, files = synthetic_files(layers, vocab_size, **overrides)
    cfg = Qwen3MoeConfig.from_dict(raw_cfg)
    plan = StoragePlan(quant)
    info = {"moecc": __version__, "source": SYNTHETIC_MODEL, "quant": quant,
            "overrides": {}, "synthetic": {"model": SYNTHETIC_MODEL, "layers": layers, "seed": seed}}
    embedded = {name: files[name] for name in EMBEDDED_FILES if name in files}  # as the converter embeds
    scale = np.array(quantized_scale(quant), np.float16).view(np.uint16)
    normal = normal_bf16_table()
    tensors = [(spec, plan.storage(spec), _quantized_model_parts(spec, plan.storage(spec), seed, scale, normal))
               for spec in tensor_specs(cfg)]
    write_model(path, cfg.to_dict(), tensors, embedded, info, progress)
    return {"bytes": os.path.getsize(path), "config": raw_cfg}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import time
    ap = argparse.ArgumentParser(
        prog="make_synthetic",
        description="Write a random-weight Hugging Face checkpoint with Qwen3-30B-A3B's geometry "
                    "(8 layers: about 11 GB) for benchmarks; moecc-convert and llama.cpp both read it. "
                    "With --quant q4 / q8, write a quantized .moecc file directly instead (48 layers "
                    "at q4: about 17 GB), with no checkpoint.")
    ap.add_argument("--out", required=True, help="folder to write (created; its old shards are replaced), "
                                                 "or with --quant the .moecc file")
    ap.add_argument("--layers", type=int, default=8, help="decoder layers (the real model has 48); default 8")
    ap.add_argument("--vocab", type=int, default=None, help="vocab_size (default 151936, the real one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quant", choices=QUANTIZED, default=None,
                    help="write a .moecc file of this storage type from random quantized data")
    ap.add_argument("--shard-gb", type=float, default=4.0, help="shard size limit in GiB; default 4")
    ap.add_argument("--threads", type=int, default=2, help="generator threads; default 2")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    started = time.perf_counter()
    if a.quant:
        stats = write_quantized_model(a.out, layers=a.layers, quant=a.quant, seed=a.seed, vocab_size=a.vocab, progress=not a.quiet)
        what = "in one .moecc file"
    else:
        stats = make_checkpoint(a.out, layers=a.layers, vocab_size=a.vocab, seed=a.seed,
                                shard_bytes=int(a.shard_gb * (1 << 30)), threads=a.threads, progress=not a.quiet)
        what = f"of weights in {stats['shards']} shards"
    seconds = time.perf_counter() - started
    print(f"wrote {a.out}: {stats['bytes'] / 1e9:.2f} GB {what}, "
          f"{seconds:.0f} s ({stats['bytes'] / 1e6 / seconds:.0f} MB/s)")
    return 0
