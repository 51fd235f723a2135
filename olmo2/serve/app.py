"""The OpenAI-compatible HTTP API (FastAPI): routes, auth, body limit, OpenAI-shaped errors.

    app = create_app(ServeConfig(model="runs/replicate-tiny/soup"))
    uvicorn.run(app, host="127.0.0.1", port=8000)        # what `olmo2 serve` does

Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`,
`GET /health`, `GET /metrics` (Prometheus text), `POST /tokenize`, `POST /detokenize`,
`POST /v1/trace` (with `ServeConfig.trace`: the JSON of `olmo2 trace query --json`; it
uses the index's own tokenizer and needs no model), the chat page at `/`, and FastAPI's
`/openapi.json` and `/docs`.

Footgun: the trace index is opened (and checked) in `create_app`, before the server
listens, so a bad index is a one-line `DataError` at startup, not a broken route.

The model loads in a background thread after the server starts listening: until it is
ready `/health` and every model route answer 503, so a supervisor sees the process alive
at once. Generation runs in the engine's worker thread (`olmo2.serve.engine`); handlers
only await its events, so the event loop never waits on model compute. A streaming
client that disconnects cancels its stream (Starlette cancels the response task) and a
non-streaming one is noticed by polling `is_disconnected()`; both cancel the engine
request, which frees its batch slot and KV blocks at the next step.

Every error body has OpenAI's shape `{"error": {"message", "type", "param", "code"}}`;
messages name the field and never contain paths or tracebacks (unexpected exceptions are
logged server-side and answered with a generic 500).
"""
from __future__ import annotations

import contextlib
import hmac
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from olmo2.serve.engine import Engine, EngineConfig
from olmo2.serve.schemas import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest,
                                 TraceRequest)

log = logging.getLogger("olmo2.serve")
STATIC = Path(__file__).with_name("static")


@dataclass
class ServeConfig:
    """What `olmo2 serve` was asked for; the flags map onto these fields."""

    model: str
    """Checkpoint directory (HF format with tokenizer.json) or hub id."""
    model_name: str | None = None
    """The id clients send as `model` (default: the directory name)."""
    api_key: str | None = None
    """When set, every /v1 route and /tokenize, /detokenize need `Authorization: Bearer KEY`."""
    dtype: str = "float32"
    quant: str = "none"
    """Weight precision: none, bf16, int8 or int4 (olmo2/quant), applied at load."""
    max_body_bytes: int = 1 << 20
    """Request bodies above this are refused with 413."""
    default_max_tokens: int = 512
    """max_tokens when the request gives none (capped by the context left)."""
    trace: str | None = None
    """Trace index directory (`olmo2 trace index`); enables `POST /v1/trace` and the page's trace button."""
    engine: EngineConfig = field(default_factory=EngineConfig)


class ApiError(Exception):
    """An OpenAI-shaped error response."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.type, self.param, self.code)


def error_response(status: int, message: str, type_: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class BodyLimit:
    """Pure ASGI middleware: refuse request bodies over `limit` bytes with 413.

    Reads the body up front (it is small by construction) so chunked uploads without a
    Content-Length are bounded too, then replays it to the app.
    """

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = declared is not None and declared.isdigit() and int(declared) > self.limit
        chunks, size, more = [], 0, not too_big
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            more = msg.get("more_body", False)
            if size > self.limit:
                too_big = True
                break
        if too_big:
            resp = error_response(413, f"request body is larger than the server's limit of {self.limit} bytes",
                                  code="body_too_large")
            return await resp(scope, receive, send)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        return await self.app(scope, replay, send)


class State:
    """Model, tokenizer and engine once loaded; the load error if loading failed."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.name = cfg.model_name or Path(str(cfg.model).rstrip("/")).name or "olmo2"
        self.model = self.tok = self.engine = None
        self._grammars = None
        self._grammars_lock = threading.Lock()
        self.error: str | None = None
        self.started = time.time()
        self.requests = {"chat": 0, "completions": 0}
        self.http_errors: dict[int, int] = {}

    def load(self) -> None:
        """Load model + tokenizer and start the engine (runs in a background thread)."""
        try:
            from olmo2.checkpoint import load_model
            from olmo2.tokenizer import Tokenizer
            model = load_model(self.cfg.model, dtype=self.cfg.dtype, quant=self.cfg.quant).eval()
            tok = Tokenizer.from_pretrained(self.cfg.model)
            tok.check_fits(model.config.vocab_size, str(self.cfg.model))
            self.model, self.tok = model, tok
            self.engine = Engine(model, tok, self.cfg.engine).start()
        except Exception as e:  # shown by /health; the CLI checks it before listening
            log.exception("model load failed")
            self.error = str(e).splitlines()[0] if str(e) else type(e).__name__

    @property
    def grammars(self):
        """JSON token masks over the vocabulary, built on first use (~1 s; most servers never need it)."""
        with self._grammars_lock:
            if self._grammars is None:
                from olmo2.serve.jsonmode import JsonGrammars
                self._grammars = JsonGrammars(self.tok, self.model.config.vocab_size)
            return self._grammars

    def ready(self) -> Engine:
        if self.engine is None:
            msg = f"model failed to load: {self.error}" if self.error else "the model is still loading; retry shortly"
            raise ApiError(503, msg, "service_unavailable", code="model_not_ready")
        return self.engine


def create_app(cfg: ServeConfig, load_in_background: bool = True) -> FastAPI:
    """The ASGI app; `load_in_background=False` loads the model before returning (tests)."""
    from olmo2.serve import openai_routes

    state = State(cfg)
    trace_index, trace_lock = None, threading.Lock()
    if cfg.trace:
        from olmo2.trace.store import open_index
        trace_index = open_index(cfg.trace)  # raises a one-line DataError for a bad index

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if state.engine is not None:  # stop the worker thread with the server
            state.engine.shutdown()

    app = FastAPI(title="olmo2 serve", version="1", summary="OpenAI-compatible API for an OLMo 2 model",
                  lifespan=lifespan)
    app.state.olmo2 = state
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)

    if load_in_background:
        threading.Thread(target=state.load, name="olmo2-load", daemon=True).start()
    else:
        state.load()

    # ---- errors in OpenAI's shape ---------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        state.http_errors[e.status] = state.http_errors.get(e.status, 0) + 1
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        state.http_errors[400] = state.http_errors.get(400, 0) + 1
        errs = e.errors()
        first = errs[0] if errs else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        if first.get("type") == "json_invalid":
            msg = "request body is not valid JSON" + (f" ({first.get('ctx', {}).get('error')})"
                                                      if first.get("ctx", {}).get("error") else "")
            param = None
        elif first.get("type") == "missing" and not loc:
            msg = "request body is missing; send a JSON object"
        else:
            msg = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
        return error_response(400, msg, param=param, code="invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        state.http_errors[e.status_code] = state.http_errors.get(e.status_code, 0) + 1
        type_ = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        detail = e.detail if isinstance(e.detail, str) else "request failed"
        if e.status_code == 404:
            detail = f"no route {request.url.path}; see /openapi.json"
        elif e.status_code == 405:
            detail = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(e.status_code, detail, type_, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):
        log.exception("unexpected error on %s", request.url.path)
        state.http_errors[500] = state.http_errors.get(500, 0) + 1
        return error_response(500, "internal server error", "server_error")

    # ---- auth ----------------------------------------------------------------------
    async def auth(request: Request) -> None:
        if not cfg.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), cfg.api_key.encode()):
            raise ApiError(401, "invalid or missing API key; send 'Authorization: Bearer <key>'",
                           "authentication_error", code="invalid_api_key")

    # ---- routes --------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        if state.engine is None:
            status = "error" if state.error else "loading"
            return JSONResponse({"status": status, "error": state.error}, status_code=503)
        return {"status": "ok", "model": state.name}

    @app.get("/v1/models", dependencies=[Depends(auth)])
    async def models():
        state.ready()
        return {"object": "list", "data": [{"id": state.name, "object": "model", "created": int(state.started),
                                            "owned_by": "olmo2", "max_model_len": state.model.config.max_seq_len}]}

    @app.get("/v1/models/{model_id}", dependencies=[Depends(auth)])
    async def model_info(model_id: str):
        state.ready()
        if model_id != state.name:
            raise ApiError(404, f"model {model_id!r} does not exist; this server serves {state.name!r}",
                           "not_found_error", "model", "model_not_found")
        return {"id": state.name, "object": "model", "created": int(state.started), "owned_by": "olmo2"}

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat(body: ChatCompletionRequest, request: Request):
        state.requests["chat"] += 1
        return await openai_routes.chat_completions(state, body, request)

    @app.post("/v1/completions", dependencies=[Depends(auth)])
    async def completions(body: CompletionRequest, request: Request):
        state.requests["completions"] += 1
        return await openai_routes.completions(state, body, request)

    @app.post("/tokenize", dependencies=[Depends(auth)])
    async def tokenize(body: TokenizeRequest):
        state.ready()
        if (body.prompt is None) == (body.messages is None):
            raise ApiError(400, "give exactly one of 'prompt' or 'messages'", param="prompt")
        if body.messages is not None:
            text = state.tok.apply_chat_template(openai_routes.render_messages(body.messages),
                                                 add_generation_prompt=body.add_generation_prompt)
        else:
            text = body.prompt
        ids = state.tok.encode(text)
        return {"tokens": ids, "count": len(ids), "max_model_len": state.model.config.max_seq_len}

    @app.post("/detokenize", dependencies=[Depends(auth)])
    async def detokenize(body: DetokenizeRequest):
        state.ready()
        V = state.tok.vocab_size
        bad = next((t for t in body.tokens if t >= V), None)
        if bad is not None:
            raise ApiError(400, f"tokens: id {bad} is outside the vocabulary (0..{V - 1})", param="tokens")
        return {"prompt": state.tok.decode(body.tokens)}

    @app.post("/v1/trace", dependencies=[Depends(auth)])
    def trace(body: TraceRequest):
        # A plain `def`: FastAPI runs it in its threadpool, so span search never blocks the
        # event loop; the lock serialises searches (the index loads labels lazily, and
        # parallel searches on 2 cores would only slow generation down further).
        if trace_index is None:
            raise ApiError(404, "this server has no trace index; start it with `olmo2 serve --trace INDEX`",
                           "not_found_error", code="trace_not_enabled")
        from olmo2.trace.rank import trace_text
        with trace_lock:
            res = trace_text(trace_index, body.text, max_count=body.max_count, max_docs=body.max_docs,
                             context=body.context)
        return res.to_dict()

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return PlainTextResponse(_prometheus(state), media_type="text/plain; version=0.0.4")

    return app


def _prometheus(state: State) -> str:
    """Prometheus text exposition of the server's counters and gauges."""
    eng = state.engine
    s = eng.stats if eng is not None else {}
    lines = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]):
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {value}" for labels, value in samples)

    metric("olmo2_requests_total", "counter", "API requests by endpoint",
           [(f'{{endpoint="{k}"}}', v) for k, v in state.requests.items()])
    metric("olmo2_http_errors_total", "counter", "error responses by status",
           [(f'{{status="{k}"}}', v) for k, v in sorted(state.http_errors.items())])
    metric("olmo2_prompt_tokens_total", "counter", "prompt tokens prefilled", [("", s.get("prompt_tokens", 0))])
    metric("olmo2_generation_tokens_total", "counter", "tokens generated", [("", s.get("completion_tokens", 0))])
    metric("olmo2_prefix_cache_hit_tokens_total", "counter", "prompt tokens whose KV came from the prefix cache",
           [("", s.get("prefix_hit_tokens", 0))])
    metric("olmo2_sequences_finished_total", "counter", "sequences finished by reason",
           [(f'{{reason="{k[9:]}"}}', v) for k, v in sorted(s.items()) if k.startswith("finished_")])
    metric("olmo2_queue_rejected_total", "counter", "requests refused with 429", [("", s.get("rejected", 0))])
    metric("olmo2_decode_steps_total", "counter", "batched decode forwards", [("", s.get("steps", 0))])
    metric("olmo2_generation_tokens_per_second", "gauge", "tokens/s over the last 10 s",
           [("", round(eng.tokens_per_second(), 3) if eng else 0)])
    metric("olmo2_queue_depth", "gauge", "requests waiting for a batch slot", [("", eng.queue_depth if eng else 0)])
    metric("olmo2_batch_size", "gauge", "requests in the running batch", [("", eng.batch_size if eng else 0)])
    metric("olmo2_kv_blocks_free", "gauge", "KV cache blocks free or evictable", [("", eng.pool.free_blocks if eng else 0)])
    metric("olmo2_kv_blocks_cached", "gauge", "KV cache blocks holding a reusable prefix",
           [("", eng.pool.cached_blocks if eng else 0)])
    metric("olmo2_model_loaded", "gauge", "1 once the model is ready", [("", 1 if eng else 0)])
    return "\n".join(lines) + "\n"

