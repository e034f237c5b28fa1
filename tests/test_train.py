"""bnexp/train.py: the step, the log window and its host reads, divergence, evaluation, timing,
and what a finished, diverged or interrupted run records."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch

from bnexp.train import autocast, train
from tests.conftest import FIXED_THREADS, cli_train, only_run

HOST_READS = ("item", "tolist", "cpu", "__bool__", "__float__", "__int__")


def count_host_reads(monkeypatch, config) -> int:
    """Train with every way a tensor's value reaches Python counted (and CUDA syncs)."""
    calls = {"n": 0}

    def counted(name: str):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            calls["n"] += 1
            return original(self, *args, **kwargs)
        return wrapper

    with monkeypatch.context() as m:
        for name in HOST_READS:
            m.setattr(torch.Tensor, name, counted(name))
        m.setattr(torch.cuda, "synchronize", lambda *a, **k: calls.__setitem__("n", calls["n"] + 1))
        summary = train(config)
    assert summary["status"] == "completed"
    return calls["n"]


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_no_host_read_per_step(monkeypatch, cfg, arch, device) -> None:
    """Steps between log windows read nothing from the device: a run of 10 steps and one of 5
    (one window each, one epoch, probes off) read the device equally often."""
    base = (f"model={arch}", f"trainer.device={device}", "probe.enabled=false",
            "trainer.batch_size=8", "trainer.log_every=1000", "trainer.checkpoint=false",
            "trainer.train_eval_size=0")
    five = count_host_reads(monkeypatch, cfg(*base, "trainer.steps=5", out="a"))
    ten = count_host_reads(monkeypatch, cfg(*base, "trainer.steps=10", out="b"))
    assert ten == five


def test_window_reads_scale_with_windows_not_steps(monkeypatch, cfg) -> None:
    """The counter above can fail: with a window per step, reads grow with the steps."""
    base = ("model=mlp", "probe.enabled=false", "trainer.batch_size=8", "trainer.log_every=1",
            "trainer.checkpoint=false", "trainer.train_eval_size=0")
    five = count_host_reads(monkeypatch, cfg(*base, "trainer.steps=5", out="a"))
    ten = count_host_reads(monkeypatch, cfg(*base, "trainer.steps=10", out="b"))
    assert ten >= five + 5


def diverging(cfg, out: str, log_every: int):
    # lr 3 without a norm diverges within the epoch in fp32 with the plain cross-entropy (the
    # default's bf16 and label smoothing keep this MLP's loss finite longer)
    return cfg(FIXED_THREADS, "model=mlp", "norm=none", "optim.lr=3", "optim.schedule=constant",
               "trainer.precision=fp32", "trainer.label_smoothing=0.0", "trainer.epochs=1",
               f"trainer.log_every={log_every}", "probe.every=3", out=out)


def test_divergence_step_is_exact_whatever_the_window(cfg) -> None:
    """The loss is read once per window, yet the first non-finite step is found exactly: the
    same as reading every step; no probe or step record is logged after it."""
    every_step = train(diverging(cfg, "a", 1))
    windowed = train(diverging(cfg, "b", 50))
    assert every_step["status"] == windowed["status"] == "diverged"
    assert windowed["diverged_step"] == every_step["diverged_step"] >= 1
    assert windowed["steps"] == windowed["diverged_step"]
    records = [json.loads(line) for line in
               (Path(windowed["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert all(r["step"] <= windowed["diverged_step"] for r in records)


def test_window_metrics_equal_the_steps_mean(cfg) -> None:
    """train/loss of a window is the mean of its steps' losses: a window of 2 steps is the
    mean of the two one-step windows of an identical run."""
    base = ("model=mlp", "probe.enabled=false", "trainer.steps=4", "trainer.epochs=1")
    one = train(cfg(*base, "trainer.log_every=1", out="a"))
    two = train(cfg(*base, "trainer.log_every=2", out="b"))

    def steps(summary):
        lines = (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()
        return {r["step"]: r for r in map(json.loads, lines) if r.get("kind") == "step"}

    a, b = steps(one), steps(two)
    assert b[2]["train/loss"] == pytest.approx((a[1]["train/loss"] + a[2]["train/loss"]) / 2, rel=1e-6)
    assert b[4]["train/acc"] == pytest.approx((a[3]["train/acc"] + a[4]["train/acc"]) / 2, rel=1e-6)
    assert one["final"]["train/loss"] == pytest.approx(two["final"]["train/loss"], rel=1e-6)


@needs_cuda
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_cuda_steps_never_synchronise(cfg, arch) -> None:
    """torch's own sync detector (every synchronising CUDA call warns) counts the same syncs
    for 5 and for 10 steps in one window: the steps themselves add none."""
    import warnings

    base = (f"model={arch}", "trainer.device=cuda", "probe.enabled=false", "trainer.batch_size=8",
            "trainer.log_every=1000", "trainer.checkpoint=false", "trainer.train_eval_size=0")
    counts = []
    for steps in (5, 10):
        config = cfg(*base, f"trainer.steps={steps}", out=str(steps))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                assert train(config)["status"] == "completed"
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts[0] == counts[1], counts


def test_bn_learns_the_tiny_digits(cli, mnist_root, tmp_path) -> None:
    result = cli_train(cli, mnist_root, tmp_path / "out", "model=mlp", "norm=custom",
                   "trainer.epochs=6", "optim.lr=0.05")
    assert result.exit_code == 0, result.output
    summary = json.loads((only_run(tmp_path / "out") / "summary.json").read_text())
    assert summary["final"]["test/acc"] > 0.8  # the patches are trivially separable


def test_train_cifar_format(cli, cifar_root, tmp_path) -> None:
    out = tmp_path / "out"
    result = cli_train(cli, cifar_root, out, "data=cifar10", "model=cnn", "norm=custom")
    assert result.exit_code == 0, result.output
    summary = json.loads((only_run(out) / "summary.json").read_text())
    assert summary["status"] == "completed"


def test_same_seed_same_metrics(cli, mnist_root, tmp_path) -> None:
    finals = []
    for i in range(2):
        out = tmp_path / f"out{i}"
        assert cli_train(cli, mnist_root, out, "model=cnn", "norm=custom", "seed=3",
                         FIXED_THREADS).exit_code == 0
        finals.append(json.loads((only_run(out) / "summary.json").read_text())["final"])
    keys = [k for k in finals[0] if not k.startswith("time/")]
    assert {k: finals[0][k] for k in keys} == {k: finals[1][k] for k in keys}


def test_divergence_stops_cleanly(cli, mnist_root, tmp_path) -> None:
    out = tmp_path / "out"
    result = cli_train(cli, mnist_root, out, "model=mlp", "norm=none", "optim.lr=1e12",
                   "optim.schedule=constant")
    assert result.exit_code == 0, result.output
    summary = json.loads((only_run(out) / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_step"] >= 1
    assert "non-finite" in result.output


def test_interrupt_keeps_what_was_logged(cli, mnist_root, tmp_path, monkeypatch) -> None:
    import bnexp.train as train_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "evaluate", interrupted)  # Ctrl-C at the first evaluation
    out = tmp_path / "out"
    result = cli_train(cli, mnist_root, out, "model=mlp")
    assert result.exit_code == 130
    run = only_run(out)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert (run / "metrics.jsonl").read_text().strip()  # the step records survive
    assert (run / "checkpoint.pt").exists()


@pytest.mark.parametrize("extra", [["trainer.precision=bf16"], ["trainer.channels_last=true"],
                                   ["trainer.compile=true", "model=mlp"]])
def test_speed_options_train_on_cpu(cli, mnist_root, tmp_path, extra) -> None:
    """The CUDA-path options also run on the CPU (bf16 autocast, channels_last, torch.compile)."""
    out = tmp_path / "out"
    result = cli_train(cli, mnist_root, out, "model=cnn", "norm=custom", *extra)
    assert result.exit_code == 0, result.output
    summary = json.loads((only_run(out) / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["final"]["test/loss"] < 10


def test_step_time_leaves_out_each_epochs_first_steps(cli, mnist_root, tmp_path, monkeypatch) -> None:
    """time/step_ms is the steady step time: the first steps of a process pay one-off costs
    (here: 3 steps made 60 ms slower each), which time/epoch_s keeps and time/step_ms does not."""
    import time as real_time

    from bnexp.train import STEADY_AFTER

    calls = []
    loss_fn = torch.nn.functional.cross_entropy

    def slow_first_steps(*args, **kwargs):
        calls.append(1)
        if len(calls) <= 3:
            real_time.sleep(0.06)
        return loss_fn(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", slow_first_steps)
    steps = 4 * STEADY_AFTER
    result = cli_train(cli, mnist_root, tmp_path / "out", "model=mlp", "trainer.epochs=1",
                   "trainer.batch_size=4", f"trainer.steps={steps}", "probe=off")
    assert result.exit_code == 0, result.output
    final = json.loads((only_run(tmp_path / "out") / "summary.json").read_text())["final"]
    whole_epoch_ms = 1000 * final["time/epoch_s"]
    assert whole_epoch_ms >= 180  # the slow steps are in the epoch's time
    assert final["time/step_ms"] * steps <= whole_epoch_ms - 150  # and not in the step time


@pytest.mark.parametrize("model,extra", [("mlp", ["model.dropout=0.5"]), ("cnn", [])])
def test_train_eval_is_the_final_model_in_eval_mode_on_training_images(
        cli, mnist_root, tmp_path, model, extra) -> None:
    """train_eval/* (and so the gap) against a direct computation from the checkpoint: the
    first train_eval_size images of the seeded training split, model in eval mode."""
    import torch.nn.functional as F
    from omegaconf import OmegaConf

    from bnexp.data import TensorLoader, load_splits
    from bnexp.models import build_model

    out = tmp_path / "out"
    result = cli_train(cli, mnist_root, out, f"model={model}", "trainer.train_eval_size=100", *extra)
    assert result.exit_code == 0, result.output
    run = only_run(out)
    final = json.loads((run / "summary.json").read_text())["final"]
    cfg = OmegaConf.load(run / "config.yaml")
    splits = load_splits(cfg.data, cfg.seed, torch.device("cpu"))
    net = build_model(cfg.model, cfg.norm, splits.spec.shape, splits.spec.num_classes)
    net.load_state_dict(torch.load(run / "checkpoint.pt", weights_only=False)["model"])
    net.eval()
    images, labels = splits.train[0][:100], splits.train[1][:100]
    x = TensorLoader(images, labels, 100, splits.spec).normalize(images)
    with torch.no_grad(), autocast(x.device, cfg.trainer.precision):  # as evaluate() runs it
        logits = net(x).float()
    assert final["train_eval/loss"] == pytest.approx(F.cross_entropy(logits, labels).item(),
                                                     rel=1e-5)
    assert final["train_eval/acc"] == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert final["gap/acc"] == pytest.approx(final["train_eval/acc"] - final["test/acc"])


def test_train_eval_size_0_logs_no_gap(cli, mnist_root, tmp_path) -> None:
    out = tmp_path / "out"
    result = cli_train(cli, mnist_root, out, "model=mlp", "trainer.train_eval_size=0")
    assert result.exit_code == 0, result.output
    final = json.loads((only_run(out) / "summary.json").read_text())["final"]
    assert "test/acc" in final and not any(k.startswith(("gap/", "train_eval/")) for k in final)


def test_single_image_inference_is_measured(cli, mnist_root, tmp_path) -> None:
    """trainer.eval_single: test images one at a time in eval mode. Real BN uses its running
    statistics and answers; the literal BN has only the batch's statistics, and the unbiased
    variance of one value is NaN: the failure is recorded as a number, not a crash."""
    finals = {}
    for norm in ("torch", "seed"):
        out = tmp_path / norm
        result = cli_train(cli, mnist_root, out, "model=mlp", f"norm={norm}", "trainer.eval_single=7")
        assert result.exit_code == 0, result.output
        finals[norm] = json.loads((only_run(out) / "summary.json").read_text())["final"]
    assert finals["torch"]["test_single/nonfinite"] == 0.0
    assert 0.0 <= finals["torch"]["test_single/acc"] <= 1.0
    assert finals["seed"]["test_single/nonfinite"] == 1.0 and finals["seed"]["test_single/acc"] == 0.0


def test_val_every_steps_and_median_step_time(cli, mnist_root, tmp_path) -> None:
    out = tmp_path / "out"
    result = cli_train(cli, mnist_root, out, "model=mlp", "trainer.epochs=1", "trainer.batch_size=4",
                   "trainer.steps=60", "trainer.val_every_steps=20", "trainer.log_every=5")
    assert result.exit_code == 0, result.output
    run = only_run(out)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "val"] == [20, 40, 60]
    assert all(0 <= r["val/acc"] <= 1 and 0 <= r["test/acc"] <= 1
               for r in records if r["kind"] == "val")
    final = json.loads((run / "summary.json").read_text())["final"]
    assert 0 < final["time/step_ms_median"] < 1000 * final["time/epoch_s"] / 10


def test_interrupted_samples_per_s_counts_only_timed_epochs(cli, mnist_root, tmp_path,
                                                            monkeypatch) -> None:
    """Ctrl-C three steps into epoch 2: samples/s is epoch 1's samples over epoch 1's time (it
    was all 14 steps over epoch 1's time)."""
    calls, loss_fn = [], torch.nn.functional.cross_entropy

    def interrupt_mid_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 15 and args[0].requires_grad:  # training forward of step 15
            raise KeyboardInterrupt
        return loss_fn(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", interrupt_mid_epoch)
    out = tmp_path / "out"
    result = cli_train(cli, mnist_root, out, "model=mlp", "trainer.train_eval_size=0",
                   "data.val_size=40", "trainer.eval_every=5")
    assert result.exit_code == 130
    summary = json.loads((only_run(out) / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] > 11
    assert summary["samples_per_s"] == pytest.approx(11 * 32 / summary["train_time_s"])


def test_epoch_line_fits_80_columns() -> None:
    from bnexp.train import _epoch_line

    m = {"train/loss": 0.123456, "train/acc": 0.9876, "test/loss": 2.3456, "test/acc": 0.99991,
         "time/epoch_s": 999.9, "time/samples_per_s": 99999.0}  # up to 99 epochs, 99,999/s
    assert len(_epoch_line(99, 99, m)) <= 80


def test_auto_precision_is_bf16_only_where_the_hardware_has_it(monkeypatch) -> None:
    """Emulated bf16 is slower than float32: auto must not pick it on a CPU without
    AVX512-BF16/AMX, and must pick it where they are."""
    from bnexp import train as T

    cpu = torch.device("cpu")
    monkeypatch.setattr(T, "_cpu_bf16", lambda: False)
    assert T.effective_precision(cpu, "auto") == "fp32"
    assert isinstance(T.autocast(cpu, "auto"), contextlib.nullcontext)
    assert T.effective_precision(cpu, "bf16") == "bf16"  # an explicit choice is kept
    monkeypatch.setattr(T, "_cpu_bf16", lambda: True)
    assert T.effective_precision(cpu, "auto") == "bf16"
    with T.autocast(cpu, "auto"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert T.effective_precision(cpu, "fp32") == "fp32"
    assert T.effective_precision(torch.device("mps"), "auto") == "fp32"
