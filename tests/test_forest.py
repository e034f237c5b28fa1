"""The claims' forest plot: each row's effect in units of its own declared threshold (hand-
computed for every scale and direction), clipping, and the figure itself."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bnexp import figures
from bnexp.figures import FOREST_CLIP, ForestRow, forest_clip, forest_plot, forest_x


def row(effect: float, lo: float, hi: float, threshold: float, scale: str, expect: str,
        verdict: str = "supported", label: str = "r") -> ForestRow:
    return ForestRow(label, effect, lo, hi, threshold, scale, expect, verdict)


@pytest.mark.parametrize(("r", "expected"), [
    # linear, higher: effect / threshold
    (row(0.02, 0.015, 0.03, 0.01, "linear", "higher"), (2.0, 1.5, 3.0)),
    # linear, lower: -effect / threshold, the interval's ends swap
    (row(-0.004, -0.009, 0.001, 0.01, "linear", "lower"), (0.4, -0.1, 0.9)),
    # log, higher: log(effect) / log(threshold); 1.05**2 is two thresholds
    (row(1.05**2, 1.05, 1.05**3, 1.05, "log", "higher"), (2.0, 1.0, 3.0)),
    # log, lower: the claim is a/b <= 1/1.25, so a/b = 1/1.25 sits on the threshold line
    (row(1 / 1.25, 1 / 1.25**2, 1.0, 1.25, "log", "lower"), (1.0, 0.0, 2.0)),
    # a ratio above 1 under expect lower is the wrong way: left of 0
    (row(1.25, 1.0, 1.25**2, 1.25, "log", "lower"), (-1.0, -2.0, 0.0)),
    # equivalence, interval spanning no effect: |effect| / margin, from 0
    (row(-0.006, -0.012, 0.002, 0.01, "linear", "within"), (0.6, 0.0, 1.2)),
    # equivalence, interval all on one side: its nearer and farther ends
    (row(-0.09, -0.14, -0.05, 0.01, "linear", "within"), (9.0, 5.0, 14.0)),
    # equivalence of ratios within a factor 1.1
    (row(1 / 1.1**0.5, 1 / 1.1**2, 1 / 1.1**0.25, 1.1, "log", "within"), (0.5, 0.25, 2.0)),
])
def test_forest_x_puts_each_row_where_computed_by_hand(r: ForestRow,
                                                       expected: tuple[float, ...]) -> None:
    assert forest_x(r) == pytest.approx(expected)


def test_forest_x_takes_a_lower_ratio_threshold_either_way_and_refuses_no_unit() -> None:
    declared = row(0.7, 0.6, 0.8, 1.25, "log", "lower")
    inverted = row(0.7, 0.6, 0.8, 1 / 1.25, "log", "lower")
    assert forest_x(declared) == pytest.approx(forest_x(inverted))
    assert forest_x(row(-0.02, -0.03, -0.01, -0.01, "linear", "lower"))[0] == pytest.approx(2.0)
    for bad in (row(1.1, 1.0, 1.2, 1.0, "log", "higher"), row(0.1, 0, 0.2, 0.0, "linear", "higher"),
                row(0.1, 0, 0.2, 0.1, "linear", "sideways"), row(0.1, 0, 0.2, 0.1, "ln", "higher")):
        with pytest.raises(ValueError):
            forest_x(bad)
    # a ratio interval reaching 0 is infinitely far: clipped, never an error
    x, lo, hi = forest_x(row(0.5, 0.0, 1.0, 1.25, "log", "lower"))
    assert hi == math.inf and forest_clip(x, lo, hi)[2:] == (FOREST_CLIP, False, True)


def test_forest_clip_cuts_at_the_limit_and_says_which_side_continues() -> None:
    assert forest_clip(1.0, 0.5, 1.5) == (1.0, 0.5, 1.5, False, False)
    assert forest_clip(3.0, -40.0, 60.0, limit=20) == (3.0, -20.0, 20.0, True, True)
    assert forest_clip(30.0, 25.0, 35.0, limit=20) == (20.0, 20.0, 20.0, False, True)
    x, lo, hi, left, right = forest_clip(math.nan, math.nan, math.nan)
    assert math.isnan(x) and not left and not right


def _rows() -> list[ForestRow]:
    return [row(0.02, 0.01, 0.03, 0.01, "linear", "higher", "supported", "1. first"),
            row(2.0, 0.5, 200.0, 1.25, "log", "lower", "inconclusive", "2. clipped left"),
            row(0.2, 0.1, 0.3, 1.01, "log", "lower", "supported", "3. clipped right"),
            row(1.12, 0.97, 1.3, 1.25, "log", "lower", "not supported", "4. wrong way"),
            row(0.002, -0.003, 0.007, 0.01, "linear", "within", "supported", "5. equivalent"),
            row(math.nan, math.nan, math.nan, 0.01, "linear", "lower", "inconclusive", "6. none")]


def test_forest_plot_writes_the_png_in_order_with_clipped_rows_marked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert forest_plot([], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    drawn = []
    save = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or save(fig, path))
    out = forest_plot(_rows(), tmp_path / "forest.png", stamp="2026-12-06 12:00 · host · cmd")
    assert out == tmp_path / "forest.png" and out.stat().st_size > 10_000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig, = drawn
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [r.label for r in _rows()]
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # the first row at the top
    clipped = sorted((line.get_xdata()[0], line.get_ydata()[0]) for line in ax.get_lines()
                     if line.get_gid() == "clipped")
    assert clipped == [(-FOREST_CLIP, 1), (FOREST_CLIP, 2)]
    assert {1.0, 0.0} <= {line.get_xdata()[0] for line in ax.get_lines()
                          if line.get_linestyle() == "--"}
    assert "declared threshold" in ax.get_xlabel() and "claimed direction" in ax.get_xlabel()
    assert "2 supported" not in ax.get_title() and "3 supported" in ax.get_title()
    assert [t.get_text() for t in fig.texts] == ["2026-12-06 12:00 · host · cmd"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:3] == ["supported", "not supported", "inconclusive"]


def test_forest_plot_keeps_the_stamp_all_figures_set(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = []
    save = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or save(fig, path))
    token = figures._STAMP.set("outer stamp")
    try:
        forest_plot(_rows()[:1], tmp_path / "a.png")
    finally:
        figures._STAMP.reset(token)
    forest_plot(_rows()[:1], tmp_path / "b.png")
    assert [t.get_text() for t in drawn[0].texts] == ["outer stamp"] and not drawn[1].texts


def test_the_value_column_states_the_claim_as_declared() -> None:
    text = figures._forest_value_text
    assert text(row(0.71, 0.66, 0.77, 1.05, "log", "lower")) == "×0.71 [0.66, 0.77], claim ≤ ×1/1.05"
    assert text(row(0.71, 0.66, 0.77, 1 / 1.05, "log", "lower")).endswith("claim ≤ ×1/1.05")
    assert text(row(1.3, 1.2, 1.4, 1.05, "log", "higher")).endswith("claim ≥ ×1.05")
    assert text(row(-0.004, -0.009, 0.001, 0.01, "linear", "lower")).endswith("claim ≤ -0.01")
    assert text(row(0.002, -0.003, 0.007, 0.01, "linear", "within")).endswith("within ±0.01")
    assert text(row(math.nan, math.nan, math.nan, 0.01, "linear", "lower")) == "no estimate"
