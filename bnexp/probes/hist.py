"""Histograms of activations and weight gradients, for TensorBoard's distributions."""

from __future__ import annotations

from typing import Any

import torch

from bnexp import metrics as m
from bnexp.metrics import STAGES
from bnexp.probes.base import Probe, Scalars


class Histograms(Probe):
    """``hist/act/<layer>/<stage>`` on the probe batch and ``hist/grad/<layer>/weight`` of the
    training step, at step 0 and every ``probe.hist_every`` steps (0: never), whatever
    ``probe.every`` is (the schedule runs the kind on its own cadence). TensorBoard only. Each
    reads its range back to the host, hence the rarer cadence."""

    switch = "hist_every"
    cadence = "hist_every"
    stages = STAGES

    @classmethod
    def wanted(cls, cfg: Any) -> bool:
        return cfg.hist_every > 0

    def measure(self, step: int, layer: str, stage: str, t: torch.Tensor) -> None:
        self.write(m.hist(m.act(layer, stage, "").rstrip("/")), t, step)

    def after(self, step: int) -> Scalars:
        for name, layer in self.ctx.layers.items():
            self.write(m.hist(m.grad(name, "weight")), layer.weight.grad, step)
        return {}

    def write(self, tag: str, t: torch.Tensor, step: int, bins: int = 64) -> None:
        """``bins`` equal bins from the tensor's min to its max; none if either is not finite."""
        flat = t.detach().float().flatten()
        lo, hi = flat.min(), flat.max()
        if not torch.isfinite(lo) or not torch.isfinite(hi):
            return
        hi = torch.maximum(hi, lo + 1e-12)
        counts = torch.histc(flat, bins=bins, min=lo.item(), max=hi.item())
        edges = torch.linspace(lo.item(), hi.item(), bins + 1)[1:]
        self.ctx.log.tb.add_histogram_raw(
            tag, min=lo.item(), max=hi.item(), num=flat.numel(), sum=flat.sum().item(),
            sum_squares=flat.square().sum().item(), bucket_limits=edges.tolist(),
            bucket_counts=counts.cpu().tolist(), global_step=step)
