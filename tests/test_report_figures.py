"""The report's figures as a student reads them (issue 25): the baseline first and one colour per
variant everywhere, coinciding variants still visible, shared y scales where panels are
compared, n stated and no interval at n = 1, step times marked as noisy, one folder per report."""

from __future__ import annotations

from pathlib import Path

import pytest

from bnexp import figures
from bnexp.runs import find_runs, group_runs
from tests.test_report import fake_run


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Each figure drawn, by file name, instead of saved."""
    figs: dict[str, object] = {}

    def keep(fig, path: Path) -> Path:
        if path.name in figs:
            figures.plt.close(figs[path.name])
        figs[path.name] = fig
        return path

    monkeypatch.setattr(figures, "_save", keep)
    yield figs
    figures.plt.close("all")


def groups_of(root: Path, seeds: int = 1) -> list:
    # custom coincides with torch exactly; alphabetically "none" would sit in the middle
    for norm, acc in (("custom", 0.97), ("none", 0.90), ("torch", 0.97)):
        for seed in range(seeds):
            fake_run(root, f"{norm}-{seed}", norm, seed, acc + seed / 100, gap=0.02)
    return group_runs(find_runs([root])[0])[1]


def test_baseline_first_and_one_colour_per_variant_everywhere(tmp_path, drawn) -> None:
    groups = groups_of(tmp_path / "runs")
    assert [g.label for g in groups] == ["norm=custom", "norm=none", "norm=torch"]
    assert [g.label for g in figures.ordered(groups)] == ["norm=none", "norm=torch", "norm=custom"]
    figures.all_figures(groups, tmp_path / "figs")
    curves = drawn["learning_curves.png"].axes[0]
    lines = {ln.get_label().split(" ")[0]: ln for ln in curves.get_lines()}
    assert list(lines) == ["norm=none", "norm=torch", "norm=custom"]  # drawn (and listed) so
    for norm, line in lines.items():
        assert line.get_color() == figures.NORM_COLORS[norm.split("=")[1]]
    torch_line, custom_line = lines["norm=torch"], lines["norm=custom"]
    assert list(torch_line.get_ydata()) == list(custom_line.get_ydata())  # they coincide...
    assert (torch_line.get_linestyle(), torch_line.get_marker()) != (
        custom_line.get_linestyle(), custom_line.get_marker())  # ...and both stay visible
    grad = drawn["grad_norms.png"].axes[0]
    assert [ln.get_color() for ln in grad.get_lines()] == [
        figures.NORM_COLORS[k] for k in ("none", "torch", "custom")]


def test_compared_panels_share_their_y_scale(tmp_path, drawn) -> None:
    figures.all_figures(groups_of(tmp_path / "runs"), tmp_path / "figs")
    axes = drawn["learning_curves.png"].axes
    assert axes[0].get_shared_y_axes().joined(axes[0], axes[1])  # train and test loss
    assert axes[2].get_shared_y_axes().joined(axes[2], axes[3])  # train and test accuracy
    fig1 = drawn["figure1_percentiles.png"].axes
    assert all(fig1[0].get_shared_y_axes().joined(fig1[0], ax) for ax in fig1[1:3])
    styles = {ln.get_label(): (ln.get_linestyle(), ln.get_marker()) for ln in fig1[0].get_lines()
              if ln.get_label() in ("p15", "p50", "p85")}
    assert len(set(styles.values())) == 3  # p15 and p85 no longer look alike


def _texts(fig) -> str:
    return " ".join([t.get_text() for t in fig.texts] + [ax.get_title() for ax in fig.axes])


def test_n_is_stated_and_no_interval_is_claimed_at_one_run(tmp_path, drawn) -> None:
    figures.all_figures(groups_of(tmp_path / "one"), tmp_path / "figs")
    for name in ("learning_curves.png", "gap.png", "step_time.png"):
        text = _texts(drawn[name])
        assert "n = 1" in text and "no interval" in text, name
        assert "95%" not in text and "± sd" not in text, name
    gap_axes = drawn["gap.png"].axes[0]
    assert [t.get_text() for t in gap_axes.get_yticklabels()][0] == "norm=none (n=1)"
    assert not any(c.get_label() == "_nolegend_" and hasattr(c, "has_xerr") and c.has_xerr
                   for c in gap_axes.containers)
    figures.plt.close("all")
    drawn.clear()
    figures.all_figures(groups_of(tmp_path / "three", seeds=3), tmp_path / "figs3")
    assert "95% t-interval where n ≥ 2, n = 3" in _texts(drawn["gap.png"])
    assert "mean ± sd over seeds (band), n = 3" in _texts(drawn["learning_curves.png"])


def test_step_time_is_marked_noisy_unless_timed_interleaved(tmp_path, drawn) -> None:
    groups = groups_of(tmp_path / "runs")
    figures.step_time(groups, tmp_path / "step_time.png")
    assert "noisy, not a speed comparison" in _texts(drawn["step_time.png"])
    for g in groups:
        for r in g.runs:
            r.summary["kind"] = figures.INTERLEAVED
    figures.step_time(groups, tmp_path / "step_time.png")
    text = _texts(drawn["step_time.png"])
    assert "interleaved timing (bnexp time)" in text and "noisy" not in text


def test_each_report_gets_its_own_folder_unless_out_is_given(cli, tmp_path, monkeypatch) -> None:
    groups_of(tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    first = cli("report", "runs")
    second = cli("report", "runs")
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    reports = sorted((tmp_path / "outputs" / "reports").iterdir())
    assert len(reports) == 2 and all((r / "report.md").exists() for r in reports)
    assert str((reports[0] / "report.md").relative_to(tmp_path)) in first.output + second.output
    table = (reports[0] / "report.md").read_text()
    assert table.index("| norm=none |") < table.index("| norm=torch |") < table.index(
        "| norm=custom |")
    given = cli("report", "runs", "--out", "mine")
    assert given.exit_code == 0 and (tmp_path / "mine" / "report.md").exists()


def test_step_time_of_packed_runs_counts_packs(tmp_path, drawn) -> None:
    """Three seeds trained as one pack are one step-time measurement: n = 1 per group, said so,
    and no interval over three equal values."""
    groups = groups_of(tmp_path / "runs", seeds=3)
    for g in groups:
        for k, r in enumerate(g.runs):
            r.summary["packed"] = {"k": k, "K": 3, "group": f"{g.label}-pack"}
    figures.step_time(groups, tmp_path / "step_time.png")
    text = _texts(drawn["step_time.png"])
    assert "n = 1" in text and "n counts packs" in text and "n = 3" not in text
