"""Genetic operators over genomes: per-gene mutation within the ranges, uniform crossover,
tournament selection, and validation (schema + the sampler's exclusion rules) with repair or
rejection, counted per reason."""
from __future__ import annotations

import math
import random
from collections import Counter

from ..render.config import ConfigError, RenderConfig
from ..train.styles import check_rules
from .space import SearchSpace


class Rejected(ValueError):
    """A candidate that cannot be repaired; `reason` is the counter key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def mutate(space: SearchSpace, genome: dict, rng: random.Random, rate: float | None = None,
           sigma: float = 0.15) -> dict:
    """Each gene changes with probability `rate` (default 2 / number of genes), at least one:
    numbers by a Gaussian step of `sigma` x their range x a log-uniform scale in [0.03, 1] (large
    and fine steps), clipped; choices and flags to another value."""
    genes = list(space.genes.values())
    rate = 2 / len(genes) if rate is None else rate
    picked = [g for g in genes if rng.random() < rate] or [rng.choice(genes)]
    out = dict(genome)
    for g in picked:
        v = out[g.name]
        if g.kind in ("num", "int"):
            step = rng.gauss(0.0, sigma * (g.hi - g.lo) * 10 ** rng.uniform(-1.5, 0))
            nv = g.bound(v + step)
            if nv == v:  # the step rounded away: move one unit
                nv = g.bound(v + math.copysign(g.step or 1, step or 1))
            out[g.name] = nv
        elif g.kind == "bool":
            out[g.name] = not v
        else:
            others = [c for c in g.choices if c != v]
            if others:
                out[g.name] = rng.choice(others)
    return out


# genes that only make sense together travel together in a crossover
LINKED = (("page_width", "page_aspect"), ("font_size", "line_height_delta"), ("border_width", "border_padding"))


def crossover(space: SearchSpace, a: dict, b: dict, rng: random.Random) -> dict:
    """Uniform crossover: each gene (or linked group) from `a` or `b` with equal probability."""
    groups, seen = [], set()
    for grp in LINKED:
        groups.append(grp)
        seen.update(grp)
    groups += [(n,) for n in space.genes if n not in seen]
    out = {}
    for grp in groups:
        src = a if rng.random() < 0.5 else b
        for n in grp:
            out[n] = src[n]
    return out


def tournament(ranked: list, rng: random.Random, k: int = 3):
    """The best of `k` entries drawn at random from `ranked` (best first)."""
    return ranked[min(rng.randrange(len(ranked)) for _ in range(min(k, len(ranked))))]


def check(space: SearchSpace, genome: dict, counts: Counter, repair: bool = True,
          prefix: str = "") -> tuple[dict, RenderConfig]:
    """The genome checked against the gene ranges, the config schema and the exclusion rules.

    Out-of-range numbers are clipped and a dpi that makes glyphs too small (raised to the smallest that makes them
    large enough) or pages too large for the model (lowered to the largest dpi that fits) is moved into bounds when
    `repair`; each repair adds one to counts[prefix + "repaired." + what], once per reason and candidate. A genome
    that stays invalid raises Rejected (the caller counts `reason`).
    """
    g = dict(genome)
    missing = [n for n in space.genes if n not in g]
    if missing:
        raise Rejected("malformed", f"missing gene(s) {missing}")
    for name, gene in space.genes.items():
        try:
            v = gene.coerce(g[name])
        except ValueError as e:
            raise Rejected("bad_value", str(e)) from None
        c, moved = gene.clip(v)
        if moved:
            if not repair:
                raise Rejected("out_of_range", f"{name}={v}")
            counts[f"{prefix}repaired.{name}_range"] += 1
        g[name] = c
    try:
        config = space.to_config(g)
    except ConfigError as e:
        raise Rejected("invalid_config", str(e)) from None
    dpi = space.genes["dpi"]
    # the smallest dpi whose glyphs are large enough (font_size * dpi / 72 >= min_glyph_px)
    min_dpi = max(int(dpi.lo), math.ceil(space.rules["min_glyph_px"] * 72 / config.font_size - 1e-9))
    while min_dpi <= dpi.hi and config.font_size * min_dpi / 72 < space.rules["min_glyph_px"]:
        min_dpi += 1
    repaired = set()
    while True:
        broken = check_rules(config, space.rules)
        if broken is None:
            return g, config
        if not repair or broken not in ("glyphs_too_small", *TOO_LARGE) or broken in repaired:
            raise Rejected(broken)
        if broken == "glyphs_too_small":
            new = min_dpi if min_dpi <= dpi.hi else None
        else:
            new = _largest_fitting_dpi(space, g, min_dpi, g["dpi"] - 1)
        if new is None or new == g["dpi"]:
            raise Rejected(broken)
        repaired.update(TOO_LARGE if broken in TOO_LARGE else (broken,))
        counts[f"{prefix}repaired.{broken}"] += 1
        g["dpi"] = new
        config = space.to_config(g)


# the rules a page breaks by being too large: a lower dpi repairs them
TOO_LARGE = ("over_model_pixel_budget", "page_over_pixel_limit")


def _largest_fitting_dpi(space: SearchSpace, g: dict, lo: int, hi: int) -> int | None:
    """The largest dpi in [lo, hi] whose pages are not too large (rules TOO_LARGE), or None, tried from the top: the
    model's resize rounds sides to its 28-px grid, so fitting is not monotone in the dpi near the boundary (a dpi may
    fit where one a little below it does not), and a check costs ~0.1 ms (no page is drawn)."""
    return next((d for d in range(hi, lo - 1, -1)
                 if check_rules(space.to_config(dict(g, dpi=d)), space.rules) not in TOO_LARGE), None)
