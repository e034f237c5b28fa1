"""bnexp.landscape against brute force (Cockpit's habit): explicit deep copies of the model,
optimizer steps written out by hand, plain ``backward``; and proof that probing changes nothing."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnexp import landscape
from bnexp import metrics as m
from bnexp.build import make_optimizer, make_scheduler
from bnexp.models import Block, build_model
from bnexp.probes import Probes, probed_layers
from tests.conftest import compose

SHAPE, CLASSES, BATCH = (1, 12, 12), 10, 24
ARCHS, NORMS, OPTIMS = ("mlp", "cnn"), ("torch", "none"), ("sgd", "adam")
# Adam's default lr (1e-3) moves the weights so little that G' - G is mostly rounding.
OPTIM_OVERRIDES = {"sgd": ["optim.lr=0.1", "optim.weight_decay=1e-3"],
                   "adam": ["optim.lr=0.01", "optim.weight_decay=1e-3"]}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: a second intra-op thread only waits, and on a busy machine it makes these
    tests 15x slower (spinning workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def composed(norm: str, optim: str):
    return compose("model=mlp", f"norm={norm}", f"optim={optim}", "model.depth=3",
                   "model.width=16", "model.channels=[4,8]", *OPTIM_OVERRIDES[optim])


def config(arch: str, norm: str, optim: str, dropout: float):
    """Composed once per norm and optimizer (a compose takes ~0.25 s); the architecture and
    dropout set on a copy (model=mlp and model=cnn set the same keys)."""
    cfg = copy.deepcopy(composed(norm, optim))
    cfg.model.arch, cfg.model.dropout = arch, dropout
    return cfg


def setup(arch: str, norm: str, optim: str, dropout: float = 0.0, seed: int = 0,
          prior: bool = True):
    """A model, its (fused) optimizer and LR schedule as training builds them, after one prior
    step unless ``prior`` is False (non-zero momentum / Adam moments; ``.grad`` left set), and
    a training batch."""
    cfg = config(arch, norm, optim, dropout)
    torch.manual_seed(seed)
    model = build_model(cfg.model, cfg.norm, SHAPE, CLASSES)
    optimizer = make_optimizer(model.parameters(), cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim, total_steps=10, steps_per_epoch=5)
    x0, y0 = torch.randn(BATCH, *SHAPE), torch.randint(0, CLASSES, (BATCH,))
    if prior:
        train_step(model, optimizer, scheduler, x0, y0)
    x, y = torch.randn(BATCH, *SHAPE), torch.randint(0, CLASSES, (BATCH,))
    return model, optimizer, scheduler, x, y


def train_step(model, optimizer, scheduler, x, y) -> torch.Tensor:
    loss = F.cross_entropy(model(x).float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.detach()


# ---------------------------------------------------------------------------------------------
# Brute force
# ---------------------------------------------------------------------------------------------

def brute_grads(net: nn.Module, x, y, rng: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Loss and every parameter's gradient by ``backward`` on ``net`` (a copy), with the CPU
    random stream at ``rng`` (the same dropout masks each time)."""
    torch.set_rng_state(rng)
    net.zero_grad(set_to_none=True)
    loss = F.cross_entropy(net(x).float(), y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}


def manual_step(optimizer, model: nn.Module, grads: dict) -> dict[str, torch.Tensor]:
    """torch's SGD (momentum, Nesterov, L2 weight decay) and Adam update, written out."""
    group = optimizer.param_groups[0]
    lr, wd = group["lr"], group["weight_decay"]
    out = {}
    for name, p in model.named_parameters():
        state = optimizer.state.get(p, {})  # empty before the first step
        d = grads[name] + wd * p.detach()
        if isinstance(optimizer, torch.optim.SGD):
            mu = group["momentum"]
            buf = (mu * state["momentum_buffer"] + (1 - group["dampening"]) * d
                   if state else d)  # the first step starts the buffer at d
            d = d + mu * buf if group["nesterov"] else buf
            out[name] = p.detach() - lr * d
        else:
            (b1, b2), eps = group["betas"], group["eps"]
            t = float(state["step"]) + 1 if state else 1.0
            m1 = b1 * state["exp_avg"] + (1 - b1) * d if state else (1 - b1) * d
            m2 = b2 * state["exp_avg_sq"] + (1 - b2) * d * d if state else (1 - b2) * d * d
            denom = m2.sqrt() / (1 - b2 ** t) ** 0.5 + eps
            out[name] = p.detach() - lr / (1 - b1 ** t) * m1 / denom
    return out


def weight_name(layer: str) -> str:
    return "head.weight" if layer == m.HEAD else f"blocks.{layer}.affine.weight"


def brute_ics(model, optimizer, x, y) -> dict[str, float]:
    rng = torch.get_rng_state()
    _, g = brute_grads(copy.deepcopy(model), x, y, rng)
    stepped = manual_step(optimizer, model, g)
    blocks = [n for n, b in model.blocks.named_children() if isinstance(b, Block)]
    out = {}
    for i, layer in enumerate(probed_layers(model)):  # fc1.. / conv1.., then head
        net = copy.deepcopy(model)
        with torch.no_grad():
            for block in blocks[:i]:  # every block before this layer takes its update
                for pname, p in net.blocks.get_submodule(block).named_parameters():
                    p.copy_(stepped[f"blocks.{block}.{pname}"])
        _, g_moved = brute_grads(net, x, y, rng)
        a, b = g[weight_name(layer)].double(), g_moved[weight_name(layer)].double()
        out[m.ics(layer, "l2")] = (a - b).norm().item()
        out[m.ics(layer, "rel")] = ((a - b).norm() / a.norm()).item()
        out[m.ics(layer, "cos")] = ((a * b).sum() / (a.norm() * b.norm())).item()
    torch.set_rng_state(rng)
    return out


def brute_landscape(model, x, y, lr, multiples) -> dict[str, float]:
    rng = torch.get_rng_state()
    loss0, g = brute_grads(copy.deepcopy(model), x, y, rng)
    g_norm = torch.cat([v.double().flatten() for v in g.values()]).norm()
    losses, changes, betas = [loss0.item()], [], []
    for mult in multiples:
        eta = lr * mult
        net = copy.deepcopy(model)
        with torch.no_grad():
            for n, p in net.named_parameters():
                p.sub_(eta * g[n])
        loss, g_moved = brute_grads(net, x, y, rng)
        change = torch.cat([(g_moved[n].double() - g[n].double()).flatten() for n in g]).norm()
        losses.append(loss.item())
        changes.append(change.item())
        betas.append((change / (eta * g_norm)).item())
    torch.set_rng_state(rng)
    return {m.LANDSCAPE_LOSS_RANGE: max(losses) - min(losses),
            m.LANDSCAPE_GRAD_CHANGE: max(changes), m.LANDSCAPE_BETA: max(betas)}


def assert_values(got: dict[str, torch.Tensor], want: dict[str, float]) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dim() == 0, key
        assert got[key].item() == pytest.approx(value, rel=2e-4, abs=1e-6), key


# ---------------------------------------------------------------------------------------------
# (a) ICS and (b) landscape equal brute force
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("optim", OPTIMS)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("arch", ARCHS)
def test_ics_matches_brute_force(arch, norm, optim):
    dropout = 0.3 if (arch, norm) == ("mlp", "torch") else 0.0
    model, optimizer, _, x, y = setup(arch, norm, optim, dropout)
    layers = probed_layers(model)
    want = brute_ics(model, optimizer, x, y)
    got = landscape.measure_ics(model, optimizer, x, y, layers)
    assert list(got) == [m.ics(n, s) for n in layers for s in m.ICS_STATS]
    assert_values(got, want)
    first = next(iter(layers))
    assert got[m.ics(first, "l2")].item() == 0 and got[m.ics(first, "cos")].item() == 1
    assert all(got[m.ics(n, "l2")].item() > 0 for n in list(layers)[1:])  # the shift is real


@pytest.mark.parametrize(("arch", "norm", "optim"), [("mlp", "torch", "sgd"), ("cnn", "none", "adam")])
def test_ics_at_step_zero(arch, norm, optim):
    """Step 0 is always probed: a fresh optimizer, whose first step starts its state."""
    model, optimizer, _, x, y = setup(arch, norm, optim, prior=False)
    for p in model.parameters():
        p.grad = None
    assert not optimizer.state
    got = landscape.measure_ics(model, optimizer, x, y, probed_layers(model))
    assert not optimizer.state and all(p.grad is None for p in model.parameters())
    assert_values(got, brute_ics(model, optimizer, x, y))


def test_under_no_grad():
    """A caller inside ``torch.no_grad()`` gets the same values."""
    model, optimizer, _, x, y = setup("mlp", "torch", "adam")
    layers = probed_layers(model)
    want = {**landscape.measure_ics(model, optimizer, x, y, layers),
            **landscape.measure_landscape(model, x, y, 0.01)}
    with torch.no_grad():
        got = {**landscape.measure_ics(model, optimizer, x, y, layers),
               **landscape.measure_landscape(model, x, y, 0.01)}
    assert_same(got, want)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("arch", ARCHS)
def test_landscape_matches_brute_force(arch, norm):
    dropout = 0.3 if (arch, norm) == ("cnn", "torch") else 0.0
    model, *_, x, y = setup(arch, norm, "sgd", dropout)
    multiples = (0.5, 1.0, 2.0, 4.0)
    want = brute_landscape(model, x, y, 0.1, multiples)
    got = landscape.measure_landscape(model, x, y, 0.1, multiples)
    assert_values(got, want)
    assert got[m.LANDSCAPE_LOSS_RANGE].item() > 0


class ScalarLog:
    """Stands in for RunLog: the probe scalars, merged over records."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def scalars(self, step: int, values: dict[str, float], **_: object) -> None:
        self.values.update(values)

    def record(self, *_: object) -> None:
        pass


@pytest.mark.parametrize(("arch", "norm", "optim"), [("mlp", "torch", "sgd"), ("cnn", "none", "adam")])
def test_probe_kinds_log_the_brute_force_values(arch, norm, optim):
    """The InternalCovariateShift and LossLandscape kinds (bnexp/probes/ics.py,
    loss_landscape.py), switched on in the config and run by the probe schedule around a real
    training step (its scheduled lr, dropout on), log brute force's values, and the step is
    the one taken without them."""
    model, optimizer, scheduler, x, y = setup(arch, norm, optim, dropout=0.3)
    twin, twin_opt, twin_sched, *_ = setup(arch, norm, optim, dropout=0.3)
    cfg = config(arch, norm, optim, 0.3).probe
    cfg.every, cfg.hist_every, cfg.ics, cfg.landscape = 1, 0, True, True
    cfg.landscape_multiples = [0.5, 2.0]
    log = ScalarLog()
    probes = Probes(model, cfg, "relu", x[:8], log, optimizer)
    torch.manual_seed(7)
    loss = train_step(twin, twin_opt, twin_sched, x, y)
    torch.manual_seed(7)  # the brute-force passes draw the dropout masks of the step
    want = {**brute_ics(model, optimizer, x, y),
            **brute_landscape(model, x, y, optimizer.param_groups[0]["lr"], (0.5, 2.0))}
    with probes.at(0, x, y):
        probed_loss = train_step(model, optimizer, scheduler, x, y)
    got = {k: torch.tensor(v) for k, v in log.values.items() if k.startswith(("ics/", "landscape/"))}
    assert_values(got, want)
    assert_same(probed_loss, loss)
    assert_same(snapshot(model, optimizer)["params"], snapshot(twin, twin_opt)["params"])


def test_simulated_step_is_the_real_step():
    """The simulated update is bit-identical to the one the run's optimizer then applies."""
    model, optimizer, scheduler, x, y = setup("mlp", "torch", "sgd")
    params = dict(model.named_parameters())
    with torch.enable_grad():
        grads = landscape._grads(F.cross_entropy(model(x).float(), y), params)
    stepped = landscape._simulated_step(optimizer, params, grads)
    train_step(model, optimizer, scheduler, x, y)
    for name, p in model.named_parameters():
        torch.testing.assert_close(stepped[name], p.detach(), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# (c) probing changes nothing
# ---------------------------------------------------------------------------------------------

def snapshot(model, optimizer) -> dict:
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "optim": copy.deepcopy(optimizer.state_dict()),
        "rng": torch.get_rng_state(),
    }


def assert_same(a, b) -> None:
    """Bit-identical nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            assert_same(u, v)
    else:
        assert a == b


def probe(model, optimizer, x, y) -> None:
    landscape.measure_ics(model, optimizer, x, y, probed_layers(model))
    landscape.measure_landscape(model, x, y, optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize(("arch", "norm", "optim"),
                         [("mlp", "torch", "sgd"), ("mlp", "none", "adam"),
                          ("cnn", "torch", "adam"), ("cnn", "none", "sgd")])
def test_probes_change_nothing(arch, norm, optim):
    model, optimizer, scheduler, x, y = setup(arch, norm, optim, dropout=0.3)
    before = snapshot(model, optimizer)
    probe(model, optimizer, x, y)
    assert_same(snapshot(model, optimizer), before)
    assert model.training

    # The step after a probe is the step without it: same dropout masks, loss, weights, state.
    twin, twin_opt, twin_sched, *_ = setup(arch, norm, optim, dropout=0.3)
    torch.manual_seed(7)
    loss = train_step(twin, twin_opt, twin_sched, x, y)
    torch.manual_seed(7)
    probe(model, optimizer, x, y)
    probed_loss = train_step(model, optimizer, scheduler, x, y)
    assert_same(probed_loss, loss)
    assert_same(snapshot(model, optimizer), snapshot(twin, twin_opt))


def test_dropout_masks_would_differ_without_rewinding():
    """The check above has teeth: a forward drawn between seed and step changes the step."""
    twin, twin_opt, twin_sched, x, y = setup("mlp", "torch", "sgd", dropout=0.3)
    model, optimizer, scheduler, *_ = setup("mlp", "torch", "sgd", dropout=0.3)
    torch.manual_seed(7)
    loss = train_step(twin, twin_opt, twin_sched, x, y)
    torch.manual_seed(7)
    model(x)
    assert not torch.equal(train_step(model, optimizer, scheduler, x, y), loss)


# ---------------------------------------------------------------------------------------------
# (d) hand-computed cases
# ---------------------------------------------------------------------------------------------

def test_landscape_of_softmax_regression_by_hand():
    """Softmax regression: L(W, b) = mean CE(softmax(x W^T + b), y), whose gradient is
    ((p - Y)^T x / n, mean(p - Y)); the three quantities from that formula in float64."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    model = nn.Linear(5, 3)
    lr, multiples = 0.5, (0.5, 1.0, 3.0)
    onehot = F.one_hot(y, 3).double()
    xd = x.double()

    def loss_and_grad(w, b):
        z = xd @ w.T + b
        p = torch.softmax(z, dim=1)
        loss = -(torch.log_softmax(z, dim=1) * onehot).sum(1).mean()
        return loss.item(), torch.cat([((p - onehot).T @ xd / len(x)).flatten(),
                                       (p - onehot).mean(0)])

    w, b = model.weight.detach().double(), model.bias.detach().double()
    loss0, g = loss_and_grad(w, b)
    losses, changes, betas = [loss0], [], []
    for mult in multiples:
        eta = lr * mult
        loss, g2 = loss_and_grad(w - eta * g[:15].view(3, 5), b - eta * g[15:])
        losses.append(loss)
        changes.append((g2 - g).norm().item())
        betas.append(changes[-1] / (eta * g.norm().item()))
    got = landscape.measure_landscape(model, x, y, lr, multiples)
    assert_values(got, {m.LANDSCAPE_LOSS_RANGE: max(losses) - min(losses),
                        m.LANDSCAPE_GRAD_CHANGE: max(changes), m.LANDSCAPE_BETA: max(betas)})
    # CE's Hessian in the logits is at most 1/2 (times ||x||^2 per sample), so the gradient's
    # change per distance is bounded: the curvature bound the effective beta estimates.
    bound = 0.5 * (xd.pow(2).sum(1) + 1).mean().item()
    assert 0 < got[m.LANDSCAPE_BETA].item() <= bound


def test_no_update_no_shift():
    """With lr = 0 the preceding layers do not move, so G' = G: l2 = 0 and cos = 1."""
    model, optimizer, _, x, y = setup("cnn", "torch", "sgd")
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    got = landscape.measure_ics(model, optimizer, x, y, probed_layers(model))
    for layer in probed_layers(model):
        assert got[m.ics(layer, "l2")].item() == pytest.approx(0, abs=1e-7)
        assert got[m.ics(layer, "cos")].item() == pytest.approx(1, abs=1e-6)


def test_tags():
    assert m.ics("fc2", "cos") == "ics/fc2/cos"
    assert m.LANDSCAPE_BETA == "landscape/beta"
    model, optimizer, _, x, y = setup("mlp", "none", "sgd")
    with pytest.raises(ValueError, match="not a trainable parameter"):
        landscape.measure_ics(model, optimizer, x, y, {"other": nn.Linear(2, 2)})
