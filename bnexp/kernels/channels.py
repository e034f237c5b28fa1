"""Per-channel shape helpers shared by the reference formulas (``bnexp.norm``) and the torch-ops
fast path (``bnexp.kernels.eager``): inputs are (N, C, *spatial), statistics one per channel."""

from __future__ import annotations

import torch


def reduce_dims(x: torch.Tensor) -> list[int]:
    """Every dimension but the channels'."""
    return [0, *range(2, x.dim())]


def channel_view(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-channel vector shaped (1, C, 1, ...) to broadcast against x."""
    return t.view(1, -1, *([1] * (x.dim() - 2)))


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Statistics and arithmetic in float32 for half-precision inputs (as under autocast)."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
