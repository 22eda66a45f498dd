"""What the HTTP server and the batch runner share: a model, its engine, and request -> prompt + sampling."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..render.config import RenderConfig
from .engine import Engine, SamplingParams
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
    timeout: float = 600.0  # seconds per request
    cache_bytes: int = 1 << 30  # document cache budget (0: off)
    threshold: int = 4000  # characters of text content rendered as pages
    max_pages: int = 256
    default_max_tokens: int = 256
    allowed_media_dir: str | None = None  # file:// image URLs may read under it


class ChatService:
    def __init__(self, engine: Engine, options: InputOptions, default_max_tokens: int = 256,
                 model_name: str | None = None):
        self.engine, self.options = engine, options
        self.gm = engine.gm
        self.default_max_tokens = default_max_tokens
        self.model_name = model_name or options.model_id

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
                        timeout=cfg.timeout, prefill_chunk=cfg.prefill_chunk).start()
        opts = InputOptions(gm.render_config, name, cfg.threshold, cfg.max_pages, cfg.allowed_media_dir)
        return cls(engine, opts, cfg.default_max_tokens, name)

    def parse(self, body) -> ChatCompletionRequest:
        req = parse_request(body)
        if req.model not in (None, self.model_name):
            raise RequestError(f"model: {req.model!r} is not served here; this server serves {self.model_name!r}",
                               "model", 404, "model_not_found")
        return req

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
        try:
            prompt = build_prompt(self.gm, messages, opts, overrides, self.engine.cache)
        except RequestError:
            raise
        except (ValueError, TypeError, MemoryError) as e:  # e.g. the image token in a text, a config conflict
            raise RequestError(f"{type(e).__name__}: {e}", "messages") from None
        if req.max_tokens is None and req.max_completion_tokens is None and self.engine.max_positions:
            params.max_tokens = max(1, min(params.max_tokens, self.engine.max_positions - len(prompt.input_ids)))
        self.engine.check(prompt, params)
        return prompt, params

    def shutdown(self) -> None:
        self.engine.shutdown()


def glyph_stats(prompt: Prompt, cache_hit: str) -> dict:
    return {"pages": prompt.pages, "visual_tokens": prompt.visual_tokens, "text_tokens": prompt.text_tokens,
            "cache_hit": cache_hit}
