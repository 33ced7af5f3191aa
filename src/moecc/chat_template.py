"""Rendering a checkpoint's own chat template (jinja2), as transformers' `apply_chat_template`
does with `tokenize=False`: the same sandboxed environment (trim_blocks, lstrip_blocks, loop
controls), the same helpers (`raise_exception`, a `tojson` that does not escape HTML,
`strftime_now`), the tokenizer's special tokens as variables, and reasoning passed under all
the names templates read (`reasoning_content`, `thinking`)."""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(ValueError):
    """The template refused the conversation (its own `raise_exception`), or is broken."""


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ChatTemplateError(f"the model's chat template does not parse: {e}") from None


def _with_reasoning_aliases(message: dict) -> dict:
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return dict(message)
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def special_tokens(tokenizer_config: dict) -> dict[str, str]:
    """The special tokens a template may refer to (`eos_token`, ...), from tokenizer_config.json."""
    tokens = {}
    for key in SPECIAL_TOKEN_KEYS:
        value = tokenizer_config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            tokens[key] = value
    return tokens


def render(template: str, messages: list[dict], *, tokenizer_config: dict, add_generation_prompt: bool = True,
           enable_thinking: bool | None = None, tools: list[dict] | None = None, **kwargs) -> str:
    """The prompt text for `messages` ([{"role": ..., "content": ...}, ...])."""
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            raise ChatTemplateError(f"a chat message must be a dict with a 'role', got {message!r}")
    if enable_thinking is not None:
        kwargs["enable_thinking"] = enable_thinking
    variables = {**special_tokens(tokenizer_config), **kwargs}
    try:
        return _compile(template).render(messages=[_with_reasoning_aliases(m) for m in messages], tools=tools,
                                         documents=None, add_generation_prompt=add_generation_prompt, **variables)
    except jinja2.exceptions.TemplateError as e:
        raise ChatTemplateError(f"the chat template refused the conversation: {e}") from None
    except (TypeError, ValueError, AttributeError, KeyError) as e:  # the template's own code failed on these messages
        raise ChatTemplateError(f"the chat template failed on the conversation: {e}") from None
