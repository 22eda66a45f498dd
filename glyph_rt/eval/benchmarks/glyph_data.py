"""Glyph's own evaluation data layout (its released evaluation set: RULER, LongBench and MRCR JSON/JSONL files).

- RULER: final_*_ruler_all_tasks_<length>.jsonl, rows {unique_id, context, question, task_name, outputs, ...}:
  the context is rendered, the question (instructions included) stays text.
- LongBench: <dataset>.jsonl with LongBench's fields (and Glyph's unique_id, config): longbench.item_from_row.
- MRCR: processed_<n>needle_*.json(l), rows with LongBench-like {unique_id, context, question} or MRCR's own
  {prompt, answer, random_string_to_prepend}.
Rows are recognised by their fields. Pages are rendered by glyph_rt with the run's config, or with row_configs=True
with each row's own `config` (Glyph's dashed keys) over it, as Glyph's rendering scripts take them (a font-path that
is not a file here is dropped and named in the item's metadata, font_missing); or, with rendered=True, the pages
Glyph rendered (image_paths) are sent as they are.

    items = load("Glyph_Evaluation/ruler/data")
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from ...fileio import json_lines, text_lines
from ..item import Item
from . import longbench, make_item, mrcr, read_json, read_text, require, ruler


def _rows(path: Path) -> list[tuple[int, dict]]:
    """The rows of a file, each with its number from 1 (a JSONL file's line, else its place in the list)."""
    if path.suffix == ".json":
        data = read_json(path)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of rows")
        return list(enumerate(data, 1))
    return list(json_lines(text_lines(read_text(path)), str(path)))


def ruler_item(row: dict, index: int, length: int | None, source: str) -> Item:
    where = f"{source}:{index + 1}"
    require(row, where, "a RULER row of Glyph's evaluation data",
            {"task_name": (str,), "outputs": (list, str), "context": (str,)})
    if not isinstance(row.get("question", ""), str):
        raise ValueError(f"{where}: question must be a string, got {type(row['question']).__name__}")
    task = row["task_name"]
    kind = "qa" if task.startswith("qa") else ("niah" if task.startswith("niah") else task)
    refs = row["outputs"] if isinstance(row["outputs"], list) else [row["outputs"]]
    meta = {"task": task}
    if length:
        meta["length"] = length
    return make_item(where, id=str(row.get("unique_id") or f"{Path(source).stem}-{index}"), context=row["context"],
                     question=row.get("question", ""), answers=[str(r) for r in refs],
                     metric="string_match_part" if kind == "qa" else "string_match_all",
                     max_new_tokens=ruler.TOKENS_TO_GENERATE.get(kind, 128), metadata=meta)


def mrcr_item(row: dict, index: int, source: str) -> Item:
    if "prompt" in row:
        it = mrcr.item_from_row(row, index, source)
    else:
        where = f"{source}:{index + 1}"
        require(row, where, "an MRCR row of Glyph's evaluation data",
                {"context": (str,), "question": (str,), "answer": (str,), "random_string_to_prepend": (str,)})
        n = mrcr.number(row, "n_needles", where) or 0
        it = make_item(where, id=str(row.get("unique_id") or f"{Path(source).stem}-{index}"), context=row["context"],
                       question=row["question"], answers=[row["answer"]], metric="mrcr",
                       max_new_tokens=mrcr.MAX_NEW_TOKENS,
                       metadata={"task": f"mrcr_{n}needle" if n else "mrcr", "needles": n,
                                 "random_string_to_prepend": row["random_string_to_prepend"]})
    return it


def row_config(row: dict, base_dir: Path) -> tuple[dict, str | None]:
    """A row's own render config (Glyph's dashed keys; a relative font-path is taken from `base_dir`), and the
    font-path dropped because it is not a file here (or None)."""
    cfg = dict(row.get("config") or {})
    font = cfg.get("font-path")
    if font:
        path = Path(font).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if path.is_file():
            cfg["font-path"] = str(path)
        else:
            del cfg["font-path"]
            return cfg, font
    return cfg, None


def load(path, limit: int | None = None, uuid: bool = False, rendered: bool = False,
         row_configs: bool = False) -> list[Item]:
    """Items of Glyph's evaluation files under `path` (a file or a directory, searched recursively);
    RULER's UUID tasks are left out unless uuid; `limit` rows per file. rendered: send the pages Glyph's
    scripts rendered (the rows' image_paths) instead of rendering the context, to compare the two. row_configs:
    render each row with its own `config` over the run's."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.suffix in (".json", ".jsonl"))
    if not p.exists() or not files:
        raise FileNotFoundError(f"Glyph evaluation data: {str(p)!r} has no .json or .jsonl files")
    items: list[Item] = []
    for f in files:
        m = re.search(r"_(\d+)\.jsonl?$", f.name)
        length = int(m.group(1)) if m else None
        taken = 0
        for line, row in _rows(f):
            i = line - 1
            if limit and taken >= limit:
                break
            if not isinstance(row, dict):
                raise ValueError(f"{f}:{line}: a row must be a JSON object, got {type(row).__name__}")
            if "task_name" in row and "outputs" in row:
                if row["task_name"] in ruler.UUID_TASKS and not uuid:
                    continue
                items.append(ruler_item(row, i, length, str(f)))
            elif "random_string_to_prepend" in row:
                items.append(mrcr_item(row, i, str(f)))
            elif "answers" in row and "input" in row:
                items.append(longbench.item_from_row(row, row.get("dataset") or longbench.dataset_of(f), i, str(f)))
            else:
                raise ValueError(f"{f}:{i + 1}: not a RULER, LongBench or MRCR row of Glyph's evaluation data "
                                 f"(fields: {', '.join(sorted(row)[:8])})")
            if row_configs and row.get("config"):
                cfg, missing_font = row_config(row, f.parent)
                meta = {**items[-1].metadata, **({"font_missing": Path(missing_font).name} if missing_font else {})}
                items[-1] = dataclasses.replace(items[-1], render_config=cfg, metadata=meta)  # keys checked
            if rendered:
                paths = row.get("image_paths") or []
                missing = [p_ for p_ in paths if not Path(p_).is_file()]
                if not paths or missing:
                    raise ValueError(f"{f}:{i + 1}: rendered=True, but the row's image_paths are "
                                     f"{'missing' if not paths else 'not files: ' + missing[0]}")
                items[-1].images = list(paths)
            taken += 1
    from ..metrics import check_packages

    try:
        check_packages({it.metric for it in items})  # LongBench's Chinese rows need jieba: said before any run
    except RuntimeError as e:
        raise RuntimeError(f"{p}: {e}") from None
    return items
