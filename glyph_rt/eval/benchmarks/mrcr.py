"""OpenAI MRCR (multi-round co-reference) from its published parquet or JSONL files.

Each row has prompt (a JSON list of chat messages), answer, random_string_to_prepend, n_needles,
desired_msg_index, total_messages and n_chars. As in Glyph's evaluation, the conversation before the final
request is rendered as pages, one turn per line block ("User: ..." / "Assistant: ..."), and the final request
stays text. The text baseline gets the conversation as chat messages, turn by turn, as MRCR's own evaluation
sends it (load(..., chat=False): the same flattened text as the pages, followed by the request). Scored by the
sequence ratio with the prefix rule (metrics.mrcr). Lengths are binned by text tokens in the report
(0k-8k ... 64k-128k, as the paper's Table 2: the context's tokens, Qwen's tokenizer by default); the published
files go to 1M tokens, and max_tokens keeps the rows the paper's bins hold.

    items = load("data/mrcr/2needle", needles=[2], limit=100, max_tokens=128 * 1024)
"""
from __future__ import annotations

import json
from pathlib import Path

from ...fileio import json_lines, text_lines
from ..item import Item
from . import make_item, read_json, read_text

BINS = [(0, 8192), (8192, 16384), (16384, 32768), (32768, 65536), (65536, 131072), (131072, 262144),
        (262144, 524288), (524288, 1048576)]
MAX_NEW_TOKENS = 2048
ROLES = ("user", "assistant", "system")


def bin_label(tokens: int) -> str:
    for lo, hi in BINS:
        if tokens <= hi:
            return f"{lo // 1024}k-{hi // 1024}k"
    return f">{BINS[-1][1] // 1024}k"


def flatten(messages: list[dict]) -> str:
    """Glyph's rendering of a conversation: 'User: ...' / 'Assistant: ...' turns, one after another."""
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def number(row: dict, key: str, where: str) -> int | None:
    """An integer field of a row (None when absent or null); an error naming the row and field otherwise."""
    v = row.get(key)
    if v is None:
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {key} must be an integer, got {v!r:.40}") from None


def chat_messages(prompt, where: str) -> list[dict]:
    """The prompt's chat messages (a JSON string, as the published files hold them, or the list itself)."""
    if isinstance(prompt, str):
        try:
            prompt = json.loads(prompt)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: prompt is not JSON ({e.msg})") from None
    ok = isinstance(prompt, (list, tuple)) and all(
        isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in prompt)
    if not ok:
        raise ValueError(f"{where}: prompt must be a list of chat messages {{role: {'|'.join(ROLES)}, content: "
                         f"string}}, got {json.dumps(prompt, default=str)[:60]}")
    if not prompt or prompt[-1]["role"] != "user":
        raise ValueError(f"{where}: the prompt must end with the user's request")
    return list(prompt)


def item_from_row(row: dict, index: int, source: str = "", chat: bool = True) -> Item:
    where = f"{source}:{index + 1}" if source else f"row {index}"
    if not isinstance(row, dict):
        raise ValueError(f"{where}: not an MRCR row (a JSON object), got {type(row).__name__}")
    missing = [k for k in ("prompt", "answer", "random_string_to_prepend") if k not in row]
    if missing:
        raise ValueError(f"{where}: not an MRCR row (missing {', '.join(missing)})")
    bad = [k for k in ("answer", "random_string_to_prepend") if not isinstance(row[k], str)]
    if bad:
        raise ValueError(f"{where}: {bad[0]} must be a string, got {type(row[bad[0]]).__name__}")
    messages = chat_messages(row["prompt"], where)
    *history, request = messages
    n = number(row, "n_needles", where) or 0
    meta = {"task": f"mrcr_{n}needle" if n else "mrcr", "needles": n,
            "random_string_to_prepend": row["random_string_to_prepend"]}
    for k in ("desired_msg_index", "total_messages", "n_chars"):
        if row.get(k) is not None:
            meta[k] = number(row, k, where)
    context = flatten(history)
    return make_item(where, id=str(row.get("unique_id") or f"mrcr{n}-{index}"), context=context,
                     question=request["content"], answers=[row["answer"]], metric="mrcr",
                     max_new_tokens=MAX_NEW_TOKENS, metadata=meta,
                     text_prompt=f"{context}\n\nUser: {request['content']}",
                     messages=[{"role": m["role"], "content": m["content"]} for m in messages] if chat else [])


def read_rows(path: Path) -> list[dict]:
    return [row for _, row in numbered_rows(path)]


def numbered_rows(path: Path) -> list[tuple[int, dict]]:
    """The rows of an MRCR file, each with its number from 1 (a JSONL file's line, else its place)."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise RuntimeError("reading MRCR parquet files needs pyarrow: pip install 'glyph_rt[eval]'") from None
        return list(enumerate(pq.read_table(path).to_pylist(), 1))
    if path.suffix == ".jsonl":
        return list(json_lines(text_lines(read_text(path)), str(path)))
    if path.suffix == ".json":
        data = read_json(path)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of MRCR rows")
        return list(enumerate(data, 1))
    raise ValueError(f"{path}: MRCR data must be .parquet, .jsonl or .json")


def load(path, needles=None, limit: int | None = None, max_chars: int | None = None, chat: bool = True,
         max_tokens: int | None = None, tokenizer: str | None = "default") -> list[Item]:
    """Items from an MRCR file or a directory of them (searched recursively), keeping rows with n_needles in
    `needles`, at most `max_chars` characters (the row's n_chars) and at most `max_tokens` text tokens (the
    item's context counted with `tokenizer`, default Qwen's, as the report's length bins count it), `limit` per
    needle count; chat: the text baseline's messages (else the flattened text)."""
    tok = None
    if max_tokens:
        from ...render.tokens import get_tokenizer

        if not tokenizer:
            raise ValueError("MRCR max_tokens counts text tokens: it needs a tokenizer")
        tok = get_tokenizer(None if tokenizer == "default" else tokenizer)
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
        for line, row in numbered_rows(f):
            i, where = line - 1, f"{f}:{line}"
            if not isinstance(row, dict):
                raise ValueError(f"{where}: not an MRCR row (a JSON object), got {type(row).__name__}")
            n = number(row, "n_needles", where) or 0
            if needles and n not in needles:
                continue
            if max_chars and (number(row, "n_chars", where) or 0) > max_chars:
                continue
            if limit and counts.get(n, 0) >= limit:
                continue
            it = item_from_row(row, i, str(f), chat)
            if tok is not None and tok.count(it.context) > max_tokens:  # the count the report bins rows by
                continue
            if "unique_id" not in row:
                it.id = f"{f.stem}-{i}"
            items.append(it)
            counts[n] = counts.get(n, 0) + 1
    return items
