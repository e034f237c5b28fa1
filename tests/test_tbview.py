"""What ``bnexp tb`` shows (bnexp/tbview.py): run names, the link folder TensorBoard reads, the
HParams experiment (checked with TensorBoard's own ordering code), the first URL; and the
histogram cadence that fills the Distributions page."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import torch
from torch import nn

from bnexp import tbview
from bnexp.rundir import sweep_name
from bnexp.tbview import View, experiment_columns, run_hparams, run_label, short_name, tb_url


def fake_run(folder: Path, hparams: dict, in_tb: bool = True) -> Path:
    """A run directory with one event file holding a session start (as RunLog writes it)."""
    from torch.utils.tensorboard.summary import hparams as hp_summary

    events = folder / "tb" if in_tb else folder
    _, ssi, _ = hp_summary(hparams, {})
    tbview.write_events(events / "events.out.tfevents.1.host.1.0", [ssi])
    return folder


def fake_sweep(root: Path, name: str, grid: dict[str, list[str]], jobs: list[dict]) -> Path:
    sweep = root / "sweeps" / f"2026-12-06_16-41-04_{name}_f2d663"
    sweep.mkdir(parents=True)
    (sweep / "sweep.json").write_text(json.dumps({"grid": grid}))
    for i, hp in enumerate(jobs):
        values = ",".join(f"{k}={hp[tbview.GROUP_KEYS.get(k, k)]}" for k in grid)
        fake_run(sweep / f"{i}_{values}", hp)
    return sweep


def identity(norm: str, arch: str = "mlp", **extra: object) -> dict:
    return {"norm.kind": norm, "model.arch": arch, "data.name": "mnist", "optim.lr": 0.1,
            "trainer.batch_size": 64, "seed": 0, **extra}


def test_run_labels_are_short_with_the_variant_first(tmp_path: Path) -> None:
    sweep = fake_sweep(tmp_path, "mlp-norm-sweep", {"norm": ["none", "torch"]},
                       [identity("none"), identity("torch")])
    assert run_label(sweep / "0_norm=none") == "mlp-norm-sweep/norm=none"
    single = tmp_path / "runs" / "2026-12-06_16-41-04_mnist-cnn-torch_a1b2c3"
    assert run_label(single) == "mnist-cnn-torch" and short_name("timing") == "timing"
    assert tbview.swept_keys(sweep / "0_norm=none") == ["norm"] and not tbview.swept_keys(single)
    assert sweep_name(["model=mlp", "seed=0", "data.root=x"], ["norm"]) == "mlp-norm-sweep"
    assert sweep_name([], ["optim.lr", "seed"]) == "lr,seed-sweep"


def test_run_hparams_are_the_swept_keys_and_the_identity(tmp_path: Path) -> None:
    flat = {**identity("torch"), "data.root": "/x", "trainer.epochs": 2, "reg.dropout": 0.0}
    hp = run_hparams(flat, ["norm=torch", "reg=dropout", "trainer.epochs=2"],
                     ["norm", "reg", "trainer.epochs"])
    assert list(hp) == ["norm.kind", "reg", "trainer.epochs", "model.arch", "data.name",
                        "optim.lr", "trainer.batch_size", "seed"]
    assert hp["reg"] == "dropout" and "data.root" not in hp  # a group without a key: its choice


def _view(tmp_path: Path) -> tuple[View, Path]:
    logdir = tmp_path / "outputs"
    fake_sweep(logdir, "mlp-norm-sweep", {"norm": ["none", "torch", "custom"]},
               [identity(k) for k in ("none", "torch", "custom")])
    fake_run(logdir / "runs" / "2026-12-06_16-50-00_mnist-cnn-torch_c0ffee",
             identity("torch", "cnn"))
    return View(logdir, tmp_path / "view"), logdir


def test_view_links_every_run_under_its_label_and_follows_changes(tmp_path: Path) -> None:
    view, logdir = _view(tmp_path)
    assert view.refresh() is True  # the first experiment summary
    names = {str(p.parent.relative_to(view.folder)) for p in view.folder.rglob("events.*")
             if p.is_symlink()}
    assert names == {"mlp-norm-sweep/norm=none", "mlp-norm-sweep/norm=torch",
                     "mlp-norm-sweep/norm=custom", "mnist-cnn-torch"}
    assert view.color_by_norm() is False  # mnist-cnn-torch does not say norm=
    assert view.refresh() is False  # nothing new
    twin = fake_run(logdir / "runs" / "2026-12-06_17-00-00_mnist-cnn-torch_beef00",
                    identity("torch", "cnn"), in_tb=False)  # event files in the run dir itself
    moved = next((logdir / "sweeps").rglob("0_norm=none/tb"))
    moved.rename(moved.parent / ".previous")  # an attempt set aside: its link goes
    assert view.refresh() is False  # same columns: TensorBoard needs no restart
    names = {str(p.parent.relative_to(view.folder)) for p in view.folder.rglob("events.*")
             if p.is_symlink()}
    assert "mnist-cnn-torch~beef00" in names and "mlp-norm-sweep/norm=none" not in names
    assert view.labels[twin] == "mnist-cnn-torch~beef00"


def test_hparams_experiment_puts_the_swept_key_first(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import backend_context, metadata

    view, logdir = _view(tmp_path)
    view.refresh()
    events = EventAccumulator(str(view.experiment_file.parent))
    events.Reload()
    content = events.PluginTagToContent("hparams")[metadata.EXPERIMENT_TAG]
    experiment = metadata.parse_experiment_plugin_data(content)
    backend_context._sort_and_reduce_to_hparams_limit(experiment)  # TensorBoard's own order
    names = [h.name for h in experiment.hparam_infos]
    assert names[0] == "norm.kind" and experiment.hparam_infos[0].differs
    assert set(names) == {"norm.kind", "model.arch", "data.name", "optim.lr",
                          "trainer.batch_size", "seed"}
    assert not any(h.differs for h in experiment.hparam_infos[1:])  # arch differs, not swept
    assert [m.name.tag for m in experiment.metric_infos] == [
        "test/acc", "val/acc", "gap/acc", "gap/loss", "test/loss"]
    fake_sweep(logdir / "more", "lr-sweep", {"optim.lr": ["0.1", "0.5"]},
               [identity("torch", **{"optim.lr": 0.5})])
    assert view.refresh() is True  # a new swept key: new columns, TensorBoard restarts


def test_experiment_columns_without_sweeps_mark_what_differs() -> None:
    sessions = [identity("none", output_dir="a", name="x"), identity("torch", output_dir="b",
                                                                      name="y", extra=1)]
    columns = experiment_columns(sessions, swept=set(), any_sweep=False)
    assert columns[0] == ("norm.kind", "text", True)
    names = [c[0] for c in columns]
    assert "output_dir" not in names and "name" not in names  # differ, but no factor
    assert ("seed", "number", False) in columns and "extra" not in names  # one value


def test_the_printed_url_opens_unsmoothed_on_loss_accuracy_and_gap() -> None:
    url = urlparse(tb_url("127.0.0.1", 6006, color_by_norm=True))
    query = parse_qs(url.query)
    assert query["smoothing"] == ["0"] and "tagFilter" not in query  # a filter hides pins
    pins = [p["tag"] for p in json.loads(query["pinnedCards"][0])]
    assert pins == ["train/loss", "test/loss", "train/acc", "test/acc", "gap/acc", "gap/loss"]
    assert query["runColorGroup"] == ["regex:norm=([^,/]+)"]
    assert "runColorGroup" not in tb_url("h", 1)


class _Log:
    def __init__(self) -> None:
        self.hist_steps: set[int] = set()
        self.records: list[tuple[int, dict]] = []
        self.tb = self

    def add_histogram_raw(self, tag: str, global_step: int, **_: object) -> None:
        self.hist_steps.add(global_step)

    def scalars(self, step: int, values: dict, **_: object) -> None:
        self.records.append((step, values))


@pytest.mark.parametrize("every,hist_every", [(200, 5), (4, 6), (3, 0)])
def test_histograms_come_every_hist_every_steps_whatever_probe_every_is(
        every: int, hist_every: int) -> None:
    from bnexp.models import build_model
    from bnexp.probes import Probes
    from tests.conftest import compose

    torch.manual_seed(0)
    cfg = compose("model=mlp", "model.depth=2", "model.width=8", f"probe.every={every}",
                  f"probe.hist_every={hist_every}")
    model = build_model(cfg.model, cfg.norm, (1, 12, 12), 10)
    log, opt = _Log(), torch.optim.SGD(model.parameters(), lr=0.1)
    probes = Probes(model, cfg.probe, "relu", torch.randn(16, 1, 12, 12), log, opt)
    for step in range(25):
        x, y = torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,))
        with probes.at(step, x, y):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    wanted = {s for s in range(25) if hist_every and s % hist_every == 0}
    assert log.hist_steps == wanted  # not only multiples of both cadences
    assert {s for s, _ in log.records} == {s for s in range(25) if s % every == 0}
    assert all(values for _, values in log.records)  # histogram-only steps write no record
