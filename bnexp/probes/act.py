"""Activation statistics: how each block's three stages are distributed on the probe batch."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bnexp import metrics as m
from bnexp.metrics import STAGES
from bnexp.probes.base import Charts, Context, Probe, Replicas, Scalars, hidden_blocks
from bnexp.probes.tensors import batched_percentiles, replica_stats


class ActivationStats(Probe):
    """``act/<layer>/<stage>/{mean,std,p15,p50,p85}`` for the stages pre (affine output), norm
    (nonlinearity input: the BN paper's Figure 1) and post, the same percentiles of one tracked
    unit (``unit_p15``..., unit ``probe.unit``), and ``act/<layer>/post/saturated`` (sigmoid,
    tanh) or ``.../dead`` (ReLU). Percentiles are found after the forward, batched over every
    stage (one sort per group of rows), on a fixed sample of ``probe.max_elements``."""

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
        self._take(layer, stage, self._stats(t, 1, stage), 0)

    def measure_in_pack(self, step: int, layer: str, stage: str, t: torch.Tensor,
                        replicas: Replicas) -> None:
        """Every replica's statistics of this stage in one go (the first replica's call), each
        replica taking its row: K times fewer small ops than K looks."""
        stats = replicas.once((ActivationStats, layer, stage),
                              lambda: self._stats(replicas.out, replicas.count, stage))
        self._take(layer, stage, stats, replicas.k)

    def _stats(self, out: torch.Tensor, count: int, stage: str) -> Any:
        return replica_stats(out, count, self.ctx.activation, stage, self.unit, self.max_elements)

    def _take(self, layer: str, stage: str, stats: Any, k: int) -> None:
        prefix = m.act(layer, stage, "")  # "act/<layer>/<stage>/", then the statistic
        values, rows, unit_rows = stats
        for stat, v in values.items():
            self.values[prefix + stat] = v[k]
        self.rows[prefix] = rows[k]  # -> prefix + "p15", ...
        self.rows[prefix + m.UNIT_PREFIX] = unit_rows[k]

    def looked(self, step: int) -> Scalars:
        values = {**self.values, **batched_percentiles(self.rows)}
        self.values, self.rows = {}, {}
        return values
