"""Golden test: claims.md and claims.json built from the fixed synthetic runs of
tests/golden_runs.py must equal the checked-in files in tests/golden/. A change to a rule, a
sentence or a number shows up as a diff to review; regenerate the files on purpose with
``python -m tests.test_claims_golden`` and commit them with the change that explains them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from bnexp import claims as C
from bnexp import figures
from bnexp.claims.family import family_size
from tests import golden_runs

GOLDEN = Path(__file__).parent / "golden"


def _fake_figures(groups: list[Any], folder: Path, stamp: str = "") -> dict[str, Path]:
    """Figure paths without drawing: the golden files compare text, not pixels."""
    return {"learning curves": folder / "curves.png"} if groups else {}


def _fake_forest(rows: list[Any], path: Path, stamp: str = "") -> Path | None:
    return path if rows else None


def build(out: Path) -> None:
    spec = C.load_spec()
    sweep_runs = golden_runs.sweep_runs()
    claims = spec.claims("mnist")
    outcomes, wheres = {}, {}
    for claim in claims:
        outcomes[claim.id], wheres[claim.id] = C.measure(claim, sweep_runs[claim.sweep][0])
    verdicts = C.decide_all(outcomes, spec.alpha, spec.max_seeds,
                            family_size(spec, "mnist", "standard"))
    C.write_claims(out, "standard", spec, claims, [], verdicts, wheres, sweep_runs,
                   golden_runs.PROVENANCE)


def test_claims_md_and_json_match_the_golden_files(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(figures, "all_figures", _fake_figures)
    monkeypatch.setattr(figures, "forest_plot", _fake_forest)
    build(tmp_path)
    for name in ("claims.md", "claims.json"):
        assert (tmp_path / name).read_text() == (GOLDEN / name).read_text(), name


if __name__ == "__main__":  # regenerate: python -m tests.test_claims_golden
    figures.all_figures = _fake_figures  # type: ignore[assignment]
    figures.forest_plot = _fake_forest  # type: ignore[assignment]
    build(GOLDEN)
    sys.exit(0)


def test_the_family_is_declared_once_and_only_calls_are_as_strict() -> None:
    """The claims file's family at standard: 2 tests per level (4 for growth_at_init), levels
    from each claim's `each:` values at that budget (kept to its `where:`). A call with --only
    adjusts within that whole family: never more lenient than the full call."""
    spec = C.load_spec()
    assert family_size(spec, "mnist", "standard") == 2 + 2 + 6 + 4 + 8 + 2 + 2 + 8 + 2 + 2 + 4 + 4 + 4
    sweep_runs = golden_runs.sweep_runs()
    outcomes = {c.id: C.measure(c, sweep_runs[c.sweep][0])[0] for c in spec.claims()}
    full = C.decide_all(outcomes, spec.alpha, spec.max_seeds, 50)
    only = C.decide_all({"vanishing": outcomes["vanishing"], "cost": outcomes["cost"]},
                        spec.alpha, spec.max_seeds, 50)
    for cid in ("vanishing", "cost"):
        assert only[cid].numbers["holm_family"] == 50
        for name, p in only[cid].numbers["p_holm"].items():
            assert p >= full[cid].numbers["p_holm"][name]
    alone = C.decide_all({"cost": outcomes["cost"]}, spec.alpha, spec.max_seeds)  # no family
    assert alone["cost"].numbers["p_holm"]["|for"] < only["cost"].numbers["p_holm"]["|for"]


def test_the_forest_plot_gets_every_level_with_its_own_verdict(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """claims.md opens with one forest plot: a row per claim level, coloured by that level's
    verdict (a claim refuted at one gain may be supported at another)."""
    seen: list = []

    def capture(rows: list, path: Path, stamp: str = "") -> Path | None:
        seen.extend(rows)
        return _fake_forest(rows, path, stamp)

    monkeypatch.setattr(figures, "all_figures", _fake_figures)
    monkeypatch.setattr(figures, "forest_plot", capture)
    build(tmp_path)
    rows = {r.label: r for r in seen}
    assert "![Every claim's effect against its threshold](figures/forest.png)" in \
        (tmp_path / "claims.md").read_text()
    assert rows["3. exploding (model.init_gain=1.1)"].verdict == "not supported"
    assert {r.verdict for r in seen if r.label.startswith("3. exploding")} >= {"not supported"}
    assert rows["8. explosion_at_init (torch's growth > 1.05)"].expect == "higher"
    assert rows["7. literal_inference (trainer.batch_size=4)"].expect == "within"
    assert not any(r.label.startswith("5.") for r in seen)  # sign tests: no interval to draw
    levels = json.loads((tmp_path / "claims.json").read_text())["claims"]
    exploding = next(c for c in levels if c["id"] == "exploding")
    assert exploding["numbers"]["level_verdicts"]["model.init_gain=1.1"] == "not supported"
