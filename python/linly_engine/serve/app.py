"""``linly serve``: the OpenAI-compatible HTTP API on FastAPI, over the batching scheduler.

Endpoints: /v1/chat/completions, /v1/completions (streaming as server-sent events),
/v1/models, /health (503 while the model loads), /metrics (Prometheus), /tokenize,
/detokenize, Linly's /chat, and a chat page at /. Errors are OpenAI-style JSON and never
carry a stack trace.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Optional, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from linly_engine.serve import metrics as metrics_mod
from linly_engine.serve.scheduler import QueueFullError, Request as GenRequest, Scheduler
from linly_engine.serve.schemas import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest,
                                        LinlyChatRequest, Sampling, TokenizeRequest)

PAGE = Path(__file__).with_name("page.html")
OPEN_PATHS = {"/health"}  # liveness needs no API key


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: Optional[str] = None,
                 param: Optional[str] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param


def error_body(message: str, type_: str, code: Optional[str] = None, param: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class BodyLimit:
    """Counts a request body as it arrives and refuses it (413) past ``limit`` bytes. The
    guard below refuses a declared Content-Length up front; a chunked body declares none,
    so without this it would be read whole, whatever its size."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # FastAPI passes an HTTPException raised while reading the body through
                    # to the handler below, which answers with its status.
                    raise StarletteHTTPException(413, f"the request body is over {self.limit} bytes; this server "
                                                      f"accepts at most {self.limit}")
            return message

        await self.app(scope, counted, send)


@dataclass
class ServerConfig:
    model_path: Optional[str] = None  # None: the default model
    model_name: Optional[str] = None  # what /v1/models lists (default: the file's stem)
    api_key: Optional[str] = None
    parallel: int = 4
    max_queue: int = 64
    threads: Optional[int] = None
    max_context: Optional[int] = None
    template: Optional[str] = None
    kv_cache: str = "f16"
    activations: str = "int8x2"
    device: str = "cpu"  # "cuda": the GPU decoder, one sequence at a time
    default_max_tokens: int = 1024
    max_request_bytes: int = 4 << 20  # a body larger than this is refused (413) before it is read
    defaults: Any = None  # SamplingParams for fields a request leaves out (and for Linly's /chat)


@dataclass
class ServerState:
    config: ServerConfig
    ready: bool = False
    load_error: Optional[str] = None
    scheduler: Optional[Scheduler] = None
    tokenizer: Any = None
    template: Any = None
    model_name: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    metrics: metrics_mod.Metrics = field(default_factory=metrics_mod.Metrics)

    def load(self) -> None:
        from linly_engine.engine import load_model_and_tokenizer
        from linly_engine.templates import choose_template

        c = self.config
        try:
            model, tok = load_model_and_tokenizer(c.model_path, threads=c.threads, max_context=c.max_context,
                                                  kv_cache=c.kv_cache, activations=c.activations,
                                                  slots=c.parallel, device=c.device)
            self.tokenizer = tok
            self.template = choose_template(c.template, tok.chat_template)
            self.model_name = c.model_name or Path(model.checkpoint.source).stem
            self.scheduler = Scheduler(model, tok, max_queue=c.max_queue)
            self.metrics.bind(self.scheduler)
            self.ready = True
        except Exception as e:  # reported by /health; the process stays up to say why
            self.load_error = f"{type(e).__name__}: {e}"


def create_app(config: ServerConfig, load_in_background: bool = True) -> FastAPI:
    state = ServerState(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if load_in_background:
            threading.Thread(target=state.load, name="linly-load", daemon=True).start()
        else:
            state.load()
        yield
        if state.scheduler:
            state.scheduler.close()

    app = FastAPI(title="linly-engine", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.linly = state
    app.add_middleware(BodyLimit, limit=config.max_request_bytes)

    # ---- errors: OpenAI-style JSON, never a stack trace -----------------------------------
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(error_body(exc.message, exc.type, exc.code, exc.param), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            problems = ["the request body is not valid JSON"]
        first = exc.errors()[0].get("loc", ()) if exc.errors() else ()
        param = ".".join(str(p) for p in first if p != "body") or None
        return JSONResponse(error_body("; ".join(problems), "invalid_request_error", param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        size = request.headers.get("content-length", "")
        if size.isdigit() and int(size) > config.max_request_bytes:
            return JSONResponse(error_body(f"the request body is {int(size)} bytes; this server accepts at most "
                                           f"{config.max_request_bytes}", "invalid_request_error",
                                           "request_too_large"), status_code=413)
        if config.api_key and request.url.path not in OPEN_PATHS:
            auth = request.headers.get("authorization", "")
            token = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
            if request.url.path == "/" and not token:  # a browser cannot send a header when it opens a page
                token = request.query_params.get("api_key", "")
            if not secrets.compare_digest(token.encode(), config.api_key.encode()):
                return JSONResponse(error_body("invalid or missing API key (send 'Authorization: Bearer KEY')",
                                               "authentication_error", "invalid_api_key"), status_code=401)
        if not state.ready and request.url.path not in OPEN_PATHS | {"/"}:
            msg = f"the model failed to load: {state.load_error}" if state.load_error else "the model is loading"
            return JSONResponse(error_body(msg, "server_error", "model_not_ready"), status_code=503)
        return await call_next(request)

    # ---- helpers -----------------------------------------------------------------------------
    def check_model(name: Optional[str]) -> None:
        if name not in (None, "", state.model_name):
            raise ApiError(404, f"the model '{name}' does not exist; this server serves '{state.model_name}'",
                           code="model_not_found", param="model")

    def params_for(body: Sampling, prompt_len: int):
        from linly_engine.sampling import SamplingParams

        ctx = state.scheduler.model.max_context
        if prompt_len >= ctx:
            raise ApiError(400, f"the prompt is {prompt_len} tokens but this model's context is {ctx} tokens; "
                                "shorten it", code="context_length_exceeded", param="messages")
        room = ctx - prompt_len
        defaults = config.defaults or SamplingParams(max_new_tokens=config.default_max_tokens)
        wanted = body.max_new_tokens if body.max_new_tokens is not None else defaults.max_new_tokens
        try:
            return defaults.updated(max_new_tokens=min(wanted, room), **body.sampling_overrides())
        except (ValueError, TypeError) as e:
            raise ApiError(400, str(e)) from None

    def submit(prompt_ids: list[int], params, extra_stop: Sequence[str]) -> tuple[GenRequest, asyncio.Queue]:
        """Queues one generation (429 when the queue is full); its events arrive on the queue."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def emit(ev):  # called on the scheduler thread
            if ev[0] == "done":
                state.metrics.observe(req)  # also for generations whose client has gone
            try:
                loop.call_soon_threadsafe(queue.put_nowait, ev)
            except RuntimeError:  # the event loop is gone (shutdown)
                pass

        req = GenRequest(prompt_ids, params, emit, extra_stop)
        try:
            state.scheduler.submit(req)
        except QueueFullError as e:
            state.metrics.rejected.inc()
            raise ApiError(429, str(e), "rate_limit_error", "server_busy") from None
        return req, queue

    async def drain(req: GenRequest, queue: asyncio.Queue) -> AsyncIterator[tuple[str, Any]]:
        """The events of a submitted generation; leaving early (a client that went away)
        cancels it, which frees its slot at the scheduler's next step."""
        done = False
        try:
            while True:
                ev = await queue.get()
                if ev[0] == "error":
                    done = True
                    raise ApiError(500, ev[1], "server_error")
                if ev[0] == "done":
                    done = True
                yield ev
                if done:
                    return
        finally:
            if not done:
                req.cancel()

    async def collect(prompt_ids, params, extra_stop) -> tuple[str, str, GenRequest]:
        req, queue = submit(prompt_ids, params, extra_stop)
        parts, reason = [], "stop"
        async for ev in drain(req, queue):
            if ev[0] == "text":
                parts.append(ev[1])
            else:
                reason = ev[1]
        return "".join(parts), reason, req

    def usage(req: GenRequest) -> dict[str, int]:
        p, c = len(req.prompt_ids), req.generated
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def sse(obj: Any) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    def stream_response(kind: str, prompt_ids, params, extra_stop, body: Sampling) -> StreamingResponse:
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)
        created = int(time.time())
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        req, queue = submit(prompt_ids, params, extra_stop)  # before the 200 goes out: a full queue is a real 429
        gen = drain(req, queue)

        def chunk(delta_or_text, finish=None, use=None):
            choice = ({"index": 0, "delta": delta_or_text, "logprobs": None, "finish_reason": finish} if kind == "chat"
                      else {"index": 0, "text": delta_or_text, "logprobs": None, "finish_reason": finish})
            out = {"id": rid, "object": obj, "created": created, "model": state.model_name, "choices": [choice]}
            if use is not None:
                out["usage"] = use
            return out

        async def body_iter():
            try:
                if kind == "chat":
                    yield sse(chunk({"role": "assistant", "content": ""}))
                async for ev in gen:
                    if ev[0] == "text":
                        yield sse(chunk({"content": ev[1]} if kind == "chat" else ev[1]))
                    else:
                        reason = "length" if ev[1] == "length" else "stop"
                        yield sse(chunk({} if kind == "chat" else "", reason, usage(req)))
                        if include_usage:
                            yield sse({"id": rid, "object": obj, "created": created, "model": state.model_name,
                                       "choices": [], "usage": usage(req)})
                yield "data: [DONE]\n\n"
            except ApiError as e:  # after the headers went out: report in-band, as OpenAI does
                yield sse(error_body(e.message, e.type, e.code))
                yield "data: [DONE]\n\n"
            finally:
                req.cancel()  # no-op when finished; frees the slot when the client left early
                await gen.aclose()

        return StreamingResponse(body_iter(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ---- endpoints -----------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        if state.ready:
            return {"status": "ok", "model": state.model_name}
        if state.load_error:
            return JSONResponse({"status": "error", "error": state.load_error}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": state.created,
                                            "owned_by": "linly-engine",
                                            "context_length": state.scheduler.model.max_context}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest):
        from linly_engine.engine import render_chat

        check_model(body.model)
        try:
            prompt_ids = render_chat(state.template, state.tokenizer, [m.as_dict() for m in body.messages])
        except ValueError as e:
            raise ApiError(400, str(e), param="messages") from None
        params = params_for(body, len(prompt_ids))
        if body.stream:
            return stream_response("chat", prompt_ids, params, state.template.stop, body)
        text, reason, req = await collect(prompt_ids, params, state.template.stop)
        return {"id": "chatcmpl-" + secrets.token_hex(12), "object": "chat.completion", "created": int(time.time()),
                "model": state.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                             "finish_reason": "length" if reason == "length" else "stop"}],
                "usage": usage(req)}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        check_model(body.model)
        if not body.prompt:
            raise ApiError(400, "the prompt is empty", param="prompt")
        prompt_ids = state.tokenizer.encode(body.prompt, add_special=True)
        params = params_for(body, len(prompt_ids))
        if body.stream:
            return stream_response("completion", prompt_ids, params, (), body)
        text, reason, req = await collect(prompt_ids, params, ())
        return {"id": "cmpl-" + secrets.token_hex(12), "object": "text_completion", "created": int(time.time()),
                "model": state.model_name,
                "choices": [{"index": 0, "text": text, "logprobs": None,
                             "finish_reason": "length" if reason == "length" else "stop"}],
                "usage": usage(req)}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        return {"tokens": state.tokenizer.encode(body.content, add_special=body.add_special)}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        try:
            return {"content": state.tokenizer.decode(body.tokens)}
        except ValueError as e:
            raise ApiError(400, str(e), param="tokens") from None

    @app.post("/chat")
    async def linly_chat(request: Request):
        """Linly's Flask API: {"question": str | [str]} -> {"answer": [str], "status": "success"}.
        Each question is the user's turn in the model's chat template; several run batched."""
        from linly_engine.engine import render_chat

        try:
            body = LinlyChatRequest.model_validate(await request.json())
        except Exception:
            return JSONResponse({"answer": [], "status": "error",
                                 "error": 'send JSON {"question": "..."} or {"question": ["...", ...]}'},
                                status_code=400)
        questions = [body.question] if isinstance(body.question, str) else body.question
        try:
            jobs = []
            for q in questions:
                ids = render_chat(state.template, state.tokenizer, [{"role": "user", "content": q}])
                jobs.append(collect(ids, params_for(Sampling(), len(ids)), state.template.stop))
            answers = [text for text, _, _ in await asyncio.gather(*jobs)]
        except ApiError as e:
            return JSONResponse({"answer": [], "status": "error", "error": e.message}, status_code=e.status)
        return {"answer": answers, "status": "success"}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(state.metrics.render(), media_type=metrics_mod.CONTENT_TYPE)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    return app


def serve(config: ServerConfig, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Runs the server until interrupted."""
    import uvicorn

    uvicorn.run(create_app(config), host=host, port=port, log_level=log_level, access_log=log_level == "debug")
