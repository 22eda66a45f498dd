"""Document (a laid-out text that rasterizes page ranges on demand) and Pages (rendered pages)."""
from __future__ import annotations

import copy
import os
import time
from collections import Counter
from typing import Iterator

import numpy as np

from .config import NewlineMarkup, RenderConfig, parse_color
from .fonts import missing_hints
from .layout import layout_text
from .raster import canvas_size, crops, final_sizes, rasterize
from .tokens import VISION_MODELS, get_tokenizer, visual_tokens

BACKENDS = ("cpu", "reference")  # the layout and CPU raster backends of Document
DEVICE_BACKENDS = ("auto", "cuda", "triton", "cpu")  # the rasterizers of render_inputs / draw_pages (render.gpu)
# Characters the layout draws nothing for (Python's str.isspace, the layout engine's whitespace).
_WHITESPACE = np.asarray([c for c in range(0x3001) if chr(c).isspace()], np.uint32)
DEFAULT_MAX_BYTES = 4 << 30
CHUNK_BYTES = 64 << 20  # host memory per streamed chunk of pages


def resolve_backend(backend: str) -> str:
    from .._ext import has_extension

    if backend == "auto":
        return "cpu" if has_extension() else "reference"
    if backend in ("cuda", "triton"):
        raise ValueError(f"backend {backend!r} is a GPU rasterizer, not a layout backend: give it with a device to "
                         f"render() or iter_chunks(); a Document takes auto, {', '.join(BACKENDS)}")
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is unknown for CPU rendering; choose from auto, {', '.join(BACKENDS)}")
    return backend


class Document:
    """A text laid out with a RenderConfig; pages are rasterized on demand, in any range."""

    def __init__(self, text: str, config: RenderConfig | None = None, backend: str = "auto",
                 max_pages: int | None = None):
        if config is not None and not isinstance(config, RenderConfig):
            raise TypeError(f"config: expected a RenderConfig, got {type(config).__name__} "
                            "(use RenderConfig.from_dict for a dict)")
        # a copy: the caller's config may change after this layout, which must keep describing its own pages
        self.config = copy.deepcopy(config or RenderConfig()).validate()
        self.backend = resolve_backend(backend)
        self.text = text
        t0 = time.perf_counter()
        self.layout, self.atlas = layout_text(text, self.config, backend=self.backend, max_pages=max_pages)
        self.seconds = {"layout": time.perf_counter() - t0, "raster": 0.0}
        # An empty text has no pages (a whitespace-only one keeps its blank lines, as reportlab does).
        self.num_pages = 0 if not text else self.layout.num_pages
        self.canvas = canvas_size(self.config)
        # where and with what the pages were last drawn (a GPU device sets both); layout is always `backend`
        self.device, self.raster_backend = "cpu", self.backend
        self._held_text: str | None = None

    def __getstate__(self) -> dict:
        """A Document crosses processes (from DataLoader workers, say) without its atlas: the other side finds
        the atlas again by its fonts and sizes, and the layout's atlas slots are mapped through the codepoints
        they were drawn for, or for a shaped cluster (HarfBuzz), through its face and glyphs (an atlas numbers
        its slots in the order it met the glyphs)."""
        state = dict(self.__dict__)
        atlas = state.pop("atlas")
        state["_held_text"] = None  # a slice of the text: made again on demand
        slots = np.unique(self.layout.g_slot).astype(np.int64)
        with atlas.lock:
            lut = atlas.lut
            known = np.flatnonzero(lut >= 0)
            cp_of_slot = np.full(int(max(slots.max(initial=0), lut[known].max(initial=0))) + 1, -1, np.int64)
            cp_of_slot[lut[known]] = known  # one codepoint per slot (any, if glyphs share one)
            wanted = set(slots.tolist())
            clusters = {slot: key for key, slot in atlas._clusters.items() if slot in wanted}
        state["_atlas_key"] = (atlas.fonts, atlas.size_pt, atlas.dpi, atlas.h_scale, atlas.phases, atlas.key, slots,
                               cp_of_slot[slots], clusters)
        return state

    def __setstate__(self, state: dict) -> None:
        from .atlas import FontAtlas, cluster_glyphs

        fonts, size_pt, dpi, h_scale, phases, key, slots, cps, clusters = state.pop("_atlas_key")
        self.__dict__.update(state)
        self.atlas = FontAtlas.get(fonts, size_pt, dpi, h_scale, phases, key=key)
        with self.atlas.lock:
            self.atlas.ensure(cps[cps >= 0])
            new = np.where(cps >= 0, self.atlas.lut[np.maximum(cps, 0)], slots)  # the others (boxes): kept
            for k, slot in enumerate(slots.tolist()):
                if slot in clusters:
                    new[k] = self.atlas.cluster_slot(*cluster_glyphs(clusters[slot]))
        if len(slots) and not np.array_equal(new, slots):
            remap = np.zeros(int(slots.max()) + 1, np.int64)
            remap[slots] = new
            g = remap[self.layout.g_slot]
            self.layout.g_slot = g.astype(np.uint16) if not len(g) or g.max() < 1 << 16 else g.astype(np.int32)

    @property
    def grey(self) -> bool:
        """True when every pixel of every page has R = G = B (all colours of the config are grey)."""
        c = self.config
        colors = [parse_color(c.page_bg_color, "page_bg_color"), parse_color(c.font_color, "font_color"),
                  parse_color(c.para_bg_color, "para_bg_color"), parse_color(c.para_border_color, "para_border_color")]
        marker = NewlineMarkup.parse(c.newline_markup).color
        if marker is not None:
            colors.append(marker)
        return all(r == g == b for r, g, b in colors)

    def chunk_pages(self, chunk_bytes: int = CHUNK_BYTES) -> int:
        """Pages per streamed chunk so that one chunk's canvas buffer stays within `chunk_bytes` (at least 1)."""
        W, H = self.canvas
        return max(1, chunk_bytes // max(1, W * H * 3))

    def rasterize(self, start: int = 0, stop: int | None = None,
                  out: np.ndarray | None = None) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Pages [start, stop) as one [n, H, W, 3] uint8 canvas buffer plus each page's (width, height).

        `out`, a uint8 [>= n, H, W, 3] C-contiguous array, is drawn into (its first n pages) instead
        of fresh memory."""
        stop = self.num_pages if stop is None else min(stop, self.num_pages)
        if not 0 <= start <= stop:
            raise IndexError(f"page range [{start}, {stop}) is outside 0..{self.num_pages}")
        t0 = time.perf_counter()
        W, H = self.canvas
        if out is None:
            buf = np.empty((stop - start, H, W, 3), dtype=np.uint8)
        else:
            if out.dtype != np.uint8 or out.shape[1:] != (H, W, 3) or len(out) < stop - start \
                    or not out.flags.c_contiguous:
                raise ValueError(f"out: need a C-contiguous uint8 [>={stop - start}, {H}, {W}, 3] array, "
                                 f"got {out.dtype} {out.shape}")
            buf = out[: stop - start]
        c = self.config
        ink = np.zeros((len(buf), 2), np.int32)
        if stop > start:
            rasterize(self.layout, self.atlas, c, buf, start, self.backend, ink=ink if crops(c) else None)
        sizes = final_sizes(c, ink[:, 0], ink[:, 1], start, self.num_pages, self.canvas)
        self.seconds["raster"] += time.perf_counter() - t0
        return buf, sizes

    def iter_chunks(self, chunk: int | None = None, progress: bool = False, device="cpu", backend: str = "auto",
                    chunk_bytes: int = CHUNK_BYTES, buffers: int = 0) -> Iterator[tuple[int, np.ndarray, list]]:
        """Yields (first page index, uint8 [n, H, W, 3] host buffer, sizes) for consecutive chunks of pages.

        `chunk` pages per chunk, or by default as many as fit in `chunk_bytes`. With `buffers` > 0 the
        CPU path draws into that many host buffers in turn, allocated once: a chunk's buffer is
        overwritten `buffers` chunks later. With a CUDA `device` the chunks are drawn there (backend
        auto, cuda or triton) and copied back."""
        if chunk is None:
            chunk = self.chunk_pages(chunk_bytes)
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk: {chunk!r} must be an integer >= 1 (pages per chunk)")
        W, H = self.canvas
        n = min(chunk, self.num_pages)
        pool = [np.empty((n, H, W, 3), np.uint8) for _ in range(buffers if n and str(device) == "cpu" else 0)]

        draw = None
        self.device, self.raster_backend = "cpu", self.backend
        if str(device) != "cpu":
            from .gpu import draw_pages, resolve_device_backend

            dev, gpu_backend = resolve_device_backend(device, backend)
            draw = lambda s, e: draw_pages([self], dev, gpu_backend, ranges=[(s, e)])[0]  # noqa: E731
            self.device, self.raster_backend = str(dev), gpu_backend
        if progress:  # tqdm is imported only to be shown (its import costs ~35 ms)
            from tqdm import tqdm

            bar = tqdm(total=self.num_pages, unit="page", desc="render")
        else:
            bar = None
        for k, s in enumerate(range(0, self.num_pages, chunk)):
            e = min(s + chunk, self.num_pages)
            if draw is None:
                buf, sizes = self.rasterize(s, e, out=pool[k % len(pool)] if pool else None)
            else:
                t0 = time.perf_counter()
                dbuf, sizes = draw(s, e)
                buf = dbuf.cpu().numpy()
                self.seconds["raster"] += time.perf_counter() - t0
            yield s, buf, sizes
            if bar is not None:
                bar.update(len(sizes))
        if bar is not None:
            bar.close()

    def page_spans(self) -> list[tuple[int, int]]:
        """Character span [start, end) of the text on each page; a page with no line (whitespace alone) holds the
        empty span where the previous page ended."""
        lay, out, end = self.layout, [], 0
        for a, b in zip(lay.p_src_start[: self.num_pages].tolist(), lay.p_src_end[: self.num_pages].tolist()):
            if a < 0:  # the layout's "no line on this page"
                a = b = end
            out.append((a, b))
            end = b
        return out

    def line_spans(self) -> list[tuple[int, int, int]]:
        """(page, start, end) of every line."""
        lay = self.layout
        return list(zip(lay.l_page.tolist(), lay.l_src_start.tolist(), lay.l_src_end.tolist()))

    def _partial(self, pages: int | None) -> bool:
        """Whether the first `pages` pages (None: all) hold less than the whole text."""
        return self.layout.truncated or (pages is not None and pages < self.num_pages)

    def held_end(self, pages: int | None = None) -> int:
        """End of the text the first `pages` pages (None: all) hold: len(text), or the source end of the last
        of them when they stop short of it (max_pages, or a run stopped early)."""
        n = self.num_pages if pages is None else min(pages, self.num_pages)
        if not self._partial(pages):
            return len(self.text)
        return self.page_spans()[n - 1][1] if n else 0

    @property
    def held_text(self) -> str:
        """The text the pages hold, whose text tokens the compression ratio counts: all of it, or up to the
        last page's source end when max_pages cut the layout short (the same str object on every call)."""
        if self._held_text is None:
            end = self.held_end()
            self._held_text = self.text if end == len(self.text) else self.text[:end]
        return self._held_text

    def _glyph_end(self, pages: int | None) -> int:
        """Number of glyphs on the first `pages` pages (None: all)."""
        lay = self.layout
        if pages is None or pages >= self.num_pages:
            return len(lay.g_x)
        return int(lay.r_start[np.searchsorted(lay.r_page, pages, side="left")])

    def missing_chars(self, pages: int | None = None) -> dict[str, int]:
        """Characters drawn as replacement boxes (no font covers them) on the first `pages` pages (None: all),
        with counts."""
        if not self.layout.missing:
            return {}
        lay = self.layout
        g = self._glyph_end(pages)
        src = lay.g_src[:g][(lay.g_slot[:g] == 0) & (lay.g_color[:g] == 0)]  # newline-marker glyphs are not text
        return dict(Counter(self.text[i] for i in src.tolist()))

    def char_counts(self, pages: int | None = None) -> dict[str, int]:
        """How every character of the text was accounted for; the four counts add up to len(text).

        With `pages` (the first pages of a run stopped early), or when max_pages cut the layout short, the
        counts describe the text those pages hold (`held_end`) and every character after it is unplaced."""
        from .layout import text_codepoints
        from .layout_reference import STRIPPED

        lay = self.layout
        if not self._partial(pages):
            placed, stripped, markers = int(lay.placed), int(lay.stripped), int(lay.marker_glyphs)
            cps = text_codepoints(self.text)
        else:
            g = self._glyph_end(pages)
            source = lay.g_color[:g] == 0
            placed, markers = int(np.count_nonzero(source)), int(len(source) - np.count_nonzero(source))
            cps = text_codepoints(self.text[: self.held_end(pages)])
            stripped = int(np.count_nonzero(np.isin(cps, np.asarray(sorted(STRIPPED), np.uint32))))
        white = int(np.count_nonzero(np.isin(cps, _WHITESPACE)))
        unplaced = len(self.text) - placed - stripped - white
        return {"placed_chars": placed, "stripped_chars": stripped, "whitespace_chars": white,
                "unplaced_chars": unplaced, "newline_marker_glyphs": markers}

    def summary(self, sizes: list[tuple[int, int]], tokenizer: str | None = "default",
                pages: int | None = None) -> dict:
        """The summary of pages of these `sizes`. Text tokens count the text the pages hold (`held_text`, or with
        `pages`, the first pages of a run stopped early, the text up to the last of them); with `pages` the
        character counts and missing glyphs describe those pages only."""
        tok = get_tokenizer(None if tokenizer == "default" else tokenizer) if tokenizer else None
        end = self.held_end(pages)
        if tok:
            text_tokens = tok.count(self.held_text if end == self.held_end() else self.text[:end])
        else:
            text_tokens = None
        vis, errors = {}, {}
        for m in VISION_MODELS:
            vis[m], why = page_visual_tokens(sizes, m)
            if why:
                errors[m] = why
        total = {m: (None if m in errors else int(sum(v))) for m, v in vis.items()}
        missing = self.missing_chars(pages)
        out = {
            "pages": len(sizes),
            "page_sizes": [list(s) for s in sizes],
            "characters": len(self.text),
            # null for a model whose resize rule refuses a page (visual_tokens_error says why)
            "visual_tokens": total,
            "visual_tokens_per_page": {m: v for m, v in vis.items()},
            "visual_tokens_error": errors,
            "text_tokens": text_tokens,
            "text_tokens_chars": end,  # the characters counted: those the pages hold
            "tokenizer": tok.name if tok else None,
            "compression_ratio": {
                m: (round(text_tokens / t, 3) if text_tokens and t else None) for m, t in total.items()
            },
            # characters = placed + stripped + whitespace + unplaced (unplaced: not on the pages, e.g. past max_pages)
            **self.char_counts(pages),
            "missing_glyphs": {"count": sum(missing.values()) if pages is not None else int(self.layout.missing),
                               "chars": missing, "install": missing_hints(missing)},
            "truncated": bool(self.layout.truncated),
            "seconds": {k: round(v, 6) for k, v in self.seconds.items()},
            "device": self.device,
            "backend": self.raster_backend,  # the rasterizer that drew the pages
            "layout_backend": self.backend,
            "config": self.config.to_dict(),
        }
        return out


def page_visual_tokens(sizes: list[tuple[int, int]], model: str) -> tuple[list[int | None], str | None]:
    """Visual tokens of each page for `model`, None for a page its resize rule refuses (an aspect ratio over
    200:1 that RenderConfig.validate() could not foresee), with the first refusal's reason."""
    try:
        return visual_tokens(sizes, model), None
    except ValueError:
        pass
    out, why = [], None
    for i, size in enumerate(sizes):
        try:
            out.append(visual_tokens([size], model)[0])
        except ValueError as e:
            out.append(None)
            why = why or f"page {i + 1} ({size[0]}x{size[1]} px): {e}"
    return out, why


class Pages:
    """Rendered pages: uint8 RGB tensors (views of one buffer, on the device they were drawn on),
    character spans and a summary."""

    def __init__(self, doc: Document, buffer, sizes: list[tuple[int, int]]):
        import torch

        self.document = doc
        self.config = doc.config
        # [P, H, W, 3] canvas; pages are its top-left corners
        self.buffer = torch.from_numpy(buffer) if isinstance(buffer, np.ndarray) else buffer
        self.sizes = sizes  # (width, height) per page
        self._summary: dict | None = None

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int):
        w, h = self.sizes[i]
        return self.buffer[i, :h, :w]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    @property
    def images(self) -> list:
        return list(self)

    def to_pil(self, i: int):
        from PIL import Image

        return Image.fromarray(np.ascontiguousarray(self[i].cpu().numpy()))

    @property
    def page_spans(self) -> list[tuple[int, int]]:
        return self.document.page_spans()

    @property
    def line_spans(self) -> list[tuple[int, int, int]]:
        return self.document.line_spans()

    def summary(self, tokenizer: str | None = "default") -> dict:
        """Pages, sizes, visual tokens per model, text tokens, ratio, missing glyphs, seconds."""
        if self._summary is None or self._summary.get("_tok") != tokenizer:
            self._summary = {**self.document.summary(self.sizes, tokenizer), "_tok": tokenizer}
        return {k: v for k, v in self._summary.items() if k != "_tok"}

    def save(self, out_dir: str | os.PathLike, tokenizer: str | None = "default", compress_level: int = 1) -> list[str]:
        """Writes page_001.png ... (greyscale when the config has no colour) and summary.json as `glyph-rt render`
        does (PageWriter): an earlier run's pages and summary there are removed first, every file goes through a
        temporary name and a rename, and an error leaves the pages written so far with a summary of them;
        returns the PNG paths."""
        from ..fileio import output_dir
        from .output import PageWriter
        from .png import check_level, page_name

        check_level(compress_level)  # before the directory is made
        out = output_dir(out_dir, "out_dir")
        with PageWriter(out, self.document, buffers=1, level=compress_level) as writer:
            writer.write_pages([(0, np.asarray(self.buffer.cpu()), self.sizes)])
            writer.finish(writer.summary(tokenizer, complete=True))
        return [str(out / page_name(i)) for i in range(len(self))]


def check_memory(num_pages: int, canvas: tuple[int, int], max_bytes: int) -> None:
    need = num_pages * canvas[0] * canvas[1] * 3
    if need > max_bytes:
        raise MemoryError(
            f"{num_pages} pages of {canvas[0]}x{canvas[1]} px need {need / 2**30:.1f} GiB, over max_bytes="
            f"{max_bytes / 2**30:.1f} GiB; stream them with glyph_rt.Document(...).iter_chunks() or "
            "`glyph-rt render`, or raise max_bytes"
        )


def render(text: str, config: RenderConfig | None = None, *, device="cpu", backend: str = "auto",
           max_pages: int | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> Pages:
    """Renders `text` into pages drawn on `device`.

    device "cpu": backend auto, cpu (C++) or reference (numpy); "triton" runs the Triton kernel in
    Triton's interpreter (TRITON_INTERPRET=1). device "cuda": backend auto, cuda, triton, or cpu
    (draw on the CPU, then copy)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cpu" and backend != "triton":
        doc = Document(text, config, backend=backend, max_pages=max_pages)
        check_memory(doc.num_pages, doc.canvas, max_bytes)
        buf, sizes = doc.rasterize(0, doc.num_pages)
        return Pages(doc, buf, sizes)
    from .gpu import draw_pages, resolve_device_backend

    dev, backend = resolve_device_backend(dev, backend)
    doc = Document(text, config, max_pages=max_pages)
    check_memory(doc.num_pages, doc.canvas, max_bytes)
    (buf, sizes), = draw_pages([doc], dev, backend)
    doc.device, doc.raster_backend = str(dev), backend
    return Pages(doc, buf, sizes)
