"""Text <-> token ids, backed by Hugging Face `tokenizers` on the tokenizer.json a .moecc embeds,
and the incremental decoder that turns a stream of ids into text that is always valid."""
from __future__ import annotations

import json

from tokenizers import Tokenizer as _HFTokenizer


class Tokenizer:
    def __init__(self, tokenizer_json: bytes, tokenizer_config: bytes | None = None):
        self._tok = _HFTokenizer.from_str(tokenizer_json.decode("utf-8"))
        self.config: dict = json.loads(tokenizer_config) if tokenizer_config else {}
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` as it is (no chat template), as transformers' `tokenizer(text)`."""
        return self._tok.encode(text, add_special_tokens=True).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def special_token_id(self, key: str) -> int | None:
        """The id of tokenizer_config's `key` (e.g. "eos_token"), which may be a string or a dict."""
        token = self.config.get(key)
        if isinstance(token, dict):
            token = token.get("content")
        return self.token_to_id(token) if isinstance(token, str) else None


class StreamDecoder:
    """Turns ids, one at a time, into the text each adds.

    A character may span several byte-level tokens; until it is complete the decoded text ends
    in U+FFFD, and nothing is emitted.  Only a short window of recent ids is re-decoded per
    token (the window restarts after each emitted piece), so the cost does not grow with the
    length of the output.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix_offset = 0  # ids before this are already printed and no longer re-decoded
        self._read_offset = 0  # ids before this have been turned into emitted text

    def add(self, token: int) -> str:
        self._ids.append(token)
        decode = self._tokenizer.decode
        prefix = decode(self._ids[self._prefix_offset:self._read_offset], self._skip)
        full = decode(self._ids[self._prefix_offset:], self._skip)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
            return full[len(prefix):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        decode = self._tokenizer.decode
        prefix = decode(self._ids[self._prefix_offset:self._read_offset], self._skip)
        full = decode(self._ids[self._prefix_offset:], self._skip)
        self._prefix_offset = self._read_offset = len(self._ids)
        return full[len(prefix):]
