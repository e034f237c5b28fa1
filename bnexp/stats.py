"""The statistics behind ``bnexp claims`` verdicts: t tests, intervals, equivalence, Holm, sign test.

A claim is decided from a handful of seeds per arm, so every verdict rests on small-sample
Student t inference (distributions from ``scipy.stats``, never tables), and each result carries
its effect, standard error and degrees of freedom so that one-sided, equivalence (TOST) and
"beyond a margin" questions are all answered from the same estimate.

Conventions (each one is tested):

* Zero variance (``se == 0``, e.g. paired differences that are all exactly 1.0, which happens
  with deterministic runs): the t statistic is infinite or undefined, so a one- or two-sided p
  is 0.0 when the point estimate lies strictly on the tested side of the bound and 1.0 otherwise
  (an estimate equal to the bound gives 1.0), and every confidence interval collapses to
  ``[effect, effect]``. Values that are all identical count as zero variance exactly, even when
  floating-point summation would leave a tiny non-zero variance. Welch with only one group of zero
  variance is not special: the Welch-Satterthwaite df is then that of the other group.
  Welch with both groups constant reports ``df = n_a + n_b - 2`` (the formula gives 0/0; the df
  does not enter any p-value or interval when ``se == 0``).
* Non-finite values (nan/inf) raise ValueError: a diverged run is a result the caller must
  classify (failed, excluded, worst case) before any test, not something to average silently.
* Too few values for a t test (fewer than 2 per group, 2 pairs, 2 values) raise
  :class:`InsufficientData`, a ValueError, so callers can turn it into "inconclusive".
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

# Re-exported for tests/test_models.py, written when the derived metrics lived here; they are in
# bnexp.metrics now, beside (not inside) the statistics.
from bnexp.metrics import growth_rate  # noqa: F401

__all__ = ["Estimate", "InsufficientData", "holm", "mean_ci", "one_sample", "paired", "sign_test",
           "sign_test_greater", "welch"]


class InsufficientData(ValueError):
    """Too few values for the test (the message says how many and what is needed)."""


def _check_level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must lie strictly between 0 and 1, got {level!r}")
    return float(level)


def _upper_tail(effect: float, se: float, df: float, bound: float) -> float:
    """P(T >= (effect - bound) / se): the one-sided p of H0 "true effect <= bound"."""
    if se == 0.0:  # infinite or undefined t: decided by which side of the bound the estimate is on
        return 0.0 if effect > bound else 1.0
    return float(_st.t.sf((effect - bound) / se, df))


@dataclass(frozen=True)
class Estimate:
    """A t-based estimate of an effect; one object answers every question a claim rule asks.

    ``effect`` is mean(a) - mean(b) (Welch), mean(a - b) (paired) or mean(x) - mu (one-sample);
    ``lo``/``hi`` the two-sided interval at ``level``; ``p`` the two-sided p for effect == 0.
    """

    effect: float
    se: float
    df: float
    lo: float
    hi: float
    p: float
    n_a: int
    n_b: int  # 0 for one-sample
    test: str  # "paired t", "Welch t", "one-sample t"
    level: float = 0.95

    def p_greater(self, bound: float = 0.0) -> float:
        """One-sided p of H0 "true effect <= bound": small when the effect is clearly above bound."""
        return _upper_tail(self.effect, self.se, self.df, bound)

    def p_less(self, bound: float = 0.0) -> float:
        """One-sided p of H0 "true effect >= bound": small when the effect is clearly below bound."""
        return _upper_tail(-self.effect, self.se, self.df, -bound)

    def tost(self, margin: float) -> float:
        """Two one-sided tests: p for equivalence, i.e. the effect lies within (-margin, +margin).

        Rejecting at alpha is the same as the (1 - 2 alpha) interval lying inside the margin,
        which is why a "no meaningful difference" claim needs a margin declared in advance.
        """
        if not margin > 0:
            raise ValueError(f"equivalence margin must be > 0, got {margin!r}")
        return max(self.p_greater(-margin), self.p_less(margin))

    def p_beyond(self, margin: float) -> float:
        """p that the effect lies outside ``[-margin, margin]``, either side: the smaller
        one-sided p, doubled (Bonferroni over the two sides), since the side is not fixed in
        advance but read off the data."""
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin!r}")
        return min(1.0, 2 * min(self.p_greater(margin), self.p_less(-margin)))

    def interval(self, level: float) -> tuple[float, float]:
        """Two-sided confidence interval at another level (e.g. 0.90, the interval TOST at 5% uses)."""
        return _interval(self.effect, self.se, self.df, _check_level(level))


def _interval(effect: float, se: float, df: float, level: float) -> tuple[float, float]:
    if se == 0.0:
        return effect, effect
    half = float(_st.t.ppf(0.5 + level / 2.0, df)) * se
    return effect - half, effect + half


def _estimate(effect: float, se: float, df: float, n_a: int, n_b: int, test: str, level: float) -> Estimate:
    level = _check_level(level)
    lo, hi = _interval(effect, se, df, level)
    p = min(1.0, 2.0 * min(_upper_tail(effect, se, df, 0.0), _upper_tail(-effect, se, df, 0.0)))
    return Estimate(effect=effect, se=se, df=df, lo=lo, hi=hi, p=p, n_a=n_a, n_b=n_b, test=test, level=level)


def _values(values: Iterable[float], name: str) -> np.ndarray:
    """A 1-D float array of finite values; nan/inf raise ValueError naming where they are."""
    arr = np.asarray(list(values), dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a flat sequence of numbers, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name}: {bad.size} non-finite value(s) (nan/inf) at index {bad.tolist()}; "
                         "decide how to treat diverged runs before testing")
    return arr


def _mean_var(x: np.ndarray) -> tuple[float, float]:
    """Mean and sample variance (ddof=1); identical values give exactly (value, 0.0).

    Summation rounding can leave e.g. three copies of 0.1 with a variance of 1e-33, which would
    turn a deterministic result into a t of 1e16 instead of the zero-variance convention.
    """
    if x[0] == x.min() == x.max():
        return float(x[0]), 0.0
    return float(x.mean()), float(x.var(ddof=1))


def _need(n: int, name: str, what: str) -> None:
    if n < 2:
        raise InsufficientData(f"{name} needs at least 2 {what}, got {n}")


def mean_ci(values: Iterable[float], level: float = 0.95) -> dict[str, float | int | None]:
    """Mean, sample std and t interval of the mean: ``{"mean", "std", "lo", "hi", "n"}``.

    Degrades instead of raising, because a report table shows whatever seeds there are:
    n = 0 gives all None, n = 1 a mean without std or interval.
    """
    x = _values(values, "values")
    n = len(x)
    if n == 0:
        return {"mean": None, "std": None, "lo": None, "hi": None, "n": 0}
    if n == 1:
        return {"mean": float(x[0]), "std": None, "lo": None, "hi": None, "n": 1}
    mean, var = _mean_var(x)
    lo, hi = _interval(mean, math.sqrt(var / n), n - 1, _check_level(level))
    return {"mean": mean, "std": math.sqrt(var), "lo": lo, "hi": hi, "n": n}


def welch(a: Iterable[float], b: Iterable[float], level: float = 0.95) -> Estimate:
    """Welch's t for mean(a) - mean(b): unequal variances, because BN and no-BN arms differ in spread."""
    xa, xb = _values(a, "a"), _values(b, "b")
    na, nb = len(xa), len(xb)
    if min(na, nb) < 2:
        raise InsufficientData(f"Welch t needs at least 2 values in each group, got {na} and {nb}")
    (ma, va), (mb, vb) = _mean_var(xa), _mean_var(xb)
    ua, ub = va / na, vb / nb
    se = math.sqrt(ua + ub)
    df = (ua + ub) ** 2 / (ua**2 / (na - 1) + ub**2 / (nb - 1)) if se > 0 else float(na + nb - 2)
    return _estimate(ma - mb, se, df, na, nb, "Welch t", level)


def paired(a: Iterable[float], b: Iterable[float], level: float = 0.95) -> Estimate:
    """Paired t on a[i] - b[i]: runs sharing a seed share data order and init; pairing removes that noise."""
    xa, xb = _values(a, "a"), _values(b, "b")
    if len(xa) != len(xb):
        raise ValueError(f"paired t needs equal lengths (a[i] pairs with b[i]), got {len(xa)} and {len(xb)}")
    _need(len(xa), "paired t", "pairs")
    return _from_one_sample(xa - xb, 0.0, len(xa), len(xb), "paired t", level)


def one_sample(x: Iterable[float], mu: float = 0.0, level: float = 0.95) -> Estimate:
    """One-sample t for mean(x) - mu, e.g. a metric against a published reference value."""
    arr = _values(x, "x")
    _need(len(arr), "one-sample t", "values")
    return _from_one_sample(arr, float(mu), len(arr), 0, "one-sample t", level)


def _from_one_sample(x: np.ndarray, mu: float, n_a: int, n_b: int, test: str, level: float) -> Estimate:
    n = len(x)
    mean, var = _mean_var(x)
    return _estimate(mean - mu, math.sqrt(var / n), float(n - 1), n_a, n_b, test, level)


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values, same keys: controls the family-wise error over all claims.

    Step-down: the i-th smallest of m p-values is multiplied by (m - i + 1), then made monotone
    (never below an earlier adjusted value) and capped at 1. NaN p-values (claims that could not
    be tested) stay NaN and do not count toward m, so they do not dilute the others.
    """
    for key, p in pvalues.items():
        if not (math.isnan(p) or 0.0 <= p <= 1.0):
            raise ValueError(f"p-value for {key!r} must lie in [0, 1] or be NaN, got {p!r}")
    valid = sorted((p, key) for key, p in pvalues.items() if not math.isnan(p))
    m = len(valid)
    adjusted: dict[str, float] = {}
    running = 0.0
    for i, (p, key) in enumerate(valid):
        running = max(running, min(1.0, (m - i) * p))
        adjusted[key] = running
    return {key: adjusted.get(key, math.nan) for key in pvalues}


def sign_test_greater(differences: Iterable[float], bound: float = 0.0) -> float:
    """Exact one-sided sign test of H0 "the median difference is at most ``bound``": the binomial
    tail of the number of differences above ``bound`` (ties at the bound count against).
    For discrete outcomes (a grid index), where a t test's variance can be zero."""
    d = _values(differences, "differences")
    return float(_st.binomtest(int(np.sum(d > bound)), len(d), 0.5, alternative="greater").pvalue)


def sign_test(differences: Iterable[float]) -> float:
    """Exact two-sided sign test p (binomial, p = 1/2) on the non-zero differences.

    Assumes nothing about the shape of the distribution, a check on the t test when a few seeds
    are outliers; ties (zeros) carry no sign and are dropped; with none left the p is 1.0.
    """
    d = _values(differences, "differences")
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    return float(_st.binomtest(int((d > 0).sum()), int(d.size), 0.5).pvalue)
