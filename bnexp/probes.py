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

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from bnexp import metrics as m
from bnexp.landscape import measure_ics, measure_landscape
from bnexp.metrics import STAGES
from bnexp.models import Block, batch_statistics

QUANTILES = (0.15, 0.50, 0.85)  # of m.PERCENTILES
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
        # ReLU outputs are >= 0, so sign() is 1 for live units and 0 for dead ones: one
        # elementwise op and a sum, cheaper on CPU than count_nonzero or (flat == 0).sum().
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
        for name, q in zip(m.PERCENTILES, QUANTILES, strict=True):
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
    for name, q in zip(m.PERCENTILES, QUANTILES, strict=True):
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
    act = {f"{stat} ({stage})": ["Multiline", [m.any_layer(m.act, stage, stat)]]
           for stage in STAGES for stat in ("mean", "std")}
    act.update({f"{name} nonlinearity input p15/p50/p85": [
        "Multiline", [m.act(name, "norm", q) for q in m.PERCENTILES]]
        for name in hidden_blocks(model)})
    act["saturated / dead (post)"] = ["Multiline", [m.any_layer(m.act, "post", "(saturated|dead)")]]
    grad = {f"{kind} grad norm": ["Multiline", [m.any_layer(m.grad, kind)]] for kind in m.GRAD_KINDS}
    grad["global / first-to-last"] = ["Multiline", [m.GRAD_GLOBAL, m.GRAD_FIRST_LAST]]
    grad["update-to-weight ratio"] = ["Multiline", [m.any_layer(m.update)]]
    return {"activations": act, "gradients": grad}


class Probes:
    """Schedules and computes the probes of one run; the training loop's one entry point is
    ``with probes.at(step, x):`` around each training step."""

    def __init__(self, model: nn.Module, cfg: Any, activation: str, probe_x: torch.Tensor,
                 log: Any, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.model, self.activation, self.probe_x, self.log = model, activation, probe_x, log
        self.optimizer = optimizer  # the ICS and landscape probes simulate its next step
        # Plain Python values: reading a DictConfig in the hot path is slow.
        self.enabled, self.every, self.hist_every = cfg.enabled, cfg.every, cfg.hist_every
        self.unit, self.max_elements = cfg.unit, cfg.max_elements
        self.per_unit = cfg.per_unit
        self.ics, self.landscape = cfg.ics, cfg.landscape
        self.multiples = tuple(cfg.landscape_multiples)
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

        def measure(layer: str, stage: str, t: torch.Tensor) -> None:
            prefix = m.act(layer, stage, "")  # "act/<layer>/<stage>/", then the statistic
            for stat, v in tensor_stats(t, self.activation, stage).items():
                values[prefix + stat] = v
            rows[prefix] = percentile_sample(t, self.max_elements)  # -> prefix + "p15", ...
            unit = t.select(1, self.unit % t.shape[1])
            rows[prefix + m.UNIT_PREFIX] = percentile_sample(unit, self.max_elements)
            if hist:
                self._histogram(m.hist(prefix.rstrip("/")), t, step)
            if self.per_unit and stage == "norm":
                units[m.act_units(layer, stage)] = unit_percentiles(t, self.max_elements)

        self._look(STAGES, measure)
        values.update(batched_percentiles(rows))
        if units:
            self._record_units(step, m.KIND_UNITS, units)
        return _to_floats(values)

    def next_units(self, step: int) -> None:
        """The per-unit percentiles again after step ``step``'s update (``units_next``), on the
        same probe batch and, through batch_statistics, the same probe noise: with the record
        before the step, what one training step moved each unit (metrics.step_drift_units)."""
        units: dict[str, dict[str, torch.Tensor]] = {}

        def measure(name: str, stage: str, t: torch.Tensor) -> None:
            units[m.act_units(name, stage)] = unit_percentiles(t, self.max_elements)

        self._look(("norm",), measure)
        self._record_units(step, m.KIND_UNITS_NEXT, units)

    def _look(self, stages: tuple[str, ...], measure: Any) -> None:
        """One forward of the probe batch (bnexp.models.batch_statistics) with
        ``measure(layer, stage, tensor)`` called on each block's ``stages`` as they are computed."""
        handles = []
        for name, block in self.blocks.items():
            for stage, module in zip(STAGES, (block.affine, block.norm, block.act), strict=True):
                if stage in stages:
                    handles.append(module.register_forward_hook(
                        lambda _m, _i, out, n=name, s=stage: measure(n, s, out.detach())))
        try:
            with batch_statistics(self.model):
                self.model(self.probe_x)
        finally:
            for h in handles:
                h.remove()

    def _record_units(self, step: int, kind: str, units: dict[str, dict[str, torch.Tensor]]
                      ) -> None:
        self.log.record(step, kind, {k: {q: v.cpu().tolist() for q, v in qs.items()}
                                     for k, qs in units.items()})

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

    def optimization_stats(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Santurkar et al.'s internal covariate shift per layer and loss-landscape smoothness,
        on the training batch before its step (bnexp/landscape.py; opt-in: extra passes)."""
        out: dict[str, torch.Tensor] = {}
        if self.ics:
            out.update(measure_ics(self.model, self.optimizer, x, y, self.layers))
        if self.landscape:
            lr = self.optimizer.param_groups[0]["lr"]  # this step's lr, as scheduled
            out.update(measure_landscape(self.model, x, y, lr, self.multiples))
        return out

    def at(self, step: int, x: torch.Tensor, y: torch.Tensor | None = None) -> Any:
        """Wrap a training step: ``with probes.at(step, x, y): train_step(...)``. On a probed
        step, activation statistics (and, when enabled, ICS and landscape on the step's batch)
        are taken before it, gradient norms (of weights, biases and each layer's input) and
        update-to-weight ratios after it; otherwise a no-op."""
        return ProbedStep(self, step, x, y) if self.due(step) else _NO_PROBE


class ProbedStep:
    """The probes around one training step. Gradients are read after ``optimizer.step``:
    torch's optimizers leave ``.grad`` as backward wrote it (tested for SGD, Adam, AdamW)."""

    def __init__(self, probes: Probes, step: int, x: torch.Tensor,
                 y: torch.Tensor | None) -> None:
        self.p, self.step, self.x, self.y = probes, step, x, y
        self.input_grads: dict[str, torch.Tensor] = {}
        self.handles: list[Any] = []

    def __enter__(self) -> ProbedStep:
        p = self.p
        p.log.scalars(self.step, p.activation_stats(self.step), kind=m.KIND_PROBE)
        self.before = p.optimization_stats(self.x, self.y) if self.y is not None else {}
        self.weights = {n: layer.weight.detach().clone() for n, layer in p.layers.items()}
        self.x.requires_grad_(True)  # so the first layer's input gradient exists; values unchanged
        for name, layer in p.layers.items():
            self.handles.append(layer.register_forward_pre_hook(self._watch_input(name)))
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        for h in self.handles:
            h.remove()
        if exc_type is None:
            values = {**self.before, **self.gradients(), **self.updates()}
            self.p.log.scalars(self.step, _to_floats(values), kind=m.KIND_PROBE)
            if self.p.per_unit:
                self.p.next_units(self.step)

    def _watch_input(self, name: str) -> Any:
        def pre_hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            inp = args[0]
            if inp.requires_grad:
                def grad_hook(g: torch.Tensor) -> None:
                    self.input_grads[name] = g.detach().float().norm()
                inp.register_hook(grad_hook)
        return pre_hook

    def gradients(self) -> dict[str, torch.Tensor]:
        """Gradient norms per layer (weight, effective bias, input) and of all parameters."""
        model, out = self.p.model, {}
        for name, layer in self.p.layers.items():
            out[m.grad(name, "weight")] = layer.weight.grad.detach().norm()
            bias = layer_bias(model, name)
            if bias is not None and bias.grad is not None:
                out[m.grad(name, "bias")] = bias.grad.detach().norm()
            if name in self.input_grads:
                out[m.grad(name, "input")] = self.input_grads[name]
            if self.p.hist_due(self.step):
                self.p._histogram(m.hist(m.grad(name, "weight")), layer.weight.grad, self.step)
        grads = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
        out[m.GRAD_GLOBAL] = torch.stack(grads).norm()
        names = list(self.p.layers)
        first, last = m.grad(names[0], "weight"), m.grad(names[-1], "weight")
        out[m.GRAD_FIRST_LAST] = out[first] / out[last]
        return out

    def updates(self) -> dict[str, torch.Tensor]:
        """Update-to-weight ratios ||W_new - W_old|| / ||W_old||."""
        return {m.update(name): (layer.weight.detach() - self.weights[name]).norm()
                / self.weights[name].norm() for name, layer in self.p.layers.items()}


_NO_PROBE = nullcontext()


def _to_floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """One device-to-host copy for all the scalars of a probe."""
    if not values:
        return {}
    stacked = torch.stack([v.float().reshape(()) for v in values.values()]).cpu().tolist()
    return dict(zip(values, stacked, strict=True))
