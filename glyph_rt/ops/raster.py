"""GPU rasterization of laid-out documents: batch preparation, tile binning and kernel dispatch.

A `RasterBatch` gathers the pages of several documents (each with its own RenderConfig,
atlas, colors and canvas size) for one launch. On the device every glyph placement
becomes a pixel box in the shared atlas store, boxes are binned to 14x28-pixel tiles
(one patch row of a 2x2 merge block), and `raster_tiles` runs one program per tile with
the CUDA kernel (glyph_rt._C) or the Triton kernel (glyph_rt.kernels.raster).
The C++ CPU rasterizer is the oracle: both kernels reproduce its pixels exactly.
"""
from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from ..kernels import on_device
from ..nvtx import nvtx_range
from ..render.atlas import MAX_ATLAS_BYTES
from ..render.config import parse_color
from ..render.raster import crops, drawn_canvas, glyph_clips, paragraph_rects, palette, scales

TILE_H, TILE_W = 14, 28  # one patch row of a 2x2 merge block: pixel_values tiles map 1:1
MODE_BG, MODE_INK, MODE_PAGES, MODE_PIXELS, MODE_PATCHES = 0, 1, 2, 3, 4
PAGE_FIELDS = ("height", "width", "tiles_x", "tiles_y", "tile_base", "bg_rgb", "out_height", "out_width")
GPU_BACKENDS = ("cuda", "triton")


def pack_rgb(rgb) -> int:
    r, g, b = (int(v) for v in rgb)
    return r | (g << 8) | (b << 16)


def is_gray(rgb) -> bool:
    return rgb[0] == rgb[1] == rgb[2]


# ----------------------------------------------------------------------------- atlases
@dataclass
class _AtlasEntry:
    ref: weakref.ref
    count: int  # bitmaps uploaded
    offsets: np.ndarray  # int64 absolute offset of each uploaded bitmap in the store
    meta: torch.Tensor  # int32 [count, 5] width, height, left, top, offset


class AtlasStore:
    """The atlases of one device: each bitmap is uploaded once and reused by every launch.

    Atlases grow as texts bring new characters; only the new bitmaps travel then. Threads share a store (a
    server renders requests on several): one uploads at a time. When a launch's new bitmaps would take the
    store past `budget` bytes (training draws a new font size almost every sample), the store starts
    afresh and uploads that launch's atlases again."""

    def __init__(self, device: torch.device, budget: int = 256 << 20):
        self.device = torch.device(device)
        self.budget = budget
        self.used = 0
        self.entries: dict[int, _AtlasEntry] = {}
        self.uploaded_bytes = 0
        self.resets = 0
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.data = torch.zeros(1 << 16, dtype=torch.uint8, device=self.device)
        self.used = 0
        self.entries = {}

    def meta(self, atlas) -> torch.Tensor:
        """Device metadata of `atlas` ([bitmaps, 5] int32), uploading whatever is new."""
        return self.metas([atlas])[0][0]

    def metas(self, atlases: list) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The device metadata of each atlas and the store's data they index, uploading whatever is new."""
        with self._lock:
            snaps = []
            for atlas in atlases:
                with atlas.lock:
                    snaps.append(atlas.arrays())
            distinct = {id(atlas): (atlas, a) for atlas, a in zip(atlases, snaps)}
            new = sum(self._new_bytes(atlas, a) for atlas, a in distinct.values())
            if self.used and self.used + new > self.budget:
                self._reset()
                self.resets += 1
            return [self._meta(atlas, a) for atlas, a in zip(atlases, snaps)], self.data

    def _entry(self, atlas) -> _AtlasEntry | None:
        e = self.entries.get(id(atlas))
        return e if e is not None and e.ref() is atlas else None

    def _new_bytes(self, atlas, a: dict) -> int:
        """Bytes of `atlas`'s bitmaps not in the store yet."""
        e = self._entry(atlas)
        n, start = len(a["width"]), 0 if e is None else e.count
        if start >= n:
            return 0
        return int(a["offset"][-1] + a["width"][-1].astype(np.int64) * a["height"][-1] - a["offset"][start])

    def _meta(self, atlas, a: dict) -> torch.Tensor:
        e = self._entry(atlas)
        n = len(a["width"])
        if e is not None and e.count == n:
            return e.meta
        start = 0 if e is None else e.count
        lo = int(a["offset"][start]) if start < n else 0
        hi = int(a["offset"][-1] + a["width"][-1].astype(np.int64) * a["height"][-1]) if n else 0
        new = a["data"][lo:hi]
        base = self._append(new)
        offsets = a["offset"][start:] - lo + base
        if e is not None:
            offsets = np.concatenate([e.offsets, offsets])
        meta = np.stack([a["width"], a["height"], a["left"], a["top"], offsets.astype(np.int32)], axis=1)
        meta = torch.from_numpy(np.ascontiguousarray(meta, dtype=np.int32)).to(self.device)
        self.entries[id(atlas)] = _AtlasEntry(weakref.ref(atlas), n, offsets, meta)
        return meta

    def _append(self, new: np.ndarray) -> int:
        need = self.used + len(new)
        if need > MAX_ATLAS_BYTES:
            raise MemoryError(f"atlas store would hold {need} bytes, over the kernels' 2 GiB offset range")
        if need > len(self.data):
            grown = torch.zeros(max(need, 2 * len(self.data)), dtype=torch.uint8, device=self.device)
            grown[: self.used] = self.data[: self.used]
            self.data = grown
        base = self.used
        if len(new):
            self.data[base:need] = torch.from_numpy(np.ascontiguousarray(new)).to(self.device)
        self.used = need
        self.uploaded_bytes += len(new)
        return base


_STORES: dict[torch.device, AtlasStore] = {}
_STORES_LOCK = threading.Lock()


def atlas_store(device) -> AtlasStore:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    with _STORES_LOCK:
        if device not in _STORES:
            _STORES[device] = AtlasStore(device)
        return _STORES[device]


# ----------------------------------------------------------------------------- staging
class Staging:
    """Pinned host memory through which placements travel to the GPU (one copy per launch).

    The buffer is reused; before it is overwritten the previous copy out of it must be done. One thread
    at a time fills it and queues its copy."""

    def __init__(self):
        self.buf: torch.Tensor | None = None
        self.event = None
        self._lock = threading.Lock()

    def upload(self, arrays: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
        if device.type != "cuda":
            return [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays]
        with self._lock:
            return self._upload(arrays, device)

    def _upload(self, arrays: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
        spans, total = [], 0
        for a in arrays:
            spans.append((total, a.nbytes))
            total += (a.nbytes + 15) // 16 * 16
        if self.event is not None:
            self.event.synchronize()
        if self.buf is None or self.buf.numel() < total:
            self.buf = torch.empty(max(total, 1 << 20), dtype=torch.uint8, pin_memory=True)
        host = self.buf.numpy()
        for a, (o, n) in zip(arrays, spans):
            host[o:o + n] = np.ascontiguousarray(a).view(np.uint8).reshape(-1)
        dev = self.buf[:total].to(device, non_blocking=True)
        self.event = torch.cuda.Event()
        self.event.record(torch.cuda.current_stream(device))
        return [dev[o:o + n].view(torch.from_numpy(a[:0]).dtype) for a, (o, n) in zip(arrays, spans)]


_STAGING = Staging()


# ----------------------------------------------------------------------------- binning
def bin_boxes(page: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, x1: torch.Tensor, y1: torch.Tensor,
              page_hw: torch.Tensor, page_tiles: torch.Tensor, num_tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bins boxes [x0, x1) x [y0, y1) (pixels of page `page`) to the tiles they touch.

    Returns (items, start): the box indices of tile t are items[start[t]:start[t+1]], in
    box order (drawing order). Parts outside the page are clipped; boxes with nothing left
    on a page are dropped. page_hw: [P, 2] (height, width); page_tiles: [P, 2] (tiles_x, tile_base)."""
    dev = page.device
    P = len(page_hw)
    n = len(page)
    if n == 0:
        return torch.zeros(0, dtype=torch.int32, device=dev), torch.zeros(num_tiles + 1, dtype=torch.int32, device=dev)
    pg = page.long().clamp(0, max(P - 1, 0))
    ok = (page >= 0) & (page < P)
    H, W = page_hw[pg, 0].long(), page_hw[pg, 1].long()
    cx0, cy0 = x0.long().clamp(min=0), y0.long().clamp(min=0)
    cx1, cy1 = torch.minimum(x1.long(), W), torch.minimum(y1.long(), H)
    ok &= (cx0 < cx1) & (cy0 < cy1)
    tx0, ty0 = cx0 // TILE_W, cy0 // TILE_H
    nx = torch.where(ok, (cx1 - 1) // TILE_W - tx0 + 1, 0)
    ny = torch.where(ok, (cy1 - 1) // TILE_H - ty0 + 1, 0)
    count = nx * ny
    ends = torch.cumsum(count, 0)
    total = int(ends[-1])  # the one host sync of the binning
    if total >= 1 << 31:
        raise ValueError(f"{total} (tile, box) pairs are over the kernels' int32 range; draw fewer pages per launch")
    item = torch.repeat_interleave(torch.arange(n, device=dev), count, output_size=total)
    k = torch.arange(total, device=dev) - (ends - count)[item]
    nxi = nx[item]
    tx = tx0[item] + k % nxi
    ty = ty0[item] + k // nxi
    pgi = pg[item]
    key = page_tiles[pgi, 1].long() + ty * page_tiles[pgi, 0].long() + tx
    key, order = torch.sort(key, stable=True)
    items = item[order].to(torch.int32)
    start = torch.searchsorted(key, torch.arange(num_tiles + 1, device=dev, dtype=key.dtype)).to(torch.int32)
    return items, start


# ----------------------------------------------------------------------------- batches
def _cat(parts: list, dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


class RasterBatch:
    """Host side of one launch: page ranges of documents, each with its own config and atlas."""

    def __init__(self, docs, ranges: list[tuple[int, int]] | None = None):
        if ranges is None:
            ranges = [(0, d.num_pages) for d in docs]
        if len(ranges) != len(docs):
            raise ValueError("one page range per document is needed")
        self.docs = list(docs)
        self.ranges = [(int(s), int(e)) for s, e in ranges]
        for d, (s, e) in zip(self.docs, self.ranges):
            if not 0 <= s <= e <= d.num_pages:
                raise IndexError(f"page range [{s}, {e}) is outside 0..{d.num_pages}")
        counts = [e - s for s, e in self.ranges]
        self.page_base = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.num_pages = int(self.page_base[-1])
        P = self.num_pages
        meta = np.zeros((P, len(PAGE_FIELDS)), np.int32)
        self.sxy = np.zeros((P, 2), np.float64)
        self.doc_of_page = np.repeat(np.arange(len(docs)), counts).astype(np.int64)
        gray = True
        xs, ys, slots, colors, clips, per_page = [], [], [], [], [], []
        rect_page, rect_box, rect_rgb = [], [], []
        self.palettes = np.zeros((len(docs), 2), np.int32)
        for i, (d, (s, e)) in enumerate(zip(self.docs, self.ranges)):
            c = d.config
            W, H = drawn_canvas(c)
            p0, p1 = self.page_base[i], self.page_base[i + 1]
            meta[p0:p1, 0], meta[p0:p1, 1] = H, W
            meta[p0:p1, 2], meta[p0:p1, 3] = math.ceil(W / TILE_W), math.ceil(H / TILE_H)
            bg = parse_color(c.page_bg_color, "page_bg_color")
            meta[p0:p1, 5] = pack_rgb(bg)
            meta[p0:p1, 6], meta[p0:p1, 7] = H, W
            self.sxy[p0:p1] = scales(c)
            pal = palette(c)
            self.palettes[i] = [pack_rgb(pal[0]), pack_rgb(pal[1])]
            gray &= is_gray(bg) and all(is_gray(p) for p in pal)
            lay = d.layout
            lo, hi, g_page, g_y = lay.page_glyphs(s, e)
            xs.append(lay.g_x[lo:hi])
            ys.append(g_y)
            slots.append(lay.g_slot[lo:hi])
            colors.append(lay.g_color[lo:hi])
            clips.append(glyph_clips(lay, c, lo, hi))
            per_page.append(np.bincount(g_page - s, minlength=e - s).astype(np.int64))
            rp, rb, rc = paragraph_rects(lay, c)
            keep = (rp >= s) & (rp < e)
            rect_page.append(rp[keep] - s + p0)
            rect_box.append(rb[keep])
            rect_rgb.append(np.asarray([pack_rgb(x) for x in rc[keep]], np.int32))
            gray &= all(is_gray(x) for x in rc[keep])
        tiles = meta[:, 2].astype(np.int64) * meta[:, 3]
        meta[:, 4] = np.concatenate([[0], np.cumsum(tiles)[:-1]]) if P else np.zeros(0)
        self.num_tiles = int(tiles.sum())
        self.tiles_per_page_max = int(tiles.max()) if P else 0
        self.meta = meta
        self.gray = bool(gray)
        self.g_x, self.g_y = _cat(xs, np.float32), _cat(ys, np.float32)
        self.g_slot, self.g_color = _cat(slots, np.int32), _cat(colors, np.uint8)
        self.g_clip = _cat(clips, np.int32)
        self.glyphs_per_page = _cat(per_page, np.int64)
        self.num_glyphs = len(self.g_x)
        self.rect_page = _cat(rect_page, np.int32)
        self.rect_box = _cat(rect_box, np.int32).reshape(-1, 4)
        self.rect_rgb = _cat(rect_rgb, np.int32)
        if self.num_tiles >= 1 << 31:
            raise ValueError(f"{P} pages make {self.num_tiles} tiles, over the kernels' int32 range; "
                             "draw fewer pages per launch")

    def needs_ink(self) -> bool:
        """Whether a page's crop needs the ink of the drawn page: a page of a horizontal scale other than 1 takes the
        ink of the page resized (render.gpu), not of the one drawn."""
        return any(crops(d.config) and d.config.horizontal_scale == 1 for d in self.docs)

    def to_device(self, device) -> dict:
        """Uploads the batch and bins it: the tensors every kernel mode reads."""
        device = torch.device(device)
        store = atlas_store(device)
        with nvtx_range("glyph_rt.upload"):
            metas, atlas_data = store.metas([d.atlas for d in self.docs])
            # per document: where its atlas metadata starts in the combined table
            if all(m is metas[0] for m in metas):
                table, bases = metas[0], [0] * len(metas)
            else:
                uniq: dict[int, int] = {}
                parts, bases, n = [], [], 0
                for m in metas:
                    if id(m) not in uniq:
                        uniq[id(m)] = n
                        parts.append(m)
                        n += len(m)
                    bases.append(uniq[id(m)])
                table = torch.cat(parts)
            phases = np.asarray([d.atlas.phases for d in self.docs], np.int64)
            nslots = np.asarray([len(m) // d.atlas.phases for m, d in zip(metas, self.docs)], np.int64)
            page_info = np.stack([self.sxy[:, 0], self.sxy[:, 1],
                                  np.asarray(bases, np.float64)[self.doc_of_page],
                                  phases[self.doc_of_page].astype(np.float64),
                                  nslots[self.doc_of_page].astype(np.float64)], axis=1) if self.num_pages else \
                np.zeros((0, 5))
            (gx, gy, gslot, gcol, gclip, gpp, meta, pinfo, pal, dop, rpage, rbox, rrgb) = _STAGING.upload(
                [self.g_x, self.g_y, self.g_slot, self.g_color, self.g_clip, self.glyphs_per_page, self.meta, page_info,
                 self.palettes, self.doc_of_page, self.rect_page, self.rect_box, self.rect_rgb], device)
        with nvtx_range("glyph_rt.bin"):
            P = self.num_pages
            meta = meta.view(P, len(PAGE_FIELDS))
            pinfo = pinfo.view(P, 5)
            page = torch.repeat_interleave(torch.arange(P, device=device), gpp, output_size=self.num_glyphs)
            info = pinfo[page]
            # pixel origin and sub-pixel phase, in float64 exactly as the C++ rasterizer does
            xf = gx.double() * info[:, 0]
            ix = torch.floor(xf)
            P_ph = info[:, 3].long()
            phase = torch.minimum(((xf - ix) * info[:, 3]).long(), P_ph - 1)
            slot = gslot.long()
            valid = (slot >= 0) & (slot < info[:, 4].long())
            gidx = torch.where(valid, info[:, 2].long() + slot * P_ph + phase, 0)
            m = table[gidx]
            gw = torch.where(valid, m[:, 0], 0)
            gh = torch.where(valid, m[:, 1], 0)
            x0 = ix.long() + m[:, 2]
            y0 = torch.floor(gy.double() * info[:, 1] + 0.5).long() - m[:, 3]
            gh = torch.clamp(torch.minimum(gh, gclip.long() - y0), min=0)  # run_clips: rows under the next paragraph
            rgb = pal.view(-1, 2)[dop[page], gcol.long()]
            hw = meta[:, 0:2]
            tiles = torch.stack([meta[:, 2], meta[:, 4]], 1)
            g_items, g_start = bin_boxes(page, x0, y0, x0 + gw, y0 + gh, hw, tiles, self.num_tiles)
            rb = rbox.view(-1, 4)
            r_items, r_start = bin_boxes(rpage, rb[:, 0], rb[:, 1], rb[:, 2], rb[:, 3], hw, tiles, self.num_tiles)
            i32 = torch.int32
            return {
                "meta": meta, "out_off": torch.zeros(P, dtype=torch.int64, device=device),
                "glyph_start": g_start, "glyph_items": g_items,
                "g_x0": x0.to(i32), "g_y0": y0.to(i32), "g_w": gw.to(i32), "g_h": gh.to(i32),
                "g_off": m[:, 4].contiguous(), "g_rgb": rgb.to(i32),
                "rect_start": r_start, "rect_items": r_items, "r_box": rb.contiguous(), "r_rgb": rrgb,
                "atlas": atlas_data,
                "ink": torch.zeros(P, 2, dtype=torch.int32, device=device),
                "bgv": torch.zeros(P, dtype=torch.float32, device=device),
                "tiles_per_page_max": self.tiles_per_page_max,
                "canvas": np.asarray(self.meta, np.int64).reshape(P, len(PAGE_FIELDS))[:, 0:2].copy(),  # (H, W), host
            }


def set_image_targets(dev: dict, hw: np.ndarray, first_row: np.ndarray) -> None:
    """Where MODE_PIXELS / MODE_PATCHES write each page: its image size (height, width; multiples of 28 within
    the page's canvas, or 0 to skip the page) and its first output row."""
    from .pixel_values import int64_array

    hw = int64_array(hw, "hw", "set_image_targets").reshape(-1, 2)
    first_row = int64_array(first_row, "first_row", "set_image_targets").reshape(-1)
    canvas = dev["canvas"]
    if hw.shape[0] != canvas.shape[0] or first_row.shape[0] != canvas.shape[0]:
        raise ValueError(f"set_image_targets: {hw.shape[0]} sizes and {first_row.shape[0]} first rows for "
                         f"{canvas.shape[0]} pages")
    bad = np.nonzero((hw % 28 != 0).any(1) | (hw > canvas).any(1) | (hw < 0).any(1) | (first_row < 0))[0]
    if len(bad):
        k = int(bad[0])
        raise ValueError(f"set_image_targets: page {k}'s image {tuple(hw[k])} (first row {first_row[k]}) is not "
                         f"multiples of 28 within its {tuple(canvas[k])} canvas")
    rows = (hw[:, 0] // 14) * (hw[:, 1] // 14)  # hw lies within the canvas: no overflow
    over = np.nonzero(first_row > np.iinfo(np.int64).max - rows)[0]  # first_row + rows would wrap past int64
    if len(over):
        k = int(over[0])
        raise ValueError(f"set_image_targets: page {k}'s first_row {first_row[k]} plus its {rows[k]} rows passes "
                         f"int64")
    dev["out_off"].copy_(torch.from_numpy(np.ascontiguousarray(first_row)))
    dev["meta"][:, 6:8] = torch.from_numpy(np.ascontiguousarray(hw, dtype=np.int32)).to(dev["meta"].device)
    dev["out_rows"] = int((first_row + rows).max(initial=0))  # rows the kernels write
    dev.pop("out_bytes", None)


def set_page_targets(dev: dict, offsets: np.ndarray) -> int:
    """Where MODE_PAGES writes each uint8 RGB canvas: its byte offset. Returns the bytes the pages need."""
    from .pixel_values import int64_array

    offsets = int64_array(offsets, "offsets", "set_page_targets").reshape(-1)
    canvas = dev["canvas"]
    if offsets.shape[0] != canvas.shape[0] or (offsets < 0).any():
        raise ValueError(f"set_page_targets: {offsets.shape[0]} offsets for {canvas.shape[0]} pages (each >= 0)")
    size = canvas[:, 0] * canvas[:, 1] * 3  # int32 sides: no overflow
    over = np.nonzero(offsets > np.iinfo(np.int64).max - size)[0]  # offset + size would wrap past int64
    if len(over):
        k = int(over[0])
        raise ValueError(f"set_page_targets: page {k}'s offset {offsets[k]} plus its {size[k]} bytes passes int64")
    dev["out_off"].copy_(torch.from_numpy(np.ascontiguousarray(offsets)))
    dev["out_bytes"] = int((offsets + size).max(initial=0))
    dev.pop("out_rows", None)
    return dev["out_bytes"]


def _check_args(mode: int, dev: dict, out: torch.Tensor | None, lut: torch.Tensor | None) -> None:
    """What the kernels (CUDA, its host twin, Triton) take on trust, given raw pointers: one device, out's layout,
    every write inside out (the targets set by set_image_targets / set_page_targets), the lut in out's type."""
    device = dev["bgv"].device
    for name, t in (("out", out), ("lut", lut)):
        if t is not None and t.device != device:
            raise ValueError(f"raster_tiles: {name} is on {t.device}, the batch on {device}")
    if mode == MODE_PAGES:
        if "out_bytes" not in dev:
            raise ValueError("raster_tiles: MODE_PAGES needs the pages' offsets: call set_page_targets first")
        if out is None or out.dtype != torch.uint8 or not out.is_contiguous() or out.numel() < dev["out_bytes"]:
            raise ValueError(f"raster_tiles: MODE_PAGES needs a contiguous uint8 `out` of at least {dev['out_bytes']} "
                             f"bytes, got {None if out is None else (out.dtype, out.numel(), out.is_contiguous())}")
    if mode in (MODE_PIXELS, MODE_PATCHES):
        if out is None:
            raise ValueError("raster_tiles: pixel_values modes need `out`")
        if "out_rows" not in dev:
            raise ValueError("raster_tiles: pixel_values modes need the images' sizes and rows: call "
                             "set_image_targets first")
        from .pixel_values import ROW, ROW_U8, ROW_U8_STRIDE

        widths, stride = ((ROW_U8, ROW_U8_STRIDE), ROW_U8_STRIDE) if mode == MODE_PATCHES else ((ROW,), ROW)
        if out.dim() != 2 or out.shape[1] not in widths or out.stride() != (stride, 1):
            raise ValueError(f"raster_tiles: out must be [N, {widths[0]}] rows {stride} elements apart, got "
                             f"{list(out.shape)} with strides {out.stride()}")
        if out.shape[0] < dev["out_rows"]:
            raise ValueError(f"raster_tiles: out has {out.shape[0]} rows, the pages need {dev['out_rows']}")
        if mode == MODE_PIXELS and (lut is None or lut.dtype != out.dtype or not lut.is_contiguous()
                                    or lut.numel() != 768):
            raise ValueError("raster_tiles: MODE_PIXELS needs a contiguous [3, 256] lut in out's dtype")


# ----------------------------------------------------------------------------- dispatch
def check_backend(backend: str, device: torch.device) -> None:
    """A clear error when `backend` cannot draw on `device`."""
    from .._ext import backends

    if backend not in GPU_BACKENDS:
        raise ValueError(f"raster backend {backend!r} is unknown; choose from {', '.join(GPU_BACKENDS)}")
    info = backends()[backend]
    if backend == "cuda":
        if device.type != "cuda":
            raise ValueError(f"backend 'cuda' draws on a CUDA device, not on {device}")
        if not info["available"]:
            raise RuntimeError(f"backend 'cuda' is not available: {info['why']}")
    else:
        if not info["available"]:
            raise RuntimeError(f"backend 'triton' is not available: {info['why']}")
        if device.type == "cpu":
            import os

            if os.environ.get("TRITON_INTERPRET") != "1":
                raise RuntimeError("backend 'triton' on the CPU runs only in Triton's interpreter: "
                                   "set TRITON_INTERPRET=1 before importing glyph_rt")
        elif device.type != "cuda":
            raise ValueError(f"backend 'triton' draws on a CUDA device (or the CPU interpreter), not on {device}")


def raster_tiles(backend: str, mode: int, batch: RasterBatch, dev: dict, out: torch.Tensor | None = None,
                 lut: torch.Tensor | None = None, ink: bool = False, tol: float = 5.0) -> None:
    """Runs one kernel mode over every tile of the batch.

    backend: "cuda" (the extension's kernel), "triton", or "cuda_host": the CUDA kernel's per-pixel
    code run on the host over CPU tensors, which is how tests check the CUDA path without a GPU."""
    if batch.num_pages == 0:
        return
    # Triton's and the extension's kernels launch on the thread's current device (a server renders on workers)
    _check_args(mode, dev, out, lut)
    with nvtx_range(f"glyph_rt.raster.{('bg', 'ink', 'pages', 'pixels', 'patches')[mode]}"), on_device(dev["bgv"]):
        if backend == "triton":
            from ..kernels import raster as tk

            tk.launch(mode, batch, dev, out=out, lut=lut, ink=ink, tol=tol)
            return
        from .._ext import require_extension

        C = require_extension(f"the {backend} rasterizer")
        dummy = dev["bgv"]
        o = out if out is not None else dummy
        ptr = {k: v.data_ptr() for k, v in dev.items() if isinstance(v, torch.Tensor)}
        ptr["out"] = o.data_ptr()
        ptr["lut"] = (lut if lut is not None else dummy).data_ptr()
        out_type = {torch.uint8: 0, torch.float32: 1, torch.bfloat16: 2}[o.dtype]
        tiles = dev["tiles_per_page_max"] if mode != MODE_BG else 1
        args = (ptr, mode, bool(ink), bool(batch.gray), out_type, batch.num_pages, tiles, float(tol))
        if backend == "cuda":
            C.raster_cuda(*args, torch.cuda.current_stream(o.device).cuda_stream)
        elif backend == "cuda_host":
            if o.device.type != "cpu":
                raise ValueError("backend 'cuda_host' runs on CPU tensors")
            C.raster_tiles_host(*args)
        else:
            raise ValueError(f"raster backend {backend!r} is unknown; choose from {', '.join(GPU_BACKENDS)}")
