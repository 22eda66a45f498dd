"""Scripts that need shaping (Devanagari, Bengali, Tamil, ..., Thai marks, Myanmar, Khmer) with HarfBuzz.

Each run of such characters (a word: runs stop at spaces and other scripts) is shaped by uharfbuzz
with the first font of the atlas that has all its characters. HarfBuzz returns glyphs grouped in
clusters (a Devanagari syllable with its conjunct, reordered vowel sign and marks), each covering a
span of characters. A cluster becomes one atlas slot held by glyph ids (`FontAtlas.cluster_slot`):
its glyphs composited at HarfBuzz's offsets, its advance the sum of theirs. The layout then sees one
entry per source character as before: the cluster's first character draws the cluster, the others
a zero-width slot without ink, so line and page spans stay exact and every character is counted as
placed. Latin and every other text is not touched (the Latin fidelity test guards it).

The slots are passed to the layout engine as codepoints past U+10FFFF through a lookup table
extended for the text (`shape` returns it), so the C++ engine needs nothing new.
"""
from __future__ import annotations

import functools

import numpy as np

from .fonts import split_face

# Blocks whose text needs shaping beyond one glyph per character.
SHAPED_RANGES = (
    (0x0900, 0x0DFF),  # Devanagari, Bengali, Gurmukhi, Gujarati, Oriya, Tamil, Telugu, Kannada, Malayalam, Sinhala
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x0F00, 0x0FFF),  # Tibetan
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x1CD0, 0x1CFF),  # Vedic extensions
    (0xA8E0, 0xA8FF),  # Devanagari Extended
    (0xA9E0, 0xA9FF),  # Myanmar Extended-B
    (0xAA60, 0xAA7F),  # Myanmar Extended-A
    (0x11000, 0x1107F),  # Brahmi
)
JOINERS = (0x200C, 0x200D)  # ZWNJ / ZWJ: part of a run (they select conjunct forms)
_EMPTY = ()


def shaped_mask(cps: np.ndarray) -> np.ndarray:
    m = np.zeros(len(cps), bool)
    for lo, hi in SHAPED_RANGES:
        m |= (cps - np.uint32(lo)) <= np.uint32(hi - lo)
    return m


def needs_shaping(text: str, cps: np.ndarray) -> bool:
    """Whether the text holds a character of a script that needs shaping (fast for the common no case)."""
    if text.isascii():
        return False
    high = cps[cps >= 0x0900]
    return bool(len(high)) and bool(shaped_mask(high).any())


@functools.lru_cache(maxsize=1)
def available() -> bool:
    try:
        import uharfbuzz  # noqa: F401
    except ImportError:
        import warnings

        warnings.warn("Devanagari, Thai and other scripts that need shaping are drawn one glyph per character: "
                      "pip install 'glyph_rt[scripts]' (uharfbuzz)", RuntimeWarning, stacklevel=3)
        return False
    return True


@functools.lru_cache(maxsize=32)
def _hb_font(font: str):
    import uharfbuzz as hb

    path, index = split_face(font)
    return hb.Font(hb.Face(hb.Blob.from_file_path(path), index))


def shape_run(font: str, cps: list[int]) -> list[tuple[int, int, tuple]]:
    """HarfBuzz's clusters of one run: (first, end) character offsets in the run and the glyphs
    (glyph id, x advance, x offset, y offset; font units) of each, in visual order."""
    import uharfbuzz as hb

    buf = hb.Buffer()
    buf.add_codepoints(cps)
    buf.guess_segment_properties()
    hb.shape(_hb_font(font), buf, {})
    groups: dict[int, list] = {}
    for info, pos in zip(buf.glyph_infos, buf.glyph_positions):
        groups.setdefault(info.cluster, []).append((info.codepoint, pos.x_advance, pos.x_offset, pos.y_offset))
    starts = sorted(groups)
    ends = starts[1:] + [len(cps)]
    if starts and starts[0] != 0:  # every character belongs to a cluster
        starts[0] = 0
        groups[0] = groups.pop(min(groups))
    return [(s, e, tuple(groups[s])) for s, e in zip(starts, ends)]


def _face_for(atlas, cps: list[int]) -> int:
    """Index of the first atlas font that has every character of the run (joiners aside), or -1."""
    for i, face in enumerate(atlas._faces):
        if all(c in JOINERS or face.get_char_index(c) for c in cps):
            return i
    return -1


def shape(text: str, draw: np.ndarray, atlas) -> tuple[np.ndarray, np.ndarray] | None:
    """(codepoints to lay out, lookup table) with every shaped run's clusters as slots; None when the
    text has nothing to shape (or uharfbuzz is missing). Both arrays are new; `draw` is not changed."""
    if not needs_shaping(text, draw) or not available():
        return None
    mask = shaped_mask(draw)
    mask |= np.isin(draw, JOINERS) & (np.roll(mask, 1) | np.roll(mask, -1))
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.view(np.int8), [0]])))
    runs = edges.reshape(-1, 2)
    out = draw.astype(np.uint32, copy=True)
    virtual: dict[int, int] = {}  # slot -> codepoint past the table

    def code(slot: int) -> int:
        c = virtual.get(slot)
        if c is None:
            c = virtual[slot] = len(atlas.lut) + len(virtual)
        return c

    with atlas.lock:  # FreeType faces are used by one thread at a time
        _shape_runs(runs.tolist(), draw, out, atlas, code)
    if not virtual:
        return None
    lut = np.empty(len(atlas.lut) + len(virtual), np.int32)
    lut[: len(atlas.lut)] = atlas.lut
    for slot, c in virtual.items():
        lut[c] = slot
    return out, lut


def _shape_runs(runs, draw: np.ndarray, out: np.ndarray, atlas, code) -> None:
    cache: dict[tuple, list | None] = {}
    for s, e in runs:
        key = tuple(draw[s:e].tolist())
        plan = cache.get(key, _EMPTY)
        if plan is _EMPTY:
            face = _face_for(atlas, list(key))
            plan = None
            if face >= 0:
                font = atlas.fonts[face]
                plan = [(a, b, atlas.cluster_slot(face, glyphs)) for a, b, glyphs in shape_run(font, list(key))]
                empty = atlas.cluster_slot(face, ())
                plan = [(a, b, slot, empty) for a, b, slot in plan]
            cache[key] = plan
        if plan is None:  # no font has the whole run: drawn one glyph per character
            continue
        for a, b, slot, empty in plan:
            out[s + a] = code(slot)
            out[s + a + 1: s + b] = code(empty)
