"""Gradient norms of the training step: per layer, through depth, and of all parameters."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bnexp import metrics as m
from bnexp.probes.base import Charts, Context, Probe, Scalars, layer_bias


class GradNorms(Probe):
    """``grad/<layer>/weight``, ``grad/<layer>/bias`` (the layer's bias, or BN's beta when it
    has none), ``grad/<layer>/input`` (w.r.t. the layer's input: vanishing or exploding through
    depth), ``grad/global`` (all parameters) and ``grad/first_last_ratio`` (first layer's weight
    gradient over the head's). Read after ``optimizer.step``: torch's optimizers leave ``.grad``
    as backward wrote it (tested for SGD, Adam, AdamW)."""

    switch = "enabled"

    def __init__(self, ctx: Context, cfg: Any) -> None:
        super().__init__(ctx, cfg)
        self.input_grads: Scalars = {}
        self.handles: list[Any] = []

    @classmethod
    def charts(cls, model: nn.Module) -> Charts:
        grad = {f"{kind} grad norm": ["Multiline", [m.any_layer(m.grad, kind)]]
                for kind in m.GRAD_KINDS}
        # two quantities, two charts: a norm and a ratio share no unit
        grad["global grad norm (all parameters)"] = ["Multiline", [f"^{m.GRAD_GLOBAL}$"]]
        grad["first-layer / head weight-grad ratio"] = ["Multiline", [f"^{m.GRAD_FIRST_LAST}$"]]
        return {"gradients": grad}

    def before(self, step: int, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Watch each layer's input: its gradient's norm is kept when backward reaches it."""
        self.input_grads = {}
        x.requires_grad_(True)  # so the first layer's input gradient exists; values unchanged
        for name, layer in self.ctx.layers.items():
            self.handles.append(layer.register_forward_pre_hook(self._watch_input(name)))

    def _watch_input(self, name: str) -> Any:
        def pre_hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            inp = args[0]
            if inp.requires_grad:
                def grad_hook(g: torch.Tensor) -> None:
                    self.input_grads[name] = g.detach().float().norm()
                inp.register_hook(grad_hook)
        return pre_hook

    def release(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def after(self, step: int) -> Scalars:
        model, layers, out = self.ctx.model, self.ctx.layers, {}
        for name, layer in layers.items():
            out[m.grad(name, "weight")] = layer.weight.grad.detach().norm()
            bias = layer_bias(model, name)
            if bias is not None and bias.grad is not None:
                out[m.grad(name, "bias")] = bias.grad.detach().norm()
            if name in self.input_grads:
                out[m.grad(name, "input")] = self.input_grads[name]
        grads = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
        out[m.GRAD_GLOBAL] = torch.stack(grads).norm()
        names = list(layers)
        first, last = m.grad(names[0], "weight"), m.grad(names[-1], "weight")
        out[m.GRAD_FIRST_LAST] = out[first] / out[last]
        return out
