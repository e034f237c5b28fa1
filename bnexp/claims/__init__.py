"""``bnexp claims``: declared claims about BatchNorm, tested on runs.

- ``spec.py``      claims.yaml as typed dataclasses, validated before any sweep runs
- ``rules/``       one module per rule type (compare, equivalent, growth_at_init,
                   max_stable_lr), registered in ``rules/__init__.py``
- ``estimates.py`` runs -> values by seed -> t-based estimates (bnexp.stats)
- ``preconditions.py`` ``requires:``, per level
- ``measure.py``   one claim: select, tune, apply its rule
- ``decide.py``    Holm over the call, combining levels, the censoring guard
- ``runner.py``    plan the call, run sweeps and timing, provenance
- ``render.py``    claims.md and claims.json
"""

from bnexp.claims.decide import decide_all
from bnexp.claims.measure import evaluate, measure, tune
from bnexp.claims.outcome import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Outcome, Undecidable, Verdict
from bnexp.claims.render import PREVIEW_BUDGETS, write_claims
from bnexp.claims.rules import RULES
from bnexp.claims.runner import claim_from_dict, load_spec, plan, run_claims
from bnexp.claims.spec import BUDGETS, Claim, Spec, SpecError

__all__ = ["BUDGETS", "INCONCLUSIVE", "NOT_SUPPORTED", "PREVIEW_BUDGETS", "RULES", "SUPPORTED",
           "Claim", "Outcome", "claim_from_dict", "Spec", "SpecError", "Undecidable", "Verdict", "decide_all",
           "evaluate", "load_spec", "measure", "plan", "run_claims", "tune", "write_claims"]
