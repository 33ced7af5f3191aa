"""The HTTP side: a FastAPI app with OpenAI's routes, the API key check, errors as OpenAI's JSON,
and server-sent events.

The app exists (and its port is bound) before the model loads: `ServerState.load` runs on a
thread of its own, `/health` says `loading` until it is done, then `ok` (or `error` with the
reason). Requests become scheduler Jobs; each job's outputs come back from the engine thread
through `loop.call_soon_threadsafe` into an asyncio queue, so the event loop never waits on the
engine. A client that goes away cancels its job.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..chat_template import ChatTemplateError
from ..engine import LoadedModel, PromptTooLong
from . import protocol
from .metrics import CONTENT_TYPE, Metrics
from .parsers import THINK_OPEN, Qwen3OutputParser
from .protocol import ChatRequest, CompletionRequest, RequestError
from .scheduler import Emit, EngineFailure, Job, QueueFull, Scheduler, TokenOutput

log = logging.getLogger("moecc.server")

RETRY_AFTER_SECONDS = 1
DISCONNECT_POLL_SECONDS = 0.5  # how often a non-streamed request checks that its client is still there
_RESERVED_TEMPLATE_NAMES = {"messages", "tools", "documents", "add_generation_prompt", "tokenizer_config"}


class ServerState:
    """What the routes serve: loading, then the model and its scheduler, or the load's error."""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self.status = "loading"
        self.error: str | None = None
        self.model: LoadedModel | None = None
        self.scheduler: Scheduler | None = None
        self.metrics = Metrics()

    def load(self, open_model: Callable[[], LoadedModel], max_queue: int) -> None:
        """Open the model and start the engine thread (run on a thread: it takes a while)."""
        try:
            model = open_model()
            self.scheduler = Scheduler(model, max_queue, self.metrics)
            self.scheduler.start()
            self.model = model
            self.status = "ok"
        except Exception as e:
            self.error = str(e) or type(e).__name__
            self.status = "error"
            raise

    def ready(self) -> tuple[LoadedModel, Scheduler]:
        if self.status != "ok":
            raise RequestError("the model is still loading; retry shortly" if self.status == "loading"
                               else f"the model failed to load: {self.error}",
                               status=503, type="server_error", code="model_not_ready",
                               headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        return self.model, self.scheduler


def create_app(state: ServerState, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="moecc", docs_url=None, redoc_url=None, openapi_url=None)

    def authorize(request: Request) -> None:
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            raise RequestError("a valid API key is required: send the header 'Authorization: Bearer KEY'",
                               status=401, type="authentication_error", code="invalid_api_key")

    @app.exception_handler(RequestError)
    async def request_error(request: Request, e: RequestError):
        return JSONResponse(e.json(), status_code=e.status, headers=e.headers)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, e: Exception):
        log.exception("request %s %s failed", request.method, request.url.path)
        return JSONResponse(protocol.error_json(f"internal error: {e}", "server_error"), status_code=500)

    @app.get("/health")
    async def health():
        body = {"status": state.status}
        if state.error:
            body["message"] = state.error
        return JSONResponse(body, status_code={"ok": 200, "loading": 503}.get(state.status, 500))

    @app.get("/metrics")
    async def metrics(request: Request):
        authorize(request)
        return Response(state.metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        model, _ = state.ready()
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": 0,
                                            "owned_by": "moecc", "meta": {"n_ctx": model.ctx}}]}

    @app.post("/tokenize")
    async def tokenize(request: Request):
        authorize(request)
        model, _ = state.ready()
        req = protocol.parse(await request.body(), protocol.TokenizeRequest)
        return {"tokens": model.tokenizer.encode(req.content)}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        authorize(request)
        model, _ = state.ready()
        req = protocol.parse(await request.body(), protocol.DetokenizeRequest)
        bad = [t for t in req.tokens if not 0 <= t < model.config.vocab_size]
        if bad:
            raise RequestError(f"token id {bad[0]} is outside the vocabulary (0..{model.config.vocab_size - 1})",
                               param="tokens")
        return {"content": model.tokenizer.decode(req.tokens)}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        model, scheduler = state.ready()
        req = protocol.parse(await request.body(), ChatRequest)
        prompt = _chat_prompt(model, req)
        parser = Qwen3OutputParser(starts_thinking=prompt.rstrip().endswith(THINK_OPEN))
        run = _Run(request, scheduler)
        run.submit(_job(model, req, model.tokenizer.encode(prompt), "messages", run.emit))
        response = protocol.ChatResponse(state.model_name)
        token_text = _token_texts(model)
        if req.stream:
            return _event_stream(run, chat_events(run.stream(), req, response, parser, token_text))
        return chat_message(await run.collect(), req, response, parser, token_text)

    @app.post("/v1/completions")
    async def completions(request: Request):
        authorize(request)
        model, scheduler = state.ready()
        req = protocol.parse(await request.body(), CompletionRequest)
        prompt = req.prompt[0] if isinstance(req.prompt, list) and isinstance(req.prompt[0], str) else req.prompt
        ids = model.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
        run = _Run(request, scheduler)
        run.submit(_job(model, req, ids, "prompt", run.emit))
        response = protocol.CompletionResponse(state.model_name)
        token_text = _token_texts(model)
        if req.stream:
            return _event_stream(run, completion_events(run.stream(), req, response, token_text))
        outputs = await run.collect()
        logprobs = protocol.completion_logprobs_json(token_text, outputs) if req.logprobs is not None else None
        last = outputs[-1]
        return response.whole("".join(o.text for o in outputs), logprobs, last.finish_reason, last.usage)

    return app


# -- requests into jobs -----------------------------------------------------------------------

def _chat_prompt(model: LoadedModel, req: ChatRequest) -> str:
    kwargs = dict(req.chat_template_kwargs or {})
    reserved = sorted(_RESERVED_TEMPLATE_NAMES & kwargs.keys())
    if reserved:
        raise RequestError(f"chat_template_kwargs may not set {', '.join(reserved)}", param="chat_template_kwargs")
    thinking = kwargs.pop("enable_thinking", None)
    if thinking is not None and not isinstance(thinking, bool):
        raise RequestError("chat_template_kwargs.enable_thinking must be true or false",
                           param="chat_template_kwargs")
    tools = None if req.tool_choice == "none" else req.tools
    try:
        return model.apply_chat_template([m.for_template() for m in req.messages], add_generation_prompt=True,
                                         enable_thinking=thinking, tools=tools, **kwargs)
    except (ChatTemplateError, ValueError) as e:
        raise RequestError(str(e), param="messages") from None


def _job(model: LoadedModel, req, ids, prompt_field: str, emit: Emit) -> Job:
    try:
        ids = model.check_ids(ids)
    except PromptTooLong as e:  # the client can only shorten it: the slots' size is the server's --ctx
        raise RequestError(f"{prompt_field}: the prompt has {e.tokens} tokens but the context holds {e.ctx} "
                           f"(a slot of this server, moecc-serve --ctx); shorten it",
                           param=prompt_field, code="context_length_exceeded") from None
    except ValueError as e:
        raise RequestError(f"{prompt_field}: {e}", param=prompt_field) from None
    try:
        params = model.sampling_params(**req.sampling())
    except ValueError as e:
        raise RequestError(str(e)) from None
    limit = req.token_limit
    return Job(ids=ids, max_tokens=model.ctx if limit is None else limit, params=params, stops=req.stops(),
               emit=emit, top_logprobs=req.logprobs_wanted, id=protocol.new_id("req"), ignore_eos=req.ignore_eos)


class _Run:
    """One job on the scheduler, its outputs arriving in an asyncio queue (`emit` puts them there)."""

    def __init__(self, request: Request, scheduler: Scheduler):
        self.request, self.scheduler = request, scheduler
        self.job: Job | None = None
        self.outputs: asyncio.Queue[TokenOutput | EngineFailure] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()

    def emit(self, out: TokenOutput | EngineFailure) -> None:
        """Called on the engine thread: hands `out` to the event loop."""
        try:
            self._loop.call_soon_threadsafe(self.outputs.put_nowait, out)
        except RuntimeError:  # the loop has closed: the server is shutting down
            self.job.cancel()

    def submit(self, job: Job) -> None:
        self.job = job
        try:
            self.scheduler.submit(job)
        except QueueFull as e:
            raise RequestError(f"the server is busy: {e}; retry later", status=503, type="server_error",
                               code="queue_full", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None

    async def next(self) -> TokenOutput:
        out = await self.outputs.get()
        if isinstance(out, EngineFailure):
            raise RequestError(str(out), status=500, type="server_error")
        return out

    async def stream(self) -> AsyncIterator[TokenOutput]:
        """The outputs as they come, up to the last."""
        while True:
            out = await self.next()
            yield out
            if out.finish_reason:
                return

    async def collect(self) -> list[TokenOutput]:
        """Every output up to the last; cancels the job if the client leaves meanwhile."""
        outputs = []
        try:
            while not outputs or outputs[-1].finish_reason is None:
                try:
                    outputs.append(await asyncio.wait_for(self.next(), DISCONNECT_POLL_SECONDS))
                except asyncio.TimeoutError:
                    if await self.request.is_disconnected():  # nobody reads the answer (nginx's 499)
                        raise RequestError("the client disconnected", status=499, code="client_closed_request")
        finally:
            self.cancel()
        return outputs

    def cancel(self) -> None:
        """Stop the job if it still runs (a finished job is unaffected)."""
        self.scheduler.cancel(self.job)


def _event_stream(run: _Run, events: AsyncIterator[bytes]) -> StreamingResponse:
    async def stream():
        try:
            async for event in events:
                yield event
        except RequestError as e:  # the engine failed mid-stream: tell the client in the stream
            yield protocol.sse(e.json())
        finally:  # also when the client disconnects (the response is cancelled)
            run.cancel()
    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def chat_message(outputs: list[TokenOutput], req: ChatRequest, response: protocol.ChatResponse,
                 parser: Qwen3OutputParser, token_text: Callable[[int], str]) -> dict:
    """The whole chat completion of a job's `outputs` (the last one finished)."""
    parsed = parser.feed("".join(o.text for o in outputs)) + parser.finish()
    logprobs = [_chat_logprob(token_text, o) for o in outputs] if req.logprobs_wanted is not None else None
    last = outputs[-1]
    return response.message(parsed.reasoning, parsed.content, parser.tool_calls, logprobs,
                            _finish(last, parser), last.usage)


async def chat_events(outputs: AsyncIterator[TokenOutput], req: ChatRequest, response: protocol.ChatResponse,
                      parser: Qwen3OutputParser, token_text: Callable[[int], str]) -> AsyncIterator[bytes]:
    """The SSE events of a streamed chat completion of a job's `outputs`."""
    usage_field = req.include_usage
    yield protocol.sse(response.chunk({"role": "assistant", "content": ""}, include_usage=usage_field))
    async for out in outputs:
        parsed = parser.feed(out.text)
        if out.finish_reason:
            parsed += parser.finish()
        delta = {}
        if parsed.reasoning:
            delta["reasoning_content"] = parsed.reasoning
        if parsed.content:
            delta["content"] = parsed.content
        if parsed.tool_calls:
            delta["tool_calls"] = [protocol.tool_call_json(c, streamed=True) for c in parsed.tool_calls]
        logprobs = [_chat_logprob(token_text, out)] if req.logprobs_wanted is not None else None
        if delta or logprobs:
            yield protocol.sse(response.chunk(delta, logprobs, include_usage=usage_field))
        if out.finish_reason:
            yield protocol.sse(response.chunk({}, finish_reason=_finish(out, parser), include_usage=usage_field))
            if usage_field:
                yield protocol.sse(response.usage_chunk(out.usage))
            yield protocol.sse("[DONE]")
            return


async def completion_events(outputs: AsyncIterator[TokenOutput], req: CompletionRequest,
                            response: protocol.CompletionResponse, token_text: Callable[[int], str]) -> AsyncIterator[bytes]:
    """The SSE events of a streamed completion of a job's `outputs`."""
    offset = 0
    async for out in outputs:
        logprobs = protocol.completion_logprobs_json(token_text, [out], offset) if req.logprobs is not None else None
        offset += len(out.text)
        if out.text or logprobs or out.finish_reason:
            yield protocol.sse(response.chunk(out.text, logprobs, out.finish_reason, req.include_usage))
        if out.finish_reason:
            if req.include_usage:
                yield protocol.sse(response.usage_chunk(out.usage))
            yield protocol.sse("[DONE]")
            return


def _finish(last: TokenOutput, parser: Qwen3OutputParser) -> str:
    return "tool_calls" if parser.tool_calls and last.finish_reason == "stop" else last.finish_reason


def _chat_logprob(token_text, out: TokenOutput) -> dict:
    return protocol.chat_logprob_json(token_text, out.token, out.logprob, out.top_logprobs)


def _token_texts(model: LoadedModel) -> Callable[[int], str]:
    """id -> the token's own text (what logprobs name)."""
    return lambda token: model.tokenizer.decode([token])
