"""Fidelity of glyph_rt against Glyph's own pipeline (reportlab -> PDF -> pdftoppm).

Renders long prose (English by default, any --text) with Glyph's English config (GLYPH_CONFIG_EN) and the
same font file through both, and compares: page count, page pixel sizes, line breaks (the words of every line;
the characters of every line, spaces left out, for a text Glyph wraps the CJK way), visual tokens (GLM-4.1V),
and, for information, the mean absolute pixel difference of page 1.

    python bench/fidelity.py                      # DejaVu Sans, 150K chars
    python bench/fidelity.py --font path/to/Verdana.ttf --chars 150000 --out DIR
    python bench/fidelity.py --styles 40 --chars 6000   # random styles of the paper's space
    python bench/fidelity.py --font /usr/share/fonts/truetype/wqy/wqy-microhei.ttc --text zh.txt --chars 50000

A font collection (.ttc) is read at its first face, as Glyph's reportlab TTFont reads it (reportlab reads
TrueType outlines only: Noto Sans CJK's CFF collection is refused, WenQuanYi Micro Hei is read).
Writes fidelity-<font>.json (fidelity-dejavu.json for the default font; fidelity-<font>-<text>.json with --text),
or fidelity-styles.json, to --out DIR (default bench/out/); --results also writes it to bench/results/.

Targets: same page sizes, same page count, >= 98% identical lines, visual tokens within 2%.
"""
from __future__ import annotations

import argparse
import difflib
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import glyph_rt  # noqa: E402
from glyph_rt.render.config import GLYPH_CONFIG_EN  # noqa: E402

from bench import official  # noqa: E402
from bench.common import add_output_args, slug, write_json  # noqa: E402

DEFAULT_FONT = ROOT / "glyph_rt" / "fonts" / "DejaVuSans.ttf"
SAMPLE = ROOT / "glyph_rt" / "data" / "sample.txt"
TARGETS = {"identical_lines_pct": 98.0, "visual_tokens_rel_diff_pct": 2.0}


def sample_text(chars: int, path: str | Path = SAMPLE) -> str:
    """A text file (glyph_rt/data/sample.txt by default) repeated until it reaches `chars` characters (cut there)."""
    base = Path(path).read_text(encoding="utf-8")
    if not base.endswith("\n"):
        base += "\n"
    reps = chars // len(base) + 1
    return (base * reps)[:chars]


def words_of(line: str, cjk: bool = False) -> tuple[str, ...]:
    """A line as its words: split on whitespace, no-break spaces included. With `cjk` (reportlab's CJK wrap), its
    characters but the spaces, as one word: the continuation of a paragraph split across pages is wrapped again
    with a space added at each line end (Paragraph.split), which reportlab's lines then hold where the text has
    none (the pixels compare where they are drawn)."""
    words = tuple(line.replace("\xa0", " ").split())
    return ("".join(words),) if cjk and words else words


def keyed_lines(lines: list[tuple[str, ...]]) -> list[tuple[int, tuple[str, ...]]]:
    """Each line as (offset of its first non-space character in the text, its words).

    Both renderers consume the same stream of non-space characters, so the offset pins a line to
    its place in the text; the sample text repeats, and without it an alignment can pair a line
    with its twin from another repetition."""
    out, pos = [], 0
    for w in lines:
        out.append((pos, w))
        pos += sum(len(x) for x in w)
    return out


def compare_lines(ref: list[tuple[str, ...]], ours: list[tuple[str, ...]]) -> dict:
    """Share of the official lines that glyph_rt reproduces exactly (same words, same place)."""
    kr, ko = keyed_lines(ref), keyed_lines(ours)
    same_stream = (sum(len(x) for w in ref for x in w) == sum(len(x) for w in ours for x in w))
    sm = difflib.SequenceMatcher(None, kr, ko, autojunk=False)
    opcodes = sm.get_opcodes()
    matched = sum(i2 - i1 for tag, i1, i2, _, _ in opcodes if tag == "equal")
    diffs = []
    for tag, i1, i2, j1, j2 in opcodes:
        if tag != "equal":
            diffs.append({"tag": tag, "ref_index": i1, "ours_index": j1,
                          "ref": [" ".join(x) for x in ref[i1:min(i2, i1 + 3)]],
                          "ours": [" ".join(x) for x in ours[j1:min(j2, j1 + 3)]]})
    # position-wise equality, too (a single early shift would make every later line differ)
    positional = sum(1 for a, b in zip(ref, ours) if a == b)
    return {"matched": matched, "identical_lines_pct": 100.0 * matched / max(1, len(ref)),
            "positional_identical_pct": 100.0 * positional / max(1, len(ref)),
            "same_character_stream": same_stream, "first_difference": diffs[0] if diffs else None,
            "differences": diffs, "opcodes": opcodes}


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> tuple[float, tuple[int, int]]:
    """Mean |a - b| over the common top-left region of two [H, W, 3] uint8 images."""
    h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    d = np.abs(a[:h, :w].astype(np.int16) - b[:h, :w].astype(np.int16))
    return float(d.mean()), (w, h)


def run(font: str, chars: int, text: str | None = None, verbose: bool = True, over: dict | None = None) -> dict:
    """Both pipelines on `text` (default: the sample text, `chars` long) with GLYPH_CONFIG_EN, `font` and `over`."""
    text = text if text is not None else sample_text(chars)
    gcfg = {**GLYPH_CONFIG_EN, "font-path": str(font), **(over or {})}

    t0 = time.perf_counter()
    ref = official.render_official_full(text, gcfg, str(font))
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    cfg = glyph_rt.RenderConfig.from_glyph_dict(gcfg)
    pages = glyph_rt.render(text, cfg)
    t_ours = time.perf_counter() - t0

    ref_sizes = [tuple(im.size) for im in ref.images]
    our_sizes = [tuple(s) for s in pages.sizes]
    cjk = bool(official._CJK.search(text))  # Glyph's CJK wrap
    ref_lines = [words_of(ln.text, cjk) for ln in ref.lines]
    spans = pages.document.line_spans()
    our_lines = [words_of(text[s:e], cjk) for (_, s, e) in spans]
    cmp = compare_lines(ref_lines, our_lines)

    # lines on the same page: of the matched lines, how many landed on the same page index
    same_page = 0
    for tag, i1, i2, j1, j2 in cmp["opcodes"]:
        if tag == "equal":
            same_page += sum(1 for k in range(i2 - i1) if ref.lines[i1 + k].page == spans[j1 + k][0])

    vt_ref = sum(glyph_rt.visual_tokens(ref_sizes, "glm4v"))
    vt_ours = sum(glyph_rt.visual_tokens(our_sizes, "glm4v"))
    vt_rel = 100.0 * (vt_ours - vt_ref) / max(1, vt_ref)

    mad, region = (None, None)
    if ref.images and len(pages):
        mad, region = mean_abs_diff(np.asarray(ref.images[0].convert("RGB")), pages[0].numpy())
    # every page of equal size, pixel for pixel
    identical, compared, differing_px = 0, 0, 0
    for i, im in enumerate(ref.images[:len(pages)]):
        if tuple(im.size) != our_sizes[i]:
            continue
        compared += 1
        d = int(np.count_nonzero((np.asarray(im.convert("RGB")) != pages[i].numpy()).any(-1)))
        identical += d == 0
        differing_px += d

    # baselines: reportlab's vs glyph_rt's for the first lines of page 1 (points from the top); glyph_rt's are as
    # drawn, on the pixel row poppler puts them (floor of the device y), so they differ by under one pixel (72 / dpi pt)
    lay = pages.document.layout
    baselines = {"official": [round(ln.baseline, 3) for ln in ref.lines[:3]],
                 "glyph_rt": [round(float(y), 3) for y in lay.l_y[:3]]}

    res = {  # the font by its file name: results files hold no path of the machine that made them
        "font": Path(font).name,
        "characters": len(text),
        "cjk_wrap": cjk,
        "config": {**gcfg, "font-path": Path(font).name},
        "pages": {"official": len(ref_sizes), "glyph_rt": len(our_sizes), "equal": len(ref_sizes) == len(our_sizes)},
        "page_sizes": {"official": [list(s) for s in ref_sizes], "glyph_rt": [list(s) for s in our_sizes],
                       "equal": ref_sizes == our_sizes,
                       "pages_differing": [i for i, (a, b) in enumerate(zip(ref_sizes, our_sizes)) if a != b]},
        "pdftoppm_raw_sizes": sorted({tuple(s) for s in ref.raw_sizes}),
        "glyph_rt_page_pixels": list(cfg.page_pixels),
        "lines": {"official": len(ref_lines), "glyph_rt": len(our_lines), "matched": cmp["matched"],
                  "identical_lines_pct": round(cmp["identical_lines_pct"], 3),
                  "positional_identical_pct": round(cmp["positional_identical_pct"], 3),
                  "matched_on_same_page": same_page,
                  "same_character_stream": cmp["same_character_stream"],
                  "first_difference": cmp["first_difference"],
                  "differences": cmp["differences"][:50], "num_differences": len(cmp["differences"])},
        "visual_tokens_glm4v": {"official": vt_ref, "glyph_rt": vt_ours, "rel_diff_pct": round(vt_rel, 4)},
        "pixels": {"pages_compared": compared, "pages_identical": identical, "differing_pixels": differing_px},
        "page1_mean_abs_pixel_diff": None if mad is None else round(mad, 4),
        "page1_compared_region": region,
        "first_baselines_pt": baselines,
        "seconds": {"official": round(t_ref, 3), "glyph_rt": round(t_ours, 3)},
    }
    res["targets"] = {
        "same_page_sizes": res["page_sizes"]["equal"],
        "same_page_count": res["pages"]["equal"],
        "identical_lines_ge_98pct": res["lines"]["identical_lines_pct"] >= TARGETS["identical_lines_pct"],
        "visual_tokens_within_2pct": abs(vt_rel) <= TARGETS["visual_tokens_rel_diff_pct"],
    }
    res["all_targets_met"] = all(res["targets"].values())
    if verbose:
        print_report(res)
    return res


def _fmt_sizes(sizes: list) -> str:
    """Compact list of sizes: runs of equal sizes as 'WxH*n'."""
    out, prev, n = [], None, 0
    for s in sizes:
        s = tuple(s)
        if s == prev:
            n += 1
            continue
        if prev is not None:
            out.append(f"{prev[0]}x{prev[1]}" + (f"*{n}" if n > 1 else ""))
        prev, n = s, 1
    if prev is not None:
        out.append(f"{prev[0]}x{prev[1]}" + (f"*{n}" if n > 1 else ""))
    return ", ".join(out)


def print_report(r: dict) -> None:
    ok = lambda b: "OK  " if b else "MISS"  # noqa: E731
    t = r["targets"]
    print(f"font: {r['font']}   characters: {r['characters']}")
    print(f"{'metric':34s} {'official':>14s} {'glyph_rt':>14s}  target")
    print("-" * 78)
    print(f"{'pages':34s} {r['pages']['official']:>14} {r['pages']['glyph_rt']:>14}  {ok(t['same_page_count'])} equal")
    print(f"{'lines':34s} {r['lines']['official']:>14} {r['lines']['glyph_rt']:>14}")
    print(f"{'identical lines (aligned) %':34s} {'':>14} {r['lines']['identical_lines_pct']:>14.3f}  "
          f"{ok(t['identical_lines_ge_98pct'])} >= 98")
    print(f"{'identical lines (positional) %':34s} {'':>14} {r['lines']['positional_identical_pct']:>14.3f}")
    print(f"{'matched lines on the same page':34s} {'':>14} {r['lines']['matched_on_same_page']:>14}")
    v = r["visual_tokens_glm4v"]
    print(f"{'visual tokens (glm4v)':34s} {v['official']:>14} {v['glyph_rt']:>14}  "
          f"{ok(t['visual_tokens_within_2pct'])} {v['rel_diff_pct']:+.3f}% (|d| <= 2%)")
    print(f"{'page sizes equal':34s} {'':>14} {str(r['page_sizes']['equal']):>14}  {ok(t['same_page_sizes'])}")
    print(f"{'page 1 mean |pixel diff|':34s} {'':>14} {str(r['page1_mean_abs_pixel_diff']):>14}  (info)")
    px = r["pixels"]
    print(f"{'pages identical pixel for pixel':34s} {'':>14} {px['pages_identical']:>8} / {px['pages_compared']:<4} "
          f"(info: {px['differing_pixels']} pixels differ)")
    print(f"{'first baselines (pt from top)':34s} {str(r['first_baselines_pt']['official']):>14} "
          f"{str(r['first_baselines_pt']['glyph_rt']):>14}")
    print(f"{'seconds':34s} {r['seconds']['official']:>14} {r['seconds']['glyph_rt']:>14}")
    print(f"page sizes, official: {_fmt_sizes(r['page_sizes']['official'])}")
    print(f"page sizes, glyph_rt: {_fmt_sizes(r['page_sizes']['glyph_rt'])}")
    if r["page_sizes"]["pages_differing"]:
        print(f"pages whose sizes differ: {r['page_sizes']['pages_differing'][:20]}")
    fd = r["lines"]["first_difference"]
    if fd:
        print(f"line differences: {r['lines']['num_differences']} (official line indices: "
              f"{[d['ref_index'] for d in r['lines']['differences'][:12]]})")
        print(f"first line difference ({fd['tag']}) at official line {fd['ref_index']} / glyph_rt line {fd['ours_index']}:")
        for s in fd["ref"]:
            print(f"  official: {s!r}")
        for s in fd["ours"]:
            print(f"  glyph_rt: {s!r}")
    print("all targets met" if r["all_targets_met"] else "TARGETS MISSED: " + ", ".join(k for k, v in t.items() if not v))


def run_styles(n: int, chars: int, seed: int = 1, verbose: bool = True) -> dict:
    """The first `n` styles of `sample_styles(seed)`, each through both pipelines as a Glyph config: page sizes and
    pixels of every page."""
    from glyph_rt.train.styles import sample_styles

    text = sample_text(chars)
    rows = []
    for i, c in enumerate(sample_styles(20 * n, seed=seed)):
        if len(rows) >= n:
            break
        g = c.to_glyph_dict()
        ref = official.render_official_full(text, g, g["font-path"])
        ours = glyph_rt.Document(text, glyph_rt.RenderConfig.from_glyph_dict(g))
        buf, sizes = ours.rasterize()
        same_sizes = [tuple(im.size) for im in ref.images] == [tuple(s) for s in sizes]
        px = sum(int(np.count_nonzero((np.asarray(im.convert("RGB")) != buf[j, :h, :w]).any(-1)))
                 for j, (im, (w, h)) in enumerate(zip(ref.images, sizes))) if same_sizes else None
        row = {"style": i, "font": Path(g["font-path"]).name, "dpi": g["dpi"], "font_size": g["font-size"],
               "horizontal_scale": g["horizontal-scale"],
               "alignment": g["alignment"], "border_width": g["border-width"], "pages": len(sizes),
               "same_page_sizes": same_sizes, "differing_pixels": px}
        rows.append(row)
        if verbose:
            print(f"style {i:3d} {row['font']:28s} {g['dpi']:>4} dpi {g['font-size']:>5} pt x{g['horizontal-scale']:<4} "
                  f"{g['alignment']:8s} "
                  f"pages {len(sizes):2d} sizes {'equal' if same_sizes else 'DIFFER'} pixels differing {px}")
    identical = sum(r["same_page_sizes"] and r["differing_pixels"] == 0 for r in rows)
    if verbose:
        print(f"{identical} of {len(rows)} styles: every page identical pixel for pixel")
    return {"characters": chars, "seed": seed, "styles": rows, "identical": identical}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--font", default=str(DEFAULT_FONT), help="TTF file used by both renderers")
    ap.add_argument("--chars", type=int, default=150000, help="text length (the text repeated, cut there)")
    ap.add_argument("--text", metavar="FILE", help="UTF-8 text to render (default: glyph_rt/data/sample.txt)")
    ap.add_argument("--styles", type=int, default=0, metavar="N",
                    help="compare N random styles of the paper's space (train.styles) instead")
    ap.add_argument("--seed", type=int, default=1, help="the styles' seed")
    add_output_args(ap)
    args = ap.parse_args(argv)
    if not official.available():
        print(f"the official pipeline cannot run here: {official.unavailable_reason()}", file=sys.stderr)
        return 2
    if args.styles:
        print(f"wrote {write_json(args, 'fidelity-styles.json', run_styles(args.styles, args.chars, args.seed))}")
        return 0
    text = sample_text(args.chars, args.text) if args.text else None
    res = run(args.font, args.chars, text=text)
    name = "dejavu" if Path(args.font) == DEFAULT_FONT else slug(Path(args.font).stem)
    if args.text:
        name += "-" + slug(Path(args.text).stem)
    print(f"wrote {write_json(args, f'fidelity-{name}.json', res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
