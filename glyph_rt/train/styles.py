"""Style sampler: RenderConfigs drawn from the Glyph paper's rendering space (Table 8).

Every distribution lives in one YAML file (glyph_rt/data/styles.yaml, or a user's copy). Sample i
of seed s is drawn from its own generator, seeded by (s, i, attempt), so it is the same whatever
the number of workers or ranks and whichever other samples were drawn. A draw that breaks an
exclusion rule is redrawn with the next attempt; the sampler counts each rule's rejections.
"""
from __future__ import annotations

import bisect
import copy
import functools
import hashlib
import json
import math
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..fileio import write_atomic
from ..render.config import PAPER_SIZES, ConfigError, RenderConfig, color_hex, parse_color
from ..render.fonts import BUILTIN_FONTS, system_fonts
from ..render.tokens import VISION_MODELS, VisionModel, vision_model

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "data" / "styles.yaml"
FAMILY_CLASSES = ("sans", "serif", "mono", "pixel")
FONT_SUFFIXES = (".ttf", ".otf")
# The exclusion rules, in the order they are checked.
RULES = ("line_height_below_font_size", "no_text_area", "page_over_pixel_limit", "invalid_config",
         "low_contrast", "glyphs_too_small", "over_model_pixel_budget")
# Maps a user file replaces whole (option -> weight), and maps whose modes a user may add to.
_REPLACE = {("page_size", "paper", "values"), ("page_size", "aspect", "values"), ("alignment", "values"),
            ("h_scale", "values"), ("fonts", "families"), ("margins", "patterns")}
_OPEN = {("dpi",), ("colors",), ("spacing",)}


class StyleConfigError(ValueError):
    """The style file is invalid; the message names the key (dotted path) and what to do."""


# ----------------------------------------------------------------- parameters
def load_params(path: str | os.PathLike | None = None) -> dict:
    """The default parameters, with a user's YAML file (full or partial) merged over them."""
    params = yaml.safe_load(DEFAULT_PATH.read_text(encoding="utf-8"))
    if path is None:
        return params
    p = Path(path)
    if not p.is_file():
        raise StyleConfigError(f"styles config: file {str(p)!r} does not exist")
    try:
        user = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise StyleConfigError(f"styles config: {str(p)!r} is not valid YAML: {e}") from None
    if user is None:
        return params
    if not isinstance(user, dict):
        raise StyleConfigError(f"styles config: {str(p)!r} must be a mapping of keys, got {type(user).__name__}")
    user_dir = (user.get("fonts") or {}).get("user_dir") if isinstance(user.get("fonts"), dict) else None
    if isinstance(user_dir, str) and not Path(os.path.expanduser(user_dir)).is_absolute():
        user["fonts"]["user_dir"] = str(p.parent / user_dir)  # relative to the file, as font paths in configs
    return merge_params(params, user, source=str(p))


def merge_params(base: dict, user: dict, source: str = "styles config", _path: tuple = ()) -> dict:
    """`user` over `base`; a key `base` lacks is an error naming its dotted path (open maps excepted)."""
    out = copy.deepcopy(base)
    for k, v in user.items():
        key = str(k)
        path = (*_path, key)
        if key not in out:
            if _path in _OPEN:
                out[key] = v
                continue
            raise StyleConfigError(f"{source}: unknown key {'.'.join(path)!r}; known here: {', '.join(map(str, out))}")
        if isinstance(out[key], dict) and not isinstance(v, dict):
            raise StyleConfigError(f"{source}: {'.'.join(path)!r} must be a mapping like the default's "
                                   f"({', '.join(map(str, out[key]))}), got {v!r}")
        if path not in _REPLACE and isinstance(out[key], dict):
            out[key] = merge_params(out[key], v, source, path)
        else:
            out[key] = v
    return out


def _num(v, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise StyleConfigError(f"{where}: {v!r} is not a number")
    return float(v)


def _range(v, where: str) -> tuple[float, float]:
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise StyleConfigError(f"{where}: {v!r} must be [min, max]")
    lo, hi = _num(v[0], where), _num(v[1], where)
    if lo > hi:
        raise StyleConfigError(f"{where}: min {lo} is above max {hi}")
    return lo, hi


def _prob(v, where: str) -> float:
    x = _num(v, where)
    if not 0 <= x <= 1:
        raise StyleConfigError(f"{where}: {v!r} must be a probability in [0, 1]")
    return x


class _Choice:
    """A weighted choice among named options."""

    def __init__(self, weights: dict, where: str):
        if not isinstance(weights, dict) or not weights:
            raise StyleConfigError(f"{where}: expected a non-empty mapping of option -> weight")
        self.names = list(weights)
        w = np.array([_num(x, f"{where}.{k}") for k, x in weights.items()])
        if (w < 0).any() or w.sum() <= 0:
            raise StyleConfigError(f"{where}: weights must be >= 0 with a positive sum")
        self.p = w / w.sum()
        self.cdf = [float(x) for x in np.cumsum(self.p)]

    def draw(self, rng: random.Random):
        i = bisect.bisect_right(self.cdf, rng.random() * self.cdf[-1])
        return self.names[min(i, len(self.names) - 1)]


def _modes(node: dict, where: str, known: set | None = None) -> tuple[_Choice, dict]:
    if not isinstance(node, dict) or not node:
        raise StyleConfigError(f"{where}: expected a mapping of mode -> {{weight: ..., ...}}")
    weights = {}
    for name, m in node.items():
        if not isinstance(m, dict) or "weight" not in m:
            raise StyleConfigError(f"{where}.{name}: each mode needs a 'weight'")
        if known is not None and name not in known:
            raise StyleConfigError(f"{where}: unknown mode {name!r}; known: {', '.join(sorted(known))}")
        weights[name] = m["weight"]
    return _Choice(weights, where), node


# ----------------------------------------------------------------- font pool
_ITALIC = re.compile(r"(italic|oblique|slanted|kursiv)|[-_ ](it|i|obl)$", re.I)
_BOLD = re.compile(r"bold|black|heavy|semibold|demibold|extrabold|[-_ ](bd|b)$", re.I)
_ASCII = range(0x20, 0x7F)
_BUILTIN = {str(p): k for k, p in BUILTIN_FONTS.items()}


def font_class(name: str) -> str:
    """serif / sans / mono / pixel, from a font file name."""
    n = name.lower()
    if any(w in n for w in ("pixel", "bitmap", "8bit", "press start", "pressstart", "vt323", "silkscreen")):
        return "pixel"
    if any(w in n for w in ("mono", "code", "courier", "consol", "typewriter", "fixed")):
        return "mono"
    if "serif" in n and "sans" not in n or any(w in n for w in ("times", "garamond", "georgia", "baskerville",
                                                                "bodoni", "caslon", "palatino")):
        return "serif"
    return "sans"


def is_italic(name: str) -> bool:
    return bool(_ITALIC.search(Path(name).stem))


def is_bold(name: str) -> bool:
    return bool(_BOLD.search(Path(name).stem))


@dataclass(frozen=True)
class FontPool:
    """Font files by class (sans/serif/mono/pixel) and italic flag, sorted, de-duplicated by file name."""

    fonts: dict  # (class, italic) -> tuple of font paths
    sources: dict  # source -> number of fonts it added

    def classes(self) -> list[str]:
        return [c for c in FAMILY_CLASSES if self.fonts.get((c, False)) or self.fonts.get((c, True))]

    @functools.cached_property
    def key(self) -> str:
        """A hash of what the draws pick from: each class's font files in order, by file name and size. The draws
        of a sampler depend on the installed fonts (fonts.system): the same fonts elsewhere give the same key, and
        another set (or order) another, so that make-data and a resumed training run can tell."""
        def size(path: str) -> int:
            try:
                return os.path.getsize(path)
            except OSError:
                return -1

        what = [[c, italic, [[Path(f).name, size(f)] for f in self.fonts[(c, italic)]]]
                for c, italic in sorted(self.fonts)]
        return hashlib.sha256(json.dumps(what, ensure_ascii=True).encode()).hexdigest()[:16]

    def summary(self) -> str:
        per = ", ".join(f"{c} {len(self.fonts.get((c, False), ()))}+{len(self.fonts.get((c, True), ()))} italic"
                        for c in FAMILY_CLASSES)
        src = ", ".join(f"{k} {v}" for k, v in self.sources.items())
        return f"font pool: {per} (from {src})"


def _covers_ascii(ranges) -> bool:
    return all(any(lo <= cp <= hi for lo, hi in ranges) for cp in _ASCII)


@functools.lru_cache(maxsize=8)
def build_font_pool(bundled: bool = True, system: bool = True, user_dir: str | None = None,
                    bold: bool = False) -> FontPool:
    """The pooled fonts: bundled, installed (fontconfig, outline fonts that cover ASCII) and user_dir."""
    found: dict[str, str] = {}  # de-duplication key (file name) -> path
    sources: Counter = Counter()

    def add(path: str, source: str):
        key = Path(path).name.lower()
        if key in found or (is_bold(path) and not bold):
            return
        found[key] = path
        sources[source] += 1

    if bundled:
        for p in sorted(BUILTIN_FONTS.values()):
            add(str(p), "bundled")
    if user_dir is not None:
        d = Path(os.path.expanduser(str(user_dir)))
        if not d.is_dir():
            raise StyleConfigError(f"fonts.user_dir: {str(d)!r} is not a directory")
        files = sorted(str(p) for p in d.rglob("*") if p.suffix.lower() in FONT_SUFFIXES)
        if not files:
            raise StyleConfigError(f"fonts.user_dir: {str(d)!r} has no .ttf/.otf font files")
        for p in files:
            add(p, "user_dir")
    if system:
        for spec, ranges in sorted(system_fonts()):
            # faces of a collection ("file.ttc#2") and fonts without ASCII letters stay out
            if "#" not in spec and Path(spec).suffix.lower() in FONT_SUFFIXES and _covers_ascii(ranges):
                add(spec, "system")
    fonts: dict = {}
    for path in sorted(found.values()):
        fonts.setdefault((font_class(Path(path).stem), is_italic(path)), []).append(path)
    return FontPool({k: tuple(v) for k, v in fonts.items()}, dict(sources))


# ----------------------------------------------------------------- exclusion rules
def relative_luminance(rgb) -> float:
    def lin(c):
        c = c / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(a, b) -> float:
    """WCAG 2 contrast ratio of two colours (1..21)."""
    la, lb = relative_luminance(parse_color(a)), relative_luminance(parse_color(b))
    hi, lo = max(la, lb), min(la, lb)
    return (hi + 0.05) / (lo + 0.05)


def _validate_rule(config: RenderConfig) -> str | None:
    """RenderConfig.validate()'s verdict as a rule name (None when it passes)."""
    try:
        config.validate()
    except ConfigError as e:
        msg = str(e)
        if msg.startswith("line_height:") and "smaller than font_size" in msg:
            return "line_height_below_font_size"
        if msg.startswith(("margin_x/indents:", "margin_y:")):
            return "no_text_area"
        if msg.startswith("page_size/dpi:"):
            return "page_over_pixel_limit"
        return "invalid_config"
    return None


def check_rules(config: RenderConfig, rules: dict, vision: VisionModel | None = None) -> str | None:
    """The first exclusion rule `config` breaks, or None. The pixel budget is `vision`'s (a checkpoint's
    limits), else that of rules.model's processor defaults."""
    name = _validate_rule(config)
    if name:
        return name
    bgs = {config.page_bg_color, config.para_bg_color}
    if min(contrast_ratio(config.font_color, bg) for bg in bgs) < rules["min_contrast"]:
        return "low_contrast"
    if config.font_size * config.dpi / 72 < rules["min_glyph_px"]:
        return "glyphs_too_small"
    w, h = config.page_pixels
    try:
        hb, wb = (vision or vision_model(rules["model"])).resize(h, w)
    except ValueError:
        return "over_model_pixel_budget"
    if math.sqrt(hb * wb / (h * w)) < rules["max_downscale"]:
        return "over_model_pixel_budget"
    return None


# ----------------------------------------------------------------- the sampler
@dataclass
class StyleSample:
    """One sampled style: the config, the modes chosen for it, and how many draws it took."""

    index: int
    config: RenderConfig
    choices: dict
    attempts: int
    rejected: list = field(default_factory=list)  # the rule each earlier attempt broke

    def to_dict(self) -> dict:
        return {"index": self.index, "attempts": self.attempts, "rejected": self.rejected,
                "choices": self.choices, "config": self.config.to_dict()}


class StyleSampler:
    """Draws RenderConfigs from the parameters of a styles YAML file.

    `sample(i)` is a pure function of (seed, i) and the parameters; `rejections` counts, per
    exclusion rule, the draws this sampler has rejected.
    """

    def __init__(self, params: dict | None = None, seed: int = 0, font_dir: str | os.PathLike | None = None,
                 vision: VisionModel | None = None):
        self.vision = vision  # the model whose pixel budget rules.max_downscale checks, if not rules.model's
        self.params = copy.deepcopy(params) if params is not None else load_params()
        if not isinstance(seed, int) or seed < 0:
            raise StyleConfigError(f"seed: {seed!r} must be an integer >= 0")
        self.seed = seed
        if font_dir is not None:
            self.params["fonts"]["user_dir"] = str(font_dir)
        self._compile()
        self.rejections: Counter = Counter({r: 0 for r in RULES})

    @classmethod
    def from_file(cls, path: str | os.PathLike, seed: int = 0, **kw) -> "StyleSampler":
        return cls(load_params(path), seed=seed, **kw)

    def save(self, path: str | os.PathLike) -> None:
        write_atomic(path, yaml.safe_dump(self.params, sort_keys=False, allow_unicode=True))

    # ------------------------------------------------------------- parameter checks
    def _compile(self) -> None:
        P = self.params
        missing = [k for k in yaml.safe_load(DEFAULT_PATH.read_text(encoding="utf-8")) if k not in P]
        if missing:
            raise StyleConfigError(f"styles config: missing key(s) {', '.join(missing)}")
        self._dpi, _ = _modes(P["dpi"], "dpi")
        for name, m in P["dpi"].items():
            if ("range" in m) == ("values" in m):
                raise StyleConfigError(f"dpi.{name}: give either 'range' or 'values'")
            if "range" in m:
                _range(m["range"], f"dpi.{name}.range")
            elif not m["values"] or not all(_num(v, f"dpi.{name}.values") > 0 for v in m["values"]):
                raise StyleConfigError(f"dpi.{name}.values: a non-empty list of positive numbers")
        self._page, _ = _modes(P["page_size"], "page_size", {"paper", "aspect", "random"})
        pg = P["page_size"]
        self._paper = _Choice({k.upper(): v for k, v in pg["paper"]["values"].items()}, "page_size.paper.values")
        bad = [k for k in self._paper.names if k not in PAPER_SIZES]
        if bad:
            raise StyleConfigError(f"page_size.paper.values: unknown paper(s) {bad}; known: {', '.join(PAPER_SIZES)}")
        self._aspect = _Choice({float(k): v for k, v in pg["aspect"]["values"].items()}, "page_size.aspect.values")
        _range(pg["aspect"]["width"], "page_size.aspect.width")
        _range(pg["random"]["width"], "page_size.random.width")
        segs = pg["random"]["segments"]
        if not isinstance(segs, list) or not segs or not all(isinstance(s, list) and len(s) == 3 for s in segs):
            raise StyleConfigError("page_size.random.segments: a list of [lo, hi, weight]")
        for s in segs:
            _range(s[:2], "page_size.random.segments")
        self._segs = _Choice({i: s[2] for i, s in enumerate(segs)}, "page_size.random.segments")
        f = P["fonts"]
        for k in ("bundled", "system", "bold"):
            if not isinstance(f[k], bool):
                raise StyleConfigError(f"fonts.{k}: {f[k]!r} must be true or false")
        self.pool = build_font_pool(f["bundled"], f["system"], f["user_dir"], f["bold"])
        fams = {k: v for k, v in f["families"].items() if k in self.pool.classes()}
        unknown = set(f["families"]) - set(FAMILY_CLASSES)
        if unknown:
            raise StyleConfigError(f"fonts.families: unknown class(es) {sorted(unknown)}; "
                                   f"known: {', '.join(FAMILY_CLASSES)}")
        if not fams:
            raise StyleConfigError("fonts: the pool has no font of any class in fonts.families; enable fonts.bundled")
        self._family = _Choice(fams, "fonts.families")
        _prob(f["italic"], "fonts.italic")
        for k in ("font_size", "line_height_delta"):
            _range(P[k]["range"], f"{k}.range")
            if _num(P[k].get("step", 0), f"{k}.step") < 0:
                raise StyleConfigError(f"{k}.step: must be >= 0")
        self._align = _Choice(P["alignment"]["values"], "alignment.values")
        _range(P["margins"]["range"], "margins.range")
        self._margin = _Choice(P["margins"]["patterns"], "margins.patterns")
        bad = set(self._margin.names) - {"all_equal", "vertical_larger", "horizontal_larger"}
        if bad:
            raise StyleConfigError(f"margins.patterns: unknown pattern(s) {sorted(bad)}; known: all_equal, "
                                   "vertical_larger, horizontal_larger")
        self._indent, _ = _modes(P["indent"], "indent", {"none", "first_line", "block", "hanging"})
        for name, m in P["indent"].items():
            if name != "none":
                _range(m["em"], f"indent.{name}.em")
        self._spacing, _ = _modes(P["spacing"], "spacing")
        for name, m in P["spacing"].items():
            _range(m.get("range"), f"spacing.{name}.range")
        self._hscale = _Choice({float(k): v for k, v in P["h_scale"]["values"].items()}, "h_scale.values")
        self._theme, _ = _modes(P["colors"], "colors")
        for name, m in P["colors"].items():
            if name == "presets":
                for n in m["names"]:
                    try:
                        RenderConfig.preset(n)
                    except ConfigError as e:
                        raise StyleConfigError(f"colors.presets.names: {e}") from None
            else:
                tr = m.get("triplets")
                if not tr or not all(isinstance(t, list) and len(t) == 3 for t in tr):
                    raise StyleConfigError(f"colors.{name}.triplets: a list of [page, paragraph, font] colours")
                for t in tr:
                    for c in t:
                        try:
                            parse_color(c, f"colors.{name}.triplets")
                        except ConfigError as e:
                            raise StyleConfigError(str(e)) from None
                if m.get("family") is not None and m["family"] not in FAMILY_CLASSES:
                    raise StyleConfigError(f"colors.{name}.family: {m['family']!r} is not one of "
                                           f"{', '.join(FAMILY_CLASSES)}")
        _prob(P["borders"]["probability"], "borders.probability")
        _range(P["borders"]["width"], "borders.width")
        _range(P["borders"]["padding"], "borders.padding")
        _prob(P["newline_markup"]["probability"], "newline_markup.probability")
        for k in ("width", "last_page"):
            _prob(P["auto_crop"][k], f"auto_crop.{k}")
        r = P["rules"]
        if r["model"] not in VISION_MODELS:
            raise StyleConfigError(f"rules.model: {r['model']!r} is not one of {', '.join(VISION_MODELS)}")
        for k in ("min_contrast", "min_glyph_px", "max_downscale", "max_attempts"):
            _num(r[k], f"rules.{k}")

    # ------------------------------------------------------------- drawing
    def rng(self, index: int, attempt: int = 0) -> random.Random:
        """The generator of sample `index`, attempt `attempt`: seeded by (seed, index, attempt) only
        (a string seed is hashed with SHA-512, the same in every process)."""
        return random.Random(f"glyph_rt.styles:{self.seed}:{index}:{attempt}")

    def draw(self, index: int, attempt: int = 0) -> tuple[RenderConfig, dict]:
        """One unchecked draw: (config, the mode chosen for each factor)."""
        P, rng = self.params, self.rng(index, attempt)
        ch: dict[str, Any] = {}

        def uni(lo, hi, step=0.0):
            x = lo + (hi - lo) * rng.random()
            return snap(x, lo, hi, step) if step else x

        # dpi
        ch["dpi"] = mode = self._dpi.draw(rng)
        m = P["dpi"][mode]
        dpi = rng.randint(int(m["range"][0]), int(m["range"][1])) if "range" in m else \
            int(rng.choice(m["values"]))
        # page size
        ch["page"] = mode = self._page.draw(rng)
        if mode == "paper":
            ch["paper"] = self._paper.draw(rng)
            w, h = PAPER_SIZES[ch["paper"]]
        else:
            w = uni(*P["page_size"][mode]["width"])
            if mode == "aspect":
                ratio = self._aspect.draw(rng)
            else:
                lo, hi, _ = P["page_size"]["random"]["segments"][self._segs.draw(rng)]
                ratio = uni(lo, hi)
            h = w * ratio
        ch["aspect"] = round(h / w, 4)
        # colours (a theme may fix the font class)
        ch["theme"] = theme = self._theme.draw(rng)
        tm = P["colors"][theme]
        family = None
        if theme == "presets":
            ch["preset"] = name = rng.choice(tm["names"])
            pr = RenderConfig.preset(name)
            page_bg, para_bg, font_color = pr.page_bg_color, pr.para_bg_color, pr.font_color
            family = "pixel" if name == "artistic_pixel" else pr.font_family if name != "glyph" else None
        else:
            page_bg, para_bg, font_color = rng.choice(tm["triplets"])
            family = tm.get("family")
        # font
        if family not in self.pool.classes():
            family = self._family.draw(rng)
        ch["family"] = family
        italic = rng.random() < P["fonts"]["italic"] and bool(self.pool.fonts.get((family, True)))
        files = self.pool.fonts.get((family, italic)) or self.pool.fonts[(family, not italic)]
        font = rng.choice(files)
        ch["italic"] = is_italic(font)
        font_size = uni(*P["font_size"]["range"], P["font_size"].get("step", 0))
        line_height = round(font_size + uni(*P["line_height_delta"]["range"], P["line_height_delta"].get("step", 0)), 4)
        ch["alignment"] = align = self._align.draw(rng)
        # margins
        ch["margins"] = pat = self._margin.draw(rng)
        lo, hi = P["margins"]["range"]
        a, b = sorted((uni(lo, hi, 0.5), uni(lo, hi, 0.5)))
        mx, my = {"all_equal": (a, a), "vertical_larger": (a, b), "horizontal_larger": (b, a)}[pat]
        # indents
        ch["indent"] = mode = self._indent.draw(rng)
        ind = dict(first_line_indent=0.0, left_indent=0.0, right_indent=0.0, hanging_indent=0.0)
        if mode != "none":
            em = lambda: round(uni(*P["indent"][mode]["em"]) * font_size, 2)  # noqa: E731
            if mode == "first_line":
                ind["first_line_indent"] = em()
            elif mode == "block":
                ind["left_indent"], ind["right_indent"] = em(), em()
            else:
                ind["hanging_indent"] = em()
        # spacing
        space = {}
        for k in ("space_before", "space_after"):
            ch[k] = mode = self._spacing.draw(rng)
            space[k] = uni(*P["spacing"][mode]["range"], 0.5)
        ch["h_scale"] = h_scale = self._hscale.draw(rng)
        # borders, newline markup, auto-crop
        ch["border"] = rng.random() < P["borders"]["probability"]
        border_w = uni(*P["borders"]["width"], 0.25) if ch["border"] else 0.0
        border_p = uni(*P["borders"]["padding"], 0.5) if ch["border"] else 0.0
        border_c = _mix(font_color, para_bg, 0.5) if ch["border"] else para_bg
        ch["newline_marker"] = rng.random() < P["newline_markup"]["probability"]
        markers = P["newline_markup"]["markers"]
        markup = rng.choice(markers) if ch["newline_marker"] else "<br/>"
        crop_w = bool(rng.random() < P["auto_crop"]["width"])
        crop_last = bool(rng.random() < P["auto_crop"]["last_page"])
        font_kw = {"font_family": _BUILTIN[font], "font_path": None} if font in _BUILTIN else \
            {"font_family": "sans", "font_path": font}
        ch["font"] = Path(font).name
        config = RenderConfig(
            page_size=(round(w, 2), round(h, 2)), dpi=dpi, margin_x=mx, margin_y=my, **font_kw,
            font_size=font_size, line_height=line_height, horizontal_scale=h_scale, alignment=align, **ind,
            **space, newline_markup=markup, font_color=font_color, page_bg_color=page_bg, para_bg_color=para_bg,
            para_border_color=border_c, border_width=border_w, border_padding=border_p,
            auto_crop_width=crop_w, auto_crop_last_page=crop_last)
        return config, ch

    def sample(self, index: int) -> StyleSample:
        """Sample `index`: the first draw (attempt 0, 1, ...) that breaks no exclusion rule."""
        if not isinstance(index, (int, np.integer)) or index < 0:
            raise ValueError(f"index: {index!r} must be an integer >= 0")
        rules, rejected = self.params["rules"], []
        for attempt in range(int(rules["max_attempts"])):
            config, ch = self.draw(int(index), attempt)
            broken = check_rules(config, rules, self.vision)
            if broken is None:
                return StyleSample(int(index), config, ch, attempt + 1, rejected)
            rejected.append(broken)
            self.rejections[broken] += 1
        raise StyleConfigError(
            f"rules.max_attempts: sample {index} broke an exclusion rule in all {len(rejected)} draws "
            f"({dict(Counter(rejected))}); loosen the distributions or the rules")

    def samples(self, indices) -> list[StyleSample]:
        return [self.sample(i) for i in indices]

    def __call__(self, index: int) -> RenderConfig:
        return self.sample(index).config


def snap(x: float, lo: float, hi: float, step: float) -> float:
    """x (drawn in [lo, hi]) at the nearest multiple of `step` inside [lo, hi] (rounded to 4 decimals), so that a
    range whose ends are not multiples keeps its draws inside it; a range that holds no multiple gives x (rounded
    to 4 decimals, within the range) unsnapped.
    For a range whose ends are multiples this is the nearest multiple of all (the draws of such ranges, the
    defaults', are what they always were)."""
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    if first > last:
        return min(max(round(x, 4), lo), hi)
    return round(min(max(round(x / step), first), last) * step, 4)


def _mix(a, b, t: float) -> str:
    ca, cb = parse_color(a), parse_color(b)
    return color_hex(tuple(round(x * (1 - t) + y * t) for x, y in zip(ca, cb)))


def sample_styles(n: int, seed: int = 0, start: int = 0, config: str | os.PathLike | None = None) -> list[RenderConfig]:
    """RenderConfigs of samples start .. start+n-1 of `seed` (parameters from `config`, else the defaults)."""
    sampler = StyleSampler.from_file(config, seed=seed) if config is not None else StyleSampler(seed=seed)
    return [sampler(i) for i in range(start, start + n)]


__all__ = ["StyleSampler", "StyleSample", "StyleConfigError", "sample_styles", "load_params", "check_rules",
           "contrast_ratio", "build_font_pool", "font_class", "is_italic", "RULES", "DEFAULT_PATH"]
