"""Every probed quantity against a direct computation (Cockpit's habit), and probing leaves
training untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bnexp import metrics as M
from bnexp.models import build_model
from bnexp.probes import Probes, hidden_blocks
from tests.conftest import FIXED_THREADS, TINY, compose


class Recorder:
    """Stands in for RunLog: keeps what the probes log."""

    def __init__(self) -> None:
        self.records: dict[int, dict[str, float]] = {}

    def scalars(self, step: int, values: dict[str, float], **_: object) -> None:
        self.records.setdefault(step, {}).update(values)

    def record(self, step: int, kind: str, values: dict) -> None:
        self.records.setdefault(step, {}).update(values)


def make(arch: str = "mlp", norm: str = "torch", activation: str = "sigmoid",
         dropout: float = 0.0, **probe_kw):
    torch.manual_seed(0)
    cfg = compose(f"model={arch}", f"model.activation={activation}", f"model.dropout={dropout}",
                  "model.depth=3", "model.width=20", "model.channels=[4,8]", f"norm={norm}",
                  "probe.every=1", "probe.hist_every=0",
                  *(f"probe.{k}={v}" for k, v in probe_kw.items()))
    model = build_model(cfg.model, cfg.norm, (1, 12, 12), 10)
    probe_x = torch.randn(64, 1, 12, 12)
    log = Recorder()
    return model, Probes(model, cfg.probe, activation, probe_x, log), probe_x, log


def captured_stages(model, x) -> dict[str, torch.Tensor]:
    """The three stages of each block, by a manual forward (BN in train mode, no dropout)."""
    out, h = {}, x
    for name, block in hidden_blocks(model).items():
        pre = block.affine(h.flatten(1) if name.startswith("fc") and h.dim() > 2 else h)
        normed = block.norm(pre)
        post = block.act(normed.clone())
        out.update({f"{name}/pre": pre, f"{name}/norm": normed, f"{name}/post": post})
        h = post
        if name.startswith("conv"):
            h = F.max_pool2d(h, 2)
    return out


@pytest.mark.parametrize("arch,activation", [("mlp", "sigmoid"), ("mlp", "relu"), ("cnn", "tanh")])
def test_activation_statistics_match_direct_computation(arch, activation) -> None:
    model, probes, x, _ = make(arch, activation=activation, max_elements=10**9)
    values = probes.activation_stats(step=1)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        stages = captured_stages(model, x)
    model.load_state_dict(snapshot)
    q = torch.tensor([0.15, 0.5, 0.85])
    for key, t in stages.items():
        flat = t.flatten()
        assert values[f"act/{key}/mean"] == pytest.approx(flat.mean().item(), abs=1e-5)
        assert values[f"act/{key}/std"] == pytest.approx(flat.std(correction=0).item(), rel=1e-4)
        expected = torch.quantile(flat, q)
        for name, e in zip(("p15", "p50", "p85"), expected, strict=True):
            assert values[f"act/{key}/{name}"] == pytest.approx(e.item(), abs=1e-5)
        unit = torch.quantile(t.select(1, 0).flatten(), q)
        assert values[f"act/{key}/unit_p50"] == pytest.approx(unit[1].item(), abs=1e-5)
        if key.endswith("post"):
            if activation == "relu":
                assert values[f"act/{key}/dead"] == pytest.approx((flat == 0).float().mean().item())
            else:
                low = 0.0 if activation == "sigmoid" else -1.0
                by_hand = sum(1 for v in flat.tolist() if v < low + 0.02 or v > 0.98) / flat.numel()
                assert values[f"act/{key}/saturated"] == pytest.approx(by_hand)


def test_percentiles_of_large_tensors_use_a_fixed_sample() -> None:
    model, probes, _, _ = make("cnn", activation="relu", max_elements=256)
    a = probes.activation_stats(step=1)
    b = probes.activation_stats(step=2)
    assert a == b  # same probe batch, same sample: identical values


def test_probe_forward_leaves_running_stats_and_rng_alone() -> None:
    model, probes, _, _ = make("mlp", norm="torch", dropout=0.5)
    model.train()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    rng = torch.get_rng_state()
    probes.activation_stats(step=1)
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers[k]), k
    assert model.training and all(m.training for m in model.modules())


@pytest.mark.parametrize("arch,norm", [("mlp", "torch"), ("mlp", "none"), ("cnn", "custom")])
def test_gradient_probes_match_autograd(arch, norm) -> None:
    model, probes, _, log = make(arch, norm=norm, activation="relu")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(16, 1, 12, 12), torch.randint(0, 10, (16,))

    # Reference: gradients of the same loss w.r.t. weights and each layer's input, by autograd.
    inputs: dict[str, torch.Tensor] = {}
    hooks = [layer.register_forward_pre_hook(lambda m, a, n=name: inputs.__setitem__(n, a[0]))
             for name, layer in probes.layers.items()]
    xr = x.clone().requires_grad_()
    loss = F.cross_entropy(model(xr), y)
    for h in hooks:
        h.remove()
    names = list(probes.layers)
    weights = [probes.layers[n].weight for n in names]
    grads = torch.autograd.grad(loss, weights + [inputs[n] for n in names])
    model.zero_grad()

    before = {n: probes.layers[n].weight.detach().clone() for n in names}
    with probes.at(0, x):  # the probes read gradients after the update, as in training
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    got = log.records[0]
    for i, n in enumerate(names):
        assert got[f"grad/{n}/weight"] == pytest.approx(grads[i].norm().item(), rel=1e-5)
        assert got[f"grad/{n}/input"] == pytest.approx(grads[len(names) + i].norm().item(), rel=1e-5)
        ratio = (probes.layers[n].weight - before[n]).norm() / before[n].norm()
        assert got[f"update/{n}"] == pytest.approx(ratio.item(), rel=1e-5)
    all_grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert got["grad/global"] == pytest.approx(all_grads.norm().item(), rel=1e-5)
    assert got["grad/first_last_ratio"] == pytest.approx(
        got[f"grad/{names[0]}/weight"] / got["grad/head/weight"], rel=1e-6)
    if norm != "none":  # the layer's bias is BN's beta when the affine map has none
        beta = hidden_blocks(model)[names[0]].norm.bias
        assert got[f"grad/{names[0]}/bias"] == pytest.approx(beta.grad.norm().item(), rel=1e-5)


def run(cli, root: Path, out: Path, *overrides: str) -> Path:
    result = cli("train", f"data.root={root}", f"output_dir={out}", *TINY, *overrides)
    assert result.exit_code == 0, result.output
    (run_dir,) = (out / "runs").iterdir()
    return run_dir


@pytest.mark.parametrize("model,extra", [
    ("mlp", ()), ("mlp", ("probe.ics=true", "probe.landscape=true")),
    ("cnn", ("probe.ics=true", "probe.landscape=true", "trainer.steps=6"))])
def test_probing_does_not_change_training(cli, mnist_root, tmp_path, model, extra) -> None:
    """Every probe, the opt-in ICS and landscape ones included, leaves the losses, the final
    test loss and the dropout masks exactly as without probes."""
    losses, probed = {}, []
    for probe in ("off", "every_step"):
        run_dir = run(cli, mnist_root, tmp_path / probe, f"model={model}", "norm=custom",
                      "model.dropout=0.3", f"probe={probe}", FIXED_THREADS, *extra)
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses[probe] = [(r["step"], r["train/loss"]) for r in records if r["kind"] != "probe"]
        summary = json.loads((run_dir / "summary.json").read_text())
        losses[probe].append(summary["final"]["test/loss"])
        probed = [r for r in records if r["kind"] == "probe"]
    assert losses["off"] == losses["every_step"]
    keys = {k for r in probed for k in r}
    first = "fc1" if model == "mlp" else "conv1"
    wanted = {f"ics/{first}/l2", "ics/head/cos", "landscape/loss_range", "landscape/beta"}
    assert (wanted <= keys) == bool(extra)


def test_probes_reach_tensorboard_and_metrics(cli, mnist_root, tmp_path) -> None:
    run_dir = run(cli, mnist_root, tmp_path / "out", "model=cnn", "probe.every=5",
                  "probe.hist_every=10")
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    probe_steps = sorted({r["step"] for r in records if r["kind"] == "probe"})
    assert probe_steps[0] == 0 and probe_steps[1] == 5  # step 0: at initialisation
    at_init = {k: v for r in records if r["kind"] == "probe" and r["step"] == 0 for k, v in r.items()}
    for key in ("act/conv1/norm/p15", "act/conv2/post/dead", "grad/conv1/weight",
                "grad/conv1/input", "grad/head/weight", "update/conv2", "grad/global"):
        assert key in at_init, key
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"histograms": 0})
    events.Reload()
    tags = events.Tags()
    assert {"act/conv1/pre/mean", "act/conv2/norm/unit_p85", "grad/conv2/bias",
            "grad/first_last_ratio"} <= set(tags["scalars"])
    assert {"hist/act/conv1/norm", "hist/grad/conv1/weight"} <= set(tags["histograms"])
    layout = events.Tensors("custom_scalars__config__")[0]
    assert b"nonlinearity input" in layout.tensor_proto.string_val[0]


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_per_unit_percentiles_match_torch_quantile(arch) -> None:
    from bnexp.probes import unit_percentiles

    model, probes, x, _ = make(arch, activation="relu")
    stages = captured_stages(model, x)
    for name in hidden_blocks(model):
        t = stages[f"{name}/norm"].detach()
        rows = t.transpose(0, 1).reshape(t.shape[1], -1)
        got = unit_percentiles(t, max_elements=10**9)
        for q, key in ((0.15, "p15"), (0.5, "p50"), (0.85, "p85")):
            torch.testing.assert_close(got[key], torch.quantile(rows, q, dim=1))


def test_per_unit_records_are_written_only_when_asked(cli, mnist_root, tmp_path) -> None:
    def units(*extra) -> list[dict]:
        run_dir = run(cli, mnist_root, tmp_path / f"out{len(extra)}", "model=mlp",
                      "probe.every=5", *extra)
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [r for r in records if r["kind"] == "units"]

    assert units() == []
    found = units("probe.per_unit=true")
    assert found and found[0]["step"] == 0
    layer = found[0]["act/fc2/norm/units"]
    assert len(layer["p15"]) == 16 and all(a <= b for a, b in zip(layer["p15"], layer["p85"],
                                                                   strict=True))


@pytest.mark.parametrize("norm", ["none", "torch", "noisy"])
def test_units_after_a_step_are_the_next_probe_s_units(cli, mnist_root, tmp_path,
                                                       norm: str) -> None:
    """Probing every step, the per-unit record taken right after step t's update (units_next)
    is exactly step t+1's record: the same network, probe batch and probe noise (noisy BN's
    look neither moves its walk nor draws fresh noise), so step_drift_units measures one
    training step and nothing else."""
    run_dir = run(cli, mnist_root, tmp_path / "out", "model=mlp", f"norm={norm}", "probe.every=1",
                  "probe.per_unit=true", "trainer.steps=6", "trainer.epochs=1")
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    units = {r["step"]: r for r in records if r["kind"] == "units"}
    after = {r["step"]: r for r in records if r["kind"] == "units_next"}
    assert sorted(after) == sorted(units)
    for step in sorted(units)[:-1]:
        assert {k: v for k, v in after[step].items() if k != "kind"} == \
            {k: v for k, v in units[step + 1].items() if k != "kind"} | {"step": step}
    assert M.value({}, records, "step_drift_units:last") > 0
