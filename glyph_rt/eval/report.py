"""Result rows -> Markdown tables in the layout of the paper's tables, and plots.

Rows are grouped into runs by (target, mode, dpi, render config, model, repetition penalty); each table has one line per run and, as the paper, a
"DPI: d / Compression rate: average a, up to m" line above the runs at that dpi.

- ruler: Table 3: one column per task (Niah-S1 ... QA-2), Avg = mean over tasks; plus accuracy per length.
- longbench: Table 1: one column per dataset, grouped by category, then one column per category (the mean of its
  datasets), Avg = the mean of the category columns (the paper's Avg: Glyph's eval_longbench.py category_scores,
  averaged); LongBench-E's rows also per dataset and official length bucket (0-4k, 4-8k, 8k+ of LongBench's
  `length`, in words).
- mrcr: Table 2: per needle count, one column per length bin (0k-8k ... 64k-128k) and Avg = the mean of the bin
  columns (as the paper's rows).
- mmlongbench-doc: Table 4: SP (single-page), CP (cross-page), UA (unanswerable), Acc, F1.
- glyph (Glyph's evaluation data): a section per benchmark its rows hold (LongBench, MRCR, RULER, other tasks),
  each in that benchmark's layout above.
Plots: accuracy vs context length (one line per run) and accuracy vs compression (one point per dpi, a line per
target).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..fileio import save_figure

RULER_SHORT = {"niah_single_1": "Niah-S1", "niah_single_2": "Niah-S2", "niah_single_3": "Niah-S3",
               "niah_multikey_1": "Niah-M1", "niah_multikey_2": "Niah-M2", "niah_multikey_3": "Niah-M3",
               "niah_multivalue": "Niah-V", "niah_multiquery": "Niah-Q", "vt": "VT", "cwe": "CWE", "fwe": "FWE",
               "qa_1": "QA-1", "qa_2": "QA-2"}
LONGBENCH_SHORT = {"qasper": "QP", "narrativeqa": "NQA", "multifieldqa_en": "MFQA-en", "multifieldqa_zh": "MFQA-zh",
                   "hotpotqa": "HQA", "2wikimqa": "2QA", "musique": "MSQ", "dureader": "DuR", "qmsum": "QSUM",
                   "gov_report": "GovRep", "multi_news": "MNews", "vcsum": "VCSum", "trec": "TREC", "triviaqa": "TriQA",
                   "samsum": "SSum", "lsht": "LSHT", "passage_count": "PCount", "passage_retrieval_zh": "PR Zh",
                   "passage_retrieval_en": "PR En", "repobench-p": "RB", "lcc": "LCC"}


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def run_key(row: dict) -> tuple:
    """(target, mode, dpi, what else tells runs apart: the render config, the model's identity, the penalty)."""
    return (row["target"], row["mode"], row.get("dpi"),
            (row.get("config_key"), row.get("target_id"), row.get("repetition_penalty")))


def run_label(key: tuple) -> str:
    """The run's name in tables; runs that would share one get their render config (or model, or penalty) added
    (a key of group_runs carries the label as its last field)."""
    if len(key) > 4:
        return key[4]
    target, mode, dpi = key[:3]
    return f"{target} (text)" if mode == "text" else f"{target}" + (f" @ {dpi:g} dpi" if dpi is not None else "")


def group_runs(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Rows by run, keys (target, mode, dpi, detail, label), ordered: text runs first, then by dpi and target."""
    runs: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        runs[run_key(r)].append(r)
    names: dict[str, list[tuple]] = defaultdict(list)
    for k in runs:
        names[run_label(k)].append(k)
    labelled = {}
    for name, keys in names.items():
        for k in keys:
            cfg, model, penalty = k[3]
            tell = [] if len(keys) == 1 else [
                what for what, vals in ((f"config {cfg}", {kk[3][0] for kk in keys}),
                                        (f"{model}", {kk[3][1] for kk in keys}),
                                        (f"repetition penalty {penalty}", {kk[3][2] for kk in keys}))
                if len(vals) > 1]
            labelled[k + (name + (f" [{', '.join(tell)}]" if tell else ""),)] = runs[k]
    return dict(sorted(labelled.items(), key=lambda kv: (kv[0][1] == "image", kv[0][2] or 0, kv[0][0], kv[0][4])))


def compression(rows: list[dict]) -> tuple[float, float]:
    """(average, maximum) of the per-item compression (text tokens / visual tokens) of image rows."""
    c = [r["compression"] for r in rows if r.get("mode") == "image" and r.get("compression")]
    return (_mean(c), max(c)) if c else (float("nan"), float("nan"))


def length_of(row: dict) -> int | None:
    """The item's nominal length (RULER), else the bin of its text tokens (MRCR, LongBench)."""
    if row.get("length"):
        return int(row["length"])
    t = row.get("text_tokens")
    if not t:
        return None
    n = 1024
    while n < t:
        n *= 2
    return n


def length_label(n: int) -> str:
    """A length's column header and plot tick: 4K for multiples of 1024, else the number (256, 1500)."""
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def _fmt(x: float) -> str:
    return "-" if x != x else f"{100 * x:.2f}"


def _table(header: list[str], lines: list[list[str]], sep_rows: dict[int, str] | None = None) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, line in enumerate(lines):
        if sep_rows and i in sep_rows:
            out.append("| " + sep_rows[i] + " |" + " |" * (len(header) - 1))
        out.append("| " + " | ".join(line) + " |")
    return "\n".join(out)


def _dpi_separators(keys: list[tuple], runs: dict) -> dict[int, str]:
    seps, last = {}, object()
    for i, k in enumerate(keys):
        if k[1] == "image" and k[2] != last:
            avg, mx = compression([r for kk in keys if kk[1] == "image" and kk[2] == k[2] for r in runs[kk]])
            dpi = f"DPI: {k[2]:g} / " if k[2] is not None else ""
            seps[i] = f"{dpi}Compression rate: average {avg:.1f}, up to {mx:.1f}"
            last = k[2]
    return seps


def task_table(rows: list[dict], order: list[str], short: dict[str, str]) -> str:
    runs = group_runs(rows)
    tasks = [t for t in order if any(r.get("task") == t for r in rows)]
    tasks += sorted({str(r.get("task")) for r in rows} - set(tasks))
    lines = []
    for key, rs in runs.items():
        by = {t: _mean(r["score"] for r in rs if r.get("task") == t) for t in tasks}
        present = [v for v in by.values() if v == v]
        lines.append([run_label(key)] + [_fmt(by[t]) for t in tasks] + [_fmt(_mean(present))])
    return _table(["Model"] + [short.get(t, t) for t in tasks] + ["Avg"], lines, _dpi_separators(list(runs), runs))


def length_table(rows: list[dict]) -> str:
    runs = group_runs(rows)
    lengths = sorted({length_of(r) for r in rows if length_of(r)})
    lines = []
    for key, rs in runs.items():
        cells = [_fmt(_mean(r["score"] for r in rs if length_of(r) == n)) for n in lengths]
        lines.append([run_label(key)] + cells + [_fmt(_mean(r["score"] for r in rs))])
    return _table(["Model"] + [length_label(n) for n in lengths] + ["All"], lines, _dpi_separators(list(runs), runs))


E_BUCKETS = ("0-4k", "4-8k", "8k+")


def e_bucket(words: int) -> str:
    """LongBench-E's length bucket (eval.py's scorer_e: under 4000, under 8000, the rest)."""
    return E_BUCKETS[0] if words < 4000 else E_BUCKETS[1] if words < 8000 else E_BUCKETS[2]


def longbench_e_table(rows: list[dict], order: list[str]) -> str:
    """A line per run and dataset, a column per LongBench-E length bucket (rows with `words`)."""
    rows = [r for r in rows if r.get("words") is not None]
    runs = group_runs(rows)
    tasks = [t for t in order if any(r.get("task") == t for r in rows)]
    tasks += sorted({str(r.get("task")) for r in rows} - set(tasks))
    lines = []
    for key, rs in runs.items():
        for t in tasks:
            mine = [r for r in rs if r.get("task") == t]
            if mine:
                lines.append([run_label(key), LONGBENCH_SHORT.get(t, t)]
                             + [_fmt(_mean(r["score"] for r in mine if e_bucket(r["words"]) == b)) for b in E_BUCKETS])
    return _table(["Model", "Dataset", *E_BUCKETS], lines)


def longbench_scores(rows: list[dict]) -> dict:
    """One run's LongBench scores (fractions): {"datasets": dataset -> mean score of its rows, "categories":
    category -> mean of its datasets' means, "avg": mean of the category means} over the datasets the rows hold;
    avg is the paper's Table 1 Avg (its category scores averaged), not the mean over items or datasets. NaN when
    no row is of a LongBench dataset."""
    from .benchmarks.longbench import CATEGORIES, DATASETS

    datasets = {t: _mean(r["score"] for r in rows if r.get("task") == t) for t in DATASETS
                if any(r.get("task") == t for r in rows)}
    categories = {c: _mean(v for d, v in datasets.items() if DATASETS[d][2] == c) for c in CATEGORIES
                  if any(DATASETS[d][2] == c for d in datasets)}
    return {"datasets": datasets, "categories": categories, "avg": _mean(categories.values())}


def longbench_table(rows: list[dict]) -> str:
    """Table 1: a column per dataset (in category order), a column per category (the mean of its datasets), Avg
    (the mean of the category columns)."""
    from .benchmarks.longbench import CATEGORIES, DATASETS

    runs = group_runs(rows)
    datasets = [d for c in CATEGORIES for d, v in DATASETS.items() if v[2] == c and any(r.get("task") == d for r in rows)]
    cats = [c for c in CATEGORIES if any(DATASETS[d][2] == c for d in datasets)]
    lines = []
    for key, rs in runs.items():
        s = longbench_scores(rs)
        lines.append([run_label(key)] + [_fmt(s["datasets"].get(d, float("nan"))) for d in datasets]
                     + [_fmt(s["categories"].get(c, float("nan"))) for c in cats] + [_fmt(s["avg"])])
    return _table(["Model"] + [LONGBENCH_SHORT.get(d, d) for d in datasets] + cats + ["Avg"], lines,
                  _dpi_separators(list(runs), runs))


def mrcr_table(rows: list[dict]) -> str:
    from .benchmarks.mrcr import bin_label

    runs = group_runs(rows)
    needles = sorted({int(r.get("needles") or 0) for r in rows})
    bins = sorted({bin_label(r["text_tokens"] or 0) for r in rows}, key=lambda b: int(b.split("k")[0].lstrip(">")))
    header, lines = ["Model"], []
    for n in needles:
        header += [f"{n} Needle {b}" for b in bins] + [f"{n} Needle Avg"]
    for key, rs in runs.items():
        line = [run_label(key)]
        for n in needles:
            mine = [r for r in rs if int(r.get("needles") or 0) == n]
            cols = [_mean(r["score"] for r in mine if bin_label(r["text_tokens"] or 0) == b) for b in bins]
            line += [_fmt(c) for c in cols]
            line.append(_fmt(_mean(c for c in cols if c == c)))  # the mean of the bin columns, as the paper's
        lines.append(line)
    return _table(header, lines, _dpi_separators(list(runs), runs))


def mmlongbench_scores(rs: list[dict]) -> dict[str, float]:
    """SP, CP, UA accuracies, Acc and F1 as MMLongBench-Doc's eval_acc_and_f1 computes them."""
    answerable = [r for r in rs if r.get("kind") != "UA"]
    said = [r for r in rs if str(r.get("extracted", r.get("answer", r.get("prediction", "")))).strip()
            != "Not answerable"]  # the answer scored: the extraction, else the reply's answer after its thinking
    recall = _mean(r["score"] for r in answerable) if answerable else 0.0
    precision = sum(r["score"] for r in answerable) / len(said) if said else 0.0
    f1 = 2 * recall * precision / (recall + precision) if recall + precision > 0 else 0.0
    return {"SP": _mean(r["score"] for r in rs if r.get("kind") == "SP"),
            "CP": _mean(r["score"] for r in rs if r.get("kind") == "CP"),
            "UA": _mean(r["score"] for r in rs if r.get("kind") == "UA"), "Acc": _mean(r["score"] for r in rs),
            "F1": f1}


def mmlongbench_table(rows: list[dict]) -> str:
    runs = group_runs(rows)
    cols = ["SP", "CP", "UA", "Acc", "F1"]
    lines = [[run_label(k)] + [_fmt(mmlongbench_scores(rs)[c]) for c in cols] for k, rs in runs.items()]
    return _table(["Model"] + cols, lines)


GLYPH_PARTS = (("longbench", "LongBench"), ("mrcr", "MRCR"), ("ruler", "RULER"), ("other", "Other tasks"))


def benchmark_of(row: dict) -> str:
    """The benchmark of a row of Glyph's evaluation data (suite glyph): longbench (a LongBench dataset's task),
    mrcr (MRCR's metric), ruler (a RULER task), else other."""
    from .benchmarks import longbench, ruler

    task = row.get("task")
    if row.get("metric") == "mrcr":
        return "mrcr"
    return "longbench" if task in longbench.DATASETS else "ruler" if task in ruler.TASKS else "other"


def _avg_note(suite: str) -> str:
    avg = ("the mean of the category columns (each the mean of its datasets), as the paper's" if suite == "longbench"
           else "the mean of a needle count's length-bin columns, as the paper's" if suite == "mrcr"
           else "the mean over the columns")
    return f"Scores in percent; Avg is {avg}; a run's Accuracy (Runs) is the mean over its items.\n"


def _tables(rows: list[dict], suite: str, h: str = "##") -> list[str]:
    """The tables of one suite's rows in the paper's layout; h: the level of their sub-headings."""
    from .benchmarks import longbench, ruler

    if suite == "ruler":
        return [task_table(rows, list(ruler.TASKS), RULER_SHORT), f"\n{h} By context length\n", length_table(rows)]
    if suite == "longbench":
        order = [d for c in longbench.CATEGORIES for d, v in longbench.DATASETS.items() if v[2] == c]
        parts = [longbench_table(rows), f"\n{h} By context length (text tokens)\n", length_table(rows)]
        if any(r.get("longbench_e") for r in rows):
            parts += [f"\n{h} LongBench-E by length (words)\n",
                      longbench_e_table([r for r in rows if r.get("longbench_e")], order)]
        return parts
    if suite == "mrcr":
        return [mrcr_table(rows)]
    if suite == "mmlongbench-doc":
        return [mmlongbench_table(rows)]
    return [task_table(rows, [], {})]


def markdown(rows: list[dict], suite: str) -> str:
    """The summary of a results file for one suite, in the paper's layout, with per-run item counts. Suite glyph
    (Glyph's evaluation data) has a section per benchmark its rows hold (benchmark_of), each in that suite's
    layout (LongBench's Avg the mean of its category means, MRCR's length bins)."""
    if not rows:
        return f"# {suite}\n\nNo results yet.\n"
    if suite != "glyph":
        parts = [f"# {suite}\n", _avg_note(suite), *_tables(rows, suite)]
    else:
        parts = [f"# {suite}"]
        for part, title in GLYPH_PARTS:
            mine = [r for r in rows if benchmark_of(r) == part]
            if mine:
                parts += [f"\n## {title}\n", _avg_note(part), *_tables(mine, part, "###")]
    runs = group_runs(rows)
    parts.append("\n## Runs\n")
    lines = []
    for key, rs in runs.items():
        avg, mx = compression(rs)
        vis = sum(r.get("visual_tokens") or 0 for r in rs)
        text = sum(r.get("text_tokens") or 0 for r in rs)
        lines.append([run_label(key), str(len(rs)), _fmt(_mean(r["score"] for r in rs)), f"{text:,}", f"{vis:,}",
                      "-" if avg != avg else f"{avg:.2f} (max {mx:.2f})",
                      f"{_mean(r['latency_s'] for r in rs):.3f}", str(sum(1 for r in rs if r.get("error")))])
    parts.append(_table(["Run", "Items", "Accuracy", "Text tokens", "Visual tokens", "Compression", "Latency s",
                         "Errors"], lines))
    return "\n".join(parts) + "\n"


def plot(rows: list[dict], out_dir, suite: str = "") -> list[Path]:
    """accuracy_vs_length.png (a line per run) and accuracy_vs_compression.png (a point per dpi, a line per
    target; text runs as horizontal lines). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = group_runs(rows)
    written = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, rs in runs.items():
        lengths = sorted({length_of(r) for r in rs if length_of(r)})
        if lengths:
            ys = [100 * _mean(r["score"] for r in rs if length_of(r) == n) for n in lengths]
            ax.plot(lengths, ys, marker="o", linestyle="--" if key[1] == "text" else "-", label=run_label(key))
    ax.set_xscale("log", base=2)
    ticks = sorted({length_of(r) for r in rows if length_of(r)})
    ax.set_xticks(ticks, [length_label(n) for n in ticks])
    ax.minorticks_off()
    ax.set_xlabel("context length (text tokens)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{suite} accuracy vs context length".strip())
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # nothing labelled when no run has a score to draw
        ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(save_figure(fig, out / "accuracy_vs_length.png", dpi=120))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    targets = sorted({k[0] for k in runs})
    for t in targets:
        pts = sorted((compression(rs)[0], 100 * _mean(r["score"] for r in rs), k[2])
                     for k, rs in runs.items() if k[0] == t and k[1] == "image")
        pts = [p_ for p_ in pts if p_[0] == p_[0]]
        color = None
        if pts:
            line, = ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], marker="o", label=t)
            color = line.get_color()
            for x, y, dpi in pts:
                if dpi is not None:
                    ax.annotate(f"{dpi:g} dpi", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        for k, rs in runs.items():
            if k[0] == t and k[1] == "text":
                ax.axhline(100 * _mean(r["score"] for r in rs), linestyle="--", color=color or "grey",
                           label=f"{t} (text)")
    ax.set_xlabel("compression (text tokens / visual tokens)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{suite} accuracy vs compression".strip())
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # nothing labelled when no run has a score to draw
        ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(save_figure(fig, out / "accuracy_vs_compression.png", dpi=120))
    return written
