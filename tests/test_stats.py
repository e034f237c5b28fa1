"""bnexp.stats against published values (R's t.test, p.adjust on textbook data) and hand computations.

Student t probabilities checked "by hand" use the closed-form cdfs for 3 and 4 degrees of freedom,
so these tests do not merely compare scipy with itself.
"""

from __future__ import annotations

import math

import pytest

from bnexp.stats import Estimate, InsufficientData, holm, mean_ci, one_sample, paired, sign_test, welch

# Student's sleep data (Cushny & Peebles; R's `sleep`): extra hours of sleep under two drugs.
GROUP1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
GROUP2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def t4_cdf(t: float) -> float:
    """Student t cdf, 4 df, closed form: 1/2 + (3/4) x (1 - x^2/3) with x = t / sqrt(4 + t^2)."""
    x = t / math.sqrt(4 + t * t)
    return 0.5 + 0.75 * x * (1 - x * x / 3)


def t3_cdf(t: float) -> float:
    """Student t cdf, 3 df, closed form: 1/2 + (u / (1 + u^2) + atan u) / pi with u = t / sqrt(3)."""
    u = t / math.sqrt(3)
    return 0.5 + (u / (1 + u * u) + math.atan(u)) / math.pi


def test_welch_matches_r_sleep() -> None:
    # R: t.test(extra ~ group, data = sleep)
    e = welch(GROUP1, GROUP2)
    assert e.test == "Welch t" and (e.n_a, e.n_b) == (10, 10) and e.level == 0.95
    assert e.effect == pytest.approx(-1.58)
    assert e.effect / e.se == pytest.approx(-1.8608, abs=5e-5)
    assert e.df == pytest.approx(17.776, abs=5e-4)
    assert e.p == pytest.approx(0.07939, abs=5e-6)
    assert e.lo == pytest.approx(-3.3654832, abs=5e-8)
    assert e.hi == pytest.approx(0.2054832, abs=5e-8)
    assert (e.lo, e.hi) == pytest.approx(e.interval(0.95))


def test_welch_is_antisymmetric_and_one_sided_halves() -> None:
    e, f = welch(GROUP1, GROUP2), welch(GROUP2, GROUP1)
    assert f.effect == pytest.approx(-e.effect) and f.p == pytest.approx(e.p) and f.df == pytest.approx(e.df)
    assert (f.lo, f.hi) == pytest.approx((-e.hi, -e.lo))
    # effect < 0: the lower one-sided p is half the two-sided one, the two tails sum to 1
    assert e.p_less() == pytest.approx(e.p / 2)
    assert e.p_greater() + e.p_less() == pytest.approx(1.0)


def test_welch_df_by_hand_with_one_constant_group() -> None:
    # a has zero variance, b = 0..3 has variance 5/3: df = (vb/nb)^2 / ((vb/nb)^2 / 3) = 3
    e = welch([1.0, 1.0, 1.0], [0.0, 1.0, 2.0, 3.0])
    se = math.sqrt(5 / 3 / 4)
    assert e.df == pytest.approx(3.0) and e.se == pytest.approx(se) and e.effect == pytest.approx(-0.5)
    assert e.p == pytest.approx(2 * t3_cdf(-0.5 / se))
    # general formula with two unequal variances, by hand: a = 1,2,3 (var 1), b = 0,2,4,6 (var 20/3)
    e = welch([1, 2, 3], [0, 2, 4, 6])
    ua, ub = 1 / 3, 20 / 3 / 4
    assert e.df == pytest.approx((ua + ub) ** 2 / (ua**2 / 2 + ub**2 / 3))


def test_paired_matches_r_sleep() -> None:
    # R: t.test(group1, group2, paired = TRUE)
    e = paired(GROUP1, GROUP2)
    assert e.test == "paired t" and (e.n_a, e.n_b) == (10, 10) and e.df == 9
    assert e.effect == pytest.approx(-1.58)
    assert e.effect / e.se == pytest.approx(-4.0621, abs=5e-5)
    assert e.p == pytest.approx(0.002833, abs=5e-7)
    assert e.lo == pytest.approx(-2.4598858, abs=5e-8)
    assert e.hi == pytest.approx(-0.7001142, abs=5e-8)


def test_one_sample_by_hand() -> None:
    # mean 3, sd sqrt(2.5), se sqrt(0.5), t = 3 / sqrt(0.5) = 4.2426, df 4; R: t.test(1:5)
    e = one_sample([1, 2, 3, 4, 5])
    assert e.test == "one-sample t" and (e.n_a, e.n_b) == (5, 0) and e.df == 4
    assert e.effect == 3.0 and e.se == pytest.approx(math.sqrt(0.5))
    assert e.effect / e.se == pytest.approx(4.2426, abs=5e-5)
    assert e.p == pytest.approx(2 * (1 - t4_cdf(3 / math.sqrt(0.5))))
    assert e.p == pytest.approx(0.01324, abs=5e-6)
    # 3 -/+ t(0.975, 4) * se with t(0.975, 4) = 2.776445
    assert e.lo == pytest.approx(3 - 2.776445 * 0.7071068, abs=1e-6)
    assert e.hi == pytest.approx(3 + 2.776445 * 0.7071068, abs=1e-6)
    assert (e.lo, e.hi) == pytest.approx((1.036757, 4.963243), abs=5e-7)


def test_one_sample_against_mu() -> None:
    e = one_sample([1, 2, 3, 4, 5], mu=3)
    assert e.effect == 0.0 and e.p == pytest.approx(1.0)
    e = one_sample([1, 2, 3, 4, 5], mu=1)
    assert e.effect == 2.0 and e.p == pytest.approx(2 * (1 - t4_cdf(2 / math.sqrt(0.5))))
    assert (e.lo, e.hi) == pytest.approx((1.036757 - 1, 4.963243 - 1), abs=5e-7)


def test_interval_at_other_levels() -> None:
    e = one_sample([1, 2, 3, 4, 5])
    lo90, hi90 = e.interval(0.90)  # t(0.95, 4) = 2.131847
    assert (lo90, hi90) == pytest.approx((3 - 2.131847 * 0.7071068, 3 + 2.131847 * 0.7071068), abs=1e-6)
    lo99, hi99 = e.interval(0.99)  # t(0.995, 4) = 4.604095
    assert hi99 == pytest.approx(3 + 4.604095 * 0.7071068, abs=1e-6)
    assert lo99 < e.lo < lo90 < hi90 < e.hi < hi99
    for bad in (0.0, 1.0, 95, -0.5, math.nan):
        with pytest.raises(ValueError, match="level"):
            e.interval(bad)
    with pytest.raises(ValueError, match="level"):
        one_sample([1, 2, 3], level=95)


# TOST on paired differences -0.1, 0.0, 0.1, 0.2, 0.3: effect 0.1, sum of squares 0.1, var 0.025,
# se = sqrt(0.025 / 5) = sqrt(0.005), df 4.
TOST_DIFFS = [-0.1, 0.0, 0.1, 0.2, 0.3]
TOST_SE = math.sqrt(0.005)


def test_tost_by_hand() -> None:
    e = paired(TOST_DIFFS, [0.0] * 5)
    assert e.effect == pytest.approx(0.1) and e.se == pytest.approx(TOST_SE) and e.df == 4
    # margin 0.5: t_lower = (0.1 + 0.5) / se = 6 sqrt(2), t_upper = (0.1 - 0.5) / se = -4 sqrt(2)
    p_lower = 1 - t4_cdf(6 * math.sqrt(2))  # H0: effect <= -0.5
    p_upper = t4_cdf(-4 * math.sqrt(2))  # H0: effect >= +0.5
    assert p_lower == pytest.approx(0.000529, abs=5e-7) and p_upper == pytest.approx(0.002406, abs=5e-7)
    assert e.p_greater(-0.5) == pytest.approx(p_lower, rel=1e-6)
    assert e.p_less(0.5) == pytest.approx(p_upper, rel=1e-6)
    assert e.tost(0.5) == pytest.approx(max(p_lower, p_upper), rel=1e-6)


def test_tost_agrees_with_the_90_percent_interval() -> None:
    e = paired(TOST_DIFFS, [0.0] * 5)
    lo90, hi90 = e.interval(0.90)
    # the 90% interval 0.1 +/- 2.131847 se: TOST at 5% rejects exactly when it lies inside the margin
    assert hi90 == pytest.approx(0.1 + 2.131847 * TOST_SE, abs=1e-6)
    assert e.tost(hi90) == pytest.approx(0.05)
    assert e.tost(hi90 * 1.01) < 0.05 < e.tost(hi90 * 0.99)
    # interval pokes outside a margin of 0.15: far from equivalent; well inside 0.5: clearly equivalent
    assert e.hi > 0.15 and e.tost(0.15) == pytest.approx(t4_cdf((0.1 - 0.15) / TOST_SE), rel=1e-6)
    assert e.tost(0.15) > 0.2
    assert e.tost(0.5) < 0.003
    for bad in (0.0, -0.5, math.nan):
        with pytest.raises(ValueError, match="margin"):
            e.tost(bad)


def test_p_beyond_doubles_the_data_chosen_side() -> None:
    """The side is read off the data, so the one-sided p is doubled (at margin 0 it is the
    two-sided p)."""
    up = paired(TOST_DIFFS, [0.0] * 5)
    down = paired([-d for d in TOST_DIFFS], [0.0] * 5)
    assert up.p_beyond(0.0) == pytest.approx(2 * (1 - t4_cdf(0.1 / TOST_SE)), rel=1e-6)
    assert up.p_beyond(0.05) == pytest.approx(2 * up.p_greater(0.05))
    assert down.p_beyond(0.05) == pytest.approx(2 * down.p_less(-0.05))
    assert down.p_beyond(0.05) == pytest.approx(up.p_beyond(0.05))
    assert up.p_beyond(0.0) == pytest.approx(up.p)
    with pytest.raises(ValueError, match="margin"):
        up.p_beyond(-0.1)


def test_zero_variance_paired() -> None:
    e = paired([2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 4.0])  # all differences exactly 1.0
    assert e.effect == 1.0 and e.se == 0.0 and e.df == 3
    assert e.p == 0.0 and e.lo == e.hi == 1.0
    assert e.interval(0.99) == (1.0, 1.0)
    assert e.p_greater(0) == 0.0 and e.p_less(0) == 1.0
    assert e.p_greater(1.0) == 1.0 and e.p_less(1.0) == 1.0  # estimate on the bound: 1.0
    assert e.p_less(1.5) == 0.0 and e.p_greater(1.5) == 1.0
    assert e.tost(0.5) == 1.0 and e.tost(2.0) == 0.0
    assert e.p_beyond(0.5) == 0.0 and e.p_beyond(1.0) == 1.0
    z = paired([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])  # all differences 0
    assert z.effect == 0.0 and z.p == 1.0 and z.lo == z.hi == 0.0 and z.tost(0.1) == 0.0


def test_zero_variance_is_exact_despite_rounding() -> None:
    e = one_sample([0.1, 0.1, 0.1], mu=0.0)  # summation rounding must not leave a tiny variance
    assert e.se == 0.0 and e.effect == 0.1 and e.lo == e.hi == 0.1 and e.p == 0.0
    assert one_sample([2.0, 2.0], mu=2.0).p == 1.0


def test_zero_variance_welch() -> None:
    e = welch([2.0, 2.0], [1.0, 1.0, 1.0])
    assert e.se == 0.0 and e.effect == 1.0 and e.p == 0.0 and e.lo == e.hi == 1.0
    assert e.df == 3  # n_a + n_b - 2 by convention (the Welch formula is 0/0)
    assert welch([1.0, 1.0], [1.0, 1.0]).p == 1.0


def test_insufficient_data() -> None:
    with pytest.raises(InsufficientData, match="at least 2 values in each group, got 1 and 3"):
        welch([1.0], [1.0, 2.0, 3.0])
    with pytest.raises(InsufficientData, match="at least 2 pairs, got 1"):
        paired([1.0], [2.0])
    with pytest.raises(InsufficientData, match="at least 2 values, got 1"):
        one_sample([1.0])
    with pytest.raises(InsufficientData, match="got 0"):
        one_sample([])
    assert issubclass(InsufficientData, ValueError)


def test_non_finite_and_malformed_input() -> None:
    with pytest.raises(ValueError, match=r"a: 1 non-finite value\(s\) \(nan/inf\) at index \[1\]"):
        welch([1.0, math.nan, 2.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="b: .*non-finite"):
        paired([1.0, 2.0], [1.0, math.inf])
    with pytest.raises(ValueError, match="non-finite"):
        one_sample([1.0, 2.0, -math.inf])
    with pytest.raises(ValueError, match="non-finite"):
        mean_ci([1.0, math.nan])
    with pytest.raises(ValueError, match="non-finite"):
        sign_test([1.0, math.nan])
    with pytest.raises(ValueError, match="equal lengths"):
        paired([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="flat sequence"):
        one_sample([[1.0, 2.0], [3.0, 4.0]])


def test_mean_ci() -> None:
    r = mean_ci([1, 2, 3, 4, 5])
    assert r["n"] == 5 and r["mean"] == 3.0 and r["std"] == pytest.approx(math.sqrt(2.5))
    assert (r["lo"], r["hi"]) == pytest.approx((1.036757, 4.963243), abs=5e-7)
    assert mean_ci([1, 2, 3, 4, 5], level=0.90)["hi"] == pytest.approx(3 + 2.131847 * 0.7071068, abs=1e-6)
    assert mean_ci([4.0]) == {"mean": 4.0, "std": None, "lo": None, "hi": None, "n": 1}
    assert mean_ci([]) == {"mean": None, "std": None, "lo": None, "hi": None, "n": 0}
    assert mean_ci([2.5, 2.5, 2.5]) == {"mean": 2.5, "std": 0.0, "lo": 2.5, "hi": 2.5, "n": 3}
    assert mean_ci(iter([1.0, 3.0]))["mean"] == 2.0  # any iterable


def test_holm_matches_r() -> None:
    # R: p.adjust(c(0.01, 0.04, 0.03, 0.005), "holm") = 0.03 0.06 0.06 0.02
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> raised to 0.06 (monotone)
    adj = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005})
    assert list(adj) == ["a", "b", "c", "d"]
    assert [adj[k] for k in "abcd"] == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_nan_cap_and_edges() -> None:
    adj = holm({"a": 0.01, "b": math.nan, "c": 0.04})  # m = 2: 0.01*2 = 0.02, 0.04*1 = 0.04
    assert adj["a"] == pytest.approx(0.02) and adj["c"] == pytest.approx(0.04) and math.isnan(adj["b"])
    assert list(adj) == ["a", "b", "c"]
    assert holm({"x": 0.6, "y": 0.7}) == {"x": 1.0, "y": 1.0}  # 1.2 capped at 1, then monotone
    assert holm({"x": 0.02, "y": 0.02}) == pytest.approx({"x": 0.04, "y": 0.04})  # ties
    assert holm({"only": 0.03}) == {"only": 0.03}
    assert holm({}) == {}
    assert math.isnan(holm({"n": math.nan})["n"])
    with pytest.raises(ValueError, match="'bad'"):
        holm({"bad": 1.5})


def test_sign_test() -> None:
    assert sign_test([1.0] * 5) == pytest.approx(2 / 2**5)  # 0.0625
    assert sign_test([0.3] * 6) == pytest.approx(0.03125)
    assert sign_test([-1.0] * 5) == pytest.approx(0.0625)
    assert sign_test([1.0] * 5 + [0.0, 0.0]) == pytest.approx(0.0625)  # zeros dropped
    # 8 of 10 positive: 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 2 * 56 / 1024
    assert sign_test([1.0] * 8 + [-2.0] * 2) == pytest.approx(112 / 1024)
    assert sign_test([1.0, -1.0]) == 1.0
    assert sign_test([0.0, 0.0]) == 1.0 and sign_test([]) == 1.0


def test_estimate_is_frozen() -> None:
    e = one_sample([1, 2, 3])
    assert isinstance(e, Estimate)
    with pytest.raises(AttributeError):
        e.effect = 0.0  # type: ignore[misc]


def test_one_sided_sign_test_against_a_bound() -> None:
    from bnexp.stats import sign_test_greater

    assert sign_test_greater([2, 2, 2, 2, 2], 1) == pytest.approx(1 / 32)  # 5 of 5 above
    assert sign_test_greater([2] * 10, 1) == pytest.approx(1 / 1024)
    assert sign_test_greater([1, 2, 2, 2, 2], 1) == pytest.approx(6 / 32)  # a tie counts against
    assert sign_test_greater([0, 0, 0], 1) == 1.0
