"""Vision patch embedding of GLM-4.1V / Qwen2.5-VL as a GEMM, from pixel_values or from uint8 patches.

Both models embed 14x14x2 patches with a Conv3d whose kernel equals its stride, i.e.
y = x @ W.view(D, 1176).T + b. glyph_rt runs it as one GEMM, forward and backward:

    patch_embed(pixel_values [N, 1176], weight [D, 3, 2, 14, 14], bias)   exact drop-in
    patch_embed(patches [N, 588] uint8, weight, bias)                      from raw page levels

For uint8 patches (a still image: both frames equal) the weight is summed over the two frames
and the per-channel normalization (x / 255 - mean) / std is folded into it and the bias, so the
GEMM reads one byte per input value. It is 592 wide: patches come as [N, 588] views of 592-byte
rows (glyph_rt.ops.pixel_values.ROW_U8_STRIDE; other uint8 input is padded by a copy) and the
folded weight is [592, D] contiguous with 4 zero rows, so every row starts 16-byte aligned.
Gradients flow to the Conv3d's own weight and bias in both cases, so training uses the same op.

Backends: "triton" (glyph_rt.kernels.patch_embed: float16, bfloat16 or float32 weights), "cuda" (the
extension's tensor-core GEMM, bfloat16 weights, compute capability 8.0 or newer), "torch" (the plain reference:
a matmul on the reshaped weight), "auto" (triton on CUDA tensors of compute capability 8.0 or newer with weights
of those three dtypes, torch otherwise). The GEMM is the custom op glyph_rt::gemm, with a fake implementation,
so torch.compile traces through it.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .pixel_values import CLIP_MEAN, CLIP_STD, ROW_U8_STRIDE, padded_rows

IN_CHANNELS, TEMPORAL, PATCH = 3, 2, 14
K_PIXELS = IN_CHANNELS * TEMPORAL * PATCH * PATCH  # 1176
K_UINT8 = IN_CHANNELS * PATCH * PATCH  # 588
BACKENDS = ("auto", "triton", "cuda", "torch")
# the weight dtypes the Triton GEMM is configured and compiled for (glyph_rt.kernels.patch_embed.aot_specs): a
# float64 dot returns float64, which does not fit its float32 accumulator on a GPU (the interpreter runs it anyway)
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"patch_embed backend {backend!r} is unknown; choose from {', '.join(BACKENDS)}")
    if backend == "auto":
        # below compute capability 8.0 (a T4) the Triton GEMM's fp16/bf16 tiles spill ~10 KB of registers per
        # thread (compiled for sm_75): the plain matmul there, as the 'cuda' GEMM is refused there too
        fits = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
        return "triton" if fits and dtype in TRITON_DTYPES else "torch"
    if backend == "triton" and dtype not in TRITON_DTYPES:
        raise ValueError(f"patch_embed backend 'triton' runs float16, bfloat16 and float32 weights, got {dtype}; "
                         "cast the weights or use backend 'torch'")
    if backend == "triton" and device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("patch_embed backend 'triton' on CPU tensors runs only in Triton's interpreter "
                               "(TRITON_INTERPRET=1); use backend='torch'")
        from ..kernels import interpreter_dtype_problem, interpreter_problem

        if problem := interpreter_problem():
            raise RuntimeError(f"patch_embed backend 'triton': {problem}")
        if problem := interpreter_dtype_problem(dtype):
            raise ValueError(f"patch_embed backend 'triton': {problem}")
    if backend == "cuda":
        from .._ext import backends

        if device.type != "cuda" or not backends()["cuda"]["available"]:
            raise RuntimeError(f"patch_embed backend 'cuda' needs CUDA tensors and the extension's CUDA kernels "
                               f"({backends()['cuda']['why']})")
        if dtype != torch.bfloat16:
            raise ValueError(f"patch_embed backend 'cuda' runs bfloat16 weights on tensor cores, got {dtype}; "
                             "use backend 'triton' or 'torch'")
        if torch.cuda.get_device_capability(device) < (8, 0):
            raise RuntimeError(f"patch_embed backend 'cuda' needs bfloat16 tensor cores (compute capability 8.0 or "
                               f"newer); {torch.cuda.get_device_name(device)} is "
                               f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}: use backend "
                               "'triton' or 'torch'")
    return backend


CUDA_GEMM_ROWS = 65535 * 128  # rows of one CUDA GEMM launch: grid y (row tiles of 128) stops at 65,535


@torch.library.custom_op("glyph_rt::gemm", mutates_args=())
def gemm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, backend: str,
         out_dtype: torch.dtype) -> torch.Tensor:
    """a [M, K] (float or uint8) @ b [K, N] (+ bias [N]) with fp32 accumulation -> [M, N] in out_dtype."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0] or (
            bias is not None and tuple(bias.shape) != (b.shape[1],)):
        raise ValueError(f"gemm: a {list(a.shape)} @ b {list(b.shape)} + bias "
                         f"{None if bias is None else list(bias.shape)}: need [M, K] @ [K, N] + [N]")
    if backend == "triton":
        from ..kernels.patch_embed import matmul

        return matmul(a, b, bias, out_dtype)
    if backend == "cuda":
        from .._ext import require_extension

        C = require_extension("the CUDA patch-embedding GEMM")
        ok = (a.dtype in (torch.uint8, torch.bfloat16) and b.dtype == torch.bfloat16
              and (bias is None or bias.dtype == torch.bfloat16) and out_dtype in (torch.bfloat16, torch.float32))
        if not ok:
            raise ValueError(f"the CUDA GEMM takes uint8/bfloat16 @ bfloat16 -> bfloat16/float32, got {a.dtype} @ "
                             f"{b.dtype} -> {out_dtype}")
        for name, t in (("b", b), ("bias", bias)):  # raw pointers: the kernel trusts them
            if t is not None and t.device != a.device:
                raise ValueError(f"the CUDA GEMM: {name} is on {t.device}, a on {a.device}")
        if bias is not None:
            bias = bias.contiguous()
        c = torch.empty(a.shape[0], b.shape[1], dtype=out_dtype, device=a.device)
        stream = torch.cuda.current_stream(a.device).cuda_stream
        with torch.cuda.device(a.device):  # the launch goes to the current device: the stream's
            for m0 in range(0, a.shape[0], CUDA_GEMM_ROWS):  # the kernel's grid holds 65,535 row tiles
                ai, ci = a[m0:m0 + CUDA_GEMM_ROWS], c[m0:m0 + CUDA_GEMM_ROWS]
                C.gemm_cuda(ai.data_ptr(), 0 if a.dtype == torch.uint8 else 2, b.data_ptr(),
                            bias.data_ptr() if bias is not None else 0, ci.data_ptr(),
                            1 if out_dtype == torch.float32 else 2, ai.shape[0], b.shape[1], a.shape[1],
                            a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1), stream)
        return c
    out = a.to(b.dtype) @ b
    if bias is not None:
        out = out + bias
    return out.to(out_dtype)


@gemm.register_fake
def _(a, b, bias, backend, out_dtype):
    return a.new_empty(a.shape[0], b.shape[1], dtype=out_dtype)


class _Gemm(torch.autograd.Function):
    """a @ b + bias, with a possibly uint8 (no gradient); the backward pass is two more GEMMs."""

    @staticmethod
    def forward(ctx, a, b, bias, backend):
        ctx.save_for_backward(a, b)
        ctx.backend = backend
        ctx.has_bias = bias is not None
        return gemm(a, b, bias, backend, b.dtype)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        grad = grad.contiguous()
        ga = gb = gbias = None
        if ctx.needs_input_grad[0]:
            ga = gemm(grad, b.t(), None, ctx.backend, a.dtype)
        if ctx.needs_input_grad[1]:
            gb = gemm(a.t(), grad, None, ctx.backend, b.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gbias = grad.float().sum(0).to(b.dtype)
        return ga, gb, gbias, None


_FOLD_CONSTANTS: dict = {}  # (mean, std, device) -> float32 (255 std_c per folded row [588, 1], mean_c / std_c [588])


def _fold_constants(mean, std, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalization's constants on `device`, per row (channel, py, px) of the folded weight, made once:
    fold_weight runs on every inference forward, and building them from Python lists there would be a blocking
    host-to-device copy each time."""
    key = (tuple(map(float, mean)), tuple(map(float, std)), device)
    found = _FOLD_CONSTANTS.get(key)
    if found is None:
        s = torch.tensor(key[1], dtype=torch.float32)
        m = torch.tensor(key[0], dtype=torch.float32)
        denom = (255.0 * s).repeat_interleave(PATCH * PATCH)[:, None]
        found = _FOLD_CONSTANTS[key] = (denom.to(device), (m / s).repeat_interleave(PATCH * PATCH).to(device))
    return found


def fold_weight(weight: torch.Tensor, bias: torch.Tensor | None, mean=CLIP_MEAN, std=CLIP_STD,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv3d weight [D, 3, 2, 14, 14] and bias -> (weight [592, D], bias [D]) acting on uint8 levels:
    [592, D] contiguous, rows 588-591 zero (the pad bytes of the patch rows).

    x = u / (255 std_c) - mean_c / std_c for both frames, so W' = sum_t W / (255 std_c) and
    b' = b - sum W mean_c / std_c. Computed in float32 (with autograd when the weights need gradients),
    returned in weight's dtype. Without gradients it is six small kernels over the weight's D x 1176 values
    (no host sync), against the GEMM's N x 592 x D multiply-adds, so the patch embedding folds on every forward:
    nothing cached can go stale when the weights change in place (an optimizer step, or a write through `.data`
    such as peft's merge_and_unload, which leaves the address and the version counter as they were)."""
    D = weight.shape[0]
    denom, shift_scale = _fold_constants(mean, std, weight.device)
    w = weight.reshape(D, IN_CHANNELS, TEMPORAL, PATCH * PATCH).sum(2, dtype=torch.float32).reshape(D, K_UINT8)
    shift = (w * shift_scale).sum(1)  # [D] (elementwise: a matmul would run in autocast's dtype)
    if torch.is_grad_enabled() and (weight.requires_grad or (bias is not None and bias.requires_grad)):
        b = bias - shift if bias is not None else -shift  # float32 at least (type promotion)
        w_u8 = F.pad(w.t() / denom, (0, 0, 0, ROW_U8_STRIDE - K_UINT8))
        return w_u8.to(weight.dtype).contiguous(), b.to(weight.dtype)
    w_u8 = weight.new_empty(ROW_U8_STRIDE, D)  # divided, transposed and cast into place in one pass
    torch.div(w.t(), denom, out=w_u8[:K_UINT8])
    w_u8[K_UINT8:].zero_()
    b = weight.new_empty(D)
    if bias is not None:
        torch.sub(bias, shift, out=b)  # in float32 (type promotion), cast to the weight's dtype on the way out
    else:
        torch.mul(shift, -1.0, out=b)
    return w_u8, b


def check_inputs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if weight.dim() != 5 or tuple(weight.shape[1:]) != (IN_CHANNELS, TEMPORAL, PATCH, PATCH):
        raise ValueError(f"weight must be a Conv3d weight [D, 3, 2, 14, 14], got {list(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be [{weight.shape[0]}], got {list(bias.shape)}")
    if x.device != weight.device:
        raise ValueError(f"input is on {x.device} but weight is on {weight.device}")
    if bias is not None and bias.device != weight.device:  # the GEMM kernels take raw pointers
        raise ValueError(f"bias is on {bias.device} but weight is on {weight.device}")
    if x.dtype == torch.uint8:
        if x.dim() != 2 or x.shape[1] != K_UINT8:
            raise ValueError(f"uint8 patches must be [N, {K_UINT8}] (channel, py, px), got {list(x.shape)}")
    elif not x.is_floating_point():
        raise ValueError(f"input must be float pixel_values or uint8 patches, got {x.dtype}")
    elif x.shape[-1] != K_PIXELS and x.numel() % K_PIXELS:
        raise ValueError(f"pixel_values must be [N, {K_PIXELS}] (channel, t, py, px), got {list(x.shape)}")


def patch_embed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                backend: str = "auto", folded: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Patch embeddings [N, D] in weight's dtype.

    x: pixel_values [N, 1176] (float; cast to weight's dtype, as the HF modules do), or uint8
    patches [N, 588] (raw levels, rows as pixel_values, columns (channel, py, px); fastest as the view
    of 592-byte rows that glyph_rt.render_inputs(dtype=torch.uint8) returns).
    weight: the Conv3d weight [D, 3, 2, 14, 14]; bias: [D] or None (Qwen2.5-VL).
    folded: fold_weight(weight, bias), when the caller caches it (inference)."""
    check_inputs(x, weight, bias)
    backend = resolve_backend(backend, x.device, weight.dtype)
    D = weight.shape[0]
    if x.dtype == torch.uint8:
        w, b = folded if folded is not None else fold_weight(weight, bias)
        if tuple(w.shape) != (ROW_U8_STRIDE, D) or tuple(b.shape) != (D,):
            raise ValueError(f"folded: weight {list(w.shape)} and bias {list(b.shape)} are not fold_weight's "
                             f"[{ROW_U8_STRIDE}, {D}] and [{D}]")
        if w.device != x.device or b.device != x.device:
            raise ValueError(f"folded: weight on {w.device} and bias on {b.device}, patches on {x.device}")
        return _Gemm.apply(padded_rows(x), w, b, backend)
    x = x.reshape(-1, K_PIXELS).to(weight.dtype)
    w = weight.reshape(D, K_PIXELS).t()
    if backend == "cuda":  # the CUDA kernel's fast layout is a row-major [K, N] weight (Triton takes either)
        w = w.contiguous()
    return _Gemm.apply(x, w, bias, backend)


def patch_embed_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The plain-torch oracle: the Linear reshape of the Conv3d (float pixel_values only)."""
    return F.linear(x.reshape(-1, K_PIXELS).to(weight.dtype), weight.reshape(weight.shape[0], -1), bias)


def expand_uint8(patches: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """uint8 patches [N, 588] -> the pixel_values [N, 1176] they stand for (normalized, both frames)."""
    from .pixel_values import normalize_lut

    lut = normalize_lut(patches.device, dtype)  # [3, 256]
    N = patches.shape[0]
    u = patches.reshape(N, IN_CHANNELS, PATCH * PATCH).long()
    v = torch.stack([lut[c][u[:, c]] for c in range(IN_CHANNELS)], 1)  # [N, 3, 196]
    return v[:, :, None].expand(N, IN_CHANNELS, TEMPORAL, PATCH * PATCH).reshape(N, K_PIXELS)
