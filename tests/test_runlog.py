"""bnexp/runlog.py: the run directory a user looks at after ``bnexp train`` (config.yaml,
summary.json, metrics.jsonl, TensorBoard events with custom scalars and HParams)."""

from __future__ import annotations

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bnexp.tbview import short_name
from tests.conftest import TINY, cli_train, only_run

EXPECTED_TAGS = {"train/loss", "train/acc", "opt/lr", "val/loss", "val/acc", "test/loss",
                 "test/acc", "train_eval/loss", "train_eval/acc", "gap/loss", "gap/acc",
                 "time/step_ms", "time/samples_per_s"}


@pytest.mark.parametrize("model,norm", [("mlp", "custom"), ("cnn", "torch"), ("mlp", "none")])
def test_train_mnist_writes_a_complete_run(cli, mnist_root, tmp_path, model, norm) -> None:
    out = tmp_path / "out"
    result = cli_train(cli, mnist_root, out, f"model={model}", f"norm={norm}")
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
    hparams = events.PluginTagToContent("hparams")  # HParams dashboard: this run's session;
    assert "_hparams_/session_start_info" in hparams  # the experiment is bnexp tb's (tbview)
    assert "_hparams_/experiment" not in hparams
    assert "custom_scalars__config__" in events.Tags()["tensors"]  # written once per run
    test_acc = [e.value for e in events.Scalars("test/acc")]
    assert test_acc[-1] == pytest.approx(summary["final"]["test/acc"])






























def _session_start(run):
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    return HParamsPluginData.FromString(content).session_start_info


def test_hparams_are_the_identity_keys_and_the_trial_is_named_like_the_run(
        cli, mnist_root, tmp_path) -> None:
    out = tmp_path / "out"
    result = cli_train(cli, mnist_root, out, "model=mlp", "data.train_size=200")
    assert result.exit_code == 0, result.output
    start = _session_start(only_run(out))
    hp = start.hparams
    assert set(hp) == {"norm.kind", "model.arch", "data.name", "optim.lr",
                       "trainer.batch_size", "seed"}  # not all 61 config keys
    assert hp["norm.kind"].string_value == "torch" and hp["model.arch"].string_value == "mlp"
    assert hp["optim.lr"].number_value == pytest.approx(0.2)  # configs/optim/sgd.yaml's lr
    assert start.group_name == "mnist-mlp-torch"  # the run's name, not the shared date prefix


def test_a_sweep_job_logs_its_swept_keys_too(cli, mnist_root, tmp_path) -> None:
    out = tmp_path / "out"
    result = cli("train", "-m", f"data.root={mnist_root}", f"output_dir={out}", *TINY,
                 "trainer.epochs=1", "model=mlp", "norm=none,torch", "data.train_size=64,96",
                 "trainer.checkpoint=false")
    assert result.exit_code == 0, result.output
    sweep, = (out / "sweeps").iterdir()
    assert short_name(sweep.name) == "mlp-norm,train_size-sweep"  # says what was swept
    job = sweep / "1_data.train_size=96,norm=none"
    start = _session_start(job)
    assert set(start.hparams) == {"norm.kind", "data.train_size", "model.arch", "data.name",
                                  "optim.lr", "trainer.batch_size", "seed"}
    assert start.hparams["data.train_size"].string_value == "96"  # nullable: always text
    assert start.group_name == "mlp-norm,train_size-sweep/data.train_size=96,norm=none"
