"""A search's outputs: the best config (glyph_rt JSON and Glyph's JSON), the Pareto plot, the best
per generation (Markdown), a contact sheet of the best configs' first pages and summary.json."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..fileio import atomic_path, save_figure, write_atomic

CONTACT_CHARS = 5000
THUMB = 260


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def redacted(x):
    """x with the value of every key naming an API key ("api_key", "critic_api_key"...) written as "***"; the name
    of an environment variable holding one (api_key_env) is no secret and stays."""
    if isinstance(x, dict):
        return {k: "***" if "api_key" in str(k) and not str(k).endswith("_env") and v is not None else redacted(v)
                for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [redacted(v) for v in x]
    return x


def best_per_generation(history) -> list[dict]:
    """Per generation: the best config so far (hash, accuracy, compression), its evaluations, its counts."""
    evals = history.evaluations()
    rows = []
    for r in history.of_type("generation"):
        b = evals.get(r["best"]) if r["best"] else None
        rows.append({"generation": r["generation"], "best": r["best"], "accuracy": b and b["accuracy"],
                     "compression": b and b["compression"], "proposer": b and b["proposer"],
                     "evaluated": len([h for h in r["children"] if evals[h]["generation"] == r["generation"]]),
                     "counts": r["counts"]})
    return rows


def table_markdown(rows: list[dict]) -> str:
    lines = ["| generation | best | accuracy | compression | found by | evaluated | rejected | repaired |",
             "|---:|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        c = r["counts"]
        rej = sum(v for k, v in c.items() if ".rejected." in f".{k}")
        rep = sum(v for k, v in c.items() if ".repaired." in f".{k}")
        lines.append(f"| {r['generation']} | `{r['best']}` | {_fmt(r['accuracy'])} | {_fmt(r['compression'])} | "
                     f"{r['proposer'] or '-'} | {r['evaluated']} | {rej} | {rep} |")
    return "\n".join(lines) + "\n"


def front_steps(front: list[dict]) -> tuple[list, list]:
    """(x, y) of the Pareto front's staircase: the configs by rising compression (so falling accuracy), from each
    straight down to the next one's accuracy, then across to it. Every corner (compression of one, accuracy of the
    next) is reached by a config (the first dominates it), so the line never promises a trade-off none reached."""
    f = sorted(front, key=lambda e: (e["compression"], -e["accuracy"]))
    xs, ys = [], []
    for i, e in enumerate(f):
        if i:
            xs.append(f[i - 1]["compression"])
            ys.append(e["accuracy"])
        xs.append(e["compression"])
        ys.append(e["accuracy"])
    return xs, ys


def glyph_export(config) -> tuple[object, dict]:
    """(the config best_config_glyph.json is read back as, the fields it renders differently: name -> [the config's,
    the export's]). Glyph's format has no snap, tab_size, cr_newline, wrap, fallback fonts...: a config whose values
    of those are not Glyph's is another config once exported, and its page size is written to 6 digits."""
    import dataclasses

    from ..render.config import RenderConfig
    from ..render.fonts import resolve_fonts

    back = RenderConfig.from_glyph_dict(config.to_glyph_dict())

    def fields(c) -> dict:  # what renders: the font by its file, a hanging indent as Glyph folds it
        d = dataclasses.asdict(c)
        d["page_size"] = [float(x) for x in c.page_size]
        d["font_path"] = str(resolve_fonts(c)[0])
        del d["font_family"]
        h = d.pop("hanging_indent")
        d["left_indent"] += h
        d["first_line_indent"] -= h
        return d

    a, b = fields(config), fields(back)
    return back, {k: [a[k], b[k]] for k in a if a[k] != b[k]}


def pareto_plot(evals: list[dict], front: list[dict], best: dict | None, floor: float | None, path: Path,
                title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [e for e in evals if e.get("accuracy") is not None]
    fig, ax = plt.subplots(figsize=(7, 5))
    gens = [e["generation"] for e in ok]
    sc = ax.scatter([e["compression"] for e in ok], [e["accuracy"] for e in ok], c=gens, cmap="viridis", s=18,
                    alpha=0.75, label=f"evaluated ({len(ok)})")
    fig.colorbar(sc, ax=ax, label="generation")
    f = sorted(front, key=lambda e: (e["compression"], -e["accuracy"]))
    ax.plot(*front_steps(f), color="#C44E52", lw=1.5)
    ax.scatter([e["compression"] for e in f], [e["accuracy"] for e in f], s=60, facecolors="none",
               edgecolors="#C44E52", lw=1.5, label=f"Pareto front ({len(f)})")
    if floor is not None and math.isfinite(floor):
        ax.axhline(floor, color="grey", ls="--", lw=1, label=f"accuracy floor {floor:g}")
    presets = [e for e in ok if str(e.get("proposer", "")).startswith("preset:")]
    if presets:
        ax.scatter([e["compression"] for e in presets], [e["accuracy"] for e in presets], marker="s", s=90,
                   color="#4C72B0", edgecolors="white", zorder=6, label="preset (baseline)")
        for e in presets:
            ax.annotate(e["proposer"][7:], (e["compression"], e["accuracy"]), textcoords="offset points",
                        xytext=(-30, -22), fontsize=9, color="#4C72B0", arrowprops={"arrowstyle": "-",
                                                                                    "color": "#4C72B0"})
    if best is not None and best.get("accuracy") is not None:
        ax.scatter([best["compression"]], [best["accuracy"]], marker="*", s=220, color="#DD8452", zorder=5,
                   label="best")
    ax.set_xlabel("compression (text tokens / visual tokens)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "rendering search: every evaluated config")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def contact_sheet(records: list[dict], space, text: str, path: Path) -> None:
    """First pages of `records`' configs, side by side, each labelled with rank, accuracy, compression."""
    from PIL import Image, ImageDraw

    from ..render.pages import Document

    cells = []
    for e in records:
        doc = Document(text, space.config_of(e), max_pages=1)
        buf, sizes = doc.rasterize(0, 1)
        w, h = sizes[0]
        img = Image.fromarray(buf[0, :h, :w])
        img.thumbnail((THUMB - 6, int(THUMB * 1.5) - 6), Image.Resampling.LANCZOS)
        cells.append(img)
    cell_h = int(THUMB * 1.5) + 28
    sheet = Image.new("RGB", (max(1, len(cells)) * THUMB, cell_h), (128, 128, 128))
    draw = ImageDraw.Draw(sheet)
    for k, (e, img) in enumerate(zip(records, cells)):
        x = k * THUMB
        sheet.paste(img, (x + (THUMB - img.width) // 2, 3))
        draw.text((x + 4, cell_h - 24), f"#{k + 1} {e['hash'][:8]} gen {e['generation']}", fill=(0, 0, 0))
        draw.text((x + 4, cell_h - 12), f"acc {_fmt(e['accuracy'])} comp {_fmt(e['compression'])}", fill=(0, 0, 0))
    with atomic_path(path) as tmp:
        sheet.save(tmp)


def write_outputs(result, out_dir, settings: dict, space, score_export=None) -> list[str]:
    """Writes best_config.json, best_config_glyph.json, pareto.png, best_per_generation.md,
    contact_sheet.png and summary.json to `out_dir`; returns the file names written. A plot left out (no
    matplotlib) is in result.skipped and summary.json's "skipped", with the reason. summary.json's "glyph_export"
    says whether best_config_glyph.json is the config scored; when it is not (see glyph_export), `score_export`
    (Search.score_export: config -> its score record, scored once per history) gives the export's score,
    summary.json records it and result.warnings says so."""
    from .history import History
    from .objective import Goal

    out = Path(out_dir)
    hist = History(out / "history.jsonl")
    files = []
    if result.config is not None:
        write_atomic(out / "best_config.json", json.dumps(result.config.to_dict(), indent=2) + "\n")
        write_atomic(out / "best_config_glyph.json", json.dumps(result.config.to_glyph_dict(), indent=2) + "\n")
        files += ["best_config.json", "best_config_glyph.json"]
    rows = best_per_generation(hist)
    write_atomic(out / "best_per_generation.md", table_markdown(rows))
    files.append("best_per_generation.md")
    evals = list(hist.evaluations().values())
    o = settings["objective"]
    skipped = {}
    try:
        pareto_plot(evals, result.front, result.best, float(o["floor"]), out / "pareto.png",
                    f"{len(evals)} configs, {result.generations + 1} generations ({o['mode']})")
        files.append("pareto.png")
    except ImportError:
        from ..train.style_report import PLOT_HINT

        skipped["pareto.png"] = f"the Pareto plot needs matplotlib: {PLOT_HINT}"
    n = int(settings["outputs"].get("contact_sheet") or 0)
    if n and result.best is not None:
        from ..render.textio import read_text, sample_text

        src = settings["outputs"].get("text")
        text = (read_text(src)[0] if src else sample_text())[:CONTACT_CHARS]
        ranked = Goal(o["mode"], float(o["floor"])).rank([e for e in evals if e.get("accuracy") is not None])
        if o["mode"] == "constrained":
            top = ranked[:n]
        else:
            top = sorted(result.front, key=lambda e: -e["compression"])[:n]
        contact_sheet(top, space, text, out / "contact_sheet.png")
        files.append("contact_sheet.png")
    best = result.best and {k: result.best[k] for k in ("hash", "generation", "accuracy", "compression", "proposer",
                                                        "reason")}
    if best:
        best["feasible"] = result.feasible  # false: no config reached objective.floor; this is the most accurate one
    summary = {"stop_reason": result.stop_reason, "generations": result.generations,
               "evaluations": result.evaluations, "best": best,
               "front": [{k: e[k] for k in ("hash", "accuracy", "compression")} for e in result.front],
               "counts": result.counts, "skipped": skipped}
    if result.config is not None:
        summary["glyph_export"] = _check_export(result, score_export)
    summary["settings"] = redacted(settings)
    write_atomic(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    files.append("summary.json")
    result.skipped = skipped
    return files


def _check_export(result, score_export) -> dict:
    """summary.json's "glyph_export": whether best_config_glyph.json is the config scored; if not, what differs and
    the export's own score (with `score_export`), and a warning in result.warnings."""
    back, differs = glyph_export(result.config)
    if not differs:
        return {"same_config": True}
    out = {"same_config": False, "differs": differs}
    score = ""
    if score_export is not None:
        try:
            rec = score_export(back)
        except Exception as e:  # e.g. the target down: the export's score is a note, the search's results stand
            rec = {"error": f"{type(e).__name__}: {e}"}
        if rec.get("error"):
            out["error"] = rec["error"]
            score = f"; scoring it failed ({out['error']})"
        else:
            out.update(accuracy=rec["accuracy"], compression=rec["compression"])
            score = f"; it scores accuracy {_fmt(out['accuracy'])}, compression {_fmt(out['compression'])}"
    b = result.best
    result.warnings.append(
        f"best_config_glyph.json is not the config scored (Glyph's format cannot hold {', '.join(differs)}){score}, "
        f"the best config (best_config.json) accuracy {_fmt(b.get('accuracy'))}, compression "
        f"{_fmt(b.get('compression'))}; see summary.json's glyph_export")
    return out
