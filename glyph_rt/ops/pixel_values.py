"""Pages -> GLM-4.1V / Qwen2.5-VL `pixel_values`: the plain-torch path, and the oracle of the fused kernel.

Both models rescale by 1/255, normalize with CLIP's mean and std, cut 14x14 patches,
repeat a still image over the temporal patch of 2 and order rows by 2x2 merge block:
pixel_values is [gh * gw, 3 * 2 * 14 * 14], columns (channel, t, py, px). With dtype uint8
the rows are the raw levels of one frame instead, [gh * gw, 3 * 14 * 14] (channel, py, px):
the input of glyph_rt's patch embedding, which folds the normalization into its weights.
Normalization goes through a [3, 256] table computed with the Hugging Face image
processor's own float32 arithmetic, and pages the model would resize are resized by
Pillow as in the processor, so every page gives the processor's values bit for bit.
"""
from __future__ import annotations

import functools
import operator

import numpy as np
import torch

from ..render.tokens import VisionModel, vision_model

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PATCH, MERGE, TEMPORAL = 14, 2, 2
ROW = 3 * TEMPORAL * PATCH * PATCH
ROW_U8 = 3 * PATCH * PATCH
ROW_U8_STRIDE = 592  # uint8 patch rows are padded to 16 bytes (aligned GEMM loads); the 4 pad bytes are 0
FACTOR = PATCH * MERGE  # sides of a page must be multiples of this


@functools.lru_cache(maxsize=8)
def _lut_numpy(mean: tuple, std: tuple) -> np.ndarray:
    levels = np.arange(256, dtype=np.float64)
    # HF: rescale in float64 then cast to float32; normalize in float32: (x - mean) / std
    x = (levels * (1 / 255)).astype(np.float32)
    m = np.asarray(mean, dtype=np.float32)[:, None]
    s = np.asarray(std, dtype=np.float32)[:, None]
    return np.ascontiguousarray((x[None, :] - m) / s, dtype=np.float32)


def normalize_lut(device=None, dtype=torch.float32, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """[3, 256]: the model's input value of each uint8 level of each channel, computed in float32 and
    rounded to `dtype` by torch (so bf16 input equals the float32 input cast to bf16)."""
    return torch.from_numpy(_lut_numpy(tuple(mean), tuple(std))).to(device=device, dtype=dtype)


def uint8_rows(n: int, device=None) -> torch.Tensor:
    """Uninitialized uint8 patches [n, 588]: a view of [n, 592] rows (see ROW_U8_STRIDE)."""
    return torch.empty(n, ROW_U8_STRIDE, dtype=torch.uint8, device=device)[:, :ROW_U8]


def padded_rows(patches: torch.Tensor) -> torch.Tensor:
    """uint8 patches [n, 588] -> the [n, 592] rows they are a view of; a zero-padded copy otherwise."""
    n = patches.shape[0]
    end = patches.storage_offset() + n * ROW_U8_STRIDE
    if patches.stride() == (ROW_U8_STRIDE, 1) and end <= patches.untyped_storage().nbytes():
        return patches.as_strided((n, ROW_U8_STRIDE), (ROW_U8_STRIDE, 1))
    return torch.nn.functional.pad(patches, (0, ROW_U8_STRIDE - ROW_U8))


def cat_rows(pieces: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat of row blocks, keeping uint8 patches padded."""
    if pieces[0].dtype != torch.uint8:
        return torch.cat(pieces)
    return torch.cat([padded_rows(p) for p in pieces])[:, :ROW_U8]


def target_size(height: int, width: int, model: str | VisionModel = "glm4v") -> tuple[int, int]:
    """(height, width) the model's image processor resizes a page to."""
    return vision_model(model).resize(height, width)


def resize_page(page: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic resize of a uint8 [H, W, 3] page with Pillow, as the processor does, on the CPU (the result
    goes back to the page's device). This is the slow path: snapped canvases never need it."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(page.cpu().numpy()))
    out = np.asarray(img.resize((width, height), Image.BICUBIC))
    return torch.from_numpy(out.copy()).to(page.device)


def patchify(values: torch.Tensor, temporal: int = TEMPORAL) -> torch.Tensor:
    """[3, h, w] image -> [gh * gw, 3 * temporal * 196] rows in merge-block order (the processor's layout)."""
    c, h, w = values.shape
    gh, gw = h // PATCH, w // PATCH
    p = values.reshape(c, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
    p = p.permute(1, 4, 2, 5, 0, 3, 6)  # (bh, bw, my, mx, c, py, px)
    p = p[:, :, :, :, :, None].expand(*p.shape[:5], temporal, PATCH, PATCH)
    return p.reshape(gh * gw, c * temporal * PATCH * PATCH)


def pixel_values_from_pages(pages: list[torch.Tensor], model: str | VisionModel = "glm4v", dtype=torch.float32,
                            lut: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [H, W, 3] pages (any device) -> (pixel_values [N, 1176], image_grid_thw [pages, 3] int64);
    with dtype uint8, raw patches [N, 588] (a view of zero-padded [N, 592] rows)."""
    rows, grids = [], []
    device = pages[0].device if pages else torch.device("cpu")
    raw = dtype == torch.uint8
    if not raw:
        lut = normalize_lut(device, dtype) if lut is None else lut
    for page in pages:
        if page.dtype != torch.uint8 or page.dim() != 3 or page.shape[-1] != 3:
            raise ValueError(f"a page must be uint8 [H, W, 3], got {page.dtype} {list(page.shape)}")
        H, W = page.shape[:2]
        h, w = target_size(H, W, model)
        if (h, w) != (H, W):
            page = resize_page(page, h, w)
        if raw:
            rows.append(patchify(page.permute(2, 0, 1), temporal=1))
        else:
            idx = page.permute(2, 0, 1).reshape(3, -1).long()
            rows.append(patchify(torch.gather(lut, 1, idx).reshape(3, h, w)))
        grids.append([1, h // PATCH, w // PATCH])
    pv = cat_rows(rows) if rows else torch.zeros(0, ROW_U8 if raw else ROW, dtype=dtype, device=device)
    return pv, torch.tensor(grids, dtype=torch.int64, device=device).reshape(-1, 3)


def write_pixel_values_cpu(pages: np.ndarray, hw: np.ndarray, first_row: np.ndarray, lut: torch.Tensor | None,
                           out: torch.Tensor) -> None:
    """The C++ CPU path: patch rows of uint8 pages [P, H, W, 3] (numpy) written into `out` from row
    first_row[i] on, for the top-left hw[i] = (height, width) pixels of page i (multiples of 28; (0, 0)
    skips the page). `out` is CPU and contiguous: [N, 1176] float32 or bfloat16 normalized rows, `lut`
    normalize_lut() in out's dtype; or [N, 592] uint8 padded patch rows (padded_rows of uint8_rows),
    `lut` None. Equal to pixel_values_from_pages bit for bit; no float page."""
    from .._ext import require_extension

    C = require_extension("the C++ pixel_values path")
    raw = out.dtype == torch.uint8
    if out.device.type != "cpu" or (raw and lut is not None) or (
            not raw and (out.dtype not in (torch.float32, torch.bfloat16) or lut is None or lut.dtype != out.dtype)):
        raise ValueError(f"out must be a CPU float32 or bfloat16 tensor with a lut of its dtype, or uint8 patch rows "
                         f"with no lut; got out {out.dtype} on {out.device}, lut {None if lut is None else lut.dtype}")

    def arr(t):
        t = t.contiguous() if t is lut else t
        return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()

    hw = int64_array(hw, "hw", "write_pixel_values_cpu")
    first_row = int64_array(first_row, "first_row", "write_pixel_values_cpu")
    if hw.size and (hw.min() < 0 or hw.max() > np.iinfo(np.int32).max):  # checked here, not wrapped by a cast
        raise ValueError(f"write_pixel_values_cpu: hw must be image sizes in [0, 2**31), got {hw.min()}..{hw.max()}")
    C.pixel_values_cpu(pages, hw, first_row, None if raw else arr(lut.cpu()), arr(out))


def int64_array(values, name: str, where: str) -> np.ndarray:
    """`values` as a contiguous int64 array, or a ValueError naming the argument: integers past int64, floats
    that are not whole numbers and non-numbers are refused instead of being wrapped or truncated by a cast."""
    try:
        a = np.asarray(values)
        if a.dtype.kind == "O":  # Python ints past int64 (numpy keeps them as objects)
            a = np.asarray([operator.index(v) for v in a.reshape(-1).tolist()], np.int64).reshape(a.shape)
        elif a.dtype.kind == "f":
            if a.size and not (np.isfinite(a).all() and (a == np.trunc(a)).all() and np.abs(a).max() < 2.0 ** 63):
                raise ValueError
        elif a.dtype.kind == "u":
            if a.size and a.max() > np.iinfo(np.int64).max:
                raise ValueError
        elif a.dtype.kind not in "ib":
            raise ValueError
        return np.ascontiguousarray(a, np.int64)
    except (OverflowError, TypeError, ValueError):
        raise ValueError(f"{where}: {name} must be integers within int64") from None
