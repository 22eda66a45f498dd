"""Evaluation targets: what answers an item. The evaluation harness and the rendering search both use these.

    make_target("path/to/checkpoint")              -> GlyphModelTarget (GlyphModel in this process)
    make_target("openai:http://host:8000/v1")      -> OpenAITarget (first model the server lists)
    make_target("openai:http://host:8000/v1:NAME") -> OpenAITarget for model NAME

target.answer(item, config, as_text=False) -> Reply. With as_text the context is sent as text (the text-only
baseline); otherwise it is rendered with `config` and sent as pages: in process as pixel_values (on the serving
engine), to an endpoint as PNG data URIs (OpenAI's image_url parts), one per page, followed by the question as
text. Decoding is greedy (temperature 0). Both kinds answer several items at once (evaluate's concurrency).
"""
from __future__ import annotations

import base64
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..render.config import RenderConfig
from ..render.tokens import VisionModel


@dataclass
class Reply:
    text: str
    pages: int  # images sent (0 with as_text)
    visual_tokens: int  # what the pages cost the model (0 with as_text)
    latency_s: float


def text_prompt(item) -> str:
    """The text baseline's user turn: the item's text_prompt, else the context, a blank line and the question."""
    if item.text_prompt:
        return item.text_prompt
    if not item.context:
        raise ValueError(f"item {item.id}: has page images and no text context; it cannot be sent as text")
    return f"{item.context}\n\n{item.question}" if item.question else item.context


def text_messages(item) -> list[dict]:
    """The text baseline's conversation: the item's messages (a multi-turn benchmark), else one user turn."""
    return [dict(m) for m in item.messages] if item.messages else [{"role": "user", "content": text_prompt(item)}]


class TargetError(RuntimeError):
    """The target itself failed (an unreachable or failing server, an engine error), not the item: it stops an
    evaluation or a search (a rerun resumes) instead of being recorded as the item's or config's failure."""


class Target:
    name: str = "target"  # the label of its rows and tables
    model_type: str | VisionModel = "glm4v"  # whose resize rule (and limits) counts the visual tokens of pages
    concurrent: bool = False  # answer() may run in several threads at once
    repetition_penalty: float = 1.0  # decoding is greedy; Glyph's official evaluation scripts use 1.1

    @property
    def key(self) -> str:
        """What identifies the model answering (a checkpoint's resolved path, an endpoint and model): results of
        two targets of the same name never mix."""
        return self.name

    def answer(self, item, config: RenderConfig, *, as_text: bool = False) -> Reply:
        raise NotImplementedError

    def close(self) -> None:
        pass


def page_images(item, config: RenderConfig) -> list:
    """The item's pages as uint8 [H, W, 3] arrays: its context rendered with config, or its image files."""
    import numpy as np

    if item.images:
        from PIL import Image

        out = []
        for p in item.images:
            if not Path(p).is_file():
                raise ValueError(f"item {item.id}: page image {p!r} does not exist")
            try:
                with Image.open(p) as im:
                    out.append(np.asarray(im.convert("RGB")))
            except Exception as e:  # noqa: BLE001 - not an image, truncated, too large...: this item's failure
                raise ValueError(f"item {item.id}: page image {p}: {e}") from None
        return out
    from ..render.pages import render

    pages = render(item.context, config)
    return [np.asarray(pg.numpy()) for pg in pages]


class GlyphModelTarget(Target):
    """A local checkpoint run in this process by GlyphModel (glyph_rt's rendering, prompt and kernels) on the
    serving engine: the answers in flight at once (evaluate's `concurrency`) share its continuous batches, and a
    document asked about again reuses its pages' embeddings and prefix KV from the engine's document cache. Greedy
    answers equal GlyphModel.generate's."""

    concurrent = True

    def __init__(self, path, *, device=None, kernels: str = "auto", dtype=None, name: str | None = None,
                 max_batch: int = 32, cache_bytes: int = 1 << 30, repetition_penalty: float = 1.0):
        from ..models import GlyphModel

        self.repetition_penalty = _penalty(repetition_penalty)
        self.path = str(path)
        self.name = name or Path(path).resolve().name
        self.model = GlyphModel.from_pretrained(path, kernels=kernels, dtype=dtype, device=device)
        self.model_type = self.model.vision
        self.max_batch, self.cache_bytes = max_batch, cache_bytes
        self._engine = None
        self._lock = threading.Lock()

    @property
    def engine(self):
        """The serving engine on this target's model, started on first use."""
        from ..serve.engine import Engine

        with self._lock:
            if self._engine is None:
                self._engine = Engine(self.model, max_batch=self.max_batch, cache_bytes=self.cache_bytes,
                                      timeout=7 * 86400).start()
            return self._engine

    @property
    def key(self) -> str:
        return str(Path(self.path).resolve())

    def answer(self, item, config: RenderConfig, *, as_text: bool = False) -> Reply:
        from ..serve.engine import QueueFull, SamplingParams
        from ..serve.inputs import InputOptions, build_prompt

        t0 = time.perf_counter()
        media = None
        if as_text:
            messages = text_messages(item)
        else:
            if item.images:
                files = [str(Path(p).resolve()) for p in item.images]
                for p, f in zip(item.images, files):
                    if not Path(f).is_file():
                        raise ValueError(f"item {item.id}: page image {p!r} does not exist")
                media = os.path.commonpath([str(Path(f).parent) for f in files])
                content = [{"type": "image_url", "image_url": {"url": "file://" + f}} for f in files]
            else:
                content = [{"type": "glyph", "glyph": {"text": item.context}}]
            if item.question:
                content.append({"type": "text", "text": item.question})
            messages = [{"role": "user", "content": content}]
        # no threshold: the context is rendered as a glyph part, the question and the text baseline stay text
        opts = InputOptions(config.validate(), self.name, threshold=sys.maxsize, max_pages=100_000,
                            allowed_media_dir=media, max_image_bytes=1 << 30)
        engine = self.engine
        params = SamplingParams(max_tokens=item.max_new_tokens, temperature=0,
                                repetition_penalty=self.repetition_penalty)
        while True:
            prompt = build_prompt(self.model, messages, opts, None, engine.cache)
            try:
                done = engine.complete(prompt, params)
                break
            except QueueFull as e:  # the engine holds its limit of waiting pages: render again once there is room
                del prompt
                time.sleep(min(e.retry_after, 5))
            except ValueError as e:  # the engine failing is not the item's fault: it stops the run (a rerun resumes)
                if getattr(e, "status", 400) >= 500:
                    raise TargetError(f"{self.name}: {e}") from None
                raise
        return Reply(done.text, prompt.pages, prompt.visual_tokens, time.perf_counter() - t0)

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.shutdown()
                self._engine = None


_SPEC = re.compile(r"(?P<host>\[[^\]]*\]|[^/:\[]+)(?P<port>:\d+)?(?P<path>/[^:]*)?(?::(?P<model>.*))?", re.S)


def parse_openai_spec(spec: str) -> tuple[str, str | None]:
    """'openai:URL[:MODEL]' -> (base URL ending in /v1 unless it has a path, model or None). The model is all that
    follows the URL's host, port and path (which hold no ':'), so it may hold ':' and '/' (llama3:8b, org/name)."""
    scheme, sep, tail = spec[len("openai:"):].partition("://")
    m = _SPEC.fullmatch(tail) if sep else None
    if m is None:
        raise ValueError(f"target {spec!r}: expected openai:URL[:MODEL] with URL like http://127.0.0.1:8000/v1")
    model = m["model"]
    if model == "":
        raise ValueError(f"target {spec!r}: empty model name after ':'")
    path = (m["path"] or "").rstrip("/") or "/v1"
    return f"{scheme}://{m['host']}{m['port'] or ''}{path}", model


def png_data_uri(image) -> str:
    from ..render.png import encode_png

    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode("ascii")


# 4xx statuses that are not the request's fault: no access, no such model, or transient (408, 409 and 429, which
# the openai client retries, as 5xx): they stop the run, and a rerun asks again
NOT_THE_ITEMS = (401, 403, 404, 408, 409, 429)


class OpenAITarget(Target):
    """Any OpenAI-compatible chat endpoint (glyph_rt's server, vLLM serving Glyph, a text-only LLM)."""

    concurrent = True

    def __init__(self, base_url: str, model: str | None = None, *, api_key: str | None = None,
                 timeout: float = 600.0, max_retries: int = 2, model_type: str = "glm4v", name: str | None = None,
                 repetition_penalty: float = 1.0):
        from openai import OpenAI

        self.repetition_penalty = _penalty(repetition_penalty)
        self.base_url = base_url
        self.client = OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
                             timeout=timeout, max_retries=max_retries)
        if model is None:
            models = self._models()
            if not models:
                raise ValueError(f"{base_url}: the server lists no model; name one (openai:URL:MODEL)")
            model = models[0]
        self.model = model
        self.model_type = model_type
        self.name = name or model

    @property
    def key(self) -> str:
        return f"{self.base_url}#{self.model}"

    def answer(self, item, config: RenderConfig, *, as_text: bool = False) -> Reply:
        from ..render.tokens import visual_tokens

        t0 = time.perf_counter()
        if as_text:
            messages = text_messages(item)
            pages = vis = 0
        else:
            images = page_images(item, config)
            content = [{"type": "image_url", "image_url": {"url": png_data_uri(im)}} for im in images]
            if item.question:
                content.append({"type": "text", "text": item.question})
            pages = len(images)
            vis = sum(visual_tokens([(im.shape[1], im.shape[0]) for im in images], self.model_type))
            messages = [{"role": "user", "content": content}]
        # repetition_penalty is vLLM's (and glyph_rt's server's) extension of the protocol
        extra = {"repetition_penalty": self.repetition_penalty} if self.repetition_penalty != 1.0 else None
        r = self._call(self.client.chat.completions.create, model=self.model, messages=messages, temperature=0,
                       max_tokens=item.max_new_tokens, extra_body=extra)
        return Reply(self._text(r), pages, vis, time.perf_counter() - t0)

    def _models(self) -> list[str]:
        """The model ids the server lists; a reply that is no model list is the server's failure (TargetError)."""
        try:
            ids = [m.id for m in self._call(self.client.models.list)]
        except (AttributeError, TypeError):  # a 200 whose body is not a JSON object (an HTML page) or lists no models
            ids = None
        if ids is None or not all(isinstance(i, str) and i for i in ids):
            raise TargetError(f"{self.base_url}: the server's reply to /models is not a list of models")
        return ids

    def _text(self, r) -> str:
        """The answer in a chat completion; a 200 that is none (an HTML page, no choices, no message) is the
        server's failure, not the item's: a TargetError."""
        from openai.types.chat import ChatCompletion

        choices = r.choices if isinstance(r, ChatCompletion) else None
        message = getattr(choices[0], "message", None) if isinstance(choices, list) and choices else None
        if not hasattr(message, "content") or not isinstance(message.content, (str, type(None))):
            raise TargetError(f"{self.base_url}: the server's reply is not a chat completion with a message: "
                              f"{str(r)[:200]!r}")
        return message.content or ""

    def _call(self, fn, **kwargs):
        """An API call; a request the server rejects (4xx: too long, bad input) is a ValueError, recorded for
        the item; an unreachable, failing or busy server (after the client's retries; NOT_THE_ITEMS) a
        TargetError, which stops the run (a rerun resumes)."""
        import openai

        try:
            return fn(**kwargs)
        except openai.APIStatusError as e:
            if 400 <= e.status_code < 500 and e.status_code not in NOT_THE_ITEMS:
                raise ValueError(f"{self.base_url}: the server rejected the request ({e.status_code}): "
                                 f"{str(e.message)[:300]}") from None
            raise TargetError(f"{self.base_url}: HTTP {e.status_code}: {str(e.message)[:300]}") from None
        except openai.APIConnectionError as e:
            raise TargetError(f"{self.base_url}: cannot reach the server ({e.__class__.__name__}: "
                               f"{str(e.__cause__ or e)[:200]})") from None
        except (openai.APIResponseValidationError, json.JSONDecodeError) as e:  # a 200 whose body is no JSON
            raise TargetError(f"{self.base_url}: unreadable reply ({e.__class__.__name__}: {str(e)[:200]})") from None

    def close(self) -> None:
        self.client.close()


def _penalty(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 2:
        raise ValueError(f"repetition_penalty: {v!r} must be a number in (0, 2]")
    return float(v)


def make_target(spec, **kwargs) -> Target:
    """A Target from a spec: a local checkpoint directory, or openai:URL[:MODEL]; a Target passes through.
    kwargs go to the target (both: name, the label of its rows and tables, by default the checkpoint directory's
    or the served model's name, and repetition_penalty; GlyphModelTarget: device, kernels, dtype; OpenAITarget: api_key, timeout)."""
    if isinstance(spec, Target):
        return spec
    spec = str(spec)
    if spec.startswith("openai:"):
        url, model = parse_openai_spec(spec)
        return OpenAITarget(url, model, **kwargs)
    if not Path(spec).exists():
        raise FileNotFoundError(f"target {spec!r}: no such checkpoint directory (or use openai:URL[:MODEL])")
    return GlyphModelTarget(spec, **kwargs)
