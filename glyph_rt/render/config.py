"""RenderConfig: every rendering parameter of Glyph (paper, Table 8), in points.

Two JSON formats are read and written:
- Glyph's own (dashed keys, ``"page-size": "595,842"``, ``"alignment": "LEFT"``), as in its
  published ``config_en.json``; loading one reproduces Glyph's pages (no canvas snapping).
- glyph_rt's (the dataclass field names), which adds what Glyph lacks (snapping, fallbacks).
"""
from __future__ import annotations

import dataclasses
import html
import json
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

MM = 72.0 / 25.4
PAPER_SIZES: dict[str, tuple[float, float]] = {
    "A3": (297 * MM, 420 * MM),
    "A4": (210 * MM, 297 * MM),
    "A5": (148 * MM, 210 * MM),
    "B4": (250 * MM, 353 * MM),
    "B5": (176 * MM, 250 * MM),
    "LETTER": (612.0, 792.0),
    "LEGAL": (612.0, 1008.0),
    "TABLOID": (792.0, 1224.0),
}
ALIGNMENTS = ("left", "center", "right", "justify")
WRAPS = ("auto", "word", "cjk")
FAMILIES = ("sans", "serif", "mono")
DPI_RANGE = (30, 600)
FONT_SIZE_RANGE = (1.0, 200.0)
MAX_PAGE_PIXELS_SIDE = 16384
MIN_PAGE_PIXELS_SIDE = 8  # a page smaller than this holds no legible glyph
MAX_LENGTH_PT = 100_000.0  # bound on every length field (points), far past any page
MAX_GLYPH_BYTES = 16 << 20  # atlas bytes of one glyph (all sub-pixel phases)
# newline_markup: the visible marker is drawn after every source line, so its length multiplies the layout's
# glyphs (Glyph's own markers are '<br/>' and '<font color="#FF0000"> \\n </font>': 4 visible characters)
MAX_NEWLINE_MARKER_CHARS = 64  # visible marker text
MAX_NEWLINE_MARKUP_CHARS = 1024  # the markup as written, tags included
INT32_MAX = (1 << 31) - 1
BOOL_FIELDS = ("auto_cjk_fallback", "auto_crop_width", "auto_crop_last_page", "cr_newline")
REPORTLAB_FRAME_PADDING = 6.0

_HEX = re.compile(r"^(?:#|0x)?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
_NAMED = {"white": "#FFFFFF", "black": "#000000", "red": "#FF0000", "green": "#008000",
          "blue": "#0000FF", "gray": "#808080", "grey": "#808080"}


class ConfigError(ValueError):
    """A rendering parameter is invalid; the message names the field and the value."""


def _show(v: Any) -> str:
    """A field's value for an error message: its repr, with an integer too long to print (or to read) described
    and a long string cut (a config may hold a 400-digit integer or a megabyte of markup)."""
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 256:
        return f"{'a negative' if v < 0 else 'an'} integer of about {int(v.bit_length() * math.log10(2)) + 1} digits"
    if isinstance(v, (tuple, list)) and len(v) <= 8:
        inner = ", ".join(_show(x) for x in v)
        return f"({inner}{',' if len(v) == 1 else ''})" if isinstance(v, tuple) else f"[{inner}]"
    r = repr(v)
    return r if len(r) <= 80 else f"{r[:60]}... ({len(v) if isinstance(v, (str, bytes)) else len(r)} characters)"


def parse_color(value: Any, name: str = "color") -> tuple[int, int, int]:
    """'#RRGGBB', '#RGB', '0xRRGGBB', a basic color name, or an (r, g, b) triple -> (r, g, b)."""
    if isinstance(value, (tuple, list)) and len(value) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in value):
        return tuple(value)  # type: ignore[return-value]
    if isinstance(value, str):
        s = _NAMED.get(value.strip().lower(), value.strip())
        m = _HEX.match(s)
        if m:
            h = m.group(1)
            if len(h) == 3:
                h = "".join(c * 2 for c in h)
            return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
    raise ConfigError(f"{name}: {value!r} is not a color (use '#RRGGBB')")


def color_hex(rgb: tuple[int, int, int]) -> str:
    return "#%02X%02X%02X" % tuple(rgb)


def parse_page_size(value: Any) -> tuple[float, float]:
    """'A4' / 'letter' / '595,842' / (w, h) / 'aspect:1.414' (A4 width) / 'aspect:1.5@500' -> points."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"page_size: {_show(value)} must be two numbers (points)")
        try:
            w, h = float(value[0]), float(value[1])
        except OverflowError:  # an integer past float's range (over 1e308)
            raise ConfigError(f"page_size: {_show(value)} is out of range; give two positive numbers (points)") \
                from None
    elif isinstance(value, str):
        s = value.strip()
        if s.upper() in PAPER_SIZES:
            return PAPER_SIZES[s.upper()]
        m = re.match(r"^aspect:\s*([0-9.]+)\s*(?:@\s*([0-9.]+))?$", s, re.I)
        if m:
            try:
                ratio = float(m.group(1))
                w = float(m.group(2)) if m.group(2) else PAPER_SIZES["A4"][0]
            except ValueError:
                raise ConfigError(
                    f"page_size: {value!r} is not 'aspect:R' (height / width, e.g. 'aspect:1.414') or 'aspect:R@W' "
                    "(W: the width in points, e.g. 'aspect:1.5@500')"
                ) from None
            if not (0.05 <= ratio <= 20):
                raise ConfigError(f"page_size: aspect ratio {ratio} is outside 0.05..20")
            h = w * ratio
        else:
            parts = [p for p in re.split(r"[,x ]+", s.lower()) if p]
            if len(parts) != 2:
                raise ConfigError(
                    f"page_size: {value!r} is not a paper name ({', '.join(PAPER_SIZES)}), 'W,H' in points, "
                    "or 'aspect:R'"
                )
            try:
                w, h = float(parts[0]), float(parts[1])
            except ValueError:
                raise ConfigError(f"page_size: {value!r} is not 'W,H' in points") from None
    else:
        raise ConfigError(f"page_size: {_show(value)} is not a page size")
    if not (w > 0 and h > 0 and math.isfinite(w) and math.isfinite(h)):
        raise ConfigError(f"page_size: {_show(value)} must be two positive numbers")
    return w, h


@dataclass
class NewlineMarkup:
    """Parsed newline markup: a plain line break, or visible marker text with a color."""

    is_break: bool
    text: str = ""
    color: tuple[int, int, int] | None = None

    @staticmethod
    def parse(markup: str) -> "NewlineMarkup":
        if not isinstance(markup, str):
            raise ConfigError(f"newline_markup: {_show(markup)} is not a string (use '<br/>' or marker text)")
        if len(markup) > MAX_NEWLINE_MARKUP_CHARS:  # before any regex reads it
            raise ConfigError(f"newline_markup: {_show(markup)} is over the limit of {MAX_NEWLINE_MARKUP_CHARS} "
                              "characters (use '<br/>' or a short marker)")
        if re.search(r"<\s*br\s*/?\s*>", markup, re.I):
            return NewlineMarkup(True)
        m = re.search(r"""color\s*=\s*["']?([#0-9A-Za-z]+)""", markup)
        color = parse_color(m.group(1), "newline_markup color") if m else None
        # Glyph's configs spell the visible marker "\\\\n" in JSON: a backslash and an n. A real newline (what "\\n"
        # in a JSON string gives, or &#10;) means the same visible marker.
        text = html.unescape(re.sub(r"<[^>]*>", "", markup)).replace("\n", "\\n")
        if not text.strip():
            raise ConfigError(f"newline_markup: {markup!r} has no visible text and is not <br/>")
        if len(text) > MAX_NEWLINE_MARKER_CHARS:  # drawn after every line: its length multiplies the glyphs
            raise ConfigError(f"newline_markup: its visible marker text is {len(text)} characters, over the limit of "
                              f"{MAX_NEWLINE_MARKER_CHARS} (it is drawn after every line; use '<br/>' or a short "
                              "marker such as ' \\n ')")
        return NewlineMarkup(False, text, color)


@dataclass
class RenderConfig:
    # page
    page_size: tuple[float, float] = (595.0, 842.0)  # points; Glyph's "595,842"
    dpi: float = 72
    margin_x: float = 10
    margin_y: float = 10
    # font
    font_family: str = "sans"  # built-in family, used when font_path is None
    font_path: str | None = None
    fallback_fonts: list[str] = field(default_factory=list)
    auto_cjk_fallback: bool = True  # a CJK font, then installed fonts by coverage, for characters the fonts lack
    font_size: float = 9
    line_height: float = 10
    horizontal_scale: float = 1.0
    # paragraph
    alignment: str = "left"
    first_line_indent: float = 0
    left_indent: float = 0
    right_indent: float = 0
    hanging_indent: float = 0  # lines after the first are indented by this much more
    space_before: float = 0
    space_after: float = 0
    lines_per_paragraph: int = 30  # Glyph groups this many source lines per paragraph
    newline_markup: str = "<br/>"
    wrap: str = "auto"  # auto: reportlab's CJK wrap when the text has CJK ideographs (as Glyph)
    tab_size: int = 4  # a tab is one kept space this wide; 0: breaking whitespace, as in Glyph (reportlab)
    cr_newline: bool = True  # a lone "\r" ends a line; False: it is breaking whitespace, as in Glyph
    # colors and borders
    font_color: str = "#000000"
    page_bg_color: str = "#FFFFFF"
    para_bg_color: str = "#FFFFFF"
    para_border_color: str = "#FFFFFF"
    border_width: float = 0
    border_padding: float = 0
    # canvas
    auto_crop_width: bool = True
    auto_crop_last_page: bool = True
    snap: int = 28  # page pixel sizes become multiples of this (0 = off); 28 suits GLM-4.1V/Qwen2.5-VL
    frame_padding: float = REPORTLAB_FRAME_PADDING  # reportlab's Frame padding inside the margins
    subpixel_phases: int = 4

    def __post_init__(self):
        self.page_size = parse_page_size(self.page_size)
        if isinstance(self.alignment, str):
            self.alignment = self.alignment.strip().lower()
        if self.font_path is not None:
            self.font_path = str(self.font_path)
        if isinstance(self.fallback_fonts, (str, bytes, os.PathLike)):
            raise ConfigError(f"fallback_fonts: {self.fallback_fonts!r} is one path; give a list of font paths")
        if not isinstance(self.fallback_fonts, (list, tuple, type(None))):
            raise ConfigError(f"fallback_fonts: {self.fallback_fonts!r} is not a list of font paths")
        self.fallback_fonts = [str(p) for p in (self.fallback_fonts or [])]

    # ----------------------------------------------------------------- derived sizes
    @property
    def drawn_pixels(self) -> tuple[int, int]:
        """(width, height) in pixels of a page as drawn, before the horizontal scale (pdftoppm's page)."""
        w = math.ceil(self.page_size[0] * self.dpi / 72 - 1e-6)
        h = math.ceil(self.page_size[1] * self.dpi / 72 - 1e-6)
        return w, h

    @property
    def page_pixels(self) -> tuple[int, int]:
        """(width, height) in pixels of a rendered page before cropping and snapping.

        Width includes the horizontal scale, applied as Glyph does: the drawn page resized to int(width * scale)."""
        w, h = self.drawn_pixels
        return int(w * self.horizontal_scale), h

    @property
    def text_width(self) -> float:
        return (self.page_size[0] - 2 * self.margin_x - 2 * self.frame_padding - self.left_indent
                - self.right_indent - max(self.hanging_indent, 0))

    @property
    def text_height(self) -> float:
        return self.page_size[1] - 2 * self.margin_y - 2 * self.frame_padding

    # ----------------------------------------------------------------- validation
    def validate(self) -> "RenderConfig":
        """Checks every field and the paper's exclusion rules; raises ConfigError naming the field."""

        def num(name, lo=None, hi=None, lo_open=False):
            v = getattr(self, name)
            # an int is compared as it is: float() of one past 1e308 would raise OverflowError
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (isinstance(v, int) or math.isfinite(v)):
                raise ConfigError(f"{name}: {_show(v)} is not a number")
            if lo is not None and (v <= lo if lo_open else v < lo):
                raise ConfigError(f"{name}: {_show(v)} must be {'>' if lo_open else '>='} {lo}")
            if hi is not None and v > hi:
                raise ConfigError(f"{name}: {_show(v)} must be <= {hi}")

        num("dpi", *DPI_RANGE)
        num("font_size", *FONT_SIZE_RANGE)
        num("line_height", 0, MAX_LENGTH_PT, lo_open=True)
        for name in ("margin_x", "margin_y", "space_before", "space_after", "border_width",
                     "border_padding", "frame_padding", "left_indent", "right_indent", "hanging_indent"):
            num(name, 0, MAX_LENGTH_PT)
        # the first line may reach into the margin (an outdent), never off the page
        num("first_line_indent", hi=MAX_LENGTH_PT)
        outdent = self.margin_x + self.frame_padding + self.left_indent
        if self.first_line_indent < -outdent:
            raise ConfigError(
                f"first_line_indent: {_show(self.first_line_indent)} would start the first line off the page; allowed "
                f">= -{outdent:g} (-(margin_x + frame_padding + left_indent))"
            )
        num("horizontal_scale", 0.1, 4.0)
        for name in BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: {getattr(self, name)!r} is not true or false (use a JSON boolean)")
        if self.line_height < self.font_size:
            raise ConfigError(
                f"line_height: {self.line_height} is smaller than font_size {self.font_size} (lines would overlap)"
            )
        if self.alignment not in ALIGNMENTS:
            raise ConfigError(f"alignment: {self.alignment!r} is not one of {', '.join(ALIGNMENTS)}")
        if self.wrap not in WRAPS:
            raise ConfigError(f"wrap: {self.wrap!r} is not one of {', '.join(WRAPS)}")
        if self.font_path is None and self.font_family not in FAMILIES:
            raise ConfigError(f"font_family: {self.font_family!r} is not one of {', '.join(FAMILIES)} (or set font_path)")

        def integer(name, lo, hi, note=""):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ConfigError(f"{name}: {_show(v)} must be an integer in {lo}..{hi}{note}")

        integer("lines_per_paragraph", 1, INT32_MAX)
        integer("tab_size", 0, 16, " (0 = a tab is breaking whitespace, as in Glyph)")
        integer("snap", 0, 1024, " (0 = off)")
        if not isinstance(self.subpixel_phases, int) or isinstance(self.subpixel_phases, bool) \
                or self.subpixel_phases not in (1, 2, 4, 8):
            raise ConfigError(f"subpixel_phases: {_show(self.subpixel_phases)} must be 1, 2, 4 or 8")
        for name in ("font_color", "page_bg_color", "para_bg_color", "para_border_color"):
            parse_color(getattr(self, name), name)
        NewlineMarkup.parse(self.newline_markup)
        # float first: no overflow; a page is drawn at full width, then resized by the horizontal scale
        w_f = self.page_size[0] * self.dpi / 72 * max(1.0, self.horizontal_scale)
        h_f = self.page_size[1] * self.dpi / 72
        if max(w_f, h_f) > MAX_PAGE_PIXELS_SIDE:
            scaled = self.horizontal_scale > 1
            raise ConfigError(
                f"page_size/dpi{'/horizontal_scale' if scaled else ''}: a {self.page_size[0]:.0f}x"
                f"{self.page_size[1]:.0f} pt page at {self.dpi} dpi is {w_f:.0f}x{h_f:.0f} px"
                f"{f' (resized by horizontal_scale {self.horizontal_scale})' if scaled else ' (as drawn)'}, over the "
                f"{MAX_PAGE_PIXELS_SIDE} px limit per side"
            )
        w_px, h_px = self.page_pixels
        if min(w_px, h_px) < MIN_PAGE_PIXELS_SIDE:
            raise ConfigError(
                f"page_size/dpi/horizontal_scale: a {self.page_size[0]:g}x{self.page_size[1]:g} pt page at "
                f"{self.dpi} dpi and horizontal_scale {self.horizontal_scale} is {w_px}x{h_px} px, under "
                f"{MIN_PAGE_PIXELS_SIDE} px per side; enlarge page_size or dpi"
            )
        font_px = self.font_size * self.dpi / 72
        if font_px < 1:
            raise ConfigError(f"font_size/dpi: font_size {self.font_size} pt at {self.dpi} dpi is {font_px:.2f} px, "
                              "under 1 px; raise font_size or dpi")
        glyph_bytes = glyph_bytes_bound(font_px, self.subpixel_phases)
        if glyph_bytes > MAX_GLYPH_BYTES:
            raise ConfigError(
                f"font_size/dpi/subpixel_phases: one glyph of font_size {self.font_size} pt at {self.dpi} dpi with "
                f"{self.subpixel_phases} sub-pixel phases takes up to {glyph_bytes / 2**20:.0f} MiB in the atlas, over "
                f"the {MAX_GLYPH_BYTES >> 20} MiB limit; lower subpixel_phases, dpi or font_size"
            )
        first_w = self.text_width - max(self.first_line_indent - max(self.hanging_indent, 0), 0)
        if self.text_width < self.font_size or first_w < self.font_size:
            raise ConfigError(
                f"margin_x/indents: the text area is {min(self.text_width, first_w):.1f} pt wide on a "
                f"{self.page_size[0]:.1f} pt page, less than one font_size ({self.font_size}); reduce margin_x "
                "or the indents"
            )
        if self.text_height < self.line_height:
            raise ConfigError(
                f"margin_y: the text area is {self.text_height:.1f} pt high, less than one line_height "
                f"({self.line_height}); reduce margin_y"
            )
        self._check_aspect()
        if self.font_path:
            _check_font_file(self.font_path, "font_path")
        for p in self.fallback_fonts:
            _check_font_file(p, "fallback_fonts")
        return self

    def _check_aspect(self) -> None:
        """Refuses a canvas past the 200:1 the vision models' image processors accept, before any page is drawn
        (a crop never passes it: raster.final_sizes widens such a page)."""
        from .raster import canvas_size
        from .tokens import MAX_ASPECT

        w, h = canvas_size(self)
        if max(w, h) > MAX_ASPECT * min(w, h):
            raise ConfigError(
                f"page_size/dpi/horizontal_scale: a page is {w}x{h} px (aspect ratio {max(w, h) / min(w, h):.0f}), "
                f"over the {MAX_ASPECT}:1 that GLM-4.1V's and Qwen2.5-VL's image processors accept; choose a "
                "page_size closer to square")

    # ----------------------------------------------------------------- presets
    @classmethod
    def preset(cls, name: str, **overrides) -> "RenderConfig":
        """A named preset: 'glyph' (Glyph's published English config) or one of the paper's themes."""
        key = name.strip().lower().replace("-", "_")
        if key not in PRESETS:
            raise ConfigError(f"preset: {name!r} is unknown; choose from {', '.join(PRESETS)}")
        return cls(**{**PRESETS[key], **overrides})

    # ----------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["page_size"] = list(self.page_size)
        return d

    @classmethod
    def from_dict(cls, d: dict, base_dir: str | os.PathLike | None = None) -> "RenderConfig":
        """Reads glyph_rt's format, or Glyph's when the keys use dashes."""
        if not isinstance(d, dict):
            raise ConfigError(f"config: expected a JSON object, got {type(d).__name__}")
        if any("-" in k for k in d):
            return cls.from_glyph_dict(d, base_dir)
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"config: unknown key(s) {', '.join(map(repr, unknown))}")
        d = dict(d)
        for k in ("font_path",):
            if d.get(k) and base_dir is not None:
                d[k] = _resolve(d[k], base_dir)
        if isinstance(d.get("fallback_fonts"), (list, tuple)) and base_dir is not None:
            d["fallback_fonts"] = [_resolve(p, base_dir) for p in d["fallback_fonts"]]
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"config: {e}") from None

    @classmethod
    def from_glyph_dict(cls, d: dict, base_dir: str | os.PathLike | None = None) -> "RenderConfig":
        """Glyph's dashed-key format. Unset keys take Glyph's renderer defaults, not glyph_rt's."""
        kw: dict[str, Any] = {**GLYPH_RENDERER_DEFAULTS, **glyph_fields(d, base_dir)}
        if kw.get("line_height") is None:
            kw["line_height"] = _font_size_plus_1(kw.get("font_size", 9))  # Glyph: line-height or font-size + 1
        return cls(**kw)

    def with_glyph_overrides(self, d: dict, base_dir: str | os.PathLike | None = None) -> "RenderConfig":
        """This config with the keys of a Glyph dashed-key dict (a row's own config in Glyph's evaluation data)
        in place of its own; a font-size without a line-height brings line-height font-size + 1, as Glyph's
        renderer takes it."""
        kw = glyph_fields(d, base_dir)
        if "font_size" in kw and kw.get("line_height") is None:
            kw["line_height"] = _font_size_plus_1(kw["font_size"])
        elif kw.get("line_height", 0) is None:
            del kw["line_height"]
        try:
            return dataclasses.replace(self, **kw).validate()
        except TypeError as e:
            raise ConfigError(f"config: {e}") from None

    def to_glyph_dict(self, font_path: str | None = None) -> dict:
        """Glyph's format. Fields Glyph lacks (snap, fallbacks, hanging indent...) are folded or dropped (tab_size
        and cr_newline too: a Glyph config read back takes Glyph's whitespace, tab_size 0 and cr_newline False)."""
        from .fonts import resolve_fonts

        inv = {v: k for k, v in GLYPH_KEYS.items()}
        out: dict[str, Any] = {}
        for name, gk in inv.items():
            v = getattr(self, name)
            if name == "page_size":
                v = f"{_fmt(v[0])},{_fmt(v[1])}"
            elif name == "alignment":
                v = v.upper()
            elif name == "font_path":
                v = font_path or self.font_path or resolve_fonts(self)[0]
            elif name.endswith("color"):
                v = color_hex(parse_color(v, name))
            out[gk] = v
        out["left-indent"] = self.left_indent + self.hanging_indent
        out["first-line-indent"] = self.first_line_indent - self.hanging_indent
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RenderConfig":
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config: file {str(p)!r} does not exist")
        try:
            d = json.loads(p.read_text(encoding="utf-8-sig"))  # a BOM (as some editors save) is dropped
        except json.JSONDecodeError as e:
            raise ConfigError(f"config: {str(p)!r} is not valid JSON: {e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config: {str(p)!r} is not UTF-8 text (invalid byte at offset {e.start}); "
                              "save it as UTF-8") from None
        except OSError as e:
            raise ConfigError(f"config: {str(p)!r} cannot be read: {e.strerror}") from None
        return cls.from_dict(d, base_dir=p.parent)

    def save(self, path: str | os.PathLike, glyph_format: bool = False) -> None:
        """Writes the config as JSON (Glyph's dashed keys with `glyph_format`). A relative font path, relative to
        the working directory, is written absolute: `load` reads relative paths against the file's folder."""
        d = self.to_glyph_dict() if glyph_format else self.to_dict()
        for k in ("font_path", "font-path"):
            if d.get(k):
                d[k] = _absolute(d[k])
        if d.get("fallback_fonts"):
            d["fallback_fonts"] = [_absolute(p) for p in d["fallback_fonts"]]
        Path(path).write_text(json.dumps(d, indent=2) + "\n", encoding="utf-8")


def _font_size_plus_1(font_size: Any) -> float:
    """Glyph's line height when a config gives none: font-size + 1, or the config's error naming font_size."""
    try:
        return float(font_size) + 1
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"font_size: {_show(font_size)} is not a number within range") from None


def glyph_bytes_bound(font_px: float, phases: int) -> int:
    """Upper bound of the atlas bytes of one glyph: a bitmap of 1.5 em x 1.5 em per phase (drawn at full width:
    the horizontal scale resizes the page)."""
    side = math.ceil(1.5 * font_px) + 2
    return (side + 2) * side * phases


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _absolute(p: str) -> str:
    """A font path as `_resolve` reads it back from any folder: absolute, or as given when it starts with ~."""
    q = Path(os.path.expanduser(str(p)))
    return str(p) if q.is_absolute() else os.path.abspath(q)


def _resolve(p: str, base_dir) -> str:
    q = Path(os.path.expanduser(str(p)))
    return str(q if q.is_absolute() else (Path(base_dir) / q))


def _check_font_file(path: str, field_name: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{field_name}: {path!r} does not exist")
    try:
        with open(p, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise ConfigError(f"{field_name}: {path!r} cannot be read: {e}") from None
    if head not in (b"\x00\x01\x00\x00", b"OTTO", b"true", b"ttcf"):
        raise ConfigError(f"{field_name}: {path!r} is not a TrueType/OpenType font file")


GLYPH_KEYS = {  # Glyph's dashed key -> RenderConfig field
    "page-size": "page_size", "dpi": "dpi", "margin-x": "margin_x", "margin-y": "margin_y",
    "font-path": "font_path", "font-size": "font_size", "line-height": "line_height",
    "font-color": "font_color", "alignment": "alignment", "horizontal-scale": "horizontal_scale",
    "first-line-indent": "first_line_indent", "left-indent": "left_indent", "right-indent": "right_indent",
    "space-after": "space_after", "space-before": "space_before", "border-width": "border_width",
    "border-padding": "border_padding", "page-bg-color": "page_bg_color", "para-bg-color": "para_bg_color",
    "para-border-color": "para_border_color", "auto-crop-width": "auto_crop_width",
    "auto-crop-last-page": "auto_crop_last_page", "newline-markup": "newline_markup",
}


def glyph_fields(d: dict, base_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """RenderConfig field values of a Glyph dashed-key dict (unknown keys and alignments raise ConfigError naming
    them; an empty line-height is None)."""
    if not isinstance(d, dict):
        raise ConfigError(f"config: expected a JSON object of Glyph's keys, got {type(d).__name__}")
    unknown = sorted(set(d) - set(GLYPH_KEYS))
    if unknown:
        raise ConfigError(f"config: unknown Glyph key(s) {', '.join(map(repr, unknown))}; known: {', '.join(GLYPH_KEYS)}")
    kw: dict[str, Any] = {}
    for gk, v in d.items():
        name = GLYPH_KEYS[gk]
        if name == "alignment" and isinstance(v, str):
            v = v.strip().lower()
            if v not in ALIGNMENTS:
                raise ConfigError(f"alignment: {d[gk]!r} is not one of LEFT, CENTER, RIGHT, JUSTIFY")
        if name == "font_path" and v:
            v = _resolve(v, base_dir) if base_dir is not None else str(v)
        if name == "line_height" and not v:
            v = None
        kw[name] = v
    return kw


# What Glyph's renderer uses for keys a config leaves out.
GLYPH_RENDERER_DEFAULTS: dict[str, Any] = {
    "page_size": PAPER_SIZES["A4"], "margin_x": 20, "margin_y": 20, "font_size": 9, "line_height": None,
    "alignment": "justify", "auto_crop_width": False, "auto_crop_last_page": False, "snap": 0,
    "dpi": 72, "tab_size": 0, "cr_newline": False,
}
GLYPH_CONFIG_EN: dict[str, Any] = {  # Glyph's published config_en.json (its font is Verdana)
    "page-size": "595,842", "dpi": 72, "margin-x": 10, "margin-y": 10, "font-size": 9,
    "line-height": 10, "font-color": "#000000", "alignment": "LEFT", "horizontal-scale": 1.0,
    "first-line-indent": 0, "left-indent": 0, "right-indent": 0, "space-after": 0, "space-before": 0,
    "border-width": 0, "border-padding": 0, "page-bg-color": "#FFFFFF", "para-bg-color": "#FFFFFF",
    "auto-crop-width": True, "auto-crop-last-page": True,
}

# Every preset stays inside the paper's style space (Table 8) and compresses prose at least 1.5x
# (tests/test_presets.py measures it on the built-in sample with Qwen's tokenizer).
PRESETS: dict[str, dict[str, Any]] = {
    # Glyph's published English config, with the built-in sans (metric-close to Verdana) unless a
    # font_path is given; exact Glyph pages (no snapping; tabs and "\r" are whitespace, as Glyph's).
    "glyph": {"snap": 0, "tab_size": 0, "cr_newline": False},
    "document_style": {"font_family": "serif", "font_size": 9, "line_height": 11, "alignment": "justify",
                       "margin_x": 20, "margin_y": 24, "first_line_indent": 12},
    "web_style": {"font_family": "sans", "font_size": 9, "line_height": 11, "alignment": "left",
                  "page_bg_color": "#F7F7F9", "para_bg_color": "#FFFFFF", "font_color": "#222222",
                  "margin_x": 16, "margin_y": 16, "space_after": 4},
    "dark_mode": {"page_bg_color": "#1E1E1E", "para_bg_color": "#1E1E1E", "para_border_color": "#1E1E1E",
                  "font_color": "#E6E6E6", "font_size": 9, "line_height": 11},
    "code_style": {"font_family": "mono", "font_size": 8, "line_height": 10, "alignment": "left",
                   "page_bg_color": "#F5F5F5", "para_bg_color": "#F5F5F5", "para_border_color": "#F5F5F5",
                   "font_color": "#1F2328", "tab_size": 4, "wrap": "word"},
    "artistic_pixel": {"font_family": "mono", "font_size": 8, "line_height": 9, "dpi": 60,
                       "page_bg_color": "#FFF4D6", "para_bg_color": "#FFF4D6", "para_border_color": "#FFF4D6",
                       "font_color": "#3B2F7A", "horizontal_scale": 0.9, "subpixel_phases": 1},
}
