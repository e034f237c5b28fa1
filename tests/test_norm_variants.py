"""The norm variants of issue 15 (noisy, ghost, layer, group): parity with torch's layers where
a setting reduces one to another, hand formulas otherwise, the noise's recipe and its
invariants (seeded, restorable, replayable, no randomness in eval), config errors, and each
variant end to end through `bnexp train`, a sweep and `bnexp report`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from bnexp import metrics
from bnexp.errors import BnexpError
from bnexp.hydra_app import compose_config
from bnexp.landscape import measure_ics, measure_landscape
from bnexp.models import batch_statistics, build_model
from bnexp.norm import GhostBatchNorm, NoisyBatchNorm, make_norm
from bnexp.probes import hidden_blocks, layer_bias, probed_layers
from tests.conftest import FIXED_THREADS, TINY, cli_train, make_digits, only_run

C = 6
VARIANTS = ["noisy", "ghost", "layer", "group"]
EXACT = {"rtol": 0, "atol": 0}
NO_NOISE = {"noise_mean": 0.0, "noise_var": 1.0, "noise_change": 0.0}


def make_input(dims: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, C) if dims == 1 else (n, C, 5, 4)
    return torch.randn(*shape, generator=g) * 3 + 1


def randomise_affine(*layers: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    weight, bias = torch.rand(C, generator=g) + 0.5, torch.randn(C, generator=g)
    for layer in layers:
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)


def run_steps(layer: nn.Module, xs: list[torch.Tensor]) -> list[tuple[torch.Tensor, ...]]:
    """Training steps on each x: (output, dx, dweight, dbias) with a fixed upstream gradient."""
    out = []
    for x in xs:
        x = x.clone().requires_grad_()
        layer.weight.grad = layer.bias.grad = None
        y = layer(x)
        (y * torch.linspace(-1, 2, y.numel()).view_as(y)).sum().backward()
        out.append((y.detach(), x.grad, layer.weight.grad.clone(), layer.bias.grad.clone()))
    return out


def torch_bn(dims: int, **kw) -> nn.Module:
    return (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(C, **kw)


def assert_same_as_torch_bn(ours: nn.Module, dims: int, n: int, momentum: float | None) -> None:
    """Training steps (outputs, all gradients), running statistics, then eval: bit-identical."""
    ref = torch_bn(dims, momentum=momentum)
    randomise_affine(ours, ref)
    xs = [make_input(dims, n, seed) for seed in range(3)]
    for a, b in zip(run_steps(ours, xs), run_steps(ref, xs), strict=True):
        for u, v in zip(a, b, strict=True):
            torch.testing.assert_close(u, v, **EXACT)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(ref, name), **EXACT)
    ours.eval()
    ref.eval()
    torch.testing.assert_close(ours(xs[0]), ref(xs[0]), **EXACT)


# ---- ghost -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("extra", [0, 5])  # ghost_batch == batch, > batch
@pytest.mark.parametrize("momentum", [0.1, None])
def test_ghost_with_one_virtual_batch_is_torch_bn(dims: int, extra: int,
                                                  momentum: float | None) -> None:
    n = 12
    assert_same_as_torch_bn(GhostBatchNorm(C, momentum=momentum, ghost_batch=n + extra), dims, n,
                            momentum)


def hand_ghost(x: torch.Tensor, sizes: list[int], weight: torch.Tensor, bias: torch.Tensor,
               eps: float) -> torch.Tensor:
    """Each virtual batch normalised by its own biased statistics (the BN paper's formulas)."""
    dims = [0, *range(2, x.dim())]
    view = (1, C) + (1,) * (x.dim() - 2)
    out = []
    for chunk in x.split(sizes):
        mean = chunk.mean(dims, keepdim=True)
        var = chunk.var(dims, unbiased=False, keepdim=True)
        out.append((chunk - mean) / torch.sqrt(var + eps) * weight.view(view) + bias.view(view))
    return torch.cat(out)


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("n,ghost,sizes", [(48, 16, [16, 16, 16]),  # divides: exactly ghost each
                                           (50, 16, [17, 17, 16]),  # remainder spread, none < 16
                                           (31, 16, [31])])  # under two ghosts: one batch
def test_ghost_normalises_each_virtual_batch(dims: int, n: int, ghost: int, sizes: list[int]) -> None:
    layer = GhostBatchNorm(C, eps=1e-5, momentum=0.3, ghost_batch=ghost).double()
    randomise_affine(layer)
    x = make_input(dims, n).double().requires_grad_()
    y = layer(x)
    x_ref = x.detach().clone().requires_grad_()
    w_ref = layer.weight.detach().clone().requires_grad_()
    b_ref = layer.bias.detach().clone().requires_grad_()
    expected = hand_ghost(x_ref, sizes, w_ref, b_ref, 1e-5)
    torch.testing.assert_close(y, expected)
    dy = torch.randn_like(y)
    (y * dy).sum().backward()
    (expected * dy).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(layer.weight.grad, w_ref.grad)
    torch.testing.assert_close(layer.bias.grad, b_ref.grad)
    # Running statistics: one momentum update with the batch mean and the pooled
    # within-virtual-batch unbiased variance.
    dims_ = [0, *range(2, x.dim())]
    chunks = x.detach().split(sizes)
    per_channel = x.numel() // x.shape[0] // C
    squares = sum(((c - c.mean(dims_, keepdim=True)) ** 2).sum(dims_) for c in chunks)
    pooled = squares / (n * per_channel - len(sizes))
    torch.testing.assert_close(layer.running_mean, 0.3 * x.detach().mean(dims_))
    torch.testing.assert_close(layer.running_var, 0.7 + 0.3 * pooled)
    assert int(layer.num_batches_tracked) == 1
    layer.eval()
    ref = torch_bn(dims, eps=1e-5).double().eval()
    ref.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x.detach()), ref(x.detach()))


# ---- noisy -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_noisy_without_noise_is_torch_bn(dims: int, momentum: float | None) -> None:
    assert_same_as_torch_bn(NoisyBatchNorm(C, momentum=momentum, **NO_NOISE), dims, 10, momentum)


def test_noisy_eval_is_the_noise_expectation_and_draws_nothing() -> None:
    layer, ref = NoisyBatchNorm(C), nn.BatchNorm2d(C)
    randomise_affine(layer, ref)
    for seed in range(3):  # some steps, so the running statistics and the noise have moved
        x = make_input(2, 8, seed)
        layer(x)
        ref(x)
    layer.eval()
    ref.eval()
    x = make_input(2, 8, 9)
    state = torch.get_rng_state()
    y = layer(x)
    assert torch.equal(torch.get_rng_state(), state), "eval mode drew random numbers"
    scale, shift = (p.view(1, C, 1, 1) for p in layer.noise_params[2:])
    assert shift.abs().max() > 0, "the centre never moved"
    torch.testing.assert_close(y, ref(x) * scale * (1 + 1.25) / 2 + shift)
    torch.testing.assert_close(layer(x), y, **EXACT)


@pytest.mark.parametrize("dims", [1, 2])
def test_noise_has_the_documented_distribution(dims: int) -> None:
    """With BN's output held at 1 (gamma 0, beta 1) and the walk off, each channel's output is
    exp(l) * (u + v) + m with u ~ U(1, 1.25), v ~ U(-0.5, 0.5) i.i.d. over samples (and
    positions), around the channel's centre (l, m)."""
    torch.manual_seed(0)
    layer = NoisyBatchNorm(C, noise_change=0.0)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.fill_(1.0)
        layer.noise_params[:2] = torch.rand(2, C) * 1.8 - 0.9
    log_scale, centre = layer.noise_params[:2].clone()
    x = torch.randn(40_000, C) if dims == 1 else torch.randn(400, C, 10, 10)
    y = layer(x).transpose(0, 1).reshape(C, -1)
    scale = log_scale.exp()
    torch.testing.assert_close(y.mean(1), scale * 1.125 + centre, atol=0.01, rtol=0)
    torch.testing.assert_close(y.var(1), scale**2 * (0.25**2 / 12 + 1 / 12), atol=0.01, rtol=0)
    low, high = scale * 0.5 + centre, scale * 1.75 + centre
    assert ((y.min(1).values >= low - 1e-5) & (y.max(1).values <= high + 1e-5)).all()
    corr = torch.corrcoef(torch.stack([y[0, :-1], y[0, 1:]]))[0, 1]
    assert abs(corr) < 0.03, "neighbouring values (samples, positions) are not independent"
    torch.testing.assert_close(layer.noise_params[:2], torch.stack([log_scale, centre]), **EXACT)


def test_noise_centre_walks_in_its_box_and_eval_follows_its_running_average() -> None:
    torch.manual_seed(0)
    layer = NoisyBatchNorm(2000, noise_change=0.1)
    assert torch.equal(layer.noise_params[:2], torch.zeros(2, 2000)), "the centre starts at BN's"
    x = torch.randn(4, 2000)
    layer(x)
    step = layer.noise_params[:2].clone()
    assert step.std().item() == pytest.approx(0.1, rel=0.05) and abs(step.mean()) < 0.005
    running = torch.tensor([1.0, 0.0]).unsqueeze(1) + 0.1 * (
        torch.stack([step[0].exp(), step[1]]) - torch.tensor([1.0, 0.0]).unsqueeze(1))
    for _ in range(1500):
        layer(x)
        now = layer.noise_params[:2]
        running += 0.1 * (torch.stack([now[0].exp(), now[1]]) - running)
    centre = layer.noise_params[:2]
    assert centre.abs().max() <= 1.0, "the walk left its box"
    # Reflected in [-1, 1], it spreads uniformly over the box: std 1 / sqrt(3).
    assert centre.std().item() == pytest.approx(3 ** -0.5, rel=0.05)
    assert abs(centre.mean()) < 0.05
    torch.testing.assert_close(layer.noise_params[2:], running, rtol=1e-4, atol=1e-5)
    layer.eval()
    frozen = layer.noise_params.clone()
    layer(x)
    assert torch.equal(frozen, layer.noise_params), "eval mode moved the noise"


@pytest.mark.parametrize("value", [0.99, -1.0])
def test_noise_var_below_one_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match="noise_var at least 1"):
        NoisyBatchNorm(C, noise_var=value)


def test_a_repeated_step_sees_the_same_noise() -> None:
    """A forward from the random state of the last one is the same step (bnexp.landscape rewinds
    the stream before each of its passes): same output and parameters, no second walk step."""
    torch.manual_seed(0)
    layer = NoisyBatchNorm(C)
    x = make_input(2, 8)
    layer(x)  # one ordinary step first
    state = torch.get_rng_state()
    y = layer(x)
    params = layer.noise_params.clone()
    for _ in range(2):
        torch.set_rng_state(state)
        torch.testing.assert_close(layer(x), y, **EXACT)
        torch.testing.assert_close(layer.noise_params, params, **EXACT)
    layer(x)  # a new random state: the next step
    assert not torch.equal(layer.noise_params, params)


def test_noisy_construction_draws_nothing() -> None:
    torch.manual_seed(5)
    state = torch.get_rng_state()
    a = NoisyBatchNorm(C)
    assert torch.equal(torch.get_rng_state(), state)
    assert {"noise_params", "noise_prev", "noise_draw"} <= set(a.state_dict())


def test_noisy_models_walk_per_layer_and_keep_the_paired_initial_weights() -> None:
    torch.manual_seed(3)
    plain = build("mlp", "torch")
    torch.manual_seed(3)
    noisy = build("mlp", "noisy")
    for (name, p), (_, q) in zip(plain.named_parameters(), noisy.named_parameters(), strict=True):
        assert torch.equal(p, q), name
    noisy(torch.randn(8, 1, 12, 12))
    params = [b.norm.noise_params[:2] for b in hidden_blocks(noisy).values()]
    assert not torch.equal(params[0], params[1]), "the layers' walks are not independent"


# ---- layer and group ---------------------------------------------------------------------------

def hand_group_norm(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor,
                    eps: float) -> torch.Tensor:
    """Each sample's channels in ``groups`` consecutive groups, each normalised over its channels
    and positions by its biased statistics; then the per-channel affine."""
    n = x.shape[0]
    g = x.reshape(n, groups, -1)
    mean = g.mean(2, keepdim=True)
    var = g.var(2, unbiased=False, keepdim=True)
    view = (1, C) + (1,) * (x.dim() - 2)
    return ((g - mean) / torch.sqrt(var + eps)).reshape(x.shape) * weight.view(view) + bias.view(view)


@pytest.mark.parametrize("dims,kind,groups", [
    (1, "layer", 1), (1, "group", 2), (1, "group", 3),
    (2, "layer", 1), (2, "group", 2), (2, "group", 3), (2, "group", C),  # C groups: instance norm
])
def test_layer_and_group_match_the_hand_formula(dims: int, kind: str, groups: int) -> None:
    settings = {"groups": groups} if kind == "group" else {}
    layer = make_norm(kind, C, dims, eps=1e-5, **settings).double()
    randomise_affine(layer)
    x = make_input(dims, 7).double()
    expected = hand_group_norm(x, groups, layer.weight, layer.bias, 1e-5)
    torch.testing.assert_close(layer(x), expected)
    layer.eval()  # no batch dependence: eval is the same function, and each sample is alone
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer(x[:1]), expected[:1])


@pytest.mark.parametrize("dims", [1, 2])
def test_group_with_one_group_is_layer(dims: int) -> None:
    group, layer = make_norm("group", C, dims, groups=1), make_norm("layer", C, dims)
    randomise_affine(group, layer)
    x = make_input(dims, 5)
    torch.testing.assert_close(group(x), layer(x), **EXACT)


def test_layer_after_a_linear_map_is_torch_layernorm() -> None:
    """On (N, C), one group over the channels is nn.LayerNorm(C) (per-feature affine)."""
    ours, ref = make_norm("layer", C, 1), nn.LayerNorm(C)
    randomise_affine(ours, ref)
    x = make_input(1, 9)
    torch.testing.assert_close(ours(x), ref(x))


def test_groups_must_divide_the_channels() -> None:
    with pytest.raises(BnexpError, match=r"norm.groups=4 must divide the 6 channels"):
        make_norm("group", C, 2, groups=4)


# ---- configs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,keys", [
    ("noisy", ["eps", "momentum", "noise_mean", "noise_var", "noise_change", "noise_bound"]),
    ("ghost", ["eps", "momentum", "ghost_batch"]), ("layer", ["eps"]), ("group", ["eps", "groups"]),
])
def test_each_variant_has_exactly_its_keys(kind: str, keys: list[str]) -> None:
    cfg = compose_config([f"norm={kind}"])
    assert list(cfg.norm) == ["kind", *keys]
    assert cfg.name == f"mnist-cnn-{kind}"


def test_the_noise_defaults_match_the_layer_s() -> None:
    norm = compose_config(["norm=noisy"]).norm
    assert (norm.noise_mean, norm.noise_var, norm.noise_change) == (0.5, 1.25, 0.2)
    layer = build("mlp", "noisy").blocks.fc1.norm
    assert (layer.noise_mean, layer.noise_var, layer.noise_change, layer.noise_bound, layer.eps,
            layer.momentum) == (0.5, 1.25, 0.2, 1.0, 1e-5, 0.1)
    assert compose_config(["norm=noisy_static"]).norm.noise_change == 0.0
    assert build("mlp", "ghost").blocks.fc1.norm.ghost_batch == 16


@pytest.mark.parametrize("overrides,needle", [
    (["norm=layer", "norm.momentum=0.1"], "no key `norm.momentum`; `norm.momentum` applies only "
                                          "to norm=torch, norm=custom, norm=noisy and norm=ghost"),
    (["norm=group", "norm.ghost_batch=8"], "`norm.ghost_batch` applies only to norm=ghost"),
    (["norm=torch", "norm.groups=2"], "`norm.groups` applies only to norm=group"),
    (["norm=group", "norm.groups=3"], "norm.groups=3 must divide the channels of every normalised "
                                      "layer (model.channels=[16, 32, 64]); use a divisor of 16, "
                                      "e.g. `norm.groups=2`"),
    (["norm=group", "model=mlp", "norm.groups=8"], "(model.width=100); use a divisor of 100, "
                                                   "e.g. `norm.groups=5`"),
    (["norm=group", "norm.groups=0"], "norm.groups=0 must be positive"),
    (["norm=group", "model=mlp", "norm.groups=100"], "norm.groups=100 leaves one unit per group"),
    (["norm=ghost", "norm.ghost_batch=1"], "norm.ghost_batch=1 must be at least 2"),
    (["norm=noisy", "norm.noise_var=0.5"], "norm.noise_var=0.5 must be at least 1"),
    (["norm=noisy_static", "norm.noise_mean=-1"], "norm.noise_mean=-1.0 must be non-negative"),
])
def test_bad_variant_settings_are_user_errors(overrides: list[str], needle: str) -> None:
    with pytest.raises(BnexpError) as info:
        compose_config(overrides)
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("kind,cls", [("noisy", NoisyBatchNorm), ("ghost", GhostBatchNorm),
                                       ("layer", nn.GroupNorm), ("group", nn.GroupNorm)])
@pytest.mark.parametrize("dims", [1, 2])
def test_make_norm_builds_each_variant(kind: str, cls: type, dims: int) -> None:
    layer = make_norm(kind, 8, dims)
    assert type(layer) is cls and layer.weight.shape == layer.bias.shape == (8,)
    if kind in ("layer", "group"):
        assert (layer.num_groups, layer.eps) == ((1 if kind == "layer" else 4), 1e-5)
        assert not list(layer.buffers())  # nothing from the batch is kept


# ---- in models, under the probes ---------------------------------------------------------------

def build(arch: str, norm: str, **model_kw) -> nn.Module:
    cfg = compose_config([f"model={arch}", f"norm={norm}", "model.width=16", "model.depth=2",
                          "model.channels=[4,8]"])
    return build_model(OmegaConf.merge(cfg.model, model_kw), cfg.norm, (1, 12, 12), 10)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("norm", VARIANTS)
def test_variants_sit_at_block_norm_with_a_bias_the_probes_read(arch: str, norm: str) -> None:
    model = build(arch, norm)
    blocks = hidden_blocks(model)
    assert list(blocks) == (["fc1", "fc2"] if arch == "mlp" else ["conv1", "conv2"])
    for name, block in blocks.items():
        assert block.affine.bias is None
        assert layer_bias(model, name) is block.norm.bias
    model(torch.randn(5, 1, 12, 12)).sum().backward()
    model.eval()
    assert model(torch.randn(1, 1, 12, 12)).shape == (1, 10)  # a batch of one in eval mode


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_batch_statistics_restores_the_noise_and_draws_nothing(arch: str) -> None:
    torch.manual_seed(0)
    model = build(arch, "noisy")
    x = torch.randn(8, 1, 12, 12)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    state = torch.get_rng_state()
    with batch_statistics(model):
        noisy = model(x)
    assert torch.equal(torch.get_rng_state(), state)
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), k
    model.eval()
    assert not torch.allclose(noisy, model(x)), "the probes' forward saw no noise"


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_ics_and_landscape_passes_see_the_same_noise(arch: str) -> None:
    """measure_ics with a zero learning rate compares W with itself: G' = G exactly only if every
    pass sees the same noise; likewise the landscape at a vanishing step."""
    torch.manual_seed(0)
    model = build(arch, "noisy")
    x, y = torch.randn(16, 1, 12, 12), torch.randint(0, 10, (16,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    ics = measure_ics(model, optimizer, x, y, probed_layers(model))
    for layer in probed_layers(model):
        assert ics[metrics.ics(layer, "l2")].item() == 0.0, layer
    land = measure_landscape(model, x, y, lr=1e-9, multiples=(1.0,))
    assert land[metrics.LANDSCAPE_LOSS_RANGE].item() < 1e-6
    assert land[metrics.LANDSCAPE_GRAD_CHANGE].item() < 1e-4


def nonlinearity_input(model: nn.Module, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm``'s output on ``x`` in the probes' forward (bnexp.models.batch_statistics)."""
    seen: list[torch.Tensor] = []
    hook = norm.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    with batch_statistics(model):
        model(x)
    hook.remove()
    return seen[0]


def unit_drift(norm: str, seed: int, steps: int = 200, every: int = 20) -> float:
    """``metrics.drift`` of each unit's nonlinearity-input percentiles (the probes' per_unit
    record, bnexp.metrics.drift_units) in the last hidden layer of an MLP trained by SGD on
    generated digits, averaged over units."""
    torch.manual_seed(seed)
    cfg = compose_config(["model=mlp", f"norm={norm}", "model.width=32", "model.depth=2"])
    model = build_model(cfg.model, cfg.norm, (1, 28, 28), 10)
    images, labels = make_digits(2000, np.random.default_rng(seed))
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1)
    x, y = (x - x.mean()) / x.std(), torch.tensor(labels, dtype=torch.long)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    last = model.blocks.fc2.norm
    series: list[torch.Tensor] = []
    batches = torch.Generator().manual_seed(seed)
    for step in range(steps + 1):
        if step % every == 0:
            series.append(torch.quantile(nonlinearity_input(model, last, x[:128]).T,
                                         torch.tensor([0.15, 0.5, 0.85]), dim=1))
        idx = torch.randint(0, len(x), (32,), generator=batches)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    drifts = [metrics.drift([tuple(q[:, j].tolist()) for q in series]) for j in range(32)]
    return float(np.mean([d for d in drifts if d is not None]))


@pytest.mark.parametrize("seed", [0, 1])
def test_noisy_bn_input_distribution_is_less_stable_than_no_bn(seed: int) -> None:
    """Santurkar et al.'s point, as the probes see it: the nonlinearity input of a noisy-BN MLP
    moves between probes more than a plain MLP's pre-activation, on the same seed and data
    (measured: 0.28 against 0.05; BN 0.03; the same noise held still, noisy_static, 0.02: the
    walk of the noise's centre is what moves them)."""
    noisy = unit_drift("noisy", seed)
    assert noisy > 2 * unit_drift("none", seed)
    assert noisy > 2 * unit_drift("noisy_static", seed), "the control's noise moved as well"


# ---- end to end --------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("norm", VARIANTS)
def test_bnexp_train_runs_each_variant(cli, mnist_root, tmp_path, arch: str, norm: str) -> None:
    out = tmp_path / "out"
    result = cli_train(cli, mnist_root, out, f"model={arch}", f"norm={norm}", "probe.every=5",
                       "trainer.eval_batch_stats=true")
    assert result.exit_code == 0, result.output
    run_dir = only_run(out)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert {"test/acc", "test_batchstats/acc"} <= set(summary["final"])
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first = "fc1" if arch == "mlp" else "conv1"
    probed = {k for r in records if r["kind"] == "probe" for k in r}
    assert {f"act/{first}/norm/p50", f"grad/{first}/bias"} <= probed
    assert f"kind: {norm}" in (run_dir / "config.yaml").read_text()


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_probing_does_not_change_noisy_training(cli, mnist_root, tmp_path, arch: str) -> None:
    """Every probe (ICS and landscape included) and the evaluation on batch statistics draw
    their noise from forked random streams and restore the noise parameters: the losses and
    the final test loss are exactly those of a run without them."""
    losses = {}
    for probe in ("off", "every_step"):
        extra = ["probe.ics=true", "probe.landscape=true", "trainer.eval_batch_stats=true"] \
            if probe == "every_step" else []
        run_dir = only_run_of(cli_train(cli, mnist_root, tmp_path / probe, f"model={arch}",
                                        "norm=noisy", "model.dropout=0.3", f"probe={probe}",
                                        FIXED_THREADS, *extra), tmp_path / probe)
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses[probe] = [(r["step"], r["train/loss"]) for r in records if "train/loss" in r
                         and r["kind"] != "probe"]
        losses[probe].append(json.loads((run_dir / "summary.json").read_text())["final"]["test/loss"])
    assert losses["off"] == losses["every_step"]


def only_run_of(result, out: Path) -> Path:
    assert result.exit_code == 0, result.output
    return only_run(out)


def test_a_sweep_over_the_variants_and_its_report(cli, mnist_root, tmp_path) -> None:
    out = tmp_path / "out"
    result = cli("train", "-m", f"data.root={mnist_root}", f"output_dir={out}", *TINY,
                 "trainer.epochs=1", "model=mlp", "probe=off", "trainer.checkpoint=false",
                 "norm=noisy,ghost,layer,group")
    assert result.exit_code == 0, result.output
    (sweep_dir,) = (out / "sweeps").iterdir()
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert {j["status"] for j in manifest["jobs"].values()} == {"completed"}
    result = cli("report", str(sweep_dir), "--out", str(tmp_path / "report"))
    assert result.exit_code == 0, result.output
    text = (tmp_path / "report" / "report.md").read_text()
    for norm in VARIANTS:
        assert f"norm={norm}" in text
