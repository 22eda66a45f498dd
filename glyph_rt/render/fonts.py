"""Font resolution: built-in families, user font files and the fallback chain.

The chain for a config is: the main font, the user's `fallback_fonts`, the bundled DejaVu Sans,
then a CJK font ($GLYPH_RT_CJK_FONT, else the Noto Sans CJK of the `glyph_rt[cjk]` extra, else an
installed one found through fontconfig). Characters the chain still lacks are looked up by
coverage among the installed fonts (fontconfig), and `install_hint` says what to install for the
ones no font has.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import unicodedata
from pathlib import Path

FONT_DIR = Path(__file__).resolve().parent.parent / "fonts"
BUILTIN_FONTS = {
    "sans": FONT_DIR / "DejaVuSans.ttf",
    "serif": FONT_DIR / "DejaVuSerif.ttf",
    "mono": FONT_DIR / "DejaVuSansMono.ttf",
}
CJK_ENV = "GLYPH_RT_CJK_FONT"
CJK_PROBE = 0x4E00  # 一: a CJK font is one that has it
CJK_FACE = 2  # Noto Sans CJK SC in NotoSansCJK-Regular.ttc (JP, KR, SC, TC, HK): Glyph's Chinese
CJK_EXTRA_HINT = "pip install 'glyph_rt[cjk]' (or apt-get install fonts-noto-cjk)"
# Scripts (first word of the Unicode character name) the CJK font covers.
CJK_SCRIPTS = {"CJK", "HIRAGANA", "KATAKANA", "HANGUL", "BOPOMOFO", "IDEOGRAPHIC", "KANGXI", "HALFWIDTH",
               "FULLWIDTH"}


def split_face(font: str) -> tuple[str, int]:
    """"file.ttc#2" -> ("file.ttc", 2): a face of a font collection; a plain path is face 0."""
    path, sep, index = font.rpartition("#")
    if sep and index.isdigit() and not os.path.exists(font):
        return path, int(index)
    return font, 0


def _face_spec(path: str, index: int) -> str:
    return f"{path}#{index}" if index else path


@functools.lru_cache(maxsize=1)
def bundled_cjk_font() -> str | None:
    """Noto Sans CJK from the `glyph_rt[cjk]` extra (PyPI package noto-cjk-sans-otc), if installed."""
    try:
        import noto_cjk_sans_otc
    except ImportError:
        return None
    path = Path(str(noto_cjk_sans_otc.FONT_PATH))
    return _face_spec(str(path), CJK_FACE) if path.is_file() else None


@functools.lru_cache(maxsize=1)
def find_cjk_font() -> str | None:
    """A CJK-capable font: $GLYPH_RT_CJK_FONT, else the `glyph_rt[cjk]` font, else an installed one."""
    env = os.environ.get(CJK_ENV)
    if env:
        if not Path(env).is_file():
            raise ValueError(f"${CJK_ENV}={env!r} is not a font file: point it at a .ttf/.otf/.ttc or unset it")
        return env
    return bundled_cjk_font() or system_font_for(CJK_PROBE)


def resolve_fonts(config) -> list[str]:
    """The font chain for a config: main font, the user's fallbacks, the built-in sans, a CJK font."""
    main = config.font_path or str(BUILTIN_FONTS[config.font_family])
    chain = [main, *config.fallback_fonts, str(BUILTIN_FONTS["sans"])]
    if config.auto_cjk_fallback:
        cjk = find_cjk_font()
        if cjk:
            chain.append(cjk)
    return list(dict.fromkeys(chain))


# ----------------------------------------------------------------- installed fonts (fontconfig)
def _style_rank(path: str, index: int, style: str, family: str) -> tuple:
    """Sort key among fonts that cover a character: regular sans text faces first, Simplified
    Chinese forms first among the faces of a CJK collection (Glyph's Chinese)."""
    fam = family.lower()
    return (style.lower() not in ("regular", "book", "normal", ""), "serif" in fam, "mono" in fam,
            any(w in fam for w in ("looped", "display", "ui")), "cjk" in fam and not fam.endswith(" sc"),
            len(family), path, index)


@functools.lru_cache(maxsize=1)
def system_fonts() -> tuple[tuple[str, tuple[tuple[int, int], ...]], ...]:
    """Installed outline fonts and the codepoint ranges each covers, best-suited first (one fc-list call).

    A face of a collection is named "file.ttc#index". Colour bitmap fonts (e.g. Noto Color Emoji)
    are left out: the atlas draws outlines only. Empty where fontconfig is not installed.
    """
    exe = shutil.which("fc-list")
    if exe is None:
        return ()
    try:
        out = subprocess.run([exe, "--format", "%{file}\t%{index}\t%{style[0]}\t%{family[0]}\t%{charset}\n",
                              ":outline=true"], capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    fonts = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) != 5:
            continue
        path, index, style, family, charset = parts
        index = int(index) if index.isdigit() else 0
        ranges = []
        for r in charset.split():
            lo, _, hi = r.partition("-")
            try:
                ranges.append((int(lo, 16), int(hi or lo, 16)))
            except ValueError:
                continue
        if ranges and os.path.isfile(path):
            fonts.append((_style_rank(path, index, style, family), _face_spec(path, index), tuple(ranges)))
    fonts.sort(key=lambda f: f[0])
    return tuple((spec, ranges) for _, spec, ranges in fonts)


def _covers(ranges, cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in ranges)


def system_font_for(cp: int) -> str | None:
    """The best installed outline font that has `cp`, or None."""
    for path, ranges in system_fonts():
        if _covers(ranges, cp):
            return path
    return None


def system_fallbacks(codepoints, exclude=()) -> list[str]:
    """Installed fonts (not in `exclude`) that together cover as many of `codepoints` as fontconfig knows.

    One font per character still uncovered, picked best-suited first, so a text in one script
    usually adds a single font.
    """
    todo = sorted({int(c) for c in codepoints if unicodedata.category(chr(int(c))) not in ("Cc", "Cs", "Co", "Cn")})
    if not todo:
        return []
    chosen: list[str] = []
    fonts = [(p, r) for p, r in system_fonts() if p not in exclude]
    while todo:
        cp = todo.pop(0)
        hit = next(((p, r) for p, r in fonts if _covers(r, cp)), None)
        if hit is None:
            continue
        chosen.append(hit[0])
        fonts.remove(hit)
        todo = [c for c in todo if not _covers(hit[1], c)]
    return chosen


# ----------------------------------------------------------------- what to install
def script_of(ch: str) -> str:
    """A coarse script name for a character: "CJK" for CJK blocks, "Emoji", "Symbols", "Format" (invisible
    controls: bidi isolates, tags), else the first word of its Unicode name where that names a script, a word that
    begins some letter's name ("Devanagari" for a Devanagari danda), or "Other"."""
    cp = ord(ch)
    cat = unicodedata.category(ch)
    name = unicodedata.name(ch, "")
    word = name.replace("-", " ").split()[0] if name else ""  # ARABIC-INDIC DIGIT ONE: Arabic
    if word in CJK_SCRIPTS:
        return "CJK"
    if cat == "So" and (cp >= 0x1F000 or 0x2600 <= cp <= 0x27BF):
        return "Emoji"
    if cat == "Cf":
        return "Format"
    if cat[0] == "S" or word in NOT_SCRIPTS or (cat[0] in "NP" and word and word not in _letter_scripts()):
        return "Symbols"  # EM DASH, SUPERSCRIPT TWO, CIRCLED DIGIT ONE, MATHEMATICAL BOLD CAPITAL A: no script
    if not word or cat[0] not in "LMNP":
        return "Unassigned" if cat == "Cn" else "Other"
    return word.title()


# first words of letters' and digits' names that are no script: the forms many scripts' characters take
NOT_SCRIPTS = {"SUPERSCRIPT", "SUBSCRIPT", "MATHEMATICAL", "MODIFIER", "CIRCLED", "PARENTHESIZED", "SQUARED",
               "NEGATIVE", "DOUBLE", "COMBINING", "VULGAR", "ROMAN", "DIGIT", "TAG", "SMALL", "OUTLINED", "SEGMENTED"}


@functools.cache
def _letter_scripts() -> frozenset:
    """The first words of the letters' Unicode names (LATIN, DEVANAGARI, ...): the scripts' names."""
    return frozenset(unicodedata.name(chr(c)).replace("-", " ").split()[0] for c in range(0x110000)
                     if unicodedata.category(chr(c))[0] == "L" and unicodedata.name(chr(c), ""))


def install_hint(script: str) -> str:
    """What to install so characters of `script` are drawn."""
    if script == "CJK":
        return CJK_EXTRA_HINT
    if script == "Emoji":
        return "apt-get install fonts-symbola (outline emoji; colour emoji fonts are bitmaps the atlas cannot draw)"
    if script == "Symbols":
        return "a symbols font: apt-get install fonts-noto-core fonts-symbola, or name one in fallback_fonts"
    if script == "Format":
        return ("no font draws these invisible format characters (bidi isolates, tags; Glyph's pages show boxes "
                "too): leave them out of the text")
    if script in ("Unassigned", "Other"):
        return "no font draws these (unassigned or control characters)"
    return (f"a font with {script} characters: apt-get install fonts-noto-core (Noto Sans {script}), "
            "or name a font file in fallback_fonts")


def missing_hints(chars) -> dict[str, str]:
    """Script -> what to install, for characters drawn as boxes."""
    return {s: install_hint(s) for s in dict.fromkeys(script_of(c) for c in chars)}
