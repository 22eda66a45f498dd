"""A look at a style sampler: rendered thumbnails, distribution plots, the configs and rejection counts."""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np

from ..fileio import atomic_path, save_figure, write_atomic
from .styles import StyleSample, StyleSampler

THUMB = 224  # thumbnail box, pixels
SAMPLE_CHARS = 6000  # enough text to fill a first page of any sampled style
PLOT_HINT = "pip install 'glyph_rt[plots]' (matplotlib)"


def first_page(sample: StyleSample, text: str) -> np.ndarray:
    """The first page of `text` rendered with the sample's config on the CPU, [H, W, 3] uint8."""
    from ..render.pages import Document

    doc = Document(text, sample.config, max_pages=1)
    buf, sizes = doc.rasterize(0, 1)
    w, h = sizes[0]
    return buf[0, :h, :w]


def contact_sheet(samples: list[StyleSample], text: str, path: Path) -> None:
    """A grid of thumbnails (first pages), each labelled with its index, dpi and theme."""
    from PIL import Image, ImageDraw

    cols = max(1, math.ceil(math.sqrt(len(samples))))
    rows = max(1, math.ceil(len(samples) / cols))
    cell_h = THUMB + 14
    sheet = Image.new("RGB", (cols * THUMB, rows * cell_h), (128, 128, 128))
    draw = ImageDraw.Draw(sheet)
    for k, s in enumerate(samples):
        img = Image.fromarray(first_page(s, text))
        img.thumbnail((THUMB - 4, THUMB - 4), Image.Resampling.LANCZOS)
        x, y = (k % cols) * THUMB, (k // cols) * cell_h
        sheet.paste(img, (x + (THUMB - img.width) // 2, y + 2))
        draw.text((x + 3, y + THUMB), f"#{s.index} {s.config.dpi}dpi {s.choices['theme']}", fill=(0, 0, 0))
    with atomic_path(path) as tmp:
        sheet.save(tmp)


def plot_distributions(samples: list[StyleSample], path: Path) -> None:
    """Histograms of the numeric factors and bar charts of the chosen modes (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(f"the distribution plot needs matplotlib: {PLOT_HINT}") from None
    numeric = {
        "dpi": [s.config.dpi for s in samples],
        "page aspect (h/w)": [s.choices["aspect"] for s in samples],
        "font_size (pt)": [s.config.font_size for s in samples],
        "line_height - font_size (pt)": [s.config.line_height - s.config.font_size for s in samples],
        "margin_x (pt)": [s.config.margin_x for s in samples],
        "margin_y (pt)": [s.config.margin_y for s in samples],
    }
    modes = ["dpi", "page", "theme", "family", "alignment", "margins", "indent", "space_after", "h_scale"]
    fig, axes = plt.subplots(3, 5, figsize=(20, 11))
    axes = axes.ravel()
    for ax, (name, vals) in zip(axes, numeric.items()):
        ax.hist(vals, bins=20, color="#4C72B0")
        ax.set_title(name)
    for ax, name in zip(axes[len(numeric):], modes):
        counts = Counter(str(s.choices[name]) for s in samples)
        keys = sorted(counts)
        ax.bar(keys, [counts[k] for k in keys], color="#DD8452")
        ax.set_title(f"{name} mode" if name in ("dpi", "page") else name)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    fig.suptitle(f"{len(samples)} sampled styles")
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


def write_report(sampler: StyleSampler, n: int, out: str | Path, text: str | None = None) -> dict:
    """Samples 0..n-1 into `out`: styles.jsonl, rejections.json, contact_sheet.png, distributions.png.

    Returns {"files": [...], "skipped": {file: why}}; the plot is skipped (with the reason) when
    matplotlib is missing, everything else is always written."""
    from ..render.textio import sample_text

    if n < 1:
        raise ValueError(f"--n: {n} must be >= 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples = sampler.samples(range(n))
    write_atomic(out / "styles.jsonl", "".join(json.dumps(s.to_dict(), ensure_ascii=False) + "\n" for s in samples))
    report = {"seed": sampler.seed, "samples": n, "draws": n + sum(sampler.rejections.values()),
              "rejections": dict(sampler.rejections), "font_pool": sampler.pool.summary()}
    write_atomic(out / "rejections.json", json.dumps(report, indent=2) + "\n")
    files, skipped = ["styles.jsonl", "rejections.json"], {}
    contact_sheet(samples, (text or sample_text())[:SAMPLE_CHARS], out / "contact_sheet.png")
    files.append("contact_sheet.png")
    try:
        plot_distributions(samples, out / "distributions.png")
        files.append("distributions.png")
    except ImportError as e:
        skipped["distributions.png"] = str(e)
    return {"files": files, "skipped": skipped, **report}
