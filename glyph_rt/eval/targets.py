"""Evaluation targets: what answers an item. The evaluation harness and the rendering search both use these.

    make_target("path/to/checkpoint")              -> GlyphModelTarget (GlyphModel in this process)
    make_target("openai:http://host:8000/v1")      -> OpenAITarget (first model the server lists)
    make_target("openai:http://host:8000/v1:NAME") -> OpenAITarget for model NAME

target.answer(item, config, as_text=False) -> Reply. With as_text the context is sent as text (the text-only
baseline); otherwise it is rendered with `config` and sent as pages: in process as pixel_values, to an
endpoint as PNG data URIs (OpenAI's image_url parts), one per page, followed by the question as text.
Decoding is greedy (temperature 0).
"""
from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..render.config import RenderConfig


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


class Target:
    name: str = "target"
    model_type: str = "glm4v"  # whose resize rule counts the visual tokens of pages

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
            with Image.open(p) as im:
                out.append(np.asarray(im.convert("RGB")))
        return out
    from ..render.pages import render

    pages = render(item.context, config)
    return [np.asarray(pg.numpy()) for pg in pages]


class GlyphModelTarget(Target):
    """A local checkpoint run in this process by GlyphModel (glyph_rt's rendering, prompt and kernels)."""

    def __init__(self, path, *, device=None, kernels: str = "auto", dtype=None):
        from ..models import GlyphModel

        self.path = str(path)
        self.name = Path(path).name or str(path)
        self.model = GlyphModel.from_pretrained(path, kernels=kernels, dtype=dtype, device=device)
        self.model_type = self.model.model_type

    def answer(self, item, config: RenderConfig, *, as_text: bool = False) -> Reply:
        import torch

        gm = self.model
        t0 = time.perf_counter()
        if as_text:
            return Reply(self._generate_text(text_prompt(item), item.max_new_tokens), 0, 0,
                         time.perf_counter() - t0)
        if item.images:
            text, pages, vis = self._generate_images(item)
            return Reply(text, pages, vis, time.perf_counter() - t0)
        gm.render_config = config.validate()
        with torch.no_grad():
            a, = gm.generate([item.context], [item.question], max_new_tokens=item.max_new_tokens, do_sample=False)
        return Reply(a.text, a.pages, a.visual_tokens, time.perf_counter() - t0)

    def _decode(self, inputs: dict, max_new_tokens: int) -> str:
        import torch

        gm = self.model
        with torch.no_grad():
            out = gm.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        ids = [t for t in out[0, inputs["input_ids"].shape[1]:].tolist() if t != gm.tokenizer.pad_token_id]
        return gm.tokenizer.decode(ids, skip_special_tokens=True)

    def _generate_text(self, user: str, max_new_tokens: int) -> str:
        gm = self.model
        gm.prompts.check_text(user, "context")
        prompt = gm.prompts.prompt([], user)
        enc = gm.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        ids = enc["input_ids"].to(gm.device)
        if gm.max_positions and ids.shape[1] + max_new_tokens > gm.max_positions:
            raise ValueError(f"the text prompt needs {ids.shape[1] + max_new_tokens} positions, over the model's "
                             f"{gm.max_positions}")
        inputs = dict(input_ids=ids, attention_mask=enc["attention_mask"].to(gm.device))
        if gm.model_type == "glm4v":
            inputs["mm_token_type_ids"] = ids.new_zeros(ids.shape)
        return self._decode(inputs, max_new_tokens)

    def _generate_images(self, item) -> tuple[str, int, int]:
        import torch

        from ..models.prompt import tokens_per_image
        from ..ops.pixel_values import pixel_values_from_pages

        gm = self.model
        pages = [torch.from_numpy(p.copy()) for p in page_images(item, gm.render_config)]
        dtype = gm.model.dtype if gm.model.dtype in (torch.float32, torch.bfloat16) else torch.float32
        pv, grid = pixel_values_from_pages(pages, gm.model_type, dtype=dtype)
        per = tokens_per_image(grid)
        enc = gm.tokenizer(gm.prompts.prompt(per, item.question), return_tensors="pt", add_special_tokens=False)
        ids = enc["input_ids"].to(gm.device)
        inputs = dict(input_ids=ids, attention_mask=enc["attention_mask"].to(gm.device), pixel_values=pv.to(gm.device),
                      image_grid_thw=grid.to(gm.device), mm_token_type_ids=(ids == gm.image_token_id).long())
        if gm.max_positions and ids.shape[1] + item.max_new_tokens > gm.max_positions:
            raise ValueError(f"item {item.id}: {len(pages)} pages need {ids.shape[1] + item.max_new_tokens} positions, "
                             f"over the model's {gm.max_positions}")
        return self._decode(inputs, item.max_new_tokens), len(pages), sum(per)


def parse_openai_spec(spec: str) -> tuple[str, str | None]:
    """'openai:URL[:MODEL]' -> (base URL ending in /v1 unless it has a path, model or None)."""
    rest = spec[len("openai:"):]
    if "://" not in rest:
        raise ValueError(f"target {spec!r}: expected openai:URL[:MODEL] with URL like http://127.0.0.1:8000/v1")
    scheme, tail = rest.split("://", 1)
    model = None
    if ":" in tail:
        head, last = tail.rsplit(":", 1)
        if not last.split("/")[0].isdigit():  # not a port
            tail, model = head, last
    if model == "":
        raise ValueError(f"target {spec!r}: empty model name after ':'")
    url = f"{scheme}://{tail}".rstrip("/")
    if "/" not in tail.rstrip("/"):
        url += "/v1"
    return url, model


def png_data_uri(image) -> str:
    from ..render.png import encode_png

    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode("ascii")


class OpenAITarget(Target):
    """Any OpenAI-compatible chat endpoint (glyph_rt's server, vLLM serving Glyph, a text-only LLM)."""

    def __init__(self, base_url: str, model: str | None = None, *, api_key: str | None = None,
                 timeout: float = 600.0, max_retries: int = 2, model_type: str = "glm4v"):
        from openai import OpenAI

        self.base_url = base_url
        self.client = OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
                             timeout=timeout, max_retries=max_retries)
        if model is None:
            models = [m.id for m in self._call(self.client.models.list)]
            if not models:
                raise ValueError(f"{base_url}: the server lists no model; name one (openai:URL:MODEL)")
            model = models[0]
        self.model = model
        self.model_type = model_type
        self.name = model

    def answer(self, item, config: RenderConfig, *, as_text: bool = False) -> Reply:
        from ..render.tokens import visual_tokens

        t0 = time.perf_counter()
        if as_text:
            content = text_prompt(item)
            pages = vis = 0
        else:
            images = page_images(item, config)
            content = [{"type": "image_url", "image_url": {"url": png_data_uri(im)}} for im in images]
            if item.question:
                content.append({"type": "text", "text": item.question})
            pages = len(images)
            vis = sum(visual_tokens([(im.shape[1], im.shape[0]) for im in images], self.model_type))
        r = self._call(self.client.chat.completions.create, model=self.model,
                       messages=[{"role": "user", "content": content}], temperature=0, max_tokens=item.max_new_tokens)
        text = r.choices[0].message.content or ""
        return Reply(text, pages, vis, time.perf_counter() - t0)

    def _call(self, fn, **kwargs):
        """An API call; a request the server rejects (4xx: too long, bad input) is a ValueError, recorded for
        the item; an unreachable or failing server (after the client's retries) a RuntimeError, which stops
        the run (a rerun resumes)."""
        import openai

        try:
            return fn(**kwargs)
        except openai.APIStatusError as e:
            if 400 <= e.status_code < 500 and e.status_code not in (401, 403, 404, 429):
                raise ValueError(f"{self.base_url}: the server rejected the request ({e.status_code}): "
                                 f"{str(e.message)[:300]}") from None
            raise RuntimeError(f"{self.base_url}: HTTP {e.status_code}: {str(e.message)[:300]}") from None
        except openai.APIConnectionError as e:
            raise RuntimeError(f"{self.base_url}: cannot reach the server ({e.__class__.__name__}: "
                               f"{str(e.__cause__ or e)[:200]})") from None

    def close(self) -> None:
        self.client.close()


def make_target(spec, **kwargs) -> Target:
    """A Target from a spec: a local checkpoint directory, or openai:URL[:MODEL]; a Target passes through.
    kwargs go to the target (GlyphModelTarget: device, kernels, dtype; OpenAITarget: api_key, timeout)."""
    if isinstance(spec, Target):
        return spec
    spec = str(spec)
    if spec.startswith("openai:"):
        url, model = parse_openai_spec(spec)
        return OpenAITarget(url, model, **kwargs)
    if not Path(spec).exists():
        raise FileNotFoundError(f"target {spec!r}: no such checkpoint directory (or use openai:URL[:MODEL])")
    return GlyphModelTarget(spec, **kwargs)
