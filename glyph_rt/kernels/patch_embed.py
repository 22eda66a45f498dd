"""Triton GEMM for patch embedding: C[M, N] = A[M, K] @ B[K, N] (+ bias), fp32 accumulation.

A may be uint8 (raw page levels: the normalization is folded into B and the bias), and is
converted to B's dtype as it is loaded. Any strides, so the backward pass reuses the kernel
on transposed views: dA = dC @ B^T, dB = A^T @ dC.

Alignment: Triton vectorizes a load (16-byte cp.async, software pipelining) only when it can
prove each row starts 16-byte aligned. The runtime tells it so for values divisible by 16 only,
and K = 1176, HF's [N, 1176] bf16 rows (2352 bytes: aligned) or a 1176-stride weight view are
divisible by 8. So the launcher passes K and each stride as (value / d, d) with d the largest
power of two <= 16 dividing it, and the kernel multiplies back by the constexpr d: Triton then
knows the divisibility. uint8 patches come as 592-byte rows (glyph_rt.ops.pixel_values) and the
folded weight as [592, D] contiguous, so the uint8 GEMM is aligned throughout.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from . import on_device
from .aot import AotSpec

HINTED = ("K", "stride_am", "stride_ak", "stride_bk", "stride_bn", "stride_cm", "stride_cn")


@triton.jit
def matmul_kernel(
    a_ptr, b_ptr, bias_ptr, c_ptr, M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
    D_K: tl.constexpr, D_AM: tl.constexpr, D_AK: tl.constexpr, D_BK: tl.constexpr, D_BN: tl.constexpr,
    D_CM: tl.constexpr, D_CN: tl.constexpr,
):
    # the launcher divided these by their power-of-two divisors D_*: multiplying back proves alignment
    K = K * D_K
    stride_am = stride_am * D_AM
    stride_ak = stride_ak * D_AK
    stride_bk = stride_bk * D_BK
    stride_bn = stride_bn * D_BN
    stride_cm = stride_cm * D_CM
    stride_cn = stride_cn * D_CN

    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BM)
    grid_n = tl.cdiv(N, BN)
    # grouped ordering: programs that share B columns run close together (L2 reuse)
    width = GROUP_M * grid_n
    group = pid // width
    first_m = group * GROUP_M
    size_m = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m

    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    a_ptrs = a_ptr + rm[:, None].to(tl.int64) * stride_am + rk[None, :] * stride_ak
    b_ptrs = b_ptr + rk[:, None].to(tl.int64) * stride_bk + rn[None, :] * stride_bn
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        a = tl.load(a_ptrs, mask=(rm[:, None] < M) & (kk[None, :] < K), other=0)
        b = tl.load(b_ptrs, mask=(kk[:, None] < K) & (rn[None, :] < N), other=0)
        a = a.to(b.dtype)
        if IEEE:
            acc += tl.dot(a, b, input_precision="ieee")
        else:
            acc += tl.dot(a, b)
        a_ptrs += BK * stride_ak
        b_ptrs += BK * stride_bk
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0).to(tl.float32)[None, :]
    c_ptrs = c_ptr + rm[:, None].to(tl.int64) * stride_cm + rn[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


def _divisor(v: int) -> int:
    """The largest power of two <= 16 dividing v (16 for 0)."""
    d = 16
    while v % d:
        d //= 2
    return d


def config(b_dtype: torch.dtype, interpret: bool = False) -> dict:
    """Tiles, warps and stages of the launch for weights (B) of this dtype, on A100 and H100 alike
    (checked by aot_specs: no spills, shared memory within A100's limit)."""
    if interpret:  # the interpreter: few, small programs
        return dict(BM=32, BN=32, BK=32, GROUP_M=4, num_warps=4, num_stages=1)
    if b_dtype == torch.float32:  # FMA dots (IEEE): a short K step keeps the registers in bounds
        return dict(BM=64, BN=64, BK=16, GROUP_M=8, num_warps=4, num_stages=3)
    # bf16/fp16 tensor cores. Patch embedding is [N, 592] @ [592, D] (D = 1280 or 1536): 128 x 128 tiles
    # (one wgmma m64n128 per warpgroup on H100), 3 stages of 24-32 KiB. 128 x 256 spills on A100.
    return dict(BM=128, BN=128, BK=64, GROUP_M=8, num_warps=8, num_stages=3)


def plan(a_dtype: torch.dtype, b_dtype: torch.dtype, M: int, N: int, K: int, strides: tuple,
         has_bias: bool, interpret: bool = False) -> tuple[dict, dict, int, int]:
    """(runtime int arguments, constexprs, num_warps, num_stages) of one launch: what matmul() launches
    and aot_specs() compiles. strides: (am, ak, bk, bn, cm, cn) in elements."""
    cfg = dict(config(b_dtype, interpret))
    num_warps, num_stages = cfg.pop("num_warps"), cfg.pop("num_stages")
    ints = dict(M=M, N=N)
    consts = dict(HAS_BIAS=has_bias, IEEE=b_dtype == torch.float32, **cfg)
    for name, v in zip(HINTED, (K, *strides)):
        d = _divisor(v)
        ints[name] = v // d
        consts["D_" + name.replace("stride_", "").upper()] = d
    return ints, consts, num_warps, num_stages


def matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None,
           out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """a [M, K] (float or uint8) @ b [K, N] (+ bias [N]) -> [M, N] in out_dtype (default b's dtype)."""
    M, K = a.shape
    K2, N = b.shape
    assert K == K2, (a.shape, b.shape)
    c = torch.empty(M, N, dtype=out_dtype or b.dtype, device=a.device)
    if M == 0 or N == 0:
        return c
    strides = (*a.stride(), *b.stride(), *c.stride())
    ints, consts, num_warps, num_stages = plan(a.dtype, b.dtype, M, N, K, strides, bias is not None,
                                               os.environ.get("TRITON_INTERPRET") == "1")
    grid = (triton.cdiv(M, consts["BM"]) * triton.cdiv(N, consts["BN"]),)
    with on_device(a):
        matmul_kernel[grid](a, b, bias if bias is not None else b, c, **ints, **consts,
                            num_warps=num_warps, num_stages=num_stages)
    return c


_TYPES = {torch.uint8: "*u8", torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32"}


def _spec(name, a_dtype, b_dtype, c_dtype, M, N, K, strides, has_bias) -> AotSpec:
    ints, consts, num_warps, num_stages = plan(a_dtype, b_dtype, M, N, K, strides, has_bias)
    sig = dict(a_ptr=_TYPES[a_dtype], b_ptr=_TYPES[b_dtype], bias_ptr=_TYPES[b_dtype], c_ptr=_TYPES[c_dtype])
    for k, v in ints.items():
        if v == 1:  # the runtime passes 1 as a constant
            consts[k] = 1
        else:
            sig[k] = "i32"
    aligned = ("a_ptr", "b_ptr", "bias_ptr", "c_ptr") + tuple(k for k in sig if sig[k] == "i32" and ints[k] % 16 == 0)
    return AotSpec(name, matmul_kernel, sig, consts, num_warps, num_stages, aligned)


def aot_specs(exhaustive: bool = False) -> list[AotSpec]:
    """Every launch the patch embedding makes (glyph_rt.ops.patch_embed), for GLM-4.1V's 1536-wide and
    Qwen2.5-VL's 1280-wide vision towers, N patches not a multiple of 16 (the worst alignment of the
    backward's K = N) and a multiple of 16: uint8 forward [N, 592] @ [592, D]; pixel_values forward
    [N, 1176] @ W^T (a [1176, D] view of the Conv3d weight); backward dX = dY @ W and dW = X^T @ dY."""
    specs = {}
    for D in (1536, 1280):
        for n in (4099, 4096):
            for wt in (torch.bfloat16, torch.float16, torch.float32):
                tag = f"{str(wt).split('.')[-1]} D={D} N={n}"
                for s in (
                    _spec(f"patch_embed u8 fwd {tag}", torch.uint8, wt, wt, n, D, 592, (592, 1, D, 1, D, 1), True),
                    _spec(f"patch_embed fwd {tag}", wt, wt, wt, n, D, 1176, (1176, 1, 1, 1176, D, 1), True),
                    _spec(f"patch_embed dX {tag}", wt, wt, wt, n, 1176, D, (D, 1, 1176, 1, 1176, 1), False),
                    _spec(f"patch_embed dW {tag}", wt, wt, wt, 1176, D, n, (1, 1176, D, 1, D, 1), False),
                    _spec(f"patch_embed u8 dW {tag}", torch.uint8, wt, wt, 592, D, n, (1, 592, D, 1, D, 1), False),
                ):  # the same compiled kernel once
                    specs.setdefault((tuple(s.signature.items()), tuple(s.constexprs.items()), s.aligned), s)
    return list(specs.values())
