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

from .attention import LOG2E, _dot

MAX_ROWS = 64  # Sq * (Hq / Hkv) packed in one tile


@triton.jit
def attn_decode_split_kernel(
    Q, K, V, KSTART, PO, PLSE, qk_scale, Sq, Sk, keys_per_split,
    stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    stride_pb, stride_ph, stride_ps, stride_pm,
    GROUP: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_START: tl.constexpr, IEEE: tl.constexpr,
):
    split = tl.program_id(0)
    b = tl.program_id(1)
    hk = tl.program_id(2)
    rows = tl.arange(0, BM)
    qi = rows // GROUP  # packed row -> (query position, head of the group)
    h = hk * GROUP + rows % GROUP
    row_ok = qi < Sq
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    offs_n = tl.arange(0, BN)
    b64 = b.to(tl.int64)
    q = tl.load(Q + b64 * stride_qb + qi[:, None] * stride_qs + h[:, None] * stride_qh + offs_d[None, :],
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
    part = PO + b64 * stride_pb + hk * stride_ph + split * stride_ps
    tl.store(part + rows[:, None] * stride_pm + offs_d[None, :], acc / l_safe[:, None])
    lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(l_safe))
    tl.store(PLSE + ((b64 * tl.num_programs(2) + hk) * tl.num_programs(0) + split) * BM + rows, lse)


@triton.jit
def attn_decode_merge_kernel(
    PO, PLSE, O, Sq, splits,
    stride_pb, stride_ph, stride_ps, stride_pm, stride_ob, stride_os, stride_oh,
    GROUP: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BM: tl.constexpr,
):
    b = tl.program_id(0)
    hk = tl.program_id(1)
    rows = tl.arange(0, BM)
    offs_d = tl.arange(0, BLOCK_D)
    b64 = b.to(tl.int64)
    lse_base = PLSE + (b64 * tl.num_programs(1) + hk) * splits * BM + rows
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
        acc += w[:, None] * tl.load(part + s * stride_ps)
    out = acc / tl.where(den == 0.0, 1.0, den)[:, None]
    qi = rows // GROUP
    h = hk * GROUP + rows % GROUP
    tl.store(O + b64 * stride_ob + qi[:, None] * stride_os + h[:, None] * stride_oh + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=(qi < Sq)[:, None] & (offs_d < D)[None, :])


def _config(head_dim: int, interpret: bool) -> dict:
    if interpret:
        return dict(BN=16, num_warps=4, num_stages=1)
    return dict(BN=64, num_warps=4, num_stages=3 if head_dim <= 128 else 2)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _splits(B: int, Hkv: int, Sk: int, BN: int, device: torch.device) -> int:
    """Enough chunks for about two programs per SM, each at least one key block long."""
    want = max(1, -(-2 * _sm_count(device) // max(1, B * Hkv)))
    return max(1, min(want, triton.cdiv(Sk, BN)))


def decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_start: torch.Tensor | None, causal: bool,
           sm_scale: float, splits: int | None = None) -> torch.Tensor:
    """out [B, Sq, Hq, D] (contiguous) for q [B, Sq, Hq, D], k/v [B, Sk, Hkv, D]; key_start [B] int32 or None."""
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))  # rows are read whole
    B, Sq, Hq, D = q.shape
    Sk, Hkv = k.shape[1], k.shape[2]
    group = Hq // Hkv
    BM = max(16, triton.next_power_of_2(Sq * group))
    if Sq * group > MAX_ROWS:
        raise ValueError(f"decode packs at most {MAX_ROWS} query rows per KV head, got {Sq} x {group}")
    BLOCK_D = max(16, triton.next_power_of_2(D))
    cfg = _config(D, os.environ.get("TRITON_INTERPRET") == "1")
    splits = splits or _splits(B, Hkv, Sk, cfg["BN"], q.device)
    keys_per_split = max(1, triton.cdiv(triton.cdiv(Sk, splits), cfg["BN"])) * cfg["BN"]
    splits = max(1, triton.cdiv(Sk, keys_per_split))
    out = torch.empty(B, Sq, Hq, D, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    po = torch.empty(B, Hkv, splits, BM, BLOCK_D, dtype=torch.float32, device=q.device)
    plse = torch.empty(B, Hkv, splits, BM, dtype=torch.float32, device=q.device)
    has_start = key_start is not None
    attn_decode_split_kernel[(splits, B, Hkv)](
        q, k, v, key_start if has_start else plse, po, plse, sm_scale * LOG2E, Sq, Sk, keys_per_split,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), po.stride(0), po.stride(1), po.stride(2), po.stride(3),
        GROUP=group, D=D, BLOCK_D=BLOCK_D, BM=BM, CAUSAL=causal, HAS_START=has_start,
        IEEE=q.dtype == torch.float32, **cfg)
    attn_decode_merge_kernel[(B, Hkv)](
        po, plse, out, Sq, splits, po.stride(0), po.stride(1), po.stride(2), po.stride(3),
        out.stride(0), out.stride(1), out.stride(2), GROUP=group, D=D, BLOCK_D=BLOCK_D, BM=BM,
        num_warps=4)
    return out
