"""Every probe kind against a direct computation (Cockpit's habit), probing leaves training
untouched, and the registry and the probe config options hold together. The ICS and landscape
kinds' brute-force tests are in tests/test_landscape.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bnexp import metrics as M
from bnexp.config import ProbeConfig
from bnexp.hydra_app import config_dir
from bnexp.models import build_model
from bnexp.probes import PROBES, Probe, Probes, hidden_blocks
from tests.conftest import FIXED_THREADS, TINY, compose


class TensorBoard:
    """Stands in for RunLog.tb: keeps the histograms."""

    def __init__(self) -> None:
        self.hists: dict[str, dict] = {}

    def add_histogram_raw(self, tag: str, **kwargs: object) -> None:
        self.hists[tag] = kwargs


class Recorder:
    """Stands in for RunLog: keeps what the probes log."""

    def __init__(self) -> None:
        self.records: dict[int, dict[str, float]] = {}
        self.kinds: list[tuple[int, str]] = []  # (step, kind) of each record, in order
        self.by_kind: dict[str, dict[int, dict]] = {}  # the metrics.jsonl-only records
        self.tb = TensorBoard()

    def scalars(self, step: int, values: dict[str, float], **extra: object) -> None:
        self.records.setdefault(step, {}).update(values)
        self.kinds.append((step, str(extra.get("kind"))))

    def record(self, step: int, kind: str, values: dict) -> None:
        self.records.setdefault(step, {}).update(values)
        self.kinds.append((step, kind))
        self.by_kind.setdefault(kind, {})[step] = values


def make(arch: str = "mlp", norm: str = "torch", activation: str = "sigmoid",
         dropout: float = 0.0, pool: str | None = None, **probe_kw):
    torch.manual_seed(0)
    cfg = compose(f"model={arch}", f"model.activation={activation}", f"model.dropout={dropout}",
                  "model.depth=3", "model.width=20", "model.channels=[4,8]", f"norm={norm}",
                  "probe.every=1", "probe.hist_every=0", *([f"model.pool={pool}"] if pool else []),
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
        early = "pool" in block._modules  # model.pool=early: conv -> max-pool -> norm -> act
        normed = block.norm(F.max_pool2d(pre, 2) if early else pre)
        post = block.act(normed.clone())
        out.update({f"{name}/pre": pre, f"{name}/norm": normed, f"{name}/post": post})
        h = post
        if name.startswith("conv") and not early:
            h = F.max_pool2d(h, 2)
    return out


@pytest.mark.parametrize("arch,activation,pool", [("mlp", "sigmoid", None), ("mlp", "relu", None),
                                                   ("cnn", "tanh", "early"), ("cnn", "tanh", "late")])
def test_activation_statistics_match_direct_computation(arch, activation, pool) -> None:
    model, probes, x, _ = make(arch, activation=activation, pool=pool, max_elements=10**9)
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


# ---- per-unit records and histograms against a direct computation ----------------------------

QS = torch.tensor([0.15, 0.5, 0.85])


def stages_untouched(model, x) -> dict[str, torch.Tensor]:
    """captured_stages, with BN's running statistics restored afterwards."""
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        stages = captured_stages(model, x)
    model.load_state_dict(snapshot)
    return stages


def sgd_step(model, x, y) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_per_unit_records_match_torch_quantile_before_and_after_the_step(arch) -> None:
    """PerUnit: the "units" record is each unit's torch.quantile of the nonlinearity input on
    the probe batch before the step, "units_next" the same after the step's update, written
    around the step's scalar record in that order."""
    model, probes, probe_x, log = make(arch, activation="relu", per_unit=True,
                                     max_elements=10**9)
    x, y = torch.randn(16, 1, 12, 12), torch.randint(0, 10, (16,))
    before = stages_untouched(model, probe_x)
    with probes.at(0, x, y):
        sgd_step(model, x, y)
    after = stages_untouched(model, probe_x)
    assert log.kinds == [(0, "units"), (0, "probe"), (0, "probe"), (0, "units_next")]
    for kind, stages in (("units", before), ("units_next", after)):
        record = log.by_kind[kind][0]
        assert set(record) == {f"act/{n}/norm/units" for n in hidden_blocks(model)}
        for name in hidden_blocks(model):
            t = stages[f"{name}/norm"]
            rows = t.transpose(0, 1).reshape(t.shape[1], -1)
            want = torch.quantile(rows, QS, dim=1)
            got = record[f"act/{name}/norm/units"]
            for i, q in enumerate(("p15", "p50", "p85")):
                assert got[q] == pytest.approx(want[i].tolist(), abs=1e-5), (kind, name, q)


def assert_histogram(got: dict, t: torch.Tensor, bins: int = 64) -> None:
    """A histogram as TensorBoard gets it against a direct count: ``bins`` equal bins from the
    minimum to the maximum (a value on an inner edge may fall either side by rounding)."""
    flat = t.detach().double().flatten()
    lo, hi = flat.min().item(), flat.max().item()
    assert got["min"] == pytest.approx(lo) and got["max"] == pytest.approx(hi)
    assert got["num"] == flat.numel()
    assert got["sum"] == pytest.approx(flat.sum().item(), rel=1e-5, abs=1e-6)
    assert got["sum_squares"] == pytest.approx(flat.square().sum().item(), rel=1e-5)
    edges = [lo + (hi - lo) * (i + 1) / bins for i in range(bins)]
    assert got["bucket_limits"] == pytest.approx(edges, rel=1e-5, abs=1e-6)
    index = ((flat - lo) / (hi - lo) * bins).long().clamp(max=bins - 1)
    want = torch.bincount(index, minlength=bins).tolist()
    assert sum(got["bucket_counts"]) == flat.numel()
    assert sum(abs(a - b) for a, b in zip(got["bucket_counts"], want, strict=True)) <= 2


def test_histograms_match_a_direct_count() -> None:
    """Histograms: every stage of every block on the probe batch, and every layer's weight
    gradient of the step, on probed steps that are multiples of probe.hist_every only."""
    model, probes, probe_x, log = make("cnn", activation="tanh", hist_every=2)
    x, y = torch.randn(16, 1, 12, 12), torch.randint(0, 10, (16,))
    with probes.at(1, x, y):  # not a histogram step
        sgd_step(model, x, y)
    assert log.tb.hists == {}
    stages = stages_untouched(model, probe_x)
    with probes.at(2, x, y):
        sgd_step(model, x, y)
    tags = {f"hist/act/{key}" for key in stages} | {f"hist/grad/{n}/weight" for n in probes.layers}
    assert set(log.tb.hists) == tags
    for key, t in stages.items():
        assert_histogram(log.tb.hists[f"hist/act/{key}"], t)
    for name, layer in probes.layers.items():
        assert_histogram(log.tb.hists[f"hist/grad/{name}/weight"], layer.weight.grad)


# ---- the registry and the probe config options ------------------------------------------------

DEFAULT_PROBE = {"enabled": True, "every": 200, "hist_every": 500, "batch_size": 128, "unit": 0,
                 "max_elements": 4096, "per_unit": False, "ics": False, "landscape": False,
                 "landscape_multiples": [0.5, 1.0, 2.0, 4.0]}
PROBE_OPTIONS = {"default": DEFAULT_PROBE,
                 "every_step": {**DEFAULT_PROBE, "every": 1, "hist_every": 100},
                 "off": {**DEFAULT_PROBE, "enabled": False, "hist_every": 0}}


@pytest.mark.parametrize("option", PROBE_OPTIONS)
def test_probe_options_compose_to_their_values(option: str) -> None:
    """every_step.yaml and off.yaml start from default.yaml (a defaults list) and set only what
    differs; composed, each option is exactly what the three full copies used to say."""
    got = OmegaConf.to_container(compose(f"probe={option}").probe)
    assert got == PROBE_OPTIONS[option]
    assert list(got) == list(DEFAULT_PROBE)  # the schema's order, in config.yaml too
    text = yaml.safe_load((config_dir() / "probe" / f"{option}.yaml").read_text())
    own = {k: v for k, v in text.items() if k != "defaults"}
    if option != "default":
        assert text["defaults"] == ["default", "_self_"]
        assert own == {k: v for k, v in PROBE_OPTIONS[option].items() if v != DEFAULT_PROBE[k]}


def test_registry_lists_each_kind_once_with_its_switch() -> None:
    """One module per kind, each switch a ProbeConfig key set in configs/probe/default.yaml,
    and a run builds exactly the kinds whose switches are on."""
    fields = {f.name for f in dataclasses.fields(ProbeConfig)}
    default = yaml.safe_load((config_dir() / "probe" / "default.yaml").read_text())
    assert all(issubclass(kind, Probe) for kind in PROBES)
    modules = [kind.__module__ for kind in PROBES]
    assert len(set(modules)) == len(modules) == len(PROBES)
    for kind in PROBES:
        assert kind.switch in fields and kind.switch in default, kind
    names = lambda probes: [type(k).__name__ for k in probes.kinds]  # noqa: E731
    _, probes, _, _ = make()
    assert names(probes) == ["ActivationStats", "GradNorms", "UpdateRatios"]
    _, probes, _, _ = make(per_unit=True, ics=True, landscape=True, hist_every=3)
    assert names(probes) == [kind.__name__ for kind in PROBES]
    _, probes, _, _ = make(enabled=False, per_unit=True)
    assert names(probes) == [] and not probes.due(0)


def test_a_new_kind_is_a_class_and_a_registry_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The schedule runs a registered kind's hooks in their order and logs its scalars in the
    step's two records, without naming it anywhere else."""
    calls: list[str] = []

    class Count(Probe):
        switch = "enabled"
        stages = ("post",)

        def measure(self, step, layer, stage, t) -> None:
            calls.append(f"measure {layer}/{stage}")

        def looked(self, step):
            calls.append("looked")
            return {"count/looked": torch.tensor(float(step))}

        def before(self, step, x, y) -> None:
            calls.append("before")

        def release(self) -> None:
            calls.append("release")

        def after(self, step):
            calls.append("after")
            return {"count/after": torch.tensor(2.0)}

        def finish(self, step) -> None:
            calls.append("finish")

    monkeypatch.setattr("bnexp.probes.schedule.PROBES", (Count,))
    model, probes, _, log = make()
    with probes.at(4, torch.randn(8, 1, 12, 12)):
        model(torch.randn(8, 1, 12, 12))
    measured = [f"measure {name}/post" for name in hidden_blocks(model)]
    assert calls == [*measured, "looked", "before", "release", "after", "finish"]
    assert log.records[4] == {"count/looked": 4.0, "count/after": 2.0}
