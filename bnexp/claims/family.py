"""The Holm family, defined once by the claims file: every test every claim declares at the
call's budget and dataset, whether or not this call runs it.

A call with ``--only`` (or one in which a level cannot be computed) still adjusts its p-values
as if the whole family had been tested, the tests it did not compute counting with p = 1 (never
rejected): its verdicts are exactly as strict as a full call's, and verdicts quoted from
separate calls keep the family-wise error of one. A claim's tests are its rule type's tests per
level (``TESTS_PER_LEVEL``) times its levels: the values of its ``each:`` key that its sweep runs
at the budget (the budget's override, else the preset's sweeper params), kept to its ``where:``
list if it has one.
"""

from __future__ import annotations

import yaml

from bnexp.claims.estimates import same_value
from bnexp.claims.spec import Claim, Spec, Sweep
from bnexp.runs import GROUP_KEYS


def _aliases(key: str) -> set[str]:
    """``model.arch`` is also set as ``model=...`` (a config group's choice)."""
    return {key, *[group for group, k in GROUP_KEYS.items() if k == key]}


def preset_params(preset: str | None) -> dict[str, str]:
    """A preset's sweeper grid (``hydra.sweeper.params``), keys without ``+``."""
    if not preset:
        return {}
    from bnexp.hydra_app import config_dir

    path = config_dir() / "experiment" / f"{preset}.yaml"
    data = yaml.safe_load(path.read_text()) if path.exists() else {}
    params = ((data or {}).get("hydra") or {}).get("sweeper", {}).get("params", {}) or {}
    return {str(k).lstrip("+"): str(v) for k, v in params.items()}


def budget_overrides(sweep: Sweep, budget: str) -> dict[str, str]:
    """A budget's overrides as key -> value (the last wins), ``+``/``~`` dropped; {} for a
    timing budget."""
    overrides = sweep.budgets.get(budget)
    return dict(o.lstrip("+~").partition("=")[::2] for o in overrides
                if "=" in o) if isinstance(overrides, list) else {}


def swept_values(sweep: Sweep, budget: str, key: str) -> list[str]:
    """The values of ``key`` a sweep runs at ``budget`` ([] when it does not sweep it)."""
    names = _aliases(key)
    for source in (budget_overrides(sweep, budget), preset_params(sweep.preset)):
        found = [v for k, v in source.items() if k in names]
        if found:
            return found[-1].split(",")
    return []


def declared_tests(claim: Claim, sweep: Sweep, budget: str) -> int:
    each = getattr(claim.rule, "each", None)
    levels = 1
    if each:
        values = swept_values(sweep, budget, each)
        kept = claim.where.get(each)
        if isinstance(kept, list):
            values = ([v for v in values if any(same_value(v, w) for w in kept)]
                      or [str(w) for w in kept])
        levels = max(1, len(values))
    return type(claim.rule).TESTS_PER_LEVEL * levels


def family_size(spec: Spec, dataset: str, budget: str) -> int:
    """The number of tests the whole claims file declares at this budget and dataset."""
    return sum(declared_tests(c, spec.sweeps[c.sweep], budget) for c in spec.claims(dataset)
               if budget in spec.sweeps[c.sweep].budgets)
