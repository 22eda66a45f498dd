"""The OpenAI-compatible HTTP server (FastAPI): /v1/chat/completions (JSON or SSE), /v1/models, /health, /metrics.

    app = build_app(EngineProcess(ServeConfig(model="path/to/Glyph")))   # the engine in a process of its own
    app = build_app(ChatService.from_config(ServeConfig(model=...)))     # or in this process
    uvicorn.run(app, host="127.0.0.1", port=8000)

Errors are OpenAI error objects with the status a client expects (400 bad field or too long, 401 key,
404 model, 413 body or image too large, 429 queue full with Retry-After, 408 timed out in the queue, 504 ran past
the timeout, with x-should-retry: false). Request bodies are never logged.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..fileio import json_text
from .engine import QueueFull
from .inputs import RequestError
from .protocol import chunk, completion_id, error, response

log = logging.getLogger("glyph_rt.serve")


class _JSON(JSONResponse):
    """A JSON response whatever its text holds: a lone surrogate (from a client's JSON, quoted in an error message)
    is written as its \\u escape (fileio.json_text) where starlette's UTF-8 encoding would raise."""

    def render(self, content) -> bytes:
        return json_text(content).encode("utf-8")


def _error(e: RequestError) -> JSONResponse:
    # a request that ran past its timeout would only run as long again: the openai SDK retries a 5xx unless told
    headers = {"x-should-retry": "false"} if e.status == 504 else None
    return _JSON(error(str(e), e.status, e.param, e.code), status_code=e.status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    too_big = RequestError(f"the request body is over this server's limit of {limit:,} bytes; send fewer or smaller "
                           "documents per request (or raise --max-body-mb)", None, 413, "request_too_large")
    n = request.headers.get("content-length")
    if n is not None and n.isdigit() and int(n) > limit:
        raise too_big
    buf = bytearray()
    async for piece in request.stream():
        buf += piece
        if len(buf) > limit:
            raise too_big
    return bytes(buf)


def build_app(backend, api_key: str | None = None, max_body_bytes: int = 64 << 20) -> FastAPI:
    """The app over `backend`: a ChatService (the engine in this process) or an EngineProcess."""
    app = FastAPI(title="glyph_rt", openapi_url=None, docs_url=None, redoc_url=None,  # no schema past the key
                  default_response_class=_JSON)
    app.state.backend = backend

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return _JSON(error(str(exc.detail), exc.status_code), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def any_error(request, exc):
        log.exception("unexpected error")
        return _JSON(error(f"internal error: {type(exc).__name__}", 500), status_code=500)

    if api_key:
        app.add_middleware(_BearerAuth, api_key=api_key)

    @app.get("/health")
    async def health():
        if not backend.healthy:
            return _JSON({"status": "the engine has stopped"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        try:
            text = await backend.metrics_text()
        except RequestError as e:
            return _error(e)
        return Response(text, media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": backend.model_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "glyph_rt", "max_model_len": backend.max_positions}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            raw = await _read_body(request, max_body_bytes)
            try:
                body = json.loads(raw)
            except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer of too many digits
                raise RequestError(f"the request body is not valid JSON: {e}") from None
            except RecursionError:
                raise RequestError("the request body is nested too deeply") from None
            req = backend.parse(body)
            events: asyncio.Queue = asyncio.Queue()
            r = await backend.submit(req, events)
        except QueueFull as e:
            return _JSON(error(str(e), 429, None, "queue_full"), status_code=429,
                         headers={"Retry-After": str(e.retry_after)})
        except RequestError as e:
            return _error(e)
        rid, model = completion_id(), backend.model_name
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_stream(request, r, events, rid, model, include_usage, req.n or 1),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            while True:
                try:
                    ev = await asyncio.wait_for(events.get(), 0.25)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        backend.cancel(r)
                        return Response(status_code=499)
                    continue
                if ev["type"] == "error":
                    return _error(ev["error"])
                if ev["type"] == "done":
                    return response(rid, model, r.results(), r.usage(), r.stats())
        finally:
            backend.cancel(r)  # no-op when finished

    async def _stream(request, r, events, rid, model, include_usage, n):
        created = int(time.time())

        def sse(obj) -> str:
            return f"data: {json_text(obj)}\n\n"

        def piece(delta: dict, finish_reason: str | None = None, **kw) -> str:
            return sse(chunk(rid, model, created, delta, finish_reason, include_usage=include_usage, **kw))

        try:
            for i in range(n):
                yield piece({"role": "assistant", "content": ""}, index=i)
            while True:
                try:
                    ev = events.get_nowait() if not events.empty() else await asyncio.wait_for(events.get(), 0.25)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
                # the deltas already queued go out as one chunk a choice (a client reading slower than tokens come)
                queued: dict[int, tuple[list, list | None]] = {}
                while ev is not None and ev["type"] == "delta":
                    text, logprobs = queued.get(ev.get("index", 0), ([], None))
                    text.append(ev["text"])
                    if "logprobs" in ev:
                        logprobs = (logprobs or []) + ev["logprobs"]
                    queued[ev.get("index", 0)] = text, logprobs
                    ev = events.get_nowait() if not events.empty() else None
                for i, (text, logprobs) in queued.items():
                    if any(text) or logprobs:
                        yield piece({"content": "".join(text)}, logprobs=logprobs, index=i)
                if ev is None:
                    continue
                if ev["type"] == "finish":  # one choice of several
                    yield piece({}, ev["finish_reason"], index=ev["index"])
                elif ev["type"] == "error":
                    e = ev["error"]
                    yield sse(error(str(e), e.status, e.param, e.code))
                    break
                else:
                    if n == 1:
                        yield piece({}, r.finish_reason)
                    if include_usage:
                        yield piece({}, usage=r.usage())
                    break
            yield "data: [DONE]\n\n"
        finally:
            backend.cancel(r)  # the client went away (or we are done: then a no-op)

    return app


class _BearerAuth:
    """ASGI middleware: /v1/ routes need 'Authorization: Bearer <api_key>' (401 otherwise)."""

    def __init__(self, app, api_key: str):
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            got = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(got, self.expected):
                reply = _JSON(error("missing or wrong API key: send 'Authorization: Bearer <key>'", 401),
                              status_code=401)
                await reply(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ServerThread:
    """A uvicorn server on a background thread (tests, benchmarks): `with ServerThread(app) as s: s.url`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    access_log=False, timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.host = host

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        t = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t > 30:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

