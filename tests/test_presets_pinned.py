"""The claims' presets keep their own settings when a default changes (issue 24).

``tests/golden/presets_composed.json`` holds, for every preset in ``configs/experiment/`` and for
each group choice its sweep makes (``model=cnn``, ``norm=custom``, ``+reg=bn``, ...), the composed
values of the groups a run's result depends on (data, model, norm, optim, trainer, probe, seed),
as composed before the default CNN's recipe changed. A default changed in ``configs/model``,
``configs/trainer`` or ``configs/optim`` must be pinned to its old value in every preset that
relied on it, so that claims' verdicts never move because of the default ``bnexp train``.

Keys added after the snapshot are checked against ``NEW_KEYS``: the value that reproduces what
the presets ran before the key existed. Regenerate (only for a deliberate change of a preset):
``.venv/bin/python tests/test_presets_pinned.py --write``.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from bnexp.hydra_app import compose_config, config_dir

GOLDEN = Path(__file__).parent / "golden" / "presets_composed.json"
SECTIONS = ("seed", "data", "model", "norm", "optim", "trainer", "probe")
GROUP_KEYS = ("model", "norm", "optim", "+reg")  # sweep keys that choose a config group
# Keys added since the snapshot (issue 24), with the value that keeps the old behaviour.
NEW_KEYS = {"model.pool": "late", "model.head": "gap", "trainer.label_smoothing": 0.0}
MACHINE_KEYS = {"data.root", "trainer.progress", "trainer.device", "trainer.threads"}


def preset_cases() -> dict[str, list[str]]:
    """Case name -> overrides: each preset alone, and with each group choice of its sweep."""
    cases = {}
    for path in sorted((config_dir() / "experiment").glob("*.yaml")):
        base = [f"experiment={path.stem}"]
        cases[path.stem] = base
        params = yaml.safe_load(path.read_text()).get("hydra", {}).get("sweeper", {}).get(
            "params", {})
        for key, values in params.items():
            if key in GROUP_KEYS:
                for value in str(values).split(","):
                    cases[f"{path.stem} {key}={value}"] = [*base, f"{key}={value}"]
    return cases


@functools.cache
def composed_case(case: str) -> dict[str, Any]:
    return composed(preset_cases()[case])


def composed(overrides: list[str]) -> dict[str, Any]:
    """The flat ``a.b: value`` pairs of the result-relevant sections, machine-dependent keys
    (data folder, threads, device, progress display) left out."""
    cfg = OmegaConf.to_container(compose_config(overrides), resolve=True, enum_to_str=True)
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif prefix not in MACHINE_KEYS:
            flat[prefix] = node

    for section in SECTIONS:
        walk(section, cfg[section])
    return flat


def snapshot() -> dict[str, dict[str, Any]]:
    return {name: composed(overrides) for name, overrides in preset_cases().items()}


@pytest.fixture(scope="module")
def golden() -> dict[str, dict[str, Any]]:
    return json.loads(GOLDEN.read_text())


def test_every_preset_case_is_in_the_snapshot(golden: dict) -> None:
    assert sorted(preset_cases()) == sorted(golden)


@pytest.mark.parametrize("case", sorted(preset_cases()))
def test_preset_composes_as_before(case: str, golden: dict) -> None:
    now = composed_case(case)
    moved = {k: (v, now.get(k, "<missing>")) for k, v in golden[case].items()
             if now.get(k, "<missing>") != v}
    assert not moved, (f"{case}: (old, new) values moved: {moved}. Pin the old value in "
                       f"configs/experiment/{case.split()[0]}.yaml")


@pytest.mark.parametrize("case", sorted(preset_cases()))
def test_new_keys_keep_the_old_behaviour(case: str, golden: dict) -> None:
    now = composed_case(case)
    new = set(now) - set(golden[case])
    assert new <= set(NEW_KEYS), f"{case}: keys {sorted(new - set(NEW_KEYS))} need a NEW_KEYS entry"
    moved = {k: now[k] for k in new if now[k] != NEW_KEYS[k]}
    assert not moved, f"{case}: new keys away from the old behaviour: {moved}"


def test_snapshot_covers_the_cnn_presets(golden: dict) -> None:
    """The presets that train the default CNN are among the cases (the ones a new CNN
    default would move)."""
    cnn = {case for case, values in golden.items() if values["model.arch"] == "cnn"}
    assert {"cost", "santurkar model=cnn"} <= cnn


if __name__ == "__main__" and "--write" in sys.argv:
    GOLDEN.write_text(json.dumps(snapshot(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
