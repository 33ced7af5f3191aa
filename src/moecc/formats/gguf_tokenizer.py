"""A GGUF file's tokenizer, chat template and sampling defaults, as the files of a Hugging Face
checkpoint: `tokenizer.json`, `tokenizer_config.json`, `generation_config.json`.

llama.cpp's converter stores a byte-level BPE tokenizer as `tokenizer.ggml.model = "gpt2"`, the
tokens (already in byte-level spelling), the merges ("a b" pairs), a type per token and the name
of the pre-tokenizer (`tokenizer.ggml.pre`).  The Hugging Face tokenizer is rebuilt from them
with `tokenizers`: the BPE of those tokens and merges, Qwen2's pre-tokenizer (llama.cpp's regex
for LLAMA_VOCAB_PRE_TYPE_QWEN2, then byte-level) and NFC normalisation as Qwen's tokenizer.json
has, the CONTROL tokens as special added tokens and the USER_DEFINED ones (`<think>`, ...) as
ordinary added tokens, a BOS prepended only if `tokenizer.ggml.add_bos_token` says so.

Sampling defaults come from `general.sampling.*` when the file has them (llama.cpp's converter
copies them from generation_config.json); otherwise none are set, and generation uses the
sampler's own defaults (`moecc.sampler.SamplingParams`).
"""
from __future__ import annotations

import json

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from . import FormatError

# llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN2 (llama-vocab.cpp): the same split as Qwen2's tokenizer.json
QWEN2_PRETOKENIZER_REGEX = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRETOKENIZERS = ("qwen2",)  # the tokenizer.ggml.pre values moecc rebuilds
# llama_token_type (llama.h)
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 3, 4
# generation_config.json key -> general.sampling key
SAMPLING_KEYS = {"temperature": "temp", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
                 "repetition_penalty": "penalty_repeat"}
# tokens that end a turn although the file does not name them its EOS, as llama.cpp treats them
# (llama-vocab.cpp, by their text, when they are CONTROL tokens)
END_OF_GENERATION_TEXTS = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>")


def tokenizer_files(f) -> dict[str, bytes]:
    """tokenizer.json, tokenizer_config.json and generation_config.json for GGUFFile `f`."""
    model = f.value("tokenizer.ggml.model", str)
    pre = f.value("tokenizer.ggml.pre", str, "default")
    if model != "gpt2" or pre not in PRETOKENIZERS:
        raise FormatError(f"{f.path}: its tokenizer is {model!r} with pre-tokenizer {pre!r}; moecc reads "
                          f"byte-level BPE tokenizers (gpt2) with pre-tokenizer {', '.join(PRETOKENIZERS)}, "
                          "as Qwen3's GGUF files have")
    tokens = f.value("tokenizer.ggml.tokens", list)
    types = f.value("tokenizer.ggml.token_type", list, [TOKEN_NORMAL] * len(tokens or []))
    merges = f.value("tokenizer.ggml.merges", list, [])
    if not tokens or len(types) != len(tokens) or not all(isinstance(t, str) for t in tokens) \
            or not all(isinstance(m, str) and m.count(" ") == 1 for m in merges):
        raise FormatError(f"{f.path}: tokenizer.ggml.tokens / token_type / merges are missing or malformed; "
                          "the file is damaged")

    def token_id(key: str) -> int | None:
        i = f.value(f"tokenizer.ggml.{key}", int)
        if i is not None and not 0 <= i < len(tokens):
            raise FormatError(f"{f.path}: tokenizer.ggml.{key} {i} is outside the vocabulary of {len(tokens)}")
        return i

    bos, eos, pad = token_id("bos_token_id"), token_id("eos_token_id"), token_id("padding_token_id")
    add_bos = f.value("tokenizer.ggml.add_bos_token", bool, False)
    add_eos = f.value("tokenizer.ggml.add_eos_token", bool, False)

    added = {i: t for i, (t, kind) in enumerate(zip(tokens, types)) if kind in (TOKEN_CONTROL, TOKEN_USER_DEFINED)}
    # every token in the BPE's vocabulary at its id, the added ones too (which then keep those
    # ids): a file may place tokens after them (llama.cpp pads Qwen3's 151,669 to 151,936 rows)
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise FormatError(f"{f.path}: tokenizer.ggml.tokens holds a token twice; the file is damaged")
    try:
        tok = Tokenizer(models.BPE(vocab, [tuple(m.split(" ")) for m in merges], byte_fallback=False,
                                   ignore_merges=False))
    except Exception as e:  # tokenizers raises plain Exception for merges of unknown tokens
        raise FormatError(f"{f.path}: its tokenizer does not build ({e}); the file is damaged") from None
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZER_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.add_tokens([AddedToken(added[i], special=types[i] == TOKEN_CONTROL, normalized=False)
                    for i in sorted(added)])
    specials = [(tokens[i], i) for i in (bos, eos) if i is not None]
    single = " ".join(([tokens[bos]] if add_bos and bos is not None else []) + ["$A"] +
                      ([tokens[eos]] if add_eos and eos is not None else []))
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        processors.TemplateProcessing(single=single, pair=f"{single} $B:1", special_tokens=specials),
    ]) if single != "$A" else processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)

    config = {
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "bos_token": tokens[bos] if bos is not None else None,
        "eos_token": tokens[eos] if eos is not None else None,
        "pad_token": tokens[pad] if pad is not None else None,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
    }
    template = f.value("tokenizer.chat_template", str)
    if template is not None:
        config["chat_template"] = template

    stops = [i for i in (eos, token_id("eot_token_id"), token_id("eom_token_id")) if i is not None]
    stops += [i for i, t in added.items() if types[i] == TOKEN_CONTROL and t in END_OF_GENERATION_TEXTS]
    generation = {"eos_token_id": sorted(set(stops))}
    if bos is not None:
        generation["bos_token_id"] = bos
    if pad is not None:
        generation["pad_token_id"] = pad
    for hf_key, key in SAMPLING_KEYS.items():
        value = f.value(f"general.sampling.{key}", int if key == "top_k" else float)
        if value is not None:  # stored as float32: 0.95 reads back as 0.949999988
            generation[hf_key] = value if key == "top_k" else float(f"{value:.7g}")
    return {"tokenizer.json": tok.to_str().encode(),
            "tokenizer_config.json": json.dumps(config, ensure_ascii=False).encode(),
            "generation_config.json": json.dumps(generation).encode()}
