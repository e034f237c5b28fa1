"""What it would take to decide: the chance of a decision either way at the seeds a call had,
and the seeds an 80% chance would need, assuming the observed effect and per-seed spread are
the truth.

A verdict is decided when one of a rule's two one-sided tests rejects after Holm over the
call's m tests. Holm's strictest step tests at alpha / m, so projections use that level: a
lower bound on the power the call's correction leaves (a test that is not the family's
smallest p gets a little more). For a t test on n seeds the test statistic is non-central t
with n - 1 degrees of freedom (paired, one-sample) and non-centrality (effect - threshold) /
(sd / sqrt(n)); the chance of a decision is the chance that it lands beyond either critical
value. A Welch comparison is projected with its observed standard error shrinking as 1/sqrt(n)
and its degrees of freedom growing in proportion. An exact sign test over n seeds cannot give
a p below 0.5^n, so below ceil(log2(m / alpha)) seeds it cannot decide at all, whatever the
runs show; its power is the binomial chance that enough seeds agree, at the observed share.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scipy import integrate
from scipy import stats as st

from bnexp.stats import Estimate

TARGET = 0.8  # the chance of a decision a design should give
NOT_DECIDABLE = "not decidable at this budget"


@dataclass(frozen=True)
class Note:
    """What an undecided level's reason says about the outlook; ``decidable`` is False where
    the test cannot decide at this budget whatever the runs show (so the reason leads with it
    instead of p-values that could never have been small enough)."""

    text: str
    decidable: bool = True


@dataclass(frozen=True)
class Outlook:
    """One level's outlook: the chance of a decision now and the seeds an 80% chance needs."""

    n: int
    power: float  # chance of a decision either way at n seeds
    seeds_needed: int | None  # smallest n with power >= TARGET (None: beyond the search)
    min_n: int = 2  # below this the test cannot decide at all
    spread: float | None = None  # per-seed standard deviation of the compared quantity
    power_at: Callable[[int], float] | None = field(default=None, compare=False, repr=False)

    def as_json(self, ns: tuple[int, ...] = ()) -> dict[str, Any]:
        """For claims.json; ``ns``: seed counts at which to state the projected power too."""
        curve = {str(k): self.power_at(k) for k in ns if k >= 2} if self.power_at else {}
        return {"n": self.n, "power": self.power, "seeds_for_80": self.seeds_needed,
                "min_decidable_n": self.min_n, "per_seed_sd": self.spread,
                **({"power_at": curve} if curve else {})}


def _tail(c: float, df: float, nc: float, upper: bool) -> float:
    """P(T > c) (upper) or P(T < c) for T non-central t (df, nc): the normal tail averaged over
    the chi-square quantiles (scipy's nct returns nan far in the tails, e.g. cdf(-28.9, 2,
    10.2); this integrand is bounded on a finite interval)."""
    if df > 1000:  # sqrt(V / df) ~ 1: the normal tail
        return float(st.norm.sf(c - nc) if upper else st.norm.cdf(c - nc))
    fast = float(st.nct.sf(c, df, nc) if upper else st.nct.cdf(c, df, nc))
    if math.isfinite(fast) and 1e-12 < fast < 1.0 - 1e-12:  # scipy's is exact where it is finite
        return fast

    def at(u: float) -> float:
        z = c * math.sqrt(float(st.chi2.ppf(u, df)) / df) - nc
        return float(st.norm.sf(z) if upper else st.norm.cdf(z))

    with warnings.catch_warnings():  # a steep integrand near u = 1: accurate, but quad warns
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        return float(integrate.quad(at, 0.0, 1.0, limit=200, epsabs=1e-7)[0])


def _t_power(shift: float, se: float, df: float, level: float) -> float:
    """P(decision) for a t statistic centred at shift / se: beyond either one-sided critical
    value at ``level`` (for: the effect exceeds the threshold; against: it falls short)."""
    if se == 0.0:
        return 1.0 if shift != 0.0 else 0.0
    crit = float(st.t.ppf(1.0 - level, df))
    nc = shift / se
    return min(1.0, _tail(crit, df, nc, True) + _tail(-crit, df, nc, False))


def _project(est: Estimate, n: int) -> tuple[float, float]:
    """(se, df) of the same comparison with n seeds per arm."""
    n0 = max(est.n_a, 2)
    se = est.se * math.sqrt(n0 / n)
    df = max(1.0, est.df * (n - 1) / (n0 - 1)) if est.test == "Welch t" else float(n - 1)
    return se, df


def _search(power_at: Callable[[int], float], cap: int) -> int | None:
    """Smallest n in [2, cap] with power_at(n) >= TARGET; power grows with n (checked on a
    doubling grid, then bisected)."""
    hi = 2
    while power_at(hi) < TARGET:
        if hi >= cap:
            return None
        hi = min(cap, hi * 2)
    lo = max(1, hi // 2)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if power_at(mid) >= TARGET else (mid, hi)
    return hi


def t_outlook(est: Estimate, shift: float, level: float, cap: int = 100_000) -> Outlook:
    """A one-sided-either-way t decision: ``shift`` is the effect minus the threshold on the
    analysis scale (the sign does not matter: either side decides)."""
    n = est.n_a

    def power_at(k: int) -> float:
        se, df = _project(est, k)
        return _t_power(shift, se, df, level)

    spread = est.se * math.sqrt(n) if est.test != "Welch t" else None
    return Outlook(n, _t_power(shift, est.se, est.df, level), _search(power_at, cap),
                   spread=spread, power_at=power_at)


def tost_outlook(est: Estimate, margin: float, level: float, cap: int = 100_000) -> Outlook:
    """Equivalence within ±margin (TOST at ``level``) or a difference shown beyond it (the
    smaller one-sided p doubled): the chance that either is shown."""
    def power_at(k: int) -> float:
        se, df = _project(est, k) if k != est.n_a else (est.se, est.df)
        if se == 0.0:
            return 1.0 if abs(est.effect) != margin else 0.0
        crit = float(st.t.ppf(1.0 - level, df))
        # both one-sided tests of TOST reject: at least P(A) + P(B) - 1 (a lower bound)
        inside = (_tail(crit, df, (est.effect + margin) / se, True)
                  + _tail(-crit, df, (est.effect - margin) / se, False) - 1.0)
        crit2 = float(st.t.ppf(1.0 - level / 2.0, df))  # beyond: the smaller p, doubled
        beyond = (_tail(crit2, df, (est.effect - margin) / se, True)
                  + _tail(-crit2, df, (est.effect + margin) / se, False))
        return float(min(1.0, max(0.0, inside) + beyond))

    return Outlook(est.n_a, power_at(est.n_a), _search(power_at, cap),
                   spread=est.se * math.sqrt(est.n_a), power_at=power_at)


def sign_min_n(level: float) -> int:
    """The fewest seeds at which an exact one-sided sign test can reach p < level."""
    return max(1, math.floor(math.log2(1.0 / level)) + 1)


def _sign_power(share: float, n: int, level: float) -> float:
    """P(an exact one-sided sign test over n seeds rejects at ``level``) when each seed agrees
    with probability ``share``."""
    k = next((k for k in range(n + 1) if st.binom.sf(k - 1, n, 0.5) < level), None)
    return 0.0 if k is None else float(st.binom.sf(k - 1, n, share))


def sign_outlook(agree_for: int, agree_against: int, n: int, level: float,
                 cap: int = 100_000) -> Outlook:
    """Sign tests for and against: the chance that either rejects, with each seed's side drawn
    at the observed shares (a share of 0 or 1 is kept: with every seed agreeing, the test
    decides as soon as n reaches its minimum)."""
    p_for, p_against = agree_for / n, agree_against / n

    def power_at(k: int) -> float:
        return min(1.0, _sign_power(p_for, k, level) + _sign_power(p_against, k, level))

    return Outlook(n, power_at(n), _search(power_at, cap), min_n=sign_min_n(level),
                   power_at=power_at)


def words(o: Outlook, cap: int, alpha: float, m: int) -> Note:
    """The outlook in a sentence, for an undecided level."""
    holm = f"Holm over the call's {m} tests (strictest step alpha/m = {alpha / m:.2g})"
    if o.n < o.min_n:
        return Note(f"{NOT_DECIDABLE}: with {o.n} seeds this test cannot reach the "
                    f"level {holm} needs, whatever the runs show; it needs at least {o.min_n} "
                    "seeds", decidable=False)
    chance = f"with {o.n} seeds the chance of a decision either way was {o.power:.0%}"
    if o.seeds_needed is None or o.seeds_needed > cap:
        more = (f"~{o.seeds_needed} seeds" if o.seeds_needed is not None
                else "more seeds than any sweep could run")
        return Note(f"{chance}; the effect sits so close to the threshold for its spread "
                    f"that {more} would be needed for an 80% chance under {holm}, beyond the "
                    f"declared cap of {cap}: the estimate and its interval are the answer")
    return Note(f"{chance}; ~{o.seeds_needed} seeds would give an 80% chance under {holm}")
