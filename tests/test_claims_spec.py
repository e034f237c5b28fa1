"""claims.yaml as a typed spec: every typo a user can make in a claims file stops the call with
one paragraph naming the claim, the key and the fix (exit 2), before any sweep runs; a user's
own claims file runs end to end with ``bnexp claims --spec``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from bnexp import claims as C
from bnexp.claims.spec import shipped_path
from tests.conftest import TINY

EXAMPLE = Path(__file__).parents[1] / "configs" / "claims" / "examples" / "dropout_gap.yaml"


def shipped() -> dict:
    return yaml.safe_load(shipped_path().read_text())


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def claim(data: dict, cid: str) -> dict:
    return next(c for c in data["claims"] if c["id"] == cid)


def rename(rule: dict, old: str, new: str) -> None:
    rule[new] = rule.pop(old)


def test_the_shipped_file_and_the_example_validate() -> None:
    assert len(C.load_spec().ids) == 13
    assert C.load_spec(EXAMPLE).ids == ["dropout_gap"]


@pytest.mark.parametrize("break_it, named", [
    (lambda d: rename(claim(d, "overfitting")["rule"], "threshold", "treshold"),
     ["claim `overfitting`", "rule.treshold", "did you mean `threshold`?"]),
    (lambda d: rename(claim(d, "vanishing")["rule"], "paired", "paried"),
     ["claim `vanishing`", "rule.paried", "did you mean `paired`?"]),
    (lambda d: claim(d, "cost")["rule"].update(type="comparre"),
     ["claim `cost`", "rule.type", "unknown rule type `comparre`", "did you mean `compare`?"]),
    (lambda d: claim(d, "stability")["rule"].update(metric="drift_unit:last"),
     ["claim `stability`", "rule.metric", "unknown derived metric 'drift_unit'"]),
    (lambda d: claim(d, "ics_explains")["rule"]["requires"][3].update(blocks="supported!"),
     ["claim `ics_explains`", "rule.requires[3].blocks", "is not one of `all`, `supported`"]),
    (lambda d: claim(d, "overfitting")["rule"].update(threshold="one point"),
     ["claim `overfitting`", "rule.threshold", "expected a number"]),
    (lambda d: claim(d, "overfitting")["rule"].pop("expect"),
     ["claim `overfitting`", "rule.expect", "missing"]),
    (lambda d: claim(d, "overfitting").update(tune={"by": "optim.lr", "metrc": "val/acc"}),
     ["claim `overfitting`", "tune.metrc", "did you mean `metric`?"]),
    (lambda d: claim(d, "speeds_training").update(sweep="iofe"),
     ["claim `speeds_training`", "sweep", "did you mean `ioffe`?"]),
    (lambda d: d["sweeps"]["ioffe"]["budgets"].update(quik=["seed=0"]),
     ["sweep `ioffe`", "budgets.quik", "did you mean `quick`?"]),
    (lambda d: claim(d, "speeds_training")["per_dataset"]["target"].pop("cifar10"),
     ["claim `speeds_training`", "per_dataset.target", "data=cifar10"]),
])
def test_a_typo_in_a_claims_file_exits_2_before_any_sweep(cli, tmp_path: Path, break_it,
                                                          named: list[str]) -> None:
    data = shipped()
    break_it(data)
    out = tmp_path / "out"
    result = cli("claims", "--budget", "test", "--spec", write(tmp_path, data), "--out", out)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    for part in named:
        assert part in text, (part, text)
    assert "nothing has been run" in text and "Traceback" not in result.output
    assert not out.exists()  # no sweep started, nothing written


def test_a_claims_file_that_is_not_there_or_not_yaml(cli, tmp_path: Path) -> None:
    result = cli("claims", "--spec", tmp_path / "missing.yaml", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "No claims file" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("claims: [\n")
    result = cli("claims", "--spec", bad, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "not valid YAML" in result.output


def test_claims_json_shows_the_rule_as_declared() -> None:
    """Only the keys the file gave, in its order: defaults are the rule's, not the user's."""
    from bnexp.claims.typed import declared

    rule = C.load_spec().claim("overfitting").rule
    assert list(declared(rule)) == ["type", "metric", "a", "b", "expect", "threshold", "paired",
                                    "also"]


def test_a_users_claims_file_runs_end_to_end(cli, mnist_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "dropout"
    args = ["claims", "--spec", EXAMPLE, "--budget", "test", "--out", out,
            f"data.root={mnist_root}", *[o for o in TINY if not o.startswith("trainer.epochs")]]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "claims.json").read_text())
    assert [c["id"] for c in data["claims"]] == ["dropout_gap"]
    c = data["claims"][0]
    assert c["verdict"] in ("supported", "not supported", "inconclusive") and c["reason"]
    assert c["runs"] == 4 and c["statuses"] == {"completed": 4}
    text = (out / "claims.md").read_text()
    assert f"declared in `{EXAMPLE}`" in text and "## Dropout shrinks" in text
    assert sorted(p.name for p in (out / "sweeps").iterdir()) == ["dropout_mlp-test-mnist"]
