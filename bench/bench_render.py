"""Rendering throughput at Glyph's English config over ~500K characters of prose (a 128K-token context).

--device cpu (default): in the same run and on one core, glyph_rt's C++ path, a Pillow
ImageDraw renderer (same layout, lines drawn by Pillow/FreeType) and, when reportlab +
pdf2image + poppler are installed, Glyph's official reportlab -> PDF -> pdftoppm pipeline
(timed on a slice, per page). Writes render-cpu.json.

--device cuda: text -> GLM-4.1V pixel_values on the GPU (canvas snapped to multiples of 28,
so the kernel writes the model input directly): GPU milliseconds (CUDA events), wall
milliseconds including layout, batch pages/s, achieved GB/s against the device's peak,
and ratios against the CPU path and the official pipeline measured in the same run.
Writes render-gpu-<gpu>.json.

Results go to --out DIR (default bench/out/); --results also writes them to bench/results/.

    python bench/bench_render.py [--device cpu|cuda] [--backend cuda|triton] [--chars 500000] [--font PATH]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import glyph_rt  # noqa: E402
from bench.common import add_output_args, median_seconds, write_result  # noqa: E402
from glyph_rt.render.config import GLYPH_CONFIG_EN, RenderConfig, parse_color  # noqa: E402
from glyph_rt.render.fonts import BUILTIN_FONTS  # noqa: E402
from glyph_rt.render.textio import sample_text  # noqa: E402


def prose(chars: int) -> str:
    s = sample_text()
    return (s * (chars // len(s) + 1))[:chars]


def pillow_render(doc: glyph_rt.Document):
    """Baseline: the same layout drawn line by line with Pillow's ImageDraw (FreeType)."""
    from PIL import Image, ImageDraw, ImageFont

    c = doc.config
    scale = c.dpi / 72
    font = ImageFont.truetype(doc.atlas.fonts[0], size=max(1, round(c.font_size * scale)))
    W, H = c.page_pixels
    bg, fg = parse_color(c.page_bg_color), parse_color(c.font_color)
    pages = [Image.new("RGB", (W, H), bg) for _ in range(doc.num_pages)]
    draws = [ImageDraw.Draw(p) for p in pages]
    lay, text = doc.layout, doc.text
    for page, x, y, s, e in zip(lay.l_page.tolist(), lay.l_x.tolist(), lay.l_y.tolist(),
                                lay.l_src_start.tolist(), lay.l_src_end.tolist()):
        draws[page].text((x * scale, y * scale), text[s:e], font=font, fill=fg, anchor="ls")
    return pages


def official_pages_per_s(text: str, font: str) -> float | None:
    """Glyph's official pipeline on `text` (a slice), pages per second on one core; None when not installed."""
    try:
        from bench import official
    except ImportError:
        return None
    if not official.available():
        return None
    t = time.perf_counter()
    images, _ = official.render_official(text, {**GLYPH_CONFIG_EN, "font-path": font}, font)
    return len(images) / (time.perf_counter() - t)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--backend", default="cuda", help="GPU rasterizer: cuda or triton")
    ap.add_argument("--chars", type=int, default=500_000)
    ap.add_argument("--font", default=str(BUILTIN_FONTS["sans"]), help="font file (Glyph uses Verdana)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--official-chars", type=int, default=60_000, help="slice timed through the official pipeline")
    ap.add_argument("--batch-docs", type=int, default=16, help="GPU: documents in the throughput batch")
    ap.add_argument("--workers", type=int, default=8, help="GPU: layout threads in the throughput run")
    add_output_args(ap)
    args = ap.parse_args(argv)
    if args.device != "cpu":
        from bench.bench_render_gpu import run_gpu

        return run_gpu(args, prose(args.chars))
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    text = prose(args.chars)
    cfg = RenderConfig.from_glyph_dict({**GLYPH_CONFIG_EN, "font-path": args.font})
    pages = glyph_rt.render(text, cfg)  # warm-up: builds and caches the atlas
    n_pages = len(pages)
    rows = []

    t_ours = median_seconds(lambda: glyph_rt.render(text, cfg), args.repeat)
    doc = glyph_rt.Document(text, cfg)
    t_layout = median_seconds(lambda: glyph_rt.Document(text, cfg), args.repeat)
    ours_pps = n_pages / t_ours
    rows.append({"renderer": "glyph_rt cpu (1 core)", "pages": n_pages, "seconds": t_ours, "pages_per_s": ours_pps,
                 "layout_seconds": t_layout})

    t_pil = median_seconds(lambda: pillow_render(doc), max(1, args.repeat // 2))
    pil_pps = n_pages / (t_pil + t_layout)
    rows.append({"renderer": "Pillow ImageDraw (same layout)", "pages": n_pages, "seconds": t_pil + t_layout,
                 "pages_per_s": pil_pps})

    official_pps = official_pages_per_s(text[: args.official_chars], args.font)
    if official_pps:
        rows.append({"renderer": "official reportlab+pdftoppm (1 core)", "pages": n_pages,
                     "seconds": n_pages / official_pps, "pages_per_s": official_pps,
                     "chars": args.official_chars, "note": "timed on the slice, per page"})

    summary = {
        "cpu_pages_per_s": round(ours_pps, 1),
        "speedup_vs_pillow": round(ours_pps / pil_pps, 2),
        "speedup_vs_official": round(ours_pps / official_pps, 1) if official_pps else None,
    }
    print(f"{args.chars:,} characters at Glyph's config ({Path(args.font).name}) -> {n_pages} pages")
    print(f"{'renderer':42s} {'pages':>6s} {'seconds':>9s} {'pages/s':>9s} {'vs ours':>8s}")
    for r in rows:
        print(f"{r['renderer']:42s} {r['pages']:6d} {r['seconds']:9.3f} {r['pages_per_s']:9.1f} "
              f"{ours_pps / r['pages_per_s']:7.1f}x")
    p = write_result(args, "render-cpu.json", "render-cpu", rows, summary)
    print(f"summary {summary}\nwrote {p}")


if __name__ == "__main__":
    main()
