"""A byte-level BPE tokenizer laid out exactly like Qwen3's, for synthetic checkpoints.

151,643 regular tokens (the 256 bytes in GPT-2's order, then synthetic word-like merges) and
Qwen3's 26 added tokens at ids 151,643.. (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, ...),
with Qwen2's pre-tokenizer regex, NFC normalization and a ChatML chat template.  Its merges are
not Qwen's, so text encodes into different ids than the real model's; for timing that does not
matter.  `tokenizer_files` gives the four files a checkpoint ships (tokenizer.json,
tokenizer_config.json, vocab.json, merges.txt).
"""
from __future__ import annotations

import json

import numpy as np

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


def set_qwen3_pipeline(tok) -> None:
    """Give a `tokenizers.Tokenizer` (a byte-level BPE model) Qwen3's pipeline: NFC, Qwen2's
    pre-tokenizer regex, then byte-level pre-tokenizer, decoder and post-processor."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers, processors
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)


def add_qwen3_tokens(tok, n_regular: int) -> None:
    """Append Qwen3's added tokens to a tokenizer of `n_regular` BPE tokens (ids n_regular..)."""
    from tokenizers import AddedToken
    for content, special in QWEN3_ADDED_TOKENS:
        at = AddedToken(content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=special)
        (tok.add_special_tokens if special else tok.add_tokens)([at])
    for i, (content, _) in enumerate(QWEN3_ADDED_TOKENS):
        assert tok.token_to_id(content) == n_regular + i, content


def tokenizer_config(n_regular: int, chat_template: str = CHAT_TEMPLATE) -> dict:
    """tokenizer_config.json of a Qwen3-layout tokenizer with `n_regular` BPE tokens."""
    added = {str(n_regular + i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                                  "single_word": False, "special": s}
             for i, (c, s) in enumerate(QWEN3_ADDED_TOKENS)}
    return {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added,
        "additional_special_tokens": [c for c, _ in QWEN3_ADDED_TOKENS[1:14]],
        "bos_token": None, "chat_template": chat_template, "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": 131072,
        "pad_token": "<|endoftext|>", "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def build_tokenizer(n_regular: int = QWEN_REGULAR_TOKENS):
    """A `tokenizers.Tokenizer` laid out like Qwen3's: BPE ids 0..n_regular-1, added tokens after."""
    from tokenizers import Tokenizer, models
    vocab, merges = bpe_vocab_and_merges(n_regular)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None,
                               continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                               byte_fallback=False, ignore_merges=False))
    set_qwen3_pipeline(tok)
    add_qwen3_tokens(tok, n_regular)
    return tok, vocab, merges


def tokenizer_files(vocab_size: int) -> tuple[dict[str, bytes], int]:
    """tokenizer.json, tokenizer_config.json, vocab.json, merges.txt as bytes, and the
    <|endoftext|> id (the number of regular tokens)."""
    n_regular = min(QWEN_REGULAR_TOKENS, vocab_size - len(QWEN3_ADDED_TOKENS))
    if n_regular < 256 + 4 + 52:
        raise ValueError(f"vocab_size {vocab_size} is too small for a byte-level BPE with Qwen's added tokens")
    tok, vocab, merges = build_tokenizer(n_regular)
    config = tokenizer_config(n_regular)
    files = {
        "tokenizer.json": tok.to_str(pretty=True).encode(),
        "vocab.json": json.dumps(vocab, ensure_ascii=False, separators=(",", ":")).encode(),
        "merges.txt": ("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)).encode(),
        "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False).encode(),
    }
    return files, n_regular
