"""Glyph's own rendering pipeline (reportlab -> PDF -> pdftoppm), re-implemented as the reference.

Glyph (thu-coai/Glyph) renders a text with a config dict of dashed keys as follows; this module
does the same steps, in the same order, with the same defaults:

1. remove soft hyphens and zero-width spaces, xml-escape, turn runs of 2+ spaces into as many
   ``&nbsp;``, split on ``'\\n'``;
2. join every 30 source lines with the newline markup (``<br/>``) into one reportlab Paragraph
   (style: parent Normal, the TTF font of ``font-path``, size, leading, colors, border, indents,
   alignment, spacing, ``wordWrap='CJK'`` when the text has CJK ideographs);
3. build a SimpleDocTemplate (page size, margins) whose pages get a full-page background rect;
4. rasterize with pdf2image (pdftoppm) at ``dpi``; optionally squeeze the width by
   ``horizontal-scale``; auto-crop the width and the last page's height to the ink plus the
   margins (in pixels).

``render_official`` also records what reportlab laid out: the words of every line and the page
it was drawn on, via a Paragraph subclass that looks at ``blPara`` when it is drawn.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

LINES_PER_PARAGRAPH = 30
_CJK = re.compile(r"[\u4E00-\u9FFF]")
_SPACE_RUN = re.compile(r" {2,}")


def available() -> bool:
    """True when reportlab, pdf2image and poppler's pdftoppm can all be used here."""
    try:
        import pdf2image  # noqa: F401
        import reportlab  # noqa: F401
        from reportlab.platypus import Paragraph  # noqa: F401
    except Exception:
        return False
    return shutil.which("pdftoppm") is not None


def unavailable_reason() -> str:
    """Why `available()` is false ('' when it is true)."""
    missing = []
    for mod in ("reportlab", "pdf2image"):
        try:
            __import__(mod)
        except Exception:
            missing.append(f"the Python package {mod}")
    if shutil.which("pdftoppm") is None:
        missing.append("the pdftoppm binary (poppler-utils)")
    return ("missing " + ", ".join(missing)) if missing else ""


@dataclass
class LineRecord:
    """One line as reportlab laid it out."""

    page: int  # 0-based page index
    text: str  # the line's text (kind 0: words joined by spaces; kind 1: fragment texts joined)
    words: list[str]
    kind: int  # blPara.kind: 0 simple paragraph, 1 fragment lines
    para: int  # index of the drawn (possibly split) paragraph part, in drawing order
    x: float = 0.0  # paragraph origin on the page (points, reportlab's y-up coordinates)
    y: float = 0.0  # bottom of the paragraph part (points, y up)
    baseline: float = 0.0  # baseline of this line (points from the page top, y down)


@dataclass
class OfficialResult:
    images: list
    lines: list[LineRecord]
    pdf: bytes = b""
    page_size: tuple[float, float] = (0.0, 0.0)
    raw_sizes: list[tuple[int, int]] = field(default_factory=list)  # pdftoppm's sizes before cropping


def _to_color(v, default):
    from reportlab.lib import colors

    if v is None:
        return colors.HexColor(default)
    if isinstance(v, str):
        return colors.HexColor(v)
    return v


def _alignment(v):
    from reportlab.lib.enums import TA_CENTER, TA_JUSTIFY, TA_LEFT, TA_RIGHT

    table = {"LEFT": TA_LEFT, "CENTER": TA_CENTER, "RIGHT": TA_RIGHT, "JUSTIFY": TA_JUSTIFY}
    if isinstance(v, str):
        return table.get(v, TA_JUSTIFY)  # Glyph falls back to JUSTIFY for unknown names
    return v


def _page_size(v):
    from reportlab.lib.pagesizes import A4

    if v is None:
        return A4
    if isinstance(v, str):
        return tuple(float(p) for p in v.split(","))
    return tuple(float(p) for p in v)


def _register_font(font_path: str) -> str:
    """Registers the TTF under its file stem (as Glyph), made unique per file to avoid clashes."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    stem = os.path.basename(font_path).split(".")[0]
    digest = hashlib.sha1(os.path.abspath(font_path).encode()).hexdigest()[:8]
    name = f"{stem}-{digest}"
    if name not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(TTFont(name, font_path))
    return name


def preprocess(text: str, newline_markup: str = "<br/>") -> list[str]:
    """Glyph's text preparation: the markup of each Paragraph, in order."""
    text = text.replace("\xad", "").replace("\u200b", "")
    processed = _SPACE_RUN.sub(lambda m: "&nbsp;" * len(m.group()), escape(text))
    parts = processed.split("\n")
    return [newline_markup.join(parts[i : i + LINES_PER_PARAGRAPH]) for i in range(0, len(parts), LINES_PER_PARAGRAPH)]


def _line_words(blPara, line) -> list[str]:
    if blPara.kind == 0:
        return [str(w) for w in line[1]]
    return [getattr(w, "text", "") or "" for w in line.words]


def _make_paragraph_class(records: list[LineRecord], page_height: float):
    from reportlab.platypus import Paragraph
    from reportlab.rl_config import paraFontSizeHeightOffset

    class RecordingParagraph(Paragraph):
        """A Paragraph that records its laid-out lines (and where) when it is drawn."""

        def drawOn(self, canvas, x, y, _sW=0):
            self._rec_origin = (x, y)
            return super().drawOn(canvas, x, y, _sW)

        def drawPara(self, debug=0):
            blPara = self.blPara
            page = self.canv.getPageNumber() - 1
            x, y = getattr(self, "_rec_origin", (0.0, 0.0))
            para = (records[-1].para + 1) if records else 0
            leading = self.style.leading
            lines = blPara.lines
            # reportlab's first baseline: height - fontSize when rl_config.paraFontSizeHeightOffset
            # (the default), else height - ascent; later lines are one leading apart.
            f = blPara if blPara.kind == 0 else (lines[0] if lines else blPara)
            if paraFontSizeHeightOffset:
                asc0 = getattr(f, "fontSize", self.style.fontSize)
            else:
                asc0 = getattr(f, "ascent", getattr(f, "fontSize", self.style.fontSize))
            first_baseline_up = y + self.height - asc0
            for i, line in enumerate(lines):
                words = _line_words(blPara, line)
                base_up = first_baseline_up - i * leading
                # kind 0: whole words; kind 1: fragments whose texts already carry the spaces
                text = " ".join(words) if blPara.kind == 0 else "".join(words)
                records.append(LineRecord(page=page, text=text, words=words,
                                          kind=blPara.kind, para=para, x=x, y=y,
                                          baseline=page_height - base_up))
            return super().drawPara(debug)

    return RecordingParagraph


def build_pdf(text: str, glyph_config: dict, font_path: str | None = None,
              records: list[LineRecord] | None = None) -> tuple[bytes, tuple[float, float]]:
    """Steps 1-3: text -> PDF bytes (and the page size in points)."""
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.platypus import SimpleDocTemplate

    config = dict(glyph_config)
    font_path = font_path or config.get("font-path")
    if not font_path:
        raise ValueError("render_official: a font path is required (font_path or config['font-path'])")
    page_size = _page_size(config.get("page-size"))
    margin_x = config.get("margin-x", 20)
    margin_y = config.get("margin-y", 20)
    font_size = config.get("font-size", 9)
    line_height = config.get("line-height") or (font_size + 1)
    page_bg = _to_color(config.get("page-bg-color"), "#FFFFFF")
    font_color = _to_color(config.get("font-color"), "#000000")
    para_bg = _to_color(config.get("para-bg-color"), "#FFFFFF")
    para_border = _to_color(config.get("para-border-color"), "#FFFFFF")
    newline_markup = config.get("newline-markup", "<br/>")

    font_name = _register_font(str(font_path))
    style = ParagraphStyle(
        name="Custom",
        parent=getSampleStyleSheet()["Normal"],
        fontName=font_name,
        fontSize=font_size,
        leading=line_height,
        textColor=font_color,
        backColor=para_bg,
        borderColor=para_border,
        borderWidth=config.get("border-width", 0),
        borderPadding=config.get("border-padding", 0),
        firstLineIndent=config.get("first-line-indent", 0),
        wordWrap="CJK" if _CJK.search(text) else None,
        leftIndent=config.get("left-indent", 0),
        rightIndent=config.get("right-indent", 0),
        alignment=_alignment(config.get("alignment", "JUSTIFY")),
        spaceBefore=config.get("space-before", 0),
        spaceAfter=config.get("space-after", 0),
    )
    records = records if records is not None else []
    para_cls = _make_paragraph_class(records, page_size[1])
    story = [para_cls(markup, style) for markup in preprocess(text, newline_markup)]

    def background(canv, _doc):
        canv.saveState()
        canv.setFillColor(page_bg)
        canv.rect(0, 0, page_size[0], page_size[1], stroke=0, fill=1)
        canv.restoreState()

    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=page_size, leftMargin=margin_x, rightMargin=margin_x,
                            topMargin=margin_y, bottomMargin=margin_y)
    doc.build(story, onFirstPage=background, onLaterPages=background)
    return buf.getvalue(), page_size


def rasterize(pdf: bytes, glyph_config: dict) -> tuple[list, list[tuple[int, int]]]:
    """Step 4: PDF -> page images, scaled and auto-cropped as Glyph does; also the raw sizes."""
    import numpy as np
    from pdf2image import convert_from_bytes

    dpi = glyph_config.get("dpi", 72)
    margin_x = glyph_config.get("margin-x", 20)
    margin_y = glyph_config.get("margin-y", 20)
    scale = glyph_config.get("horizontal-scale", 1.0)
    crop_width = glyph_config.get("auto-crop-width", False)
    crop_last = glyph_config.get("auto-crop-last-page", False)

    pages = convert_from_bytes(pdf, dpi=dpi)
    raw = [p.size for p in pages]
    out = []
    n = len(pages)
    for i, img in enumerate(pages):
        w, h = img.size
        if scale != 1.0:
            img = img.resize((int(w * scale), h))
        last = i == n - 1
        if crop_width or (crop_last and last):
            gray = np.array(img.convert("L"))
            bg = np.median(gray[:2, :2])
            mask = np.abs(gray - bg) > 5  # float64: bg is a float
            if crop_width:
                cols = np.where(mask.any(axis=0))[0]
                if cols.size:
                    right = min(img.width, cols[-1] + 1 + margin_x)
                    img = img.crop((0, 0, right, img.height))
            if crop_last and last:
                rows = np.where(mask.any(axis=1))[0]
                if rows.size:
                    lower = min(img.height, rows[-1] + margin_y)
                    img = img.crop((0, 0, img.width, lower))
        out.append(img)
    return out, raw


def render_official_full(text: str, glyph_config: dict, font_path: str | None = None) -> OfficialResult:
    """Everything `render_official` computes, plus the PDF and pdftoppm's uncropped sizes."""
    records: list[LineRecord] = []
    pdf, page_size = build_pdf(text, glyph_config, font_path, records)
    images, raw = rasterize(pdf, glyph_config)
    return OfficialResult(images=images, lines=records, pdf=pdf, page_size=page_size, raw_sizes=raw)


def render_official(text: str, glyph_config: dict, font_path: str | None = None) -> tuple[list, list[tuple[int, str]]]:
    """Glyph's pipeline: (page images as PIL.Image, [(page index, line text)] in reading order).

    `glyph_config` uses Glyph's dashed keys (e.g. glyph_rt.render.config.GLYPH_CONFIG_EN);
    `font_path` overrides its "font-path"."""
    r = render_official_full(text, glyph_config, font_path)
    return r.images, [(ln.page, ln.text) for ln in r.lines]
