"""What a rule measured (``Outcome``) and what was decided (``Verdict``).

Evaluation has two phases: each rule measures its effect and names its p-values (one test for
the claim, one against it, per level); then all p-values of the call are Holm-adjusted together
(bnexp/claims/decide.py) and each rule decides from the adjusted values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bnexp.claims.power import Note, Outlook

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"

Decision = tuple[str, ...]  # (verdict, reason[, {level: verdict}])
# A rule's decision from its Holm-adjusted p-values, alpha, and per level the outlook in words
# (what deciding an undecided level would take).
Decide = Callable[[dict[str, float], float, dict[str, Note]], Decision]


class Undecidable(Exception):
    """The rule cannot be evaluated on these runs (a data problem, not a bug); the message is
    the reason, and the verdict is inconclusive."""


@dataclass
class Outcome:
    effect: str  # the measured effect in a sentence
    tests: dict[str, float] = field(default_factory=dict)  # raw p-values by name
    decide: Decide | None = None
    numbers: dict[str, Any] = field(default_factory=dict)  # for claims.json
    reason: str = ""  # why inconclusive, when no test could be run
    # per level: the outlook at a per-test level (Holm's strictest step, alpha / m)
    outlooks: dict[str, Callable[[float], Outlook]] = field(default_factory=dict)


@dataclass
class Verdict:
    verdict: str
    effect: str
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)
