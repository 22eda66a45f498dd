"""Benchmarks: one module per family, each turning data into glyph_rt.eval.Item lists with its metric."""
from __future__ import annotations

import json
from pathlib import Path

from ..item import Item


def read_text(path) -> str:
    """A data file's text, which must be UTF-8: otherwise an error naming the file and line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); "
                         "convert the file to UTF-8") from None


def read_json(path):
    """A UTF-8 JSON file's value: otherwise an error naming the file and line."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not JSON ({e.msg})") from None


def make_item(where: str, **fields) -> Item:
    """An Item of a data file's row; an error of its checks (no answers, an empty context) names the row (`where`:
    the file and line)."""
    try:
        return Item(**fields)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
