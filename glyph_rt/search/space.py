"""The search space: RenderConfig as a genome of named genes, with Table 8's ranges.

Ranges and choices come from the style sampler's parameters (glyph_rt/data/styles.yaml or a user's
copy), so the search explores the same space pre-training samples from. A genome is a flat dict
gene -> value (numbers, strings, booleans): what the operators change, what the critic reads and
proposes, and what `to_config` turns into a RenderConfig.

A genome says nothing of the rendering settings that are not genes (snap, tab_size, cr_newline, wrap,
lines_per_paragraph, fallback fonts, frame padding, sub-pixel phases): `to_config` takes them from one base
config (the search's `base` setting: Glyph's published config by default), and a field whose genes are the
base's own takes the base's exact value, as does a page size on a known paper's (or preset's) grid point, so
the base's genome is the base itself (same config hash) and a preset's page size is not rounded.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..render.config import PAPER_SIZES, PRESETS, ConfigError, RenderConfig, color_hex, parse_color
from ..train.styles import StyleSampler, _BUILTIN


@dataclass(frozen=True)
class Gene:
    """One searchable parameter: a number in [lo, hi] (snapped to `step`), a choice, or a flag."""

    name: str
    kind: str  # "num" | "int" | "choice" | "bool" | "colors" (any page/para/font triplet; mutation picks `choices`)
    lo: float = 0.0
    hi: float = 0.0
    step: float = 0.0
    choices: tuple = ()
    help: str = ""

    def __post_init__(self):
        if self.kind == "num" and self.step:  # the range's ends on the step grid (outwards): A3's 841.89 pt is 842
            object.__setattr__(self, "lo", round(math.floor(self.lo / self.step + 1e-9) * self.step, 4))
            object.__setattr__(self, "hi", round(math.ceil(self.hi / self.step - 1e-9) * self.step, 4))

    def snap(self, x: float) -> float:
        if self.kind == "int":
            return int(round(x))
        return round(round(x / self.step) * self.step, 4) if self.step else round(float(x), 4)

    def coerce(self, v):
        """`v` as this gene's type; raises ValueError naming the gene when it cannot be."""
        if self.kind in ("num", "int"):
            if isinstance(v, str):
                try:
                    v = float(v)
                except ValueError:
                    raise ValueError(f"{self.name}: {v!r} is not a number") from None
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{self.name}: {v!r} is not a number")
            return self.snap(v)
        if self.kind == "bool":
            if isinstance(v, bool):
                return v
            if isinstance(v, str) and v.lower() in ("true", "false"):
                return v.lower() == "true"
            raise ValueError(f"{self.name}: {v!r} is not true or false")
        if self.kind == "colors":
            parts = v.split("/") if isinstance(v, str) else []
            try:
                if len(parts) != 3:
                    raise ConfigError("")
                return "/".join(color_hex(parse_color(x.strip())) for x in parts)
            except ConfigError:
                raise ValueError(f"{self.name}: {v!r} is not 'PAGE/PARAGRAPH/FONT' colours (#RRGGBB/#RRGGBB/#RRGGBB)") \
                    from None
        if v not in self.choices:
            raise ValueError(f"{self.name}: {v!r} is not one of {list(self.choices)}")
        return v

    def bound(self, x: float) -> float:
        """`x` clipped to [lo, hi] and snapped to the step grid, staying inside the range."""
        c = self.snap(min(max(x, self.lo), self.hi))
        unit = self.step or 1
        if c > self.hi:
            c = self.snap(c - unit)
        elif c < self.lo:
            c = self.snap(c + unit)
        return c

    def clip(self, v):
        """(value inside the range, whether it had to move)."""
        if self.kind not in ("num", "int"):
            return v, False
        c = self.bound(v)
        return c, c != v and not math.isclose(c, v, abs_tol=1e-9)

    def describe(self) -> str:
        if self.kind in ("num", "int"):
            step = f" step {self.step:g}" if self.step else ""
            return f"{self.name}: {self.kind} in [{self.lo:g}, {self.hi:g}]{step}. {self.help}".strip()
        if self.kind == "bool":
            return f"{self.name}: true/false. {self.help}".strip()
        if self.kind == "colors":
            return f"{self.name}: '#RRGGBB/#RRGGBB/#RRGGBB' (page/paragraph/font; readable contrast), e.g. " \
                   f"{json.dumps(list(self.choices[:4]))}"
        return f"{self.name}: one of {json.dumps(list(self.choices))}. {self.help}".strip()


def _colors(c: RenderConfig) -> str:
    return "/".join(color_hex(parse_color(x)) for x in (c.page_bg_color, c.para_bg_color, c.font_color))


class SearchSpace:
    """Genes and their ranges, drawn from a StyleSampler's parameters (Table 8). `base`: the config whose
    settings that are not genes every genome's config takes (default: the `glyph` preset, Glyph's published
    config: snap 0, tab_size 0, cr_newline False, as its dashed-key export is read back)."""

    def __init__(self, sampler: StyleSampler | None = None, base: RenderConfig | None = None):
        self.sampler = sampler or StyleSampler()
        self.base = base if base is not None else RenderConfig.preset("glyph")
        P = self.sampler.params
        dpis = [v for m in P["dpi"].values() for v in (m.get("range") or m.get("values"))]
        widths = [*P["page_size"]["aspect"]["width"], *P["page_size"]["random"]["width"]]
        self.papers = {k.upper(): PAPER_SIZES[k.upper()] for k in P["page_size"]["paper"]["values"]}
        widths += [w for w, _ in self.papers.values()]
        aspects = [lo for lo, _, _ in P["page_size"]["random"]["segments"]] + \
                  [hi for _, hi, _ in P["page_size"]["random"]["segments"]] + \
                  [float(a) for a in P["page_size"]["aspect"]["values"]]
        aspects += [h / w for w, h in self.papers.values()]
        self.fonts = {}  # file name -> path
        for paths in self.sampler.pool.fonts.values():
            for p in paths:
                self.fonts.setdefault(Path(p).name, p)
        triplets = [tuple(t) for name, m in P["colors"].items() if name != "presets" for t in m["triplets"]]
        for name in P["colors"].get("presets", {}).get("names", []):
            pr = RenderConfig.preset(name)
            triplets.append((pr.page_bg_color, pr.para_bg_color, pr.font_color))
        colors = []
        for t in triplets:
            s = "/".join(color_hex(parse_color(x)) for x in t)
            if s not in colors:
                colors.append(s)
        fs, lh = P["font_size"], P["line_height_delta"]
        em_hi = max(m["em"][1] for k, m in P["indent"].items() if k != "none")
        space_hi = max(m["range"][1] for m in P["spacing"].values())
        b = P["borders"]
        markers = ["<br/>", *P["newline_markup"]["markers"]]
        hs = sorted(float(x) for x in P["h_scale"]["values"])
        self.em_hi = em_hi
        genes = [
            Gene("dpi", "int", min(dpis), max(dpis), help="dots per inch"),
            Gene("page_width", "num", min(widths), max(widths), 0.5, help="points"),
            Gene("page_aspect", "num", min(aspects), max(aspects), 0.001, help="height / width"),
            Gene("font", "choice", choices=tuple(sorted(self.fonts)), help="font file"),
            Gene("font_size", "num", *fs["range"], fs.get("step", 0) or 0.5, help="points"),
            Gene("line_height_delta", "num", *lh["range"], lh.get("step", 0) or 0.5,
                 help="line_height - font_size, points"),
            Gene("alignment", "choice", choices=tuple(P["alignment"]["values"])),
            Gene("margin_x", "num", *P["margins"]["range"], 0.5, help="points"),
            Gene("margin_y", "num", *P["margins"]["range"], 0.5, help="points"),
            Gene("first_line_indent", "num", 0, em_hi, 0.05, help="em"),
            Gene("block_indent", "num", 0, em_hi, 0.05, help="left and right indent, em"),
            Gene("hanging_indent", "num", 0, em_hi, 0.05, help="em"),
            Gene("space_before", "num", 0, space_hi, 0.5, help="points"),
            Gene("space_after", "num", 0, space_hi, 0.5, help="points"),
            Gene("horizontal_scale", "num", hs[0], hs[-1], 0.05),
            Gene("colors", "colors", choices=tuple(colors)),
            Gene("border_width", "num", 0, b["width"][1], 0.25, help="points, 0 = none"),
            Gene("border_padding", "num", 0, b["padding"][1], 0.5, help="points"),
            Gene("newline_markup", "choice", choices=tuple(markers)),
            Gene("auto_crop_width", "bool"),
            Gene("auto_crop_last_page", "bool"),
        ]
        self.genes = {g.name: g for g in genes}
        self.rules = P["rules"]
        # the base's genes and the fields they give: a field a genome gives as the base's genes give it is the base's
        self._base_fields = self._fields(self.genome(self.base), {"font_family": self.base.font_family,
                                                                  "font_path": self.base.font_path})
        # a page size on the grid point of the base's, a preset's or a paper's size is that size, unrounded
        self._pages: dict[tuple, tuple] = {}
        for size in [self.base.page_size, *(RenderConfig.preset(n).page_size for n in PRESETS),
                     *PAPER_SIZES.values()]:
            w, h = (float(x) for x in size)
            key = self._page(self.genes["page_width"].snap(w), self.genes["page_aspect"].snap(h / w))
            self._pages.setdefault(key, (w, h))

    # ------------------------------------------------------------- genome <-> RenderConfig
    def genome(self, config: RenderConfig) -> dict:
        """The genes of `config`, numbers on the genes' grid (not clipped to the ranges)."""
        c = config
        fs = float(c.font_size)
        font = Path(c.font_path).name if c.font_path else Path(_font_of_family(c.font_family)).name
        em = lambda x: self.genes["first_line_indent"].snap(x / fs)  # noqa: E731 (indents in em, on the gene grid)
        g = {
            "dpi": int(round(c.dpi)), "page_width": float(c.page_size[0]),
            "page_aspect": c.page_size[1] / c.page_size[0], "font": font, "font_size": fs,
            "line_height_delta": c.line_height - fs, "alignment": c.alignment,
            "margin_x": float(c.margin_x), "margin_y": float(c.margin_y),
            "first_line_indent": em(c.first_line_indent), "block_indent": em(max(c.left_indent, c.right_indent)),
            "hanging_indent": em(c.hanging_indent),
            "space_before": float(c.space_before), "space_after": float(c.space_after),
            "horizontal_scale": float(c.horizontal_scale), "colors": _colors(c),
            "border_width": float(c.border_width), "border_padding": float(c.border_padding),
            "newline_markup": c.newline_markup, "auto_crop_width": bool(c.auto_crop_width),
            "auto_crop_last_page": bool(c.auto_crop_last_page),
        }
        for name, gene in self.genes.items():
            if gene.kind in ("num", "int"):
                g[name] = float(gene.snap(g[name])) if gene.kind == "num" else gene.snap(g[name])
        return g

    @staticmethod
    def _page(w: float, aspect: float) -> tuple:
        return round(w, 2), round(w * aspect, 2)

    def _fields(self, g: dict, font_kw: dict | None = None) -> dict:
        """The RenderConfig fields the genes `g` give (the others are the base's); `font_kw`: the font fields, in
        place of the font gene's."""
        fs = float(g["font_size"])
        if font_kw is None:
            path = self.fonts.get(g["font"])
            if path is None:
                raise ConfigError(f"font: {g['font']!r} is not in the font pool")
            font_kw = {"font_family": _BUILTIN[path], "font_path": None} if path in _BUILTIN else \
                {"font_family": "sans", "font_path": path}
        page_bg, para_bg, font_color = g["colors"].split("/")
        border = g["border_width"] > 0
        return dict(
            page_size=self._page(float(g["page_width"]), g["page_aspect"]), dpi=int(g["dpi"]), **font_kw,
            margin_x=g["margin_x"], margin_y=g["margin_y"], font_size=fs,
            line_height=round(fs + g["line_height_delta"], 4), alignment=g["alignment"],
            first_line_indent=round(g["first_line_indent"] * fs, 4),
            left_indent=round(g["block_indent"] * fs, 4), right_indent=round(g["block_indent"] * fs, 4),
            hanging_indent=round(g["hanging_indent"] * fs, 4), space_before=g["space_before"],
            space_after=g["space_after"], horizontal_scale=g["horizontal_scale"], font_color=font_color,
            page_bg_color=page_bg, para_bg_color=para_bg,
            para_border_color=_mix(font_color, para_bg) if border else para_bg,
            border_width=g["border_width"] if border else 0.0, border_padding=g["border_padding"] if border else 0.0,
            newline_markup=g["newline_markup"], auto_crop_width=g["auto_crop_width"],
            auto_crop_last_page=g["auto_crop_last_page"])

    def to_config(self, g: dict) -> RenderConfig:
        """The config of genome `g`: the base config with the fields the genes give. A field the genes give as the
        base's genes give it is the base's own value (so the base's genome is the base: same hash), and a page
        size on the grid point of the base's, a preset's or a paper's size is that exact size (Glyph's 595 x 842 pt,
        not 595 x 841.93)."""
        kw = self._fields(g)
        page = kw.pop("page_size")
        kw = {k: getattr(self.base, k) if v == self._base_fields[k] else v for k, v in kw.items()}
        return dataclasses.replace(self.base, page_size=self._pages.get(page, page), **kw)

    def config_of(self, record: dict) -> RenderConfig:
        """The RenderConfig an eval record scored: a preset's own, else its genome's."""
        if str(record.get("proposer", "")).startswith("preset:"):
            return RenderConfig.from_dict(record["config"])
        return self.to_config(record["genome"])

    def describe(self) -> str:
        return "\n".join(f"- {g.describe()}" for g in self.genes.values())


def _font_of_family(family: str) -> str:
    from ..render.fonts import BUILTIN_FONTS

    return str(BUILTIN_FONTS[family])


def _mix(a: str, b: str, t: float = 0.5) -> str:
    ca, cb = parse_color(a), parse_color(b)
    return color_hex(tuple(round(x * (1 - t) + y * t) for x, y in zip(ca, cb)))


def config_hash(config: RenderConfig) -> str:
    """A stable 16-hex-digit hash of every field of `config` (font paths by file name)."""
    d = config.to_dict()
    if d.get("font_path"):
        d["font_path"] = Path(d["font_path"]).name
    d["fallback_fonts"] = [Path(p).name for p in d.get("fallback_fonts") or []]
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
