"""A transformers KV cache that grows in place: a decode step writes one token, it does not copy the cache.

transformers' DynamicCache concatenates every layer's keys and values with the new token at each
step, so a decode step reads and writes the whole cache once more besides attention's own read.
GlyphCache keeps each layer in a buffer with room to spare, writes new tokens into it and hands
attention views of the filled part ([B, H, length, D], strided over the batch), which SDPA and
glyph_rt's decode kernel read as they are.

    cache = GlyphCache(reserve=max_new_tokens)        # room for the prompt plus the new tokens
    model.generate(**inputs, **{cache_kwarg(model): cache}, max_new_tokens=max_new_tokens)
"""
from __future__ import annotations

import functools
import inspect

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer


def kv_bytes(text_config, tokens: int, itemsize: int = 2) -> int:
    """Bytes of one request's KV cache of `tokens` tokens: keys and values of every layer."""
    c = getattr(text_config, "text_config", text_config)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return c.num_hidden_layers * 2 * c.num_key_value_heads * head_dim * tokens * itemsize


def cache_kwarg(model) -> str:
    """The keyword under which this model takes a KV cache: `cache` in current transformers, which
    deprecates `past_key_values`, or `past_key_values` in earlier 5.x releases."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views of a larger buffer. The first update allocates
    its length plus `reserve` tokens; past the end the buffer grows by a quarter (at least 256 tokens).
    Beam reordering happens inside the buffer; other operations that replace the tensors (batch repeats,
    offloading) are followed by a copy into a new buffer at the next update. With grad enabled and states
    that require grad (a cache filled by forwards under autograd), the layer concatenates as DynamicLayer does,
    so that backward goes through every forward."""

    def __init__(self, reserve: int = 0):
        super().__init__()
        self.reserve = reserve
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    def _has_room(self, n: int, end: int, key_states: torch.Tensor) -> bool:
        """Whether the buffer holds the layer's tokens (keys are still a view of it) and has room up to `end`."""
        buf = self._k
        if buf is None or buf.shape[:2] != key_states.shape[:2] or end > buf.shape[-2]:
            return False
        return n == 0 or (self.keys.data_ptr() == buf.data_ptr() and self.keys.stride() == buf.stride())

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if torch.is_grad_enabled() and (key_states.requires_grad or value_states.requires_grad or
                                        self.keys.requires_grad or self.values.requires_grad):
            # under autograd the attention of an earlier forward saved views of the buffer, which writing in place
            # would change before its backward: concatenated as DynamicLayer does (the same values)
            self._k = self._v = None
            return super().update(key_states, value_states, *args, **kwargs)
        n = self.get_seq_length()
        end = n + key_states.shape[-2]
        if not self._has_room(n, end, key_states):
            self._allocate(n, end, key_states, value_states)
        self._k[:, :, n:end].copy_(key_states)
        self._v[:, :, n:end].copy_(value_states)
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values

    def _allocate(self, n: int, end: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        room = self.reserve if n == 0 else max(256, end // 4)
        B, H, _, D = key_states.shape
        old_k, old_v = (self.keys, self.values) if n else (None, None)
        self._k = self._v = None  # the old buffers go before the new ones are made
        self._k = key_states.new_empty(B, H, end + room, D)
        self._v = value_states.new_empty(B, H, end + room, value_states.shape[-1])
        if n:
            self._k[:, :, :n].copy_(old_k)
            self._v[:, :, :n].copy_(old_v)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: the rows reordered inside the buffer, which keeps its room (no new buffer per step)."""
        n = self.get_seq_length()
        if n == 0 or self._k is None or self.keys.data_ptr() != self._k.data_ptr() or \
                beam_idx.numel() != self._k.shape[0]:
            return super().reorder_cache(beam_idx)
        idx = beam_idx.to(self._k.device)
        self._k[:, :, :n] = self._k[:, :, :n].index_select(0, idx)
        self._v[:, :, :n] = self._v[:, :, :n].index_select(0, idx)
        self.keys, self.values = self._k[:, :, :n], self._v[:, :, :n]

    def reset(self) -> None:
        self._k = self._v = None
        super().reset()

    def release(self) -> None:
        """Lets go of the layer's memory at once (its cache is not used again)."""
        self._k = self._v = self.keys = self.values = None


class GlyphCache(DynamicCache):
    """DynamicCache with GrowingLayer layers; `reserve`: tokens of room beyond the prompt (the new tokens)."""

    def __init__(self, reserve: int = 0):
        if reserve < 0:
            raise ValueError(f"reserve must be >= 0 tokens, got {reserve}")
        Cache.__init__(self, layer_class_to_replicate=functools.partial(GrowingLayer, reserve=reserve))

    @classmethod
    def from_cache(cls, cache: Cache, batch: int = 1, reserve: int = 0) -> "GlyphCache":
        """A GlyphCache holding `cache`'s keys and values, each request repeated `batch` times in a row
        ([a, a, b, b], as transformers' batch_repeat_interleave and generate's expansion order them)."""
        out = cls(reserve)
        for i, layer in enumerate(cache.layers):
            k, v = layer.keys, layer.values
            if k.shape[0] == 1:  # copied straight from a broadcast view
                k, v = k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)
            else:
                k, v = k.repeat_interleave(batch, dim=0), v.repeat_interleave(batch, dim=0)
            out.update(k, v, i)
        return out
