"""Task samples as Parquet shards for other trainers (`glyph-rt make-data`).

Each row is one sample in the multimodal messages format that LLaMA-Factory (sharegpt with
`messages`/`images` columns) and ms-swift read:

    messages  [{"role": "user", "content": "<image><image>Read all the text in the image."},
               {"role": "assistant", "content": "..."}]          one "<image>" per page, in order
    images    [{"bytes": PNG, "path": "00000012_000.png"}]      the pages (the `datasets` Image layout)
    task, index                                                 the task and the global sample index

Interleaved LM samples (pages and text in one user turn in glyph_rt) are written with their last text
span as the assistant's turn, since those trainers put the loss on assistant turns only. A record's own text
"<image>" (or "<video>", "<audio>") would read as a placeholder there, and "<|endoftext|>" as a special token: it is
written with a zero-width space after its "<" (ESCAPED_PLACEHOLDERS), counted in the summary's
"placeholders_escaped".

Shard k holds samples [k * shard_size, (k + 1) * shard_size) and is written under a temporary name,
then renamed: a run that stops leaves only complete shards, and the next run with the same arguments
(kept in every shard's Parquet metadata, the styles as a hash of their parameters) skips them. The
directory holds nothing but the shards, since LLaMA-Factory refuses a dataset directory with files of
another type in it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from ..render.png import encode_png
from .loader import Corpus, TaskDataset
from .tasks import MissingGlyphs, make_task

IMAGE = "<image>"
ARGS_KEY = b"glyph_rt.make_data"


# the texts other trainers would read as more than text in a message: the placeholders LLaMA-Factory and ms-swift
# read, and the chat templates' special tokens ("<|endoftext|>", "<|user|>", GLM's "[gMASK]" and "<sop>"), which
# their tokenizers match in any text; a record's own one is written with a zero-width space after its first character
ESCAPED_PLACEHOLDERS = re.compile(r"<(?=(?:image|video|audio|sop|eop)>)|<(?=\|[A-Za-z0-9_]{1,64}\|>)|\[(?=gMASK\])")


def escape_placeholders(text: str) -> tuple[str, int]:
    """The text with each "<image>" ("<video>", "<audio>") and special token text of its own ("<|endoftext|>") broken
    by a zero-width space, so that no trainer takes it for a page or a token; and how many it changed."""
    return ESCAPED_PLACEHOLDERS.subn("\\g<0>\u200b", text)


def to_messages(sample) -> list[dict]:
    """The sample's conversation with string contents, "<image>" where each page goes and nowhere else (the text's
    own placeholders escaped: escape_placeholders; their count in sample.meta["placeholders_escaped"])."""
    out, escaped = [], 0

    def text(t: str) -> str:
        nonlocal escaped
        t, n = escape_placeholders(t)
        escaped += n
        return t

    for m in sample.messages:
        c = m["content"]
        c = text(c) if isinstance(c, str) else "".join(IMAGE if part["type"] == "image" else text(part["text"])
                                                       for part in c)
        out.append({"role": m["role"], "content": c})
    if sample.task == "lm" and len(out) == 1:
        parts = sample.messages[0]["content"]
        last = escape_placeholders(parts[-1]["text"])[0] if parts[-1]["type"] == "text" else ""
        if last:
            out = [{"role": "user", "content": out[0]["content"][:-len(last)]}, {"role": "assistant", "content": last}]
    if escaped:
        sample.meta["placeholders_escaped"] = escaped
    return out


def page_pngs(sample, level: int = 1) -> list[bytes]:
    """PNG bytes of every page of the sample (greyscale when its config has no colour)."""
    out = []
    for p in sample.pages:
        doc = p.document()
        buf, sizes = doc.rasterize(p.start, p.stop)
        for i, (w, h) in enumerate(sizes):
            page = buf[i, :h, :w]
            out.append(encode_png(np.ascontiguousarray(page[..., 0]) if doc.grey else page, level))
    return out


def sample_row(sample) -> dict:
    pngs = page_pngs(sample)
    return {"messages": to_messages(sample),
            "images": [{"bytes": b, "path": f"{sample.index:08d}_{k:03d}.png"} for k, b in enumerate(pngs)],
            "task": sample.task, "index": sample.index}


def styles_key(styles) -> str | None:
    """A hash of a StyleSampler's parameters, the vision model whose limits it checks and its font pool (the files
    it draws from, by name and size: fonts.system pools the machine's installed fonts), which make-data's saved
    arguments and the training loader's state hold: a rerun or resume with other styles (another machine's fonts
    among them) is told instead of mixing two distributions under one key. None: no sampler."""
    if styles is None:
        return None
    params = getattr(styles, "params", None)
    vision = getattr(styles, "vision", None)
    what = {"params": params if params is not None else type(styles).__qualname__,
            "vision": None if vision is None else [getattr(vision, k, None)
                                                   for k in ("name", "min_pixels", "max_pixels")]}
    fonts = font_pool_key(styles)
    if fonts is not None:
        what["fonts"] = fonts
    text = json.dumps(what, sort_keys=True, default=repr, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def font_pool_key(styles) -> str | None:
    """The key of a StyleSampler's font pool (FontPool.key), None for a sampler without one."""
    pool = getattr(styles, "pool", None)
    return getattr(pool, "key", None)


FONTS_DIFFER = ("the style sampler's font pool differs (its fonts, by name and size: fonts.system pools the fonts "
                "installed on each machine; a styles file with fonts.system: false and fonts.user_dir pools the same "
                "fonts everywhere)")


class NoSamples(ValueError):
    """make-data read its records and made no sample (every one skipped): nothing is written."""


def shard_name(task: str, k: int) -> str:
    return f"{task}-{k:05d}.parquet"


def make_data(task: str, out, inputs=None, num_samples: int | None = None, shard_size: int = 256, seed: int = 0,
              styles=None, max_pages: int = 4, progress: bool = True, text_field: str = "text") -> dict:
    """Writes samples 0 .. num_samples-1 of `task` over the corpus `inputs` (default: one per record) to
    Parquet shards in `out`; returns a summary. `styles`: a StyleSampler (default: the paper's, seeded);
    `text_field`: the records' field read as their text. A run that makes no sample at all (every record skipped,
    e.g. none has the text field) writes no shard and raises NoSamples, naming the first record's reason; a shard
    whose samples were all skipped is written empty once another sample was made."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from .styles import StyleSampler

    if shard_size < 1:
        raise ValueError(f"shard_size: {shard_size!r} must be >= 1")
    corpus = Corpus.open(inputs, text_field=text_field)
    n = len(corpus) if num_samples is None else int(num_samples)
    if n < 1:
        raise ValueError(f"num_samples: {num_samples!r} must be >= 1")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; give a directory")
    out.mkdir(parents=True, exist_ok=True)
    styles = styles if styles is not None else StyleSampler(seed=seed)
    args = {"task": task, "inputs": [str(p) for p in (inputs or [])], "num_samples": n, "shard_size": shard_size,
            "seed": seed, "max_pages": max_pages, "records": len(corpus), "styles": styles_key(styles),
            "fonts": font_pool_key(styles), "text_field": text_field}
    for path in sorted(out.glob("*.parquet")):
        old = shard_args(path)
        if old is None:
            raise ValueError(f"{str(out)!r} holds {path.name}, which make-data did not write; use a new --out")
        diff = [k for k in args if old.get(k) != args[k]]
        if diff:
            why = ("; an older glyph_rt wrote them, before make-data recorded the font pool"
                   if old.get("fonts") is None else f"; {FONTS_DIFFER}" if "fonts" in diff else "")
            sides = "; ".join(f"{k + ' ' if len(diff) > 1 else ''}{old.get(k)!r} in the shards, {args[k]!r} now"
                              for k in diff)
            raise ValueError(f"{str(out)!r} holds shards made with other arguments ({', '.join(diff)}: {sides})"
                             f"{why}; use a new --out or the same arguments")
    for stale in out.glob(".*.parquet.tmp"):  # left by a killed run; trainers would try to read them
        stale.unlink()
    table_schema = schema().with_metadata({ARGS_KEY: json.dumps(args)})
    data = TaskDataset(corpus, make_task(task, None, styles=styles, seed=seed, max_pages=max_pages), seed=seed,
                       epochs=-(-n // len(corpus)), render="batch", rank=0, world_size=1)
    shards = -(-n // shard_size)
    # skipped: samples whose record the task could not use; missing_glyphs: of them, OCR samples whose pages draw a
    # character as a box (no font of the style has it); placeholders_escaped: "<image>" texts of the records' own
    summary = {"shards": shards, "kept": 0, "written": 0, "samples": 0, "skipped": 0, "missing_glyphs": 0,
               "pages": 0, "placeholders_escaped": 0}
    bar = tqdm(total=n, unit="sample", desc=f"make-data {task}", disable=not progress)

    def write(path, rows) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            pq.write_table(pa.Table.from_pylist(rows, schema=table_schema), tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        summary["written"] += 1
        summary["samples"] += len(rows)

    held = []  # shards whose samples were all skipped, written once some sample is made (none made: none written)
    first_skip = None  # (sample, the task's reason) of the first sample skipped
    for k in range(shards):
        path = out / shard_name(task, k)
        lo, hi = k * shard_size, min(n, (k + 1) * shard_size)
        if path.exists():
            summary["kept"] += 1
            bar.update(hi - lo)
            continue
        rows = []
        for g in range(lo, hi):
            s, why = data.make(g)
            if s is None:
                summary["skipped"] += 1
                summary["missing_glyphs"] += isinstance(why, MissingGlyphs)
                first_skip = first_skip or (g, why)
            else:
                rows.append(sample_row(s))
                summary["pages"] += len(rows[-1]["images"])
                summary["placeholders_escaped"] += s.meta.get("placeholders_escaped", 0)
            bar.update(1)
        if not rows and not (summary["samples"] or summary["kept"]):
            held.append(path)
            continue
        for p in held:
            write(p, [])
        held = []
        write(path, rows)
    bar.close()
    if held and summary["kept"]:
        for p in held:
            write(p, [])
    elif held:
        raise NoSamples(no_samples_message(corpus, data, summary["skipped"], first_skip, text_field))
    return summary


def no_samples_message(corpus, data, skipped: int, first, text_field: str) -> str:
    """Why make-data made nothing: the count, the first skipped sample's reason (a missing text field named as
    --text-field gives it) and the fields its record has."""
    g, why = first
    why = str(why).replace("field 'text'", f"field {text_field!r}")  # the loader reads text_field as "text"
    msg = (f"no sample made: all {skipped} samples were skipped ({len(corpus)} records), nothing was written; the "
           f"first: {why}")
    try:  # the record read again only to list its fields: a source that fails now leaves them out
        rec = corpus[data.record_index(g)]
    except (OSError, LookupError, TypeError, ValueError):
        rec = None
    if isinstance(rec, dict):
        fields = [k for k in rec if k != "text"] + ([text_field] if "text" in rec else [])
        msg += f" (its fields: {', '.join(map(str, fields)) or 'none'})"
    if text_field == "text" and "field 'text'" in why:
        msg += "; --text-field FIELD reads the text from another field"
    return msg


def shard_args(path) -> dict | None:
    """The make-data arguments a shard was written with (None for a Parquet file make-data did not write)."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception as e:  # pyarrow raises ArrowInvalid (or OSError) for a file that is not Parquet
        raise ValueError(f"{str(path)!r} is not a readable Parquet file ({e})") from None
    return json.loads(meta[ARGS_KEY]) if ARGS_KEY in meta else None


def schema():
    """The shards' Arrow schema."""
    import pyarrow as pa

    msg = pa.struct([("role", pa.string()), ("content", pa.string())])
    img = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    return pa.schema([("messages", pa.list_(msg)), ("images", pa.list_(img)), ("task", pa.string()),
                      ("index", pa.int64())])


__all__ = ["make_data", "NoSamples", "schema", "shard_args", "to_messages", "page_pngs", "sample_row", "shard_name",
           "escape_placeholders", "styles_key", "font_pool_key"]
