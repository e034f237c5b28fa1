"""The rule types, registered in one place. A rule type is one module here with

- ``Spec``: a dataclass subclassing ``bnexp.claims.spec.RuleSpec`` (its YAML keys, validated
  before any run; ``TYPE`` is its ``type:`` name),
- ``measure(runs, factor, spec) -> Outcome``: the effect, its p-values and its decision,
- ``plain(spec, numbers, say) -> (clauses, bound)``: its verdict in plain words,
- optionally ``context(all_runs, tuned_runs, factor, spec, tune_by) -> dict``: what claims.md
  prints beside the verdict,
- optionally ``forest(spec, numbers) -> list[dict]``: its estimates with 95% intervals for the
  forest plot at the top of claims.md (a rule without intervals, like max_stable_lr's sign
  tests, has none).

Adding one = a module, its line below, a test reaching each verdict, and its claims.yaml entry.
"""

from __future__ import annotations

from types import ModuleType

from bnexp.claims.rules import compare, equivalent, growth_at_init, max_stable_lr

RULES: dict[str, ModuleType] = {m.Spec.TYPE: m for m in (compare, equivalent, growth_at_init,
                                                           max_stable_lr)}
SPECS = {name: m.Spec for name, m in RULES.items()}
