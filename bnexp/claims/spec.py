"""claims.yaml as typed dataclasses, validated completely before any sweep runs.

A claims file (``configs/claims/claims.yaml``, or a user's own with ``bnexp claims --spec``)
declares its claims before the runs; a typo in it must never become a silent default (a
misspelt ``treshold:`` read as 0, ``paried:`` as Welch). So every mapping is read into a
dataclass whose fields are the only keys allowed: an unknown key, a missing key, a wrong type,
an unknown rule type, a metric name that does not parse or a ``blocks:`` that is not a verdict
stops the call with one paragraph naming the claim, the key and the fix (exit 2). Each rule
type's own spec lives beside its rule (``bnexp/claims/rules/<type>.py``); this module only
knows their common base. The rest of the claims package reads attributes, never raw dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from bnexp.claims.typed import Bad, Hooks, MetricName, did_you_mean, read, read_value
from bnexp.errors import BnexpError

BUDGETS = ("test", "quick", "standard", "full")
ADAPTIVE = "adaptive"  # looks at the adaptive section's seed counts (bnexp/claims/adaptive.py)


class SpecError(BnexpError):
    """A claims file that does not declare what it must (a user mistake: exit 2)."""


@dataclass(frozen=True, kw_only=True)
class RuleSpec:
    """What every rule type declares: the factor's two values compared (a against b) and
    whether seeds pair them. Each rule type subclasses it with its own keys."""

    type: str
    a: str
    b: str
    paired: bool
    TYPE: ClassVar[str] = ""
    NAME: ClassVar[str] = "rule"  # in error messages: "a compare rule"
    TESTS_PER_LEVEL: ClassVar[int] = 2  # p-values per level: for the claim, against it

    def problem(self) -> str | None:
        """A constraint between keys that their types cannot express; None when fine."""
        return None

    def variants(self) -> list[str]:
        """The factor values this rule looks at (tuning picks a setting for each)."""
        return [self.a, self.b]


@dataclass(frozen=True, kw_only=True)
class Precondition:
    """``requires:`` one mean past another, without which the comparison tests nothing."""

    metric: MetricName
    a: str
    b: str
    expect: Literal["higher", "lower"]
    why: str
    margin: float = 0.0
    blocks: Literal["all", "supported", "not supported"] = "all"


@dataclass(frozen=True, kw_only=True)
class Scope:
    """``scope:`` the levels a claim is about: where either variant's mean ``metric`` (a run
    that did not complete counts 0) is below ``at_least``, the level is measured and shown but
    not tested, and the verdict rests on the other levels (e.g. a net stuck at chance is not
    the training whose drift the claim describes)."""

    metric: MetricName
    at_least: float
    why: str


@dataclass(frozen=True, kw_only=True)
class Tuning:
    """Each variant at its own best ``by`` (e.g. optim.lr), chosen by ``metric``."""

    by: str
    metric: MetricName
    best: Literal["max", "min"] = "max"
    # crossfit: each seed's run is taken at the setting best on the OTHER seeds, so a seed's
    # own noise never chooses the run that decides the claim; pooled: one setting for all
    # seeds, chosen on all of them (the runs that decide the claim also chose it)
    select: Literal["crossfit", "pooled"] = "crossfit"


@dataclass(frozen=True, kw_only=True)
class Claim:
    id: str
    title: str
    sweep: str
    factor: str
    rule: RuleSpec
    decision: str
    say: str = "the measured quantity"
    where: dict[str, list[str | float] | Literal["min", "max"]] = field(default_factory=dict)
    tune: Tuning | None = None
    if_not_supported: str = ""
    report: list[MetricName] = field(default_factory=list)
    per_dataset: dict[str, dict[str, str | float]] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class TimingBudget:
    seeds: list[int]
    rounds: int
    window: int


@dataclass(frozen=True, kw_only=True)
class Timing:
    variants: list[str]


@dataclass(frozen=True, kw_only=True)
class Sweep:
    """A preset (``configs/experiment/<preset>.yaml``) run at each budget with its overrides;
    a ``timing:`` sweep times variants interleaved instead (``bnexp time``)."""

    datasets: list[str]
    budgets: dict[str, list[str] | TimingBudget]
    preset: str | None = None
    timing: Timing | None = None


@dataclass(frozen=True, kw_only=True)
class Adaptive:
    """``--budget adaptive``: each sweep at its ``base`` budget's settings, seeds added look by
    look; alpha split equally over the looks (Bonferroni)."""

    base: str = "standard"
    looks: list[int] = field(default_factory=lambda: [5, 10, 20])


@dataclass(frozen=True)
class Spec:
    """A whole claims file: its sweeps and, per dataset, its claims with ``{name}``
    placeholders filled from ``per_dataset`` (a claim is listed for the datasets its sweep
    supports)."""

    path: Path
    alpha: float
    max_seeds: int  # the most seeds a claim may be given: beyond it, no more are projected
    sweeps: dict[str, Sweep]
    ids: list[str]
    by_dataset: dict[str, list[Claim]]
    adaptive: Adaptive = field(default_factory=Adaptive)

    def claims(self, dataset: str = "mnist") -> list[Claim]:
        return self.by_dataset.get(dataset, [])

    def claim(self, claim_id: str, dataset: str = "mnist") -> Claim:
        return next(c for c in self.claims(dataset) if c.id == claim_id)


def _rule(value: Any, path: str, rules: dict[str, type[RuleSpec]]) -> RuleSpec:
    if not isinstance(value, dict) or "type" not in value:
        raise Bad(f"{path}.type", f"a rule needs a `type:` ({', '.join(rules)})")
    cls = rules.get(str(value["type"]))
    if cls is None:
        raise Bad(f"{path}.type", f"unknown rule type `{value['type']}`"
                   f"{did_you_mean(str(value['type']), list(rules))}; the rule types are "
                   f"{', '.join(rules)}")
    rule = read(cls, value, path, _hooks(rules))
    problem = rule.problem()
    if problem:
        raise Bad(path, problem)
    return rule


def _hooks(rules: dict[str, type[RuleSpec]]) -> Hooks:
    """A claim's ``rule:`` is read by its ``type:``'s own spec class."""
    return {RuleSpec: lambda value, path: _rule(value, path, rules)}


# ---------------------------------------------------------------------------------------------
# A whole claims file
# ---------------------------------------------------------------------------------------------

def _fill(claim: dict[str, Any], dataset: str) -> dict[str, Any]:
    """The claim with ``{name}`` placeholders filled from ``per_dataset`` for this dataset: a
    value that is only a placeholder takes the value's own type (``min_acc: "{min_acc}"`` ->
    0.35), one inside a longer string is substituted as text."""
    values = {k: v.get(dataset) for k, v in (claim.get("per_dataset") or {}).items()
              if isinstance(v, dict)}
    if not values:
        return claim
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise Bad(f"per_dataset.{missing[0]}", f"no value for data={dataset}, which the claim's "
                   "sweep lists under `datasets:`; add one")

    def sub(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: node[k] if k == "per_dataset" else sub(node[k]) for k in node}
        if isinstance(node, list):
            return [sub(x) for x in node]
        if isinstance(node, str):
            whole = node[1:-1] if node.startswith("{") and node.endswith("}") else None
            if whole in values:
                return values[whole]
            for k, v in values.items():
                node = node.replace("{" + k + "}", str(v))
        return node

    return sub(claim)


def _claim(raw: Any, index: int, sweeps: dict[str, Sweep], rules: dict[str, type[RuleSpec]]
           ) -> tuple[str, dict[str, Claim]]:
    """One claim, parsed for every dataset its sweep supports."""
    cid = raw.get("id", f"#{index + 1}") if isinstance(raw, dict) else f"#{index + 1}"
    try:
        if not isinstance(raw, dict):
            raise Bad("", f"a claim is a mapping, got `{raw}`")
        sweep = sweeps.get(str(raw.get("sweep")))
        if sweep is None:
            raise Bad("sweep", f"`{raw.get('sweep')}` is not a sweep of this file"
                       f"{did_you_mean(str(raw.get('sweep')), list(sweeps))}; declared sweeps: "
                       f"{', '.join(sweeps)}")
        return cid, {d: read(Claim, _fill(raw, d), "", _hooks(rules)) for d in sweep.datasets}
    except Bad as exc:
        raise Bad(f"claim `{cid}`, key `{exc.path}`" if exc.path else f"claim `{cid}`",
                   exc.problem) from None


def _adaptive(raw: Any) -> Adaptive:
    ad = read(Adaptive, raw, "adaptive", {})
    if ad.base not in BUDGETS:
        raise Bad("adaptive.base", f"`{ad.base}` is not a budget{did_you_mean(ad.base, list(BUDGETS))}")
    if len(ad.looks) < 1 or ad.looks[0] < 2 or sorted(set(ad.looks)) != ad.looks:
        raise Bad("adaptive.looks", f"{ad.looks}: seed counts, increasing, the first at least 2")
    return ad


def _sweeps(raw: Any) -> dict[str, Sweep]:
    if not isinstance(raw, dict) or not raw:
        raise Bad("sweeps", "a claims file declares its sweeps as a mapping of names")
    out = {}
    for name, value in raw.items():
        try:
            sweep = read(Sweep, value, "", {})
        except Bad as exc:
            raise Bad(f"sweep `{name}`, key `{exc.path}`", exc.problem) from None
        for budget, overrides in sweep.budgets.items():
            where = f"sweep `{name}`, key `budgets.{budget}`"
            if budget not in BUDGETS:
                raise Bad(where, f"`{budget}` is not a budget{did_you_mean(budget, list(BUDGETS))}"
                           f"; budgets are {', '.join(BUDGETS)}")
            if isinstance(overrides, TimingBudget) != (sweep.timing is not None):
                raise Bad(where, "a timing sweep's budget is {seeds, rounds, window}; any other "
                           "sweep's is a list of overrides")
        if sweep.timing is None and sweep.preset is None and not sweep.budgets:
            raise Bad(f"sweep `{name}`", "declares neither a preset nor budgets to run")
        out[str(name)] = sweep
    return out


def parse(data: Any, path: Path, rules: dict[str, type[RuleSpec]]) -> Spec:
    """The claims file's contents as a Spec; SpecError names what is wrong and the fix."""
    try:
        if not isinstance(data, dict):
            raise Bad("", "a claims file is a mapping with `sweeps:` and `claims:`")
        top = ["alpha", "max_seeds", "adaptive", "sweeps", "claims"]
        extra = sorted(set(data) - set(top))
        if extra:
            hint = did_you_mean(extra[0], top)
            raise Bad(extra[0], f"unknown top-level key{hint}; a claims file has "
                      f"{', '.join(f'`{k}`' for k in top)}")
        max_seeds = read_value(int, data.get("max_seeds", 40), "max_seeds")
        if max_seeds < 2:
            raise Bad("max_seeds", f"{max_seeds}: a claim needs at least 2 seeds")
        adaptive = _adaptive(data.get("adaptive", {}))
        alpha = read_value(float, data.get("alpha", 0.05), "alpha")
        if not 0 < alpha < 1:
            raise Bad("alpha", f"{alpha} is not a significance level between 0 and 1")
        sweeps = _sweeps(data.get("sweeps"))
        if not isinstance(data.get("claims"), list) or not data["claims"]:
            raise Bad("claims", "a claims file declares a non-empty list of claims")
        parsed = [_claim(raw, i, sweeps, rules) for i, raw in enumerate(data["claims"])]
    except Bad as exc:
        where = f" ({exc.path})" if exc.path else ""
        raise SpecError(f"{path}{where}: {exc.problem}. Fix it in {path} and run again; nothing "
                        "has been run.") from None
    ids = [cid for cid, _ in parsed]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise SpecError(f"{path}: two claims have the id `{dup}`; give each claim its own id.")
    by_dataset: dict[str, list[Claim]] = {}
    for _, per in parsed:
        for dataset, claim in per.items():
            by_dataset.setdefault(dataset, []).append(claim)
    return Spec(path, float(alpha), max_seeds, sweeps, ids, by_dataset, adaptive)


def parse_claim(data: dict[str, Any], rules: dict[str, type[RuleSpec]]) -> Claim:
    """One claim on its own (its placeholders already filled): for tests and quick looks."""
    try:
        return read(Claim, data, "", _hooks(rules))
    except Bad as exc:
        raise SpecError(f"claim `{data.get('id')}`, key `{exc.path}`: {exc.problem}.") from None


def shipped_path() -> Path:
    """bnexp's own claims file (in the package's config tree)."""
    from bnexp.hydra_app import config_dir

    return config_dir() / "claims" / "claims.yaml"


def load(path: Path, rules: dict[str, type[RuleSpec]]) -> Spec:
    """Read and validate a claims file."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"No claims file at {path}; pass an existing YAML file to --spec "
                        "(the README's Claims section has a worked example).") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path} is not valid YAML ({str(exc).splitlines()[0]}); fix its "
                        "syntax and run again.") from None
    return parse(data, path, rules)
