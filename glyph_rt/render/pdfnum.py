"""Numbers as reportlab writes them into a PDF and as poppler reads them back.

Glyph's official pages are drawn by poppler from reportlab's PDF, so where a glyph lands depends on
the printed numbers, not on the exact ones. The C++ layout engine has the same three functions
(csrc/layout/layout.cpp); the tests hold them equal.
"""
from __future__ import annotations

import math

import numpy as np

_LOG_E_10 = math.log(10.0)


def fp_str(v: float) -> str:
    """reportlab's `rl_accel.fp_str` of one number: at most 6 decimals, fewer for larger numbers
    (6 - int(log10 |v|)), trailing zeros dropped, and no leading zero before the point."""
    a = abs(v)
    if a <= 1e-7:
        return "0"
    places = 6 if a <= 1 else min(max(0, 6 - int(math.log(a) / _LOG_E_10)), 6)
    s = f"{v:.{places}f}"
    if places:
        s = s.rstrip("0").rstrip(".")
    return s[1:] if s[0] == "0" and len(s) > 1 else s


def pdf_number(v: float) -> float:
    """`v` as poppler reads `fp_str(v)`: poppler's Lexer takes the integer part, then adds each decimal
    digit times a scale that starts at 0.1 and is multiplied by 0.1 after each digit, in double."""
    s = fp_str(v)
    neg = s.startswith("-")
    whole, _, frac = s.lstrip("-").partition(".")
    x, scale = float(int(whole or "0")), 0.1
    for c in frac:
        x = x + scale * (ord(c) - 48)
        scale *= 0.1
    return -x if neg else x


def pdf_float(v: float) -> float:
    """`fp_str(v)` read back by Python's float(), as reportlab does when it merges two text moves."""
    return float(fp_str(v))



def pdf_numbers(values) -> np.ndarray:
    """float64 array of `pdf_number` of every value (computed once per distinct value)."""
    u, inv = np.unique(np.asarray(values, np.float64), return_inverse=True)
    return np.asarray([pdf_number(v) for v in u.tolist()], np.float64)[inv.reshape(-1)]
