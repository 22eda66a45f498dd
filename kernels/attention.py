"""Triton flash attention over packed variable-length sequences, forward and backward.

Layout as flash-attn's varlen API: q [total_q, Hq, D], k and v [total_k, Hkv, D], segments
given by cu_seqlens_q / cu_seqlens_k (int32, batch + 1); one program per (query block,
segment, head), so there is no loop over segments on the host. Causal masks are aligned to
the bottom right (query i of a segment sees keys j <= i + Lk - Lq), as flash-attn's. GQA/MQA:
query head h reads key/value head h // (Hq / Hkv). Any head dim up to 256 (padded to a power
of two). The forward pass saves the log-sum-exp (natural log, [Hq, total_q], fp32) for the
backward pass, which runs two kernels without atomics: dK/dV per key block (looping over the
query heads of its group) and dQ per query block.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _bounds(cu_q, cu_k, b):
    """(first query row, query count, first key row, key count) of segment b."""
    q0 = tl.load(cu_q + b)
    k0 = tl.load(cu_k + b)
    return q0, tl.load(cu_q + b + 1) - q0, k0, tl.load(cu_k + b + 1) - k0


@triton.jit
def _rows(ptr, first, rows, count, stride_t, head, stride_h, offs_d, dmask):
    """Rows first + rows (those < count) of one head: a [len(rows), BLOCK_D] tile, zeros outside."""
    return tl.load(ptr + (first + rows)[:, None].to(tl.int64) * stride_t + head * stride_h + offs_d[None, :],
                   mask=(rows[:, None] < count) & dmask[None, :], other=0.0)


@triton.jit
def _visible(rows, cols, Lq, Lk, diag, CAUSAL: tl.constexpr):
    """[rows, cols] of a segment that attend to each other (bottom-right causal alignment)."""
    ok = (rows[:, None] < Lq) & (cols[None, :] < Lk)
    if CAUSAL:
        ok = ok & (cols[None, :] <= rows[:, None] + diag)
    return ok


@triton.jit
def _key_end(start_m, Lk, diag, BM: tl.constexpr, CAUSAL: tl.constexpr):
    """One past the last key a query block [start_m * BM, (start_m + 1) * BM) can see."""
    if CAUSAL:
        return tl.minimum(Lk, (start_m + 1) * BM + diag)
    return Lk


@triton.jit
def _saved_lse2(LSE, h, stride_lh, q0, rows, Lq):
    """The forward pass's log-sum-exp in log2 units; +inf where a row saw no key (its p is 0)."""
    lse = tl.load(LSE + h * stride_lh + q0 + rows, mask=rows < Lq, other=float("inf")) * 1.4426950408889634
    return tl.where(lse == float("-inf"), float("inf"), lse)


@triton.jit
def attn_fwd_kernel(
    Q, K, V, O, LSE, cu_q, cu_k, qk_scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_lh,
    GROUP: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    CAUSAL: tl.constexpr, IEEE: tl.constexpr,
):
    start_m = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    q0, Lq, k0, Lk = _bounds(cu_q, cu_k, b)
    if start_m * BM < Lq:
        hk = h // GROUP
        offs_m = start_m * BM + tl.arange(0, BM)
        offs_n = tl.arange(0, BN)
        offs_d = tl.arange(0, BLOCK_D)
        dmask = offs_d < D
        q = _rows(Q, q0, offs_m, Lq, stride_qt, h, stride_qh, offs_d, dmask)
        m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BM], dtype=tl.float32)
        acc = tl.zeros([BM, BLOCK_D], dtype=tl.float32)
        diag = Lk - Lq  # bottom-right causal alignment
        for start_n in range(0, _key_end(start_m, Lk, diag, BM, CAUSAL), BN):
            kn = start_n + offs_n
            k = _rows(K, k0, kn, Lk, stride_kt, hk, stride_kh, offs_d, dmask)
            s = _dot(q, tl.trans(k), IEEE) * qk_scale  # log2 units
            s = tl.where(_visible(offs_m, kn, Lq, Lk, diag, CAUSAL), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that see nothing yet
            p = tl.math.exp2(s - m_use[:, None])
            alpha = tl.math.exp2(m_i - m_use)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = _rows(V, k0, kn, Lk, stride_vt, hk, stride_vh, offs_d, dmask)
            acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
            m_i = m_new
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        out = acc / l_safe[:, None]
        row = offs_m < Lq
        tl.store(O + (q0 + offs_m)[:, None].to(tl.int64) * stride_ot + h * stride_oh + offs_d[None, :],
                 out.to(O.dtype.element_ty), mask=row[:, None] & dmask[None, :])
        lse = tl.where(l_i == 0.0, float("-inf"), (m_i + tl.math.log2(l_safe)) * 0.6931471805599453)
        tl.store(LSE + h * stride_lh + q0 + offs_m, lse, mask=row)


@triton.jit
def attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, cu_q, cu_k, qk_scale, sm_scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dkt, stride_dkh, stride_dvt, stride_dvh, stride_lh,
    GROUP: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    CAUSAL: tl.constexpr, IEEE: tl.constexpr,
):
    start_n = tl.program_id(0)
    b = tl.program_id(1)
    hk = tl.program_id(2)
    q0, Lq, k0, Lk = _bounds(cu_q, cu_k, b)
    if start_n * BN < Lk:
        offs_n = start_n * BN + tl.arange(0, BN)
        offs_m = tl.arange(0, BM)
        offs_d = tl.arange(0, BLOCK_D)
        dmask = offs_d < D
        kv_mask = (offs_n[:, None] < Lk) & dmask[None, :]
        k = _rows(K, k0, offs_n, Lk, stride_kt, hk, stride_kh, offs_d, dmask)
        v = _rows(V, k0, offs_n, Lk, stride_vt, hk, stride_vh, offs_d, dmask)
        dk = tl.zeros([BN, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BN, BLOCK_D], dtype=tl.float32)
        diag = Lk - Lq
        lo = 0
        if CAUSAL:  # queries before start_n * BN - diag see none of these keys
            lo = tl.maximum(start_n * BN - diag, 0) // BM * BM
        for g in range(GROUP):
            h = hk * GROUP + g
            for start_m in range(lo, Lq, BM):
                qm = start_m + offs_m
                q = _rows(Q, q0, qm, Lq, stride_qt, h, stride_qh, offs_d, dmask)
                do = _rows(DO, q0, qm, Lq, stride_dot, h, stride_doh, offs_d, dmask)
                lse = _saved_lse2(LSE, h, stride_lh, q0, qm, Lq)
                delta = tl.load(DELTA + h * stride_lh + q0 + qm, mask=qm < Lq, other=0.0)
                s = _dot(q, tl.trans(k), IEEE) * qk_scale
                p = tl.where(_visible(qm, offs_n, Lq, Lk, diag, CAUSAL), tl.math.exp2(s - lse[:, None]), 0.0)
                dv += _dot(tl.trans(p.to(do.dtype)), do, IEEE)
                dp = _dot(do, tl.trans(v), IEEE)
                ds = p * (dp - delta[:, None])
                dk += _dot(tl.trans(ds.to(q.dtype)), q, IEEE)
        dk = dk * sm_scale
        tl.store(DK + (k0 + offs_n)[:, None].to(tl.int64) * stride_dkt + hk * stride_dkh + offs_d[None, :],
                 dk.to(DK.dtype.element_ty), mask=kv_mask)
        tl.store(DV + (k0 + offs_n)[:, None].to(tl.int64) * stride_dvt + hk * stride_dvh + offs_d[None, :],
                 dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, cu_q, cu_k, qk_scale, sm_scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dqt, stride_dqh, stride_lh,
    GROUP: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    CAUSAL: tl.constexpr, IEEE: tl.constexpr,
):
    start_m = tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    q0, Lq, k0, Lk = _bounds(cu_q, cu_k, b)
    if start_m * BM < Lq:
        hk = h // GROUP
        offs_m = start_m * BM + tl.arange(0, BM)
        offs_n = tl.arange(0, BN)
        offs_d = tl.arange(0, BLOCK_D)
        dmask = offs_d < D
        qmask = (offs_m[:, None] < Lq) & dmask[None, :]
        q = _rows(Q, q0, offs_m, Lq, stride_qt, h, stride_qh, offs_d, dmask)
        do = _rows(DO, q0, offs_m, Lq, stride_dot, h, stride_doh, offs_d, dmask)
        lse = _saved_lse2(LSE, h, stride_lh, q0, offs_m, Lq)
        delta = tl.load(DELTA + h * stride_lh + q0 + offs_m, mask=offs_m < Lq, other=0.0)
        dq = tl.zeros([BM, BLOCK_D], dtype=tl.float32)
        diag = Lk - Lq
        for start_n in range(0, _key_end(start_m, Lk, diag, BM, CAUSAL), BN):
            kn = start_n + offs_n
            k = _rows(K, k0, kn, Lk, stride_kt, hk, stride_kh, offs_d, dmask)
            v = _rows(V, k0, kn, Lk, stride_vt, hk, stride_vh, offs_d, dmask)
            s = _dot(q, tl.trans(k), IEEE) * qk_scale
            p = tl.where(_visible(offs_m, kn, Lq, Lk, diag, CAUSAL), tl.math.exp2(s - lse[:, None]), 0.0)
            dp = _dot(do, tl.trans(v), IEEE)
            ds = p * (dp - delta[:, None])
            dq += _dot(ds.to(k.dtype), k, IEEE)
        tl.store(DQ + (q0 + offs_m)[:, None].to(tl.int64) * stride_dqt + h * stride_dqh + offs_d[None, :],
                 (dq * sm_scale).to(DQ.dtype.element_ty), mask=qmask)


def _blocks(head_dim: int, interpret: bool, backward: bool) -> dict:
    if interpret:
        return dict(BM=16, BN=16, num_warps=4, num_stages=1)
    if backward:
        return dict(BM=64, BN=64, num_warps=4 if head_dim <= 64 else 8, num_stages=2)
    return dict(BM=128, BN=64, num_warps=4 if head_dim <= 64 else 8, num_stages=3)


def _common(q: torch.Tensor, k: torch.Tensor) -> tuple[int, int, bool]:
    D = q.shape[-1]
    return D, max(16, triton.next_power_of_2(D)), q.dtype == torch.float32


def forward(q, k, v, cu_q, cu_k, max_q: int, causal: bool, sm_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [total_q, Hq, D], lse [Hq, total_q] fp32)."""
    T, Hq, _ = q.shape
    Hkv = k.shape[1]
    D, BLOCK_D, ieee = _common(q, k)
    o = torch.empty_like(q)
    lse = torch.empty(Hq, T, dtype=torch.float32, device=q.device)
    cfg = _blocks(D, os.environ.get("TRITON_INTERPRET") == "1", False)
    grid = (triton.cdiv(max_q, cfg["BM"]), len(cu_q) - 1, Hq)
    if T and grid[0]:
        attn_fwd_kernel[grid](
            q, k, v, o, lse, cu_q, cu_k, sm_scale * LOG2E,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            o.stride(0), o.stride(1), lse.stride(0),
            GROUP=Hq // Hkv, D=D, BLOCK_D=BLOCK_D, CAUSAL=causal, IEEE=ieee, **cfg)
    return o, lse


def backward(do, q, k, v, o, lse, cu_q, cu_k, max_q: int, max_k: int, causal: bool, sm_scale: float):
    """(dq, dk, dv) for the forward pass that produced (o, lse)."""
    T, Hq, _ = q.shape
    Hkv = k.shape[1]
    D, BLOCK_D, ieee = _common(q, k)
    do = do.contiguous()
    delta = (o.float() * do.float()).sum(-1).t().contiguous()  # [Hq, total_q]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    cfg = _blocks(D, os.environ.get("TRITON_INTERPRET") == "1", True)
    B = len(cu_q) - 1
    args = dict(GROUP=Hq // Hkv, D=D, BLOCK_D=BLOCK_D, CAUSAL=causal, IEEE=ieee, **cfg)
    if k.shape[0] and max_k:
        attn_bwd_dkdv_kernel[(triton.cdiv(max_k, cfg["BN"]), B, Hkv)](
            q, k, v, do, lse, delta, dk, dv, cu_q, cu_k, sm_scale * LOG2E, sm_scale,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1),
            dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1), lse.stride(0), **args)
    else:
        dk.zero_(), dv.zero_()
    if T and max_q:
        attn_bwd_dq_kernel[(triton.cdiv(max_q, cfg["BM"]), B, Hq)](
            q, k, v, do, lse, delta, dq, cu_q, cu_k, sm_scale * LOG2E, sm_scale,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0), do.stride(1),
            dq.stride(0), dq.stride(1), lse.stride(0), **args)
    return dq, dk, dv
