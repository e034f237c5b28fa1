"""End-to-end ``bnexp train`` through the CLI on tiny generated datasets in the real formats:
the files a user looks at (run directory, summary.json, metrics.jsonl, TensorBoard events)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import TINY

EXPECTED_TAGS = {"train/loss", "train/acc", "opt/lr", "val/loss", "val/acc", "test/loss",
                 "test/acc", "train_eval/loss", "train_eval/acc", "gap/loss", "gap/acc",
                 "time/step_ms", "time/samples_per_s"}


def train(cli, root: Path, out: Path, *overrides: str):
    return cli("train", f"data.root={root}", f"output_dir={out}", *TINY, *overrides)


def only_run(out: Path) -> Path:
    runs = list((out / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.parametrize("model,norm", [("mlp", "custom"), ("cnn", "torch"), ("mlp", "none")])
def test_train_mnist_writes_a_complete_run(cli, mnist_root, tmp_path, model, norm) -> None:
    out = tmp_path / "out"
    result = train(cli, mnist_root, out, f"model={model}", f"norm={norm}")
    assert result.exit_code == 0, result.output
    run = only_run(out)
    assert f"_mnist-{model}-{norm}_" in run.name
    assert str(run) in result.output and "completed" in result.output

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    assert summary["steps"] == 2 * (360 // 32)
    assert 0 <= summary["final"]["test/acc"] <= 1 and summary["samples_per_s"] > 0
    assert summary["versions"]["torch"] == torch.__version__

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    last = epochs[-1]
    assert abs(last["gap/acc"] - (last["train_eval/acc"] - last["test/acc"])) < 1e-9
    assert abs(last["gap/loss"] - (last["train_eval/loss"] - last["test/loss"])) < 1e-9
    assert any(r["kind"] == "step" and "train/loss" in r for r in records)

    config = (run / "config.yaml").read_text()
    assert f"kind: {norm}" in config and f"arch: {model}" in config
    assert "norm=" + norm in (run / "overrides.yaml").read_text()
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["step"] == summary["steps"] and "model" in state

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert EXPECTED_TAGS <= set(events.Tags()["scalars"])
    assert "_hparams_/experiment" in events.PluginTagToContent("hparams")  # HParams dashboard
    assert "custom_scalars__config__" in events.Tags()["tensors"]  # written once per run
    test_acc = [e.value for e in events.Scalars("test/acc")]
    assert test_acc[-1] == pytest.approx(summary["final"]["test/acc"])


def test_bn_learns_the_tiny_digits(cli, mnist_root, tmp_path) -> None:
    result = train(cli, mnist_root, tmp_path / "out", "model=mlp", "norm=custom",
                   "trainer.epochs=6", "optim.lr=0.05")
    assert result.exit_code == 0, result.output
    summary = json.loads((only_run(tmp_path / "out") / "summary.json").read_text())
    assert summary["final"]["test/acc"] > 0.8  # the patches are trivially separable


def test_train_cifar_format(cli, cifar_root, tmp_path) -> None:
    out = tmp_path / "out"
    result = train(cli, cifar_root, out, "data=cifar10", "model=cnn", "norm=custom")
    assert result.exit_code == 0, result.output
    summary = json.loads((only_run(out) / "summary.json").read_text())
    assert summary["status"] == "completed"


def test_same_seed_same_metrics(cli, mnist_root, tmp_path) -> None:
    finals = []
    for i in range(2):
        out = tmp_path / f"out{i}"
        assert train(cli, mnist_root, out, "model=cnn", "norm=custom", "seed=3").exit_code == 0
        finals.append(json.loads((only_run(out) / "summary.json").read_text())["final"])
    keys = [k for k in finals[0] if not k.startswith("time/")]
    assert {k: finals[0][k] for k in keys} == {k: finals[1][k] for k in keys}


def test_divergence_stops_cleanly(cli, mnist_root, tmp_path) -> None:
    out = tmp_path / "out"
    result = train(cli, mnist_root, out, "model=mlp", "norm=none", "optim.lr=1e12",
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
    result = train(cli, mnist_root, out, "model=mlp")
    assert result.exit_code == 130
    run = only_run(out)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert (run / "metrics.jsonl").read_text().strip()  # the step records survive
    assert (run / "checkpoint.pt").exists()


@pytest.mark.parametrize("overrides,needle", [
    (["norm=batchy"], "Could not find 'norm/batchy'"),
    (["trainer.epochz=3"], "epochz"),
    (["trainer.epochs=three"], "trainer.epochs"),
    (["optim.lr=0"], "optim.lr"),
    (["trainer.batch_size=-4"], "trainer.batch_size"),
    (["trainer.epochs=0"], "trainer.epochs"),
    (["data=imagenet"], "data/imagenet"),
    (["data.verify=true"], "MD5 mismatch"),  # the generated files are not the official ones
    (["data.root={empty}", "data.download=false"], "data.download=false"),
    (["trainer.batch_size=100000"], "trainer.batch_size"),
    (["trainer.device=cuda"] if not torch.cuda.is_available() else ["trainer.device=tpu"],
     "trainer.device"),
])
def test_bad_input_is_one_paragraph_exit_2_and_no_run_dir(cli, mnist_root, tmp_path,
                                                          overrides, needle) -> None:
    out = tmp_path / "out"
    overrides = [o.format(empty=tmp_path / "empty") for o in overrides]
    result = train(cli, mnist_root, out, *overrides)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output and result.output.startswith("error: ")
    assert not (out / "runs").exists() or not list((out / "runs").iterdir())


def test_config_command_prints_resolved_yaml(cli) -> None:
    result = cli("config", "norm=custom", "optim.lr=0.05")
    assert result.exit_code == 0
    assert "kind: custom" in result.output and "lr: 0.05" in result.output
    assert "${" not in result.output


@pytest.mark.parametrize("extra", [["trainer.precision=bf16"], ["trainer.channels_last=true"],
                                   ["trainer.compile=true", "model=mlp"]])
def test_speed_options_train_on_cpu(cli, mnist_root, tmp_path, extra) -> None:
    """The CUDA-path options also run on the CPU (bf16 autocast, channels_last, torch.compile)."""
    out = tmp_path / "out"
    result = train(cli, mnist_root, out, "model=cnn", "norm=custom", *extra)
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
    result = train(cli, mnist_root, tmp_path / "out", "model=mlp", "trainer.epochs=1",
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
    result = train(cli, mnist_root, out, f"model={model}", "trainer.train_eval_size=100", *extra)
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
    with torch.no_grad():
        logits = net(x)
    assert final["train_eval/loss"] == pytest.approx(F.cross_entropy(logits, labels).item(),
                                                     rel=1e-5)
    assert final["train_eval/acc"] == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert final["gap/acc"] == pytest.approx(final["train_eval/acc"] - final["test/acc"])


def test_train_eval_size_0_logs_no_gap(cli, mnist_root, tmp_path) -> None:
    out = tmp_path / "out"
    result = train(cli, mnist_root, out, "model=mlp", "trainer.train_eval_size=0")
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
        result = train(cli, mnist_root, out, "model=mlp", f"norm={norm}", "trainer.eval_single=7")
        assert result.exit_code == 0, result.output
        finals[norm] = json.loads((only_run(out) / "summary.json").read_text())["final"]
    assert finals["torch"]["test_single/nonfinite"] == 0.0
    assert 0.0 <= finals["torch"]["test_single/acc"] <= 1.0
    assert finals["seed"]["test_single/nonfinite"] == 1.0 and finals["seed"]["test_single/acc"] == 0.0


def test_val_every_steps_and_median_step_time(cli, mnist_root, tmp_path) -> None:
    out = tmp_path / "out"
    result = train(cli, mnist_root, out, "model=mlp", "trainer.epochs=1", "trainer.batch_size=4",
                   "trainer.steps=60", "trainer.val_every_steps=20", "trainer.log_every=5")
    assert result.exit_code == 0, result.output
    run = only_run(out)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "val"] == [20, 40, 60]
    assert all(0 <= r["val/acc"] <= 1 and 0 <= r["test/acc"] <= 1
               for r in records if r["kind"] == "val")
    final = json.loads((run / "summary.json").read_text())["final"]
    assert 0 < final["time/step_ms_median"] < 1000 * final["time/epoch_s"] / 10


def test_progress_bar_never_overshoots(cli, mnist_root, tmp_path, monkeypatch) -> None:
    """Log points every 3 steps do not line up with 11-step epochs: the bar is set to the steps
    done in the epoch, never advanced past its total (it showed 350/312)."""
    from bnexp.progress import Progress

    seen, real_update = [], Progress.update

    def record(self, done, loss):
        real_update(self, done, loss)
        task = self._bar.tasks[0]
        seen.append((task.completed, task.total))

    monkeypatch.setattr(Progress, "update", record)
    result = train(cli, mnist_root, tmp_path / "out", "model=mlp", "trainer.progress=bar",
                   "trainer.log_every=3", "trainer.epochs=3")
    assert result.exit_code == 0, result.output
    assert seen and all(done <= total for done, total in seen)
    assert (11, 11) in seen  # each epoch ends full


def test_hparams_have_one_type_per_key_and_readable_trial_names(cli, mnist_root, tmp_path) -> None:
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    out = tmp_path / "out"
    result = train(cli, mnist_root, out, "model=mlp", "data.train_size=200")
    assert result.exit_code == 0, result.output
    run = only_run(out)
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = HParamsPluginData.FromString(content).session_start_info
    hp = start.hparams
    assert hp["trainer.checkpoint"].string_value == "true"  # not 0/1
    assert hp["data.train_size"].string_value == "200"  # may be null: always text
    assert hp["trainer.steps"].string_value == "null"
    assert hp["optim.lr"].number_value == pytest.approx(0.1)
    uid = run.name.split("_")[-1]
    assert start.group_name.startswith(uid)  # distinct trial ids, not the shared date prefix


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
    result = train(cli, mnist_root, out, "model=mlp", "trainer.train_eval_size=0",
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
