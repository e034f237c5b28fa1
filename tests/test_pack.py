"""Packed training (bnexp/pack/) against the single runs it stands for: replica k of a pack of
seeds must be the single run with seed k (same status, loss curve, probe values and final
metrics, within float reassociation) for every norm kind, MLP and CNN; a replica that diverges
must not disturb the others; and a sweep must pack its seeds with the layout of an unpacked one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bnexp.config import NormKind
from bnexp.data import load_splits
from bnexp.pack.layers import PackedDropout, _uniform_like
from bnexp.pack.loop import train_pack
from bnexp.pack.model import pack_inputs
from bnexp.pack.plan import _chunks
from bnexp.train import train
from tests.conftest import FIXED_THREADS, TINY

# Float reassociation (batched matmuls, grouped convolutions and per-replica reductions sum in
# another order) moves values by ~1e-7 relative in a step; 50 steps of training amplify that.
# Step 0 (the initial weights, before any update) must agree to TIGHT; later values to the
# arch's tolerance (worst seen: MLP 3e-5, CNN 1.4e-3). The literal BN on conv maps is compared
# for 20 steps: it divides every position by its spread over 16 samples, near zero at MNIST's
# constant borders, and amplifies rounding by up to 1/sqrt(eps) ~ 300x a step (6e-3 apart at
# step 30, 7e-2 at step 40: chaos, not packing, as the step-0 and 20-step agreement shows). Values are
# compared relative to max(|a|, |b|, SCALE), so that values near zero count absolutely.
TIGHT, SCALE = 5e-5, 0.1
TOL = {"mlp": 1e-4, "cnn": 5e-3}
SKIP = ("window_step_ms", "time/", "samples_per_s", "epoch_s", "step_ms")  # timings differ

# 50 steps of 2 epochs... (22 per epoch at batch 16 on 360 images), a probe every 10 steps with
# every probe kind, the loss logged every 5 steps, one evaluation at the end.
STEPS = ["trainer.steps=50", "trainer.batch_size=16", "trainer.log_every=5", "probe.every=10",
         "probe.per_unit=true", "probe.hist_every=20", "trainer.eval_every=100",
         "trainer.train_eval_size=64", "trainer.checkpoint=true", "trainer.precision=fp32",
         "trainer.eval_batch_stats=true", "trainer.eval_single=5",
         FIXED_THREADS]


def close(a: float | None, b: float | None, tol: float) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= tol * max(abs(a), abs(b), SCALE)


def assert_same_records(single: Path, packed: Path, tol: float) -> int:
    """Every metrics.jsonl record of the packed replica matches the single run's; returns the
    number of values compared."""
    a = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (packed / "metrics.jsonl").read_text().splitlines()]
    assert len(a) == len(b)
    n = 0
    for ra, rb in zip(a, b, strict=True):
        assert (ra["step"], ra.get("kind")) == (rb["step"], rb.get("kind"))
        assert ra.keys() == rb.keys()
        at = TIGHT if ra["step"] == 0 else tol
        for key, va in ra.items():
            if any(s in key for s in SKIP) or isinstance(va, str):
                continue
            if isinstance(va, dict):  # per-unit records: {"p15": [...], ...}
                for q, values in va.items():
                    for x, y in zip(values, rb[key][q], strict=True):
                        assert close(x, y, at), (ra["step"], key, q, x, y)
                        n += 1
            elif isinstance(va, (int, float)) or va is None:
                assert close(va, rb[key], at), (ra["step"], ra.get("kind"), key, va, rb[key])
                n += 1
    return n


def run_both(cfg, tmp_path: Path, seeds: list[int], *overrides: str) -> list[tuple[Path, Path]]:
    """The single runs and one pack of ``seeds``; pairs of (single dir, replica dir)."""
    pairs = []
    for s in seeds:
        pairs.append((tmp_path / f"single{s}", tmp_path / f"packed{s}"))
        train(cfg(*STEPS, *overrides, f"seed={s}"), [f"seed={s}"], run_dir=pairs[-1][0])
    cfgs = [cfg(*STEPS, *overrides, f"seed={s}") for s in seeds]
    summaries = train_pack(cfgs, [[f"seed={s}"] for s in seeds], [p for _, p in pairs], "g")
    assert [s["packed"]["k"] for s in summaries] == list(range(len(seeds)))
    return pairs


def assert_same_runs(pairs: list[tuple[Path, Path]], arch: str = "mlp",
                     replicas: int | None = None) -> None:
    tol = TOL[arch]
    for single, packed in pairs:
        a = json.loads((single / "summary.json").read_text())
        b = json.loads((packed / "summary.json").read_text())
        assert (a["status"], a.get("diverged_step"), a["steps"], a["epochs_completed"]) == (
            b["status"], b.get("diverged_step"), b["steps"], b["epochs_completed"])
        assert b["packed"]["K"] == (replicas or len(pairs)) and "packed" not in a
        for key, value in a["final"].items():
            if not any(s in key for s in SKIP):
                assert close(value, b["final"][key], tol), (key, value, b["final"][key])
        assert a["best"].keys() == b["best"].keys()
        for key, value in a["best"].items():
            assert close(value, b["best"][key], tol), (key, value, b["best"][key])
        assert assert_same_records(single, packed, tol) > 100


NORMS = [k.value for k in NormKind]
# The 4-8 channel CNN at lr 0.05 with a onecycle schedule reaches points where a 1e-6 change of
# the weights changes a gradient by 20% (seen between two single runs, one with its weights
# perturbed by 1e-6): the comparison would measure that ill-conditioning, not the packing.
CNN_STEADY = ["optim.lr=0.02", "optim.schedule=constant"]


@pytest.mark.parametrize("norm", NORMS)
def test_mlp_replicas_are_their_single_runs(cfg, tmp_path, norm) -> None:
    pairs = run_both(cfg, tmp_path, [0, 1], "model=mlp", f"norm={norm}", "model.dropout=0.2")
    assert_same_runs(pairs)
    for single, packed in pairs:  # the checkpoint holds the replica's tensors only
        a = torch.load(single / "checkpoint.pt", weights_only=False)
        b = torch.load(packed / "checkpoint.pt", weights_only=False)
        assert a["model"].keys() == b["model"].keys()
        for key, t in a["model"].items():
            assert b["model"][key].untyped_storage().nbytes() == t.untyped_storage().nbytes()
            torch.testing.assert_close(b["model"][key], t, rtol=1e-4, atol=1e-5)
        assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]


# The CNN's per-kind runs take ~2-5 s each: the kinds whose packed layer differs from the MLP's
# only in its input's shape run under `pytest -m slow` (each is exercised in the MLP test).
CNN_SLOW = {"none", "ghost", "layer", "group"}


@pytest.mark.parametrize("norm", [pytest.param(n, marks=pytest.mark.slow) if n in CNN_SLOW else n
                                  for n in NORMS])
def test_cnn_replicas_are_their_single_runs(cfg, tmp_path, norm) -> None:
    pairs = run_both(cfg, tmp_path, [0, 1], "model=cnn", f"norm={norm}", "model.dropout=0.2",
                     "norm.groups=2" if norm == "group" else "probe.unit=1", *CNN_STEADY,
                     *(["trainer.steps=20"] if norm == "seed" else []))
    assert_same_runs(pairs, "cnn")


def test_ics_and_landscape_per_replica(cfg, tmp_path) -> None:
    """The Santurkar probes simulate the run's optimizer and rewind its random stream: each
    replica's use its single model, its slice of the packed optimizer state and its stream."""
    pairs = run_both(cfg, tmp_path, [0, 1, 2], "model=mlp", "norm=noisy", "probe.ics=true",
                     "probe.landscape=true", "optim.momentum=0.9", "trainer.steps=21")
    assert_same_runs(pairs)
    assert "ics/fc2/l2" in (pairs[0][1] / "metrics.jsonl").read_text()


@pytest.mark.parametrize(("arch", "norm", "packed"), [("mlp", "torch", True), ("cnn", "custom", True),
                                                      ("mlp", "noisy", False)])
def test_the_replicas_look_through_one_packed_forward(cfg, tmp_path, monkeypatch, arch, norm,
                                                     packed) -> None:
    """The probe-batch looks of a probed step (before it, and after it for the per-unit
    records) are one forward of the pack, whatever K, and the activation statistics of all
    replicas are taken at once from each of its outputs; their values are the single runs'
    (the exactness tests above). Noisy BN, whose look draws noise, keeps a look per replica."""
    from bnexp.pack import look
    from bnexp.probes import act

    forwards: list[tuple[int, tuple[str, ...]]] = []
    outputs: list[int] = []  # stage outputs each packed forward kept
    real = look.PackedLooks._forward

    def spy(self, stages):
        forwards.append((self.pack.updates, stages))
        real(self, stages)
        outputs.append(len(self.outs))

    stats_calls: list[int] = []
    real_stats = act.replica_stats

    def count_stats(out, count, *args):
        stats_calls.append(count)
        return real_stats(out, count, *args)

    monkeypatch.setattr(look.PackedLooks, "_forward", spy)
    monkeypatch.setattr(act, "replica_stats", count_stats)
    seeds = [0, 1, 2]
    cfgs = [cfg(*STEPS, f"model={arch}", f"norm={norm}", "trainer.steps=21", f"seed={s}")
            for s in seeds]
    train_pack(cfgs, [[f"seed={s}"] for s in seeds], [tmp_path / f"p{s}" for s in seeds], "g")
    if not packed:
        assert forwards == [] and set(stats_calls) == {1}
        return
    # The activation statistics of all replicas are taken once per kept output, not per replica.
    assert stats_calls == [len(seeds)] * sum(n for n, (_, stages) in zip(outputs, forwards,
                                                                          strict=True)
                                             if "pre" in stages)
    # Probes at steps 0, 10 and 20 (probe.every=10): one look before each step and one after.
    assert forwards == [(0, ("pre", "norm", "post")), (1, ("norm",)),
                        (10, ("pre", "norm", "post")), (11, ("norm",)),
                        (20, ("pre", "norm", "post")), (21, ("norm",))]
    for s in seeds:
        records = [json.loads(line) for line in (tmp_path / f"p{s}" / "metrics.jsonl")
                   .read_text().splitlines()]
        assert sum(r.get("kind") == "units_next" for r in records) == 3


def test_a_diverging_replica_leaves_the_others_alone(cfg, tmp_path) -> None:
    """A ReLU net at 3x He's scale and lr 3: seed 1 diverges on its own (at step 9), seeds 0
    and 2 do not. Packed together, seed 1 is recorded diverged at the same step, and seeds 0
    and 2 still match their single runs."""
    pairs = run_both(cfg, tmp_path, [0, 1, 2], "model=mlp", "norm=none", "model.activation=relu",
                     "model.init=he", "model.init_gain=3", "optim.momentum=0.9", "optim.lr=3",
                     "optim.schedule=constant", "optim.nesterov=false", "trainer.steps=20",
                     "trainer.batch_size=32", "probe.every=5")
    singles = [json.loads((s / "summary.json").read_text()) for s, _ in pairs]
    packed = [json.loads((p / "summary.json").read_text()) for _, p in pairs]
    assert [s["status"] for s in singles] == ["completed", "diverged", "completed"], \
        "the setting no longer makes exactly seed 1 diverge: pick another optim.lr"
    assert [p["status"] for p in packed] == ["completed", "diverged", "completed"]
    assert packed[1]["diverged_step"] == singles[1]["diverged_step"] == packed[1]["steps"]
    assert_same_runs([pairs[0], pairs[2]], replicas=3)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_the_test_split_is_read_once_for_all_replicas(cfg, tmp_path, arch) -> None:
    """Test images do not depend on the seed: a pack evaluates each test batch once, through
    a first layer that maps it to every replica (``forward_shared``), and gets what K copies
    through the packed forward give; val and train_eval are drawn by seed and stay per
    replica."""
    from bnexp.pack.loop import setup_pack

    seeds = [0, 1, 2]
    cfgs = [cfg(*STEPS, f"model={arch}", "norm=torch", f"seed={s}") for s in seeds]
    pack = setup_pack(cfgs, [[f"seed={s}"] for s in seeds], [tmp_path / f"p{s}" for s in seeds],
                      "g")
    try:
        assert {"test", "test_batchstats"} <= pack.shared
        assert {"val", "train_eval"} <= pack.runs[0].eval_loaders.keys() - pack.shared
        x, _ = next(iter(pack.runs[0].eval_loaders["test"]))
        net = pack.net.eval()
        with torch.no_grad():
            copies = pack_inputs([x] * len(seeds), net.is_cnn, pack.runs[0].channels_last)
            torch.testing.assert_close(net.forward_shared(x), net(copies), rtol=1e-5,
                                       atol=1e-5)
    finally:
        pack.share.close()


def test_a_finished_pack_is_freed_without_the_garbage_collector(cfg, tmp_path,
                                                                monkeypatch) -> None:
    """No reference cycle keeps a finished pack (its K copies of the data, the packed model)
    alive until the collector runs: a claims call once held ~6 GB of finished packs."""
    import gc
    import weakref

    from bnexp.pack import loop

    packs = []
    real = loop.setup_pack
    monkeypatch.setattr(loop, "setup_pack", lambda *a: packs.append(real(*a)) or packs[-1])
    seeds = [0, 1]
    cfgs = [cfg(*STEPS, "model=mlp", "norm=torch", "trainer.steps=11", f"seed={s}")
            for s in seeds]
    # The dataset parsed beforehand: torchvision's first parse in a process leaves frames
    # alive (theirs and their callers', setup_pack's with its pack among them).
    load_splits(cfgs[0].data, 0, torch.device("cpu"))
    enabled = gc.isenabled()
    gc.disable()
    try:
        train_pack(cfgs, [[f"seed={s}"] for s in seeds], [tmp_path / f"p{s}" for s in seeds], "g")
        ref = weakref.ref(packs.pop())
        assert ref() is None
    finally:
        if enabled:
            gc.enable()


def test_packed_random_draws_are_the_single_runs() -> None:
    """Replica k's dropout mask and noise are what torch draws from the global stream at the
    same state (a rand_like in channels_last included)."""
    x = torch.randn(6, 2 * 5)
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    out = PackedDropout(0.3, gens).train()(x)
    for k, seed in enumerate((3, 4)):
        torch.manual_seed(seed)
        ref = torch.nn.functional.dropout(x[:, 5 * k:5 * (k + 1)], 0.3, training=True)
        torch.testing.assert_close(out[:, 5 * k:5 * (k + 1)], ref, rtol=0, atol=0)
    y = torch.randn(2, 2 * 3, 4, 4).contiguous(memory_format=torch.channels_last)
    u = _uniform_like(y, 2, [torch.Generator().manual_seed(s) for s in (5, 6)])
    for k, seed in enumerate((5, 6)):
        torch.manual_seed(seed)
        ref = torch.rand_like(y[:, 3 * k:3 * (k + 1)].contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(u[:, 3 * k:3 * (k + 1)], ref, rtol=0, atol=0)


def test_packs_are_cut_evenly() -> None:
    assert _chunks(list(range(10)), 8) == [list(range(5)), list(range(5, 10))]
    assert _chunks(list(range(3)), 8) == [[0, 1, 2]]
    assert [len(c) for c in _chunks(list(range(17)), 8)] == [6, 6, 5]


@pytest.mark.parametrize(("launcher", "pack_max", "packs"), [
    ("basic", None, [10, 10]),    # one local process: packs of up to 16
    ("slurm", None, [7, 7, 6]),   # a SLURM task has one run's CPUs: packs of up to 8
    ("slurm", 10, [10, 10]),      # an explicit sweep.pack_max holds everywhere
])
def test_pack_max_defaults_to_the_launchers(launcher, pack_max, packs) -> None:
    from omegaconf import OmegaConf

    from bnexp.pack.plan import BASIC, SLURM_LAUNCHERS, plan_packing

    target = SLURM_LAUNCHERS[0] if launcher == "slurm" else BASIC
    base = OmegaConf.create({"sweep": {"pack": True, "pack_max": pack_max},
                             "hydra": {"launcher": {"_target_": target}}})
    jobs = {str(s): {"num": s, "overrides": ["norm=torch", f"seed={s}"]} for s in range(20)}
    assert [len(p) for p in plan_packing(base, jobs)["packs"]] == packs


@pytest.mark.parametrize(("launcher", "seeds", "groups", "packs"), [
    ("basic", 8, 1, [8]),           # one process: one pack
    ("joblib", 8, 1, [4, 4]),       # two workers: two packs, none idle
    ("joblib", 3, 1, [2]),          # the third seed runs alone beside the pack of 2
    ("joblib", 8, 2, [8, 8]),       # two groups already fill the two workers
    ("joblib", 10, 1, [5, 5]),
])
def test_packs_fill_the_launchers_workers(launcher, seeds, groups, packs) -> None:
    from omegaconf import OmegaConf

    from bnexp.pack.plan import BASIC, JOBLIB, plan_packing

    target = JOBLIB if launcher == "joblib" else BASIC
    base = OmegaConf.create({"sweep": {"pack": True, "pack_max": 8},
                             "hydra": {"launcher": {"_target_": target, "n_jobs": 2}}})
    jobs, num = {}, 0
    for g in range(groups):
        for s in range(seeds):
            jobs[str(num)] = {"num": num, "overrides": [f"norm={g}", f"seed={s}"]}
            num += 1
    assert [len(p) for p in plan_packing(base, jobs)["packs"]] == packs


def _sweep_runs(out: Path) -> dict[str, dict]:
    (sweep_dir,) = (out / "sweeps").iterdir()
    return {d.name: json.loads((d / "summary.json").read_text())
            for d in sweep_dir.iterdir() if d.is_dir() and not d.name.startswith(".")}


def test_a_sweep_packs_its_seeds_where_unpacked_jobs_would_run(cli, mnist_root, tmp_path) -> None:
    """The same grid with packing on (the default) and off: the same job directories, the same
    results; packed runs say so in summary.json, and the sweep says once what it packed."""
    args = ["train", "-m", f"data.root={mnist_root}", *TINY, "trainer.epochs=1", "model=mlp",
            "probe=off", "trainer.checkpoint=false", FIXED_THREADS, "trainer.precision=fp32",
            "norm=none,torch",
            "seed=0,1,2"]
    packed = cli(*args, f"output_dir={tmp_path / 'on'}")
    assert packed.exit_code == 0, packed.output
    assert "trained 6 runs as 2 packed models" in packed.output
    plain = cli(*args, f"output_dir={tmp_path / 'off'}", "sweep.pack=false")
    assert plain.exit_code == 0, plain.output
    assert "packed" not in plain.output
    on, off = _sweep_runs(tmp_path / "on"), _sweep_runs(tmp_path / "off")
    assert on.keys() == off.keys() and len(on) == 6
    for name, summary in on.items():
        assert summary["status"] == off[name]["status"] == "completed"
        assert summary["packed"]["K"] == 3 and "packed" not in off[name]
        assert close(summary["final"]["test/loss"], off[name]["final"]["test/loss"], TOL["mlp"])


def test_pack_max_cuts_a_group_and_resume_keeps_packed_runs(cli, mnist_root, tmp_path) -> None:
    args = ["train", "-m", f"data.root={mnist_root}", f"output_dir={tmp_path}", *TINY,
            "trainer.epochs=1", "model=mlp", "probe=off", "trainer.checkpoint=false",
            "seed=0,1,2,3,4", "sweep.pack_max=3"]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    runs = _sweep_runs(tmp_path)
    assert sorted(s["packed"]["K"] for s in runs.values()) == [2, 2, 3, 3, 3]
    (sweep_dir,) = (tmp_path / "sweeps").iterdir()
    again = cli("train", "-m", "--resume", str(sweep_dir))
    assert again.exit_code == 0, again.output
    assert "reused 5 finished runs" in again.output and "packed model" not in again.output


def test_what_is_not_packed_and_why(cfg) -> None:
    from bnexp.pack.job import not_packable

    assert not_packable(cfg("model=mlp")) is None
    assert "CNN" in not_packable(cfg("model=cnn", "trainer.device=cpu", "trainer.batch_size=64"))
    assert not_packable(cfg("model=cnn", "trainer.device=cpu", "trainer.batch_size=4")) is None
    assert "compile" in not_packable(cfg("model=mlp", "trainer.compile=true"))


def test_no_packing_where_hydras_jobs_are_not_the_planned_grid(cli, mnist_root, tmp_path) -> None:
    """A swept key given again as a fixed value (the later wins in Hydra): Hydra runs fewer,
    differently numbered jobs than the plan, so no job trusts the plan's packs."""
    result = cli("train", "-m", f"data.root={mnist_root}", f"output_dir={tmp_path}", *TINY,
                 "trainer.epochs=1", "model=mlp", "probe=off", "trainer.checkpoint=false",
                 "norm=none,torch", "seed=0,1", "trainer.batch_size=16,8", "trainer.batch_size=32")
    assert "Traceback" not in result.output  # exit 1: the plan's other 4 jobs never ran
    (sweep_dir,) = (tmp_path / "sweeps").iterdir()
    again = cli("train", "-m", "--resume", str(sweep_dir))  # sweep.json now holds Hydra's jobs
    assert "Traceback" not in again.output
    runs = _sweep_runs(tmp_path)
    assert sorted((s["seed"], s["name"]) for s in runs.values()) == sorted(
        (seed, f"mnist-mlp-{norm}") for seed in (0, 1) for norm in ("none", "torch"))
    assert not any("packed" in s for s in runs.values())
