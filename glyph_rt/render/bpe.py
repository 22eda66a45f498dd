"""Exact token counts and ids of byte-level BPE tokenizers (Qwen's, GLM's) with tiktoken's BPE, loaded in milliseconds.

Hugging Face `tokenizers` spends ~0.8 s parsing Qwen's 11 MB tokenizer.json and ~1.2 s encoding 1M
characters on one core; tiktoken's BPE encodes the same text in ~0.1 s. A tokenizer.json is used
this way only when it has the shape of a tiktoken-derived vocabulary, checked when its fast form is
built: a BPE model without dropout, affixes or byte fallback; an NFC normalizer or none; a
pre-tokenizer that is one regex Split (isolated) followed by ByteLevel without its own regex, or one
ByteLevel with GPT-2's regex and no prefix space; every
single byte a token; merges in the order of the ids of the tokens they make, each making a token of
the vocabulary; added tokens matched on the raw text. Anything else (or `tiktoken` not installed)
is counted by `tokenizers` (`load` returns None). tests/test_bpe.py checks the counts and the ids
against `tokenizers` on real texts and on generated Unicode.

`for_tokenizer(tok)` gives the same for a loaded transformers fast tokenizer (PromptBuilder tokenizes
training samples with it: ~10x faster than `tokenizers` on one core); its fast form is cached under a
hash of the tokenizer's JSON.

The fast form is cached beside the atlas cache (`$GLYPH_RT_CACHE` or ~/.cache/glyph_rt), keyed by the
file's path, size and modification time, as a `marshal` file written through a temporary name.
Building the merge table costs time in proportion to the vocabulary, so each count keeps only the
tokens that can occur in its text: those whose every byte pair occurs in the text's UTF-8 bytes (a
token that is not a substring of the text is never looked up by the BPE, so counts are unchanged),
and whose every byte triple hashes to a bucket the text's triples fill.
"""
from __future__ import annotations

import hashlib
import json
import marshal
import os
import re
import threading
import unicodedata
from pathlib import Path

import numpy as np

FORMAT = 2


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map used by ByteLevel vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


# the regex of ByteLevel(use_regex=True), GPT-2's (tiktoken's r50k pattern)
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _triple_hash(b: np.ndarray) -> np.ndarray:
    """A 20-bit hash of every three consecutive bytes of `b` (uint32): a filter may keep too much, never too little."""
    v = (b[:-2] << 16) | (b[1:-1] << 8) | b[2:]
    return ((v * np.uint32(0x9E3779B1)) >> np.uint32(12)) & np.uint32(0xFFFFF)


def cache_path(tokenizer_json: Path) -> Path:
    from .atlas import cache_dir

    st = tokenizer_json.stat()
    ident = f"{tokenizer_json.resolve()}:{st.st_size}:{st.st_mtime_ns}:v{FORMAT}"
    return cache_dir().parent / "tokenizer" / f"bpe-{hashlib.sha1(ident.encode()).hexdigest()[:20]}.marshal"


def build(tokenizer_json: Path) -> dict | None:
    """The fast form of a tokenizer.json, or None when its shape is not one tiktoken reproduces."""
    return build_from_json(json.loads(Path(tokenizer_json).read_text(encoding="utf-8")))


def _pattern(pre: dict) -> str | None:
    """The split regex of a pre-tokenizer tiktoken reproduces, else None."""
    if pre.get("type") == "ByteLevel":
        return GPT2_PATTERN if pre.get("use_regex", True) and not pre.get("add_prefix_space") else None
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not steps or len(steps) != 2:
        return None
    split, bl = steps
    if split.get("type") != "Split" or split.get("behavior") != "Isolated" or split.get("invert") \
            or "Regex" not in (split.get("pattern") or {}):
        return None
    if bl.get("type") != "ByteLevel" or bl.get("use_regex") or bl.get("add_prefix_space"):
        return None
    return split["pattern"]["Regex"]


def build_from_json(j: dict) -> dict | None:
    """The fast form of a parsed tokenizer.json, or None when its shape is not one tiktoken reproduces."""
    m = j.get("model") or {}
    if m.get("type") != "BPE" or m.get("dropout") or m.get("continuing_subword_prefix") \
            or m.get("end_of_word_suffix") or m.get("byte_fallback") or m.get("ignore_merges"):
        return None
    norm = j.get("normalizer")
    if norm is not None and norm != {"type": "NFC"}:
        return None
    pattern = _pattern(j.get("pre_tokenizer") or {})
    if pattern is None:
        return None
    dec = {c: b for b, c in _bytes_to_unicode().items()}
    vocab = m["vocab"]
    try:
        tokens = {bytes(dec[c] for c in tok): i for tok, i in vocab.items()}
    except KeyError:  # a token outside the byte alphabet
        return None
    if len(tokens) != len(vocab) or any(bytes([b]) not in tokens for b in range(256)):
        return None
    last = max(tokens[bytes([b])] for b in range(256))
    for pair in m.get("merges", []):
        a, b = pair.split(" ") if isinstance(pair, str) else pair
        rank = vocab.get(a + b)
        if rank is None or rank <= last:  # the merge order must be the id order of what they make
            return None
        last = rank
    added = j.get("added_tokens") or []
    if any(t.get("normalized") or t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in added):
        return None
    special = {t["content"]: int(t["id"]) for t in added}
    names = sorted(special)
    if any(b.startswith(a) for a, b in zip(names, names[1:])):  # leftmost-first = leftmost-longest
        return None
    try:  # the pre-tokenizer's regex must compile in tiktoken's engine too
        from tiktoken import _tiktoken

        _tiktoken.CoreBPE({bytes([b]): tokens[bytes([b])] for b in range(256)}, special, pattern)
    except Exception:  # noqa: BLE001 - tiktoken raises ValueError or its own errors for a bad pattern
        return None
    items = sorted(tokens.items(), key=lambda kv: kv[1])
    blobs = [t for t, _ in items]
    # every byte pair inside a token, with the token it belongs to
    flat = np.frombuffer(b"".join(blobs), np.uint8).astype(np.uint16)
    lengths = np.fromiter(map(len, blobs), np.int64, len(blobs))
    owner = np.repeat(np.arange(len(blobs), dtype=np.int32), lengths)
    inside = owner[:-1] == owner[1:]
    pairs = ((flat[:-1] << 8) | flat[1:])[inside]
    inside3 = owner[:-2] == owner[2:]
    triples = _triple_hash(flat.astype(np.uint32))[inside3]
    owner3 = owner[:-2][inside3]
    owner = owner[:-1][inside]
    return {
        "format": FORMAT,
        "pattern": pattern,
        "nfc": norm is not None,
        "special": special,
        "tokens": blobs,
        "ranks": np.asarray([r for _, r in items], np.int32).tobytes(),
        "pairs": pairs.tobytes(),
        "pair_owner": owner.tobytes(),
        "triples": triples.tobytes(),
        "triple_owner": owner3.tobytes(),
    }


def _cached(cache: Path, make) -> "FastBPE | None":
    """The FastBPE of a fast form read from `cache`, or made by make() (None: unsupported) and cached."""
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        return None
    form = None
    try:
        form = marshal.loads(cache.read_bytes())
        if not isinstance(form, dict) or form.get("format") != FORMAT:
            form = None
    except (OSError, ValueError, EOFError, TypeError):
        form = None
    if form is not None:
        try:
            os.utime(cache)  # used: the last to be pruned
        except OSError:  # a read-only cache: still used as it is
            pass
    if form is None:
        form = make() or {"format": FORMAT, "unsupported": True}
        try:  # best effort: a read-only home only costs the build next time
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(marshal.dumps(form))
            os.replace(tmp, cache)
            prune(cache.parent)
        except OSError:
            pass
    return None if form.get("unsupported") else FastBPE(form)


CACHE_BYTES = 256 << 20  # the tokenizer cache's budget: a Qwen-sized vocabulary's entry takes about 12 MB


def prune(folder: Path, budget: int = CACHE_BYTES) -> None:
    """Removes the least recently used entries of the cache in `folder` until it holds at most `budget` bytes (the
    newest entry always stays). Every tokenizer.json seen (a path, size and mtime) leaves one otherwise."""
    entries = []
    for p in folder.glob("bpe-*.marshal"):
        try:
            st = p.stat()
        except OSError:  # removed meanwhile
            continue
        entries.append((st.st_mtime, st.st_size, p))
    entries.sort(reverse=True)
    total = 0
    for i, (_, size, p) in enumerate(entries):
        total += size
        if i and total > budget:
            p.unlink(missing_ok=True)


def load(tokenizer_json: str | os.PathLike) -> "FastBPE | None":
    """The fast form of a tokenizer.json (from the cache, or built and cached), or None when the
    file's shape is not supported or tiktoken is not installed."""
    path = Path(tokenizer_json)
    return _cached(cache_path(path), lambda: build(path))


_LOADED: dict[str, "FastBPE | None"] = {}


def for_tokenizer(tokenizer) -> "FastBPE | None":
    """The fast form of a transformers fast tokenizer (or a `tokenizers.Tokenizer`), or None when it
    has none, its shape is not supported or tiktoken is not installed. Kept per process and on disk."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    to_str = getattr(backend, "to_str", None)
    if to_str is None:
        return None
    text = to_str()
    key = hashlib.sha1(f"{text}:v{FORMAT}".encode()).hexdigest()[:20]
    if key not in _LOADED:
        from .atlas import cache_dir

        _LOADED[key] = _cached(cache_dir().parent / "tokenizer" / f"bpe-json-{key}.marshal",
                               lambda: build_from_json(json.loads(text)))
    return _LOADED[key]


PRUNED_COUNTS = 2  # counts before the full BPE pays for itself (RULER counts thousands of short texts)


class FastBPE:
    """Counts and encodes text as `tokenizers` would (no special tokens added around it; the added
    tokens in the text matched on the raw text)."""

    def __init__(self, form: dict):
        self.pattern = form["pattern"]
        self.nfc = form["nfc"]
        self.special = dict(form["special"])
        self.tokens = form["tokens"]
        self.ranks = np.frombuffer(form["ranks"], np.int32)
        self.pairs = np.frombuffer(form["pairs"], np.uint16)
        self.pair_owner = np.frombuffer(form["pair_owner"], np.int32)
        self.triples = np.frombuffer(form["triples"], np.uint32)
        self.triple_owner = np.frombuffer(form["triple_owner"], np.int32)
        self._allowed = set(self.special)
        self._full = None
        self._pruned_counts = 0
        self._special_re = re.compile("|".join(map(re.escape, sorted(self.special, key=len, reverse=True)))) \
            if self.special else None

    def normalize(self, text: str) -> str:
        """NFC outside the added tokens, which are matched on the raw text."""
        if not self.nfc or text.isascii() or unicodedata.is_normalized("NFC", text):
            return text
        if self._special_re is None or not self._special_re.search(text):
            return unicodedata.normalize("NFC", text)
        out, pos = [], 0
        for mt in self._special_re.finditer(text):
            out += [unicodedata.normalize("NFC", text[pos:mt.start()]), mt.group()]
            pos = mt.end()
        out.append(unicodedata.normalize("NFC", text[pos:]))
        return "".join(out)

    def _core(self, data: bytes):
        """A tiktoken BPE holding only the tokens whose byte pairs and (hashed) byte triples all occur in `data`."""
        from tiktoken import _tiktoken

        b = np.frombuffer(data, np.uint8)
        seen = np.zeros(1 << 16, bool)
        if len(b) > 1:
            seen[(b[:-1].astype(np.uint16) << 8) | b[1:]] = True
        drop = np.zeros(len(self.tokens), bool)
        drop[self.pair_owner[~seen[self.pairs]]] = True
        seen3 = np.zeros(1 << 20, bool)
        if len(b) > 2:
            seen3[_triple_hash(b.astype(np.uint32))] = True
        drop[self.triple_owner[~seen3[self.triples]]] = True
        keep = np.flatnonzero(~drop).tolist()
        toks, ranks = self.tokens, self.ranks.tolist()
        return _tiktoken.CoreBPE({toks[k]: ranks[k] for k in keep}, self.special, self.pattern)

    def count(self, text: str) -> int:
        """The number of tokens. The first PRUNED_COUNTS calls build a BPE of the tokens the text can hold (tens
        of ms: one count of one document); later ones share the full BPE, built once (~0.3 s), as encode does."""
        if not text:
            return 0
        text = self.normalize(text)
        data = text.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError: the caller decides
        if self._full is None and self._pruned_counts < PRUNED_COUNTS:
            self._pruned_counts += 1
            return len(self._core(data).encode(text, self._allowed))
        return len(self._full_bpe().encode(text, self._allowed))

    def encode(self, text: str, match_added: bool = True) -> list[int]:
        """The token ids `tokenizers` gives the text; the full BPE is built on the first call (~0.3 s for a
        150K vocabulary). match_added=False: added tokens' texts in it are plain text."""
        if not text:
            return []
        return self._full_bpe().encode(self.normalize(text), self._allowed if match_added else set())

    def _full_bpe(self):
        if self._full is None:
            from tiktoken import _tiktoken

            self._full = _tiktoken.CoreBPE(dict(zip(self.tokens, self.ranks.tolist())), self.special, self.pattern)
        return self._full
