"""Font resolution: built-in families, user font files and the fallback chain."""
from __future__ import annotations

import functools
import os
from pathlib import Path

FONT_DIR = Path(__file__).resolve().parent.parent / "fonts"
BUILTIN_FONTS = {
    "sans": FONT_DIR / "DejaVuSans.ttf",
    "serif": FONT_DIR / "DejaVuSerif.ttf",
    "mono": FONT_DIR / "DejaVuSansMono.ttf",
}
# File name stems of common CJK fonts, best first.
CJK_FONT_NAMES = (
    "NotoSansCJK", "NotoSansSC", "NotoSerifCJK", "SourceHanSans", "SourceHanSerif",
    "wqy-microhei", "wqy-zenhei", "DroidSansFallback", "NotoSansMonoCJK",
)
SYSTEM_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts",
                    "/Library/Fonts", "/System/Library/Fonts", "C:/Windows/Fonts")


@functools.lru_cache(maxsize=1)
def find_cjk_font() -> str | None:
    """A CJK-capable font: $GLYPH_RT_CJK_FONT, else the first known CJK font in the system font dirs."""
    env = os.environ.get("GLYPH_RT_CJK_FONT")
    if env:
        return env if Path(env).is_file() else None
    for d in SYSTEM_FONT_DIRS:
        root = Path(os.path.expanduser(d))
        if not root.is_dir():
            continue
        found = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".ttf", ".otf", ".ttc"))
        for name in CJK_FONT_NAMES:
            for p in found:
                if p.name.lower().startswith(name.lower()):
                    return str(p)
    return None


def resolve_fonts(config) -> list[str]:
    """The font chain for a config: main font, the user's fallbacks, the built-in sans, a CJK font."""
    main = config.font_path or str(BUILTIN_FONTS[config.font_family])
    chain = [main, *config.fallback_fonts]
    sans = str(BUILTIN_FONTS["sans"])
    if sans not in chain:
        chain.append(sans)
    if config.auto_cjk_fallback:
        cjk = find_cjk_font()
        if cjk and cjk not in chain:
            chain.append(cjk)
    seen: list[str] = []
    for p in chain:
        if p not in seen:
            seen.append(p)
    return seen
