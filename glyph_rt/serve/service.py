"""What the HTTP server and the batch runner share: a model, its engine, and request -> prompt + sampling.

The HTTP app talks to a backend on its event loop:
    req = backend.parse(body)               # RequestError for a bad body or another model's name
    r = await backend.submit(req, events)   # RequestError or QueueFull, or the request queued; its events then
                                            # ({"type": "delta" | "finish" | "done" | "error", ...}) arrive in
                                            # `events` ("finish": one of n > 1 choices ended); at "done",
                                            # r.results() (each choice's text, finish_reason, logprobs),
                                            # r.finish_reason, r.usage() and r.stats()
    backend.cancel(r)                       # no-op once it is finished
    await backend.metrics_text()            # the Prometheus exposition
    backend.healthy, backend.model_name, backend.max_positions
ChatService is that backend in the server's process; EngineProcess (engine_process.py) runs a ChatService in a
process of its own and is the same backend seen from the server's process.
"""
from __future__ import annotations

import asyncio
import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from ..render.config import RenderConfig
from .engine import Engine, Request, SamplingParams
from .inputs import InputOptions, Prompt, RequestError, build_prompt
from .protocol import ChatCompletionRequest, parse_request


@dataclass
class ServeConfig:
    """The model and engine settings of `glyph-rt serve` and `batch` (the HTTP limits go to build_app)."""
    model: str  # checkpoint directory
    served_model_name: str | None = None
    render_config: RenderConfig | None = None
    device: str | None = None
    kernels: str = "auto"
    max_batch: int = 32
    prefill_chunk: int = 2048  # prompt tokens per engine step while others decode (0: whole prompts)
    max_queue: int = 256
    max_queue_bytes: int = 4 << 30  # rendered pages of requests not yet through the vision tower
    kv_cache_bytes: int | None = None  # the running batch's KV at its longest (None: 70% of the GPU's free memory)
    timeout: float = 600.0  # seconds per request
    cache_bytes: int = 1 << 30  # document cache budget (0: off)
    threshold: int = 4000  # characters of text content rendered as pages
    max_pages: int = 256
    default_max_tokens: int = 256
    allowed_media_dir: str | None = None  # file:// image URLs may read under it


def parse_for(body, model_name: str) -> ChatCompletionRequest:
    """The request in `body`, for the model `model_name` (or none named)."""
    req = parse_request(body)
    if req.model not in (None, model_name):
        raise RequestError(f"model: {req.model!r} is not served here; this server serves {model_name!r}",
                           "model", 404, "model_not_found")
    return req


class LoopMailbox:
    """Events from the engine's thread to the event loop's request queues: one wake-up of the loop carries every
    event that arrives before it runs (a decode step's tokens for all its requests), not one per token."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._items: list = []
        self._lock = threading.Lock()

    def post(self, queue: asyncio.Queue, ev: dict) -> None:
        if self.loop.is_closed():  # the engine cancels a request whose listener fails
            raise RuntimeError("the server's event loop is closed")
        with self._lock:
            self._items.append((queue, ev))
            if len(self._items) > 1:
                return  # a wake-up is already on its way
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        for queue, ev in items:
            queue.put_nowait(ev)


class ChatService:
    def __init__(self, engine: Engine, options: InputOptions, default_max_tokens: int = 256,
                 model_name: str | None = None):
        self.engine, self.options = engine, options
        self.gm = engine.gm
        self.default_max_tokens = default_max_tokens
        self.model_name = model_name or options.model_id
        self.max_positions = engine.max_positions
        self._mailbox: LoopMailbox | None = None

    @property
    def healthy(self) -> bool:
        return self.engine.alive

    @classmethod
    def from_config(cls, cfg: ServeConfig, gm=None) -> "ChatService":
        """The service of `cfg`: its checkpoint loaded, or `gm`, a GlyphModel already built (benchmarks)."""
        from ..models import GlyphModel

        if gm is None:
            gm = GlyphModel.from_pretrained(cfg.model, render_config=cfg.render_config, kernels=cfg.kernels,
                                            device=cfg.device)
            name = cfg.served_model_name or Path(cfg.model).resolve().name
        else:
            name = cfg.served_model_name or cfg.model
        engine = Engine(gm, max_batch=cfg.max_batch, max_queue=cfg.max_queue, cache_bytes=cfg.cache_bytes,
                        timeout=cfg.timeout, prefill_chunk=cfg.prefill_chunk,
                        max_queue_bytes=cfg.max_queue_bytes, kv_cache_bytes=cfg.kv_cache_bytes).start()
        opts = InputOptions(gm.render_config, name, cfg.threshold, cfg.max_pages, cfg.allowed_media_dir)
        return cls(engine, opts, cfg.default_max_tokens, name)

    def parse(self, body) -> ChatCompletionRequest:
        return parse_for(body, self.model_name)

    def prepare(self, req: ChatCompletionRequest) -> tuple[Prompt, SamplingParams]:
        """Renders and tokenizes (the slow part: run it off the event loop); checks it fits before any compute."""
        params = req.sampling(self.default_max_tokens)
        opts = self.options
        overrides = None
        if req.glyph is not None:
            overrides = req.glyph.render_config
            if req.glyph.threshold is not None:
                opts = dataclasses.replace(opts, threshold=req.glyph.threshold)
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        for m in messages:
            if m["role"] == "developer":
                m["role"] = "system"
        given = req.max_tokens is not None or req.max_completion_tokens is not None
        budget = None  # the prompt's positions: the model's context less max_tokens (at least 1, when not given)
        if self.engine.max_positions:
            budget = max(0, self.engine.max_positions - (params.max_tokens if given else 1))
        try:
            prompt = build_prompt(self.gm, messages, opts, overrides, self.engine.cache, budget)
        except RequestError:
            raise
        except torch.cuda.OutOfMemoryError:  # this request's pages did not fit the GPU's memory now: its error
            raise RequestError("the GPU ran out of memory preparing this request's pages; retry later, or send fewer "
                               "pages", None, 503, "out_of_memory") from None
        except (ValueError, TypeError, MemoryError) as e:  # e.g. the image token in a text, a config conflict
            raise RequestError(f"{type(e).__name__}: {e}", "messages") from None
        if not given and self.engine.max_positions:
            params.max_tokens = max(1, min(params.max_tokens, self.engine.max_positions - len(prompt.input_ids)))
        self.engine.check(prompt, params)
        return prompt, params

    async def submit(self, req: ChatCompletionRequest, events: asyncio.Queue) -> Request:
        """Prepares `req` on a worker thread and queues it; its events then arrive in `events` (no deltas unless it
        streams). QueueFull at once, before the render, when the queue has no room for it."""
        if not self.engine.alive:
            raise RequestError("the engine has stopped (the server's log says why); restart the server", None, 503)
        slot = self.engine.reserve()
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(None, self.prepare, req)
        try:
            prompt, params = await asyncio.shield(work)
        except asyncio.CancelledError:  # the client left: the render goes on, holding its place until it ends
            work.add_done_callback(lambda _: slot.release())
            raise
        except BaseException:
            slot.release()
            raise
        if self._mailbox is None or self._mailbox.loop is not loop:
            self._mailbox = LoopMailbox(loop)
        mailbox, stream = self._mailbox, req.stream

        def on_event(ev):  # on the engine's thread
            if stream or ev["type"] != "delta":
                mailbox.post(events, ev)

        try:
            return self.engine.submit(prompt, params, on_event, slot=slot)
        finally:
            slot.release()  # a no-op once it is queued

    def cancel(self, r: Request) -> None:
        self.engine.cancel(r)

    async def metrics_text(self) -> bytes:
        return self.exposition()

    def exposition(self) -> bytes:
        """The engine's metrics in Prometheus' text format."""
        self.engine.metrics.cache_bytes.set(self.engine.cache.nbytes)
        return self.engine.metrics.exposition()

    def shutdown(self) -> None:
        self.engine.shutdown()
