"""OpenAI's wire format: request bodies validated into typed requests (pydantic, strict types,
unknown fields ignored as OpenAI's clients expect), and the JSON of responses, stream chunks,
usage, logprobs and errors (`{"error": {"message", "type", "param", "code"}}`)."""
from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .parsers import ToolCall
from .scheduler import Usage


class RequestError(Exception):
    """A request the server refuses: becomes OpenAI's error JSON with `status`."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 type: str = "invalid_request_error", code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.type, self.code = message, param, status, type, code
        self.headers = headers

    def json(self) -> dict:
        return error_json(self.message, self.type, self.param, self.code)


def error_json(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# -- requests ---------------------------------------------------------------------------------

class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    model_config = ConfigDict(strict=True, extra="allow")  # tool_calls, tool_call_id, name... go to the template
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    reasoning_content: str | None = None

    def for_template(self) -> dict:
        """The message as the chat template reads it: text content, "developer" as "system"."""
        message = self.model_dump(exclude_none=True)
        message["content"] = self.content or ""  # null in a tool-calling turn; templates expect text
        message["role"] = "system" if self.role == "developer" else self.role
        if isinstance(self.content, list):
            message["content"] = "".join(part.text for part in self.content)
        return message


class StreamOptions(_Request):
    include_usage: bool = False


class SamplingFields(_Request):
    """The fields both endpoints share."""
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None  # -1 or 0: no limit
    min_p: Annotated[float, Field(ge=0, lt=1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0)] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: Annotated[int, Field(ge=1)] = 1
    ignore_eos: bool = False  # generate past EOS tokens (vLLM's and llama-server's extension; benchmarks)

    def sampling(self) -> dict:
        """Keyword arguments of LoadedModel.sampling_params (None keeps the model's default)."""
        top_k = 0 if self.top_k == -1 else self.top_k
        return dict(temperature=self.temperature, top_p=self.top_p, top_k=top_k, min_p=self.min_p,
                    presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
                    repetition_penalty=self.repetition_penalty, seed=self.seed)

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return [s for s in stops if s]

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def logprobs_wanted(self) -> int | None:
        """None: no logprobs; k: each token's and the k most likely."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(SamplingFields):
    prompt: str | Annotated[list[int], Field(min_length=1)] | Annotated[list[str], Field(min_length=1, max_length=1)]
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens if self.max_tokens is not None else 16  # OpenAI's default for completions

    @property
    def logprobs_wanted(self) -> int | None:
        return self.logprobs


class TokenizeRequest(_Request):
    content: str


class DetokenizeRequest(_Request):
    tokens: list[int]


def parse(body: bytes, kind: type[_Request]):
    """The request in `body` (JSON), or RequestError naming the field that is wrong."""
    try:
        data = json.loads(body)
    except ValueError as e:
        raise RequestError(f"the body is not valid JSON ({e}); send a JSON object") from None
    if not isinstance(data, dict):
        raise RequestError("the body must be a JSON object")
    try:
        request = kind.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = [str(part) for part in first["loc"]]
        raise RequestError(f"{'.'.join(loc)}: {first['msg']}", param=loc[0] if loc else None) from None
    if getattr(request, "n", 1) != 1:
        raise RequestError("n > 1 is not supported; send n = 1 (or several requests)", param="n")
    return request


# -- responses --------------------------------------------------------------------------------

OPENAI_FINISH = {"stop": "stop", "length": "length", "context": "length", "tool_calls": "tool_calls"}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage_json(usage: Usage) -> dict:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}


def tool_call_json(call: ToolCall, streamed: bool) -> dict:
    out = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    return {"index": call.index, **out} if streamed else out


def chat_logprob_json(token_text, token: int, logprob: float, top: tuple[tuple[int, float], ...]) -> dict:
    """One token's entry of a chat response's logprobs.content; `token_text(id)` is its text."""
    def entry(t: int, lp: float) -> dict:
        text = token_text(t)
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}
    return {**entry(token, logprob), "top_logprobs": [entry(t, lp) for t, lp in top]}


class ChatResponse:
    """The shapes of one chat completion: a whole response, or stream chunks."""

    def __init__(self, model: str):
        self.id, self.model, self.created = new_id("chatcmpl"), model, int(time.time())

    def _head(self, object: str) -> dict:
        return {"id": self.id, "object": object, "created": self.created, "model": self.model}

    def message(self, reasoning: str, content: str, tool_calls: list[ToolCall], logprobs: list[dict] | None,
                finish_reason: str, usage: Usage) -> dict:
        message: dict = {"role": "assistant", "content": content or (None if tool_calls else "")}  # as OpenAI
        if reasoning:
            message["reasoning_content"] = reasoning
        if tool_calls:
            message["tool_calls"] = [tool_call_json(c, streamed=False) for c in tool_calls]
        choice = {"index": 0, "message": message,
                  "logprobs": None if logprobs is None else {"content": logprobs},
                  "finish_reason": OPENAI_FINISH[finish_reason]}
        return {**self._head("chat.completion"), "choices": [choice], "usage": usage_json(usage)}

    def chunk(self, delta: dict, logprobs: list[dict] | None = None, finish_reason: str | None = None,
              include_usage: bool = False) -> dict:
        choice = {"index": 0, "delta": delta, "logprobs": None if logprobs is None else {"content": logprobs},
                  "finish_reason": None if finish_reason is None else OPENAI_FINISH[finish_reason]}
        chunk = {**self._head("chat.completion.chunk"), "choices": [choice]}
        if include_usage:
            chunk["usage"] = None
        return chunk

    def usage_chunk(self, usage: Usage) -> dict:
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": usage_json(usage)}


class CompletionResponse:
    def __init__(self, model: str):
        self.id, self.model, self.created = new_id("cmpl"), model, int(time.time())

    def _head(self) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model}

    def choice(self, text: str, logprobs: dict | None, finish_reason: str | None) -> dict:
        return {"index": 0, "text": text, "logprobs": logprobs,
                "finish_reason": None if finish_reason is None else OPENAI_FINISH[finish_reason]}

    def whole(self, text: str, logprobs: dict | None, finish_reason: str, usage: Usage) -> dict:
        return {**self._head(), "choices": [self.choice(text, logprobs, finish_reason)], "usage": usage_json(usage)}

    def chunk(self, text: str, logprobs: dict | None, finish_reason: str | None, include_usage: bool) -> dict:
        chunk = {**self._head(), "choices": [self.choice(text, logprobs, finish_reason)]}
        if include_usage:
            chunk["usage"] = None
        return chunk

    def usage_chunk(self, usage: Usage) -> dict:
        return {**self._head(), "choices": [], "usage": usage_json(usage)}


def completion_logprobs_json(token_text, outputs, offset: int = 0) -> dict:
    """The legacy completions logprobs object of `outputs` (TokenOutputs); text offsets from `offset`."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for out in outputs:
        offsets.append(offset)
        text = token_text(out.token)
        tokens.append(text)
        token_logprobs.append(out.logprob)
        tops.append({token_text(t): lp for t, lp in out.top_logprobs})
        offset += len(out.text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}


def sse(data: dict | str) -> bytes:
    """One server-sent event as OpenAI frames it: `data: {json}` and a blank line."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n".encode("utf-8")
