"""glyph_rt's ops: each file holds one op's preparation, dispatch and reference."""
from __future__ import annotations

import torch


def autocast_dtype(device: torch.device | str):
    """The dtype autocast computes matmuls in on `device`, or None where it is off: glyph_rt's ops, which autocast
    does not know, take their inputs in it (as SDPA and Linear do under autocast)."""
    kind = device.type if isinstance(device, torch.device) else device
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
