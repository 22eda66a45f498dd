"""Attention: the one dispatch point for glyph_rt's kernel, flash_attn and torch SDPA.

    attention(q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None,
              causal=False, softmax_scale=None, backend="auto")

q: (total_q, nheads, headdim); k, v: (total_k, nheads_k, headdim), nheads divisible by
nheads_k (GQA/MQA); cu_seqlens_q / cu_seqlens_k: (batch + 1,) int32 segment boundaries (one
segment when omitted), starting at 0, non-decreasing and ending at total_q / total_k: every token is in
a segment, as flash-attn's contract (checked on every backend, a ValueError naming the argument, in one host sync
that also finds the longest segment); max_seqlen_*: the longest segment (optional; a value below it is refused).
causal masks are aligned to the bottom right, as flash-attn's. Returns (total_q, nheads, headdim).

Backends:
  "glyph"       the Triton kernel (glyph_rt.kernels.attention), forward and backward, in float16, bfloat16
                or float32 (other dtypes are refused: cast, or use sdpa or reference), on sm_80+ GPUs
  "flash_attn"  the flash_attn package's varlen function (FA4's on sm_90+ at head dims 64/96/128, else FA2)
  "sdpa"        torch's scaled_dot_product_attention (per segment when lengths differ)
  "reference"   plain fp32 math, the test oracle
  "auto"        on CUDA, per case (vision: bidirectional varlen, prefill: causal, decode: the
                KV-cache kernel) the fastest backend measured on this GPU class
                (glyph_rt/data/attention_backends.json, see choose_backend), else glyph for vision
                and decode and flash_attn/sdpa for causal prefill; only float16 and bfloat16 take glyph
                (float32, float64 and float8 go to sdpa), and never at head dims over 256 or head dims
                that are not a multiple of 16; glyph and flash_attn need compute capability 8.0 or newer
                (below it, e.g. a T4, auto takes sdpa and naming either is an error); sdpa off CUDA

`register_transformers()` makes it a transformers attention implementation,
attn_implementation="glyph", for GLM-4.1V and Qwen2.5-VL (and any model using
transformers' attention interface). There, calls with at most 64 query rows per KV head and
no gradient (decoding with a KV cache) take the split-key decode kernel
(glyph_rt.kernels.attention_decode) when the backend resolves to "glyph": it reads the cache
in place and takes left padding as each row's first valid key, so nothing is copied.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import autocast_dtype

BACKENDS = ("auto", "glyph", "flash_attn", "sdpa", "reference")
MAX_HEAD_DIM = 256
# the dtypes "auto" sends to the Triton kernel on a GPU: tensor-core dots. Given backend="glyph", it also runs
# float32 (IEEE dots on FMA units, glyph_rt.kernels.attention.DTYPES); the tile configs are sized and compiled
# (glyph_rt.kernels.aot) for these only: float64 would not compile on a GPU, float8 would round p to 8 bits
AUTO_GLYPH_DTYPES = (torch.float16, torch.bfloat16)


FA4_HEAD_DIMS = (64, 96, 128)  # FA4 (flash_attn.cute) runs on Hopper and Blackwell (sm_90+) at these head dims
# glyph's Triton kernels and flash_attn need compute capability 8.0 or newer: FA2 (and FA4) has no kernels for
# Turing and older, and the Triton tiles are sized for sm_80+ shared memory (an fp16 d=128 forward block needs
# 81,920 B; sm_75 has 65,536); bf16 tensor cores start there too (patch_embed's 'cuda' GEMM has the same floor)
MIN_CAPABILITY = (8, 0)


@functools.lru_cache(maxsize=1)
def _flash_modules() -> tuple:
    """((varlen function, "fa4" | "fa2"), ...) of the flash_attn packages that import, FA4 first."""
    out = []
    for mod, name in (("flash_attn.cute", "fa4"), ("flash_attn", "fa2")):
        try:
            if importlib.util.find_spec(mod.split(".")[0]) is None:
                continue
            fn = getattr(importlib.import_module(mod), "flash_attn_varlen_func", None)
            if fn is not None:
                out.append((fn, name))
        except Exception:  # a broken install is the same as none
            continue
    return tuple(out)


def flash_attn_varlen(capability: tuple[int, int] | None = None, head_dim: int | None = None):
    """flash_attn's varlen function and its name for a GPU of `capability` at `head_dim` (FA4 on sm_90+ at
    head dims 64/96/128, else FA2), or (None, None); without them, the first that imports."""
    for fn, name in _flash_modules():
        if name == "fa4" and ((capability is not None and capability[0] < 9)
                              or (head_dim is not None and head_dim not in FA4_HEAD_DIMS)):
            continue
        return fn, name
    return None, None


def available_backends(device: torch.device) -> dict[str, str | None]:
    """{backend: None if usable on `device`, else why not}."""
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    out = _available(device.type, interp)
    if device.type == "cpu" and interp and out["glyph"] is None:
        from ..kernels import compiled_for_gpu, interpreter_problem

        if compiled_for_gpu():  # TRITON_INTERPRET=1 set after the kernels were imported
            out = {**out, "glyph": interpreter_problem()}
    return out


@functools.lru_cache(maxsize=None)
def _available(device_type: str, interp: bool) -> dict[str, str | None]:
    out: dict[str, str | None] = {"sdpa": None, "reference": None}
    if importlib.util.find_spec("triton") is None:
        out["glyph"] = "triton is not installed"
    elif device_type != "cuda" and not (device_type == "cpu" and interp):
        out["glyph"] = "the Triton kernel runs on CUDA tensors (or on the CPU in Triton's interpreter)"
    elif device_type == "cpu":
        from ..kernels import interpreter_problem

        out["glyph"] = interpreter_problem()
    else:
        out["glyph"] = None
    fns = _flash_modules()
    out["flash_attn"] = None if (fns and device_type == "cuda") else (
        "flash_attn is not installed" if not fns else "flash_attn runs on CUDA tensors")
    return out


def autocast_inputs(*xs: torch.Tensor) -> tuple:
    """q, k, v in autocast's dtype where autocast is on (as SDPA takes them): under a bf16 autocast, rotary
    embeddings in fp32 leave q and k in fp32 beside a bf16 v."""
    dt = autocast_dtype(xs[0].device)
    return xs if dt is None else tuple(x.to(dt) for x in xs)


def check_inputs(q, k, v, cu_q, cu_k) -> None:
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"q, k, v must be (total, nheads, headdim), got {list(q.shape)}, {list(k.shape)}, "
                         f"{list(v.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {list(k.shape)} and {list(v.shape)}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"q and k head dims differ: {q.shape[2]} and {k.shape[2]}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"nheads ({q.shape[1]}) must be a multiple of nheads_k ({k.shape[1]})")
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise ValueError(f"q, k, v must share one float dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):  # the kernels take raw pointers: they would read another device
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    for name, cu, total in (("cu_seqlens_q", cu_q, q.shape[0]), ("cu_seqlens_k", cu_k, k.shape[0])):
        if cu.dtype != torch.int32 or cu.dim() != 1 or len(cu) < 2:
            raise ValueError(f"{name} must be a (batch + 1,) int32 tensor, got {cu.dtype} {list(cu.shape)}")
        if cu.device != q.device:
            raise ValueError(f"{name} is on {cu.device}, q on {q.device}")
    if len(cu_q) != len(cu_k):
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k give {len(cu_q) - 1} and {len(cu_k) - 1} segments")


CASES = ("vision", "prefill", "decode")  # varlen bidirectional, causal, few query rows on a KV cache
# where nothing was measured: glyph_rt's fused paths (all pages in one varlen launch, GQA-packed
# decode on the cache in place); flash attention, then torch SDPA (cuDNN/flash) for long causal prefill
DEFAULT_CHOICE = {"vision": ("glyph", "flash_attn", "sdpa"), "prefill": ("flash_attn", "sdpa", "glyph"),
                  "decode": ("glyph", "sdpa")}


@dataclass(frozen=True)
class DeviceInfo:
    name: str                  # as torch.cuda.get_device_name gives it, e.g. "NVIDIA H100 80GB HBM3"
    capability: tuple[int, int]


@functools.lru_cache(maxsize=None)
def measured_choices() -> dict:
    """{gpu name or "sm_XY": {case: backend}} from glyph_rt/data/attention_backends.json."""
    path = Path(__file__).resolve().parent.parent / "data" / "attention_backends.json"
    return {gpu: {c: row["backend"] for c, row in cases.items()}
            for gpu, cases in json.loads(path.read_text())["gpus"].items()}


def choose_backend(case: str, device: DeviceInfo, avail: dict[str, str | None], dtype: torch.dtype,
                   head_dim: int, table: dict | None = None) -> str:
    """The backend `auto` runs for `case` on a CUDA `device`: the measured fastest for this GPU (by name,
    then compute capability) when it is available and can take the input, else the first usable default.
    glyph and flash_attn are never usable below compute capability 8.0 (MIN_CAPABILITY): there it is sdpa."""
    if case not in CASES:
        raise ValueError(f"attention case {case!r} is unknown; choose from {', '.join(CASES)}")
    table = measured_choices() if table is None else table

    def usable(b: str) -> bool:
        if avail.get(b) is not None:
            return False
        if b in ("glyph", "flash_attn") and tuple(device.capability) < MIN_CAPABILITY:
            return False
        if b == "glyph":  # fp16/bf16 only: fp32 runs on FMA units there, slower than SDPA's kernels, and
            # fp64/fp8 are not compiled for (AUTO_GLYPH_DTYPES); head dims that are not a multiple of 16 make
            # unaligned rows whose tiles spill registers (the exhaustive compile check)
            return head_dim <= MAX_HEAD_DIM and head_dim % 16 == 0 and dtype in AUTO_GLYPH_DTYPES
        if b == "flash_attn":
            return (dtype in (torch.float16, torch.bfloat16) and head_dim <= MAX_HEAD_DIM and case != "decode"
                    and flash_attn_varlen(device.capability, head_dim)[0] is not None)
        return True

    sm = f"sm_{device.capability[0]}{device.capability[1]}"
    for key in (device.name, sm):
        b = table.get(key, {}).get(case)
        if b is not None and b in BACKENDS and usable(b):
            return b
    return next((b for b in DEFAULT_CHOICE[case] if usable(b)), "sdpa")


@functools.lru_cache(maxsize=None)
def _device_info(index: int) -> DeviceInfo:
    return DeviceInfo(torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index))


def resolve_backend(backend: str, q: torch.Tensor, case: str = "vision") -> str:
    """The backend that runs: `backend` itself (checked to be available), or for "auto" the choice for
    `case` on q's device (choose_backend); off CUDA "auto" is torch SDPA."""
    if backend not in BACKENDS:
        raise ValueError(f"attention backend {backend!r} is unknown; choose from {', '.join(BACKENDS)}")
    avail = available_backends(q.device)
    if backend == "auto":
        if q.device.type != "cuda":
            return "sdpa"
        return choose_backend(case, _device_info(q.device.index or 0), avail, q.dtype, q.shape[-1])
    if avail[backend] is not None:
        raise RuntimeError(f"attention backend {backend!r} is not available: {avail[backend]}")
    if backend in ("glyph", "flash_attn") and q.device.type == "cuda":
        info = _device_info(q.device.index or 0)
        if tuple(info.capability) < MIN_CAPABILITY:
            raise RuntimeError(f"attention backend {backend!r} needs compute capability 8.0 or newer; {info.name} is "
                               f"{'.'.join(map(str, info.capability))}: use backend 'sdpa' (or 'auto', which takes it)")
    if backend == "glyph" and q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"backend 'glyph' supports head dims up to {MAX_HEAD_DIM}, got {q.shape[-1]}")
    if backend == "glyph":
        from ..kernels.attention import dtype_problem

        if problem := dtype_problem(q.dtype):
            raise ValueError(f"attention backend 'glyph': {problem}")
    if backend == "glyph" and q.device.type == "cpu":
        from ..kernels import interpreter_dtype_problem

        if problem := interpreter_dtype_problem(q.dtype):
            raise ValueError(f"attention backend 'glyph': {problem}")
    return backend


class _GlyphAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, max_q, max_k, causal, scale):
        from ..kernels import attention as ka

        q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))  # the kernel reads rows
        o, lse = ka.forward(q, k, v, cu_q, cu_k, max_q, causal, scale)
        ctx.save_for_backward(q, k, v, o, lse, cu_q, cu_k)
        ctx.args = (max_q, max_k, causal, scale)
        return o

    @staticmethod
    def backward(ctx, do):
        from ..kernels import attention as ka

        q, k, v, o, lse, cu_q, cu_k = ctx.saved_tensors
        max_q, max_k, causal, scale = ctx.args
        dq, dk, dv = ka.backward(do, q, k, v, o, lse, cu_q, cu_k, max_q, max_k, causal, scale)
        return dq, dk, dv, None, None, None, None, None, None


def _lengths(bounds: list[int]) -> list[int]:
    return [b - a for a, b in zip(bounds, bounds[1:])]


def attention_reference(q, k, v, cu_q, cu_k, causal: bool, scale: float) -> torch.Tensor:
    """Plain math in float32, one segment at a time: the oracle."""
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    group = q.shape[1] // k.shape[1]
    bq, bk = cu_q.tolist(), cu_k.tolist()
    for i in range(len(bq) - 1):
        qs = q[bq[i]:bq[i + 1]].float().transpose(0, 1)
        ks = k[bk[i]:bk[i + 1]].float().transpose(0, 1).repeat_interleave(group, 0)
        vs = v[bk[i]:bk[i + 1]].float().transpose(0, 1).repeat_interleave(group, 0)
        s = qs @ ks.transpose(1, 2) * scale
        Lq, Lk = qs.shape[1], ks.shape[1]
        if causal:
            keep = torch.arange(Lk, device=q.device)[None, :] <= torch.arange(Lq, device=q.device)[:, None] + Lk - Lq
            s = s.masked_fill(~keep, float("-inf"))
        p = torch.softmax(s, -1).nan_to_num(0.0)  # a query that sees no key gets zeros
        out[bq[i]:bq[i + 1]] = (p @ vs).transpose(0, 1)
    return out


def _sdpa(q, k, v, bounds_q: list[int], bounds_k: list[int], causal: bool, scale: float) -> torch.Tensor:
    """SDPA over the segments between the (checked) host boundaries bounds_q / bounds_k."""
    group = q.shape[1] // k.shape[1]
    lq, lk = _lengths(bounds_q), _lengths(bounds_k)

    def run(qs, ks, vs):  # (B, H, L, D)
        Lq, Lk = qs.shape[-2], ks.shape[-2]
        mask = None
        if causal and Lq != Lk:  # SDPA's is_causal is top-left aligned; flash-attn's is bottom-right
            if qs.is_cuda:  # torch's lower-right bias runs on its flash kernel (GQA too); a mask would not
                from torch.nn.attention.bias import causal_lower_right

                mask = causal_lower_right(Lq, Lk)
            else:
                mask = torch.ones(Lq, Lk, dtype=torch.bool, device=qs.device).tril(Lk - Lq)
        return F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, is_causal=causal and mask is None,
                                              scale=scale, enable_gqa=group > 1)

    if len(set(lq)) == 1 and len(set(lk)) == 1:  # equal segments: one batched call
        B = len(lq)
        qs = q.reshape(B, lq[0], *q.shape[1:]).transpose(1, 2)
        ks = k.reshape(B, lk[0], *k.shape[1:]).transpose(1, 2)
        vs = v.reshape(B, lk[0], *v.shape[1:]).transpose(1, 2)
        return run(qs, ks, vs).transpose(1, 2).reshape(q.shape)
    # segments of one shape (the pages of a document) share a batched call
    shapes: dict[tuple[int, int], list[int]] = {}
    for i, shape in enumerate(zip(lq, lk)):
        shapes.setdefault(shape, []).append(i)
    qs, ks, vs = q.split(lq), k.split(lk), v.split(lk)
    outs: list = [None] * len(lq)
    for idx in shapes.values():
        o = run(*(torch.stack([xs[i] for i in idx]).transpose(1, 2) for xs in (qs, ks, vs))).transpose(1, 2)
        for i, oi in zip(idx, o.unbind(0)):
            outs[i] = oi
    return torch.cat(outs)


def _check_boundaries(cu: torch.Tensor, name: str, total: int, first: int, shortest: int, last: int) -> None:
    """cu_seqlens must be segment boundaries that cover every token: start at 0, never decrease, end at `total`.
    Rows outside them would be left unwritten by the kernels (uninitialized memory in the output, gradients
    included), and a negative length reads outside its segment."""
    if first != 0:
        raise ValueError(f"{name} must start at 0, got {first} (cumulative lengths need the leading 0: "
                         "F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0)))")
    if shortest < 0:
        i = int(torch.nonzero(cu[1:] < cu[:-1])[0, 0]) + 1
        raise ValueError(f"{name} must be non-decreasing, but entry {i} ({int(cu[i])}) is below entry {i - 1} "
                         f"({int(cu[i - 1])})")
    if last != total:
        raise ValueError(f"{name} ends at {last} but there are {total} tokens: every token must be in a segment "
                         "(give padding a segment of its own)")


def _boundaries(cu: torch.Tensor, total: int, name: str) -> list[int]:
    """cu_seqlens as a host list (one sync), checked (_check_boundaries)."""
    bounds = cu.tolist()
    _check_boundaries(cu, name, total, bounds[0], min(_lengths(bounds)), bounds[-1])
    return bounds


_CHECKED: dict[int, tuple] = {}  # id(cu_seqlens) -> (cu_seqlens, its version, its token count, longest segment)


def _trust(cu: torch.Tensor, total: int, longest: int) -> None:
    """Records cu_seqlens as checked, with its longest segment: those read from it, and those built here, right by
    construction (no host sync for them)."""
    if len(_CHECKED) >= 8:
        _CHECKED.clear()
    _CHECKED[id(cu)] = (cu, cu._version, total, longest)


def _longest(cu: torch.Tensor, total: int, name: str, given: int | None) -> int:
    """The longest segment, read from cu in one host sync with the values that check it (_check_boundaries), given
    max_seqlen or not: the kernels' grids and outputs trust the boundaries, so a bad cu_seqlens would leave rows
    unwritten or index past the tensors. A `given` below the longest segment is refused. A tensor is checked once
    (a vision tower's layers share one; those glyph_rt builds are trusted, _trust), not once per layer."""
    hit = _CHECKED.get(id(cu))
    if hit is not None and hit[0] is cu and hit[1] == cu._version and hit[2] == total:
        longest = hit[3]
    else:
        lengths = cu[1:] - cu[:-1]
        first, shortest, longest, last = torch.stack([cu[0], lengths.min(), lengths.max(), cu[-1]]).tolist()
        _check_boundaries(cu, name, total, first, shortest, last)
        _trust(cu, total, longest)
    if given is not None and int(given) < longest:
        arg = name.replace("cu_seqlens", "max_seqlen")
        raise ValueError(f"{arg}={int(given)} is below the longest segment of {name} ({longest}); give the longest "
                         "segment's length, or omit it")
    return longest


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor | None = None,
              cu_seqlens_k: torch.Tensor | None = None, max_seqlen_q: int | None = None,
              max_seqlen_k: int | None = None, causal: bool = False, softmax_scale: float | None = None,
              backend: str = "auto") -> torch.Tensor:
    """Attention over packed segments; see the module docstring for shapes and backends."""
    if cu_seqlens_q is None:
        cu_seqlens_q = torch.tensor([0, q.shape[0]], dtype=torch.int32, device=q.device)
        max_seqlen_q = q.shape[0]
        _trust(cu_seqlens_q, q.shape[0], q.shape[0])
    if cu_seqlens_k is None:
        if k.shape[0] != q.shape[0] and len(cu_seqlens_q) > 2:
            raise ValueError("cu_seqlens_k is needed when k and q lengths differ over several segments")
        if k.shape[0] == q.shape[0]:
            cu_seqlens_k = cu_seqlens_q
        else:
            cu_seqlens_k = torch.tensor([0, k.shape[0]], dtype=torch.int32, device=q.device)
            _trust(cu_seqlens_k, k.shape[0], k.shape[0])
    q, k, v = autocast_inputs(q, k, v)
    check_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k)
    cu_seqlens_q, cu_seqlens_k = cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous()  # the kernels index them flat
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    backend = resolve_backend(backend, q, "prefill" if causal else "vision")
    if backend in ("reference", "sdpa"):  # both read the boundaries on the host: checked there
        bounds_q = _boundaries(cu_seqlens_q, q.shape[0], "cu_seqlens_q")
        bounds_k = _boundaries(cu_seqlens_k, k.shape[0], "cu_seqlens_k")
        if backend == "sdpa":
            return _sdpa(q, k, v, bounds_q, bounds_k, causal, scale)
        return attention_reference(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale).to(q.dtype)
    max_seqlen_q = _longest(cu_seqlens_q, q.shape[0], "cu_seqlens_q", max_seqlen_q)
    max_seqlen_k = _longest(cu_seqlens_k, k.shape[0], "cu_seqlens_k", max_seqlen_k)
    if backend == "flash_attn":
        fn, name = flash_attn_varlen(_device_info(q.device.index or 0).capability, q.shape[-1])
        if fn is None:
            raise RuntimeError(f"attention backend 'flash_attn': the installed flash_attn has no kernel for this GPU "
                               f"at head dim {q.shape[-1]} (FA4 runs on sm_90+ at head dims {FA4_HEAD_DIMS}; install "
                               "FA2 for others)")
        kw = dict(cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, softmax_scale=scale, causal=causal)
        if name == "fa2":  # by name: FA2 and FA4 order their arguments differently after cu_seqlens
            kw.update(max_seqlen_q=int(max_seqlen_q), max_seqlen_k=int(max_seqlen_k))
        out = fn(q, k, v, **kw)
        return out[0] if isinstance(out, tuple) else out
    return _GlyphAttention.apply(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k),
                                 bool(causal), float(scale))


# ----------------------------------------------------------------------------- transformers
def glyph_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, is_causal=None,
                            cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None, max_length_k=None,
                            backend: str = "auto", **kwargs):
    """transformers' attention interface: query (B, H, S, D), key/value (B, H_kv, S_k, D) ->
    ((B, S, H, D), None). Packed sequences come as cu_seq_lens_*, or as text position_ids [1, S] that restart
    at each sample (transformers passes them when a packed row has no mask and no cache); padding as a 2D mask."""
    if dropout and module.training:
        raise NotImplementedError("attn_implementation='glyph' has no attention dropout; set attention_dropout=0")
    for name in ("sliding_window", "softcap", "s_aux"):
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"attn_implementation='glyph' has no {name} (the model passes "
                                      f"{name}={kwargs[name]!r}); use attn_implementation='sdpa' for this model")
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(f"attn_implementation='glyph' takes a 2D padding mask, got {attention_mask.dim()}D")
    if attention_mask is not None and attention_mask.shape[-1] < key.shape[2]:  # a static cache: its filled part
        key, value = key[:, :, :attention_mask.shape[-1]], value[:, :, :attention_mask.shape[-1]]
    query, key, value = autocast_inputs(query, key, value)
    B, H, S, D = query.shape
    Sk = key.shape[2]
    causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))  # (B, S, H, D)
    dev = query.device
    if cu_seq_lens_q is None and attention_mask is None and B == 1 and S == Sk and S > 1:
        packed = packed_segments(kwargs.get("position_ids"))  # samples packed into one row: attend within each
        if packed is not None:
            cu_seq_lens_q, max_length_q = packed
            max_length_k = max_length_q
    if cu_seq_lens_q is None and _decode_kernel_applies(backend, query, key, value):
        starts = None if attention_mask is None else _left_padding(attention_mask, B, Sk)
        if starts is not False:  # the KV cache is read in place, no unpadding
            from ..kernels import attention_decode

            scale = scaling if scaling is not None else 1.0 / math.sqrt(D)
            return attention_decode.decode(q, k, v, starts, causal, scale), None
    if cu_seq_lens_q is not None:  # packed sequences, B == 1
        cu_k = cu_seq_lens_k if cu_seq_lens_k is not None else cu_seq_lens_q
        out = attention(q.reshape(-1, H, D), k.reshape(-1, k.shape[2], D), v.reshape(-1, v.shape[2], D),
                        cu_seq_lens_q.to(torch.int32), cu_k.to(torch.int32), max_length_q, max_length_k,
                        causal=causal, softmax_scale=scaling, backend=backend)
        return out.reshape(B, S, H, D), None
    if attention_mask is not None and not bool(attention_mask.all()):  # padding: unpad, attend, pad back
        small = B * S * Sk <= PADDED_SDPA_MAX and (key.shape[1] == H or B * H * Sk * D <= PADDED_GQA_MAX)
        if small and resolve_backend(backend, query, "prefill" if causal else "vision") == "sdpa":
            return _sdpa_padded(query, key, value, attention_mask, causal, scaling), None  # one call, not one per row
        mask_k = attention_mask.bool()
        mask_q = mask_k[:, -S:]
        lens_q, lens_k = mask_q.sum(1, dtype=torch.int32), mask_k.sum(1, dtype=torch.int32)
        cu_q = F.pad(lens_q.cumsum(0, dtype=torch.int32), (1, 0))
        cu_k = F.pad(lens_k.cumsum(0, dtype=torch.int32), (1, 0))
        total_q, total_k, max_q, max_k = torch.stack([cu_q[-1], cu_k[-1], lens_q.max(), lens_k.max()]).tolist()
        _trust(cu_q, total_q, max_q)
        _trust(cu_k, total_k, max_k)
        o = attention(q[mask_q], k[mask_k], v[mask_k], cu_q, cu_k, max_q, max_k,
                      causal=causal, softmax_scale=scaling, backend=backend)
        out = q.new_zeros(B, S, H, D)
        out[mask_q] = o
        return out, None
    cu_q = torch.arange(B + 1, dtype=torch.int32, device=dev) * S
    cu_k = torch.arange(B + 1, dtype=torch.int32, device=dev) * Sk
    _trust(cu_q, B * S, S)
    _trust(cu_k, B * Sk, Sk)
    out = attention(q.reshape(B * S, H, D), k.reshape(B * Sk, -1, D), v.reshape(B * Sk, -1, D), cu_q, cu_k,
                    S, Sk, causal=causal, softmax_scale=scaling, backend=backend)
    return out.reshape(B, S, H, D), None


# padded batches up to this many (row, query, key) triples run as one masked SDPA call (a decode step, a chunk of
# prefill); longer ones are unpadded, so that no [B, S, S_k] mask is built and SDPA keeps its fused kernels
PADDED_SDPA_MAX = 1 << 24
# with GQA on a GPU such a call repeats K and V to the query heads (up to this many elements each): SDPA's fused
# kernel that takes a mask (memory-efficient) has no GQA, and its math kernel would build [B, H, S, S_k] scores
PADDED_GQA_MAX = 1 << 26


# (weak reference to the last 2D mask, its causal flag, SDPA's mask): one tuple, replaced whole, so that a thread
# never reads one forward's mask with another's analysis (the same for the two caches below)
_last_allowed: tuple = (lambda: None, None, None)


def _sdpa_padded(query, key, value, mask, causal: bool, scale) -> torch.Tensor:
    """One batched SDPA call over padded rows (B, H, S, D): keys masked by the 2D padding mask [B, S_k] (and
    causally, bottom-right aligned), padded query rows zero. The boolean mask SDPA reads is built once per forward
    (every layer gets the same 2D mask object). -> (B, S, H, D)"""
    S, Sk = query.shape[2], key.shape[2]
    mask_k = mask.bool()
    mask_q = mask_k[:, -S:]
    global _last_allowed
    ref, was_causal, allowed = _last_allowed
    allowed = allowed if ref() is mask and was_causal == causal else None
    if allowed is None or allowed.shape[-2:] != (S, Sk):
        allowed = mask_k[:, None, :].expand(-1, S, -1)
        if causal:
            allowed = allowed & torch.ones(S, Sk, dtype=torch.bool, device=query.device).tril(Sk - S)
        allowed = (allowed | ~mask_q[:, :, None])[:, None]  # a padded query attends anywhere; its output is dropped
        _last_allowed = (weakref.ref(mask), causal, allowed)
    gqa = query.shape[1] != key.shape[1]
    if gqa and query.is_cuda:
        key, value = (x.repeat_interleave(query.shape[1] // key.shape[1], dim=1) for x in (key, value))
        gqa = False
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, scale=scale, enable_gqa=gqa)
    return out.transpose(1, 2).masked_fill(~mask_q[:, :, None, None], 0)


_last_positions: tuple = (lambda: None, None)  # (weak reference to the last position_ids analysed, its segments)


def packed_segments(position_ids):
    """(cu_seqlens int32, max_seqlen) of the samples packed into one row, from its text positions [1, S] (each
    sample counts 0, 1, ...: a new segment starts wherever a position is not the previous one plus 1, as
    transformers' find_packed_sequence_indices), or None for a single sequence. Analysed once per forward."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1:
        return None
    global _last_positions
    ref, found = _last_positions
    if ref() is position_ids:
        return found
    p = position_ids[0]
    starts = torch.nonzero(p[1:] != p[:-1] + 1).flatten() + 1
    result = None
    if len(starts):
        cu = F.pad(starts.to(torch.int32), (1, 1))
        cu[-1] = p.shape[0]
        result = (cu, int((cu[1:] - cu[:-1]).max()))
    _last_positions = (weakref.ref(position_ids), result)
    return result


def _decode_kernel_applies(backend: str, query, key, value) -> bool:
    """Few query rows per KV head, no gradient, and the Triton kernel chosen: the split-key decode kernel."""
    B, H, S, D = query.shape
    if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad):
        return False
    if D > MAX_HEAD_DIM or resolve_backend(backend, query, "decode") != "glyph":
        return False
    from ..kernels.attention_decode import MAX_ROWS

    return S * (H // key.shape[1]) <= MAX_ROWS


_last_mask: tuple = (lambda: None, None)  # (weak reference to the last 2D mask analysed, its analysis)


def _left_padding(mask: torch.Tensor, batch: int, keys: int):
    """For a 2D padding mask over `keys` keys: each row's first valid key (int32 [batch]) if every row is
    left-padded, else False. transformers passes one mask object to every layer of a forward, so it
    is analysed (one host sync) once per forward."""
    if tuple(mask.shape) != (batch, keys):
        return False
    global _last_mask
    ref, found = _last_mask
    if ref() is mask:
        return found
    m = mask.bool()
    Sk = m.shape[1]
    starts = (Sk - m.sum(1)).to(torch.int32)
    left = bool((m == (torch.arange(Sk, device=m.device)[None, :] >= starts[:, None])).all())
    found = starts if left else False
    _last_mask = (weakref.ref(mask), found)
    return found


def glyph_attention_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, *args,
                         attention_mask=None, **kwargs):
    """transformers' mask interface for attn_implementation='glyph': flash-attn's 2D padding mask (None when
    nothing is padded), but as long as the keys filled so far when the cache holds more (a StaticCache's buffer),
    so that glyph_attention_forward attends to those keys only, as flash-attn's path slices them."""
    from transformers.masking_utils import flash_attention_mask

    mask = flash_attention_mask(batch_size, q_length, kv_length, q_offset, *args, attention_mask=attention_mask,
                                **kwargs)
    filled = int(q_offset) + q_length
    if mask is None and filled < kv_length:
        mask = torch.ones(batch_size, filled, dtype=torch.bool, device=kwargs.get("device", "cpu"))
    return mask


def register_transformers(name: str | None = None, backend: str = "auto") -> str:
    """Registers glyph_rt's attention as attn_implementation=`name` (with flash-attn's 2D padding masks) and
    returns the name; `backend` is passed to every attention() call it makes. The default name is one per
    backend: "glyph" for auto, "glyph_<backend>" for another, so that models pinned to different backends in
    one process keep theirs."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    if backend not in BACKENDS:
        raise ValueError(f"attention backend {backend!r} is unknown; choose from {', '.join(BACKENDS)}")
    name = name or ("glyph" if backend == "auto" else f"glyph_{backend}")
    AttentionInterface.register(name, functools.partial(glyph_attention_forward, backend=backend))
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, glyph_attention_mask)
    return name
