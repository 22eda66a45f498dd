"""Triton attention for decoding: few query rows against a long KV cache, split over the keys.

Layout as transformers' KV cache seen through a transpose: q [B, Sq, Hq, D], k and v
[B, Sk, Hkv, D], any strides with a unit last one, so the cache is read in place. The
Sq * (Hq / Hkv) query rows that share a key/value head are packed into one tile, so each
key is read once per KV head, not once per query head. The keys are split into chunks, one
program per (chunk, batch row, KV head), and a second kernel merges the chunks by their
log-sum-exp (flash-decoding). Left padding is given as the first valid key of each batch
row; causal masks are aligned to the bottom right (query i sees keys j <= i + Sk - Sq).
Rows that see no key get zeros. Forward only: this is the inference path.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from . import on_device
from .attention import LOG2E, _dot, dtype_problem

MAX_ROWS = 64  # Sq * (Hq / Hkv) packed in one tile


# The lengths grow by one each decode step: specialising on their divisibility by 16 would compile a second
# variant mid-generation (seconds, inside the first requests' and the benchmarks' timed steps).
@triton.jit(do_not_specialize=["Sq", "Sk", "keys_per_split", "splits"])
def attn_decode_split_kernel(
    Q, K, V, KSTART, PO, PLSE, qk_scale, Sq, Sk, keys_per_split,
    stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    stride_pb, stride_ph, stride_ps, stride_pm, splits, n_kv,
    GROUP: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_START: tl.constexpr, IEEE: tl.constexpr,
):
    # (chunk, batch row, KV head) folded onto grid axis 0 (axes 1 and 2 stop at 65,535); int64 offsets
    pid = tl.program_id(0)
    split = pid % splits
    hk = ((pid // splits) % n_kv).to(tl.int64)
    b = pid // (splits * n_kv)
    rows = tl.arange(0, BM)
    qi = rows // GROUP  # packed row -> (query position, head of the group)
    h = hk * GROUP + rows % GROUP
    row_ok = qi < Sq
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    offs_n = tl.arange(0, BN)
    b64 = b.to(tl.int64)
    q = tl.load(Q + b64 * stride_qb + qi[:, None].to(tl.int64) * stride_qs + h[:, None] * stride_qh + offs_d[None, :],
                mask=row_ok[:, None] & dmask[None, :], other=0.0)
    lo = split * keys_per_split
    if HAS_START:
        lo = tl.maximum(lo, tl.load(KSTART + b))
    hi = tl.minimum((split + 1) * keys_per_split, Sk)
    m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, BLOCK_D], dtype=tl.float32)
    k_base = K + b64 * stride_kb + hk * stride_kh
    v_base = V + b64 * stride_vb + hk * stride_vh
    for start_n in range(lo, hi, BN):
        kn = start_n + offs_n
        kmask = kn < hi
        k = tl.load(k_base + kn[:, None].to(tl.int64) * stride_ks + offs_d[None, :],
                    mask=kmask[:, None] & dmask[None, :], other=0.0)
        s = _dot(q, tl.trans(k), IEEE) * qk_scale  # log2 units
        ok = row_ok[:, None] & kmask[None, :]
        if CAUSAL:
            ok = ok & (kn[None, :] <= qi[:, None] + (Sk - Sq))
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + kn[:, None].to(tl.int64) * stride_vs + offs_d[None, :],
                    mask=kmask[:, None] & dmask[None, :], other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
        m_i = m_new
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    part = PO + b64 * stride_pb + hk * stride_ph + split.to(tl.int64) * stride_ps
    tl.store(part + rows[:, None] * stride_pm + offs_d[None, :], acc / l_safe[:, None])
    lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(l_safe))
    tl.store(PLSE + ((b64 * n_kv + hk) * splits + split) * BM + rows, lse)


@triton.jit(do_not_specialize=["Sq", "splits"])
def attn_decode_merge_kernel(
    PO, PLSE, O, Sq, splits, n_kv,
    stride_pb, stride_ph, stride_ps, stride_pm, stride_ob, stride_os, stride_oh,
    GROUP: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BM: tl.constexpr,
):
    pid = tl.program_id(0)  # (batch row, KV head) folded onto axis 0
    hk = (pid % n_kv).to(tl.int64)
    b64 = (pid // n_kv).to(tl.int64)
    rows = tl.arange(0, BM)
    offs_d = tl.arange(0, BLOCK_D)
    lse_base = PLSE + (b64 * n_kv + hk) * splits * BM + rows
    m = tl.full([BM], float("-inf"), dtype=tl.float32)
    for s in range(0, splits):
        m = tl.maximum(m, tl.load(lse_base + s * BM))
    m_use = tl.where(m == float("-inf"), 0.0, m)
    den = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, BLOCK_D], dtype=tl.float32)
    part = PO + b64 * stride_pb + hk * stride_ph + rows[:, None] * stride_pm + offs_d[None, :]
    for s in range(0, splits):
        w = tl.math.exp2(tl.load(lse_base + s * BM) - m_use)  # 0 for a chunk the row saw nothing of
        den += w
        acc += w[:, None] * tl.load(part)
        part += stride_ps
    out = acc / tl.where(den == 0.0, 1.0, den)[:, None]
    qi = rows // GROUP
    h = hk * GROUP + rows % GROUP
    tl.store(O + b64 * stride_ob + qi[:, None].to(tl.int64) * stride_os + h[:, None] * stride_oh + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=(qi < Sq)[:, None] & (offs_d < D)[None, :])


def config(head_dim: int, dtype: torch.dtype, rows: int, interpret: bool = False) -> dict:
    """Key block, warps and stages of the split kernel for `rows` packed query rows (16..MAX_ROWS), and
    the merge kernel's warps: the one table decode() and aot_specs() read."""
    if interpret:
        return dict(BN=16, num_warps=4, num_stages=1, merge_warps=4)
    bd = max(16, triton.next_power_of_2(head_dim))
    tile = rows * bd  # elements of a program's [rows, head dim] fp32 accumulator
    # measured with the compile check: ptxas spills at 4 warps on 1,024-element merges and past
    # 4,096 elements, and at 2 warps on smaller ones
    merge_warps = 8 if tile >= 4096 else 2 if tile == 1024 else 4
    if dtype == torch.float32:  # IEEE fp32 dots run on FMA units: small tiles
        return dict(BN=32 if bd <= 32 else 16, num_warps=16 if tile >= 64 * 256 else 8 if tile >= 4096 else 4,
                    num_stages=1 if tile >= 64 * 128 else 2, merge_warps=merge_warps)
    if tile >= 64 * 256:
        return dict(BN=32, num_warps=8, num_stages=2, merge_warps=merge_warps)
    return dict(BN=64, num_warps=8 if rows >= 32 and bd >= 32 else 4, num_stages=3 if bd <= 128 else 2,
                merge_warps=merge_warps)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _splits(B: int, Hkv: int, Sk: int, BN: int, device: torch.device) -> int:
    """Enough chunks for about two programs per SM, each at least one key block long."""
    want = max(1, -(-2 * _sm_count(device) // max(1, B * Hkv)))
    return max(1, min(want, triton.cdiv(Sk, BN)))


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_start: torch.Tensor | None) -> None:
    """What decode() needs of its inputs, checked before the launch: the kernels take raw pointers and trust
    shapes, dtypes and devices (a float32 q on a float16 cache would fail deep in Triton's compiler)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"decode takes q [B, Sq, Hq, D] and k, v [B, Sk, Hkv, D], got {list(q.shape)}, "
                         f"{list(k.shape)}, {list(v.shape)}")
    if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3] or q.shape[2] % k.shape[2]:
        raise ValueError(f"decode: q {list(q.shape)} and k, v {list(k.shape)}, {list(v.shape)} do not match "
                         "(q [B, Sq, Hq, D], k and v [B, Sk, Hkv, D], Hq a multiple of Hkv)")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"decode: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype} (cast q to "
                         "the KV cache's dtype)")
    if problem := dtype_problem(q.dtype):
        raise ValueError(f"decode: {problem}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"decode: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if key_start is not None and (key_start.dtype != torch.int32 or tuple(key_start.shape) != (q.shape[0],)
                                  or key_start.device != q.device):
        raise ValueError(f"decode: key_start must be an int32 [{q.shape[0]}] tensor on {q.device}, got "
                         f"{key_start.dtype} {list(key_start.shape)} on {key_start.device}")


def decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_start: torch.Tensor | None, causal: bool,
           sm_scale: float, splits: int | None = None) -> torch.Tensor:
    """out [B, Sq, Hq, D] (contiguous) for q [B, Sq, Hq, D], k/v [B, Sk, Hkv, D]; key_start [B] int32 or None."""
    check_inputs(q, k, v, key_start)
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))  # rows are read whole
    B, Sq, Hq, D = q.shape
    Sk, Hkv = k.shape[1], k.shape[2]
    group = Hq // Hkv
    BM = max(16, triton.next_power_of_2(Sq * group))
    if Sq * group > MAX_ROWS:
        raise ValueError(f"decode packs at most {MAX_ROWS} query rows per KV head, got {Sq} x {group}")
    BLOCK_D = max(16, triton.next_power_of_2(D))
    cfg = config(D, q.dtype, BM, os.environ.get("TRITON_INTERPRET") == "1")
    merge_warps = cfg.pop("merge_warps")
    splits = splits or _splits(B, Hkv, Sk, cfg["BN"], q.device)
    keys_per_split = max(1, triton.cdiv(triton.cdiv(Sk, splits), cfg["BN"])) * cfg["BN"]
    splits = max(1, triton.cdiv(Sk, keys_per_split))
    out = torch.empty(B, Sq, Hq, D, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    po = torch.empty(B, Hkv, splits, BM, BLOCK_D, dtype=torch.float32, device=q.device)
    plse = torch.empty(B, Hkv, splits, BM, dtype=torch.float32, device=q.device)
    has_start = key_start is not None
    with on_device(q):
        attn_decode_split_kernel[(splits * B * Hkv,)](
            q, k, v, key_start if has_start else plse, po, plse, sm_scale * LOG2E, Sq, Sk, keys_per_split,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), po.stride(0), po.stride(1), po.stride(2), po.stride(3),
            splits, Hkv, GROUP=group, D=D, BLOCK_D=BLOCK_D, BM=BM, CAUSAL=causal, HAS_START=has_start,
            IEEE=q.dtype == torch.float32, **cfg)
        attn_decode_merge_kernel[(B * Hkv,)](
            po, plse, out, Sq, splits, Hkv, po.stride(0), po.stride(1), po.stride(2), po.stride(3),
            out.stride(0), out.stride(1), out.stride(2), GROUP=group, D=D, BLOCK_D=BLOCK_D, BM=BM,
            num_warps=merge_warps)
    return out


def aot_specs(exhaustive: bool = False) -> list:
    """What decode() launches on a GPU: both kernels at every head-dim bucket (16 to 256) and packed
    row count (16, 32, MAX_ROWS) in bf16 and fp32, causal, with key starts (a left-padded batch) and, in bf16,
    without (no padding mask: one sequence); exhaustive: fp16 too, and bidirectional without key starts."""
    from .aot import AotSpec, ptx_types

    dtypes = (torch.bfloat16, torch.float16, torch.float32) if exhaustive else (torch.bfloat16, torch.float32)
    split_strides = ("stride_qb", "stride_qs", "stride_qh", "stride_kb", "stride_ks", "stride_kh", "stride_vb",
                     "stride_vs", "stride_vh", "stride_pb", "stride_ph", "stride_ps", "stride_pm")
    merge_strides = ("stride_pb", "stride_ph", "stride_ps", "stride_pm", "stride_ob", "stride_os", "stride_oh")
    specs = []
    for dt in dtypes:
        p = ptx_types(dt)
        split = dict(Q=p, K=p, V=p, KSTART="*i32", PO="*fp32", PLSE="*fp32", qk_scale="fp32", Sq="i32", Sk="i32",
                     keys_per_split="i32", **{n: "i32" for n in split_strides}, splits="i32", n_kv="i32")
        merge = dict(PO="*fp32", PLSE="*fp32", O=p, Sq="i32", splits="i32", n_kv="i32",
                     **{n: "i32" for n in merge_strides})
        # (CAUSAL, HAS_START): auto decodes in 16-bit only (fp32 takes explicit backend="glyph"); a padded batch
        # has key starts, one sequence (no mask) none
        modes = [(True, True), (True, False)]
        if exhaustive:
            modes.append((False, False))
        elif dt == torch.float32:
            modes = [(True, True)]
        for d in (16, 32, 64, 128, 256):
            for bm in (16, 32, MAX_ROWS):
                cfg = config(d, dt, bm)
                warps, stages, merge_warps = cfg.pop("num_warps"), cfg.pop("num_stages"), cfg.pop("merge_warps")
                for causal, has_start in modes:
                    specs.append(AotSpec(
                        f"attn_decode_split {str(dt)[6:]} d={d} rows={bm}" + (" causal" if causal else "")
                        + ("" if has_start else " no key_start"),
                        attn_decode_split_kernel, split,
                        dict(GROUP=bm // 4 if bm > 16 else 16, D=d, BLOCK_D=d, BM=bm, CAUSAL=causal,
                             HAS_START=has_start, IEEE=dt == torch.float32, **cfg), warps, stages,
                        aligned=tuple(a for a, t in split.items() if t.startswith("*") or a in split_strides)))
                specs.append(AotSpec(f"attn_decode_merge {str(dt)[6:]} d={d} rows={bm}", attn_decode_merge_kernel,
                                     merge, dict(GROUP=16, D=d, BLOCK_D=d, BM=bm), merge_warps, 3,
                                     aligned=tuple(a for a, t in merge.items() if t.startswith("*")
                                                   or a in merge_strides)))
    return specs
