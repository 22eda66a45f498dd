"""apply_glyph_kernels: run Hugging Face GLM-4.1V / Qwen2.5-VL on glyph_rt's kernels.

One generic mechanism: a module class is replaced by a subclass that keeps its parameters and
constructor and overrides `forward` with glyph_rt's op. On a built model the matching modules
switch class in place (that model only); with no model, the class is swapped in transformers'
modeling module so that models built afterwards get it (models built before stay untouched).
A small table says which classes each model type has. Every change is recorded and undone by
`Patch.undo()`.

    patch = apply_glyph_kernels(model)                     # a built model
    patch = apply_glyph_kernels(model_type="glm4v")        # models built from now on
    patch.undo()
"""
from __future__ import annotations

import importlib
import sys
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from ..ops.attention import BACKENDS as ATTENTION_BACKENDS
from ..ops.attention import attention, register_transformers
from ..ops.patch_embed import BACKENDS as PATCH_EMBED_BACKENDS
from .patch_embed import embed_patches


@dataclass(frozen=True)
class ModelClasses:
    module: str  # transformers modeling module
    patch_embed: str
    vision_attention: str
    position_embedding: str | None = None  # learned position table resampled per grid (GLM-4.1V)


MODELS = {
    "glm4v": ModelClasses("transformers.models.glm4v.modeling_glm4v", "Glm4vVisionPatchEmbed", "Glm4vVisionAttention",
                          "Glm4vVisionEmbeddings"),
    "qwen2_5_vl": ModelClasses("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "Qwen2_5_VisionPatchEmbed",
                               "Qwen2_5_VLVisionAttention"),
}


class GlyphPatchEmbed:
    """forward of Glm4vVisionPatchEmbed / Qwen2_5_VisionPatchEmbed on glyph_rt's GEMM (float or uint8 input)."""

    _glyph_backend = "auto"

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return embed_patches(self, hidden_states, self._glyph_backend)


class GlyphVisionAttention:
    """forward of the vision towers' attention: every image's segment in one varlen call."""

    _glyph_backend = "auto"

    def forward(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
        if self.training and self.attention_dropout:
            raise NotImplementedError("glyph_rt's vision attention has no dropout; set attention_dropout=0")
        n = hidden_states.shape[0]
        q, k, v = self.qkv(hidden_states).reshape(n, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        cos, sin = position_embeddings
        rotary = sys.modules[self._glyph_base.__module__].apply_rotary_pos_emb_vision
        q, k = rotary(q, k, cos, sin)
        cu = cu_seqlens.to(torch.int32)
        out = attention(q, k, v, cu, cu, max_seqlen, max_seqlen, causal=False, softmax_scale=self.scaling,
                        backend=self._glyph_backend)
        return self.proj(out.reshape(n, -1))


class GlyphPositionEmbedding:
    """GLM-4.1V's learned position table, resampled bicubically per image grid: the resampled table
    depends only on the grid's shape and the table's values, so in inference it is computed once per shape
    and reused, the most recent GLYPH_SHAPES shapes kept (cropped last pages bring many) within GLYPH_BYTES
    (a 300-dpi page's table is ~100 MB at GLM-4.1V's width); the sum is the same as the original's, bit for bit.
    The cache holds a copy of the table it was resampled from and is checked against the weight's bits on every
    forward (one elementwise compare of the table, fetched in the host sync the forward makes anyway): a write
    that leaves the address and version counter as they were (`weight.data += delta` in peft's
    merge_and_unload or an EMA, FSDP2's all-gather) is seen too."""

    _glyph_backend = "auto"
    GLYPH_SHAPES = 32
    GLYPH_BYTES = 512 << 20

    def forward(self, embeddings, lengths, image_shapes, h_coords, w_coords):
        weight = self.position_embedding.weight
        if torch.is_grad_enabled() and weight.requires_grad:
            return super().forward(embeddings, lengths, image_shapes, h_coords, w_coords)
        key = (weight.dtype, weight.device, tuple(weight.shape), embeddings.dtype, embeddings.device)
        snapshot = getattr(self, "_glyph_cache_weight", None)
        fresh = getattr(self, "_glyph_cache_version", None) == key and snapshot is not None
        changed = _differs(weight, snapshot) if fresh else None
        lengths, shapes, changed = _host_lists(lengths, image_shapes, changed)
        if not fresh or changed[0]:
            self._glyph_cache, self._glyph_cache_version = OrderedDict(), key
            self._glyph_cache_weight = weight.detach().clone()
        cache = self._glyph_cache
        parts, start = [], 0
        for n, shape in zip(lengths, shapes):
            key = (tuple(shape), n)
            if key in cache:
                cache.move_to_end(key)
            else:
                zero = embeddings.new_zeros(n, embeddings.shape[1])
                cache[key] = super().forward(zero, [n], image_shapes.new_tensor([shape]),
                                             h_coords[start:start + n], w_coords[start:start + n])
                while len(cache) > 1 and (len(cache) > self.GLYPH_SHAPES or sum(
                        t.numel() * t.element_size() for t in cache.values()) > self.GLYPH_BYTES):
                    cache.popitem(last=False)
            parts.append(cache[key])
            start += n
        return embeddings + (parts[0] if len(parts) == 1 else torch.cat(parts))


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _differs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A 0-d bool tensor on a's device: whether a and b (same shape, dtype, device) differ in any bit (NaNs with
    the same bits are equal, 0.0 and -0.0 differ). No host sync."""
    a, b = a.detach(), b.detach()
    bits = _BITS.get(a.element_size()) if a.is_floating_point() else None
    if bits is not None and a.is_contiguous() and b.is_contiguous():
        a, b = a.view(bits), b.view(bits)
    return torch.ne(a, b).any()


def _host_lists(*values) -> list:
    """Each value as a Python list ([x] for a 0-d tensor; a list or None as it is), the tensors that share a device
    fetched in one transfer (one host sync)."""
    out = list(values)
    by_device: dict = {}
    for i, v in enumerate(values):
        if torch.is_tensor(v):
            by_device.setdefault(v.device, []).append(i)
    for idx in by_device.values():
        flat = [values[i].reshape(-1).long() for i in idx]
        got = torch.cat(flat).tolist() if len(flat) > 1 else flat[0].tolist()
        at = 0
        for i, f in zip(idx, flat):
            v, n = values[i], f.numel()
            part = got[at:at + n]
            at += n
            if v.dim() > 1:
                width = v.shape[-1] if n else 0
                part = [part[j:j + width] for j in range(0, n, width)] if width else []
            out[i] = part
    return [list(v) if isinstance(v, tuple) else v for v in out]


# what patched modules derive from weights
WEIGHT_CACHES = ("_glyph_cache", "_glyph_cache_version", "_glyph_cache_weight")


def forget_weight_caches(model: torch.nn.Module) -> None:
    """Drops what the patched modules cached from their weights (resampled position tables and the copy of the
    table they came from). The caches see every change of the weights' values themselves (the position table is
    compared bit for bit on each forward, the patch weights are folded on each forward); this frees their memory,
    and the trainers call it after every optimizer step, when the old tables are of no more use."""
    for m in model.modules():
        for name in WEIGHT_CACHES:
            m.__dict__.pop(name, None)


_SUBCLASSES: dict[tuple, type] = {}


def glyph_subclass(base: type, mixin: type, backend: str) -> type:
    """`base` with `mixin`'s forward: same constructor, same parameters, same state_dict keys."""
    key = (base, mixin, backend)
    if key not in _SUBCLASSES:
        _SUBCLASSES[key] = type(f"Glyph{base.__name__}", (mixin, base),
                                {"_glyph_base": base, "_glyph_backend": backend, "__module__": __name__})
    return _SUBCLASSES[key]


class _Changes:
    """The values patches gave one attribute of one object, oldest first: [value, the value under it] (no reference to
    the object or the patch, so that a model nobody undoes is still freed)."""

    def __init__(self, obj, key):
        self.layers: list[list] = []
        self.finalizer = weakref.finalize(obj, _CHANGES.pop, key, None)  # the entry goes with its object


_CHANGES: dict[tuple[int, str], _Changes] = {}  # (id(object), attribute) -> the patches' changes to it


@dataclass
class Patch:
    """The changes apply_glyph_kernels made. undo() takes them back, and patches of the same model (or modeling
    module) may be undone in any order: an attribute a later patch changed too keeps the later patch's value until
    that one is undone, and the last undo restores the value before the first patch."""

    model_type: str
    replaced: int = 0  # module instances (or classes) switched
    attn_implementation: str | None = None  # the language model's (register_transformers' name for the backend)
    _undo: list = field(default_factory=list, repr=False)

    def setattr(self, obj, name: str, value) -> None:
        old = getattr(obj, name)
        setattr(obj, name, value)
        key = (id(obj), name)
        changes = _CHANGES.get(key)
        if changes is None:
            changes = _CHANGES[key] = _Changes(obj, key)
        layer = [value, old]
        changes.layers.append(layer)
        self._undo.append((obj, name, key, layer))

    def undo(self) -> None:
        while self._undo:
            obj, name, key, layer = self._undo.pop()
            changes = _CHANGES[key]
            at = next(i for i, x in enumerate(changes.layers) if x is layer)
            if at == len(changes.layers) - 1:  # the latest change: the value under it comes back
                setattr(obj, name, layer[1])
                if name == "__class__":  # what the patched forward cached from the weights goes with it
                    for cache in WEIGHT_CACHES:
                        obj.__dict__.pop(cache, None)
            else:  # a later patch's value stays; undoing that one restores what this one found
                changes.layers[at + 1][1] = layer[1]
            del changes.layers[at]
            if not changes.layers:
                changes.finalizer.detach()
                del _CHANGES[key]
        self.replaced = 0


def apply_glyph_kernels(model: torch.nn.Module | None = None, model_type: str | None = None, patch_embed: bool = True,
                        attention: bool = True, patch_embed_backend: str = "auto",
                        attention_backend: str = "auto") -> Patch:
    """Switches a GLM-4.1V / Qwen2.5-VL model (or, with no model, those built later) to glyph_rt's kernels.

    patch_embed: the vision patch embedding runs on glyph_rt's GEMM (and takes uint8 patches), and
    GLM-4.1V's resampled position table is cached per grid shape in inference.
    attention: the vision towers attend all images in one varlen call, and a built model's
    language model uses attn_implementation=patch.attn_implementation ("glyph" for the auto backend,
    "glyph_<backend>" for another; for models built later, pass it when building them). The backends go to
    glyph_rt.ops.patch_embed and glyph_rt.ops.attention ("auto" lets them pick)."""
    if model is not None:
        model_type = getattr(model.config, "model_type", None)
    if model_type not in MODELS:
        raise ValueError(f"model type {model_type!r} is not supported; glyph_rt patches {', '.join(MODELS)}")
    if patch_embed_backend not in PATCH_EMBED_BACKENDS:
        raise ValueError(f"patch_embed_backend {patch_embed_backend!r} is unknown; "
                         f"choose from {', '.join(PATCH_EMBED_BACKENDS)}")
    if attention_backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention_backend {attention_backend!r} is unknown; "
                         f"choose from {', '.join(ATTENTION_BACKENDS)}")
    spec = MODELS[model_type]
    mod = importlib.import_module(spec.module)
    targets = []
    if patch_embed:
        targets.append((getattr(mod, spec.patch_embed), GlyphPatchEmbed, patch_embed_backend))
    name = None
    if attention:
        name = register_transformers(backend=attention_backend)
        targets.append((getattr(mod, spec.vision_attention), GlyphVisionAttention, attention_backend))
    if patch_embed and spec.position_embedding:
        targets.append((getattr(mod, spec.position_embedding), GlyphPositionEmbedding, "auto"))
    patch = Patch(model_type, attn_implementation=name)
    for base, mixin, backend in targets:
        base = getattr(base, "_glyph_base", base)  # already patched: start from the original class
        new = glyph_subclass(base, mixin, backend)
        if model is None:
            patch.setattr(mod, base.__name__, new)
            patch.replaced += 1
            continue
        for m in model.modules():
            if isinstance(m, base):
                patch.setattr(m, "__class__", new)
                patch.replaced += 1
    if model is not None and attention:
        for cfg in _language_configs(model):
            patch.setattr(cfg, _attn_attribute(cfg), name)
    return patch


def _attn_attribute(cfg) -> str:
    """The attribute holding a config's own attn_implementation: transformers' `_attn_implementation` setter also
    sets it on every sub-config (the vision tower's too), so the value is set where the setter keeps it."""
    if isinstance(getattr(type(cfg), "_attn_implementation", None), property) and \
            "_attn_implementation_internal" in vars(cfg):
        return "_attn_implementation_internal"
    return "_attn_implementation"


def _language_configs(model) -> list:
    """The configs of the model and its language model (the vision tower's attention is patched itself, and its
    config keeps its own attn_implementation)."""
    found = {}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and "vision" not in type(cfg).__name__.lower():
            found[id(cfg)] = cfg
    return list(found.values())
