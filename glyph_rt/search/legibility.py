"""A cheap, model-free objective for demonstrations on a CPU: real compression, proxy accuracy.

compression: the text's tokens (Qwen's tokenizer) / the GLM-4.1V visual tokens of its rendered pages
(smart_resize, 28 px patches after merging), exactly as `glyph-rt stats` counts them.

accuracy (a proxy, not a model's score): the share of characters a template-matching reader
recognises on a degraded copy of the pages. Each placed glyph's cell (its advance x 1.02 em at its
pen position, neighbours' ink included) is blurred (Gaussian, `blur` px) and noised (Gaussian,
`noise` of the 0..1 grey range, fixed seed), then matched by normalised cross-correlation against
clean cells of the same characters rendered alone (one a line) with the same config; the best
match must be the right character. Small, squeezed or low-contrast glyphs and tight lines lose it.
It measures glyph legibility at the page's pixel size, nothing about a VLM's reading or reasoning.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..render.config import RenderConfig
from .objective import Score

ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:()-'\""


def _grey(buf: np.ndarray) -> np.ndarray:
    return buf.astype(np.float32).mean(axis=-1) / 255.0


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return img
    r = max(1, int(3 * sigma + 0.5))
    x = np.arange(-r, r + 1, dtype=np.float32)
    k = np.exp(-x * x / (2 * sigma * sigma))
    k /= k.sum()
    pad = np.pad(img, ((0, 0), (r, r), (r, r)), mode="edge")
    tmp = sum(k[i] * pad[:, :, i:i + img.shape[2]] for i in range(2 * r + 1))
    return sum(k[i] * tmp[:, i:i + img.shape[1], :] for i in range(2 * r + 1))


def _cells(doc, pages: np.ndarray, config: RenderConfig, max_glyphs: int) -> tuple[list, np.ndarray, np.ndarray]:
    """(characters, [n, h, w] cells, [n] widths) of the first `max_glyphs` placed glyphs in ALPHABET.

    A cell starts 1 px left of the pen position, is 1.2 em wide (scaled) and runs from 0.8 em above
    the baseline to 0.22 em below it (one line, even at line_height = font_size); its width is the
    pixels up to the next glyph's pen position on the line (the segmentation a reader does), 0.6 em
    for a line's last glyph."""
    em = config.font_size * config.dpi / 72
    w = max(3, int(np.ceil(1.2 * em * config.horizontal_scale)) + 2)
    up = int(np.ceil(0.8 * em))
    h = max(2, up + int(np.ceil(0.22 * em)))
    lay = doc.layout
    sx, sy = config.dpi / 72 * config.horizontal_scale, config.dpi / 72  # layout points -> pixels
    P = pages.shape[0]
    padded = np.pad(pages, ((0, 0), (h, h), (w, w)), mode="edge")
    chars, cells, widths = [], [], []
    gx, gy, gp = lay.g_x.tolist(), lay.g_y.tolist(), lay.g_page.tolist()
    for k, (page, src, x, y, color) in enumerate(zip(gp, lay.g_src.tolist(), gx, gy, lay.g_color.tolist())):
        if page >= P or color != 0:
            continue
        ch = doc.text[src]
        if ch not in ALPHABET:
            continue
        x0, y0 = int(np.floor(x * sx)) - 1 + w, int(np.floor(y * sy + 0.5)) - up + h
        same_line = k + 1 < len(gx) and gp[k + 1] == page and gy[k + 1] == y and gx[k + 1] > x
        adv = (gx[k + 1] - x) * sx if same_line else 0.6 * em * config.horizontal_scale
        cells.append(padded[page, y0:y0 + h, x0:x0 + w])
        widths.append(min(max(int(round(adv)) + 1, 2), w - 1))
        chars.append(ch)
        if len(chars) >= max_glyphs:
            break
    if not cells:
        return chars, np.zeros((0, h, w), np.float32), np.zeros(0, np.int64)
    return chars, np.stack(cells), np.asarray(widths)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def _read(cells: np.ndarray, widths: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """Index of the best-matching reference of each cell: normalised cross-correlation over the
    cell's own width (references are alone on their line, so background beyond their ink), best of
    reference shifts -1, 0, +1 px; references whose ink reaches past the cell are out."""
    n, h, w = cells.shape
    out = np.zeros(n, np.int64)
    shifted = [np.roll(refs, dx, axis=2) for dx in (-1, 0, 1)]
    bg = np.median(refs[:, :, -1:], axis=(1, 2))[:, None]
    ink = np.abs(refs - bg[:, :, None]).max(axis=1) > 0.1  # [refs, w]
    right = np.where(ink.any(axis=1), w - np.argmax(ink[:, ::-1], axis=1), 0)
    for width in np.unique(widths):
        idx = np.nonzero(widths == width)[0]
        win = _normalise(cells[idx, :, :width].reshape(len(idx), -1))
        best = np.full((len(idx), len(refs)), -np.inf, np.float32)
        for r in shifted:
            tpl = _normalise(r[:, :, :width].reshape(len(refs), -1))
            np.maximum(best, win @ tpl.T, out=best)
        best[:, right > width + 1] = -np.inf  # a reference wider than the cell is not this glyph
        out[idx] = best.argmax(axis=1)
    return out


def check_model(model) -> None:
    """Refuses a model whose visual tokens glyph_rt cannot count (before any config is rendered)."""
    from ..render.tokens import VISION_MODELS

    if not isinstance(model, str) or model not in VISION_MODELS:
        raise ValueError(f"evaluator.model: {model!r} is unknown; choose from {', '.join(VISION_MODELS)}")


class LegibilityObjective:
    """See the module docstring. `text`: what is rendered (default: the built-in sample's first
    `chars` characters)."""

    def __init__(self, text: str | None = None, chars: int = 20000, blur: float = 0.6, noise: float = 0.08,
                 max_glyphs: int = 1500, seed: int = 0, model: str = "glm4v", tokenizer: str | None = None):
        from ..render.textio import sample_text
        from ..render.tokens import get_tokenizer

        check_model(model)
        self.text = (text if text is not None else sample_text())[:chars]
        self.chars, self.blur, self.noise, self.max_glyphs, self.seed, self.model = \
            chars, blur, noise, max_glyphs, seed, model
        readable = sum(ch in ALPHABET for ch in self.text)
        if not readable:
            sample = "".join(sorted({ch for ch in self.text if not ch.isspace()}))[:12]
            raise ValueError(f"evaluator: the legibility text has no character its reader knows (ASCII letters, "
                             f"digits and .,;:()-'\" only; its {len(self.text):,} characters include {sample!r}): "
                             "every config would score accuracy 0. Give a text with Latin letters "
                             "(evaluator.text), or search with kind eval and a model that reads it")
        self.tokenizer = get_tokenizer(tokenizer)
        self.text_tokens = self.tokenizer.count(self.text)

    def __call__(self, config: RenderConfig) -> Score:
        from ..render.pages import Document
        from ..render.tokens import visual_tokens

        doc = Document(self.text, config)
        buf, sizes = doc.rasterize(0, doc.num_pages)
        vis = sum(visual_tokens(sizes, self.model))
        lay = doc.layout
        used = int(lay.g_page[min(len(lay.g_page) - 1, 2 * self.max_glyphs)]) + 1 if len(lay.g_page) else 1
        pages = _grey(buf[:used])  # the pages the read glyphs lie on
        rng = np.random.default_rng(self.seed)
        seen = _blur(pages, self.blur) + rng.normal(0.0, self.noise, pages.shape).astype(np.float32)
        chars, cells, widths = _cells(doc, seen, config, self.max_glyphs)
        # one character a line, nothing next to it: plain line breaks, whatever the config's newline markup
        ref_doc = Document("\n".join(ALPHABET), dataclasses.replace(config, newline_markup="<br/>"))
        ref_buf, _ = ref_doc.rasterize(0, ref_doc.num_pages)
        ref_chars, ref_cells, _ = _cells(ref_doc, _grey(ref_buf), config, len(ALPHABET))
        if not chars:  # nothing to read is no accuracy of 0: a failed evaluation
            raise ValueError(f"no glyph of the reader's alphabet was placed on the {doc.num_pages} page(s)")
        guess = np.asarray(ref_chars)[_read(cells, widths, ref_cells)]
        acc = float(np.mean(guess == np.asarray(chars)))
        return Score(acc, self.text_tokens / vis, {"glyphs": len(chars), "pages": doc.num_pages, "visual_tokens": vis,
                                                   "glyph_px": round(config.font_size * config.dpi / 72, 3)})

    def describe(self) -> dict:
        return {"kind": "legibility", "chars": self.chars, "text_tokens": self.text_tokens, "blur": self.blur,
                "noise": self.noise, "max_glyphs": self.max_glyphs, "seed": self.seed, "model": self.model}
