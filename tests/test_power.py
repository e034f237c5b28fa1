"""What deciding would take (bnexp/claims/power.py): the projected chance of a decision checked
against simulations of the very tests the rules run, and the seeds it needs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bnexp.claims import power
from bnexp.stats import paired, sign_test_greater

LEVEL = 0.05 / 42  # Holm's strictest step in a quick call of 42 tests


def simulated_power(effect: float, sd: float, thr: float, n: int, level: float,
                    reps: int = 4000) -> tuple[float, float]:
    """The fraction of simulated paired designs in which either one-sided test against the
    threshold rejects at ``level``, and its Monte-Carlo standard error."""
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(reps):
        d = rng.normal(effect, sd, n)
        est = paired(d, np.zeros(n))
        hits += est.p_greater(thr) < level or est.p_less(thr) < level
    p = hits / reps
    return p, math.sqrt(p * (1 - p) / reps)


@pytest.mark.parametrize("effect, sd, n", [(0.03, 0.01, 5), (0.02, 0.01, 8), (0.0, 0.01, 6)])
def test_t_power_matches_a_simulation_of_the_tests(effect: float, sd: float, n: int) -> None:
    rng = np.random.default_rng(7)
    d = rng.normal(effect, sd, n)
    d = effect + (d - d.mean()) / d.std(ddof=1) * sd  # observed effect and spread exactly
    est = paired(d, np.zeros(n))
    o = power.t_outlook(est, effect - 0.01, 0.05 / 4)
    sim, mc = simulated_power(effect, sd, 0.01, n, 0.05 / 4)
    assert abs(o.power - sim) < 4 * mc + 0.01, (o.power, sim, mc)
    assert o.spread == pytest.approx(sd)


def test_seeds_needed_is_the_smallest_n_with_80_percent() -> None:
    d = 0.02 + np.array([-0.01, 0.0, 0.01])  # +2 points, sd 1 point, threshold 1 point
    est = paired(d, np.zeros(3))
    o = power.t_outlook(est, 0.02 - 0.01, LEVEL)
    n = o.seeds_needed
    assert n is not None and n > 3

    def at(k: int) -> float:
        se, df = power._project(est, k)
        return power._t_power(0.01, se, df, LEVEL)

    assert at(n) >= 0.8 > at(n - 1)
    assert o.power < 0.05  # three seeds at Holm's strictest step: hardly any chance


def test_quick_needs_t_above_20_at_holms_first_step() -> None:
    """The issue's figure: 3 seeds, 42 tests, df 2 -> t >= 20.5 to reject at all."""
    from scipy import stats

    assert stats.t.ppf(1 - LEVEL, 2) == pytest.approx(20.46, abs=0.01)


def test_a_sign_test_needs_ten_seeds_under_holm_over_42_tests() -> None:
    assert power.sign_min_n(LEVEL) == 10
    assert sign_test_greater([1.0] * 9, 0.5) >= LEVEL > sign_test_greater([1.0] * 10, 0.5)
    o = power.sign_outlook(3, 0, 3, LEVEL)
    assert o.power == 0.0 and o.min_n == 10 and o.seeds_needed == 10  # all agree: 10 decide
    note = power.words(o, 40, 0.05, 42)
    assert not note.decidable
    assert note.text.startswith("not decidable at this budget") and "at least 10 seeds" in note.text


def test_words_say_when_the_cap_is_exceeded() -> None:
    o = power.Outlook(n=5, power=0.1, seeds_needed=114)
    note = power.words(o, 40, 0.05, 30)
    text = note.text
    assert note.decidable and "~114 seeds" in text and "cap of 40" in text
    assert "interval are the answer" in text
    o = power.Outlook(n=5, power=0.3, seeds_needed=9)
    assert "~9 seeds would give an 80% chance" in power.words(o, 40, 0.05, 30).text


def test_tost_power_in_the_tails_is_finite() -> None:
    """A tight estimate well inside the margin: scipy's nct gives nan there; the integral
    does not (a nan once read as a 100% chance)."""
    d = 0.0016 + np.array([-0.002, 0.0, 0.002])
    o = power.tost_outlook(paired(d, np.zeros(3)), 0.01, LEVEL)
    assert 0.0 <= o.power < 0.5 and o.seeds_needed is not None and o.seeds_needed > 3


def test_an_undecidable_note_leads_the_reason_whatever_its_words() -> None:
    """decide_one reads the Note's flag, not its wording: a rephrased sentence still leads."""
    from bnexp.claims.decide import decide_one

    verdict, reason = decide_one(2.0, 1.0, 0.5, 0.5, 0.05, "1 step",
                                 power.Note("cannot decide with 3 seeds", decidable=False))
    assert verdict == "inconclusive" and reason.startswith("cannot decide with 3 seeds")
    assert "neither side" not in reason
    verdict, reason = decide_one(2.0, 1.0, 0.5, 0.5, 0.05, "1 step", power.Note("more seeds"))
    assert "neither side is shown" in reason and reason.endswith("more seeds")
