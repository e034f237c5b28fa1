"""Normalization layers: bnexp's own BatchNorm, the write-up's literal one, the variants
(Santurkar et al.'s noisy BN, ghost BN, layer and group norm) and the factory.

``BatchNorm`` is a drop-in for ``torch.nn.BatchNorm1d/2d/3d`` whose forward and backward are a
``torch.autograd.Function``: the backward is the analytic BN gradient computed from the saved
input and per-channel statistics (what PyTorch itself saves), not autograd through a composite.

Forward, with ``mu``/``var`` the biased per-channel batch statistics and ``r = 1/sqrt(var+eps)``:
    y = gamma * (x - mu) * r + beta
Backward, with N the number of values per channel, ``db = sum(dy)``, ``dg = sum(dy * xhat)``:
    dx = a/N * (N*dy - db - xhat*dg)  =  dy * a + (x - mu) * b + c,
    a = gamma * r,  b = -a * r * dg / N,  c = -a * db / N
where the reductions use the centred input (x - mu) to avoid cancellation in float32.

``bn_forward``/``bn_backward`` below are these formulas written plainly: *the* reference, tested
against ``torch.nn.BatchNorm*``. The fast paths in ``bnexp.kernels`` compute the same values and
are tested against them. ``impl`` picks the code that runs in training:
- ``auto``: on CPU float32/float64, the C kernels (``bnexp.kernels.cpu``), one call each way,
  two passes over memory each, running statistics updated inside; elsewhere (CUDA, half
  precision, no C compiler) the torch-ops path ``bnexp.kernels.eager``;
- ``eager``: the torch-ops path everywhere;
- ``compiled``: the reference formulas fused by ``torch.compile``.
The C kernels are built or loaded by ``prepare_kernels(model)`` before training (``bnexp train``
does); a layer used on its own loads them on its first CPU float forward instead (once per
process, with a note), and runs the torch-ops path only where they cannot be built.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from bnexp.config import NormImpl, NormKind
from bnexp.errors import BnexpError
from bnexp.kernels import cpu, eager
from bnexp.kernels.channels import channel_view, compute_dtype, reduce_dims

IMPLS: tuple[str, ...] = tuple(NormImpl)  # BatchNorm's choices of ``impl``


def bn_forward(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
               eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-mode BN as plain formulas: returns (y, mean, invstd, biased var)."""
    dims, n = reduce_dims(x), x.numel() // x.shape[1]
    xs = x.to(compute_dtype(x))
    mean = xs.mean(dims)
    xc = xs - channel_view(mean, x)
    var = xc.square().sum(dims) / n
    invstd = torch.rsqrt(var + eps)
    scale = invstd if weight is None else invstd * weight
    y = xc * channel_view(scale, x)
    if bias is not None:
        y = y + channel_view(bias, x)
    return y.to(x.dtype), mean, invstd, var


def bn_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None,
                mean: torch.Tensor, invstd: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The analytic BN gradient as plain formulas: (dx, dgamma, dbeta) from x, mean, invstd."""
    dims, n = reduce_dims(x), x.numel() // x.shape[1]
    xs = x.to(compute_dtype(x))
    dys = dy.to(xs.dtype)
    sum_dy = dys.sum(dims)
    xc = xs - channel_view(mean, x)  # centred input: no cancellation in sum(dy * xhat)
    dgamma = (dys * xc).sum(dims) * invstd  # = sum(dy * xhat)
    a = invstd if weight is None else invstd * weight
    b = -a * invstd * dgamma / n
    dx = dys * channel_view(a, x) + xc * channel_view(b, x) + channel_view(-a * sum_dy / n, x)
    return dx.to(x.dtype), dgamma, sum_dy


@torch.no_grad()
def update_running_stats(running_mean: torch.Tensor, running_var: torch.Tensor,
                         num_batches_tracked: torch.Tensor, momentum: float | None,
                         mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
    """PyTorch's rule: running_var gets the unbiased variance; momentum=None is a cumulative
    average over ``num_batches_tracked``."""
    num_batches_tracked.add_(1)
    factor = 1.0 / float(num_batches_tracked) if momentum is None else momentum
    running_mean.lerp_(mean.to(running_mean.dtype), factor)
    running_var.lerp_((var * (n / (n - 1))).to(running_var.dtype), factor)


_COMPILED: dict[str, Any] = {}


def _compiled() -> tuple[Any, Any]:
    """The reference formulas wrapped by torch.compile, once per process (torch itself traces
    each new input shape on its first call)."""
    if not _COMPILED:
        _COMPILED["fwd"] = torch.compile(bn_forward, dynamic=False)
        _COMPILED["bwd"] = torch.compile(bn_backward, dynamic=False)
    return _COMPILED["fwd"], _COMPILED["bwd"]


def _torch_ops(impl: str) -> tuple[Any, Any]:
    """The torch-ops (forward, backward) pair for ``impl``, same signatures as the reference."""
    if impl == "compiled":
        return _compiled()
    return eager.forward, eager.backward


def _load_unprepared(x: torch.Tensor) -> bool:
    """An ``auto`` layer's first CPU float forward before anyone called ``prepare_kernels``:
    build or load the C kernels now (once per process, with a note); True when they loaded."""
    if cpu.load_attempted() or not x.is_cpu or x.dtype not in (torch.float32, torch.float64):
        return False
    start = time.perf_counter()
    if cpu.load():
        warnings.warn(f"bnexp's BatchNorm loaded its C kernels on its first forward "
                      f"({time.perf_counter() - start:.1f} s); call "
                      "bnexp.norm.prepare_kernels(model) before training to pay that up front",
                      stacklevel=3)
    return cpu.loaded()


class _BatchNormFn(torch.autograd.Function):
    """Training-mode BN on batch statistics with the hand-derived backward.

    ``running`` is (running_mean, running_var, num_batches_tracked, momentum), updated in the
    forward, or None. With ``impl="auto"`` and the C kernels loaded, CPU float inputs take one
    call into them each way; otherwise the torch-ops pair of ``_torch_ops``.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                eps: float, impl: str, running: tuple | None) -> torch.Tensor:
        shape = cpu.layout(x, weight, bias, *(running or ())[:2]) if impl == "auto" else None
        if shape is None and impl == "auto" and _load_unprepared(x):
            shape = cpu.layout(x, weight, bias, *(running or ())[:2])
        if shape is not None:
            y, stats = cpu.forward(x, shape, weight, bias, eps, *(running or (None,) * 4))
            ctx.save_for_backward(x, weight, stats)
        else:
            fwd, _ = _torch_ops(impl)
            wc = None if weight is None else weight.to(compute_dtype(x))
            bc = None if bias is None else bias.to(compute_dtype(x))
            y, mean, invstd, var = fwd(x, wc, bc, eps)
            if running is not None:
                update_running_stats(*running, mean, var, x.numel() // x.shape[1])
            ctx.save_for_backward(x, weight, mean, invstd)
        ctx.impl, ctx.shape = impl, shape
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[Any, ...]:
        # Under create_graph=True, once_differentiable makes a second differentiation raise a
        # clear error; otherwise grad mode is already off and its no_grad wrapper would only
        # cost time (scripts/bench_norm.py prints how much).
        if torch.is_grad_enabled():
            return _backward_once(ctx, dy)
        return _backward(ctx, dy)


def _backward(ctx: Any, dy: torch.Tensor) -> tuple[Any, ...]:
    """The hand-derived gradients (dx, dweight, dbias) of ``_BatchNormFn``."""
    x, weight, *stats = ctx.saved_tensors
    need_dx, need_dw = ctx.needs_input_grad[0], weight is not None and (
        ctx.needs_input_grad[1] or ctx.needs_input_grad[2])
    if ctx.shape is not None:
        dx, dw, db = cpu.backward(dy, x, ctx.shape, weight, stats[0], need_dx, need_dw)
    else:
        mean, invstd = stats
        _, bwd = _torch_ops(ctx.impl)
        wc = None if weight is None else weight.to(compute_dtype(x))
        dx, dgamma, dbeta = bwd(dy, x, wc, mean, invstd)
        dw = dgamma.to(weight.dtype) if need_dw else None
        db = dbeta.to(weight.dtype) if need_dw else None
    return (dx if need_dx else None, dw if ctx.needs_input_grad[1] else None,
            db if ctx.needs_input_grad[2] else None, None, None, None)


_backward_once = once_differentiable(_backward)


class BatchNorm(nn.Module):
    """Batch Normalization over the channel dimension of (N, C, *) inputs.

    Same arguments, buffers, ``state_dict`` keys and update rules as ``torch.nn.BatchNorm2d``:
    biased batch variance to normalise, unbiased variance into ``running_var``, ``momentum=None``
    for a cumulative average, running statistics in eval mode. ``impl`` picks the code that runs
    in training: ``auto`` (the C kernels on CPU float32/float64, loaded by ``prepare_kernels``
    or else on the first such forward; torch ops elsewhere), ``eager`` (torch ops only) or
    ``compiled`` (the reference formulas fused by torch.compile).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, impl: str = "auto") -> None:
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")
        self.impl = impl
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"expected input of shape (N, {self.num_features}, *), got {tuple(x.shape)}")
        if not self.training and self.track_running_stats:
            return self._eval_forward(x)
        if self.training and x.numel() <= x.shape[1]:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {x.size()}"
            )
        running = None
        if self.training and self.track_running_stats:
            running = (self.running_mean, self.running_var, self.num_batches_tracked, self.momentum)
        return _BatchNormFn.apply(x, self.weight, self.bias, self.eps, self.impl, running)

    def _eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalisation by the running statistics: one fused multiply-add (autograd's own)."""
        scale = torch.rsqrt(self.running_var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -self.running_mean * scale
        if self.bias is not None:
            shift = shift + self.bias
        return torch.addcmul(channel_view(shift, x), x, channel_view(scale, x)).to(x.dtype)


def _on_cpu(module: nn.Module) -> bool:
    """Whether a module's parameters and buffers are on the CPU (true when it has none)."""
    return all(t.is_cpu for t in (*module.parameters(), *module.buffers()))


def prepare_kernels(model: nn.Module) -> None:
    """Builds or loads the compiled code ``model``'s BatchNorm layers will run, so that no forward
    pass compiles anything; call it after moving the model to its device, before training.

    ``impl="auto"`` layers on the CPU get the C kernels: built once per source, compiler and CPU
    into bnexp's cache, loaded from there by later processes, and already loaded in this one on a
    second call; where they cannot be built, one warning and the torch-ops path. ``compiled``
    layers get their torch.compile wrappers. Anything else (other norms, CUDA, ``eager``) needs
    nothing, and the call returns at once.
    """
    layers = [m for m in model.modules() if isinstance(m, BatchNorm)]
    if any(m.impl == "auto" and _on_cpu(m) for m in layers):
        cpu.load()
    if any(m.impl == "compiled" for m in layers):
        _compiled()


class SeedBatchNorm(nn.Module):
    """The write-up's literal BN layer, kept faithfully so experiments can show what it gets wrong.

    It differs from real BN in that it (1) normalises over dim 0 only, so a conv input gets a
    separate mean/variance per (C, H, W) position instead of per channel; (2) uses the unbiased
    variance to normalise; (3) keeps no running statistics, so eval mode still uses the
    statistics of whatever batch it is given (predictions depend on the batch, and a batch of
    one gives NaN). Its weight and bias have one entry per feature of dim 1, applied per channel.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=0)
        var = x.var(dim=0)
        x_hat = (x - mean) / torch.sqrt(var + self.eps)
        return channel_view(self.weight, x) * x_hat + channel_view(self.bias, x)


class _AnyBatchNorm(nn.modules.batchnorm._BatchNorm):
    """torch's BatchNorm (its forward, buffers, state_dict keys and update rules) for any
    ``(N, C, *)`` input, so that one class serves the MLP and the CNN."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected input of shape (N, {self.num_features}, *), got {tuple(x.shape)}")


def _reflect(v: torch.Tensor, bound: float) -> torch.Tensor:
    """``v`` folded back into ``[-bound, bound]`` by reflection at both ends (a walk that steps
    d past a bound ends d inside it), so a walk kept in the box does not pile up on its bounds:
    its stationary distribution is uniform on the box. bound 0: 0."""
    if bound <= 0:
        return torch.zeros_like(v)
    u = torch.remainder(v + bound, 4 * bound)
    return torch.where(u > 2 * bound, 4 * bound - u, u) - bound


class NoisyBatchNorm(_AnyBatchNorm):
    """torch's BatchNorm followed by Santurkar et al.'s noise ("How Does Batch Normalization Help
    Optimization?", NeurIPS 2018, Sec. 2.1: every activation of every sample perturbed by "i.i.d.
    noise sampled from a non-zero mean and non-unit variance distribution" that "changes at each
    time step", so that the layer inputs are *less* stable than a plain network's while BN's
    normalisation stays).

    Training forward, with ``bn`` torch's BN output (gamma and beta applied), per channel c:

        y = exp(l[c]) * (bn * u + v) + m[c],   u ~ U(1, noise_var),  v ~ U(-noise_mean, noise_mean)

    ``u`` and ``v`` i.i.d. for every sample and activation (every position of a feature map), from
    the global torch RNG like dropout's masks: a per-sample scale (the activation's standard
    deviation scaled by up to ``noise_var``: non-unit variance) and shift, the same relative to
    the signal at every step. The distribution's centre, scale ``exp(l)`` and shift ``m``, starts
    at BN's (l = m = 0) and moves every training step: ``l`` and ``m`` each take a random-walk step
    of ``noise_change * N(0, 1)``, reflected within ``[-noise_bound, noise_bound]`` (the non-zero,
    ever-changing mean; the scale walks on the log, between e^-1 and e^1 at the default bound 1,
    so it never reaches zero or flips sign). The walk crosses its box in about
    (2 * noise_bound / noise_change)^2 steps (100 at the defaults) and then stays spread uniformly
    over it, so budgets of a few hundred steps or more see the same instability. Each unit's
    input distribution drifts however stable BN keeps its own output. ``noise_change=0`` is the
    same noise held still (norm=noisy_static, the control that separates the instability from
    the noise itself); noise_mean=0, noise_var=1, noise_change=0 is BN exactly.

    Eval mode: no noise and no random numbers; as dropout does, the layer computes the noise's
    expectation, ``bn * s * (1 + noise_var) / 2 + m`` with BN on its running statistics, where
    (s, m) is a running average of the centre's scale and shift with BN's momentum: the centre
    the next layers' running statistics were collected under (the current centre would be ~10
    steps ahead of them at momentum 0.1, a mismatch that only the moving noise would pay).

    Source: the paper describes the noise as quoted above and gives constants (0.5, 1.25 and a
    change of 0.1 per step); the authors' code is not public, so the exact form (uniform
    per-sample scale and shift, a reflected random walk of the centre's log-scale and shift, the
    bound) is bnexp's reading. The default change is 0.2, twice the paper's, because at 0.1 the
    walk moved a 6-layer MLP's units per step no more than plain training does, so the noisy net
    was not less stable than the plain one (configs/norm/noisy.yaml has the numbers). An earlier
    reading with Gaussian per-sample noise of variance >= 1 destroyed the signal (34-54% test
    accuracy on the 6-layer MLP even with the walk off): a test of stability must not also be a
    test of a crippling noise.

    bnexp's invariants: the noise state is one buffer (``noise_params``: l, m and the running
    scale and shift, with ``noise_prev`` and ``noise_draw`` below), so checkpoints hold it and
    the probes' save/restore of buffers covers it; construction draws nothing from the global
    RNG (every norm kind gets the same initial weights at a seed). The walk's step is drawn
    first in each training forward; a forward that draws the same step as the last one (the
    random stream rewound to the same state, as bnexp.landscape does before each of its passes)
    is the same training step again: it starts from the same state (``noise_prev``) instead of
    taking a second step, so repeated passes of one step see identical noise. No host
    synchronisation is involved.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 noise_mean: float = 0.5, noise_var: float = 1.25, noise_change: float = 0.2,
                 noise_bound: float = 1.0) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        if min(noise_mean, noise_change, noise_bound) < 0 or noise_var < 1:
            raise ValueError("noise_mean, noise_change and noise_bound must be non-negative and "
                             "noise_var at least 1")
        self.noise_mean, self.noise_var = noise_mean, noise_var
        self.noise_change, self.noise_bound = noise_change, noise_bound
        # Rows: the centre's log-scale l and shift m (start at BN's), their running scale and
        # shift for eval mode (start at 1 and 0).
        state = torch.zeros(4, num_features)
        state[2] = 1.0
        self.register_buffer("noise_params", state)  # this step's (4, C) noise state
        self.register_buffer("noise_prev", state.clone())  # the last step's starting state
        self.register_buffer("noise_draw", torch.zeros(2, num_features))  # its step (none yet)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, noise_mean={self.noise_mean}, "
                f"noise_var={self.noise_var}, noise_change={self.noise_change}, "
                f"noise_bound={self.noise_bound}")

    @torch.no_grad()
    def _step_noise(self) -> torch.Tensor:
        """This training step's noise state, (4, C): one walk step from the last step's and the
        running averages updated, or the same state again when the drawn step repeats the last
        one."""
        z, again = self._draw()
        start = torch.where(again, self.noise_prev, self.noise_params)
        centre = _reflect(start[:2] + self.noise_change * z, self.noise_bound)
        rate = (self.momentum if self.momentum is not None
                else 1.0 / self.num_batches_tracked.clamp(min=1).to(start.dtype))
        now = torch.stack([centre[0].exp(), centre[1]])
        state = torch.cat([centre, start[2:] + rate * (now - start[2:])])
        self.noise_prev.copy_(start)
        self.noise_params.copy_(state)
        self.noise_draw.copy_(z)
        return state

    def _draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's walk draw, (2, C), and whether it repeats the last step's (a replayed
        step: then the state stays)."""
        z = torch.randn(self.noise_draw.shape, device=self.noise_draw.device,
                        dtype=self.noise_draw.dtype)
        return z, (z == self.noise_draw).all()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if not self.training:  # the noise's expectation, as dropout's eval mode: no randomness
            scale, shift = (channel_view(p, y) for p in self.noise_params[2:].to(y.dtype))
            return y * (scale * (1 + self.noise_var) / 2) + shift
        # A training forward takes the walk's step; a forward without autograd (the probes' and
        # train-mode evaluation's look, bnexp.models.batch_statistics) sees this step's noise
        # distribution without moving it, so a look after a step sees exactly that step's move.
        state = self._step_noise() if torch.is_grad_enabled() else self.noise_params
        return self._add_noise(y, state, torch.rand_like(y), torch.rand_like(y))

    def _add_noise(self, y: torch.Tensor, state: torch.Tensor, ru: torch.Tensor,
                   rv: torch.Tensor) -> torch.Tensor:
        """``exp(l) * (y * u + v) + m`` with ``u = 1 + (noise_var - 1) * ru`` and ``v =
        noise_mean * (2 * rv - 1)`` from two U(0, 1) tensors of y's shape (overwritten), in
        three passes over y's size instead of nine: ``exp(l) * u`` and ``exp(l) * v + m`` in
        place, then one addcmul (the noise of a santurkar CNN run cost more than its
        convolutions)."""
        log_scale, shift = (channel_view(p, y) for p in state[:2].to(y.dtype))
        scale = log_scale.exp().to(y.dtype)  # autocast runs exp in fp32: the output stays y's
        a = ru.mul_(scale * (self.noise_var - 1)).add_(scale)
        b = rv.mul_(scale * (2 * self.noise_mean)).add_(shift - scale * self.noise_mean)
        return torch.addcmul(b, y, a)


class GhostBatchNorm(_AnyBatchNorm):
    """Ghost Batch Normalization (Hoffer, Hubara & Soudry, "Train longer, generalize better",
    NeurIPS 2017, Sec. 4): in training, each virtual batch of ``ghost_batch`` samples inside the
    batch is normalised by its own statistics, with torch's BN formulas (biased variance, eps)
    and the shared gamma/beta.

    A batch of N samples is cut along dim 0 into N // ghost_batch virtual batches (at least one)
    of consecutive samples, as equal as possible: exactly ``ghost_batch`` each when it divides N,
    otherwise the N % ghost_batch remaining samples go one each to the first virtual batches, so
    no virtual batch has fewer than ``ghost_batch`` samples (any batch size works, the probe's and
    the evaluation's included). ``ghost_batch`` >= N is one virtual batch: torch's BN exactly
    (outputs, gradients, running statistics).

    Running statistics: one update per step, as BN's (same momentum, or the cumulative average
    for momentum=None), with the batch mean and the pooled within-virtual-batch unbiased
    variance, sum_g sum_i (x_i - mean_g)^2 / (n - k) over the n values per channel of k virtual
    batches: the average of the virtual batches' unbiased variances when they are equal in size.
    It estimates the variance the training forward normalises by (within a virtual batch), not
    the across-batch spread, which the shift of the virtual-batch means would add. Eval mode:
    BN on the running statistics.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 ghost_batch: int = 16) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        if ghost_batch < 1:
            raise ValueError(f"ghost_batch must be positive, got {ghost_batch}")
        self.ghost_batch = ghost_batch

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_batch={self.ghost_batch}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        k = max(1, x.shape[0] // self.ghost_batch)
        if not self.training or k == 1:
            return super().forward(x)
        chunks = x.tensor_split(k)
        y = torch.cat([F.batch_norm(c, None, None, self.weight, self.bias, True, 0.0, self.eps)
                       for c in chunks])
        self._update_running_stats(x, chunks)
        return y

    @torch.no_grad()
    def _update_running_stats(self, x: torch.Tensor, chunks: tuple[torch.Tensor, ...]) -> None:
        dims = reduce_dims(x)
        n = x.numel() // x.shape[1]
        dtype = self.running_mean.dtype
        squares = sum(c.to(dtype).var(dims, correction=0) * (c.numel() // c.shape[1])
                      for c in chunks)
        update_running_stats(self.running_mean, self.running_var, self.num_batches_tracked,
                             self.momentum, x.to(dtype).mean(dims),
                             squares / (n - len(chunks)) * ((n - 1) / n), n)


def _group_norm(num_features: int, groups: int, eps: float) -> nn.GroupNorm:
    if groups < 1 or num_features % groups:
        raise BnexpError(f"norm.groups={groups} must divide the {num_features} channels of a "
                         "normalised layer (model.width / model.channels); pick a divisor of "
                         f"every width, e.g. `norm.groups=1`.")
    return nn.GroupNorm(groups, num_features, eps=eps)


def _torch_batchnorm(num_features: int, dims: int, eps: float = 1e-5,
                     momentum: float | None = 0.1) -> nn.Module:
    cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
    return cls(num_features, eps=eps, momentum=momentum)


# kind -> builder(num_features, dims, **settings), where settings are exactly the keys of the
# kind's config (bnexp.config.NORM_SCHEMAS) and default to the layers' own defaults. A new
# bnexp.config.NormKind is one entry here (every kind must have one: tested).
NORM_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    NormKind.none: lambda num_features, dims: nn.Identity(),
    NormKind.torch: _torch_batchnorm,
    NormKind.custom: lambda num_features, dims, **settings: BatchNorm(num_features, **settings),
    # The write-up's layer as written, with its own fixed eps.
    NormKind.seed: lambda num_features, dims: SeedBatchNorm(num_features),
    NormKind.noisy: lambda num_features, dims, **settings: NoisyBatchNorm(num_features,
                                                                           **settings),
    NormKind.ghost: lambda num_features, dims, **settings: GhostBatchNorm(num_features,
                                                                           **settings),
    # One group: each sample over all its channels and positions (layer norm, per-channel affine).
    NormKind.layer: lambda num_features, dims, eps=1e-5: _group_norm(num_features, 1, eps),
    NormKind.group: lambda num_features, dims, groups=4, eps=1e-5: _group_norm(num_features,
                                                                               groups, eps),
}


def make_norm(kind: str, num_features: int, dims: int, **settings: Any) -> nn.Module:
    """The norm layer for ``kind`` after a layer with ``num_features`` channels.

    ``dims`` is 1 after a linear layer and 2 after a 2-d convolution; ``settings`` are the keys
    of the kind's config (``eps``, ``momentum``, ``impl``, ``ghost_batch``, ...), each defaulting
    to its layer's default. ``none`` is an Identity so that module names (``fc1.norm``) stay the
    same across variants.
    """
    if kind not in NORM_BUILDERS:
        raise ValueError(f"unknown norm kind {kind!r}")
    return NORM_BUILDERS[kind](num_features, dims, **settings)
