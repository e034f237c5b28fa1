"""bnexp report and bnexp claims: aggregation against hand-computed numbers on synthetic run
directories, every figure made, corrupt runs reported and skipped, claims end to end."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import yaml

from bnexp import figures
from bnexp.report import write_report
from bnexp.runs import ci95, find_runs, group_runs
from tests.conftest import TINY


def fake_run(root: Path, name: str, norm: str, seed: int, test_acc: float, gap: float,
             lr: float = 0.1, status: str = "completed", step_ms: float = 2.0,
             grad_kinds: tuple[str, ...] = ("weight", "input")) -> Path:
    """A run directory as bnexp writes it, with chosen numbers (gradient norms of the probed
    ``grad_kinds`` only)."""
    d = root / name
    d.mkdir(parents=True)
    config = {"norm": {"kind": norm}, "optim": {"lr": lr}, "seed": seed, "name": "x",
              "data": {"root": f"/somewhere/{seed}"}}
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    (d / "overrides.yaml").write_text(f"- norm={norm}\n- seed={seed}\n- optim.lr={lr}\n")
    final = {"test/acc": test_acc, "test/loss": 1 - test_acc, "train/acc": test_acc + gap,
             "gap/acc": gap, "gap/loss": -gap, "train/loss": 0.5}
    summary = {"status": status, "seed": seed, "final": final, "samples_per_s": 1000.0}
    if status == "diverged":
        summary["diverged_step"] = 7
    (d / "summary.json").write_text(json.dumps(summary))
    records = []
    for step in (0, 10, 20):
        records.append({"step": step, "kind": "step", "train/loss": 1.0 / (step + 1),
                        "train/acc": 0.5})
        grads = {"grad/fc1/weight": 2.0 + seed, "grad/fc2/weight": 1.0, "grad/head/weight": 0.5,
                 "grad/fc1/input": 0.1, "grad/fc2/input": (0.2 + seed) * (1 + step),
                 "grad/head/input": 0.4}
        records.append({"step": step, "kind": "probe",
                        **{k: v for k, v in grads.items() if k.split("/")[2] in grad_kinds},
                        "act/fc2/norm/p15": -1.0 + step / 100, "act/fc2/norm/p50": 0.0,
                        "act/fc2/norm/p85": 1.0})
    records.append({"step": 20, "kind": "epoch", "epoch": 1, "test/loss": 1 - test_acc,
                    "test/acc": test_acc, "time/step_ms": step_ms, "train/loss": 0.4,
                    "train/acc": test_acc + gap})
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return d


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    accs = {"none": [0.90, 0.91, 0.92], "torch": [0.97, 0.98, 0.99]}
    for norm, values in accs.items():
        for seed, acc in enumerate(values):
            fake_run(root, f"{norm}-{seed}", norm, seed, acc, gap=0.05 if norm == "none" else 0.01,
                     step_ms=2.0 if norm == "none" else 3.0 + seed)
    fake_run(root, "torch-diverged", "torch", 9, float("nan"), 0.0, status="diverged")
    return root


def test_ci95_matches_a_hand_computation() -> None:
    values = [0.90, 0.92, 0.94]
    stat = ci95(values)
    sd = math.sqrt(((0.90 - 0.92) ** 2 + 0 + (0.94 - 0.92) ** 2) / 2)  # 0.02
    assert stat["mean"] == pytest.approx(0.92) and stat["std"] == pytest.approx(sd)
    half = 4.303 * sd / math.sqrt(3)  # t(0.975, df=2)
    assert (stat["lo"], stat["hi"]) == pytest.approx((0.92 - half, 0.92 + half), rel=1e-4)
    assert ci95([1.0])["lo"] is None and ci95([])["n"] == 0


def test_grouping_and_aggregation(runs_root: Path) -> None:
    runs, problems = find_runs([runs_root])
    assert not problems and len(runs) == 7
    keys, groups = group_runs(runs)
    assert keys == ["norm"]  # seeds and data paths differ but are not factors
    by_label = {g.label: g for g in groups}
    torch_group = by_label["norm=torch"]
    assert torch_group.statuses() == {"completed": 3, "diverged": 1}  # shown, not dropped
    acc = torch_group.stat("test/acc")
    assert acc["n"] == 3 and acc["mean"] == pytest.approx(0.98)
    assert acc["std"] == pytest.approx(statistics.stdev([0.97, 0.98, 0.99]))
    assert torch_group.stat("time/step_ms")["mean"] == pytest.approx(4.0)


def test_report_writes_table_csv_and_every_figure(cli, runs_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = cli("report", str(runs_root), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "norm=torch" in result.output and "diverged" in result.output
    text = (out / "report.md").read_text()
    assert "| norm=none | 3 (3 completed) | 91.00 [" in text
    assert "torch-diverged" in text and "**diverged** at step 7" in text
    rows = list(__import__("csv").DictReader(open(out / "results.csv")))
    none = next(r for r in rows if r["group"] == "norm=none")
    assert float(none["test/acc:mean"]) == pytest.approx(0.91) and none["test/acc:n"] == "3"
    for name in ("learning_curves", "gap", "grad_norms", "input_grad_norms", "figure1_percentiles",
                 "step_time"):
        png = out / "figures" / f"{name}.png"
        assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_input_gradient_figure_plots_the_backpropagated_norm_per_layer(runs_root: Path) -> None:
    """grad/<layer>/input, what the vanishing and exploding claims are about: per group, the
    mean over its runs (diverged ones too: probes precede the divergence) at the first and the
    last probe, layer by layer in network order."""
    _, groups = group_runs(find_runs([runs_root])[0])
    layers, values = figures.grad_profile(groups, "input")
    assert layers == ["fc1", "fc2", "head"]
    none, bn = values["norm=none"], values["norm=torch"]  # seeds 0-2; torch also has seed 9
    assert none["init"] == pytest.approx([0.1, statistics.fmean([0.2, 1.2, 2.2]), 0.4])
    assert none["last"] == pytest.approx([0.1, 21 * statistics.fmean([0.2, 1.2, 2.2]), 0.4])
    assert bn["init"][1] == pytest.approx(statistics.fmean([0.2, 1.2, 2.2, 9.2]))


def test_report_draws_the_input_gradient_figure_exactly_when_runs_have_it(tmp_path: Path) -> None:
    only_input, no_input = tmp_path / "only_input", tmp_path / "no_input"
    for seed in range(2):
        fake_run(only_input, f"r{seed}", "none", seed, 0.9, 0.01, grad_kinds=("input",))
        fake_run(no_input, f"r{seed}", "none", seed, 0.9, 0.01, grad_kinds=("weight",))
    found = write_report([only_input], tmp_path / "a")
    assert found["figures"]["Backpropagated gradient per layer"].name == "input_grad_norms.png"
    assert "Gradient norms per layer" not in found["figures"]  # no weight gradients logged
    text = (tmp_path / "a" / "report.md").read_text()
    assert "![Backpropagated gradient per layer](figures/input_grad_norms.png)" in text
    found = write_report([no_input], tmp_path / "b")
    assert "Backpropagated gradient per layer" not in found["figures"]
    assert not (tmp_path / "b" / "figures" / "input_grad_norms.png").exists()


def test_report_of_a_trained_run_has_the_input_gradient_figure(cli, mnist_root: Path,
                                                               tmp_path: Path) -> None:
    """End to end: the probes of a real `bnexp train` reach the report's figure."""
    out = tmp_path / "out"
    result = cli("train", f"data.root={mnist_root}", f"output_dir={out}", *TINY,
                 "trainer.epochs=1", "model=mlp", "probe.every=4")
    assert result.exit_code == 0, result.output
    result = cli("report", str(out), "--out", str(tmp_path / "report"))
    assert result.exit_code == 0, result.output
    png = tmp_path / "report" / "figures" / "input_grad_norms.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "figures/input_grad_norms.png" in (tmp_path / "report" / "report.md").read_text()


def test_accuracy_vs_lr_figure_marks_divergence(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for i, lr in enumerate((0.01, 0.1, 1.0)):
        fake_run(root, f"r{i}", "none", 0, 0.9, 0.0, lr=lr,
                 status="diverged" if lr == 1.0 else "completed")
    found = write_report([root], tmp_path / "out")
    assert "Final accuracy against learning rate" in found["figures"]


def test_corrupt_run_is_reported_and_skipped(cli, runs_root: Path, tmp_path: Path) -> None:
    bad = runs_root / "broken"
    bad.mkdir()
    (bad / "summary.json").write_text("{not json")
    half = runs_root / "half"
    half.mkdir()
    (half / "metrics.jsonl").write_text('{"step": 1}\n')  # no summary.json yet
    out = tmp_path / "report"
    result = cli("report", str(runs_root), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "broken" in result.output
    text = (out / "report.md").read_text()
    assert "## Skipped (unreadable)" in text and "broken" in text and "half" in text
    assert "| norm=none | 3 (3 completed)" in text  # the report still renders


def test_report_of_nothing_is_a_user_error(cli, tmp_path: Path) -> None:
    result = cli("report", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "No runs found" in result.output


def test_a_failed_report_leaves_the_previous_one_untouched(cli, runs_root: Path, tmp_path: Path,
                                                           monkeypatch) -> None:
    out = tmp_path / "report"
    assert cli("report", str(runs_root), "--out", str(out)).exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("report", str(empty), "--out", str(out))
    assert result.exit_code == 2 and "Nothing in" in result.output
    from bnexp import figures

    def broken(*_args, **_kw):
        raise RuntimeError("a figure failed half-way")

    monkeypatch.setattr(figures, "all_figures", broken)
    with pytest.raises(RuntimeError):
        write_report([runs_root], out)
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # report.md, results.csv and figures exactly as they were








def test_default_groups_are_labelled_by_their_config_and_repeats_are_not_seeds(tmp_path) -> None:
    """A run that used the default norm is labelled norm=torch (its config), not norm=None; an
    exact repeat of a run (same config and seed) is not a second seed."""
    root = tmp_path / "runs"
    fake_run(root, "explicit-none", "none", 0, 0.9, 0.01)
    d = fake_run(root, "default-torch", "torch", 0, 0.95, 0.01)
    (d / "overrides.yaml").write_text("- seed=0\n- optim.lr=0.1\n")  # norm from the default
    for i in range(3):
        fake_run(root, f"repeat-{i}", "none", 1, 0.91, 0.01)
    runs, _ = find_runs([root])
    keys, groups = group_runs(runs)
    labels = {g.label: g for g in groups}
    assert set(labels) == {"norm=none", "norm=torch"}
    assert len(labels["norm=none"].runs) == 2 and labels["norm=none"].repeats == 2
    assert labels["norm=none"].stat("test/acc")["n"] == 2


def test_optimization_landscape_figure_is_drawn_only_from_its_probes(tmp_path: Path) -> None:
    """The ICS/landscape figure appears when runs carry those probes and plots the per-probe
    mean over layers (metrics.probe_series); runs without them get no such figure."""
    from bnexp.metrics import probe_series

    root = tmp_path / "runs"
    for norm in ("none", "torch"):
        for seed in range(2):
            d = fake_run(root, f"{norm}-{seed}", norm, seed, 0.9, 0.01)
            lines = (d / "metrics.jsonl").read_text().splitlines()
            lines += [json.dumps({"step": s, "kind": "probe", "ics/fc1/rel": 0.0,
                                  "ics/fc2/rel": 0.2 * (s + 1), "ics/fc2/cos": 0.9,
                                  "landscape/beta": 3.0 + seed, "landscape/grad_change": 0.5})
                      for s in (0, 10)]
            (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    _, groups = group_runs(find_runs([root])[0])
    assert probe_series(groups[0].runs[0].records, "ics/*/rel") == [(0, 0.1), (10, pytest.approx(1.1))]
    assert figures.optimization_landscape(groups, tmp_path / "o.png").exists()
    plain = tmp_path / "plain"
    fake_run(plain, "a", "none", 0, 0.9, 0.01)
    assert figures.optimization_landscape(group_runs(find_runs([plain])[0])[1],
                                          tmp_path / "p.png") is None


def test_every_figure_says_what_produced_it(tmp_path: Path) -> None:
    """all_figures' stamp (date, machine, command) is printed on each figure it saves."""
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots()
    token = figures._STAMP.set(figures.stamp_text("bnexp report outputs/x", "2026-12-06 12:00"))
    try:
        figures._save(fig, tmp_path / "f.png")
    finally:
        figures._STAMP.reset(token)
    texts = [t.get_text() for t in fig.texts]
    assert len(texts) == 1 and texts[0].startswith("2026-12-06 12:00 · ")
    assert "CPUs · bnexp report outputs/x" in texts[0]
    fig, _ = plt.subplots()
    figures._save(fig, tmp_path / "g.png")  # outside all_figures: no stamp
    assert not fig.texts


def test_a_packs_replicas_count_once_in_a_timing() -> None:
    """Replicas of one packed model share its clock: their equal step times are one
    measurement (n counts packs), while their accuracies stay one value per run."""
    from bnexp.runs import Group, Run

    def run(i: int, group: str | None, step_ms: float) -> Run:
        summary = {"status": "completed", "final": {"test/acc": 0.9 + i / 100}}
        if group:
            summary["packed"] = {"k": i, "K": 3, "group": group}
        return Run(dir=Path(f"/sweep/{i}"), summary=summary, config={}, overrides={},
                   records=[{"kind": "epoch", "step": 10, "time/step_ms": step_ms}])

    g = Group("x", [run(0, "0_a", 2.0), run(1, "0_a", 2.0), run(2, "0_a", 2.0),
                    run(3, "3_a", 3.0), run(4, "3_a", 3.0), run(5, None, 5.0)])
    assert g.stat("time/step_ms")["n"] == 3
    assert g.stat("time/step_ms")["mean"] == pytest.approx(10 / 3)
    assert g.stat("test/acc")["n"] == 6
