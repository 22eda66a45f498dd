"""OpenAI chat messages -> a GlyphModel prompt: long texts become rendered pages, data-URI images are read.

A message's content is a string or a list of parts:
  {"type": "text", "text": ...}            kept as text, or rendered when longer than the threshold
  {"type": "glyph", "glyph": {"text": ..., "render_config": {...}}}   always rendered
  {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}
A string content longer than the threshold is rendered. Every rendered text or image becomes pages in
place; the prompt is the checkpoint's chat template with each page's placeholder expanded
(PromptBuilder.template and expand).
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import torch

from ..models.prompt import tokens_per_image
from ..render.config import ConfigError, RenderConfig
from .doc_cache import DocumentCache, document_key, image_key, prefix_key


class RequestError(ValueError):
    """A request the server refuses; `param` names the field, `status` the HTTP status."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


# request-level render overrides: field -> (low, high) for numbers, None for validated-by-RenderConfig choices
RENDER_OVERRIDES = {
    "dpi": (36, 300), "font_size": (4, 48), "line_height": (4, 96), "margin_x": (0, 144), "margin_y": (0, 144),
    "horizontal_scale": (0.5, 2.0), "first_line_indent": (0, 144), "left_indent": (0, 144), "right_indent": (0, 144),
    "hanging_indent": (0, 144), "space_before": (0, 144), "space_after": (0, 144), "border_width": (0, 20),
    "border_padding": (0, 40), "lines_per_paragraph": (1, 1000),
    "page_size": None, "font_family": None, "alignment": None, "newline_markup": None, "wrap": None,
    "font_color": None, "page_bg_color": None, "para_bg_color": None, "para_border_color": None,
    "auto_crop_width": None, "auto_crop_last_page": None,
}
PAGE_SIDE = (72, 2400)  # points
MAX_PIXELS = 40_000_000  # an image_url's image, and a page that a request's render overrides make
# the image formats an image_url may hold (PIL's names): raster formats that PIL decodes itself, never one whose
# plugin runs a program on the bytes (EPS: Ghostscript)
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


def render_config_for(base: RenderConfig, overrides: dict | None, param: str) -> RenderConfig:
    """The server's config with a request's overrides, each within RENDER_OVERRIDES (no file paths)."""
    if not overrides:
        return base
    if not isinstance(overrides, dict):
        raise RequestError(f"{param}: expected an object of render settings", param)
    bad = sorted(set(overrides) - set(RENDER_OVERRIDES))
    if bad:
        raise RequestError(f"{param}: {', '.join(map(repr, bad))} cannot be set per request; allowed: "
                           f"{', '.join(RENDER_OVERRIDES)}", param)
    for k, v in overrides.items():
        rng = RENDER_OVERRIDES[k]
        if rng is not None:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not rng[0] <= v <= rng[1]:
                raise RequestError(f"{param}.{k}: {v!r} is outside the allowed range {rng[0]}..{rng[1]}", param)
    if "page_size" in overrides:
        ps = overrides["page_size"]
        if (not isinstance(ps, (list, tuple)) or len(ps) != 2
                or not all(isinstance(x, (int, float)) and PAGE_SIDE[0] <= x <= PAGE_SIDE[1] for x in ps)):
            raise RequestError(f"{param}.page_size: {ps!r} must be [width, height] in points, each "
                               f"{PAGE_SIDE[0]}..{PAGE_SIDE[1]}", param)
    try:
        cfg = RenderConfig.from_dict({**base.to_dict(), **overrides}).validate()
    except (ConfigError, ValueError, TypeError) as e:
        raise RequestError(f"{param}: {e}", param) from None
    # the page a request's dpi and page_size make: at most MAX_PIXELS, or as large as the server's own config's
    # (which the request did not choose)
    area = _page_area(cfg)
    if area > max(MAX_PIXELS, _page_area(base)):
        (w, h), scale = cfg.page_size, cfg.horizontal_scale
        scaled = f" and horizontal_scale {scale:g}" if scale > 1 else ""
        raise RequestError(f"{param}: a page of {w:g} x {h:g} pt (page_size) at dpi {cfg.dpi:g}{scaled} is {area:,} "
                           f"pixels, over the limit of {MAX_PIXELS:,} per page; lower dpi or page_size"
                           f"{' or horizontal_scale' if scaled else ''}", param)
    return cfg


def _page_area(cfg: RenderConfig) -> int:
    """Pixels of the larger buffer a page of `cfg` takes: as drawn, or after its horizontal scale."""
    return max(math.prod(cfg.drawn_pixels), math.prod(cfg.page_pixels))


@dataclass
class Segment:
    """One rendered text or one image: a run of pages in the prompt."""
    key: str
    grids: torch.Tensor  # [pages, 3] (CPU)
    pixel_values: torch.Tensor | None  # None when the document cache held its vision embeddings
    embeddings: torch.Tensor | None = None
    text_tokens: int = 0
    cached: bool = False
    parts: list | None = field(default=None, repr=False)  # its first pages' embeddings, the vision tower part-way

    @property
    def pages(self) -> int:
        return int(self.grids.shape[0])

    @property
    def visual_tokens(self) -> int:
        return sum(tokens_per_image(self.grids))


@dataclass
class Prompt:
    input_ids: list[int]
    segments: list[Segment]
    prefix_len: int  # tokens up to and including the last page (and the marker after it); 0 without pages
    prefix_key: str | None
    render_seconds: float = 0.0
    stats: dict = field(default_factory=dict)

    @property
    def pages(self) -> int:
        return sum(s.pages for s in self.segments)

    @property
    def visual_tokens(self) -> int:
        return sum(s.visual_tokens for s in self.segments)

    @property
    def text_tokens(self) -> int:
        return sum(s.text_tokens for s in self.segments)

    @property
    def pixel_bytes(self) -> int:
        """Bytes of the pages still waiting for the vision tower (their pixel_values)."""
        return sum(s.pixel_values.numel() * s.pixel_values.element_size() for s in self.segments
                   if s.pixel_values is not None and s.embeddings is None)


@dataclass
class InputOptions:
    render_config: RenderConfig
    model_id: str
    threshold: int = 4000  # characters: longer text content is rendered
    max_pages: int = 256
    allowed_media_dir: str | None = None  # file:// URLs under this directory are read; none by default
    max_image_bytes: int = 20 << 20


def _image_bytes(url: str, opts: InputOptions, param: str) -> bytes:
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        if not head.endswith(";base64") or not data:
            raise RequestError(f"{param}: a data URL must be data:image/...;base64,<data>", param)
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"{param}: the data URL's base64 is invalid", param) from None
    elif url.startswith("file://"):
        if not opts.allowed_media_dir:
            raise RequestError(f"{param}: file:// URLs are not allowed (start serve or batch with "
                               "--allowed-media-dir DIR); send the image as a data URL", param)
        raw = _read_media_file(url, opts, param)
    else:
        raise RequestError(f"{param}: only data URLs are accepted (no network fetches); send "
                           "data:image/png;base64,...", param)
    if len(raw) > opts.max_image_bytes:
        raise _too_large(len(raw), opts, param)
    return raw


def _too_large(size: int, opts: InputOptions, param: str) -> RequestError:
    return RequestError(f"{param}: the image is {size:,} bytes, over the limit of {opts.max_image_bytes:,}", param, 413)


def _open_below(root: Path, p: Path) -> int:
    """A read-only descriptor of `p` (resolved, under `root`), each of its components below `root` opened without
    following a symlink: a path swapped for a symlink after it was resolved fails (ELOOP, ENOTDIR) instead of
    leading out of `root`. O_NONBLOCK: a FIFO opens at once (and is refused as not a regular file)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    parts = p.relative_to(root).parts
    if os.open not in os.supports_dir_fd or not parts:
        return os.open(p, flags)
    dfd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        for part in parts[:-1]:
            nfd = os.open(part, flags | getattr(os, "O_DIRECTORY", 0), dir_fd=dfd)
            os.close(dfd)
            dfd = nfd
        return os.open(parts[-1], flags, dir_fd=dfd)
    finally:
        os.close(dfd)


def _read_media_file(url: str, opts: InputOptions, param: str) -> bytes:
    """The bytes of a file:// URL's regular file under opts.allowed_media_dir, read only when within the image
    byte limit (and never more than the limit + 1 bytes)."""
    u = urlparse(url)
    if u.netloc not in ("", "localhost"):
        raise RequestError(f"{param}: {url!r} names the host {u.netloc!r}; a file:// URL must name a local path "
                           "(file:///path)", param)
    local = url2pathname(u.path)
    if not os.path.isabs(local) or "\0" in local:
        raise RequestError(f"{param}: {url!r} does not name an absolute path (file:///path, no NUL byte)", param)
    root = Path(opts.allowed_media_dir).resolve()
    p = Path(local).resolve()
    if root != p and root not in p.parents:
        raise RequestError(f"{param}: {url!r} is outside the allowed media directory", param)
    try:
        fd = _open_below(root, p)
    except OSError as e:
        raise RequestError(f"{param}: cannot read {url!r} ({e.strerror})", param) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RequestError(f"{param}: {url!r} is not a regular file", param)
        now = os.stat(p)  # the file opened is still the one resolved (and checked) above
        if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
            raise RequestError(f"{param}: {url!r} changed while it was opened", param)
        if st.st_size > opts.max_image_bytes:
            raise _too_large(st.st_size, opts, param)
        chunks, left = [], opts.max_image_bytes + 1  # a file that grew since fstat is cut at the limit + 1
        while left > 0:
            b = os.read(fd, min(left, 1 << 20))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        return b"".join(chunks)
    except OSError as e:
        raise RequestError(f"{param}: cannot read {url!r} ({e.strerror})", param) from None
    finally:
        os.close(fd)


def _to_rgb(im):
    """RGB with any transparency painted onto white, as the checkpoint's processor does
    (transformers.image_transforms.convert_to_rgb, vLLM): a plain convert("RGB") drops the alpha and turns
    transparent areas into whatever colour they hold, black for most."""
    from PIL import Image

    if "A" in im.getbands() or im.info.get("transparency") is not None:
        im = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im).convert("RGB")
    return im.convert("RGB")


def _open_image(raw: bytes, param: str):
    """The image, opened lazily as one of IMAGE_FORMATS only: PIL would otherwise try every format it knows on a
    client's bytes, EPS among them, whose loading runs Ghostscript."""
    from PIL import Image

    try:
        return Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS)
    except Exception as e:  # noqa: BLE001 - PIL also raises SyntaxError, struct.error, ... on a corrupt file
        raise _unreadable(e, param) from None


def _unreadable(e: Exception, param: str) -> RequestError:
    return RequestError(f"{param}: not a readable image ({type(e).__name__}); accepted formats: "
                        f"{', '.join(IMAGE_FORMATS)}", param)


def _image_size(raw: bytes, param: str) -> tuple[int, int]:
    """The image's (height, width), read from its header: no pixel is decoded (Image.open is lazy)."""
    with _open_image(raw, param) as im:
        width, height = im.size
    if width * height > MAX_PIXELS:
        raise RequestError(f"{param}: the image is {width}x{height} pixels, over the limit of {MAX_PIXELS:,}", param,
                           413)
    return height, width


def _decode_image(raw: bytes, param: str) -> torch.Tensor:
    _image_size(raw, param)
    with _open_image(raw, param) as im:
        try:
            return torch.from_numpy(np.asarray(_to_rgb(im)).copy())
        except Exception as e:  # noqa: BLE001
            raise _unreadable(e, param) from None


def _field(obj, key: str, param: str, kind: type = str):
    """obj[key] (None when absent) when it is a `kind`, else a RequestError naming it."""
    v = obj.get(key)
    if v is not None and not isinstance(v, kind):
        raise RequestError(f"{param}: must be {'a string' if kind is str else 'an object'}, got "
                           f"{type(v).__name__}", param)
    return v


def build_prompt(gm, messages: list[dict], opts: InputOptions, render_overrides: dict | None = None,
                 cache: DocumentCache | None = None, max_prompt_tokens: int | None = None) -> Prompt:
    """Renders what needs rendering (or takes it from the cache) and tokenizes the prompt. max_prompt_tokens: the
    positions the prompt may take (the model's context less the answer's); a request whose pages' visual tokens
    pass it is refused as they are counted: images from their headers, before any is decoded."""
    import time

    from ..ops.pixel_values import pixel_values_from_pages
    from ..render.gpu import render_inputs
    from ..render.raster import canvas_size, final_sizes

    base = render_config_for(opts.render_config, render_overrides, "glyph.render_config")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: give at least one message", "messages")
    tmpl: list[dict] = []
    pending: list[tuple[int, str, RenderConfig, str]] = []  # segment index, text, config, key (to render)
    segs: list[Segment | None] = []
    dtype = gm.model.dtype if gm.model.dtype in (torch.float32, torch.bfloat16) else torch.float32
    t0 = time.perf_counter()
    # pages and their visual tokens counted so far: images and cached documents while reading, then each text as it
    # renders
    known = [0, 0]
    images: list[tuple[int, bytes, str, str]] = []  # segment index, bytes, key, param (to decode)

    def too_many(pages: int | None) -> RequestError:
        """pages: the request's count, or None when counting stopped past the limit."""
        n = f"{pages}" if pages is not None else f"more than {opts.max_pages}"
        return RequestError(f"the request renders to {n} pages, over this server's limit of {opts.max_pages}; "
                            "shorten the text or render denser pages (smaller font_size, lower dpi)", None, 400,
                            "context_length_exceeded")

    def count(n: int, tokens: int = 0) -> None:
        known[0] += n
        known[1] += tokens
        if known[0] > opts.max_pages:  # more parts may follow: the total is not known
            raise too_many(None)
        if max_prompt_tokens is not None and known[1] > max_prompt_tokens:
            raise RequestError(f"the request's pages need {known[1]} visual tokens or more (pages counted: "
                               f"{known[0]}, an image is one), over the {max_prompt_tokens} positions its prompt may "
                               "take (the model's context less max_tokens); send fewer or smaller images, shorten the "
                               "text, lower max_tokens or render denser pages (a smaller font_size or dpi)",
                               "messages", 400, "context_length_exceeded")

    def add_doc(text: str, cfg: RenderConfig, param: str) -> dict:
        if not text.strip():
            raise RequestError(f"{param}: the text to render is empty", param)
        key = document_key(text, json.dumps(cfg.to_dict(), sort_keys=True), opts.model_id)
        hit = cache.get(key) if cache is not None else None
        if hit is not None and hit.embeddings is not None:
            segs.append(Segment(key, hit.grids, None, hit.embeddings, hit.text_tokens, cached=True))
            count(segs[-1].pages, segs[-1].visual_tokens)
        else:
            segs.append(None)
            pending.append((len(segs) - 1, text, cfg, key))
        return {"type": "image", "_segment": len(segs) - 1}

    def plain(text: str, role: str, param: str) -> str:
        """A text that stays text, tokenized as the training tasks tokenize a record's: an added token's text
        written by the client ("<|endoftext|>", "<|user|>") is plain text, not the control token (in an
        assistant's earlier answer too, whose thinking format's tags stay tokens, as in training)."""
        gm.prompts.check_text(text, param)
        try:
            return gm.prompts.escape_answer(text) if role == "assistant" else gm.prompts.escape(text)
        except ValueError as e:
            raise RequestError(f"{param}: {e}", param) from None

    def add_image(url: str, param: str) -> dict:
        count(1)  # an image is one page: refused before it is read
        raw = _image_bytes(url, opts, param)
        key = image_key(raw, opts.model_id)
        hit = cache.get(key) if cache is not None else None
        if hit is not None and hit.embeddings is not None:
            segs.append(Segment(key, hit.grids, None, hit.embeddings, 0, cached=True))
            count(0, segs[-1].visual_tokens)
        else:
            height, width = _image_size(raw, param)
            try:
                tokens = gm.vision.tokens(height, width)
            except ValueError as e:  # an aspect ratio past the model's
                raise RequestError(f"{param}: {e}", param) from None
            count(0, tokens)
            segs.append(None)  # decoded once the whole request is counted
            images.append((len(segs) - 1, raw, key, param))
        return {"type": "image", "_segment": len(segs) - 1}

    for i, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        p = f"messages[{i}].content"
        if content is None:
            content = ""
        if not isinstance(content, (str, list)):
            raise RequestError(f"{p}: must be a string or a list of parts, got {type(content).__name__}", p)
        if isinstance(content, str):
            if role == "user" and len(content) > opts.threshold:
                tmpl.append({"role": role, "content": [add_doc(content, base, p)]})
            else:
                tmpl.append({"role": role, "content": plain(content, role, p)})
            continue
        parts = []
        for j, part in enumerate(content):
            pp = f"{p}[{j}]"
            if not isinstance(part, dict):
                raise RequestError(f"{pp}: must be an object with a type, got {type(part).__name__}", pp)
            kind = part.get("type")
            if kind == "text":
                text = _field(part, "text", f"{pp}.text") or ""
                if role == "user" and len(text) > opts.threshold:
                    parts.append(add_doc(text, base, pp))
                else:
                    parts.append({"type": "text", "text": plain(text, role, pp)})
            elif kind == "glyph":
                g = _field(part, "glyph", f"{pp}.glyph", dict) or {}
                cfg = render_config_for(base, g.get("render_config"), f"{pp}.glyph.render_config")
                parts.append(add_doc(_field(g, "text", f"{pp}.glyph.text") or "", cfg, f"{pp}.glyph.text"))
            elif kind == "image_url":
                url = _field(_field(part, "image_url", f"{pp}.image_url", dict) or {}, "url", f"{pp}.image_url.url")
                url = url or ""
                parts.append(add_image(url, f"{pp}.image_url.url"))
            else:
                raise RequestError(f"{pp}.type: {kind!r} is not supported; use text, glyph or image_url", pp)
        if role != "user" and any(x["type"] == "image" for x in parts):
            raise RequestError(f"{p}: only user messages may hold pages or images", p)
        tmpl.append({"role": role, "content": parts})

    def page_tokens(cfg: RenderConfig) -> int:
        """Visual tokens of a full page of `cfg`: its size uncropped (snapped as the renderer snaps one), through the
        model's resize. A crop only shrinks a page (a page whose ink passes the snapped edge is a snap step larger:
        this sizes the renders; refusals count each page's own tokens)."""
        (w, h), = final_sizes(cfg, np.zeros(1), np.zeros(1), 0, 2, canvas_size(cfg))
        try:
            return max(1, gm.vision.tokens(h, w))
        except ValueError as e:  # an aspect ratio past the model's
            raise RequestError(f"the render config's pages cannot be read by the model: {e}") from None

    def render(text: str, cfg: RenderConfig, max_pages: int):
        try:
            return render_inputs(text, cfg, model=gm.vision, device=gm.device, dtype=dtype, max_pages=max_pages)
        except MemoryError as e:
            raise RequestError(f"the text renders to too many pages ({e}); shorten it", None, 413) from None

    # each text is rendered with what is left of the request's budgets, one text at a time: at most the pages left
    # (+ 1, to see the limit passed) and at most the full pages that the visual tokens left can hold (+ 1, as a
    # page's tokens are those of its resized size). A request over either is refused at the first text that passes
    # it, one page past it, the rest never rendered.
    for n, (si, text, cfg, key) in enumerate(pending):
        page_room = opts.max_pages - known[0] + 1
        limit = page_room
        if max_prompt_tokens is not None:
            limit = min(page_room, (max_prompt_tokens - known[1]) // page_tokens(cfg) + 1)
        retried = False
        while True:
            r = render(text, cfg, limit)
            per_page = tokens_per_image(r.image_grid_thw)
            if (limit == page_room or not r.documents[0].layout.truncated
                    or known[1] + sum(per_page) > max_prompt_tokens):
                break
            # cut at the token bound, its pages within the budget: they were cropped, smaller than full pages, and
            # the budget may hold more of them. Again, with the pages the budget left holds of its smallest one (+ 1);
            # pages smaller still, seen then, make it at least twice the pages each time after: a text is rendered a
            # few times at most
            left = max_prompt_tokens - known[1] - sum(per_page)
            estimate = len(per_page) + left // max(1, min(per_page)) + 1
            limit = min(page_room, max(estimate, 2 * limit if retried else limit + 1))
            retried = True
        known[0] += r.images_per_text[0]
        if known[0] > opts.max_pages:
            counted = n == len(pending) - 1 and not r.documents[0].layout.truncated
            raise too_many(known[0] if counted else None)
        segs[si] = Segment(key, r.image_grid_thw.cpu(), r.pixel_values, None, len(gm.prompts.ids(text)))
        count(0, segs[si].visual_tokens)
    for si, raw, key, param in images:
        pv, grid = pixel_values_from_pages([_decode_image(raw, param)], gm.vision, dtype)
        segs[si] = Segment(key, grid.cpu(), pv)  # on the CPU until the engine's vision forward takes it
    per_image: list[int] = []
    for msg in tmpl:
        if isinstance(msg["content"], list):
            parts = []
            for part in msg["content"]:
                if part["type"] == "image":  # one image per page
                    seg = segs[part["_segment"]]
                    parts += [{"type": "image"}] * seg.pages
                    per_image += tokens_per_image(seg.grids)
                else:
                    parts.append(part)
            msg["content"] = parts
    try:
        text = gm.prompts.template(tmpl, True)
    except Exception as e:  # noqa: BLE001 - a template may reject a conversation (roles, order)
        raise RequestError(f"messages: the model's chat template cannot format them: {e}", "messages") from None
    ids = gm.prompts.expand_ids(gm.prompts.ids(text, escaped=True), per_image)
    prefix_len, pkey = 0, None
    if segs:
        last = max(i for i, t in enumerate(ids) if t == gm.image_token_id)
        prefix_len = last + 1
        if prefix_len < len(ids) - 1 and ids[prefix_len] in gm.tokenizer.added_tokens_decoder:
            prefix_len += 1  # the end-of-image marker
        prefix_len = min(prefix_len, len(ids) - 1)
        pkey = prefix_key([s.key for s in segs], ids[:prefix_len])
    return Prompt(ids, segs, prefix_len, pkey, time.perf_counter() - t0)
