"""Triton flash attention over packed variable-length sequences, forward and backward.

Layout as flash-attn's varlen API: q [total_q, Hq, D], k and v [total_k, Hkv, D], segments
given by cu_seqlens_q / cu_seqlens_k (int32, batch + 1); one program per (query block,
segment, head), so there is no loop over segments on the host. Causal masks are aligned to
the bottom right (query i of a segment sees keys j <= i + Lk - Lq), as flash-attn's. GQA/MQA:
query head h reads key/value head h // (Hq / Hkv). Any head dim up to 256 (padded to a power
of two). The forward pass saves the log-sum-exp (natural log, [Hq, total_q], fp32) for the
backward pass, which runs two kernels without atomics: dK/dV per key block (looping over the
query heads of its group, or of a part of it: see dkdv_split) and dQ per query block.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import on_device

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _block_and_segment(n_blocks):
    """(block within the segment, segment) of this program: both are folded onto grid axis 0, whose
    limit is 2^31 - 1, so any number of segments fits (axes 1 and 2 stop at 65,535)."""
    pid = tl.program_id(0)
    return pid % n_blocks, pid // n_blocks


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


# lengths that change from call to call (blocks of the longest segment, tokens: the LSE's head stride) are not
# specialized on (equal to 1, divisible by 16), which would compile new variants in the middle of a run
@triton.jit(do_not_specialize=["stride_lh", "n_blocks"])
def attn_fwd_kernel(
    Q, K, V, O, LSE, cu_q, cu_k, qk_scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_lh, n_blocks,
    GROUP: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    CAUSAL: tl.constexpr, IEEE: tl.constexpr,
):
    start_m, b = _block_and_segment(n_blocks)
    h = tl.program_id(1).to(tl.int64)  # int64: head * stride passes 2^31 past ~540K tokens of 32 x 128
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


@triton.jit(do_not_specialize=["stride_lh", "n_blocks"])
def attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, cu_q, cu_k, qk_scale, sm_scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dks, stride_dkt, stride_dkh, stride_dvs, stride_dvt, stride_dvh, stride_lh, n_blocks,
    GROUP: tl.constexpr, SPLIT: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BM: tl.constexpr,
    BN: tl.constexpr, CAUSAL: tl.constexpr, IEEE: tl.constexpr,
):
    # axis 1: KV head hk, part `part` of its group's query heads; with SPLIT > 1, DK and DV are fp32 partial sums
    # [SPLIT, total_k, Hkv, D] that the launcher adds up
    start_n, b = _block_and_segment(n_blocks)
    hk = tl.program_id(1).to(tl.int64) // SPLIT
    part = tl.program_id(1).to(tl.int64) % SPLIT
    DK += part * stride_dks
    DV += part * stride_dvs
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
        for g in range(GROUP // SPLIT):
            h = hk * GROUP + part * (GROUP // SPLIT) + g
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


@triton.jit(do_not_specialize=["stride_lh", "n_blocks"])
def attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, cu_q, cu_k, qk_scale, sm_scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dqt, stride_dqh, stride_lh, n_blocks,
    GROUP: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    CAUSAL: tl.constexpr, IEEE: tl.constexpr,
):
    start_m, b = _block_and_segment(n_blocks)
    h = tl.program_id(1).to(tl.int64)  # int64: head * stride passes 2^31 past ~540K tokens of 32 x 128
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


@triton.jit(do_not_specialize=["T", "stride_dh"])
def attn_bwd_delta_kernel(O, DO, DELTA, T, stride_ot, stride_oh, stride_dot, stride_doh, stride_dh,
                          D: tl.constexpr, BLOCK_D: tl.constexpr, BM: tl.constexpr):
    """delta[h, t] = sum_d O[t, h, d] * dO[t, h, d] in fp32, one [BM, BLOCK_D] tile per program."""
    h = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, BLOCK_D)
    rmask = rows < T
    mask = rmask[:, None] & (offs_d < D)[None, :]
    t = rows[:, None].to(tl.int64)
    o = tl.load(O + t * stride_ot + h * stride_oh + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + t * stride_dot + h * stride_doh + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + h * stride_dh + rows, tl.sum(o * do, 1), mask=rmask)


KERNELS = ("fwd", "bwd_dkdv", "bwd_dq", "bwd_delta")
MAX_GRID_YZ = 65535
# the dtypes of q, k, v the kernels (and attention_decode's) are sized and compiled for (aot_specs): a float64
# dot returns float64, which does not fit their float32 accumulators on a GPU (the interpreter runs it anyway)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def dtype_problem(dtype: torch.dtype) -> str | None:
    """Why the attention kernels cannot take q, k, v of `dtype`, or None."""
    if dtype in DTYPES:
        return None
    return (f"the Triton kernels run float16, bfloat16 and float32, got {dtype}; cast q, k and v to one of them, "
            "or use backend 'sdpa' or 'reference'")


def block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def config(kernel: str, head_dim: int, dtype: torch.dtype, interpret: bool = False) -> dict:
    """Tile sizes, warps and stages of `kernel` (one of KERNELS) at this head dim and dtype: the
    one table the launchers and aot_specs() read, chosen so that every variant fits an A100's
    166,912 B of shared memory (H100: 232,448 B) without register spills (tests/test_kernels_compile.py)."""
    if kernel not in KERNELS:
        raise ValueError(f"attention kernel {kernel!r} is unknown; choose from {', '.join(KERNELS)}")
    if kernel == "bwd_delta":
        return dict(BM=16 if interpret else max(1, 4096 // block_d(head_dim)), num_warps=4, num_stages=1)
    if interpret:  # the CPU interpreter: few, small programs
        return dict(BM=16, BN=16, num_warps=4, num_stages=1)
    bd = block_d(head_dim)
    if dtype == torch.float32:  # IEEE fp32 dots run on FMA units: small tiles or registers spill
        if kernel == "bwd_dkdv":  # (BM, BN, warps, stages) that spill with neither Triton 3.6's ptxas nor 3.9's,
            # causal with a GQA group (split or not) or bidirectional with one query head per KV head (a one-iteration
            # loop over the group: at 64, (16, 32, 8, 2) spilled 364 B there with 3.9's)
            tiles = {32: (32, 16, 4, 1), 64: (16, 16, 8, 2), 128: (32, 16, 8, 1), 256: (16, 16, 8, 1)}
            bm, bn, warps, stages = tiles.get(bd, (16, 32, 4, 1))
            return dict(BM=bm, BN=bn, num_warps=warps, num_stages=stages)
        if kernel == "bwd_dq" and bd >= 256:
            return dict(BM=16, BN=16, num_warps=4, num_stages=1)
        if kernel == "bwd_dq" and bd == 128:  # 2 stages spill bidirectional on sm_80
            return dict(BM=32, BN=16, num_warps=8, num_stages=1)
        return dict(BM=32 if bd <= 128 else 16, BN=32 if bd <= 64 else 16, num_warps=4 if bd <= 64 else 8,
                    num_stages=2)
    if kernel == "fwd":
        if bd <= 32:
            return dict(BM=128, BN=64, num_warps=4, num_stages=3)
        if bd <= 128:
            return dict(BM=128, BN=64 if bd <= 64 else 32, num_warps=8, num_stages=3 if bd <= 64 else 2)
        return dict(BM=64, BN=32, num_warps=8, num_stages=2)
    if bd <= 32:
        return dict(BM=64, BN=64, num_warps=4, num_stages=2)
    if kernel == "bwd_dq":
        if bd >= 256:
            return dict(BM=32, BN=32, num_warps=4, num_stages=1)
        return dict(BM=64, BN=64, num_warps=8 if bd >= 128 else 4, num_stages=2)
    if bd <= 64:
        return dict(BM=32, BN=64, num_warps=8, num_stages=2)
    return dict(BM=32, BN=32 if bd >= 256 else 64, num_warps=8, num_stages=1 if bd >= 256 else 2)


def grid(blocks: int, segments: int, heads: int) -> tuple[int, int]:
    """(blocks x segments on axis 0, heads on axis 1): grid axes 1 and 2 stop at 65,535, axis 0 at 2^31 - 1."""
    if heads > MAX_GRID_YZ:
        raise ValueError(f"attention takes at most {MAX_GRID_YZ} heads, got {heads}")
    if blocks * segments >= 2 ** 31:
        raise ValueError(f"{blocks} blocks x {segments} segments exceed a grid axis (2^31 - 1 programs)")
    return (blocks * segments, heads)


def dkdv_split(programs: int, group: int, target: int, partial_bytes: int, budget: int = 1 << 30) -> int:
    """Into how many parts the dK/dV kernel splits each KV head's group of query heads: the fewest (a divisor of
    the group) that give `target` programs, within `budget` bytes of fp32 partial sums (`partial_bytes` per part).
    GLM-4's 32 query heads share 2 KV heads: at 8K tokens one program per key block and KV head would be 256
    programs, each looping over 16 heads, on an H100's 132 SMs."""
    parts = 1
    for p in range(2, group + 1):
        if programs * parts >= target or p * partial_bytes > budget:
            break
        if group % p == 0:
            parts = p
    return parts


def _target_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 64  # the interpreter: enough that the tests' small shapes take the split path


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def forward(q, k, v, cu_q, cu_k, max_q: int, causal: bool, sm_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [total_q, Hq, D], lse [Hq, total_q] fp32)."""
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    o = torch.empty_like(q)
    lse = torch.empty(Hq, T, dtype=torch.float32, device=q.device)
    cfg = config("fwd", D, q.dtype, _interpret())
    blocks = triton.cdiv(max_q, cfg["BM"])
    if T and blocks:
        with on_device(q):
            attn_fwd_kernel[grid(blocks, len(cu_q) - 1, Hq)](
                q, k, v, o, lse, cu_q, cu_k, sm_scale * LOG2E,
                q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                o.stride(0), o.stride(1), lse.stride(0), blocks,
                GROUP=Hq // Hkv, D=D, BLOCK_D=block_d(D), CAUSAL=causal, IEEE=q.dtype == torch.float32, **cfg)
    return o, lse


def delta(o: torch.Tensor, do: torch.Tensor) -> torch.Tensor:
    """rowsum(o * do) per head and token, [Hq, total_q] fp32, without fp32 copies of o and do."""
    T, H, D = o.shape
    out = torch.empty(H, T, dtype=torch.float32, device=o.device)
    cfg = config("bwd_delta", D, o.dtype, _interpret())
    if T:
        with on_device(o):
            attn_bwd_delta_kernel[(triton.cdiv(T, cfg["BM"]), H)](
                o, do, out, T, o.stride(0), o.stride(1), do.stride(0), do.stride(1), out.stride(0),
                D=D, BLOCK_D=block_d(D), **cfg)
    return out


def backward(do, q, k, v, o, lse, cu_q, cu_k, max_q: int, max_k: int, causal: bool, sm_scale: float):
    """(dq, dk, dv) for the forward pass that produced (o, lse)."""
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    do = do.contiguous()
    dlt = delta(o, do)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    B = len(cu_q) - 1
    common = dict(GROUP=Hq // Hkv, D=D, BLOCK_D=block_d(D), CAUSAL=causal, IEEE=q.dtype == torch.float32)
    with on_device(q):
        cfg = config("bwd_dkdv", D, q.dtype, _interpret())
        blocks = triton.cdiv(max_k, cfg["BN"])
        if k.shape[0] and blocks:
            split = dkdv_split(blocks * B * Hkv, Hq // Hkv, _target_programs(q.device), 8 * k.numel())
            if split == 1:
                out_k, out_v, stride_s = dk, dv, 0
            else:
                parts = torch.empty(2, split, *k.shape, dtype=torch.float32, device=k.device)
                out_k, out_v, stride_s = parts[0, 0], parts[1, 0], parts.stride(1)
            attn_bwd_dkdv_kernel[grid(blocks, B, Hkv * split)](
                q, k, v, do, lse, dlt, out_k, out_v, cu_q, cu_k, sm_scale * LOG2E, sm_scale,
                q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0),
                do.stride(1), stride_s, out_k.stride(0), out_k.stride(1), stride_s, out_v.stride(0),
                out_v.stride(1), lse.stride(0), blocks, SPLIT=split, **common, **cfg)
            if split > 1:
                dk.copy_(parts[0].sum(0)), dv.copy_(parts[1].sum(0))
        else:
            dk.zero_(), dv.zero_()
        cfg = config("bwd_dq", D, q.dtype, _interpret())
        blocks = triton.cdiv(max_q, cfg["BM"])
        if T and blocks:
            attn_bwd_dq_kernel[grid(blocks, B, Hq)](
                q, k, v, do, lse, dlt, dq, cu_q, cu_k, sm_scale * LOG2E, sm_scale,
                q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), do.stride(0),
                do.stride(1), dq.stride(0), dq.stride(1), lse.stride(0), blocks, **common, **cfg)
    return dq, dk, dv


def _strides(*names: str) -> dict:
    return {n: "i32" for n in names}


# (CAUSAL, GROUP) of the launches the dispatcher makes: bidirectional vision towers without GQA (GLM-4.1V, Qwen2.5-VL:
# the most used path), and causal text with GQA (GLM-4: 32 query heads on 2 KV heads). GROUP sets the dK/dV kernel's
# loop over a KV head's query heads (one iteration at GROUP=1), so both are compiled
VISION, TEXT = (False, 1), (True, 16)


def aot_specs(exhaustive: bool = False) -> list:
    """What forward() and backward() launch on a GPU: every kernel at every head-dim bucket (16 to
    256) and at 80 in bf16 and fp32, as vision (bidirectional, GROUP=1) and text (causal, GROUP=16) launch it
    (exhaustive: fp16 too, and head dims 96 and unaligned 72 and 200)."""
    from .aot import AotSpec, ptx_types

    dtypes = (torch.bfloat16, torch.float16, torch.float32) if exhaustive else (torch.bfloat16, torch.float32)
    # the buckets, and 80 (Qwen2.5-VL's vision tower): a multiple of 16 in the 128 bucket, as auto may send it
    dims = [(bd, True) for bd in (16, 32, 64, 80, 128, 256)] + (
        [(96, True), (72, False), (200, False)] if exhaustive else [])
    specs = []
    for dt in dtypes:
        p = ptx_types(dt)
        for d, aligned_d in dims:
            if d == 80 and dt == torch.float32:  # auto sends fp32 elsewhere; its tiles are sized for the buckets
                continue
            fwd = dict(Q=p, K=p, V=p, O=p, LSE="*fp32", cu_q="*i32", cu_k="*i32", qk_scale="fp32",
                       **_strides("stride_qt", "stride_qh", "stride_kt", "stride_kh", "stride_vt", "stride_vh",
                                  "stride_ot", "stride_oh", "stride_lh", "n_blocks"))
            bwd = dict(Q=p, K=p, V=p, DO=p, LSE="*fp32", DELTA="*fp32")
            dkdv = dict(**bwd, DK=p, DV=p, cu_q="*i32", cu_k="*i32", qk_scale="fp32", sm_scale="fp32",
                        **_strides("stride_qt", "stride_qh", "stride_kt", "stride_kh", "stride_vt", "stride_vh",
                                   "stride_dot", "stride_doh", "stride_dks", "stride_dkt", "stride_dkh", "stride_dvs",
                                   "stride_dvt", "stride_dvh", "stride_lh", "n_blocks"))
            dq = dict(**bwd, DQ=p, cu_q="*i32", cu_k="*i32", qk_scale="fp32", sm_scale="fp32",
                      **_strides("stride_qt", "stride_qh", "stride_kt", "stride_kh", "stride_vt", "stride_vh",
                                 "stride_dot", "stride_doh", "stride_dqt", "stride_dqh", "stride_lh", "n_blocks"))
            dl = dict(O=p, DO=p, DELTA="*fp32", T="i32", **_strides("stride_ot", "stride_oh", "stride_dot",
                                                                     "stride_doh", "stride_dh"))
            parts = {**dkdv, "DK": "*fp32", "DV": "*fp32"}  # dkdv_split > 1: fp32 partial sums
            for kernel, fn, sig, extra, modes in (
                    ("fwd", attn_fwd_kernel, fwd, {}, (TEXT, VISION)),
                    ("bwd_dkdv", attn_bwd_dkdv_kernel, dkdv, {"SPLIT": 1}, (TEXT, VISION)),
                    # dkdv_split divides the group: GQA only
                    ("bwd_dkdv", attn_bwd_dkdv_kernel, parts, {"SPLIT": 2}, (TEXT,)),
                    ("bwd_dq", attn_bwd_dq_kernel, dq, {}, (TEXT, VISION)),
                    ("bwd_delta", attn_bwd_delta_kernel, dl, {}, (None,))):
                cfg = config(kernel, d, dt)
                warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
                # pointers are 16-byte aligned; token and head strides are when the head dim is a multiple of 16
                aligned = tuple(a for a, t in sig.items() if t.startswith("*")
                                or (aligned_d and a.startswith("stride_") and a not in ("stride_lh", "stride_dh")))
                for mode in modes:
                    const = dict(D=d, BLOCK_D=block_d(d), **cfg, **extra)
                    if mode is not None:
                        const.update(GROUP=mode[1], CAUSAL=mode[0], IEEE=dt == torch.float32)
                    causal = " causal" if mode is not None and mode[0] else ""
                    split = " split" if extra.get("SPLIT", 1) > 1 else ""
                    name = f"attn_{kernel} {str(dt)[6:]} d={d}{causal}{split}"
                    # auto never sends fp32 or head dims that are not a multiple of 16 here on a GPU
                    # (glyph_rt.ops.attention.choose_backend): those variants must compile, limits reported
                    enforce = not exhaustive or (aligned_d and dt != torch.float32)
                    specs.append(AotSpec(name, fn, sig, const, warps, stages, aligned, enforce))
    return specs
