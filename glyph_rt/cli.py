"""glyph-rt: the command line.

    glyph-rt render [INPUT|-] [--config CFG | --preset NAME] [--out DIR] [--device cpu|cuda]
    glyph-rt stats  [INPUT|-] [--config CFG | --preset NAME]
    glyph-rt generate --model DIR --context FILE --question TEXT [--config CFG | --preset NAME]
    glyph-rt styles --n 64 --seed 0 --out DIR [--config styles.yaml]
    glyph-rt backends
    glyph-rt make-tiny-checkpoint DIR [--model glm4v|qwen2_5_vl]
    glyph-rt --version

Without INPUT the built-in sample text is used.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PROGRESS_MIN_PAGES = 16


def _config(args):
    from .render.config import RenderConfig

    if args.config and args.preset:
        raise ValueError("give --config or --preset, not both")
    if args.config:
        return RenderConfig.load(args.config)
    if args.preset:
        return RenderConfig.preset(args.preset)
    return RenderConfig()


def _text(args) -> tuple[str, int, str]:
    from .render.textio import read_text, sample_text

    if args.input is None:
        return sample_text(), 0, "built-in sample"
    text, replaced = read_text(args.input, args.errors)
    return text, replaced, "stdin" if args.input == "-" else args.input


def _document(args):
    from .render.pages import Document

    if args.device != "cpu":
        from .render.gpu import resolve_device_backend

        resolve_device_backend(args.device, args.backend)  # fail before any work
    text, replaced, name = _text(args)
    # on a GPU device --backend picks the rasterizer; layout is always the C++ engine
    backend = args.backend if args.device == "cpu" else "auto"
    doc = Document(text, _config(args), backend=backend, max_pages=args.max_pages)
    return doc, replaced, name


def _chunks(doc, args, chunk: int, progress: bool):
    return doc.iter_chunks(chunk, progress=progress, device=args.device, backend=args.backend)


def cmd_render(args) -> int:
    t0 = time.perf_counter()
    doc, replaced, name = _document(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("page_*.png"):
        old.unlink()
    sizes, t_write = [], 0.0
    from PIL import Image

    progress = not args.quiet and doc.num_pages >= PROGRESS_MIN_PAGES
    for start, buf, chunk_sizes in _chunks(doc, args, 32, progress):
        t = time.perf_counter()
        for i, (w, h) in enumerate(chunk_sizes):
            Image.fromarray(buf[i, :h, :w]).save(out / f"page_{start + i + 1:03d}.png", compress_level=1)
        t_write += time.perf_counter() - t
        sizes.extend(chunk_sizes)
    summary = doc.summary(sizes, tokenizer=args.tokenizer)
    summary["input"] = name
    summary["replaced_invalid_utf8"] = replaced
    summary["seconds"]["write_png"] = round(t_write, 6)
    summary["seconds"]["total"] = round(time.perf_counter() - t0, 6)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if not args.quiet:
        print(human_summary(summary, out))
    return 0


def human_summary(s: dict, out: Path | None = None) -> str:
    vt = s["visual_tokens"]
    lines = []
    sizes = sorted({tuple(x) for x in s["page_sizes"]})
    size_txt = ", ".join(f"{w}x{h}" for w, h in sizes[:3]) + (" ..." if len(sizes) > 3 else "")
    lines.append(f"{s['input']}: {s['characters']:,} characters -> {s['pages']} pages ({size_txt} px) "
                 f"in {s['seconds']['layout'] + s['seconds']['raster']:.3f} s")
    if s["text_tokens"] is not None:
        ratio = s["compression_ratio"]
        lines.append(f"text tokens {s['text_tokens']:,} ({s['tokenizer']}) -> visual tokens "
                     + ", ".join(f"{vt[m]:,} {m} ({ratio[m] or 0:.2f}x)" for m in vt))
    else:
        lines.append("visual tokens " + ", ".join(f"{vt[m]:,} {m}" for m in vt))
    miss = s["missing_glyphs"]
    if miss["count"]:
        shown = " ".join(f"U+{ord(c):04X}x{n}" for c, n in list(miss["chars"].items())[:8])
        lines.append(f"missing glyphs: {miss['count']} drawn as boxes ({shown})")
        for script, hint in miss.get("install", {}).items():
            lines.append(f"  {script}: {hint}")
    if s.get("stripped_chars"):
        lines.append(f"removed {s['stripped_chars']} soft hyphens / zero-width spaces (as Glyph does)")
    if s.get("replaced_invalid_utf8"):
        lines.append(f"replaced {s['replaced_invalid_utf8']} invalid UTF-8 sequences with U+FFFD")
    if s.get("truncated"):
        lines.append(f"stopped at --max-pages {s['pages']}: the rest of the text was not rendered")
    if out is not None:
        lines.append(f"wrote {out}/page_001.png .. page_{s['pages']:03d}.png and {out}/summary.json")
    return "\n".join(lines)


def cmd_stats(args) -> int:
    from .render.tokens import get_tokenizer, visual_tokens

    doc, _, _ = _document(args)
    sizes = []
    for _, _, chunk_sizes in _chunks(doc, args, 64, False):
        sizes.extend(chunk_sizes)
    text_tokens = get_tokenizer(None if args.tokenizer == "default" else args.tokenizer).count(doc.text)
    visual = sum(visual_tokens(sizes, args.model))
    print(f"{text_tokens / visual:.3f}" if visual else "inf")
    return 0


def cmd_generate(args) -> int:
    from .models import GlyphModel
    from .render.textio import read_text

    context, _ = read_text(args.context, args.errors)
    model = GlyphModel.from_pretrained(args.model, render_config=_config(args), kernels=args.kernels,
                                       device=args.device)
    a = model.generate(context, args.question, max_new_tokens=args.max_new_tokens)[0]
    t = a.timings
    print(a.text.strip())
    print(f"[{a.pages} pages, {a.visual_tokens:,} visual tokens for a context of {a.text_tokens:,} text tokens "
          f"({a.compression:.2f}x); render {t['render']:.3f} s, vision {t['vision']:.3f} s, "
          f"prefill {t['prefill']:.3f} s, decode {t['decode']:.3f} s for {len(a.token_ids)} tokens]", file=sys.stderr)
    return 0


def cmd_styles(args) -> int:
    from .train.style_report import write_report
    from .train.styles import StyleSampler

    sampler = StyleSampler.from_file(args.config, seed=args.seed) if args.config else StyleSampler(seed=args.seed)
    r = write_report(sampler, args.n, args.out)
    rejected = ", ".join(f"{k} {v}" for k, v in r["rejections"].items() if v) or "none"
    print(f"{r['samples']} styles from {r['draws']} draws (rejected: {rejected}); {r['font_pool']}")
    print(f"wrote {', '.join(f'{args.out}/{f}' for f in r['files'])}")
    for f, why in r["skipped"].items():
        print(f"skipped {f}: {why}", file=sys.stderr)
    return 0


def cmd_backends(args) -> int:
    from ._ext import backends

    for name, info in backends().items():
        print(f"{name:10s} {'yes' if info['available'] else 'no ':3s}  {info['why']}")
    return 0


def cmd_make_tiny_checkpoint(args) -> int:
    from .models.tiny import make_tiny_checkpoint

    out = make_tiny_checkpoint(args.dir, args.model)
    print(f"wrote a tiny random-weight {args.model} checkpoint to {out} (for dry runs: its answers are noise); "
          f"try: glyph-rt generate --model {out} --context FILE --question TEXT --max-new-tokens 8")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="glyph-rt", description="glyph_rt: render text into pages for VLMs")
    p.add_argument("--version", action="version", version=f"glyph-rt {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("input", nargs="?", default=None, help="text file, '-' for stdin (default: built-in sample)")
        sp.add_argument("--config", help="RenderConfig JSON (glyph_rt's format or Glyph's dashed keys)")
        sp.add_argument("--preset", help="glyph, document_style, web_style, dark_mode, code_style, artistic_pixel")
        sp.add_argument("--device", default="cpu", help="where pages are drawn: cpu, cuda or cuda:N")
        sp.add_argument("--backend", default="auto",
                        help="on cpu: auto, cpu or reference; on cuda: auto, cuda, triton or cpu")
        sp.add_argument("--tokenizer", default="default", help="tokenizer.json or HF tokenizer dir (default: Qwen)")
        sp.add_argument("--errors", default="strict", choices=["strict", "replace"], help="invalid UTF-8 handling")
        sp.add_argument("--max-pages", type=int, default=None, help="stop after this many pages")

    r = sub.add_parser("render", help="render text to PNG pages and a JSON summary")
    common(r)
    r.add_argument("--out", default="glyph_pages", help="output directory (default: glyph_pages)")
    r.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    r.set_defaults(func=cmd_render)
    s = sub.add_parser("stats", help="print the compression ratio (text tokens / visual tokens)")
    common(s)
    s.add_argument("--model", default="glm4v", choices=["glm4v", "qwen2_5_vl"])
    s.set_defaults(func=cmd_stats)
    g = sub.add_parser("generate", help="answer a question about a long text read as pages by a Glyph checkpoint")
    g.add_argument("--model", required=True, help="local checkpoint directory (GLM-4.1V / Qwen2.5-VL)")
    g.add_argument("--context", required=True, help="text file to read as pages, '-' for stdin")
    g.add_argument("--question", required=True, help="the question, kept as text")
    g.add_argument("--config", help="RenderConfig JSON (glyph_rt's format or Glyph's dashed keys)")
    g.add_argument("--preset", help="a RenderConfig preset")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--kernels", default="auto", choices=["auto", "off"], help="glyph_rt kernels or stock HF")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--errors", default="strict", choices=["strict", "replace"], help="invalid UTF-8 handling")
    g.set_defaults(func=cmd_generate)
    st = sub.add_parser("styles", help="sample rendering styles: contact sheet, distribution plot, configs")
    st.add_argument("--n", type=int, default=64, help="number of styles (default: 64)")
    st.add_argument("--seed", type=int, default=0, help="sampler seed (default: 0)")
    st.add_argument("--out", default="glyph_styles", help="output directory (default: glyph_styles)")
    st.add_argument("--config", help="styles YAML (default: the built-in glyph_rt/data/styles.yaml)")
    st.set_defaults(func=cmd_styles)
    b = sub.add_parser("backends", help="list the available backends")
    b.set_defaults(func=cmd_backends)
    t = sub.add_parser("make-tiny-checkpoint", help="write a tiny random-weight checkpoint for offline dry runs")
    t.add_argument("dir", help="new or empty directory to write it to")
    t.add_argument("--model", default="glm4v", choices=["glm4v", "qwen2_5_vl"], help="model type (default: glm4v)")
    t.set_defaults(func=cmd_make_tiny_checkpoint)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, MemoryError, RuntimeError) as e:
        print(f"glyph-rt: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
