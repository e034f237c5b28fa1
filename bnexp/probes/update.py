"""Update-to-weight ratios: how far one step moves each layer, relative to its size."""

from __future__ import annotations

import torch
from torch import nn

from bnexp import metrics as m
from bnexp.probes.base import Charts, Probe, Scalars


class UpdateRatios(Probe):
    """``update/<layer>`` = ||W_new - W_old|| / ||W_old|| of the training step, per layer."""

    switch = "enabled"
    weights: dict[str, torch.Tensor]  # copies taken before the step

    @classmethod
    def charts(cls, model: nn.Module) -> Charts:
        return {"gradients": {"update-to-weight ratio": ["Multiline", [m.any_layer(m.update)]]}}

    def before(self, step: int, x: torch.Tensor, y: torch.Tensor | None) -> None:
        self.weights = {n: layer.weight.detach().clone() for n, layer in self.ctx.layers.items()}

    def after(self, step: int) -> Scalars:
        out = {m.update(name): (layer.weight.detach() - self.weights[name]).norm()
               / self.weights[name].norm() for name, layer in self.ctx.layers.items()}
        self.weights = {}
        return out
