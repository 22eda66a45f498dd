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


_KINDS = {list: "a list", str: "a string", dict: "an object"}


def require(row, where: str, what: str, fields: dict) -> None:
    """`row` is an object with each of `fields` (name -> the types it may have); else an error naming the row
    (`where`: the file and row), what it is (`what`: "a RULER row of Glyph's evaluation data", "a SQuAD
    question") and the field."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: {what} must be a JSON object, got {type(row).__name__}")
    missing = [k for k in fields if k not in row]
    if missing:
        raise ValueError(f"{where}: {what} needs {', '.join(missing)} (fields: {', '.join(sorted(row)[:8])})")
    for k, kinds in fields.items():
        if not isinstance(row[k], kinds):
            want = " or ".join(_KINDS[t] for t in kinds)
            raise ValueError(f"{where}: {k} must be {want}, got {type(row[k]).__name__}")


def make_item(where: str, **fields) -> Item:
    """An Item of a data file's row; an error of its checks (no answers, an empty context) names the row (`where`:
    the file and line)."""
    try:
        return Item(**fields)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
