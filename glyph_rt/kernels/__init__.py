"""Triton kernels of glyph_rt, one file per op (installed as glyph_rt.kernels)."""
import contextlib

import torch


def on_device(t: torch.Tensor):
    """A context in which kernels launch on `t`'s GPU: Triton (and the extension's kernels) launch on the thread's
    current device, which need not be the tensors' (cuda:1, a server's worker threads)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()
