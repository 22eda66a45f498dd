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

--cli: end to end, as a user runs it: `glyph-rt render FILE --out DIR` in a fresh process pinned to
one core (start-up, layout, raster, PNG files; with and without the text-token count), against
the official pipeline writing its pages as PNG files (Pillow's defaults) on the same core. Wall
and CPU seconds (the process and its children: pdftoppm, writer threads). Writes
render-cli.json.

--pixel-values (CPU): laid-out pages -> GLM-4.1V pixel_values per page, in one run on one core: the
C++ path of render_inputs(device="cpu") (draw + write patch rows), the previous path (draw the
pages, then normalize and patchify with torch) and Glm4vImageProcessorPil on the drawn pages (the
processor alone, drawing not counted). Writes render-pixel-values-cpu.json.

    python bench/bench_render.py [--chars 500000] [--font PATH]            # CPU
    python bench/bench_render.py --device cuda [--backend cuda|triton] [--tokens 131072]
    python bench/bench_render.py --cli [--chars 1000000] [--repeat 3]
    python bench/bench_render.py --pixel-values [--pv-chars 60000]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
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


def best_cpu_seconds(fn, repeat: int) -> float:
    """The least CPU time of this thread over `repeat` calls (time-slicing by other jobs does not count)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t)
    return best


def _cpu_seconds() -> float:
    """User + system seconds of this process and its waited-for children."""
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


def _timed(fn) -> tuple[float, float]:
    t, c = time.perf_counter(), _cpu_seconds()
    fn()
    return time.perf_counter() - t, _cpu_seconds() - c


def run_cli(args) -> None:
    """`glyph-rt render` end to end on one core against the official pipeline writing PNG files."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # children (the CLI, pdftoppm) inherit it
    text = prose(args.chars)
    exe = Path(sys.executable).with_name("glyph-rt")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "glyph_rt.cli"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "input.txt"
        src.write_text(text, encoding="utf-8")
        for label, extra in (("glyph-rt render", []), ("glyph-rt render --tokenizer none", ["--tokenizer", "none"])):
            run = [*cmd, "render", str(src), "--out", str(Path(tmp) / "out"), "--quiet", *extra]
            subprocess.run(run, check=True)  # warm-up: the atlas cache
            times = sorted(_timed(lambda: subprocess.run(run, check=True)) for _ in range(args.repeat))
            wall, cpu = times[len(times) // 2]
            s = json.loads((Path(tmp) / "out" / "summary.json").read_text())
            rows.append({"renderer": label + " (1 core, fresh process)", "pages": s["pages"], "seconds": wall,
                         "cpu_seconds": cpu, "pages_per_s": s["pages"] / wall, "pages_per_cpu_s": s["pages"] / cpu,
                         "parts": s["seconds"],
                         "command": " ".join(["glyph-rt", "render", "INPUT", "--out", "DIR", "--quiet", *extra])})
        official_pps = None
        try:
            from bench import official
        except ImportError:
            official = None
        if official is not None and official.available():
            part = text[: args.official_chars]
            cfg = {**GLYPH_CONFIG_EN, "font-path": args.font}
            out = Path(tmp) / "official"
            out.mkdir()

            def run_official():
                images, _ = official.render_official(part, cfg, args.font)
                for i, img in enumerate(images):
                    img.save(out / f"page_{i + 1:03d}.png")
                run_official.pages = len(images)

            wall, cpu = _timed(run_official)
            official_pps = run_official.pages / wall
            rows.append({"renderer": "official reportlab+pdftoppm -> PNG files (1 core)", "pages": run_official.pages,
                         "seconds": wall, "cpu_seconds": cpu, "pages_per_s": official_pps,
                         "pages_per_cpu_s": run_official.pages / cpu, "chars": len(part)})
    summary = {"cli_pages_per_s": round(rows[0]["pages_per_s"], 1),
               "cli_no_tokens_pages_per_s": round(rows[1]["pages_per_s"], 1),
               "speedup_vs_official": round(rows[0]["pages_per_s"] / official_pps, 1) if official_pps else None,
               "speedup_vs_official_no_tokens": round(rows[1]["pages_per_s"] / official_pps, 1) if official_pps else None,
               "cpu_speedup_vs_official": (round(rows[0]["pages_per_cpu_s"] / rows[-1]["pages_per_cpu_s"], 1)
                                           if official_pps else None)}
    print(f"{args.chars:,} characters, Glyph's config ({Path(args.font).name}), one core")
    print(f"{'':52s} {'pages':>6s} {'wall s':>8s} {'cpu s':>8s} {'pages/s':>8s} {'pages/cpu-s':>11s}")
    for r in rows:
        print(f"{r['renderer']:52s} {r['pages']:6d} {r['seconds']:8.3f} {r['cpu_seconds']:8.3f} "
              f"{r['pages_per_s']:8.1f} {r['pages_per_cpu_s']:11.1f}")
    p = write_result(args, "render-cli.json", "render-cli", rows, summary)
    print(f"summary {summary}\nwrote {p}")


def bench_pixel_values(args):
    """Per-page milliseconds of laid-out pages -> pixel_values on the CPU: the C++ path, the torch path, HF."""
    import numpy as np
    import torch
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    from glyph_rt.ops.pixel_values import normalize_lut, pixel_values_from_pages
    from glyph_rt.render.gpu import draw_pages, inputs_cpu

    torch.set_num_threads(1)
    cfg = RenderConfig()  # canvas snapped to multiples of 28: no resize, the model's input as drawn
    doc = glyph_rt.Document(prose(args.pv_chars), cfg)
    n = doc.num_pages
    lut = normalize_lut("cpu", torch.float32)
    items = [(doc, 0, n)]

    def old():
        (buf, sizes), = draw_pages([doc], "cpu", "cpu")
        return pixel_values_from_pages([buf[i, :h, :w] for i, (w, h) in enumerate(sizes)], "glm4v", torch.float32, lut)

    new_pv, new_grid, _ = inputs_cpu(items, "glm4v", torch.float32, lut)
    old_pv, old_grid = old()
    buf, sizes = doc.rasterize()
    pil = [glyph_rt.Pages(doc, buf, sizes).to_pil(i) for i in range(n)]
    hf = Glm4vImageProcessorPil()
    hf_pv = hf(pil, return_tensors="np")["pixel_values"]
    same = bool(torch.equal(new_pv, old_pv) and np.array_equal(new_pv.numpy(), hf_pv))
    t_draw = median_seconds(lambda: doc.rasterize(), args.repeat)
    runs = {
        "glyph_rt C++ (draw + write rows)": median_seconds(lambda: inputs_cpu(items, "glm4v", torch.float32, lut),
                                                           args.repeat),
        "glyph_rt C++ bf16": median_seconds(lambda: inputs_cpu(items, "glm4v", torch.bfloat16,
                                                               normalize_lut("cpu", torch.bfloat16)), args.repeat),
        "previous: draw, then torch gather + patchify": median_seconds(old, args.repeat),
        "Glm4vImageProcessorPil (drawn pages, no drawing)": median_seconds(
            lambda: hf(pil, return_tensors="np"), args.repeat),
    }
    rows = [{"path": k, "pages": n, "ms_per_page": 1e3 * v / n} for k, v in runs.items()]
    rows.append({"path": "drawing alone (Document.rasterize)", "pages": n, "ms_per_page": 1e3 * t_draw / n})
    ours = runs["glyph_rt C++ (draw + write rows)"]
    summary = {"pages": n, "page_px": list(sizes[0]), "bit_equal": same,
               "speedup_vs_previous": round(runs["previous: draw, then torch gather + patchify"] / ours, 2),
               "speedup_vs_hf_processor": round(runs["Glm4vImageProcessorPil (drawn pages, no drawing)"] / ours, 2)}
    print(f"{n} pages of {sizes[0][0]}x{sizes[0][1]} px -> pixel_values [{len(new_pv)}, 1176]; bit-equal: {same}")
    for r in rows:
        print(f"{r['path']:52s} {r['ms_per_page']:8.2f} ms/page")
    p = write_result(args, "render-pixel-values-cpu.json", "render-pixel-values-cpu", rows, summary)
    print(f"summary {summary}\nwrote {p}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--backend", default="cuda", help="GPU rasterizer: cuda or triton")
    ap.add_argument("--chars", type=int, default=500_000, help="CPU: characters of prose")
    ap.add_argument("--tokens", type=int, default=131072, help="GPU: the document's text tokens (Qwen's tokenizer; "
                    "the targets' 128K-token document)")
    ap.add_argument("--font", default=str(BUILTIN_FONTS["sans"]), help="font file (Glyph uses Verdana)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--official-chars", type=int, default=60_000, help="slice timed through the official pipeline")
    ap.add_argument("--batch-docs", type=int, default=16, help="GPU: documents in the throughput batch")
    ap.add_argument("--workers", type=int, default=8, help="GPU: layout threads in the throughput run")
    add_output_args(ap)
    ap.add_argument("--cli", action="store_true", help="time `glyph-rt render` end to end (see above)")
    ap.add_argument("--pixel-values", action="store_true", help="CPU pages -> pixel_values: ours vs torch vs HF")
    ap.add_argument("--pv-chars", type=int, default=60_000, help="--pixel-values: characters of prose")
    args = ap.parse_args(argv)
    if args.cli:
        return run_cli(args)
    if args.pixel_values:
        return bench_pixel_values(args)
    if args.device != "cpu":
        from bench.bench_render_gpu import run_gpu
        from bench.common import prose_of
        from glyph_rt.render.tokens import TextTokenizer

        tok = TextTokenizer()
        return run_gpu(args, tok.prefix(prose_of(tok, args.tokens), args.tokens)[1])
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    text = prose(args.chars)
    cfg = RenderConfig.from_glyph_dict({**GLYPH_CONFIG_EN, "font-path": args.font})
    pages = glyph_rt.render(text, cfg)  # warm-up: builds and caches the atlas
    n_pages = len(pages)
    rows = []

    t_ours = median_seconds(lambda: glyph_rt.render(text, cfg), args.repeat)
    cpu_ours = best_cpu_seconds(lambda: glyph_rt.render(text, cfg), args.repeat)
    doc = glyph_rt.Document(text, cfg)
    t_layout = median_seconds(lambda: glyph_rt.Document(text, cfg), args.repeat)
    ours_pps = n_pages / t_ours
    rows.append({"renderer": "glyph_rt cpu (1 core)", "pages": n_pages, "seconds": t_ours, "pages_per_s": ours_pps,
                 "layout_seconds": t_layout, "best_cpu_seconds": cpu_ours, "pages_per_cpu_s": n_pages / cpu_ours})

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
        "cpu_pages_per_cpu_s": round(n_pages / cpu_ours, 1),  # CPU time of the thread: steadier on a shared machine
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
