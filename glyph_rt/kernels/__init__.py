"""Triton kernels of glyph_rt, one file per op (installed as glyph_rt.kernels)."""
import contextlib
import functools
import sys
from importlib import metadata

import torch

from .._ext import release


def on_device(t: torch.Tensor):
    """A context in which kernels launch on `t`'s GPU: Triton (and the extension's kernels) launch on the thread's
    current device, which need not be the tensors' (cuda:1, a server's worker threads)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


@functools.lru_cache(maxsize=None)
def interpreter_problem() -> str | None:
    """Why Triton's interpreter (TRITON_INTERPRET=1, the CPU) cannot run glyph_rt's kernels here, or None."""
    built = compiled_for_gpu()
    if built:
        return (f"{built} was imported before TRITON_INTERPRET=1 was set, so its kernels were built for a GPU: "
                "set TRITON_INTERPRET=1 before importing glyph_rt")
    try:
        return _interpreter_problem(metadata.version("triton"), metadata.version("numpy"))
    except metadata.PackageNotFoundError:
        return None


def compiled_for_gpu() -> str | None:
    """The first of glyph_rt's kernel modules already imported with its kernels built for a GPU rather than for
    Triton's interpreter (triton.jit reads TRITON_INTERPRET when a module is imported), or None."""
    for name in ("attention", "attention_decode", "patch_embed", "raster"):
        module = sys.modules.get(f"{__name__}.{name}")
        if module is not None and any(type(v).__name__ == "JITFunction" for v in vars(module).values()):
            return module.__name__
    return None


def _interpreter_problem(triton: str, numpy: str) -> str | None:
    if release(triton) < (3, 7) and release(numpy) >= (2, 4):  # Triton 3.7.1 runs them with numpy 2.4
        return (f"Triton {triton}'s interpreter turns one-element arrays into Python ints, which numpy {numpy} "
                "refuses, so glyph_rt's kernels fail in it: for the CPU interpreter, pip install 'numpy<2.4' or "
                "'triton>=3.7' (on a GPU the kernels compile and this does not apply)")
    return None


def interpreter_dtype_problem(dtype: torch.dtype) -> str | None:
    """Why Triton's interpreter cannot multiply tiles of `dtype` (the kernels with tl.dot), or None."""
    if dtype == torch.bfloat16:  # it holds bfloat16 as uint16 and tl.dot multiplies the bits (triton#11584)
        return ("Triton's interpreter does not support bfloat16 (tl.dot multiplies the raw bits); on the CPU give "
                "the kernel float32 or float16")
    return None
