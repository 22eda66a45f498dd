"""Generating and rendering a RULER suite: the evaluation's own cost, before any model runs.

    python bench/bench_eval.py [--length 128k] [--n 10] [--squad FILE] [--core 0] [--out DIR] [--results]

Generates RULER's tasks at `--length` tokens (counted with Qwen's tokenizer), `--n` items each (UUID tasks
included, so 11 synthetic tasks, plus qa_1 from a SQuAD file: --squad, else one built from the bundled sample
text, a stand-in of the same size and cost), then renders every item's context into pages at Glyph's config on
one CPU core (glyph_rt's C++ renderer). Target: <= 60 s for 12 tasks x 10 items at 128K tokens. Baseline,
measured in the same run: counting each item's tokens once with the same tokenizer (the least work a RULER-style
generator, which fits lengths by re-tokenizing whole contexts, must do per item; RULER's own search does it
several times). Writes eval-ruler-<length>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import add_output_args, write_result  # noqa: E402


def sample_squad(path: Path) -> Path:
    """A SQuAD-format file from the bundled sample text, repeated with numbered sections (each paragraph a
    document, a question on its opening)."""
    from glyph_rt.render.textio import sample_text

    paras = [p.strip() for p in sample_text().splitlines() if len(p.split()) > 12]
    paras = [f"Section {k}.{i}: {p}" for k in range(16) for i, p in enumerate(paras)]  # ~200K tokens of documents
    data = [{"context": p, "qas": [{"id": str(i), "question": f"Which paragraph starts with '{' '.join(p.split()[:6])}'?",
                                    "answers": [{"text": " ".join(p.split()[6:9])}]}]} for i, p in enumerate(paras)]
    path.write_text(json.dumps({"data": [{"title": "sample", "paragraphs": data}]}), encoding="utf-8")
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", default="128k", help="context length in tokens (default: 128k)")
    ap.add_argument("--n", type=int, default=10, help="items per task (default: 10)")
    ap.add_argument("--squad", help="a SQuAD JSON file for qa_1 (default: one built from the sample text)")
    ap.add_argument("--core", type=int, default=0, help="the CPU core to pin to (default: 0; -1: no pinning)")
    add_output_args(ap)
    args = ap.parse_args(argv)
    if args.core >= 0:
        import torch

        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {args.core})
        torch.set_num_threads(1)
    from glyph_rt import RenderConfig
    from glyph_rt.eval.benchmarks import ruler
    from glyph_rt.render.pages import render
    from glyph_rt.render.tokens import get_tokenizer

    length = ruler.parse_length(args.length)
    tok = get_tokenizer(None)  # loaded before timing, as a run loads it once
    render("warm-up", RenderConfig())  # builds the glyph atlas once
    with tempfile.TemporaryDirectory() as tmp:
        squad = args.squad or sample_squad(Path(tmp) / "squad.json")
        tasks = ruler.default_tasks(uuid=True) + ["qa_1"]
        t0 = time.perf_counter()
        items = ruler.generate(tasks, [length], n=args.n, uuid=True, squad=squad)
        t_gen = time.perf_counter() - t0
    cfg = RenderConfig()
    pages, rows = 0, []
    t0 = time.perf_counter()
    for it in items:
        t = time.perf_counter()
        p = render(it.context, cfg)
        rows.append({"id": it.id, "pages": len(p), "seconds": round(time.perf_counter() - t, 4)})
        pages += len(p)
    t_render = time.perf_counter() - t0
    t0 = time.perf_counter()
    counts = [tok.count(it.text_prompt) for it in items]
    t_count = time.perf_counter() - t0
    total = t_gen + t_render
    chars = sum(len(it.context) for it in items)
    summary = {
        "tasks": len(tasks), "items": len(items), "length": length, "pages": pages,
        "generate_s": round(t_gen, 2), "render_s": round(t_render, 2), "total_s": round(total, 2),
        "target_s": 60, "pages_per_s": round(pages / t_render, 1), "items_per_s": round(len(items) / total, 2),
        "mean_tokens": round(sum(counts) / len(counts)), "count_once_s": round(t_count, 2),
        "generate_vs_count_once": round(t_count / t_gen, 2),
    }
    print(f"RULER at {length:,} tokens: {len(tasks)} tasks x {args.n} items = {len(items)} items, "
          f"{chars / 1e6:.1f}M characters, {pages:,} pages, one core ({summary['mean_tokens']:,} tokens per item)")
    print(f"  generate {t_gen:7.2f} s   ({len(items) / t_gen:.1f} items/s)")
    print(f"  render   {t_render:7.2f} s   ({pages / t_render:.0f} pages/s, {chars / t_render / 1e6:.2f}M chars/s)")
    print(f"  total    {total:7.2f} s   (target <= 60 s: {'met' if total <= 60 else 'MISSED'})")
    print(f"  baseline: tokenizing every item once takes {t_count:.2f} s, {t_count / t_gen:.2f}x our whole generation")
    p = write_result(args, f"eval-ruler-{length // 1024}k.json", "eval-ruler", rows, summary)
    print(f"wrote {p}")


if __name__ == "__main__":
    main()
