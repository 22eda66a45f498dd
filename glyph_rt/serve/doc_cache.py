"""The document cache: what a second question about the same document can skip.

Two kinds of entries share one LRU byte budget:
  - a document (key: text hash, render config, model): its pages' grids and vision embeddings, so the
    pages are neither rendered nor run through the vision tower again;
  - a prompt prefix (key: the documents' keys and the token ids up to the last page): the KV of every
    layer for those tokens, so the prefill starts at the question.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import torch


def text_hash(*parts: str) -> str:
    """sha256 (hex) of the texts, each followed by a NUL byte. Any str hashes, a lone surrogate (legal in a client's
    JSON) too: encoded with surrogatepass, so that texts differing only there hash apart."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def document_key(text: str, config_json: str, model_id: str) -> str:
    return "doc:" + text_hash(model_id, config_json, text)


def image_key(data: bytes, model_id: str) -> str:
    return "img:" + hashlib.sha256(model_id.encode() + b"\0" + data).hexdigest()


def prefix_key(segment_keys: list[str], prefix_ids: list[int]) -> str:
    h = hashlib.sha256(json.dumps(segment_keys).encode())
    h.update(torch.tensor(prefix_ids, dtype=torch.int64).numpy().tobytes())
    return "kv:" + h.hexdigest()


@dataclass
class DocumentEntry:
    grids: torch.Tensor  # [pages, 3] int64 image_grid_thw (CPU)
    embeddings: torch.Tensor | None = None  # [visual tokens, hidden] on the model's device
    text_tokens: int = 0

    @property
    def nbytes(self) -> int:
        e = self.embeddings
        return self.grids.numel() * 8 + (0 if e is None else e.numel() * e.element_size())


@dataclass
class PrefixEntry:
    length: int
    layers: list[tuple[torch.Tensor, torch.Tensor]] = field(repr=False)  # per layer (keys, values) [1, H, length, D]
    next_pos: int  # the M-RoPE position of the token after the prefix (text after it counts on from there)

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)


class DocumentCache:
    """LRU over documents and prompt prefixes with a byte budget (0 disables it). Thread-safe. Each get() is one
    hit or one miss of its kind ("document" for documents and images, "prefix"), counted in hits / misses and
    passed to on_lookup(kind, hit) (the engine's Prometheus counters)."""

    def __init__(self, max_bytes: int = 1 << 30, on_lookup=None):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.on_lookup = on_lookup
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, object] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = {"document": 0, "prefix": 0}
        self.misses = {"document": 0, "prefix": 0}

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str):
        kind = "prefix" if key.startswith("kv:") else "document"
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses[kind] += 1
            else:
                self._items.move_to_end(key)
                self.hits[kind] += 1
        if self.on_lookup is not None:
            self.on_lookup(kind, item is not None)
        return item

    def peek(self, key: str):
        with self._lock:
            return self._items.get(key)

    def put(self, key: str, item) -> bool:
        """Stores item (evicting the least recently used); False when it alone is over the budget."""
        n = item.nbytes
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            if n > self.max_bytes:
                return False
            while self._items and self._bytes + n > self.max_bytes:
                _, ev = self._items.popitem(last=False)
                self._bytes -= ev.nbytes
            self._items[key] = item
            self._bytes += n
            return True

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
