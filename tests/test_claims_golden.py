"""Golden test: claims.md and claims.json built from the fixed synthetic runs of
tests/golden_runs.py must equal the checked-in files in tests/golden/. A change to a rule, a
sentence or a number shows up as a diff to review; regenerate the files on purpose with
``python -m tests.test_claims_golden`` and commit them with the change that explains them."""

from __future__ import annotations

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
    build(tmp_path)
    for name in ("claims.md", "claims.json"):
        assert (tmp_path / name).read_text() == (GOLDEN / name).read_text(), name


if __name__ == "__main__":  # regenerate: python -m tests.test_claims_golden
    figures.all_figures = _fake_figures  # type: ignore[assignment]
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
