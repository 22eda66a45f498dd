"""OpenAI MRCR (multi-round co-reference) from its published parquet or JSONL files.

Each row has prompt (a JSON list of chat messages), answer, random_string_to_prepend, n_needles,
desired_msg_index, total_messages and n_chars. As in Glyph's evaluation, the conversation before the final
request is rendered as pages, one turn per line block ("User: ..." / "Assistant: ..."), and the final request
stays text. The text baseline gets the conversation as chat messages, turn by turn, as MRCR's own evaluation
sends it (load(..., chat=False): the same flattened text as the pages, followed by the request). Scored by the
sequence ratio with the prefix rule (metrics.mrcr). Lengths are binned by text tokens in the report
(0k-8k ... 64k-128k, as the paper's Table 2).

    items = load("data/mrcr/2needle", needles=[2], limit=100)
"""
from __future__ import annotations

import json
from pathlib import Path

from ...fileio import json_lines, text_lines
from ..item import Item

BINS = [(0, 8192), (8192, 16384), (16384, 32768), (32768, 65536), (65536, 131072), (131072, 262144),
        (262144, 524288), (524288, 1048576)]
MAX_NEW_TOKENS = 2048


def bin_label(tokens: int) -> str:
    for lo, hi in BINS:
        if tokens <= hi:
            return f"{lo // 1024}k-{hi // 1024}k"
    return f">{BINS[-1][1] // 1024}k"


def flatten(messages: list[dict]) -> str:
    """Glyph's rendering of a conversation: 'User: ...' / 'Assistant: ...' turns, one after another."""
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def item_from_row(row: dict, index: int, source: str = "", chat: bool = True) -> Item:
    where = f"{source}:{index + 1}" if source else f"row {index}"
    missing = [k for k in ("prompt", "answer", "random_string_to_prepend") if k not in row]
    if missing:
        raise ValueError(f"{where}: not an MRCR row (missing {', '.join(missing)})")
    messages = json.loads(row["prompt"]) if isinstance(row["prompt"], str) else list(row["prompt"])
    if not messages or messages[-1].get("role") != "user":
        raise ValueError(f"{where}: the prompt must end with the user's request")
    *history, request = messages
    n = int(row.get("n_needles") or 0)
    meta = {"task": f"mrcr_{n}needle" if n else "mrcr", "needles": n,
            "random_string_to_prepend": row["random_string_to_prepend"]}
    for k in ("desired_msg_index", "total_messages", "n_chars"):
        if row.get(k) is not None:
            meta[k] = int(row[k])
    context = flatten(history)
    return Item(id=str(row.get("unique_id") or f"mrcr{n}-{index}"), context=context, question=request["content"],
                answers=[row["answer"]], metric="mrcr", max_new_tokens=MAX_NEW_TOKENS, metadata=meta,
                text_prompt=f"{context}\n\nUser: {request['content']}",
                messages=[{"role": m["role"], "content": m["content"]} for m in messages] if chat else [])


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise RuntimeError("reading MRCR parquet files needs pyarrow: pip install 'glyph_rt[eval]'") from None
        return pq.read_table(path).to_pylist()
    if path.suffix == ".jsonl":
        return [row for _, row in json_lines(text_lines(path.read_text(encoding="utf-8")), str(path))]
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of MRCR rows")
        return data
    raise ValueError(f"{path}: MRCR data must be .parquet, .jsonl or .json")


def load(path, needles=None, limit: int | None = None, max_chars: int | None = None, chat: bool = True) -> list[Item]:
    """Items from an MRCR file or a directory of them (searched recursively), keeping rows with n_needles in
    `needles` and at most `max_chars` characters, `limit` per needle count; chat: the text baseline's messages
    (else the flattened text)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix in (".parquet", ".jsonl", ".json"))
        if not files:
            raise FileNotFoundError(f"MRCR data: {p} has no .parquet, .jsonl or .json files")
    elif p.is_file():
        files = [p]
    else:
        raise FileNotFoundError(f"MRCR data: {str(p)!r} does not exist")
    items, counts = [], {}
    for f in files:
        for i, row in enumerate(read_rows(f)):
            n = int(row.get("n_needles") or 0)
            if needles and n not in needles:
                continue
            if max_chars and row.get("n_chars") and int(row["n_chars"]) > max_chars:
                continue
            if limit and counts.get(n, 0) >= limit:
                continue
            it = item_from_row(row, i, str(f), chat)
            if "unique_id" not in row:
                it.id = f"{f.stem}-{i}"
            items.append(it)
            counts[n] = counts.get(n, 0) + 1
    return items
