"""Normalization layers: bnexp's own BatchNorm, the write-up's literal one, and the factory.

``BatchNorm`` is a drop-in for ``torch.nn.BatchNorm1d/2d/3d`` whose forward and backward are a
``torch.autograd.Function``: the backward is the analytic BN gradient computed from the saved
input and per-channel statistics (what PyTorch itself saves), not autograd through a composite.

Forward, with ``mu``/``var`` the biased per-channel batch statistics and ``r = 1/sqrt(var+eps)``:
    y = gamma * (x - mu) * r + beta
Backward, with N the number of values per channel, ``db = sum(dy)``, ``dg = sum(dy * xhat)``:
    dx = a/N * (N*dy - db - xhat*dg)  =  dy * a + (x - mu) * b + c,
    a = gamma * r,  b = -a * r * dg / N,  c = -a * db / N
where the reductions use the centred input (x - mu) to avoid cancellation in float32.

Three implementations of these formulas, picked by ``impl``:
- on CPU (float32/float64), ``auto`` calls the C kernels in ``bn_cpu.c`` (``bnexp.kernels``):
  one call each way, two passes over memory each, running statistics updated inside; this is
  what makes ours at least as fast as PyTorch's on CPU (``scripts/bench_norm.py``);
- elsewhere (CUDA, half precision), and with ``impl="eager"``, ``bn_forward_eager`` /
  ``bn_backward_eager``: torch ops arranged so the output is the only full-size buffer;
- ``impl="compiled"``: the plain ``bn_forward``/``bn_backward`` fused by ``torch.compile``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from bnexp import kernels


def _reduce_dims(x: torch.Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


def _channel_view(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, *([1] * (x.dim() - 2)))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Statistics and arithmetic in float32 for half-precision inputs (as under autocast)."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def bn_forward(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
               eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-mode BN as plain formulas: returns (y, mean, invstd, biased var).

    This is what ``torch.compile`` fuses (``impl="compiled"``); ``bn_forward_eager`` computes the
    same values without temporaries for the eager path.
    """
    dims, n = _reduce_dims(x), x.numel() // x.shape[1]
    xs = x.to(_compute_dtype(x))
    mean = xs.mean(dims)
    xc = xs - _channel_view(mean, x)
    var = xc.square().sum(dims) / n
    invstd = torch.rsqrt(var + eps)
    scale = invstd if weight is None else invstd * weight
    y = xc * _channel_view(scale, x)
    if bias is not None:
        y = y + _channel_view(bias, x)
    return y.to(x.dtype), mean, invstd, var


def bn_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None,
                mean: torch.Tensor, invstd: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The analytic BN gradient as plain formulas: (dx, dgamma, dbeta) from x, mean, invstd."""
    dims, n = _reduce_dims(x), x.numel() // x.shape[1]
    xs = x.to(_compute_dtype(x))
    dys = dy.to(xs.dtype)
    sum_dy = dys.sum(dims)
    xc = xs - _channel_view(mean, x)  # centred input: no cancellation in sum(dy * xhat)
    dgamma = (dys * xc).sum(dims) * invstd  # = sum(dy * xhat)
    a = invstd if weight is None else invstd * weight
    b = -a * invstd * dgamma / n
    dx = dys * _channel_view(a, x) + xc * _channel_view(b, x) + _channel_view(-a * sum_dy / n, x)
    return dx.to(x.dtype), dgamma, sum_dy


CHUNK_BYTES = 1 << 20  # eager reductions work on chunks of this size: temporaries stay small


def _channel_dot(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per-channel sum(a * b) over every other dimension, chunk by chunk so the product is
    never a full-size temporary. 2-d inputs reduce with a matrix-vector product, several times
    faster on CPU than ``.sum(0)`` or ``vector_norm(dim=0)`` when C is small."""
    dims = _reduce_dims(a)
    out = torch.zeros(a.shape[1], dtype=dtype, device=a.device)
    ones = torch.ones(min(a.shape[0], _chunk_rows(a)), dtype=dtype, device=a.device) \
        if a.dim() == 2 else None
    for a_c, b_c in _chunks(a, b):
        prod = a_c.to(dtype) * b_c.to(dtype)
        out += ones[: len(prod)] @ prod if ones is not None else prod.sum(dims)
    return out


def _channel_sum(a: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per-channel sum over every other dimension (a matrix-vector product for 2-d inputs)."""
    if a.dim() == 2 and a.dtype == dtype:
        return torch.ones(a.shape[0], dtype=dtype, device=a.device) @ a
    return a.sum(_reduce_dims(a), dtype=dtype)


def _chunk_rows(t: torch.Tensor) -> int:
    return max(1, CHUNK_BYTES // max(1, t[0].numel() * 4))


def _chunks(*tensors: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
    """Slices along dim 0 of about CHUNK_BYTES each (temporaries of that size, not full size)."""
    t0 = tensors[0]
    step = _chunk_rows(t0)
    for i in range(0, t0.shape[0], step):
        yield tuple(t[i:i + step] for t in tensors)


def _channels_last_as_2d(t: torch.Tensor) -> torch.Tensor | None:
    """A channels_last (N, C, *spatial) tensor is an (N*spatial, C) matrix in memory: viewing it
    so turns every per-channel reduction into a column reduction over contiguous rows."""
    if t.dim() < 3 or t.is_contiguous() or t.shape[1] == 1:
        return None
    fmt = torch.channels_last if t.dim() == 4 else torch.channels_last_3d if t.dim() == 5 else None
    if fmt is None or not t.is_contiguous(memory_format=fmt):
        return None
    return t.movedim(1, -1).reshape(-1, t.shape[1])


def _empty_2d(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A new channels_last tensor like ``x`` and its (N*spatial, C) view to compute into: the
    Function must return the base tensor, not a view (an in-place ReLU follows it)."""
    out = torch.empty_like(x, dtype=dtype)
    return out, out.movedim(1, -1).view(-1, x.shape[1])


def bn_forward_eager(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                     eps: float, out: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``bn_forward`` with y's memory as the only full-size buffer (x - mean is built in it).

    Statistics in two passes (mean, then the centred sum of squares): no cancellation, and much
    faster on CPU than the Welford kernel behind ``torch.var_mean``.
    """
    x2d = _channels_last_as_2d(x)
    if x2d is not None:
        y, y2d = _empty_2d(x, _compute_dtype(x))
        _, mean, invstd, var = bn_forward_eager(x2d, weight, bias, eps, out=y2d)
        return y.to(x.dtype), mean, invstd, var
    n = x.numel() // x.shape[1]
    dtype = _compute_dtype(x)
    mean = _channel_sum(x, dtype) / n
    y = torch.sub(x.to(dtype), _channel_view(mean, x), out=out)
    var = _channel_dot(y, y, dtype) / n
    invstd = torch.rsqrt(var + eps)
    y.mul_(_channel_view(invstd if weight is None else invstd * weight, x))
    if bias is not None:
        y.add_(_channel_view(bias, x))
    return y.to(x.dtype), mean, invstd, var


def bn_backward_eager(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None,
                      mean: torch.Tensor, invstd: torch.Tensor,
                      out: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """``bn_backward`` with dx's memory as the only full-size buffer: x - mean is built in it,
    sum(dy * (x - mean)) is reduced chunk by chunk, then dx is finished in place."""
    x2d = _channels_last_as_2d(x)
    if x2d is not None:
        dy2d = dy.movedim(1, -1).reshape(x2d.shape)  # a view when dy is channels_last too
        dx, dx2d = _empty_2d(x, _compute_dtype(x))
        _, dgamma, dbeta = bn_backward_eager(dy2d, x2d, weight, mean, invstd, out=dx2d)
        return dx.to(x.dtype), dgamma, dbeta
    n = x.numel() // x.shape[1]
    dtype = _compute_dtype(x)
    dx = torch.sub(x.to(dtype), _channel_view(mean, x), out=out)  # x - mean, for now
    sum_dy = _channel_sum(dy, dtype)
    dgamma = _channel_dot(dy, dx, dtype) * invstd  # = sum(dy * xhat)
    a = invstd if weight is None else invstd * weight
    b = -a * invstd * dgamma / n
    dx.mul_(_channel_view(b, x)).add_(_channel_view(-a * sum_dy / n, x))
    dx.addcmul_(dy.to(dtype), _channel_view(a, x))
    return dx.to(x.dtype), dgamma, sum_dy


_COMPILED: dict[str, Any] = {}
IMPLS = ("auto", "eager", "compiled")


def _kernels(impl: str) -> tuple[Any, Any]:
    """The torch-ops forward/backward for ``impl``: eager, or torch.compile'd (built once)."""
    if impl != "compiled":
        return bn_forward_eager, bn_backward_eager
    if not _COMPILED:
        _COMPILED["fwd"] = torch.compile(bn_forward, dynamic=False)
        _COMPILED["bwd"] = torch.compile(bn_backward, dynamic=False)
    return _COMPILED["fwd"], _COMPILED["bwd"]


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


class _BatchNormFn(torch.autograd.Function):
    """Training-mode BN on batch statistics with the hand-derived backward.

    ``running`` is (running_mean, running_var, num_batches_tracked, momentum), updated in the
    forward, or None. On CPU with ``impl="auto"`` both directions are one call into the C
    kernels (``bnexp/bn_cpu.c``); otherwise they are the torch-ops functions above.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                eps: float, impl: str, running: tuple | None) -> torch.Tensor:
        shape = kernels.layout(x, weight, bias, *(running or ())[:2]) if impl == "auto" else None
        if shape is not None:
            y, stats = kernels.forward(x, shape, weight, bias, eps, *(running or (None,) * 4))
            ctx.save_for_backward(x, weight, stats)
        else:
            fwd, _ = _kernels(impl)
            wc = None if weight is None else weight.to(_compute_dtype(x))
            bc = None if bias is None else bias.to(_compute_dtype(x))
            y, mean, invstd, var = fwd(x, wc, bc, eps)
            if running is not None:
                update_running_stats(*running, mean, var, x.numel() // x.shape[1])
            ctx.save_for_backward(x, weight, mean, invstd)
        ctx.impl, ctx.shape = impl, shape
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[Any, ...]:
        # Under create_graph=True, once_differentiable makes a second differentiation raise a
        # clear error; otherwise grad mode is already off and its no_grad wrapper only costs
        # time (~4 us, a twentieth of a small layer's forward+backward).
        if torch.is_grad_enabled():
            return _backward_once(ctx, dy)
        return _backward(ctx, dy)


def _backward(ctx: Any, dy: torch.Tensor) -> tuple[Any, ...]:
    """The hand-derived gradients (dx, dweight, dbias) of ``_BatchNormFn``."""
    x, weight, *stats = ctx.saved_tensors
    need_dx, need_dw = ctx.needs_input_grad[0], weight is not None and (
        ctx.needs_input_grad[1] or ctx.needs_input_grad[2])
    if ctx.shape is not None:
        dx, dw, db = kernels.backward(dy, x, ctx.shape, weight, stats[0], need_dx, need_dw)
    else:
        mean, invstd = stats
        _, bwd = _kernels(ctx.impl)
        wc = None if weight is None else weight.to(_compute_dtype(x))
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
    in training: ``auto`` (the C kernels on CPU float32/float64, torch ops elsewhere),
    ``eager`` (torch ops only) or ``compiled`` (torch ops fused by torch.compile).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, impl: str = "auto") -> None:
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
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
            scale = torch.rsqrt(self.running_var + self.eps)
            if self.weight is not None:
                scale = scale * self.weight
            shift = -self.running_mean * scale
            if self.bias is not None:
                shift = shift + self.bias
            return torch.addcmul(_channel_view(shift, x), x, _channel_view(scale, x)).to(x.dtype)
        if self.training and x.numel() <= x.shape[1]:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {x.size()}"
            )
        running = None
        if self.training and self.track_running_stats:
            running = (self.running_mean, self.running_var, self.num_batches_tracked, self.momentum)
        return _BatchNormFn.apply(x, self.weight, self.bias, self.eps, self.impl, running)


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
        return _channel_view(self.weight, x) * x_hat + _channel_view(self.bias, x)


def make_norm(kind: str, num_features: int, dims: int, eps: float = 1e-5,
              momentum: float | None = 0.1, impl: str = "auto") -> nn.Module:
    """The norm layer for ``kind`` after a layer with ``num_features`` channels.

    ``dims`` is 1 after a linear layer and 2 after a 2-d convolution; ``none`` is an Identity so
    that module names (``fc1.norm``) stay the same across variants.
    """
    if kind == "none":
        return nn.Identity()
    if kind == "torch":
        cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
        return cls(num_features, eps=eps, momentum=momentum)
    if kind == "custom":
        return BatchNorm(num_features, eps=eps, momentum=momentum, impl=impl)
    if kind == "seed":
        return SeedBatchNorm(num_features)
    raise ValueError(f"unknown norm kind {kind!r}")
