"""What the search optimises: evaluators (config -> accuracy, compression, extra) and the goal
that ranks their scores (max compression s.t. accuracy >= floor, or the Pareto front)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..render.config import RenderConfig


@dataclass
class Score:
    accuracy: float
    compression: float
    extra: dict = field(default_factory=dict)


@runtime_checkable
class Objective(Protocol):
    """Anything that scores a RenderConfig. `describe()` identifies it in the history header (a run
    resumes only with the same objective)."""

    def __call__(self, config: RenderConfig) -> Score: ...

    def describe(self) -> dict: ...


class SyntheticObjective:
    """A cheap stand-in with a known optimum, shaped like the real trade-off.

    Glyph height in pixels px = font_size * dpi / 72; accuracy = clip((px - 3) / 9, 0, 1) rises with
    it; compression = 100 / (px^2 * (line_height / font_size) * horizontal_scale) falls with the
    pixels a character covers. Under accuracy >= floor the optimum is px = 3 + 9 * floor, line_height =
    font_size and the smallest horizontal_scale: `optimum(h_scale_min)` gives its compression.
    """

    def __init__(self, floor: float = 0.5, delay: float = 0.0):
        self.floor, self.delay = floor, delay

    def __call__(self, config: RenderConfig) -> Score:
        if self.delay:
            time.sleep(self.delay)  # stands in for a model's time (resume tests kill a run mid-way)
        px = config.font_size * config.dpi / 72
        acc = min(max((px - 3) / 9, 0.0), 1.0)
        comp = 100 / (px * px * (config.line_height / config.font_size) * config.horizontal_scale)
        return Score(acc, comp, {"glyph_px": round(px, 4)})

    def optimum(self, h_scale_min: float) -> float:
        px = 3 + 9 * self.floor
        return 100 / (px * px * h_scale_min)

    def describe(self) -> dict:
        return {"kind": "synthetic", "floor": self.floor}


class EvalObjective:
    """Scores a config with the evaluation harness: glyph_rt.eval.evaluate(config, items, target).

    accuracy is the harness's mean score as a fraction (its percent / 100), compression its text
    tokens / visual tokens over all items; extra holds the errors and per-task accuracies. `out`, a
    directory, keeps each config's rows (the harness resumes them). concurrency: items in flight at once (an
    endpoint's requests, or an in-process checkpoint's answers batched by its engine)."""

    def __init__(self, items, target, out=None, name: str | None = None, concurrency: int = 1):
        from ..eval import make_target

        self.items = list(items)
        if not self.items:
            raise ValueError("evaluator: no items to evaluate on")
        self.target = make_target(target)
        self.name = name or self.target.name
        self.out = out
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"evaluator.concurrency: {concurrency!r} must be an integer >= 1")
        self.concurrency = concurrency

    def __call__(self, config: RenderConfig) -> Score:
        from ..eval import evaluate
        from .space import config_hash

        out = None if self.out is None else f"{self.out}/{config_hash(config)}.jsonl"
        r = evaluate(config, self.items, self.target, out=out, progress=False, concurrency=self.concurrency)
        compression = math.nan if r.compression is None else float(r.compression)  # no item answered from pages
        return Score(r.accuracy / 100.0, compression,
                     {"errors": r.errors, "by_task": {k: round(v / 100, 6) for k, v in r.by_task.items()}})

    def describe(self) -> dict:
        """The target (its name and identity: a checkpoint's path, an endpoint's model) and the items (ids and a
        hash of their contents: RULER's ids do not hold its seed), which a resumed search must keep."""
        import dataclasses
        import hashlib
        import json

        blob = json.dumps([dataclasses.asdict(it) for it in self.items], sort_keys=True, default=str).encode()
        return {"kind": "eval", "target": self.name, "target_id": self.target.key,
                "repetition_penalty": self.target.repetition_penalty, "items": [it.id for it in self.items],
                "items_sha1": hashlib.sha1(blob).hexdigest()}


def eval_objective(target: str, items: str | None = None, ruler: dict | None = None, out: str | None = None,
                   concurrency: int = 1, **target_kw) -> EvalObjective:
    """An EvalObjective from settings: `items` a JSONL file (glyph_rt.eval.save_items) or `ruler`, the
    arguments of glyph_rt.eval.benchmarks.ruler.generate (tasks, lengths, n, seed: RULER's synthetic
    tasks, generated here); `target` a checkpoint directory or openai:URL[:MODEL]; other keys go to
    make_target."""
    from ..eval import load_items, make_target

    if (items is None) == (ruler is None):
        raise ValueError("evaluator: kind eval needs either items (a JSONL file) or ruler (RULER's generate() "
                         "arguments, e.g. {tasks: [niah_single_1], lengths: [4096], n: 20})")
    if ruler is not None:
        from ..eval.benchmarks.ruler import generate

        if not isinstance(ruler, dict):
            raise ValueError(f"evaluator.ruler: {ruler!r} must be a mapping of generate() arguments")
        try:
            found = generate(**ruler)
        except TypeError as e:
            raise ValueError(f"evaluator.ruler: {e}") from None
    else:
        found = load_items(items)
    return EvalObjective(found, make_target(target, **target_kw), out=out, concurrency=concurrency)


def make_objective(settings: dict) -> Objective:
    """The objective named by settings["evaluator"]: kind synthetic (floor = objective.floor, delay),
    legibility (glyph_rt.search.legibility: text, chars, blur, noise, ...) or eval
    (glyph_rt.eval.evaluate with `target`, make_target's spec, on `items`, a JSONL file, or `ruler`,
    RULER's tasks generated by glyph_rt.eval.benchmarks.ruler.generate)."""
    ev = dict(settings["evaluator"])
    kind = ev.pop("kind", "synthetic")
    # keys of another kind: most often a dotted override (evaluator.kind=...) over a file's evaluator, which merges
    hint = (f"; to replace the evaluator's settings on the command line, give the whole map: "
            f"evaluator={{kind: {kind}, ...}}")
    if kind == "synthetic":
        unknown = set(ev) - {"delay"}
        if unknown:
            raise ValueError(f"evaluator: unknown key(s) {sorted(unknown)} for kind synthetic (known: delay){hint}")
        return SyntheticObjective(float(settings["objective"]["floor"]), float(ev.get("delay", 0.0)))
    if kind == "eval":
        if not ev.get("target"):
            raise ValueError("evaluator: kind eval needs target (a checkpoint directory or openai:URL[:MODEL])")
        known = {"items", "ruler", "target", "out", "concurrency", "device", "kernels", "dtype", "api_key",
                 "timeout"}
        if set(ev) - known:
            raise ValueError(f"evaluator: unknown key(s) {sorted(set(ev) - known)} for kind eval "
                             f"(known: {', '.join(sorted(known))}){hint}")
        return eval_objective(**ev)
    if kind == "legibility":
        from ..render.textio import read_text
        from .legibility import LegibilityObjective

        known = {"text", "chars", "blur", "noise", "max_glyphs", "seed", "model", "tokenizer"}
        if set(ev) - known:
            raise ValueError(f"evaluator: unknown key(s) {sorted(set(ev) - known)} for kind legibility "
                             f"(known: {', '.join(sorted(known))}){hint}")
        if ev.get("text"):
            ev["text"] = read_text(ev["text"])[0]
        return LegibilityObjective(**ev)
    raise ValueError(f"evaluator.kind: {kind!r} is not one of synthetic, legibility, eval")


# ----------------------------------------------------------------- the goal: ranking scores
GOALS = ("constrained", "pareto")


@dataclass
class Goal:
    """`constrained`: the best config has the highest compression among those with accuracy >= floor
    (configs under the floor rank below, by accuracy). `pareto`: non-dominated rank, then crowding
    distance (NSGA-II); the best is the front's config of highest compression above the floor."""

    mode: str = "constrained"
    floor: float = 0.0

    def __post_init__(self):
        if self.mode not in GOALS:
            raise ValueError(f"objective.mode: {self.mode!r} is not one of {', '.join(GOALS)}")
        if not isinstance(self.floor, (int, float)) or not math.isfinite(self.floor):
            raise ValueError(f"objective.floor: {self.floor!r} is not a number")

    def feasible(self, e: dict) -> bool:
        return e.get("accuracy") is not None and e["accuracy"] >= self.floor

    def _key(self, e: dict):
        if e.get("accuracy") is None:  # failed evaluation
            return (0, -math.inf, -math.inf, e["hash"])
        if self.feasible(e):
            return (2, e["compression"], e["accuracy"], e["hash"])
        return (1, e["accuracy"], e["compression"], e["hash"])

    def rank(self, entries: list[dict]) -> list[dict]:
        """Entries (dicts with hash, accuracy, compression) best first, ties broken by hash."""
        if self.mode == "constrained":
            return sorted(entries, key=self._key, reverse=True)
        ok = [e for e in entries if e.get("accuracy") is not None]
        bad = sorted((e for e in entries if e.get("accuracy") is None), key=lambda e: e["hash"])
        out = []
        for front in pareto_fronts(ok):
            dist = crowding(front)
            out += sorted(front, key=lambda e: (-dist[e["hash"]], -e["compression"], e["hash"]))
        return out + bad

    def best(self, entries: list[dict]) -> dict | None:
        """The best evaluated config; None when every evaluation failed."""
        ranked = sorted((e for e in entries if e.get("accuracy") is not None), key=self._key, reverse=True)
        return ranked[0] if ranked else None

    def progress(self, entries: list[dict]) -> tuple:
        """What must grow for a generation to count as an improvement: (best feasible compression,
        best accuracy) for `constrained`; (hypervolume, best accuracy) for `pareto`."""
        ok = [e for e in entries if e.get("accuracy") is not None]
        acc = max((e["accuracy"] for e in ok), default=-math.inf)
        if self.mode == "pareto":
            return (hypervolume(ok), acc)
        comp = max((e["compression"] for e in ok if self.feasible(e)), default=-math.inf)
        return (comp, acc)


def dominates(a: dict, b: dict) -> bool:
    return (a["accuracy"] >= b["accuracy"] and a["compression"] >= b["compression"]
            and (a["accuracy"] > b["accuracy"] or a["compression"] > b["compression"]))


def pareto_fronts(entries: list[dict]) -> list[list[dict]]:
    """Non-dominated sorting: the first list is the Pareto front, each next one the front without it."""
    rest, fronts = list(entries), []
    while rest:
        front = [e for e in rest if not any(dominates(o, e) for o in rest)]
        fronts.append(front)
        ids = {id(e) for e in front}
        rest = [e for e in rest if id(e) not in ids]
    return fronts


def crowding(front: list[dict]) -> dict:
    dist = {e["hash"]: 0.0 for e in front}
    for k in ("accuracy", "compression"):
        s = sorted(front, key=lambda e: (e[k], e["hash"]))
        span = s[-1][k] - s[0][k] or 1.0
        dist[s[0]["hash"]] = dist[s[-1]["hash"]] = math.inf
        for i in range(1, len(s) - 1):
            dist[s[i]["hash"]] += (s[i + 1][k] - s[i - 1][k]) / span
    return dist


def hypervolume(entries: list[dict]) -> float:
    """Area dominated by the front above (accuracy 0, compression 0)."""
    if not entries:
        return 0.0
    front = sorted(pareto_fronts(entries)[0], key=lambda e: -e["compression"])
    area, acc = 0.0, 0.0
    for e in front:  # compression falls, accuracy rises along the front
        if e["accuracy"] > acc:
            area += max(e["compression"], 0.0) * (e["accuracy"] - acc)
            acc = e["accuracy"]
    return area
