"""Activation statistics: how each block's three stages are distributed on the probe batch."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bnexp import metrics as m
from bnexp.metrics import STAGES
from bnexp.probes.base import Charts, Context, Probe, Scalars, hidden_blocks
from bnexp.probes.tensors import batched_percentiles, percentile_sample, tensor_stats


class ActivationStats(Probe):
    """``act/<layer>/<stage>/{mean,std,p15,p50,p85}`` for the stages pre (affine output), norm
    (nonlinearity input: the BN paper's Figure 1) and post, the same percentiles of one tracked
    unit (``unit_p15``..., unit ``probe.unit``), and ``act/<layer>/post/saturated`` (sigmoid,
    tanh) or ``.../dead`` (ReLU). Percentiles are found after the forward, batched over every
    stage (one selection per order statistic), on a fixed sample of ``probe.max_elements``."""

    switch = "enabled"
    stages = STAGES

    def __init__(self, ctx: Context, cfg: Any) -> None:
        super().__init__(ctx, cfg)
        self.unit, self.max_elements = cfg.unit, cfg.max_elements
        self.values: Scalars = {}
        self.rows: dict[str, torch.Tensor] = {}  # tag prefix -> values to take percentiles of

    @classmethod
    def charts(cls, model: nn.Module) -> Charts:
        """One chart per statistic with every layer overlaid, and the BN paper's Figure 1 view
        (nonlinearity-input percentiles) per layer."""
        act = {f"{stat} ({stage})": ["Multiline", [m.any_layer(m.act, stage, stat)]]
               for stage in STAGES for stat in ("mean", "std")}
        act.update({f"{name} nonlinearity input p15/p50/p85": [
            "Multiline", [m.act(name, "norm", q) for q in m.PERCENTILES]]
            for name in hidden_blocks(model)})
        act["saturated / dead (post)"] = [
            "Multiline", [m.any_layer(m.act, "post", "(saturated|dead)")]]
        return {"activations": act}

    def measure(self, step: int, layer: str, stage: str, t: torch.Tensor) -> None:
        prefix = m.act(layer, stage, "")  # "act/<layer>/<stage>/", then the statistic
        for stat, v in tensor_stats(t, self.ctx.activation, stage).items():
            self.values[prefix + stat] = v
        self.rows[prefix] = percentile_sample(t, self.max_elements)  # -> prefix + "p15", ...
        unit = t.select(1, self.unit % t.shape[1])
        self.rows[prefix + m.UNIT_PREFIX] = percentile_sample(unit, self.max_elements)

    def looked(self, step: int) -> Scalars:
        values = {**self.values, **batched_percentiles(self.rows)}
        self.values, self.rows = {}, {}
        return values
