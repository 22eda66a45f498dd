"""Rendering on the GPU: pages and model input straight from laid-out documents.

    draw_pages(docs, device, backend)        uint8 pages on the device, one buffer per document
    render_inputs(texts, config, model=...)  pixel_values + image_grid_thw, without RGB pages

Layout runs on the CPU (the C++ engine releases the GIL) in worker threads that run ahead
of the GPU; placements travel through pinned memory; the atlas of each font configuration is
uploaded once. The fused mode writes pixel_values directly for every
page whose size is already the model's (multiples of 28: the default canvas snapping);
the other pages are drawn, resized and normalized by the plain-torch path.
"""
from __future__ import annotations

import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from ..nvtx import nvtx_range
from ..ops.pixel_values import PATCH, ROW, ROW_U8, ROW_U8_STRIDE, cat_rows, normalize_lut, padded_rows, \
    pixel_values_from_pages, target_size, uint8_rows, write_pixel_values_cpu
from ..ops.raster import GPU_BACKENDS, MODE_BG, MODE_INK, MODE_PAGES, MODE_PATCHES, MODE_PIXELS, RasterBatch, \
    check_backend, raster_tiles, set_image_targets, set_page_targets
from ..ops.resize import ink_extent, resize_width
from .config import RenderConfig, parse_color
from .pages import DEFAULT_MAX_BYTES, DEVICE_BACKENDS, Document
from .raster import INK_TOL, crops, drawn_canvas, final_sizes
from .tokens import VisionModel, vision_model


def resolve_device_backend(device, backend: str) -> tuple[torch.device, str]:
    """(device, backend) for drawing on `device`: auto picks cuda, then triton on a GPU and the C++
    rasterizer on the CPU; 'cpu' draws on the CPU and copies pages over. Unavailable choices raise
    with the reason."""
    from .._ext import backends

    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device}: torch sees no CUDA device (torch {torch.__version__})")
    if backend not in DEVICE_BACKENDS:
        raise ValueError(f"backend {backend!r} is unknown for device {device}; "
                         f"choose from {', '.join(DEVICE_BACKENDS)}")
    if backend == "auto" and device.type == "cpu":
        return device, "cpu"  # the C++ rasterizer; Triton's interpreter only when asked for
    if backend == "auto":
        avail = backends()
        backend = next((b for b in GPU_BACKENDS if avail[b]["available"]), None)
        if backend is None:
            raise RuntimeError("no GPU rasterizer is available: " + "; ".join(
                f"{b}: {avail[b]['why']}" for b in GPU_BACKENDS) + ". Use backend='cpu' to draw on the CPU.")
    if backend != "cpu":
        check_backend(backend, device)
    return device, backend


def _ink_sizes(batch: RasterBatch, ink: torch.Tensor | None) -> list[list[tuple[int, int]]]:
    """Final (width, height) of every page of every document in the batch (crop + snap)."""
    if ink is None:
        ink = np.zeros((batch.num_pages, 2), np.int32)
    out = []
    for i, (d, (s, e)) in enumerate(zip(batch.docs, batch.ranges)):
        p0, p1 = batch.page_base[i], batch.page_base[i + 1]
        out.append(final_sizes(d.config, ink[p0:p1, 0], ink[p0:p1, 1], s, d.num_pages, d.canvas))
    return out


def draw_pages(docs, device, backend: str, ranges=None) -> list[tuple[torch.Tensor, list[tuple[int, int]]]]:
    """Pages of each document as a uint8 [n, H, W, 3] canvas buffer on `device`, plus each page's final size."""
    ranges = ranges or [(0, d.num_pages) for d in docs]
    if backend == "cpu":
        out = []
        for d, (s, e) in zip(docs, ranges):
            buf, sizes = d.rasterize(s, e)
            out.append((torch.from_numpy(buf).to(device, non_blocking=True), sizes))
        return out
    batch = RasterBatch(docs, ranges)
    dev = batch.to_device(device)
    drawn = [drawn_canvas(d.config) for d in docs]
    bytes_per_page = [W * H * 3 for W, H in drawn]
    counts = [e - s for s, e in ranges]
    page_bytes = np.repeat(np.asarray(bytes_per_page, np.int64), counts)
    flat = torch.empty(set_page_targets(dev, np.cumsum(page_bytes) - page_bytes), dtype=torch.uint8, device=device)
    ink = batch.needs_ink()
    if ink:
        raster_tiles(backend, MODE_BG, batch, dev)
    raster_tiles(backend, MODE_PAGES, batch, dev, out=flat, ink=ink)
    sizes = _ink_sizes(batch, dev["ink"].cpu().numpy() if ink else None)
    out, o = [], 0
    for d, n, b, sz, (W, H), (s, _) in zip(docs, counts, bytes_per_page, sizes, drawn, ranges):
        pages = flat[o:o + n * b].view(n, H, W, 3)
        out.append(_resize_drawn(d, pages, s) if d.config.horizontal_scale != 1 else (pages, sz))
        o += n * b
    return out


def _resize_drawn(d: Document, drawn: torch.Tensor, page0: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Pages of `d` drawn at full width, resized to its canvas as Glyph resizes them (render.raster.resize_drawn),
    with their final sizes from the ink of the resized pages."""
    c = d.config
    W, H = d.canvas
    w = c.page_pixels[0]
    pages = torch.empty(len(drawn), H, W, 3, dtype=torch.uint8, device=drawn.device)
    with nvtx_range("glyph_rt.resize_width"):
        resize_width(drawn, w, out=pages)
    pages[:, :, w:] = torch.tensor(parse_color(c.page_bg_color, "page_bg_color"), dtype=torch.uint8,
                                   device=drawn.device)
    ink = np.zeros((len(pages), 2), np.int32)
    if crops(c):
        ink = ink_extent(pages, INK_TOL).cpu().numpy()
    return pages, final_sizes(c, ink[:, 0], ink[:, 1], page0, d.num_pages, d.canvas)


@dataclass
class ModelInputs:
    """Model input of a batch of texts: every page of every text is one image, in text order."""

    pixel_values: torch.Tensor  # [sum of gh * gw, 1176] float32 / bfloat16, or [.., 588] uint8 raw patches
    image_grid_thw: torch.Tensor  # [images, 3] int64: (1, gh, gw)
    images_per_text: list[int]
    model: str | VisionModel
    documents: list = field(repr=False)
    fused_pages: int  # images written straight by the kernel (or the C++ CPU path); the rest were resized
    seconds: dict = field(default_factory=dict)

    @property
    def visual_tokens(self) -> list[int]:
        """Visual tokens per text (gh * gw / 4 per image)."""
        m = vision_model(self.model).merge ** 2
        per_image = (self.image_grid_thw[:, 1] * self.image_grid_thw[:, 2] // m).tolist()
        out, i = [], 0
        for n in self.images_per_text:
            out.append(int(sum(per_image[i:i + n])))
            i += n
        return out

    def summary(self) -> dict:
        return {
            "texts": len(self.images_per_text),
            "images": int(self.image_grid_thw.shape[0]),
            "images_per_text": self.images_per_text,
            "visual_tokens": self.visual_tokens,
            "missing_glyphs": [int(d.layout.missing) for d in self.documents],
            "stripped_chars": [int(d.layout.stripped) for d in self.documents],
            "truncated": [bool(d.layout.truncated) for d in self.documents],
            "pixel_values": [list(self.pixel_values.shape), str(self.pixel_values.dtype)],
            "fused_pages": self.fused_pages,
            "seconds": {k: round(v, 6) for k, v in self.seconds.items()},
        }


CPU_CHUNK = 4  # pages drawn at a time by the CPU path, into one reused buffer


def grid_thw(target: np.ndarray) -> np.ndarray:
    """image_grid_thw rows (1, gh, gw) of images of these [n, 2] (height, width) target sizes."""
    return np.stack([np.ones(len(target), np.int64), target[:, 0] // PATCH, target[:, 1] // PATCH], 1)


def _chunks(items):
    for d, s, e in items:
        for c in range(s, e, CPU_CHUNK):
            yield d, c, min(c + CPU_CHUNK, e)


def inputs_cpu(items, model, dtype, lut) -> tuple[torch.Tensor, torch.Tensor, int]:
    """pixel_values (float32 / bfloat16, or uint8 patches [N, 588] viewing [N, 592] rows),
    image_grid_thw and the number of pages written by C++, for (document, first page, stop page) items
    on the CPU, in one pass: pages are drawn a few at a time into one reused uint8 buffer, and the C++
    path writes the patch rows of each page whose size is the model's straight from it; pages the model
    would resize go through Pillow (pixel_values_from_pages). The output is sized for uncropped pages,
    grown if a resized page needs more rows, and trimmed in place at the end."""
    scratch: dict = {}
    raw = dtype == torch.uint8
    lut = None if raw else lut.cpu()
    width, np_dtype = (ROW_U8_STRIDE, np.uint8) if raw else (ROW, np.float32 if dtype == torch.float32 else np.int16)
    # numpy asks the kernel for huge pages (madvise): the first touch of the output costs ~4x less than
    # with torch.empty, and resize() trims or grows the buffer with realloc (mremap), not a copy
    rows_of_canvas = [int(np.prod(target_size(d.canvas[1], d.canvas[0], model))) // PATCH**2 for d, _, _ in items]
    buf_rows = np.empty((sum(n * (e - s) for n, (_, s, e) in zip(rows_of_canvas, items)), width), np_dtype)
    grids, used, fused = [], 0, 0
    with nvtx_range("glyph_rt.pixel_values"):
        for d, s, e in _chunks(items):
            W, H = d.canvas
            if (H, W) not in scratch:
                scratch[(H, W)] = np.empty((CPU_CHUNK, H, W, 3), np.uint8)
            pages, sizes = d.rasterize(s, e, out=scratch[(H, W)])
            hw = np.asarray([(h, w) for w, h in sizes], np.int64).reshape(-1, 2)
            target = np.asarray([target_size(int(h), int(w), model) for h, w in hw], np.int64).reshape(-1, 2)
            direct = (target == hw).all(1)
            rows = (target[:, 0] // PATCH) * (target[:, 1] // PATCH)
            first = used + np.cumsum(rows) - rows
            used += int(rows.sum())
            if used > len(buf_rows):
                buf_rows.resize((max(used, 2 * len(buf_rows)), width), refcheck=False)
            out = torch.from_numpy(buf_rows).view(dtype)
            write_pixel_values_cpu(pages, hw * direct[:, None], first, lut, out)
            for k in np.nonzero(~direct)[0]:
                h, w = hw[k]
                v, _ = pixel_values_from_pages([torch.from_numpy(pages[k, :h, :w])], model, dtype, lut)
                out[first[k]:first[k] + rows[k]] = padded_rows(v) if raw else v
            del out  # no view may outlive a resize of buf_rows
            grids.append(grid_thw(target))
            fused += int(direct.sum())
    buf_rows.resize((used, width), refcheck=False)
    grid = np.concatenate(grids) if grids else np.zeros((0, 3), np.int64)
    pv = torch.from_numpy(buf_rows).view(dtype)
    return pv[:, :ROW_U8] if raw else pv, torch.from_numpy(grid), fused


def inputs_of_batch(items, device, backend, model, dtype, lut) -> tuple[torch.Tensor, torch.Tensor, int]:
    """pixel_values, image_grid_thw and the number of pages written by the fused kernel, for a batch of
    (document, first page, stop page) items."""
    docs = [d for d, _, _ in items]
    ranges = [(s, e) for _, s, e in items]
    if backend == "cpu":
        pv, grid, fused = inputs_cpu(items, model, dtype, lut)
        return pv.to(device, non_blocking=True), grid.to(device), fused
    scaled = [d.config.horizontal_scale != 1 for d in docs]
    if any(scaled):  # resized pages: drawn, resized as Glyph does, then the plain-torch path
        if not all(scaled):
            parts, i = [], 0
            for _, run in itertools.groupby(scaled):
                n = len(list(run))
                parts.append(inputs_of_batch(items[i:i + n], device, backend, model, dtype, lut))
                i += n
            return cat_rows([p[0] for p in parts]), torch.cat([p[1] for p in parts]), sum(p[2] for p in parts)
        pvs, grids = [], []
        for (pages, sizes), in (draw_pages([d], device, backend, ranges=[r]) for d, r in zip(docs, ranges)):
            with nvtx_range("glyph_rt.pixel_values"):
                v, g = pixel_values_from_pages([pages[k, :h, :w] for k, (w, h) in enumerate(sizes)], model, dtype,
                                               lut)
            pvs.append(v)
            grids.append(g)
        return cat_rows(pvs), torch.cat(grids).to(device), 0
    batch = RasterBatch(docs, ranges)
    dev = batch.to_device(device)
    ink = None
    if batch.needs_ink():
        raster_tiles(backend, MODE_BG, batch, dev)
        raster_tiles(backend, MODE_INK, batch, dev)
        ink = dev["ink"].cpu().numpy()  # the page sizes decide the output's shape: one sync
    sizes = _ink_sizes(batch, ink)
    hw = np.asarray([(h, w) for doc_sizes in sizes for (w, h) in doc_sizes], np.int64).reshape(-1, 2)
    target = np.asarray([target_size(int(h), int(w), model) for h, w in hw], np.int64).reshape(-1, 2)
    fused = (target == hw).all(1)  # the model takes these pages as they are drawn
    rows = (target[:, 0] // PATCH) * (target[:, 1] // PATCH)
    first = np.cumsum(rows) - rows
    raw = dtype == torch.uint8
    n = int(rows.sum())
    pv = uint8_rows(n, device) if raw else torch.empty(n, ROW, dtype=dtype, device=device)
    if fused.any():
        set_image_targets(dev, hw * fused[:, None], first)
        with nvtx_range("glyph_rt.pixel_values"):
            raster_tiles(backend, MODE_PATCHES if raw else MODE_PIXELS, batch, dev, out=pv, lut=lut)
    # pages the model would resize: drawn, then resized and normalized by the plain-torch path
    for i, (d, (s, e)) in enumerate(zip(docs, ranges)):
        p0 = int(batch.page_base[i])
        todo = np.nonzero(~fused[p0:p0 + e - s])[0]
        if not len(todo):
            continue
        (buf, _), = draw_pages([d], device, backend, ranges=[(s + int(todo[0]), s + int(todo[-1]) + 1)])
        with nvtx_range("glyph_rt.pixel_values"):
            for k in todo:
                p = p0 + int(k)
                h, w = hw[p]
                v, _ = pixel_values_from_pages([buf[k - todo[0], :h, :w]], model, dtype, lut)
                if raw:  # the pad bytes too
                    padded_rows(pv)[first[p]:first[p] + rows[p]] = padded_rows(v)
                else:
                    pv[first[p]:first[p] + rows[p]] = v
    return pv, torch.from_numpy(grid_thw(target)).to(device), int(fused.sum())


def render_inputs(texts, config: RenderConfig | list[RenderConfig] | None = None, *, model: str | VisionModel = "glm4v",
                  device=None, backend: str = "auto", dtype: torch.dtype = torch.float32,
                  batch_pages: int = 512, max_pages: int | None = None, workers: int = 1,
                  max_bytes: int = DEFAULT_MAX_BYTES, progress: bool = False) -> ModelInputs:
    """Renders texts straight into a vision model's input.

    texts: a str or a list of str; config: one RenderConfig or one per text (configs may differ
    within a batch: fonts, sizes, colors, dpi). model: "glm4v" or "qwen2_5_vl" (their processors' default resize
    limits), or a VisionModel with a checkpoint's (GlyphModel.vision). device: where the
    pages are drawn and pixel_values live, by default the GPU when torch sees one, else the CPU.
    dtype float32 or bfloat16 gives the processor's pixel_values; uint8 gives raw patches [N, 588]
    (a view of [N, 592] rows, zero-padded to 16 bytes) for glyph_rt.ops.patch_embed, which folds
    the normalization into the weights. Pages of several texts are drawn in one launch,
    `batch_pages` pages at a time (long texts are split), while `workers` threads lay out the next
    texts (the C++ layout engine runs without the GIL).
    MemoryError once pixel_values would pass `max_bytes`."""
    from tqdm import tqdm

    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    configs = config if isinstance(config, (list, tuple)) else [config] * len(texts)
    if len(configs) != len(texts):
        raise ValueError(f"{len(configs)} configs for {len(texts)} texts: give one config, or one per text")
    model = vision_model(model)
    if dtype not in (torch.float32, torch.bfloat16, torch.uint8):
        raise ValueError(f"dtype {dtype} is not supported: use torch.float32, torch.bfloat16 or torch.uint8 "
                         "(raw patches for glyph_rt's patch embedding)")
    for name, v in (("batch_pages", batch_pages), ("workers", workers), ("max_bytes", max_bytes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: {v!r} must be an integer >= 1")
    for i, c in enumerate(configs):
        if c is not None and not isinstance(c, RenderConfig):
            raise TypeError(f"config{'' if len(configs) == 1 else f'[{i}]'}: expected a RenderConfig, got "
                            f"{type(c).__name__} (use RenderConfig.from_dict for a dict)")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device, backend = resolve_device_backend(device, backend)
    lut = None if dtype == torch.uint8 else normalize_lut(device, dtype)
    t0 = time.perf_counter()
    seconds = {"layout_wait": 0.0, "gpu": 0.0}

    def lay_out(i):
        with nvtx_range("glyph_rt.layout"):
            return Document(texts[i], configs[i], max_pages=max_pages)

    pieces, grids, docs = [], [], []
    pending: list = []  # (document, first page, stop page)
    fused = nbytes = 0

    row_bytes = (ROW_U8 if dtype == torch.uint8 else ROW) * torch.empty(0, dtype=dtype).element_size()

    def bound_bytes(items) -> int:
        """pixel_values bytes of these pages at most: each page at its full canvas (cropping only shrinks)."""
        total = 0
        for d, s, e in items:
            th, tw = target_size(d.canvas[1], d.canvas[0], model)
            total += (e - s) * (th // PATCH) * (tw // PATCH) * row_bytes
        return total

    smaller = "pass fewer texts per call, " + ("use dtype=torch.bfloat16, " if dtype == torch.float32 else "") + \
        "or raise max_bytes"

    def flush():
        nonlocal fused, nbytes
        need = nbytes + bound_bytes(pending)
        if need > max_bytes:  # checked before the batch is drawn
            raise MemoryError(
                f"pixel_values of the first {len(docs)} of {len(texts)} texts may take up to {need / 2**30:.3g} GiB, "
                f"over max_bytes={max_bytes / 2**30:.3g} GiB; {smaller}")
        t = time.perf_counter()
        pv, grid, f = inputs_of_batch(pending, device, backend, model, dtype, lut)
        seconds["gpu"] += time.perf_counter() - t
        nbytes += pv.numel() * pv.element_size()
        if nbytes > max_bytes:
            raise MemoryError(
                f"pixel_values of the first {len(docs)} of {len(texts)} texts already take {nbytes / 2**30:.3g} GiB, "
                f"over max_bytes={max_bytes / 2**30:.3g} GiB; {smaller}")
        pieces.append(pv)
        grids.append(grid)
        fused += f
        bar.update(sum(e - s for _, s, e in pending))
        pending.clear()

    def laid_out():
        """The documents in order; with several texts, the layout of the next ones overlaps the drawing of the
        current batch (one text lays out on this thread: a server renders one request at a time)."""
        if len(texts) == 1:
            yield lay_out(0)
            return
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            for fut in [pool.submit(lay_out, i) for i in range(len(texts))]:
                yield fut.result()
        finally:  # an error: the layouts running finish, those not started are dropped
            pool.shutdown(wait=True, cancel_futures=True)

    bar = tqdm(unit="page", desc="render_inputs", disable=not progress)
    documents = laid_out()
    try:
        while True:
            t = time.perf_counter()
            doc = next(documents, None)
            seconds["layout_wait"] += time.perf_counter() - t
            if doc is None:
                break
            docs.append(doc)
            s = 0
            while s < doc.num_pages:
                n = min(doc.num_pages - s, batch_pages - sum(e - b for _, b, e in pending))
                pending.append((doc, s, s + n))
                s += n
                if sum(e - b for _, b, e in pending) >= batch_pages:
                    flush()
        if pending:
            flush()
    finally:
        documents.close()  # an error: the layouts running finish, the others are dropped
    bar.close()
    if not pieces:
        pieces = [torch.zeros(0, ROW_U8 if dtype == torch.uint8 else ROW, dtype=dtype, device=device)]
        grids = [torch.zeros(0, 3, dtype=torch.int64, device=device)]
    pv = pieces[0] if len(pieces) == 1 else cat_rows(pieces)
    grid = grids[0] if len(grids) == 1 else torch.cat(grids)
    seconds["total"] = time.perf_counter() - t0
    return ModelInputs(pv, grid, [d.num_pages for d in docs], model, docs, fused, seconds)
