"""PNG files of rendered pages: greyscale when the page has no colour, a fast deflate, atomic writes.

Rendered pages are mostly flat background, so scanlines are stored unfiltered and compressed
with ISA-L's deflate (python-isal; the standard zlib when it is missing), which on Glyph's pages
is about 10x faster than Pillow's level-1 encoder and produces smaller files. Files are written
to a hidden temporary name in the same directory and renamed into place, so a reader never
sees a truncated page, whatever interrupts the writer.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from ..fileio import json_text

try:
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover - isal is a declared dependency; zlib is the same format
    import zlib as _zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPES = {1: 0, 3: 2}  # channels -> PNG colour type (greyscale, RGB)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", _zlib.crc32(data, _zlib.crc32(kind)))


def check_level(level: int) -> int:
    """A deflate level as zlib numbers them, 0 (stored) to 9; ValueError otherwise. ISA-L's deflate has levels 0-3:
    4-9 compress at its 3."""
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 9:
        raise ValueError(f"compress_level: {level!r} must be a whole number 0-9")
    return level


def encode_png(image: np.ndarray, level: int = 1) -> bytes:
    """PNG bytes of a uint8 image: [H, W] (greyscale) or [H, W, 3] (RGB); any strides; `level`: check_level's."""
    level = min(check_level(level), 3) if _zlib.__name__.startswith("isal") else check_level(level)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in COLOR_TYPES):
        raise ValueError(f"encode_png: need a uint8 [H, W] or [H, W, 3] array, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    c = 1 if image.ndim == 2 else image.shape[2]
    if h == 0 or w == 0:
        raise ValueError(f"encode_png: a PNG cannot be {w}x{h} pixels")
    rows = np.empty((h, w * c + 1), np.uint8)
    rows[:, 0] = 0  # filter type None on every scanline
    rows[:, 1:] = image.reshape(h, w * c)
    header = struct.pack(">IIBBBBB", w, h, 8, COLOR_TYPES[c], 0, 0, 0)
    return b"".join((PNG_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", _zlib.compress(rows, level)),
                     _chunk(b"IEND", b"")))


def page_name(index: int) -> str:
    """File name of the page at 0-based `index`: page_001.png, ..., page_1000.png."""
    return f"page_{index + 1:03d}.png"


def temp_path(path: Path) -> Path:
    """The hidden name a file is written under before it is renamed to `path`."""
    return path.with_name(f".{path.name}.tmp")


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file and a rename: `path` is never partial."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and not e.filename:  # name the file (a failed write() does not)
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def write_png(path: str | os.PathLike, image: np.ndarray, grey: bool = False, level: int = 1) -> int:
    """Writes a page ([H, W, 3] uint8) as PNG, greyscale when `grey` (the caller knows every pixel
    has R = G = B, e.g. from the page's palette); returns the file's size in bytes."""
    data = encode_png(image[..., 0] if grey else image, level)
    write_atomic(path, data)
    return len(data)


def summary_json(summary: dict) -> bytes:
    """summary.json's bytes: UTF-8 JSON; text that cannot be UTF-8 (a lone surrogate) is escaped."""
    return (json_text(summary, indent=2) + "\n").encode("utf-8")
