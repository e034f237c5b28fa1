"""Probes: per-layer activation statistics and gradient norms, on a schedule, at a measured cost.

Activation statistics come from a forward pass over a fixed probe batch (drawn once from the
training split with the run's seed, so every norm variant of a seed sees the same images) in
which BN layers use batch statistics as in training, dropout is off, BN running statistics are
restored afterwards and no random numbers are drawn, so probing never changes training.
Gradient quantities are read off the training step itself: after ``backward`` (gradient norms,
including the gradient w.r.t. each layer's input) and after ``optimizer.step`` (update-to-weight
ratios). All of it is computed in torch on the device; only the final scalars leave it.

For every hidden block (``fc1``, ``conv1``, ...) three tensors are probed, under stage names:
``pre`` (the affine map's output, the norm's input), ``norm`` (the norm's output = the
nonlinearity's input, the quantity of the BN paper's Figure 1) and ``post`` (after the
nonlinearity). Tags: ``act/<layer>/<stage>/{mean,std,p15,p50,p85}``, the same percentiles of one
tracked unit (``unit_p15``...), ``act/<layer>/post/{saturated,dead}``,
``grad/<layer>/{weight,bias,input}``, ``grad/global``, ``grad/first_last_ratio``,
``update/<layer>``, and histograms under ``hist/``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bnexp.models import Block, batch_statistics

STAGES = ("pre", "norm", "post")
QUANTILES = (0.15, 0.50, 0.85)
SATURATION_MARGIN = 0.02  # sigmoid/tanh output within this of its bounds counts as saturated


def hidden_blocks(model: nn.Module) -> dict[str, Block]:
    return {name: m for name, m in model.blocks.named_children() if isinstance(m, Block)}


def probed_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every layer with weights, by its stable name: the hidden blocks' affine maps and the head."""
    layers: dict[str, nn.Module] = {n: b.affine for n, b in hidden_blocks(model).items()}
    layers["head"] = model.head
    return layers


def layer_bias(model: nn.Module, name: str) -> torch.Tensor | None:
    """The layer's effective bias: the affine map's, or the norm's beta when the map has none."""
    if name == "head":
        return model.head.bias
    block = hidden_blocks(model)[name]
    if block.affine.bias is not None:
        return block.affine.bias
    return getattr(block.norm, "bias", None)


def tensor_stats(t: torch.Tensor, activation: str | None = None,
                 stage: str | None = None) -> dict[str, torch.Tensor]:
    """mean and std of all of ``t``, and for post-activation tensors the saturated / dead
    fractions. Percentiles come from ``batched_percentiles``."""
    flat = t.detach().float().flatten()
    mean = flat.mean()
    std = torch.linalg.vector_norm(flat - mean) / flat.numel() ** 0.5  # population std
    out = {"mean": mean, "std": std}
    if stage == "post" and activation == "relu":
        # ReLU outputs are >= 0, so sign() is 1 for live units and 0 for dead ones; on CPU this
        # is several times faster than count_nonzero or (flat == 0).sum().
        out["dead"] = 1.0 - torch.sign(flat).sum(dtype=torch.float64) / flat.numel()
    elif stage == "post" and activation in ("sigmoid", "tanh"):
        low = 0.0 if activation == "sigmoid" else -1.0
        saturated = (flat < low + SATURATION_MARGIN) | (flat > 1.0 - SATURATION_MARGIN)
        out["saturated"] = saturated.float().mean()
    return out


def percentile_sample(t: torch.Tensor, max_elements: int) -> torch.Tensor:
    """A copy of all of ``t``'s values, or of a fixed sample of ``max_elements`` of them (a copy:
    an in-place activation may overwrite ``t`` later in the forward pass)."""
    flat = t.detach().float().flatten()
    if flat.numel() > max_elements:
        return flat[_fixed_subset(flat.numel(), max_elements, t.device)]
    return flat.clone()


def batched_percentiles(rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """15/50/85th percentiles of many 1-d tensors, as ``torch.quantile`` defines them (linear
    interpolation between the order statistics around q*(n-1)), but found by selection
    (``kthvalue``, O(n)) rather than by sorting, in one call per order statistic for each group
    of equal-length tensors."""
    by_len: dict[int, list[str]] = {}
    for key, row in rows.items():
        by_len.setdefault(row.numel(), []).append(key)
    out: dict[str, torch.Tensor] = {}
    for n, keys in by_len.items():
        stacked = torch.stack([rows[k] for k in keys])
        for name, q in zip(("p15", "p50", "p85"), QUANTILES, strict=True):
            pos = q * (n - 1)
            lo, frac = int(pos), pos - int(pos)
            v_lo = stacked.kthvalue(lo + 1, dim=1).values
            value = v_lo
            if frac > 0:
                v_hi = stacked.kthvalue(lo + 2, dim=1).values
                value = v_lo + frac * (v_hi - v_lo)
            for i, key in enumerate(keys):
                out[f"{key}{name}"] = value[i]
    return out


def unit_percentiles(t: torch.Tensor, max_elements: int) -> dict[str, torch.Tensor]:
    """Each unit's (MLP feature / CNN channel, dim 1) own 15/50/85th percentiles over the batch
    (and positions), as ``torch.quantile`` defines them; a fixed sample of ``max_elements``
    values per unit for large maps. The BN paper's Figure 1 tracks single units: pooled over a
    layer, BN's per-unit normalisation hides how each unit's distribution moves."""
    rows = t.detach().float().transpose(0, 1).reshape(t.shape[1], -1)
    if rows.shape[1] > max_elements:
        rows = rows[:, _fixed_subset(rows.shape[1], max_elements, rows.device)]
    n = rows.shape[1]
    out = {}
    for name, q in zip(("p15", "p50", "p85"), QUANTILES, strict=True):
        pos = q * (n - 1)
        lo, frac = int(pos), pos - int(pos)
        value = rows.kthvalue(lo + 1, dim=1).values
        if frac > 0:
            value = value + frac * (rows.kthvalue(lo + 2, dim=1).values - value)
        out[name] = value
    return out


_SUBSETS: dict[tuple[int, int, str], torch.Tensor] = {}


def _fixed_subset(n: int, k: int, device: torch.device) -> torch.Tensor:
    """The same k of n indices every time (percentiles of huge conv maps on a fixed sample)."""
    key = (n, k, str(device))
    if key not in _SUBSETS:
        gen = torch.Generator().manual_seed(n)
        _SUBSETS[key] = torch.randperm(n, generator=gen)[:k].sort().values.to(device)
    return _SUBSETS[key]


def probe_layout(model: nn.Module) -> dict[str, dict[str, list]]:
    """Custom-scalars charts: one chart per statistic with every layer overlaid, and the BN
    paper's Figure 1 view (nonlinearity-input percentiles) per layer."""
    act = {f"{stat} ({stage})": ["Multiline", [rf"act/[^/]+/{stage}/{stat}$"]]
           for stage in STAGES for stat in ("mean", "std")}
    act.update({f"{name} nonlinearity input p15/p50/p85": [
        "Multiline", [f"act/{name}/norm/p15", f"act/{name}/norm/p50", f"act/{name}/norm/p85"]]
        for name in hidden_blocks(model)})
    act["saturated / dead (post)"] = ["Multiline", [r"act/[^/]+/post/(saturated|dead)$"]]
    grad = {"weight grad norm": ["Multiline", [r"grad/[^/]+/weight$"]],
            "bias grad norm": ["Multiline", [r"grad/[^/]+/bias$"]],
            "input grad norm": ["Multiline", [r"grad/[^/]+/input$"]],
            "global / first-to-last": ["Multiline", ["grad/global", "grad/first_last_ratio"]],
            "update-to-weight ratio": ["Multiline", [r"update/[^/]+$"]]}
    return {"activations": act, "gradients": grad}


class Probes:
    """Schedules and computes the probes of one run; ``begin(step, x)`` is the training loop's
    entry point and returns a ``StepProbe`` on the steps where a probe is due."""

    def __init__(self, model: nn.Module, cfg: Any, activation: str, probe_x: torch.Tensor,
                 log: Any) -> None:
        self.model, self.activation, self.probe_x, self.log = model, activation, probe_x, log
        # Plain Python values: reading a DictConfig in the hot path costs microseconds a key.
        self.enabled, self.every, self.hist_every = cfg.enabled, cfg.every, cfg.hist_every
        self.unit, self.max_elements = cfg.unit, cfg.max_elements
        self.per_unit = cfg.get("per_unit", False)
        self.blocks = hidden_blocks(model)
        self.layers = probed_layers(model)

    def due(self, step: int) -> bool:
        return self.enabled and step % self.every == 0

    def hist_due(self, step: int) -> bool:
        return self.enabled and self.hist_every > 0 and step % self.hist_every == 0

    def activation_stats(self, step: int) -> dict[str, float]:
        """Statistics of every block's three stages on the probe batch.

        They are computed inside the forward hooks, before the next module runs: an in-place
        ReLU would otherwise overwrite the norm's output, and nothing needs copying."""
        values: dict[str, torch.Tensor] = {}
        rows: dict[str, torch.Tensor] = {}
        units: dict[str, dict[str, torch.Tensor]] = {}
        hist = self.hist_due(step)

        def measure(key: str, t: torch.Tensor) -> None:
            stage = key.split("/")[1]
            for stat, v in tensor_stats(t, self.activation, stage).items():
                values[f"act/{key}/{stat}"] = v
            rows[f"act/{key}/"] = percentile_sample(t, self.max_elements)
            unit = t.select(1, self.unit % t.shape[1])
            rows[f"act/{key}/unit_"] = percentile_sample(unit, self.max_elements)
            if hist:
                self._histogram(f"hist/act/{key}", t, step)
            if self.per_unit and stage == "norm":
                units[f"act/{key}/units"] = unit_percentiles(t, self.max_elements)

        handles = []
        for name, block in self.blocks.items():
            for stage, module in zip(STAGES, (block.affine, block.norm, block.act), strict=True):
                handles.append(module.register_forward_hook(
                    lambda _m, _i, out, key=f"{name}/{stage}": measure(key, out.detach())))
        try:
            with batch_statistics(self.model):
                self.model(self.probe_x)
        finally:
            for h in handles:
                h.remove()
        values.update(batched_percentiles(rows))
        if units:
            self.log.record(step, "units", {k: {q: v.cpu().tolist() for q, v in qs.items()}
                                            for k, qs in units.items()})
        return _to_floats(values)

    def _histogram(self, tag: str, t: torch.Tensor, step: int, bins: int = 64) -> None:
        flat = t.detach().float().flatten()
        lo, hi = flat.min(), flat.max()
        if not torch.isfinite(lo) or not torch.isfinite(hi):
            return
        hi = torch.maximum(hi, lo + 1e-12)
        counts = torch.histc(flat, bins=bins, min=lo.item(), max=hi.item())
        edges = torch.linspace(lo.item(), hi.item(), bins + 1)[1:]
        self.log.tb.add_histogram_raw(
            tag, min=lo.item(), max=hi.item(), num=flat.numel(), sum=flat.sum().item(),
            sum_squares=flat.square().sum().item(), bucket_limits=edges.tolist(),
            bucket_counts=counts.cpu().tolist(), global_step=step)

    def begin(self, step: int, x: torch.Tensor) -> StepProbe | None:
        """Call before the training forward; returns the step's probe when one is due."""
        if not self.due(step):
            return None
        self.log.scalars(step, self.activation_stats(step), kind="probe")
        return StepProbe(self, step, x)


class StepProbe:
    """The gradient side of one probed training step."""

    def __init__(self, probes: Probes, step: int, x: torch.Tensor) -> None:
        self.p, self.step = probes, step
        self.input_grads: dict[str, torch.Tensor] = {}
        self.handles = []
        x.requires_grad_(True)  # so the first layer's input gradient exists; values unchanged
        for name, layer in probes.layers.items():
            self.handles.append(layer.register_forward_pre_hook(self._watch_input(name)))

    def _watch_input(self, name: str) -> Any:
        def pre_hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            inp = args[0]
            if inp.requires_grad:
                def grad_hook(g: torch.Tensor) -> None:
                    self.input_grads[name] = g.detach().float().norm()
                inp.register_hook(grad_hook)
        return pre_hook

    def after_backward(self) -> None:
        """Gradient norms per layer, of each layer's input, and globally; snapshot weights."""
        for h in self.handles:
            h.remove()
        model, out = self.p.model, {}
        for name, layer in self.p.layers.items():
            out[f"grad/{name}/weight"] = layer.weight.grad.detach().norm()
            bias = layer_bias(model, name)
            if bias is not None and bias.grad is not None:
                out[f"grad/{name}/bias"] = bias.grad.detach().norm()
            if name in self.input_grads:
                out[f"grad/{name}/input"] = self.input_grads[name]
            if self.p.hist_due(self.step):
                self.p._histogram(f"hist/grad/{name}/weight", layer.weight.grad, self.step)
        grads = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
        out["grad/global"] = torch.stack(grads).norm()
        names = list(self.p.layers)
        out["grad/first_last_ratio"] = out[f"grad/{names[0]}/weight"] / out[f"grad/{names[-1]}/weight"]
        self.grad_values = out
        self.weights = {n: layer.weight.detach().clone() for n, layer in self.p.layers.items()}

    def after_step(self) -> None:
        """Update-to-weight ratios ||W_new - W_old|| / ||W_old||, then log everything."""
        out = dict(self.grad_values)
        for name, layer in self.p.layers.items():
            before = self.weights[name]
            out[f"update/{name}"] = (layer.weight.detach() - before).norm() / before.norm()
        self.p.log.scalars(self.step, _to_floats(out), kind="probe")


def _to_floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """One device-to-host copy for all the scalars of a probe."""
    if not values:
        return {}
    stacked = torch.stack([v.float().reshape(()) for v in values.values()]).cpu().tolist()
    return dict(zip(values, stacked, strict=True))
