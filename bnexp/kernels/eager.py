"""The reference BN formulas as torch ops arranged for speed and memory (no compiler needed).

``forward``/``backward`` compute what ``bnexp.norm.bn_forward``/``bn_backward`` compute, with
the output as the only full-size buffer: x - mean is built in the output's memory and finished
in place, and reductions of products run chunk by chunk so no product is a full-size temporary.
A channels_last (N, C, *spatial) tensor is handled as the (N*spatial, C) matrix it is in memory.
This path runs on CUDA, in half precision, where the C kernels cannot be built, and under
``impl="eager"``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from bnexp.kernels.channels import channel_view, compute_dtype, reduce_dims

CHUNK_BYTES = 1 << 20  # reductions of products work on chunks of this size: temporaries stay small


def _chunk_rows(t: torch.Tensor) -> int:
    return max(1, CHUNK_BYTES // max(1, t[0].numel() * 4))


def _chunks(*tensors: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
    """Slices along dim 0 of about CHUNK_BYTES each (temporaries of that size, not full size)."""
    t0 = tensors[0]
    step = _chunk_rows(t0)
    for i in range(0, t0.shape[0], step):
        yield tuple(t[i:i + step] for t in tensors)


def _channel_dot(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per-channel sum(a * b) over every other dimension, chunk by chunk so the product is
    never a full-size temporary. 2-d inputs reduce with a matrix-vector product, which on CPU
    beats ``.sum(0)`` and ``vector_norm(dim=0)`` when C is small (scripts/bench_norm.py)."""
    dims = reduce_dims(a)
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
    return a.sum(reduce_dims(a), dtype=dtype)


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
    autograd Function must return the base tensor, not a view (an in-place ReLU follows it)."""
    out = torch.empty_like(x, dtype=dtype)
    return out, out.movedim(1, -1).view(-1, x.shape[1])


def forward(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
            out: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``bn_forward``: (y, mean, invstd, biased var), y's memory the only full-size buffer.

    Statistics in two passes (mean, then the centred sum of squares): no cancellation, and on
    CPU faster than the Welford kernel behind ``torch.var_mean``.
    """
    x2d = _channels_last_as_2d(x)
    if x2d is not None:
        y, y2d = _empty_2d(x, compute_dtype(x))
        _, mean, invstd, var = forward(x2d, weight, bias, eps, out=y2d)
        return y.to(x.dtype), mean, invstd, var
    n = x.numel() // x.shape[1]
    dtype = compute_dtype(x)
    mean = _channel_sum(x, dtype) / n
    y = torch.sub(x.to(dtype), channel_view(mean, x), out=out)
    var = _channel_dot(y, y, dtype) / n
    invstd = torch.rsqrt(var + eps)
    y.mul_(channel_view(invstd if weight is None else invstd * weight, x))
    if bias is not None:
        y.add_(channel_view(bias, x))
    return y.to(x.dtype), mean, invstd, var


def backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, mean: torch.Tensor,
             invstd: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """``bn_backward``: (dx, dgamma, dbeta), dx's memory the only full-size buffer: x - mean is
    built in it, sum(dy * (x - mean)) is reduced chunk by chunk, then dx is finished in place."""
    x2d = _channels_last_as_2d(x)
    if x2d is not None:
        dy2d = dy.movedim(1, -1).reshape(x2d.shape)  # a view when dy is channels_last too
        dx, dx2d = _empty_2d(x, compute_dtype(x))
        _, dgamma, dbeta = backward(dy2d, x2d, weight, mean, invstd, out=dx2d)
        return dx.to(x.dtype), dgamma, dbeta
    n = x.numel() // x.shape[1]
    dtype = compute_dtype(x)
    dx = torch.sub(x.to(dtype), channel_view(mean, x), out=out)  # x - mean, for now
    sum_dy = _channel_sum(dy, dtype)
    dgamma = _channel_dot(dy, dx, dtype) * invstd  # = sum(dy * xhat)
    a = invstd if weight is None else invstd * weight
    b = -a * invstd * dgamma / n
    dx.mul_(channel_view(b, x)).add_(channel_view(-a * sum_dy / n, x))
    dx.addcmul_(dy.to(dtype), channel_view(a, x))
    return dx.to(x.dtype), dgamma, sum_dy
