"""The training data loader: corpus records -> task samples -> collated batches, sharded and resumable.

Interface (stable; the trainer builds on it):

    corpus = Corpus.open(paths)           # text, .jsonl, .json (an array), .parquet files, directories of them, a
                                          # `datasets` directory (save_to_disk); no path: the bundled corpus
    data = TaskDataset(corpus, task, seed=0, epochs=None, render="worker" | "batch")
    loader = GlyphLoader(data, collator, batch_size=8, num_workers=2)
    for batch in loader: ...              # collator(samples): see collate.py
    state = loader.state_dict()           # in the checkpoint; later: loader.load_state_dict(state)

Order: global sample g of an epoch of N records reads record perm_e[g % N] (perm_e: a permutation seeded
by (seed, epoch e = g // N), or the identity with shuffle=False) and is task(record, g), a pure function
of (seed, g). Rank r of R takes g = r, r + R, r + 2R, ... (torch.distributed's rank and world size when it
is initialised); its DataLoader worker w of W takes every W-th of those, and the DataLoader returns
them round-robin, so a rank sees the same samples in the same order, batched the same way, whatever
the number of workers. A record a task cannot use (TaskError; pages that draw characters as boxes, no font
covering them: MissingGlyphs) yields nothing, the same way everywhere, and is counted, as is a sample longer
than the collator's max_length: a task given max_tokens finds it from its layout, before a page is drawn
(tasks.TooLong, yielded as a TooLongSample), the collator any other (left out of its batch); both are counted
as too long. SKIP_LIMIT such samples in a row stop the loader with the reason. state_dict() holds the number
of the rank's samples consumed; resuming from it yields exactly the samples that would have come next.

Layout always runs where the samples are made (the workers). render="worker": each sample's pages are
also drawn there, on the CPU (the C++ path, into pixel_values), so the main process only concatenates.
render="batch": the laid-out Documents travel to the main process (about 100 KB per A4 sample; the
atlas is found again there and the layout's atlas slots remapped) and the collator draws every page of
a batch in one launch, on the GPU when it has one.
"""
from __future__ import annotations

import codecs
import functools
import gzip
import json
import logging
import os
import re
import zlib
from pathlib import Path

import numpy as np
import torch

from ..fileio import json_lines
from ..render.tokens import VisionModel
from .collate import SamplesTooLong, attach_pixels
from .tasks import MissingGlyphs, TaskError, TooLong

log = logging.getLogger("glyph_rt.train")

TEXT_SUFFIXES = (".txt", ".md", ".text")
RENDER_MODES = ("worker", "batch")
# the bundled corpus: 124 US presidential inaugural (1789-2021) and State of the Union (1945-2006) addresses,
# works of the US government and so in the public domain; records {"text", "title", "year"}
BUNDLED_CORPUS = Path(__file__).resolve().parent.parent / "data" / "corpus" / "us_presidential_addresses.jsonl.gz"


class CorpusError(ValueError):
    """The corpus cannot be read; the message names the file (and line)."""


def split_text(text: str, max_chars: int) -> list[str]:
    """A long text as pieces of at most about `max_chars` characters, cut at blank lines or line ends."""
    out, start = [], 0
    while len(text) - start > max_chars:
        cut = max(text.rfind("\n\n", start, start + max_chars), text.rfind("\r\n\r\n", start, start + max_chars))
        if cut <= start + max_chars // 2:
            cut = text.rfind("\n", start, start + max_chars)
            cut -= cut > start and text[cut - 1] == "\r"  # a CRLF stays whole
        if cut <= start:
            cut = start + max_chars
            cut -= text[cut - 1] == "\r" and text[cut:cut + 1] == "\n"
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return [t for t in out if t.strip()]


class Corpus:
    """Records (dicts) by index, from one or several sources read into memory or memory-mapped."""

    def __init__(self, sources: list):
        self.sources = sources  # (name, sequence of records)
        self.offsets = np.cumsum([0] + [len(s) for _, s in sources])
        if self.offsets[-1] == 0:
            raise CorpusError("corpus: no records (empty files, or no text files in the directories given)")

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> dict:
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        rec = self.sources[k][1][i - int(self.offsets[k])]
        return rec if isinstance(rec, dict) else {"text": rec}

    @classmethod
    def open(cls, paths=None, max_chars: int = 50000, text_field: str = "text") -> "Corpus":
        """Corpus files and directories; no path: the bundled corpus. A file is read by its name's suffix, in any
        case: text (.txt, .md, .text; split into records of at most `max_chars`), JSON Lines (.jsonl), a JSON
        array of records (.json), each of them also gzipped (.gz), or Parquet (.parquet); any other suffix is a
        CorpusError naming the file. A directory is a `datasets` directory (save_to_disk), or its corpus files,
        all of them record files or all text files (a directory mixing the two, as a README beside JSONL shards,
        is a CorpusError naming both: give the record files or their own directory); the other files in it are
        left out and logged, hidden ones (.git, .gitattributes) unlogged."""
        sources = []
        for p in _corpus_paths(paths):
            if not p.exists():
                raise CorpusError(f"corpus: {str(p)!r} does not exist")
            if p.is_dir():  # a `datasets` directory
                sources.append((str(p), _hf_dataset(p, text_field)))
            elif _kind(p) is None:
                raise CorpusError(f"corpus: {str(p)!r} is not a corpus file by its name: {CORPUS_FILES}")
            else:
                sources.append((str(p), _source(p, max_chars, text_field)))
        return cls(sources)


def _corpus_paths(paths) -> list[Path]:
    """The paths Corpus.open(paths) reads (none: the bundled corpus), a directory of corpus files as its files."""
    if paths is None or paths == []:
        paths = [BUNDLED_CORPUS]
    out = []
    for p in map(Path, [paths] if isinstance(paths, (str, os.PathLike)) else paths):
        dataset = (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()
        out.extend(_directory_files(p) if p.is_dir() and not dataset else [p])
    return out


def corpus_files(paths=None) -> set[Path]:
    """The files (and `datasets` directories) Corpus.open(paths) reads, resolved (those that exist)."""
    return {p.resolve() for p in _corpus_paths(paths) if p.exists()}


RECORD_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
CORPUS_FILES = ("a corpus file is text (.txt, .md, .text), JSON Lines (.jsonl), a JSON array of records (.json), "
                "each also gzipped (.gz), or Parquet (.parquet); or give a `datasets` directory")


def _kind(path: Path) -> str | None:
    """"records" (JSON Lines, JSON, Parquet), "text", or None (no corpus file) by the name's suffix, in any case."""
    name = path.name.lower()
    if name.endswith(RECORD_SUFFIXES):
        return "records"
    if name.endswith(TEXT_SUFFIXES) or name.endswith(tuple(t + ".gz" for t in TEXT_SUFFIXES)):
        return "text"
    return None


def _directory_files(d: Path) -> list[Path]:
    """The corpus files under directory `d`, sorted: its record files or its text files (both: a CorpusError)."""
    kinds: dict = {}
    for f in sorted(d.rglob("*")):
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(d).parts):
            kinds.setdefault(_kind(f), []).append(f)
    records, texts, other = kinds.get("records", []), kinds.get("text", []), kinds.get(None, [])
    if records and texts:
        raise CorpusError(f"corpus: directory {str(d)!r} mixes {len(records)} record files (JSON Lines, JSON, Parquet: "
                          f"{str(records[0])!r}{', ...' if len(records) > 1 else ''}) and {len(texts)} text files "
                          f"({str(texts[0])!r}{', ...' if len(texts) > 1 else ''}), which would train on both; give "
                          "the record files (or a directory holding only them), or the text files")
    if not records and not texts:
        raise CorpusError(f"corpus: directory {str(d)!r} holds no corpus file ({len(other)} other files); "
                          f"{CORPUS_FILES}")
    if other:
        log.warning("corpus: directory %r: %d files that are no corpus files left out (%s%s)", str(d), len(other),
                    str(other[0]), ", ..." if len(other) > 1 else "")
    return records or texts


def _source(path: Path, max_chars: int, text_field: str):
    """The records of one corpus file (its kind by _kind)."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        return _Parquet(path, text_field)
    if name.endswith((".jsonl", ".jsonl.gz")):
        return _jsonl(path, text_field)
    if name.endswith((".json", ".json.gz")):
        return _json(path, text_field)
    return _text_records(path, max_chars)


def _utf8_text(path: Path) -> str:
    """The file's text (gzip read through, a UTF-8 BOM dropped); a CorpusError naming the line of a byte that is not
    UTF-8."""
    with _reading(path) as f:
        data = f.read()
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = bom + e.start
        raise _not_utf8(path, data.count(b"\n", 0, at) + 1, at, data[at:at + 4]) from None


def _text_records(path: Path, max_chars: int) -> list[str]:
    return split_text(_utf8_text(path), max_chars)


def _not_utf8(path: Path, line: int, at: int, bad: bytes) -> CorpusError:
    where = " of its decompressed text" if path.suffix.lower() == ".gz" else ""
    return CorpusError(f"corpus: {path}:{line}: invalid UTF-8 at byte {at}{where} ({bad!r}); a corpus file must be "
                       "UTF-8: convert it (e.g. iconv -f ITS-ENCODING -t UTF-8 IN > OUT)")


class _reading:
    """The file open for reading bytes (decompressed when its name ends in .gz); reading or decompressing errors
    (a truncated or corrupt .gz, a file that is not gzip, OSError) as CorpusError naming the file."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        try:
            self.f = gzip.open(self.path, "rb") if self.path.suffix.lower() == ".gz" else open(self.path, "rb")
        except OSError as e:
            raise self.error(e) from None
        return self.f

    def __exit__(self, kind, e, tb):
        self.f.close()
        if isinstance(e, (EOFError, OSError, zlib.error)):
            raise self.error(e) from None
        return False

    def error(self, e: BaseException) -> CorpusError:
        p = self.path
        if isinstance(e, EOFError):
            return CorpusError(f"corpus: {p}: the gzip stream ends early (a truncated file?): {e}")
        if isinstance(e, gzip.BadGzipFile):
            return CorpusError(f"corpus: {p}: not a gzip file ({e}); a .gz name needs gzip data (rename a plain "
                               "file without .gz)")
        if isinstance(e, zlib.error):
            return CorpusError(f"corpus: {p}: corrupt gzip data ({e})")
        return CorpusError(f"corpus: {p}: cannot be read ({e.strerror or e})")


def _record(rec: dict, text_field: str) -> dict:
    """A record as the tasks take it: fields holding None dropped (Parquet and `datasets` fill a column a row lacks
    with None, JSON has null), so that every check for a field finds it absent; `text_field` renamed "text"."""
    if any(v is None for v in rec.values()):
        rec = {k: v for k, v in rec.items() if v is not None}
    if text_field != "text" and text_field in rec:
        rec = dict(rec)
        rec["text"] = rec.pop(text_field)
    return rec


_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value) -> str | None:
    """The first lone surrogate in a JSON value's strings (keys too), or None."""
    if isinstance(value, str):
        m = _SURROGATE.search(value)
        return m.group() if m else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = _lone_surrogate(k) or _lone_surrogate(v)
        if found:
            return found
    return None


def _utf8_lines(f, path: Path):
    """The lines of a binary file as text (split at b"\n" only, a UTF-8 BOM dropped); invalid UTF-8 is a
    CorpusError naming the line and the byte."""
    at = 0  # the line's first byte in the file
    for n, raw in enumerate(f, 1):
        bom = len(codecs.BOM_UTF8) if n == 1 and raw.startswith(codecs.BOM_UTF8) else 0
        try:
            yield raw[bom:].decode("utf-8")
        except UnicodeDecodeError as e:
            raise _not_utf8(path, n, at + bom + e.start, raw[bom + e.start:bom + e.start + 4]) from None
        at += len(raw)


def _jsonl(path: Path, text_field: str) -> list[dict]:
    """The records of a JSONL file. A line that is not JSON, not an object, not UTF-8, or holds a lone surrogate
    (a legal JSON escape such as \\ud800 that is no text: it cannot be encoded, tokenized or written out) makes
    the corpus unusable: a CorpusError naming path:line, as for a file that cannot be read."""
    out = []
    with _reading(path) as f:
        for n, rec in json_lines(_utf8_lines(f, path), f"corpus: {path}", CorpusError):
            out.append(_checked_record(rec, text_field, f"corpus: {path}:{n}"))
    return out


def _checked_record(rec, text_field: str, where: str) -> dict:
    """A JSON record as _record reads it; a CorpusError (at `where`) for one that is no object or holds a lone
    surrogate (a legal JSON escape such as \\ud800 that is no text: it cannot be encoded, tokenized or written)."""
    if not isinstance(rec, dict):
        raise CorpusError(f"{where}: not a JSON object")
    bad = _lone_surrogate(rec)
    if bad:
        raise CorpusError(f"{where}: a lone surrogate (\\u{ord(bad):04x}) in a string, which is not text (it cannot "
                          "be encoded as UTF-8); fix or drop the record")
    return _record(rec, text_field)


def _json(path: Path, text_field: str) -> list[dict]:
    """The records of a .json file: an array of objects (a file of one object per line is read as JSON Lines).
    Anything else (one object, as SQuAD's {"data": ...}; an array item that is not an object), text that is not
    JSON or not UTF-8, or a lone surrogate in a string is a CorpusError naming the file."""
    text = _utf8_text(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON Lines under a .json name
            return _jsonl(path, text_field)
        raise CorpusError(f"corpus: {path}:{e.lineno}: not JSON ({e.msg} column {e.colno})") from None
    if not isinstance(value, list):
        raise CorpusError(f"corpus: {path}: a JSON {type(value).__name__ if value is not None else 'null'}, not an "
                          "array of records; a .json corpus file holds [{\"text\": ...}, ...] (or one object per line)")
    return [_checked_record(rec, text_field, f"corpus: {path}: item {i}")
            for i, rec in enumerate(value)]


class _Parquet:
    def __init__(self, path: Path, text_field: str):
        import pyarrow.parquet as pq

        try:
            self.table = pq.read_table(path)
        except Exception as e:  # pyarrow.lib.ArrowInvalid and OSError
            raise CorpusError(f"corpus: {str(path)!r} cannot be read as Parquet: {e}") from None
        self.path, self.text_field = path, text_field

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, i: int) -> dict:
        try:
            row = self.table.slice(i, 1).to_pylist()[0]
        except UnicodeDecodeError as e:  # a string column holding bytes that are not UTF-8
            raise CorpusError(f"corpus: {self.path}: row {i}: invalid UTF-8 at byte {e.start} of a string "
                              f"({e.object[e.start:e.start + 4]!r})") from None
        return _record(row, self.text_field)


class _HFDataset:
    def __init__(self, ds, text_field: str):
        self.ds, self.text_field = ds, text_field

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        return _record(self.ds[int(i)], self.text_field)


def _hf_dataset(path: Path, text_field: str):
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    return _HFDataset(ds, text_field)


def dist_rank() -> tuple[int, int]:
    """(rank, world size) of torch.distributed, or (0, 1) when it is not initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@functools.lru_cache(maxsize=4)
def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The records of an epoch in order: a permutation of n seeded by (seed, epoch), made once per epoch."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class TaskDataset(torch.utils.data.IterableDataset):
    """Samples of one task over a corpus, sharded across ranks and DataLoader workers (see the module doc)."""

    def __init__(self, corpus: Corpus, task, seed: int = 0, epochs: int | None = None, shuffle: bool = True,
                 rank: int | None = None, world_size: int | None = None, render: str = "worker",
                 dtype=torch.float32, vision_model: str | VisionModel = "glm4v"):
        if render not in RENDER_MODES:
            raise ValueError(f"render: {render!r} is unknown; choose from {', '.join(RENDER_MODES)}")
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs: {epochs!r} must be >= 1 (or None: no end)")
        r, w = dist_rank()
        self.rank = r if rank is None else int(rank)
        self.world_size = w if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world size {self.world_size}")
        self.corpus, self.task, self.seed, self.epochs, self.shuffle = corpus, task, int(seed), epochs, shuffle
        self.render, self.dtype, self.vision_model = render, dtype, vision_model
        self.start = 0  # the first of this rank's samples to make (set by GlyphLoader.load_state_dict)
        self.missing_glyphs = 0  # samples this process left out because their pages miss glyphs (logged)

    def __len__(self) -> int:
        """This rank's samples (an equal share: the last few of an uneven total are left out)."""
        if self.epochs is None:
            raise TypeError("an endless TaskDataset (epochs=None) has no length")
        return self.epochs * len(self.corpus) // self.world_size

    def record_index(self, g: int) -> int:
        n = len(self.corpus)
        epoch, pos = divmod(g, n)
        if not self.shuffle:
            return pos
        return int(epoch_order(self.seed, epoch, n)[pos])

    def sample(self, g: int):
        """Global sample g; None when its record cannot make one, a TooLongSample when it would be longer than the
        task's max_tokens (the collator's max_length: found before its pages are drawn)."""
        s, why = self.make(g)
        return TooLongSample(g, str(why)) if isinstance(why, TooLong) else s

    def make(self, g: int):
        """(global sample g, None), or (None, the task's TaskError) when its record cannot make one (TooLong: one
        longer than the task's max_tokens). A sample whose pages miss glyphs (MissingGlyphs) is also logged: the
        first few, then every 1000th of this process."""
        try:
            s = self.task(self.corpus[self.record_index(g)], g)
        except TaskError as e:
            if isinstance(e, MissingGlyphs):
                self.missing_glyphs += 1
                if self.missing_glyphs <= 3 or self.missing_glyphs % 1000 == 0:
                    log.warning("sample %d left out (%d so far in this process whose pages miss glyphs): %s", g,
                                self.missing_glyphs, e)
            return None, e
        if self.render == "worker":
            attach_pixels([s], device="cpu", dtype=self.dtype, model=self.vision_model)
        return s, None

    def why_skipped(self, j: int) -> str:
        """The task's reason for making nothing of this rank's sample j."""
        g = j * self.world_size + self.rank
        try:
            self.task(self.corpus[self.record_index(g)], g)
        except TaskError as e:
            return str(e)
        return "no reason given"

    def local_samples(self, start: int, step: int = 1):
        """(local index, sample) for this rank's samples start, start + step, ..."""
        end = len(self) if self.epochs is not None else None
        j = start
        while end is None or j < end:
            yield j, self.sample(j * self.world_size + self.rank)
            j += step

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, W = (info.id, info.num_workers) if info is not None else (0, 1)
        for _, s in self.local_samples(self.start + w, W):
            yield s


class TooLongSample:
    """What TaskDataset yields for sample g when the task found it longer than max_tokens (tasks.TooLong) before
    drawing its pages: GlyphLoader counts it as the collator's too-long samples are counted (too_long)."""

    def __init__(self, index: int, reason: str):
        self.index, self.reason = index, reason

    def __repr__(self) -> str:
        return f"TooLongSample({self.index}, {self.reason!r})"


def _keep(x):
    return x


SKIP_LIMIT = 1000  # samples in a row that make nothing: the corpus or the task's options are wrong


class SkipStreak:
    """Counts misses in a row (samples or records that made nothing); the SKIP_LIMIT-th raises a ValueError
    with the last one's reason (`why`: a callable, asked only then) and `advice`."""

    def __init__(self, what: str, advice: str):
        self.what, self.advice, self.n = what, advice, 0

    def miss(self, why) -> None:
        self.n += 1
        if self.n == SKIP_LIMIT:
            raise ValueError(f"{SKIP_LIMIT} {self.what} (the last: {why()}); {self.advice}")

    def hit(self) -> None:
        self.n = 0


class GlyphLoader:
    """Batches of a TaskDataset through a torch DataLoader (workers make samples), with exact resume."""

    def __init__(self, dataset: TaskDataset, collator, batch_size: int, num_workers: int = 0,
                 prefetch_factor: int | None = None, drop_last: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size: {batch_size!r} must be >= 1")
        self.dataset, self.collator, self.batch_size = dataset, collator, int(batch_size)
        self.num_workers, self.prefetch_factor, self.drop_last = int(num_workers), prefetch_factor, drop_last
        self.consumed = 0  # this rank's samples (made or skipped) behind the batches handed out
        self.skipped = 0  # of them, those that made nothing or a sample longer than the collator's max_length
        self.too_long = 0  # of those, the ones longer
        # the samples drawn past the last batch handed out, once the data ended (a batch left unfilled: drop_last),
        # and the latest sample left out: ("task", its local index) for the task's reason, or ("reason", text)
        self.tail = {"samples": 0, "skipped": 0, "too_long": 0}
        self._last_skip: tuple | None = None

    def state_dict(self) -> dict:
        d = self.dataset
        return {"consumed": self.consumed, "skipped": self.skipped, "too_long": self.too_long, "seed": d.seed,
                "rank": d.rank, "world_size": d.world_size, "batch_size": self.batch_size,
                "task": getattr(d.task, "name", "")}

    def load_state_dict(self, state: dict) -> None:
        d = self.dataset
        for key, mine in (("seed", d.seed), ("world_size", d.world_size), ("rank", d.rank)):
            if state.get(key) != mine:
                raise ValueError(f"loader state: {key} {state.get(key)!r} differs from this loader's {mine!r}; "
                                 "resume with the same seed, rank and world size")
        self.consumed, self.skipped = int(state["consumed"]), int(state.get("skipped", 0))
        self.too_long = int(state.get("too_long", 0))

    def counts(self) -> dict:
        """This rank's samples drawn so far (those behind the batches handed out and, once the data ended, those
        past them) and, of them, the ones skipped and too long."""
        return {"drawn": self.consumed + self.tail["samples"], "skipped": self.skipped + self.tail["skipped"],
                "too_long": self.too_long + self.tail["too_long"]}

    def last_skip_reason(self) -> str | None:
        """Why the latest sample left out was (the task's TaskError, made again, or the length it had), or None."""
        if self._last_skip is None:
            return None
        kind, what = self._last_skip
        return self.dataset.why_skipped(what) if kind == "task" else what

    def generator(self) -> torch.Generator:
        """The DataLoader's own generator, seeded by (seed, rank, consumed position). Each iterator it makes draws a
        base seed (its workers' seeds), and without a generator from torch's global RNG: a resumed run would draw
        it right after restoring that RNG from the checkpoint, and its dropout masks would differ from a straight
        run's."""
        d = self.dataset
        g = torch.Generator()
        seed = np.random.SeedSequence([d.seed % 2**64, d.rank, self.consumed]).generate_state(1, np.uint64)[0]
        g.manual_seed(int(seed))
        return g

    def samples(self):
        """(local index, sample or None) from the DataLoader, starting at the consumed position."""
        self.dataset.start = self.consumed
        dl = torch.utils.data.DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                                         collate_fn=_keep, prefetch_factor=self.prefetch_factor
                                         if self.num_workers else None, generator=self.generator())
        for j, s in enumerate(dl, self.consumed):
            yield j, s

    def __iter__(self):
        """Batches of batch_size samples. A sample the collator finds longer than its max_length is left out of
        its batch, which fills up with the next samples; it is counted (state_dict()["too_long"]) and logged, as is
        a TooLongSample (the task found it longer than its max_tokens before drawing its pages)."""
        batch, skipped, too_long, pos = [], 0, 0, self.consumed
        known = 0  # the first `known` samples of the batch are known to fit (an earlier collation said so)
        streak = SkipStreak("samples in a row made nothing",
                            "check the corpus, data.loader.text_field and the task's options")
        long_streak = SkipStreak("samples in a row were longer than the collator's max_length",
                                 "raise data.max_tokens or lower the tasks' max_pages")
        # the task's own TooLong (found before drawing): misses in a row, each sample made a hit
        early_streak = SkipStreak("samples in a row were longer than max_tokens",
                                  "raise data.max_tokens or lower the tasks' max_pages")
        samples, done = self.samples(), False
        self.tail = {"samples": 0, "skipped": 0, "too_long": 0}
        while True:
            while len(batch) < self.batch_size and not done:
                j, s = next(samples, (None, None))
                if j is None:
                    done = True
                    break
                pos = j + 1
                if s is None:
                    skipped += 1
                    self._last_skip = ("task", j)
                    streak.miss(lambda j=j: self.dataset.why_skipped(j))
                    continue
                streak.hit()
                if isinstance(s, TooLongSample):
                    skipped, too_long = skipped + 1, too_long + 1
                    n = self.too_long + too_long
                    if n <= 10 or n % 1000 == 0:
                        log.warning("left out (%d so far on this rank): sample %d: %s", n, s.index, s.reason)
                    self._last_skip = ("reason", s.reason)
                    early_streak.miss(lambda s=s: s.reason)
                    continue
                early_streak.hit()
                batch.append(s)
            if not batch or (len(batch) < self.batch_size and self.drop_last):
                self.tail = {"samples": pos - self.consumed, "skipped": skipped, "too_long": too_long}
                return
            try:
                out = self.collator(batch)
            except SamplesTooLong as e:
                self._last_skip = ("reason", str(e))
                batch, n = self._without(batch, e, long_streak, known, self.too_long + too_long)
                skipped, too_long, known = skipped + n, too_long + n, len(batch)
                continue
            long_streak.hit()
            self.consumed, self.skipped, self.too_long = pos, self.skipped + skipped, self.too_long + too_long
            skipped = too_long = known = 0
            yield out
            batch = []

    @staticmethod
    def _without(batch: list, e: SamplesTooLong, streak: SkipStreak, known: int, before: int) -> tuple[list, int]:
        """The batch less the samples `e` names, and how many it left out (`before`: left out earlier). The samples
        after the first `known` are new: each one too long is a miss of `streak`, each that fits a hit."""
        if before < 10 or before // 1000 != (before + len(e.indices)) // 1000:
            log.warning("left out (%d so far on this rank): %s", before + len(e.indices), e)
        drop = set(e.indices)
        for k in range(known, len(batch)):
            if k in drop:
                streak.miss(lambda: str(e))
            else:
                streak.hit()
        return [s for k, s in enumerate(batch) if k not in drop], len(drop)


__all__ = ["Corpus", "CorpusError", "TaskDataset", "GlyphLoader", "TooLongSample", "split_text", "dist_rank"]
