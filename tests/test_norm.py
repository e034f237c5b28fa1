"""The BatchNorm stack, layer by layer: the reference formulas of bnexp.norm against
torch.nn.BatchNorm*, each fast path of bnexp.kernels against those formulas, the BatchNorm module
against torch.nn.BatchNorm* end to end (running statistics, eval mode, memory formats), and the
write-up's SeedBatchNorm against a direct transcription of its formula."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from torch import nn

from bnexp import kernels, norm
from bnexp.config import NormImpl, NormKind
from bnexp.kernels import cpu, eager
from bnexp.norm import (
    NORM_BUILDERS,
    BatchNorm,
    SeedBatchNorm,
    bn_backward,
    bn_forward,
    make_norm,
    prepare_kernels,
    update_running_stats,
)

REFERENCE = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
SPATIAL = {2: (), 3: (7,), 4: (5, 6), 5: (3, 4, 5)}
C = 6


def make_input(rank: int, batch: int, dtype: torch.dtype, channels_last: bool,
               seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, C, *SPATIAL[rank], generator=g, dtype=dtype) * 3 + 1.5
    if channels_last and rank == 4:
        x = x.to(memory_format=torch.channels_last)
    if channels_last and rank == 5:
        x = x.to(memory_format=torch.channels_last_3d)
    return x


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float,
                 scale: float | None = None) -> None:
    """Max error relative to the tensor's scale (max |expected|, or ``scale`` if larger).

    Element-wise relative error is meaningless for reductions such as dgamma = sum(dy * xhat),
    whose entries can cancel to near zero: two correct float32 implementations summing in
    different orders then differ by 1e-4 "relative" on such an entry while agreeing to 1e-7 of
    the tensor's scale (measured against float64 truth, both torch and ours reach ~1e-7).
    ``scale`` covers results that cancel entirely: with two values per channel, dx is exactly
    zero in exact arithmetic, so its float32 value is round-off of terms of size |dy|*gamma/std.
    """
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    ref_scale = max(expected.abs().max().item(), scale or 0.0, 1e-30)
    err = ((actual - expected).abs().max() / ref_scale).item()
    assert err <= rel, f"max error {err:.3g} of the tensor's scale exceeds {rel:g}"


def tolerance(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == torch.float32 else 1e-10


def pair(rank: int, dtype: torch.dtype, impl: str = "auto", channels: int = C,
         **kw) -> tuple[nn.Module, nn.Module]:
    ref = REFERENCE[rank](channels, **kw).to(dtype)
    ours = BatchNorm(channels, impl=impl, **kw).to(dtype)
    prepare_kernels(ours)  # as training does: impl=auto then runs the C kernels on this CPU
    if ref.affine:  # non-trivial affine parameters, identical in both
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-0.5, 0.5)
        ours.load_state_dict(ref.state_dict())
    return ref, ours


def forward_backward(ref: nn.Module, ours: nn.Module, x: torch.Tensor, dy=None) -> tuple:
    """Both modules on copies of x, then backward of the same dy (random, like y, by default):
    (y_ref, y_ours, dx_ref, dx_ours)."""
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_ours = ref(x_ref), ours(x_ours)
    dy = torch.randn_like(y_ref) if dy is None else dy
    y_ref.backward(dy)
    y_ours.backward(dy)
    return y_ref, y_ours, x_ref.grad, x_ours.grad


# --- The reference formulas against torch ------------------------------------------------------


def reference(x: torch.Tensor, weight, bias, dy: torch.Tensor, eps: float = 1e-5) -> dict:
    """bnexp.norm's plain formulas, forward and backward, by name."""
    y, mean, invstd, var = bn_forward(x, weight, bias, eps)
    dx, dgamma, dbeta = bn_backward(dy, x, weight, mean, invstd)
    return {"y": y, "mean": mean, "invstd": invstd, "var": var, "dx": dx, "dgamma": dgamma,
            "dbeta": dbeta}


def params(dtype: torch.dtype, channels: int = C, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    weight = torch.rand(channels, generator=g, dtype=dtype) + 0.5
    return weight, torch.rand(channels, generator=g, dtype=dtype) - 0.5


def dx_scale(x: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor | None) -> float:
    """The size of dx's terms: dy * gamma / std (dx itself can cancel to round-off)."""
    term = dy.abs().max() / x.var(reduce_dims(x), correction=0).add(1e-5).sqrt().min()
    return (term * (1 if weight is None else weight.abs().max())).item()


def reduce_dims(x: torch.Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("rank,batch", [(2, 2), (2, 64), (3, 8), (4, 2), (4, 16), (5, 4)])
def test_reference_formulas_match_torch(rank: int, batch: int, affine: bool,
                                        dtype: torch.dtype) -> None:
    """bn_forward/bn_backward/update_running_stats against torch.nn.BatchNorm*: the reference
    is what every fast path is tested against, so it is checked against torch itself."""
    tol = tolerance(dtype)
    ref = REFERENCE[rank](C, affine=affine).to(dtype)
    weight, bias = params(dtype) if affine else (None, None)
    if affine:
        with torch.no_grad():
            ref.weight.copy_(weight)
            ref.bias.copy_(bias)
    x = make_input(rank, batch, dtype, channels_last=False).requires_grad_()
    y_torch = ref(x)
    dy = torch.randn_like(y_torch)
    y_torch.backward(dy)
    ours = reference(x.detach(), weight, bias, dy)
    assert_close(ours["y"], y_torch.detach(), tol)
    assert_close(ours["dx"], x.grad, tol, scale=dx_scale(x, dy, weight))
    if affine:
        assert_close(ours["dgamma"], ref.weight.grad, tol)
        assert_close(ours["dbeta"], ref.bias.grad, tol)
    running = (torch.zeros(C, dtype=dtype), torch.ones(C, dtype=dtype), torch.tensor(0), 0.1)
    update_running_stats(*running, ours["mean"], ours["var"], x.numel() // C)
    assert_close(running[0], ref.running_mean, tol)
    assert_close(running[1], ref.running_var, tol)
    assert int(running[2]) == int(ref.num_batches_tracked) == 1


@pytest.mark.parametrize("rank", [2, 4])
def test_reference_backward_is_autograd_of_reference_forward(rank: int) -> None:
    """The hand-derived bn_backward against autograd through bn_forward, in float64."""
    x = make_input(rank, 8, torch.float64, channels_last=False).requires_grad_()
    weight, bias = (p.requires_grad_() for p in params(torch.float64))
    y, *_ = bn_forward(x, weight, bias, 1e-5)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, weight, bias), dy)
    _, mean, invstd, _ = bn_forward(x.detach(), weight.detach(), bias.detach(), 1e-5)
    ours = bn_backward(dy, x.detach(), weight.detach(), mean, invstd)
    for got, expected in zip(ours, grads, strict=True):
        assert_close(got, expected, 1e-12, scale=1.0)


# --- Each fast path against the reference formulas ----------------------------------------------


def fast_cpu(x: torch.Tensor, weight, bias, dy: torch.Tensor, eps: float = 1e-5) -> dict:
    """The C kernels, forward and backward; running statistics checked separately."""
    shape = cpu.layout(x, weight, bias)
    assert shape is not None, "the C kernels take this input"
    y, stats = cpu.forward(x, shape, weight, bias, eps, None, None, None, 0.1)
    dx, dgamma, dbeta = cpu.backward(dy, x, shape, weight, stats, True, weight is not None)
    mean, invstd, var = stats
    out = {"y": y, "mean": mean, "invstd": invstd, "var": var, "dx": dx}
    if weight is not None:
        out.update(dgamma=dgamma, dbeta=dbeta)
    return out


def fast_eager(x: torch.Tensor, weight, bias, dy: torch.Tensor, eps: float = 1e-5) -> dict:
    y, mean, invstd, var = eager.forward(x, weight, bias, eps)
    dx, dgamma, dbeta = eager.backward(dy, x, weight, mean, invstd)
    return {"y": y, "mean": mean, "invstd": invstd, "var": var, "dx": dx, "dgamma": dgamma,
            "dbeta": dbeta}


FAST_PATHS = {"cpu": fast_cpu, "eager": fast_eager}
needs_cc = pytest.mark.skipif(not cpu.load(), reason="no C compiler: torch-ops path only")
# (shape, channels_last): every rank and memory format, tall and narrow 2-d inputs whose row
# count is no multiple of the rows the C kernels group together (the leftover rows), channel
# counts around the grouping width, and inputs past the threading threshold (32768 values).
FAST_CASES = [((64, C), False), ((2, C), False), ((8, C, 7), False), ((16, C, 5, 6), False),
              ((16, C, 5, 6), True), ((4, C, 3, 4, 5), True), ((1001, 10), False),
              ((4099, 16), False), ((3, 1), False), ((700, 63), False), ((700, 64), False),
              ((700, 65), False), ((256, 1024), False), ((64, 16, 8, 8), True),
              ((64, 16, 8, 8), False), ((20003, 7), False), ((12, 40, 9, 9), True)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("path", [pytest.param("cpu", marks=needs_cc), "eager"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,channels_last", FAST_CASES)
def test_fast_paths_match_the_reference(shape, channels_last, dtype, path, threads) -> None:
    tol = tolerance(dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=dtype) * 3 + 1.5
    dy = torch.randn(shape, generator=g, dtype=dtype)
    if channels_last:
        fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        x, dy = x.to(memory_format=fmt), dy.to(memory_format=fmt)
    weight, bias = params(dtype, shape[1])
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        expected = reference(x, weight, bias, dy)
        got = FAST_PATHS[path](x, weight, bias, dy)
    finally:
        torch.set_num_threads(saved)
    for name, value in got.items():
        scale = dx_scale(x, dy, weight) if name == "dx" else None
        assert_close(value, expected[name], tol, scale=scale)
    assert got["y"].stride() == x.stride() and got["dx"].stride() == x.stride()


@needs_cc
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_c_kernels_update_running_stats_like_the_reference(momentum, dtype) -> None:
    ours = (torch.zeros(C, dtype=dtype), torch.ones(C, dtype=dtype), torch.tensor(0))
    expected = tuple(t.clone() for t in ours)
    for step in range(3):
        x = make_input(4, 8, dtype, channels_last=step == 1, seed=step)
        cpu.forward(x, cpu.layout(x), None, None, 1e-5, *ours, momentum)
        _, mean, _, var = bn_forward(x, None, None, 1e-5)
        update_running_stats(*expected, momentum, mean, var, x.numel() // C)
    for got, want in zip(ours, expected, strict=True):
        assert_close(got, want, tolerance(dtype))


@pytest.mark.parametrize("rank,batch", [(2, 64), (4, 8)])
def test_compiled_reference_matches_the_reference(rank: int, batch: int) -> None:
    """impl=compiled runs the reference formulas through torch.compile: same values."""
    x = make_input(rank, batch, torch.float32, channels_last=False)
    weight, bias = params(torch.float32)
    dy = torch.randn_like(x)
    compiled_fwd, compiled_bwd = norm._compiled()  # what impl=compiled runs
    y, mean, invstd, var = compiled_fwd(x, weight, bias, 1e-5)
    got = {"y": y, "mean": mean, "invstd": invstd, "var": var}
    got.update(zip(("dx", "dgamma", "dbeta"), compiled_bwd(dy, x, weight, mean, invstd),
                   strict=True))
    expected = reference(x, weight, bias, dy)
    for name, value in got.items():
        assert_close(value, expected[name], 1e-5, scale=dx_scale(x, dy, weight) if name == "dx"
                     else None)


# --- The BatchNorm module against torch, end to end -------------------------------------------


CASES = [case for case in itertools.product(
    [2, 3, 4, 5],             # input rank
    [2, 64],                  # batch size
    [False, True],            # channels_last
    [True, False],            # affine
    [True, False],            # track_running_stats
    [0.1, None],              # momentum
) if case[0] >= 4 or not case[2]]  # channels_last exists for 4-d and 5-d inputs only


@pytest.mark.parametrize("impl", ["auto", "eager"])  # auto: the C kernels on this CPU
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rank,batch,channels_last,affine,track,momentum", CASES)
def test_parity_with_torch(rank, batch, channels_last, affine, track, momentum, dtype, impl) -> None:
    tol = tolerance(dtype)
    ref, ours = pair(rank, dtype, impl, affine=affine, track_running_stats=track, momentum=momentum)
    for step in range(3):  # several steps: running statistics accumulate
        x = make_input(rank, batch, dtype, channels_last, seed=step)
        x_ref = x.clone().requires_grad_()
        x_ours = x.clone().requires_grad_()
        y_ref, y_ours = ref(x_ref), ours(x_ours)
        assert_close(y_ours, y_ref, tol)
        dy = torch.randn_like(y_ref)
        y_ref.backward(dy)
        y_ours.backward(dy)
        dims = [0, *range(2, rank)]
        term = dy.abs().max() / x.var(dims, correction=0).add(ref.eps).sqrt().min()
        if affine:
            term = term * ref.weight.abs().max()
        assert_close(x_ours.grad, x_ref.grad, tol, scale=term.item())
        if affine:
            assert_close(ours.weight.grad, ref.weight.grad, tol)
            assert_close(ours.bias.grad, ref.bias.grad, tol)
    if track:
        assert_close(ours.running_mean, ref.running_mean, tol)
        assert_close(ours.running_var, ref.running_var, tol)
        assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 3
    ref.eval()
    ours.eval()
    x = make_input(rank, batch, dtype, channels_last, seed=99)
    assert_close(ours(x), ref(x), tol)


@pytest.mark.parametrize("impl", ["auto", "eager"])
@pytest.mark.parametrize("rank", [2, 4])
def test_gradcheck_float64(rank: int, impl: str) -> None:
    bn = BatchNorm(3, impl=impl).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    x = torch.randn(4, 3, *SPATIAL[rank], dtype=torch.float64, requires_grad=True)

    def fn(inp, w, b):
        return torch.func.functional_call(bn, {"weight": w, "bias": b}, (inp,))

    w = bn.weight.detach().clone().requires_grad_()
    b = bn.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(fn, (x, w, b))


def test_state_dict_round_trip() -> None:
    ref, ours = pair(4, torch.float32)
    ref(torch.randn(8, C, 4, 4))
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    back = nn.BatchNorm2d(C)
    back.load_state_dict(ours.state_dict())
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(back.state_dict()[key], value)


def test_single_value_per_channel_raises_like_torch() -> None:
    x = torch.randn(1, C)
    with pytest.raises(ValueError) as ref_err:
        nn.BatchNorm1d(C)(x)
    with pytest.raises(type(ref_err.value), match="more than 1 value per channel"):
        BatchNorm(C)(x)
    BatchNorm(C).eval()(x)  # eval mode uses running statistics: fine


def test_backward_is_the_hand_derived_function() -> None:
    y = BatchNorm(C)(torch.randn(8, C, requires_grad=True))
    assert type(y.grad_fn).__name__ == "_BatchNormFnBackward"


def test_double_backward_raises_clearly() -> None:
    x = torch.randn(8, C, requires_grad=True)
    (g,) = torch.autograd.grad(BatchNorm(C)(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="twice|double|once_differentiable|not support"):
        g.sum().backward()


def test_seed_batchnorm_matches_the_writeup_formula() -> None:
    torch.manual_seed(0)
    for shape in [(16, C), (16, C, 5, 5)]:
        layer = SeedBatchNorm(C)
        with torch.no_grad():
            layer.weight.uniform_(0.5, 1.5)
            layer.bias.uniform_(-0.5, 0.5)
        x = torch.randn(*shape) * 2 + 1
        # The write-up, transcribed: statistics over dim 0 only, unbiased var, eps on the var.
        mean = x.mean(0)
        var = x.var(0)
        x_norm = (x - mean) / torch.sqrt(var + 1e-5)
        view = (1, C) + (1,) * (x.dim() - 2)
        expected = layer.weight.view(view) * x_norm + layer.bias.view(view)
        torch.testing.assert_close(layer(x), expected)
        layer.eval()
        torch.testing.assert_close(layer(x), expected)  # no running statistics: same in eval
        assert not list(layer.buffers())


@pytest.mark.parametrize("kind,dims,cls", [("torch", 1, nn.BatchNorm1d), ("torch", 2, nn.BatchNorm2d),
                                           ("custom", 2, BatchNorm), ("seed", 1, SeedBatchNorm),
                                           ("none", 1, nn.Identity)])
def test_make_norm(kind: str, dims: int, cls: type) -> None:
    assert isinstance(make_norm(kind, C, dims), cls)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_under_autocast(dtype: torch.dtype) -> None:
    """bf16/fp16 inputs: output and dx in the input dtype, statistics and parameters in float32."""
    ref, ours = pair(4, torch.float32)
    x = (torch.randn(16, C, 5, 5) * 2 + 1).to(dtype)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        y_ref, y_ours = ref(x_ref), ours(x_ours)
    assert y_ours.dtype == dtype and ours.running_mean.dtype == torch.float32
    assert_close(y_ours.float(), y_ref.float(), 1e-2)  # one half-precision rounding apart
    dy = torch.randn_like(y_ref)
    y_ref.backward(dy)
    y_ours.backward(dy)
    assert x_ours.grad.dtype == dtype
    assert_close(x_ours.grad.float(), x_ref.grad.float(), 1e-2)
    assert_close(ours.weight.grad, ref.weight.grad, 1e-4)
    assert_close(ours.running_var, ref.running_var, 1e-6)


@pytest.mark.parametrize("rank,batch", [(2, 64), (4, 8)])
def test_compiled_path_matches_torch(rank: int, batch: int) -> None:
    """The torch.compile'd kernels compute the same functions as the eager ones."""
    ref, ours = pair(rank, torch.float32, impl="compiled")
    for step in range(2):
        x = make_input(rank, batch, torch.float32, channels_last=False, seed=step)
        y_ref, y_ours, dx_ref, dx_ours = forward_backward(ref, ours, x)
        assert_close(y_ours, y_ref, 1e-5)
        assert_close(dx_ours, dx_ref, 1e-5)
        assert_close(ours.weight.grad, ref.weight.grad, 1e-5)
    assert_close(ours.running_var, ref.running_var, 1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("rank,dtype", [(2, torch.float32), (4, torch.float32), (4, torch.float64)])
def test_parity_on_cuda(rank: int, dtype: torch.dtype) -> None:
    ref, ours = (m.cuda() for m in pair(rank, dtype))
    x = make_input(rank, 32, dtype, channels_last=rank == 4).cuda()
    y_ref, y_ours, dx_ref, dx_ours = forward_backward(ref, ours, x)
    assert_close(y_ours, y_ref, tolerance(dtype))
    assert_close(dx_ours, dx_ref, tolerance(dtype) * 10)
    assert_close(ours.weight.grad, ref.weight.grad, tolerance(dtype) * 10)
    assert_close(ours.running_var, ref.running_var, tolerance(dtype))


def test_channels_last_output_takes_an_inplace_activation() -> None:
    """The Function's output must not be a view: a ReLU(inplace=True) follows it in models."""
    x = make_input(4, 8, torch.float32, channels_last=True)
    ref, ours = pair(4, torch.float32)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_ours = torch.relu_(ref(x_ref)), torch.relu_(ours(x_ours))
    assert y_ours.is_contiguous(memory_format=torch.channels_last)
    dy = torch.randn_like(y_ref)
    y_ref.backward(dy)
    y_ours.backward(dy)
    assert_close(x_ours.grad, x_ref.grad, 1e-5)


def test_gradient_in_another_memory_format() -> None:
    """dy need not share x's layout: a contiguous dy for a channels_last x, or an expanded one."""
    x = make_input(4, 8, torch.float32, channels_last=True)
    for make_dy in (lambda y: torch.randn(y.shape), lambda y: torch.ones(()).expand(y.shape)):
        ref, ours = pair(4, torch.float32)
        _, _, dx_ref, dx_ours = forward_backward(ref, ours, x, make_dy(x))
        assert_close(dx_ours, dx_ref, 1e-5, scale=1.0)
        # dy = 1 makes dgamma = sum(xhat) = 0: round-off of N terms of size ~1 (N = 240 here)
        assert_close(ours.weight.grad, ref.weight.grad, 1e-5, scale=x[:, 0].numel())


# --- Which path runs, and when the C kernels are built ------------------------------------------


@needs_cc
def test_cpu_float_inputs_run_the_c_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """impl=auto on CPU float32/float64 goes through bn_cpu.c both ways; bf16 does not."""
    calls = []
    for name in ("forward", "backward"):
        real = getattr(cpu, name)
        monkeypatch.setattr(cpu, name, lambda *a, _f=real, _n=name: calls.append(_n) or _f(*a))
    for dtype in (torch.float32, torch.float64):
        BatchNorm(C).to(dtype)(make_input(4, 8, dtype, True).requires_grad_()).sum().backward()
    assert calls == ["forward", "backward"] * 2
    BatchNorm(C)(make_input(4, 8, torch.bfloat16, False).requires_grad_()).sum().backward()
    BatchNorm(C, impl="eager")(make_input(2, 8, torch.float32, False))
    assert len(calls) == 4


@pytest.fixture
def fresh_process(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """The kernels' loader as in a new process, with an empty build cache in tmp_path."""
    monkeypatch.setenv("BNEXP_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu, "_TRIED", [])
    monkeypatch.setattr(cpu, "_FNS", {})
    return tmp_path


@needs_cc
def test_unprepared_layer_loads_the_kernels_on_its_first_forward(fresh_process,
                                                                 monkeypatch) -> None:
    """A BatchNorm used on its own (nobody called prepare_kernels) builds the C kernels on its
    first CPU float forward, once, with one note, and that forward already runs them."""
    calls = []
    real = cpu.forward
    monkeypatch.setattr(cpu, "forward", lambda *a: calls.append(1) or real(*a))
    ref, ours = nn.BatchNorm1d(C), BatchNorm(C)
    x = make_input(2, 64, torch.float32, channels_last=False)
    with pytest.warns(UserWarning, match="loaded its C kernels on its first forward") as notes:
        assert_close(ours(x), ref(x), 1e-5)
    assert len(notes) == 1 and cpu.loaded() and calls == [1]
    assert len(list((fresh_process / "kernels").glob("*.so"))) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second note, from this layer or another
        assert_close(BatchNorm(C)(x), nn.BatchNorm1d(C)(x), 1e-5)
        assert_close(ours(x), ref(x), 1e-5)
    assert calls == [1, 1, 1]
    assert_close(ours.running_var, ref.running_var, 1e-5)


@needs_cc
def test_prepare_kernels_pays_the_build_up_front(fresh_process) -> None:
    """prepare_kernels builds before any forward; the forwards then say nothing."""
    model = nn.Sequential(nn.Linear(3, C), BatchNorm(C))
    prepare_kernels(model)
    assert cpu.loaded() and len(list((fresh_process / "kernels").glob("*.so"))) == 1
    x = make_input(2, 64, torch.float32, channels_last=False)
    assert cpu.layout(x) is not None  # the next forward takes the C kernels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model[1](x)


def test_unprepared_layer_without_a_compiler_runs_torch_ops(fresh_process, monkeypatch) -> None:
    """Where the kernels cannot be built, the first forward warns once that they are
    unavailable and every forward runs the torch-ops path, same results."""
    monkeypatch.setenv("CC", str(fresh_process / "no-such-cc"))
    ref, ours = nn.BatchNorm1d(C), BatchNorm(C)
    x = make_input(2, 64, torch.float32, channels_last=False)
    with pytest.warns(UserWarning, match="C BatchNorm kernel is unavailable") as notes:
        assert_close(ours(x), ref(x), 1e-5)
    assert len(notes) == 1 and not cpu.loaded()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_close(ours(x), ref(x), 1e-5)


def test_prepare_kernels_is_a_no_op_without_c_layers(fresh_process, monkeypatch) -> None:
    """Models whose norm layers cannot use the C kernels load nothing."""
    monkeypatch.setattr(cpu, "load", lambda: pytest.fail("loaded the C kernels"))
    for kind in ("none", "torch", "seed"):
        prepare_kernels(nn.Sequential(nn.Linear(3, C), make_norm(kind, C, 1)))
    prepare_kernels(nn.Sequential(make_norm("custom", C, 1, impl="eager")))
    if torch.cuda.is_available():
        prepare_kernels(BatchNorm(C).cuda())


@needs_cc
def test_kernel_build_is_cached_per_source(fresh_process, monkeypatch) -> None:
    first = cpu.build()
    assert first.parent == fresh_process / "kernels" and first.stat().st_size > 0
    mtime = first.stat().st_mtime_ns
    assert cpu.build() == first and first.stat().st_mtime_ns == mtime  # not rebuilt
    assert list(first.parent.iterdir()) == [first]  # no temporary files left behind
    # The header is part of the source: editing it gives a new build.
    sources = fresh_process / "src"
    sources.mkdir()
    for path in cpu.SOURCES:
        (sources / path.name).write_bytes(path.read_bytes())
    (sources / "bn_cpu_impl.h").write_text((sources / "bn_cpu_impl.h").read_text() + "\n/* */\n")
    monkeypatch.setattr(cpu, "SOURCE", sources / "bn_cpu.c")
    monkeypatch.setattr(cpu, "SOURCES", tuple(sources / p.name for p in cpu.SOURCES))
    second = cpu.build()
    assert second != first and second.exists()


def test_without_a_compiler_falls_back_to_torch_ops(fresh_process, monkeypatch) -> None:
    """No C compiler: one warning from prepare_kernels, then the torch-ops path, same results."""
    monkeypatch.setenv("CC", str(fresh_process / "no-such-cc"))
    ref, ours = REFERENCE[4](C), BatchNorm(C)
    with pytest.warns(UserWarning, match="C BatchNorm kernel is unavailable.*no C compiler"):
        prepare_kernels(ours)
    assert not cpu.loaded() and not kernels.available()
    x = make_input(4, 8, torch.float32, channels_last=True)
    assert cpu.layout(x) is None
    assert_close(ours(x), ref(x), 1e-5)
    assert_close(ours.running_var, ref.running_var, 1e-5)


def test_every_config_choice_is_built() -> None:
    assert set(NORM_BUILDERS) == set(NormKind), "every norm kind needs a builder"
    for impl in NormImpl:
        BatchNorm(C, impl=impl)
    with pytest.raises(ValueError, match="impl must be one of auto, eager, compiled"):
        BatchNorm(C, impl="fast")


@pytest.mark.parametrize("impl", ["auto", "eager"])
def test_gradients_only_where_required(impl: str) -> None:
    """A frozen input (first layer) or frozen affine parameters: the other gradients still match."""
    x = make_input(4, 8, torch.float32, channels_last=True)
    ref, ours = pair(4, torch.float32, impl)
    dy = torch.randn(x.shape)
    ref(x).backward(dy)
    ours(x).backward(dy)
    assert_close(ours.weight.grad, ref.weight.grad, 1e-5)
    assert_close(ours.bias.grad, ref.bias.grad, 1e-5)
    ref, ours = pair(4, torch.float32, impl)
    for m in (ref, ours):
        m.weight.requires_grad_(False)
        m.bias.requires_grad_(False)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref(x_ref).backward(dy)
    ours(x_ours).backward(dy)
    assert ours.weight.grad is None and ours.bias.grad is None
    assert_close(x_ours.grad, x_ref.grad, 1e-5)
