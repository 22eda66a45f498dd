"""A whole benchmark run: items of a suite, each target x render config (dpi) x mode, one results file, the
summary table and plots. `glyph-rt eval` is this module's front end.

    run_suite("ruler", ["path/to/ckpt"], out="runs/ruler", lengths=["4k", "8k"], dpis=[72, 96, 120])

OUT/items.jsonl holds the items (written once with items_spec.json, the options that made them, and reused by a
resumed run; other options given there are an error, one left out takes the stored run's; removing items.jsonl
builds them again), OUT/results.jsonl one row per item and run (append-only; a rerun skips the rows already
there), OUT/summary.md and summary.json the tables of every run in results.jsonl over the items of items.jsonl
(each item's latest row per run: this call's for its runs; the runs of earlier calls into the same OUT, other
targets, dpis or --as text, stay; rows of items no longer in items.jsonl, or of other versions of them, are left
out, and counted), and OUT/accuracy_vs_length.png, OUT/accuracy_vs_compression.png the plots.

summary.json: {"suite", "items", "left_out_rows" (only when rows were left out), "runs": [one per target, mode and
render config (dpi), in the order the results file first holds them: {"target", "mode", "dpi" (None for text, and
with "dpis" for items that drew at their own dpis), "label": its name in summary.md, "items", "accuracy": the mean
score over the run's items in percent, "compression", "errors", "by_task": the mean per task}, ...]}; a LongBench
run (and a glyph run with LongBench rows, of those rows) adds "by_category" (the mean of each category's dataset
means) and "paper_avg" (their mean: the Avg of summary.md's table and of the paper's Table 1, which "accuracy", a
mean over items, is not).
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from ..render.config import RenderConfig
from .extract import AnswerExtractor
from .harness import RESULTS_FILE, EvalResult, evaluate, row_key, rows_of_items
from .item import Item, load_items, save_items

SUITES = ("ruler", "longbench", "mrcr", "mmlongbench-doc", "glyph")
DEFAULT_LENGTHS = ("4k",)  # RULER's, when no lengths are given


def build_items(suite: str, *, data=None, lengths=None, limit: int | None = None, seed: int | None = None,
                tasks=None, uuid: bool = False, squad=None, hotpotqa=None, documents=None, pages_dir=None,
                doc_dpi: int = 144, tokenizer: str | None = "default", truncate: int | None = None,
                row_configs: bool = False, longbench_e: bool = False, max_length=None,
                max_chars: int | None = None) -> list[Item]:
    """The items of a suite: RULER generated here (n = limit or 10 per task and length, at `lengths`, default 4k,
    from `seed`, default 0); the others read from `data` (LongBench: a directory of <dataset>.jsonl; MRCR:
    parquet/JSONL; MMLongBench-Doc: samples.json with `documents`; glyph: Glyph's evaluation files), `limit` per
    dataset / needle count / file.
    truncate: LongBench's token budget (pred.py's max_length): the text baseline's whole prompt over it keeps its
    first and last halves, the pages' context those of the budget less the image prompt's tokens; longbench_e:
    LongBench-E's files (<dataset>_e.jsonl) instead of LongBench's. row_configs: glyph rows rendered with their own
    configs over the run's. max_length: MRCR rows whose context has at most this many text tokens (4096, '128k'),
    counted with `tokenizer` as the report bins them (the paper's Table 2: 128k; the published files go to 1M);
    max_chars: MRCR rows with at most this many characters (their n_chars)."""
    from .benchmarks import glyph_data, longbench, mmlongbench_doc, mrcr, ruler

    if suite not in SUITES:
        raise ValueError(f"suite {suite!r} is unknown; choose from {', '.join(SUITES)}")
    if (max_length or max_chars) and suite != "mrcr":
        raise ValueError(f"a length limit (--max-length) applies to MRCR's rows, not to suite {suite}")
    if max_length:
        max_length = ruler.parse_length(max_length)
        if not tokenizer:
            raise ValueError("--max-length counts text tokens: it needs a tokenizer")
    if suite == "ruler":
        return ruler.generate(tasks, lengths or DEFAULT_LENGTHS, n=limit or 10, seed=seed or 0, uuid=uuid,
                              squad=squad, hotpotqa=hotpotqa, tokenizer=tokenizer)
    if data is None:
        raise ValueError(f"suite {suite} reads its data from local files: give --data PATH")
    if suite == "longbench":
        return longbench.load(data, datasets=tasks, limit=limit, truncate=truncate, e=longbench_e)
    if suite == "mrcr":
        if tasks and not all(str(t).isdigit() for t in tasks):
            raise ValueError(f"MRCR --tasks are needle counts (2, 4, 8), got {','.join(map(str, tasks))}")
        return mrcr.load(data, needles=[int(t) for t in tasks] if tasks else None, limit=limit, max_chars=max_chars,
                         max_tokens=max_length or None, tokenizer=tokenizer)
    if suite == "mmlongbench-doc":
        if documents is None:
            raise ValueError("suite mmlongbench-doc needs --documents DIR (the PDFs named by samples.json)")
        return mmlongbench_doc.load(data, documents, pages_dir or Path(data).parent / "pages", dpi=doc_dpi,
                                    limit=limit)
    return glyph_data.load(data, limit=limit, uuid=uuid, row_configs=row_configs)


def _given(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if v is not None and v is not False}


def _effective(suite: str, key: str, value):
    """An option as the items were built with it: RULER's lengths in tokens, unset = the default 4k; MRCR's
    max_length in tokens; the seed, unset = 0."""
    if suite == "ruler" and key == "lengths":
        from .benchmarks import ruler

        return [ruler.parse_length(x) for x in (value or DEFAULT_LENGTHS)]
    if key == "max_length" and value:
        from .benchmarks import ruler

        return ruler.parse_length(value)
    if key == "seed":
        return value or 0
    return value


def _clashes(old: dict, new: dict) -> list[str]:
    """The options given now that differ from the stored run's; one left unset takes the stored run's."""
    suite = new.get("suite")
    return [k for k, v in _given(new).items() if _effective(suite, k, old.get(k)) != _effective(suite, k, v)]


def configs_for(config: RenderConfig | None, dpis=None) -> list[RenderConfig]:
    base = (config or RenderConfig()).validate()
    return [dataclasses.replace(base, dpi=float(d)).validate() for d in dpis] if dpis else [base]


def run_suite(suite: str, targets, *, out, items: list[Item] | None = None, config: RenderConfig | None = None,
              dpis=None, as_text: bool = False, progress: bool = True, target_kwargs: dict | None = None,
              tokenizer: str | None = "default", max_new_tokens: int | None = None, concurrency: int = 1,
              extractor=None, max_tokens: int | None = None, **item_kwargs) -> dict:
    """Runs every target (specs or Targets) on the suite's items at each config (image mode) or once as text;
    writes the results, summary and plots under `out`; returns the summary dict. extractor: evaluate's (an
    AnswerExtractor or a make_target spec), for MMLongBench-Doc; max_tokens, max_new_tokens: evaluate's (every
    item's generation budget, a cap on it)."""
    from . import report
    from .targets import Target, make_target

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items_path, spec_path = out / "items.jsonl", out / "items_spec.json"
    if items is None:
        counts = suite == "ruler" or (suite == "mrcr" and item_kwargs.get("max_length"))  # lengths in its tokens
        own_tok = {"tokenizer": tokenizer} if counts and tokenizer != "default" else {}
        spec = json.loads(json.dumps({"suite": suite, **item_kwargs, **own_tok}, default=str))
        if items_path.exists():  # a resumed run scores the very same items
            if not spec_path.exists():  # the options that made them are unknown: they may be another run's
                raise ValueError(f"{out} holds {items_path.name} but no {spec_path.name} (the options that made "
                                 f"the items); remove {items_path.name} there to build them again ({RESULTS_FILE}'s "
                                 "rows of the same items are reused)")
            old = json.loads(spec_path.read_text(encoding="utf-8"))
            if _clashes(old, spec):
                diff = ", ".join(f"{k}: {old.get(k)!r} then {spec.get(k)!r}" for k in sorted(_clashes(old, spec)))
                raise ValueError(f"{out} holds the items of another run ({diff}); use another --out, or remove "
                                 f"{items_path.name} there to build the items again ({RESULTS_FILE}'s rows of items "
                                 "that stay the same are reused; the others stay in the file, left out of the "
                                 "summary)")
            items = load_items(items_path)
        else:
            items = build_items(suite, tokenizer=tokenizer, **item_kwargs)
            _write(spec_path, json.dumps(spec, indent=1) + "\n")  # first: items are never left without it
            save_items(items, items_path)
    if not items:
        raise ValueError(f"suite {suite}: no items (check --data, --tasks and --limit)")
    cfgs = configs_for(config, dpis)
    own_extractor = extractor is not None and not isinstance(extractor, AnswerExtractor)
    if own_extractor:
        extractor = AnswerExtractor(extractor)
    try:
        for spec in targets:
            target = spec if isinstance(spec, Target) else make_target(spec, **(target_kwargs or {}))
            try:
                for cfg in ([cfgs[0]] if as_text else cfgs):
                    evaluate(cfg, items, target, as_text=as_text, out=out / RESULTS_FILE, tokenizer=tokenizer,
                                 progress=progress, extra=None if as_text else {"dpi": cfg.dpi},
                                 max_new_tokens=max_new_tokens, concurrency=concurrency, extractor=extractor,
                                 max_tokens=max_tokens)
            finally:
                if not isinstance(spec, Target):
                    target.close()
    finally:
        if own_extractor:
            extractor.close()
    rows, left_out = rows_of_items(out / RESULTS_FILE, items)  # not rows of items no longer run here
    md = report.markdown(rows, suite)
    if left_out:
        note = (f"{left_out} rows of {RESULTS_FILE} are left out of this summary: their items are not among this "
                f"run's {len(items)} (an earlier set of items in {out}); they stay in the file")
        md += f"\n{note}.\n"
        print(f"{note}.", file=sys.stderr)
    _write(out / "summary.md", md)
    summary = {"suite": suite, "items": len(items), **({"left_out_rows": left_out} if left_out else {}),
               "runs": run_summaries(rows, suite)}
    _write(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    report.plot(rows, out, suite)
    return summary


def run_summaries(rows: list[dict], suite: str = "") -> list[dict]:
    """summary.json's runs: one per run whose rows `rows` (read_rows of a results file) hold, in the order of their
    first rows, this call's or an earlier one's (several targets, --dpi values and --as text runs into one --out);
    a run is one target, mode and render config (and repetition penalty), as evaluate scores it. summary.md is
    made of the same rows; its tables split a run whose items drew at their own dpis by dpi."""
    from .report import benchmark_of, group_runs, run_label

    runs: dict[tuple, list[dict]] = {}
    for r in rows:
        runs.setdefault(row_key(r)[1:], []).append(r)
    labels = {id(r): run_label(k) for k, rs in group_runs(rows).items() for r in rs}
    out = []
    for rs in runs.values():
        mode = rs[0].get("mode")
        res = EvalResult(rows=rs, target=rs[0].get("target"), mode=mode)
        names = list(dict.fromkeys(labels[id(r)] for r in rs))
        longbench_rows = [r for r in rs if suite == "longbench" or suite == "glyph" and benchmark_of(r) == "longbench"]
        out.append({**res.summary(), **({"dpi": None} if mode == "text" else _run_dpi(rs, None)),
                    "label": names[0] if len(names) == 1 else None,
                    **(_longbench_summary(longbench_rows) if longbench_rows else {})})
    return out


def _longbench_summary(rows: list[dict]) -> dict:
    """A LongBench run's category means and their mean (the paper's Avg), in percent."""
    from .report import longbench_scores

    s = longbench_scores(rows)
    pct = lambda x: None if x != x else round(100 * x, 3)  # noqa: E731
    return {"by_category": {c: pct(v) for c, v in s["categories"].items()}, "paper_avg": pct(s["avg"])}


def _run_dpi(rows: list[dict], dpi: float) -> dict:
    """The run's dpi: the config's, or the one its rows drew at (items with their own configs), or None and the
    rows' dpis when they differ."""
    seen = sorted({r["dpi"] for r in rows if r.get("dpi") is not None})
    if len(seen) > 1:
        return {"dpi": None, "dpis": seen}
    return {"dpi": seen[0] if seen else dpi}


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)

