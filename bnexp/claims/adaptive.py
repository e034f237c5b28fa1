"""``--budget adaptive``: looks at pre-declared seed counts, seeds spent where a decision is in
reach.

The looks (``adaptive.looks`` in the claims file, e.g. 3, 5, 10, 20 seeds) run each sweep at its
``adaptive.base`` budget's settings with more seeds each time; every finished run is reused.
alpha is split equally over the looks (Bonferroni: alpha / K at each), and within a look the
p-values are Holm-adjusted over the claims file's whole declared family (bnexp/claims/family.py).
The union bound keeps the chance of any wrong verdict over all looks at alpha, whatever is decided
about continuing (a Pocock or O'Brien-Fleming spending function would need the joint
distribution of these t and sign tests across looks, which bnexp does not model). After each
look a claim stops when decided; or for futility, when no undecided level's projected seeds for
an 80% chance (bnexp/claims/power.py, at the next look's alpha) fit within the last look and the
declared cap; or when ``--max-minutes`` leaves no time for its sweep (the sweeps that buy the
most expected decisions per minute go first). ``sequential`` is the procedure on its own, with
the runs supplied by a callback: the runner trains them, the simulation tests draw them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bnexp.claims.decide import decide_all
from bnexp.claims.measure import measure
from bnexp.claims.outcome import INCONCLUSIVE, Verdict
from bnexp.claims.spec import Claim
from bnexp.runs import Run

Provide = Callable[[dict[str, int]], dict[str, list[Run]]]  # {sweep: seeds} -> {sweep: runs}
Choose = Callable[[int, dict[str, int], dict[str, "State"]], set[str]]  # sweeps to extend


@dataclass
class State:
    """Where one claim stands in the sequence."""

    claim: Claim
    verdict: Verdict | None = None
    where: str = ""  # which runs the rule used (measure's note)
    seeds: int = 0  # seeds of its last look
    look: int = 0  # its last look (1-based)
    stop: str = ""  # "" while it goes on: decided, futility, out of time, last look
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return not self.stop


def projected_seeds(v: Verdict) -> int | None:
    """The seeds an 80% chance of deciding needs: the least over the undecided levels that
    can be projected (None when none can)."""
    levels = v.numbers.get("level_verdicts", {})
    needs = [p["seeds_for_80"] for level, p in v.numbers.get("power", {}).items()
             if levels.get(level, INCONCLUSIVE) == INCONCLUSIVE and p.get("seeds_for_80")]
    return min(needs) if needs else None


def chance_at(v: Verdict, n: int) -> float:
    """The best projected chance of deciding one undecided level at ``n`` seeds."""
    return max([p.get("power_at", {}).get(str(n), 0.0) for p in v.numbers.get("power", {}).values()]
               or [0.0])


def _after_look(s: State, k: int, looks: list[int], cap: int) -> None:
    """Stop a claim when decided, at the last look, or when deciding is out of reach."""
    assert s.verdict is not None
    if s.verdict.verdict != INCONCLUSIVE:
        s.stop = "decided"
    elif k == len(looks) - 1:
        s.stop = "last look"
    else:
        need = projected_seeds(s.verdict)
        limit = min(cap, looks[-1])
        if need is None or need > limit:
            s.stop = "futility"
            s.history[-1]["projected_seeds"] = need


def sequential(claims: list[Claim], looks: list[int], alpha: float, cap: int, family: int,
               provide: Provide, choose: Choose | None = None,
               echo: Callable[[str], Any] = print) -> tuple[dict[str, State], list[dict]]:
    """Run the looks: each active claim's sweep gets the look's seeds, every active claim is
    decided at alpha / K (Holm over the family), then stops or goes on."""
    states = {c.id: State(c) for c in claims}
    record: list[dict[str, Any]] = []
    level = alpha / len(looks)
    for k, n in enumerate(looks):
        active = [s for s in states.values() if s.active]
        if not active:
            break
        want = {s.claim.sweep: n for s in active}
        if choose is not None and k > 0:
            allowed = choose(n, want, states)
            for s in active:
                if s.claim.sweep not in allowed:
                    s.stop = "out of time"
            active = [s for s in active if s.active]
            want = {w: n for w in want if w in allowed}
        if not active:
            break
        runs = provide(want)
        outcomes = {}
        for s in active:
            outcomes[s.claim.id], s.where = measure(s.claim, runs[s.claim.sweep])
        verdicts = decide_all(outcomes, level, cap, family, ns=tuple(looks))
        for s in active:
            s.verdict, s.seeds, s.look = verdicts[s.claim.id], n, k + 1
            s.history.append({"look": k + 1, "seeds": n, "verdict": s.verdict.verdict})
            _after_look(s, k, looks, cap)
        record.append({"look": k + 1, "seeds": n, "alpha": level, "claims": [s.claim.id for s in active],
                       "sweeps": sorted(want), "decided": [s.claim.id for s in active
                                                           if s.stop == "decided"]})
        echo(f"[look {k + 1}/{len(looks)}] {n} seeds, alpha {level:.3g}: "
             + ", ".join(f"{s.claim.id} {s.verdict.verdict if s.verdict else '-'}"
                         + (f" ({s.stop})" if s.stop else "") for s in active))
    return states, record


def final_verdict(s: State, looks: list[int], alpha: float) -> Verdict:
    """The claim's verdict at its last look, its reason saying where the sequence stopped."""
    assert s.verdict is not None
    K = len(looks)
    at = (f"adaptive: look {s.look} of {K} ({s.seeds} seeds; alpha {alpha:g} split over {K} "
          f"looks, {alpha / K:.3g} each)")
    why = {"decided": "decided there",
           "futility": "stopped for futility: no undecided level can reach an 80% chance of a "
                       f"decision within {looks[-1]} seeds (the last look) and the cap",
           "out of time": "stopped: --max-minutes left no time for its sweep's next look",
           "last look": "the last look"}.get(s.stop, s.stop)
    numbers = {**s.verdict.numbers, "adaptive": {"looks": s.history, "stop": s.stop}}
    return Verdict(s.verdict.verdict, s.verdict.effect, f"{at}, {why}: {s.verdict.reason}",
                   numbers)
