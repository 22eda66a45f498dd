"""Drop-in replacement for Glm4vVisionPatchEmbed and Qwen2_5_VisionPatchEmbed.

`PatchEmbed` keeps the Hugging Face module's parameter (`proj`, the Conv3d) so checkpoints
load as they are, and computes it with glyph_rt.ops.patch_embed: a GEMM on float
pixel_values [N, 1176], or a 588-wide GEMM with the normalization folded into the weights on
uint8 patches [N, 588] (glyph_rt.render_inputs(..., dtype=torch.uint8)).
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops import autocast_dtype
from ..ops.patch_embed import expand_uint8, fold_weight, patch_embed


class PatchEmbed(nn.Module):
    def __init__(self, embed_dim: int, bias: bool = True, in_channels: int = 3, patch_size: int = 14,
                 temporal_patch_size: int = 2, backend: str = "auto"):
        super().__init__()
        if (in_channels, patch_size, temporal_patch_size) != (3, 14, 2):
            raise ValueError("PatchEmbed supports GLM-4.1V / Qwen2.5-VL patches: 3 channels, 14x14, 2 frames")
        self.in_channels, self.patch_size, self.temporal_patch_size = in_channels, patch_size, temporal_patch_size
        self.embed_dim = embed_dim
        self.backend = backend
        k = (temporal_patch_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_channels, embed_dim, kernel_size=k, stride=k, bias=bias)

    @classmethod
    def from_hf(cls, module: nn.Module, backend: str = "auto") -> "PatchEmbed":
        """The same parameters as a Glm4vVisionPatchEmbed / Qwen2_5_VisionPatchEmbed (shared, not copied)."""
        proj = module.proj
        new = cls(proj.out_channels, bias=proj.bias is not None, in_channels=proj.in_channels,
                  patch_size=proj.kernel_size[1], temporal_patch_size=proj.kernel_size[0], backend=backend)
        new.proj = proj
        return new

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        return folded_weights(self)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return embed_patches(self, hidden_states, self.backend)


def folded_weights(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """`module.proj`'s weights acting on uint8 levels (fold_weight), folded on every call: with autograd while
    the parameters train, else six small kernels over the D x 1176 weight and no host sync (1.8M values at
    GLM-4.1V's width, against 2.3G multiply-adds in the GEMM of one 2,520-patch page).
    Nothing is cached, so weights changed in place are always seen, including writes through `.data` (peft's
    merge_and_unload, EMA updates), which leave no trace in the address or the version counter."""
    return fold_weight(module.proj.weight, module.proj.bias)


def embed_patches(module: nn.Module, hidden_states: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """The forward of any module holding the patch-embedding Conv3d as `proj` (ours, or a patched HF one). Under
    autocast, fp32 weights (a training run's master weights) are cast to its dtype, as a Conv3d's would be.
    A `proj` that is not a plain Conv3d (peft's LoRA layer wrapping it before merge_and_unload, a subclass with
    its own forward, forward hooks) is called as the HF module calls it, so that what it adds is not skipped."""
    hidden_states = levels_back(hidden_states)
    if not _plain_conv(module.proj):
        w = module.proj.weight
        x = expand_uint8(hidden_states, w.dtype) if hidden_states.dtype == torch.uint8 else hidden_states
        return module.proj(x.reshape(-1, 3, 2, 14, 14).to(w.dtype)).view(-1, w.shape[0])
    w, b = module.proj.weight, module.proj.bias
    folded = folded_weights(module) if hidden_states.dtype == torch.uint8 else None
    dt = autocast_dtype(hidden_states.device)
    if dt is not None and w.dtype != dt:
        w, b = w.to(dt), None if b is None else b.to(dt)
        folded = None if folded is None else tuple(x.to(dt) for x in folded)
    return patch_embed(hidden_states, w, b, backend, folded)


def _plain_conv(proj: nn.Module) -> bool:
    """Whether calling `proj` is exactly Conv3d's forward on its own weight and bias (the GEMM replaces it)."""
    return (type(proj).forward is nn.Conv3d.forward and "forward" not in vars(proj)
            and not proj._forward_hooks and not proj._forward_pre_hooks)


def levels_back(x: torch.Tensor) -> torch.Tensor:
    """uint8 patches [N, 588] that the model cast to float on their way here (transformers' get_image_features
    casts pixel_values to the tower's dtype), back to uint8: the levels 0..255 survive the cast exactly, even to
    bfloat16. Float rows of another width go on as they are; float rows of 588 values that are not levels are
    an error rather than being read as pixel_values."""
    if x.dtype == torch.uint8 or not x.is_floating_point() or x.dim() != 2 or x.shape[-1] != 588:
        return x
    if not bool(((x >= 0) & (x <= 255) & (x == x.round())).all()):
        raise ValueError("patch embedding: float rows of 588 values that are not uint8 levels; give uint8 patches "
                         "[N, 588] (render_inputs(dtype=torch.uint8)) or float pixel_values [N, 1176]")
    return x.to(torch.uint8)
