"""Right-to-left text: Arabic shaping before line breaking, bidi reordering of each line after it.

- `shape` replaces Arabic letters by their contextual presentation forms (arabic-reshaper), one
  codepoint per character so every source character keeps its glyph: lam + alef becomes the
  mandatory ligature, and the alef's place is taken by ZWNJ, a zero-width glyph with no ink.
- `reorder_lines` applies the Unicode bidi algorithm (python-bidi's implementation of UAX #9) to
  each laid-out line of a paragraph that holds right-to-left characters: levels are resolved per
  paragraph (source line) and reordered per line (rules L1-L2), brackets mirrored (L4). Only the
  glyphs' x positions (and the slots of mirrored characters) change: glyph arrays, line and page
  spans stay in source order. The isolates (LRI, RLI, FSI, PDI), which python-bidi's algorithm
  predates, are resolved as UAX #9 does (`_resolve_levels`).

Text with no right-to-left character is not touched.
"""
from __future__ import annotations

import bisect
import functools
import unicodedata
import warnings

import numpy as np

# Right-to-left scripts and the explicit RTL marks/embeddings/isolates.
_RTL_RANGES = ((0x0590, 0x08FF), (0xFB1D, 0xFDFF), (0xFE70, 0xFEFC), (0x10800, 0x10FFF), (0x1E800, 0x1EFFF))  # not U+FEFF
_RTL_MARKS = (0x200F, 0x202B, 0x202E, 0x2067)
_ARABIC_RANGES = ((0x0600, 0x06FF), (0x0750, 0x077F), (0x08A0, 0x08FF))
ZWNJ = 0x200C
_RESHAPER = None
_LAM_ALEF = None


def rtl_mask(cps: np.ndarray) -> np.ndarray:
    m = np.zeros(len(cps), dtype=bool)
    for lo, hi in _RTL_RANGES:
        m |= (cps - np.uint32(lo)) <= np.uint32(hi - lo)
    for c in _RTL_MARKS:
        m |= cps == c
    return m


def has_rtl(cps: np.ndarray) -> bool:
    """Whether the codepoints hold any right-to-left character (fast for the common no case)."""
    if not len(cps):
        return False
    if np.count_nonzero((cps - np.uint32(0x0590)) <= np.uint32(0x08FF - 0x0590)):
        return True
    high = cps[cps >= 0x200F]  # usually few: quotes, dashes, CJK
    return bool(len(high)) and bool(rtl_mask(high).any())


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether python-bidi and arabic-reshaper are installed (warns once when they are not)."""
    try:
        import arabic_reshaper  # noqa: F401
        from bidi import algorithm  # noqa: F401
    except ImportError:
        warnings.warn("right-to-left text is drawn in logical order and Arabic without contextual forms: "
                      "pip install 'glyph_rt[scripts]' (python-bidi, arabic-reshaper)", RuntimeWarning, stacklevel=3)
        return False
    return True


def _reshaper():
    global _RESHAPER, _LAM_ALEF
    if _RESHAPER is None:
        try:
            import arabic_reshaper
            from arabic_reshaper.ligatures import LIGATURES
        except ImportError as e:
            raise ImportError("Arabic text needs arabic-reshaper: pip install 'glyph_rt[scripts]'") from e
        _RESHAPER = arabic_reshaper.ArabicReshaper(configuration={
            "support_ligatures": False, "delete_harakat": False, "delete_tatweel": False,
            "shift_harakat_position": False})
        # (lam form, alef final form) -> ligature, from the reshaper's own tables
        lam = _RESHAPER.reshape("\u0644\u0644\u0644")  # initial, medial, final lam
        _LAM_ALEF = {}
        for name, (seq, forms) in LIGATURES:
            if name.startswith("ARABIC LIGATURE LAM WITH ALEF") and "MAKSURA" not in name and len(seq) == 2:
                alef_final = _RESHAPER.reshape("\u0644" + seq[1])[1]
                _LAM_ALEF[(lam[0], alef_final)] = forms[0]  # isolated ligature
                _LAM_ALEF[(lam[1], alef_final)] = forms[3]  # final ligature
    return _RESHAPER, _LAM_ALEF


def shape(text: str, cps: np.ndarray) -> np.ndarray:
    """Codepoints to draw: Arabic runs in contextual presentation forms, same length as `cps`."""
    m = np.zeros(len(cps), dtype=bool)
    for lo, hi in _ARABIC_RANGES:
        m |= (cps - np.uint32(lo)) <= np.uint32(hi - lo)
    if not m.any():
        return cps
    reshaper, lam_alef = _reshaper()
    out = cps.copy()
    # one reshaper call per source line, from its first Arabic character to its last
    idx = np.flatnonzero(m)
    line = np.searchsorted(np.flatnonzero((cps == 0x0A) | (cps == 0x0D)), idx)
    cut = np.flatnonzero(np.diff(line)) + 1
    for s, e in zip(idx[np.concatenate([[0], cut])].tolist(), (idx[np.concatenate([cut - 1, [len(idx) - 1]])] + 1).tolist()):
        shaped = list(reshaper.reshape(text[s:e]))
        if len(shaped) != e - s:  # never lose a character: leave a span the reshaper did not map 1:1
            continue
        for k in range(len(shaped) - 1):
            lig = lam_alef.get((shaped[k], shaped[k + 1]))
            if lig:
                shaped[k], shaped[k + 1] = lig, chr(ZWNJ)
        out[s:e] = [ord(c) for c in shaped]
    return out


def unshape_missing(draw: np.ndarray, cps: np.ndarray, lut: np.ndarray, missing_slot: int) -> np.ndarray:
    """Where the fonts lack a presentation form, draw the source character instead (a lam-alef
    ligature whose ligature or placeholder is missing goes back to both letters)."""
    diff = np.flatnonzero(draw != cps)
    if not len(diff):
        return draw
    bad = diff[lut[draw[diff]] == missing_slot]
    if not len(bad):
        return draw
    lig = diff[(draw[diff] >= 0xFEF5) & (draw[diff] <= 0xFEFC)]
    lig = lig[(lig + 1 < len(draw)) & (draw[np.minimum(lig + 1, len(draw) - 1)] == ZWNJ)]
    broken = lig[np.isin(lig, bad) | np.isin(lig + 1, bad)]
    draw = draw.copy()
    draw[bad] = cps[bad]
    draw[broken] = cps[broken]
    draw[broken + 1] = cps[broken + 1]
    return draw


def mirror_codepoints(cps: np.ndarray) -> np.ndarray:
    """Mirrored counterparts of the bidi-mirrored characters in `cps` (to have them in the atlas)."""
    from bidi.mirror import MIRRORED

    return np.asarray(sorted({ord(MIRRORED[c]) for c in map(chr, np.unique(cps).tolist()) if c in MIRRORED}),
                      dtype=np.int64)


# ----------------------------------------------------------------- reordering
_ISOLATES = ("LRI", "RLI", "FSI")


def _first_strong(types: list[str], start: int, end: int) -> int | None:
    """0 (L) or 1 (R, AL) for the first strong class of types[start:end] outside isolates (rules P2, P3), or None
    when there is none."""
    depth = 0
    for t in types[start:end]:
        if t in _ISOLATES:
            depth += 1
        elif t == "PDI":
            depth = max(0, depth - 1)
        elif depth == 0 and t in ("L", "R", "AL"):
            return int(t != "L")
    return None


def _isolate_ends(types: list[str]) -> dict[int, int]:
    """Isolate initiator -> its matching PDI (rule BD9), or the paragraph separator or end that closes it."""
    ends: dict[int, int] = {}
    pending: list[int] = []
    for k, t in enumerate(types):
        if t in _ISOLATES:
            pending.append(k)
        elif t == "PDI" and pending:
            ends[pending.pop()] = k
        elif t == "B":
            ends.update((j, k) for j in pending)
            pending.clear()
    ends.update((j, len(types)) for j in pending)
    return ends


def _resolve_levels(par: str, types: list[str], lo: int, hi: int, level: int, start: int,
                    ends: dict[int, int]) -> list[dict]:
    """Resolved records of par[lo:hi] at embedding level `level`, each isolate's content resolved on its own.

    python-bidi's algorithm predates the isolates (LRI, RLI, FSI, PDI), so they are taken as UAX #9 takes
    them: an isolate initiator and its matching PDI are neutrals of the text around them, which sees past
    the content between them (their isolating run sequence), and are reset like trailing whitespace at a
    line end (L1); the content is resolved apart, one level up (LTR or RTL; FSI by its first strong
    character). An unmatched PDI is a plain neutral, and isolates nested past the level limit are too."""
    from bidi import algorithm as A

    chars, inner = [], []
    isolating = level < A.EXPLICIT_LEVEL_LIMIT - 2
    k = lo
    while k < hi:
        t = types[k] or "L"  # characters this Python's Unicode tables do not know: UAX #9 defaults them to L
        rec = {"ch": par[k], "level": level, "type": t, "orig": t, "i": start + k}
        chars.append(rec)
        if t in _ISOLATES or t == "PDI":
            rec["type"], rec["orig"] = "ON", "WS"
        if t in _ISOLATES and isolating:
            end = min(ends[k], hi)
            if t == "FSI":
                t = ("LRI", "RLI")[_first_strong(types, k + 1, end) or 0]
            inner.append((rec, k + 1, end, t == "RLI"))
            k = end
        else:
            k += 1
    st = A.get_empty_storage()
    st["base_level"], st["chars"] = level, chars
    A.explicit_embed_and_overrides(st, False)
    explicit = [rec["level"] for rec, *_ in inner]  # the embedding level at each initiator (X6 set it)
    A.resolve_weak_types(st, False)
    A.resolve_neutral_types(st, False)
    A.resolve_implicit_levels(st, False)
    if not inner:
        return st["chars"]
    out = list(st["chars"])
    for (_, s, e, rtl), lev in zip(inner, explicit):
        up = (lev + 1) | 1 if rtl else (lev + 2) & ~1
        out.extend(_resolve_levels(par, types, s, e, up if up < A.EXPLICIT_LEVEL_LIMIT else lev, start, ends))
    return sorted(out, key=lambda r: r["i"])


def _resolve(text: str, start: int, end: int) -> list[dict]:
    """Resolved bidi levels of the paragraph text[start:end]: python-bidi's per-character records."""
    par = text[start:end]
    types = list(map(unicodedata.bidirectional, par))
    base = _first_strong(types, 0, len(types)) or 0
    chars = _resolve_levels(par, types, 0, len(par), base, start, _isolate_ends(types))
    for ch in chars:
        ch["base"] = base
    return chars


def _visual_order(recs: list[dict], s: int, e: int, text: str) -> tuple[list[int], dict[int, str]]:
    """Source indices of text[s:e] in visual order, and the mirrored characters.

    Combining marks of a right-to-left run end up before their base, at its origin, which is
    where fonts of those scripts draw a zero-advance mark over its base (as a shaper places it).
    """
    from bidi import algorithm as A

    line = [dict(r) for r in recs]
    st = {"chars": line, "base_level": line[0]["base"] if line else 0}
    A.reorder_resolved_levels(st, False)
    A.apply_mirroring(st, False)
    mirrored = {r["i"]: r["ch"] for r in line if r["ch"] != text[r["i"]]}
    order = [r["i"] for r in line]
    if len(order) < e - s:  # characters the algorithm removed (X9: embedding controls, BN) follow their predecessor
        # each run of removed characters goes right after the character before it (at the line's visual start
        # when the line begins with one): one pass, in time linear in the line (inserting them one at a time
        # was quadratic in their number)
        kept = set(order)
        after: dict[int, list[int]] = {}  # kept character -> the removed characters right after it in the text
        head: list[int] = []
        run = after.setdefault(s - 1, []) if s - 1 in kept else head
        for i in range(s, e):
            if i in kept:
                run = after.setdefault(i, [])
            else:
                run.append(i)
        out = list(head)
        for c in order:
            out.append(c)
            out.extend(after.get(c, ()))
        order = out
    return order, mirrored


def reorder_lines(text: str, cps: np.ndarray, lay, advance: np.ndarray, slot_of) -> None:
    """Moves the glyphs of each line of a right-to-left paragraph to their visual x, in place.

    `advance` is the per-slot advance the layout used (float32), `slot_of(ch)` the atlas slot of
    a mirrored character (or None). Lines of paragraphs with no RTL character are left as they are.
    """
    rtl = rtl_mask(cps)
    if not rtl.any():
        return
    # paragraphs: source lines, each with its terminating newline
    nl = np.flatnonzero((cps == 0x0A) | (cps == 0x0D))
    par_end = np.concatenate([nl + 1, [len(cps)]])
    par_start = np.concatenate([[0], nl + 1])
    rtl_cum = np.concatenate([[0], np.cumsum(rtl)])
    rtl_par = (rtl_cum[par_end] - rtl_cum[par_start]) > 0
    resolved: dict[int, tuple[list[dict], list[int]]] = {}  # paragraph -> records, their source indices
    g_src = lay.g_src
    adv = advance.astype(np.float32)
    for li, sel in _line_glyphs(lay):
        src = g_src[sel]
        # the line's source span, widened to its glyphs' characters (a newline marker's glyphs may be drawn
        # on the line after the one whose span ends with the newline)
        s = min(int(lay.l_src_start[li]), int(src[0]))
        e = max(int(lay.l_src_end[li]), int(src[-1]) + 1)
        p0 = int(np.searchsorted(par_end, s, side="right"))
        p1 = int(np.searchsorted(par_end, e - 1, side="right"))
        if not rtl_par[p0:p1 + 1].any():
            continue
        recs = []
        for p in range(p0, p1 + 1):
            if p not in resolved:
                r = _resolve(text, int(par_start[p]), int(par_end[p]))
                resolved[p] = r, [x["i"] for x in r]
            r, idx = resolved[p]
            recs.extend(r[bisect.bisect_left(idx, s):bisect.bisect_left(idx, e)])
        order, mirrored = _visual_order(recs, s, e, text)
        _place(lay, li, s, e, sel, order, adv)
        for i, ch in mirrored.items():
            k = int(np.searchsorted(src, i))
            slot = slot_of(ch)
            if k < len(src) and src[k] == i and slot is not None:
                lay.g_slot[_nth(sel, k)] = slot


def _line_glyphs(lay):
    """(line, glyphs) for every line that has glyphs: the glyphs drawn on its page at its baseline (the layout's
    runs), as a slice, or an index array where they are not contiguous. Not by source span: where a newline
    marker's space ends a line, its glyphs (at the newline's index) are on the next line, and the two lines'
    spans overlap."""
    runs: dict[int, list[tuple[int, int]]] = {}
    starts = lay.r_start.tolist()
    for r, li in enumerate(lay.run_lines().tolist()):
        if starts[r + 1] > starts[r]:
            runs.setdefault(li, []).append((starts[r], starts[r + 1]))
    for li in sorted(runs):
        spans = runs[li]
        if all(a[1] == b[0] for a, b in zip(spans, spans[1:])):
            yield li, slice(spans[0][0], spans[-1][1])
        else:
            yield li, np.concatenate([np.arange(g0, g1) for g0, g1 in spans])


def _nth(sel, k: int) -> int:
    return sel.start + k if isinstance(sel, slice) else int(sel[k])


def _place(lay, li: int, s: int, e: int, sel, order: list[int], adv: np.ndarray) -> None:
    """New x of the glyphs `sel` of line li: the source characters' cells laid out left to right in `order`.

    A character's cell is its glyphs' extent; a character with no glyph (a space) takes its share of
    the gap it left between glyphs, so stretched (justified) spaces keep their width. The gap between two
    adjacent characters' glyphs (the pens are binned as poppler's, so the next one is up to a bin off the
    previous one's end) stays in front of the glyph while they stay neighbours: where the order does not
    change, neither does any x.
    """
    gx = lay.g_x[sel].astype(np.float64)
    xs = gx.tolist()
    src = lay.g_src[sel].tolist()
    ends = (gx + adv[lay.g_slot[sel]]).tolist()
    width = [0.0] * (e - s)
    lead = [0.0] * (e - s)  # a glyph's gap from the previous character's glyphs, inside its cell
    first: dict[int, int] = {}  # source index -> its first glyph
    line_x = float(lay.l_x[li])
    pen, prev, k, n = line_x, s - 1, 0, len(src)
    while k < n:
        c, k0 = src[k], k
        end = ends[k]
        k += 1
        while k < n and src[k] == c:  # a character may have several glyphs (newline marker)
            end = max(end, ends[k])
            k += 1
        first[c] = k0
        gap, between = xs[k0] - pen, c - prev - 1
        if between > 0:
            for j in range(prev + 1 - s, c - s):
                width[j] += gap / between
        else:
            width[c - s] += gap
            lead[c - s] = gap
        width[c - s] += end - xs[k0]
        pen, prev = end, c
    # whitespace after the last glyph keeps no width: reordered to the visual start of a right-to-left
    # line it would push the glyphs past the frame (in left-to-right lines it hangs off the end unseen)
    new = list(xs)
    x, vprev = line_x, s - 1
    for c in order:
        k0 = first.get(c)
        if k0 is not None:
            pad = lead[c - s] if vprev == c - 1 else 0.0  # its logical neighbour is still its visual one
            k = k0
            while k < n and src[k] == c:
                new[k] = x + pad + (xs[k] - xs[k0])
                k += 1
        x += width[c - s]
        vprev = c
    lay.g_x[sel] = np.asarray(new, dtype=lay.g_x.dtype)
