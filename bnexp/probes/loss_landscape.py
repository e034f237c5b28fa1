"""The loss landscape along the gradient (Santurkar et al. 2018, Figure 4)."""

from __future__ import annotations

from typing import Any

import torch

from bnexp.landscape import measure_landscape
from bnexp.probes.base import Context, Probe, Scalars


class LossLandscape(Probe):
    """``landscape/{loss_range,grad_change,beta}`` along the gradient at steps of
    ``probe.landscape_multiples`` times this step's lr (bnexp.landscape.measure_landscape), on
    the training batch before its step. Opt-in (``probe.landscape``): one forward+backward per
    multiple plus one."""

    switch = "landscape"
    values: Scalars  # measured before the step, logged with the step's record

    def __init__(self, ctx: Context, cfg: Any) -> None:
        super().__init__(ctx, cfg)
        self.multiples = tuple(cfg.landscape_multiples)

    def before(self, step: int, x: torch.Tensor, y: torch.Tensor | None) -> None:
        self.values = {}
        if y is not None:
            lr = self.ctx.optimizer.param_groups[0]["lr"]  # this step's lr, as scheduled
            self.values = measure_landscape(self.ctx.model, x, y, lr, self.multiples)

    def after(self, step: int) -> Scalars:
        values, self.values = self.values, {}
        return values
