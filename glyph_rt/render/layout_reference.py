"""Plain-Python reference of the C++ layout engine (csrc/layout/layout.cpp): the tests' oracle.

It follows the engine step by step, and with it the reportlab Paragraph/Frame rules that Glyph's
renderer relies on:

- Source lines end at "\\n", "\\r\\n" or "\\r". Every `lines_per_paragraph` (Glyph: 30) of them
  form one paragraph; a newline inside a paragraph forces a line break (an empty source line gives
  an empty line), or, with a newline marker, inserts the marker glyphs inline in the marker color.
- A single space (or another breaking space) separates words and collapses at line ends; longer
  runs of spaces and tabs (a tab is `tab_size` spaces) and U+00A0 are kept as non-breaking spaces,
  as Glyph writes them as &nbsp;. Soft hyphens and zero-width spaces are removed and counted.
- Lines are filled greedily: a word joins the line while the line stays within the frame width
  (less the indents) plus reportlab's 5% shrinkage of each of its spaces. A word wider than the
  line is split character by character: it fills the current line, then whole lines. In word mode
  every CJK character can be broken before.
- CJK wrap mode is reportlab's (paragraph.cjkFragSplit, textsplit.dumbSplit): each run of breaking
  spaces is one space character, none at the paragraph's ends, kept at line ends and never shrunk.
  A line ends before the character that takes it past the width; when that character is below
  U+3000, the break backs off to after the last space or character from U+3000 in the line's second
  half; a character of reportlab's ALL_CANNOT_START (e.g. "。", "，", ".") stays on the line instead,
  hanging into the margin. Only kept spaces count for squeezing and justifying such a line.
- Paragraphs flow down frames (one per page): spaceBefore, less the previous spaceAfter and dropped
  at the top of a frame, then the lines, then spaceAfter. A paragraph that does not fit is split
  across pages, but never leaves a single (orphan) line at a page bottom; split right after a
  forced break, its continuation starts with an empty line (word wrap; in CJK wrap the break stays
  on the line it ends, and the continuation starts after it).
- Lines are aligned left, center or right, or justified: the spaces of every line but forced ones
  and the last of a paragraph are stretched (or shrunk) to fill the line. A line longer than the
  frame (by the shrinkage) is squeezed back to it in every alignment. The share is reportlab's PDF
  word spacing, which every space drawn gets, kept ones included (U+00A0 is written as code 32).

Lengths are float64 as in the C++; glyph advances are rounded to float32 first, as the C++ stores
them, and outputs are cast at the end, so results match the engine's exactly. Given reportlab's glyph widths
(`width_1000`, thousandths of an em), lines break on reportlab's own sums instead (0.001 * size * a word's
widths, its space, its frame width), and with `pdf_scale` each glyph's x is where poppler draws it from
reportlab's PDF (`emit_pdf_line`).
"""
from __future__ import annotations

import math
from collections import namedtuple

import numpy as np

from .pdfnum import pdf_float, pdf_number

DRAW, NBSP, BREAK = 0, 1, 2
LEFT, CENTER, RIGHT, JUSTIFY = 0, 1, 2, 3
WRAP_WORD, WRAP_CJK = 0, 1
BREAK_SPACES = frozenset([0x0B, 0x0C, 0x1C, 0x1D, 0x1E, 0x1F, 0x85, 0x1680, 0x2028, 0x2029, 0x202F, 0x205F,
                          0x3000, *range(0x2000, 0x200B)])
STRIPPED = frozenset([0xAD, 0x200B])
CJK_RANGES = ((0x1100, 0x11FF), (0x2E80, 0x9FFF), (0xA000, 0xA4CF), (0xAC00, 0xD7AF), (0xF900, 0xFAFF),
              (0xFE30, 0xFE4F), (0xFF00, 0xFFEF), (0x20000, 0x3FFFF))
CANNOT_START = frozenset(  # reportlab's textsplit.ALL_CANNOT_START
    "!\"'),.:;?]\xb0\u2010\u2015\u2030\u2032\u2033\u2103\u3001\u3002\u3005\u300d\u300f\u3011\u3015\u3041\u3043\u3045"
    "\u3047\u3049\u3063\u3083\u3085\u3087\u308e\u309b\u309c\u309d\u309e\u30a1\u30a3\u30a5\u30a7\u30a9\u30c3\u30e3"
    "\u30e5\u30e7\u30ee\u30f5\u30f6\u30fb\u30fc\u30fd\u30fe\uff05\uff09\uff3d\uffe0")
DEFAULT_PARAMS = {
    "frame_x": 16.0, "frame_y": 16.0, "frame_w": 563.0, "frame_h": 810.0, "left_indent": 0.0,
    "right_indent": 0.0, "first_line_indent": 0.0, "leading": 10.0, "ascent": 6.8, "space_before": 0.0,
    "space_after": 0.0, "space_shrink": 0.05, "align": LEFT, "wrap": 0, "lines_per_paragraph": 30,
    "newline_marker": 0, "tab_size": 4, "max_pages": 1 << 30,
    "font_size": 9.0, "pdf_scale": 0.0, "pdf_phases": 4, "pdf_frame_x": 16.0, "pdf_left_indent": 0.0,
    "pdf_font_size": 9.0, "pdf_avail_width": 563.0,
}
OUTPUTS = {
    **dict.fromkeys(["g_page", "g_slot", "g_src", "l_page", "l_src_start", "l_src_end", "b_page", "p_src_start",
                     "p_src_end", "p_line_start"], np.int32),
    **dict.fromkeys(["g_x", "g_y", "l_x", "l_y", "l_width"], np.float32),
    **dict.fromkeys(["b_x", "b_y", "b_w", "b_h"], np.float64),  # exact: the PDF numbers of the boxes come from them
    "g_color": np.uint8,
}


def is_cjk(c: int) -> bool:
    return any(lo <= c <= hi for lo, hi in CJK_RANGES)


# spaces: a kept tab is tab_size; wide: from U+3000 (a CJK wrap break point); nostart: in CANNOT_START;
# added: a space that is no source character (added at the line ends of a CJK continuation, see rewrap_cjk)
Item = namedtuple("Item", "slot src adv kind color cjk spaces wide nostart added", defaults=(1, False, False, False))
Unit = namedtuple("Unit", "start end gap")  # items [start, end); gap: after a (collapsed) breaking space
Line = namedtuple("Line", "units width spaces nbsp forced first src_start src_end")  # forced: ended by a newline


class Engine:
    def __init__(self, lut, advance, missing_flag, space_slot, missing_slot, params, width_1000=None):
        self.lut, self.missing_flag, self.missing_slot, self.space_slot = lut, missing_flag, missing_slot, space_slot
        self.p = p = {**DEFAULT_PARAMS, **params}
        # with reportlab's widths, lines break on reportlab's own sums (see the C++ engine); and with pdf_scale,
        # glyph x is placed as poppler places it
        self.rl = width_1000 is not None and space_slot >= 0
        self.pdf = self.rl and p["pdf_scale"] > 0
        self.adv32 = np.asarray(advance, np.float32).astype(np.float64).tolist()
        self.space_w = float(advance[space_slot]) if space_slot >= 0 else 0.0
        self.space_adv = self.adv32[space_slot] if space_slot >= 0 else 0.0
        self.later_w = p["frame_w"] - p["left_indent"] - p["right_indent"]
        self.first_w = self.later_w - p["first_line_indent"]
        self.space_brk = self.space_w
        if self.rl:
            self.w1000 = np.asarray(width_1000, np.float64).tolist()
            self.pdf_em = [pdf_number(w) * 0.001 for w in self.w1000]  # poppler: /Widths entry * 0.001
            self.k001 = 0.001 * p["font_size"]
            self.space_brk = self.k001 * self.w1000[space_slot]
            avail, li, ri = p["pdf_avail_width"], p["left_indent"], p["right_indent"]
            self.later_w = avail - li - ri
            self.first_w = avail - (li + p["first_line_indent"]) - ri
        self.out = {k: [] for k in OUTPUTS}
        self.missing = self.stripped = self.placed = self.marker_glyphs = 0
        self.frame_lines = math.floor(p["frame_h"] / p["leading"])  # as paginate counts a frame's lines
        self.page, self.cursor, self.prev_after, self.at_top, self.truncated = -1, 0.0, 0.0, True, False

    def add(self, **values):
        for key, v in values.items():
            self.out[key].append(v)

    def push_text(self, text, b, e, color=0, src=None):
        """Appends the items of text[b:e] (no newline); `src`, when given, is every item's source."""
        i = b
        while i < e:
            c = text[i]
            if c in (0x20, 0x09):
                j = i
                while j < e and text[j] in (0x20, 0x09):
                    j += 1
                if j - i == 1 and (text[i] == 0x20 or self.p["tab_size"] == 1):
                    self.items.append(Item(-1, i if src is None else src, self.space_adv, BREAK, color, False))
                else:  # one kept item per space or tab; a tab is tab_size spaces wide and never split
                    for k in range(i, j):
                        w = self.p["tab_size"] if text[k] == 0x09 else 1
                        adv = float(np.float32(self.space_w * w))
                        self.items.append(Item(-1, k if src is None else src, adv, NBSP, color, False, w))
                i = j
                continue
            at = i if src is None else src
            if c in STRIPPED:
                self.stripped += 1
            elif c in BREAK_SPACES or c == 0xA0:
                self.items.append(Item(-1, at, self.space_adv, NBSP if c == 0xA0 else BREAK, color, False))
            else:
                slot = int(self.lut[c]) if c < len(self.lut) else -1
                slot = self.missing_slot if slot < 0 else slot
                self.items.append(Item(slot, at, self.adv32[slot], DRAW, color, is_cjk(c), 1, 0x3000 <= c < 0x110000,
                                       chr(c) in CANNOT_START if c < 0x110000 else False))
            i += 1

    def break_items(self, b: int, e: int, para_end: bool):
        """Breaks items [b, e), the text between two forced line breaks, into lines (the last one left open)."""
        if self.p["wrap"] == WRAP_CJK:
            self.break_cjk(b, e, b == 0, para_end)
        else:
            self.break_units(self.make_units(b, e))

    def make_units(self, b: int, e: int) -> list[Unit]:
        """Items [b, e) cut into unbreakable units: words, and every CJK character on its own."""
        units, gap, i = [], False, b
        while i < e:
            it = self.items[i]
            if it.kind == BREAK:
                gap, i = True, i + 1
                continue
            j = i + 1
            if not it.cjk:
                while j < e and self.items[j].kind != BREAK and not self.items[j].cjk:
                    j += 1
            units.append(Unit(i, j, gap))
            gap, i = False, j
        return units

    def unit_width(self, u: Unit) -> float:
        w = 0.0
        if self.rl:  # a word: its characters' thousandths of an em summed, then scaled
            for it in self.items[u.start:u.end]:
                for _ in range(1 if it.kind == DRAW else it.spaces):
                    w += self.w1000[it.slot if it.kind == DRAW else self.space_slot]
            return self.k001 * w
        for it in self.items[u.start:u.end]:
            w += it.adv
        return w

    def max_width(self, first: bool) -> float:
        return self.first_w if first else self.later_w

    def close_line(self, forced: bool, empty_src: int = 0):
        u = self.line
        real = [v for v in u if not self.items[v.start].added]  # added spaces are no source characters
        if real:
            src = (self.items[real[0].start].src, self.items[real[-1].end - 1].src + 1)
        else:
            src = (self.items[u[0].start].src,) * 2 if u else (empty_src, empty_src)
        nbsp = sum(it.spaces for v in u for it in self.items[v.start:v.end] if it.kind == NBSP)
        self.lines.append(Line(u, self.cur, self.spaces, nbsp, forced, self.first, *src))
        self.line, self.cur, self.spaces, self.first = [], 0.0, 0, False

    def place(self, u: Unit):
        gap = u.gap and bool(self.line)
        w = self.unit_width(u)
        if gap:
            if not self.rl or w > 0:  # reportlab adds no width, and no space, for an empty word
                self.cur += self.space_brk
            self.spaces += 1
        self.line.append(Unit(u.start, u.end, gap))
        self.cur += w

    def break_units(self, units: list[Unit]):
        for u in units:
            w, maxw = self.unit_width(u), self.max_width(self.first)
            gap = u.gap and bool(self.line)
            if self.rl:  # Paragraph.breakLines: the shrinkage is (this gap's space + the line's spaces) * 5%
                sp = self.space_brk
                new_w = self.cur + (sp if gap else 0.0) + w if w > 0 else self.cur
                lim = maxw + ((sp if gap else 0.0) + self.spaces * sp) * self.p["space_shrink"]
            else:
                new_w = self.cur + (self.space_w if gap else 0.0) + w
                lim = maxw + self.p["space_shrink"] * self.space_w * (self.spaces + gap)
            if new_w <= lim:
                self.place(u)
            elif w > maxw:
                self.split_long(u, maxw)
            else:
                self.close_line(False)
                self.place(Unit(u.start, u.end, False))

    def break_cjk(self, b: int, e: int, para_start: bool, para_end: bool):
        """reportlab's CJK wrap over the characters of items [b, e) (see the module docstring)."""
        chars = []
        for k in range(b, e):
            if self.items[k].kind == BREAK and ((k > b and self.items[k - 1].kind == BREAK) or (para_start and not chars)):
                continue  # a run of breaking spaces is one space; none at the paragraph's start
            chars.append(k)
        while para_end and chars and self.items[chars[-1]].kind == BREAK:
            chars.pop()
        self.wrap_cjk(chars, self.max_width(self.first))

    def wrap_cjk(self, chars: list[int], maxw: float):
        """cjkFragSplit's loop over the items `chars`: closes every line it fills, places the rest on the open one."""
        items = [self.items[k] for k in chars]
        i = start = 0
        used = 0.0
        while i < len(items):
            it = items[i]
            i += 1
            used += self.char_width(it)
            if not (used > maxw + 1e-6 and used > 0):
                continue
            u = i - 1
            if not (it.kind == DRAW and it.wide):  # back off to the last space or wide char in the second half
                for j in range(i - 1, (start + i) >> 1, -1):
                    if (items[j].kind != DRAW or items[j].wide) and j + 1 < i:
                        u, i = j + 1, j + 2
                        break
            if not items[u].nostart and i > start + 1:
                i -= 1
            for k in chars[start:i]:
                self.place_char(k)
            self.close_line(False)
            start, used, maxw = i, 0.0, self.max_width(False)
        for k in chars[start:]:
            self.place_char(k)

    def place_char(self, k: int):
        it = self.items[k]
        self.spaces += it.kind == BREAK
        self.line.append(Unit(k, k + 1, False))
        self.cur += self.char_width(it)

    def char_width(self, it: Item) -> float:
        if self.rl:
            return self.k001 * self.w1000[it.slot] if it.kind == DRAW else self.space_brk * it.spaces
        return it.adv if it.kind == DRAW else self.space_w * it.spaces

    def split_long(self, u: Unit, maxw: float):
        """A word wider than the line: fills the current line, then whole lines, char by char."""
        acc = self.cur + (self.space_brk if u.gap else 0.0) if self.line else 0.0
        piece, first_piece = u.start, True
        for k in range(u.start, u.end):
            cw = self.char_width(self.items[k]) if self.rl else self.items[k].adv
            if acc + cw > maxw and (k > piece or cw <= self.later_w):  # a too-wide char stays put
                if k > piece:
                    self.place(Unit(piece, k, u.gap and first_piece))
                if self.line:
                    self.close_line(False)
                piece, first_piece, acc, maxw = k, False, 0.0, self.later_w
            acc += cw
        self.place(Unit(piece, u.end, u.gap and first_piece))

    def new_page(self):
        self.page, self.cursor, self.at_top = self.page + 1, 0.0, True
        self.add(p_src_start=-1, p_src_end=-1, p_line_start=len(self.out["l_page"]))

    def emit_lines(self, b: int, e: int, top: float, para_end: bool):
        """Lines [b, e) of the current paragraph, as one box on the current page from `top` down."""
        p, out = self.p, self.out
        box_x = p["frame_x"] + p["left_indent"]
        self.add(b_page=self.page, b_x=box_x, b_y=top, b_w=p["frame_w"] - p["left_indent"] - p["right_indent"],
                 b_h=(e - b) * p["leading"])
        text = PdfText(p["pdf_left_indent"]) if self.pdf else None  # one reportlab text object per box
        for li in range(b, e):
            line = self.lines[li]
            offset = p["first_line_indent"] if line.first else 0.0
            x = box_x + offset
            extra, space_add, shift = self.max_width(line.first) - line.width, 0.0, 0.0
            n_space = line.nbsp if p["wrap"] == WRAP_CJK else line.spaces + line.nbsp  # CJK: kept spaces only
            last, forced = para_end and li == len(self.lines) - 1, line.forced
            if not para_end and li == e - 1 and forced:  # a part ending a page right after a line break: reportlab
                forced, last = False, True  # breaks it again without that break (its last line, not a forced one)
            if p["align"] == JUSTIFY:
                keep = forced or -1e-8 < extra <= 1e-8 or (last and extra > -1e-8)
                if not keep and n_space:
                    space_add = extra / n_space
            elif extra <= -1e-8 and n_space:  # an over-long line is squeezed back to the frame
                space_add = extra / n_space
            elif p["align"] == CENTER:
                shift = extra * 0.5
            elif p["align"] == RIGHT:
                shift = extra
            x += shift
            y = top + p["ascent"] + (li - b) * p["leading"]
            self.add(l_page=self.page, l_x=x, l_y=y, l_width=line.width + space_add * (line.spaces + line.nbsp),
                     l_src_start=line.src_start, l_src_end=line.src_end)
            if out["p_src_start"][-1] < 0:
                out["p_src_start"][-1] = line.src_start
            out["p_src_end"][-1] = line.src_end
            if text is not None:  # the line as drawn: reportlab's word spacing can make it wider than our sum
                out["l_width"][-1] = self.emit_pdf_line(text, line, offset, shift, space_add, y)
                continue
            pen = x
            for u in line.units:
                if u.gap:
                    pen += self.space_w + space_add
                for it in self.items[u.start:u.end]:
                    if it.kind == DRAW:
                        self.add_glyph(it, pen, y)
                    pen += it.adv if it.kind == DRAW else (self.space_w + space_add) * it.spaces

    def add_glyph(self, it: Item, x: float, y: float):
        self.add(g_page=self.page, g_slot=it.slot, g_src=it.src, g_x=x, g_y=y, g_color=it.color)
        if it.color == 0:  # source characters; marker glyphs are not part of the text
            self.placed += 1
            self.missing += bool(self.missing_flag[it.slot])
        else:
            self.marker_glyphs += 1

    def emit_pdf_line(self, text: "PdfText", line: Line, offset: float, shift: float, space_add: float, y: float):
        """One line as reportlab writes it (paragraph._*DrawParaLineX) and poppler draws it: the line's moves
        and word spacing (`space_add`, or else `shift`, from the line's free space, which with reportlab's widths
        is reportlab's) as printed numbers, then each glyph's pen summed in double from the PDF's widths
        (Gfx::doShowText); each glyph is placed at the centre of the sub-pixel bin that poppler draws it in.
        Returns the width drawn."""
        p = self.p
        tw, back = 0.0, offset
        if space_add == 0.0:
            back = offset + shift
            text.move(back)
        else:  # the word spacing carries the free space; reportlab's centre and right skip the offset's move
            tw = pdf_number(space_add)
            if p["align"] in (LEFT, JUSTIFY):
                text.move(offset)
        pen = start = text.line_start()
        fs, k, ph, x0 = p["pdf_font_size"], p["pdf_scale"], p["pdf_phases"], p["pdf_frame_x"] * p["pdf_scale"]
        space = self.pdf_em[self.space_slot] * fs + tw
        for u in line.units:
            if u.gap:
                pen += space
            for it in self.items[u.start:u.end]:
                if it.kind == DRAW:
                    self.add_glyph(it, (math.floor((k * pen + x0) * ph) + 0.5) / (ph * k), y)
                    pen += self.pdf_em[it.slot] * fs
                else:
                    for _ in range(it.spaces):
                        pen += space
        text.move(-back)
        return pen - start

    def rewrap_cjk(self, idx: int) -> int:
        """reportlab's continuation of a paragraph split in CJK wrap (Paragraph.split, _split_blParaHard): the
        characters of lines [idx:], a space added after each but the last line unless it ends in one (a forced
        line's break gets it, once), wrapped again with the later lines' width. Returns the new line count."""
        old, self.lines = self.lines[idx:], self.lines[:idx]
        self.line, self.cur, self.spaces, self.first = [], 0.0, 0, False
        chars = []

        def added_space(src):
            self.items.append(Item(-1, src, self.space_adv, BREAK, 0, False, added=True))
            return len(self.items) - 1

        for li, line in enumerate(old):
            chars += [u.start for u in line.units]
            last = li == len(old) - 1
            if line.forced:  # the break's own (empty) text becomes the space; wrapping stops at the break
                brk = None
                if line.units and self.items[line.units[-1].start].added:
                    brk = chars.pop()
                elif not last:
                    brk = added_space(line.src_end)
                self.wrap_cjk(chars, self.later_w)
                if brk is not None:
                    self.place_char(brk)
                self.close_line(True, empty_src=line.src_end)
                chars = []
            elif not last and not (line.units and self.items[line.units[-1].start].kind == BREAK):
                chars.append(added_space(line.src_end))
        self.wrap_cjk(chars, self.later_w)
        if self.line:
            self.close_line(False)
        return len(self.lines)

    def paginate(self):
        """Flows the current paragraph's lines down the frames, splitting it across pages."""
        p, n, idx = self.p, len(self.lines), 0
        while not self.truncated:
            s = 0.0 if self.at_top else max(p["space_before"] - self.prev_after, 0.0)
            avail = p["frame_h"] - self.cursor - s
            top = p["frame_y"] + self.cursor + s
            if avail > 0 and (n - idx) * p["leading"] <= avail + 1e-6:
                k = n - idx
            else:
                k = math.floor(avail / p["leading"]) if avail > 0 else 0
                if k <= 1 and not self.at_top:  # no orphan line at a page bottom
                    if self.page + 1 >= p["max_pages"]:
                        self.truncated = True
                    else:
                        self.new_page()
                    continue
                k = min(max(k, 1), n - idx)  # a frame shorter than two lines still takes one
            if k:
                self.emit_lines(idx, idx + k, top, idx + k == n)
            idx += k
            if (idx < n and self.lines[idx - 1].forced and not p["newline_marker"] and self.frame_lines >= 2
                    and p["wrap"] != WRAP_CJK):
                # reportlab's continuation after a split at a line break starts with an empty line
                # (not in a one-line frame: that empty line would fill every following page; not in CJK
                # wrap, whose lines hold the break that ends them: the continuation starts after it)
                prev_end = self.lines[idx - 1].src_end
                self.lines.insert(idx, Line([], 0.0, 0, 0, True, False, prev_end, prev_end))
                n += 1
            if idx < n and p["wrap"] == WRAP_CJK:
                n = self.rewrap_cjk(idx)
            if idx >= n:
                self.cursor += s + k * p["leading"] + p["space_after"]
                self.prev_after, self.at_top = p["space_after"], False
                return
            if self.page + 1 >= p["max_pages"]:
                self.truncated = True
            else:
                self.new_page()

    def run(self, text: list[int], marker: list[int]) -> dict:
        p, n, pos = self.p, len(text), 0
        self.new_page()
        while pos <= n and not self.truncated:
            self.items, self.lines, self.line, self.cur, self.spaces, self.first = [], [], [], 0.0, 0, True
            seg_start = 0
            for ln in range(max(1, p["lines_per_paragraph"])):
                if pos > n:
                    break
                e = pos
                while e < n and text[e] not in (0x0A, 0x0D):
                    e += 1
                if ln > 0 and p["newline_marker"]:
                    for mc in marker:
                        self.push_text([mc], 0, 1, color=1, src=pos - 1)
                elif ln > 0:
                    self.break_items(seg_start, len(self.items), False)
                    self.close_line(True, empty_src=pos - 1)
                    seg_start = len(self.items)
                self.push_text(text, pos, e)
                crlf = e + 1 < n and text[e] == 0x0D and text[e + 1] == 0x0A
                pos = e + 2 if crlf else e + 1
            self.break_items(seg_start, len(self.items), True)
            if self.line:
                self.close_line(False)
            self.paginate()
        d = {k: np.asarray(v, dtype=t) for (k, v), t in zip(self.out.items(), OUTPUTS.values())}
        d.update(missing=self.missing, stripped=self.stripped, placed=self.placed, marker_glyphs=self.marker_glyphs,
                 pages=self.page + 1,
                 truncated=self.truncated)
        return d


class PdfText:
    """A reportlab text object (one paragraph box) as poppler reads it: where each line starts.

    reportlab moves to a line's start with `Td` (textobject.moveCursor) and merges a move with the `Td`
    written just before it, reading that one back with float(); poppler adds each `Td` it reads to its line
    matrix (Gfx::opTextMove) and starts the line at that plus the text matrix's x (`Tm`, the left indent)."""

    def __init__(self, left_indent: float):
        self.tm_x = left_indent  # as poppler reads it
        self.line_x = 0.0
        self.pending = None  # the last Td written, while the next move can still merge with it

    def move(self, dx: float):
        if -1e-6 <= dx <= 1e-6:  # paragraph.setXPos writes no tiny moves
            return
        if self.pending is not None:
            dx += pdf_float(self.pending)
        self.pending = dx

    def line_start(self) -> float:
        """The pen at the start of the next text (which ends any pending move)."""
        if self.pending is not None:
            self.line_x += pdf_number(self.pending)
            self.pending = None
        return self.line_x + self.tm_x


def layout_reference(cps, lut, advance, missing_flag, space_slot, missing_slot, params, marker,
                     width_1000=None) -> dict:
    """Same inputs and outputs as glyph_rt._C.layout."""
    engine = Engine(lut, advance, missing_flag, int(space_slot), int(missing_slot), params, width_1000)
    return engine.run(np.asarray(cps, np.uint32).tolist(), np.asarray(marker).astype(np.uint32).tolist())
