"""Study measures against hand-computed cases, brute-force enumerations and numerical integration.

Every reference value below is worked out in a comment (or by an independent brute force), never
taken from the code under test.
"""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optlab.app.study.measures import (
    algoperf_score,
    average_runtime,
    bootstrap_ci,
    censored_median,
    ecdf,
    ecdf_band,
    expected_best_of_k,
    first_reach,
    holm,
    ladder,
    mean_ci,
    performance_profile,
    performance_ratios,
    rank_sum_p,
    target_ladder,
    time_to_target,
)

INF = math.inf
NAN = math.nan

# --- time-to-target ---------------------------------------------------------------------------


def test_first_reach_min_max_equality_nan_and_none():
    assert first_reach([3.0, NAN, 1.0, 0.5], 1.0, "min") == 2  # 1.0 <= 1.0: equality reaches
    assert first_reach([3.0, NAN, 0.9], 1.0, "min") == 2  # NaN (a diverged evaluation) never reaches
    assert first_reach([0.1, NAN, 0.8, 0.9], 0.8, "max") == 2
    assert first_reach([0.1, 0.2], 0.8, "max") is None
    assert first_reach([], 0.8, "max") is None
    assert first_reach([0.5], 1.0, "min") == 0
    with pytest.raises(ValueError, match="direction"):
        first_reach([1.0], 1.0, "lower")


SCHEDULE = [  # steps 1, 2, 4, 8 at a batch size of 32; seconds of training only
    {"step": 1, "examples": 32, "seconds": 0.1, "value": 2.0},
    {"step": 2, "examples": 64, "seconds": 0.2, "value": 1.5},
    {"step": 4, "examples": 128, "seconds": 0.4, "value": 0.9},
    {"step": 8, "examples": 256, "seconds": 0.8, "value": 0.4},
]


def test_time_to_target_on_a_short_schedule():
    # loss first <= 1.0 at the third point (0.9): step 4, 128 examples, 0.4 s
    assert time_to_target(SCHEDULE, 1.0, "min") == {"step": 4, "examples": 128, "seconds": 0.4}
    # exactly 1.5 at the second point counts
    assert time_to_target(SCHEDULE, 1.5, "min") == {"step": 2, "examples": 64, "seconds": 0.2}
    # never <= 0.1: censored, every time inf
    assert time_to_target(SCHEDULE, 0.1, "min") == {"step": INF, "examples": INF, "seconds": INF}
    # an accuracy with a NaN evaluation in between
    acc = [dict(p, value=v) for p, v in zip(SCHEDULE, [0.5, NAN, 0.92, 0.95])]
    assert time_to_target(acc, 0.9, "max") == {"step": 4, "examples": 128, "seconds": 0.4}
    assert time_to_target([], 0.9, "max")["step"] == INF


def test_target_ladder_loosest_first_and_factor_one_is_the_target():
    # min, ideal 0, target 0.2: 0 + f * 0.2 for f = 10, 3, 1, 0.5
    assert target_ladder(0.2, "min") == pytest.approx([2.0, 0.6, 0.2, 0.1])
    # max, ideal 1, target 0.9: 1 + f * (0.9 - 1) = 1 - 0.1 f -> 0.0, 0.7, 0.9, 0.95 (loosest = lowest)
    ladder = target_ladder(0.9, "max")
    assert ladder == pytest.approx([0.0, 0.7, 0.9, 0.95])
    assert 0.9 in ladder and 0.2 in target_ladder(0.2, "min")  # the declared target exactly, no rounding
    # factors given in any order still come back loosest first
    assert target_ladder(0.5, "min", factors=(1, 0.5, 2)) == pytest.approx([1.0, 0.5, 0.25])
    assert target_ladder(0.8, "max", factors=(1,)) == [0.8]


def test_a_target_at_the_ideal_keeps_one_ladder_entry_per_factor():
    # an accuracy of 1 or a suboptimality of 0: 1 + f * 0 and 0 + f * 0 are the target at every factor
    assert ladder(1.0, "max") == [(10, 1.0), (3, 1.0), (1, 1.0), (0.5, 1.0)]
    assert [f for f, _ in ladder(0.0, "min", factors=(10.0, 3.0, 1.0, 0.5))] == [10.0, 3.0, 1.0, 0.5]
    # each level keeps its own factor, also where the order of the levels is not the factors'
    assert ladder(0.5, "min", factors=(1, 0.5, 2)) == [(2, 1.0), (1, 0.5), (0.5, 0.25)]


def test_censored_median():
    assert censored_median([3.0, 1.0, INF]) == 3.0  # one miss of three: sorted 1, 3, inf
    assert censored_median([1.0, 2.0, 3.0, INF]) == 2.5  # (2 + 3) / 2
    assert censored_median([1.0, 2.0, INF, INF]) == INF  # half missed
    assert censored_median([1.0, INF, INF]) == INF  # more than half missed
    assert censored_median([INF]) == INF
    assert censored_median([4.0, NAN, 1.0]) == 4.0  # NaN read as a miss: 1, 4, inf
    assert censored_median([5.0]) == 5.0
    with pytest.raises(ValueError):
        censored_median([])


# --- performance profiles ---------------------------------------------------------------------

# p1: A 10, B 20, C 50  -> best 10: r = A 1, B 2, C 5
# p2: A 30, B 10, C 10  -> best 10 (B and C tie): r = A 3, B 1, C 1
# p3: every solver missed -> r = inf for all (p3 stays in |P| = 3)
COSTS = {
    "p1": {"A": 10.0, "B": 20.0, "C": 50.0},
    "p2": {"A": 30.0, "B": 10.0, "C": 10.0},
    "p3": {"A": INF, "B": INF, "C": INF},
}


def test_performance_ratios_by_hand():
    assert performance_ratios(COSTS) == {
        "p1": {"A": 1.0, "B": 2.0, "C": 5.0},
        "p2": {"A": 3.0, "B": 1.0, "C": 1.0},
        "p3": {"A": INF, "B": INF, "C": INF},
    }


def test_performance_profile_by_hand():
    taus = [1, 2, 3, 4, 5, INF]
    rho = performance_profile(COSTS, taus)
    assert list(rho) == ["A", "B", "C"]
    # A: r = 1, 3, inf -> 1/3 from tau 1, 2/3 from tau 3; the miss never counts, not even at inf
    np.testing.assert_allclose(rho["A"], [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    # B: r = 2, 1, inf -> 1/3 at tau 1 (fastest on p2), 2/3 from tau 2
    np.testing.assert_allclose(rho["B"], [1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    # C: r = 5, 1, inf -> 1/3 until tau 5, then 2/3
    np.testing.assert_allclose(rho["C"], [1 / 3, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    # rho(1) sums to 1 although nobody solved p3: B and C are jointly fastest on p2, both count
    assert rho["A"][0] + rho["B"][0] + rho["C"][0] == pytest.approx(1.0)


def test_algoperf_score_by_hand():
    # area of rho_s on [1, 4] / 3, one step of height 1/3 per problem solved within r <= 4:
    # A: (4 - 1) + (4 - 3) = 4 -> 4 / (3 * 3) = 4/9
    # B: (4 - 2) + (4 - 1) = 5 -> 5/9
    # C: (4 - 1) + (r = 5 > 4: nothing) = 3 -> 3/9
    assert algoperf_score(COSTS) == pytest.approx({"A": 4 / 9, "B": 5 / 9, "C": 3 / 9})
    # fastest everywhere scores 1; tau_max = 6 lets C's r = 5 count: C = (5 + 1) / (5 * 3)
    assert algoperf_score({"p": {"A": 1.0, "B": 2.0}}) == {"A": 1.0, "B": pytest.approx(2 / 3)}
    assert algoperf_score(COSTS, tau_max=6.0)["C"] == pytest.approx((5 + 1) / 15)
    with pytest.raises(ValueError):
        algoperf_score(COSTS, tau_max=1.0)


def test_absent_solver_is_a_miss_and_bad_costs_are_refused():
    costs = {"p1": {"A": 2.0, "B": 4.0}, "p2": {"A": 3.0}}  # B never ran p2
    assert performance_ratios(costs) == {"p1": {"A": 1.0, "B": 2.0}, "p2": {"A": 1.0, "B": INF}}
    rho = performance_profile(costs, [1.0, INF])
    np.testing.assert_allclose(rho["A"], [1.0, 1.0])  # A solved everything: 1 at tau = inf
    np.testing.assert_allclose(rho["B"], [0.0, 0.5])  # B did not: stays at 1/2
    assert performance_ratios({"p": {"A": NAN, "B": 1.0}})["p"]["A"] == INF  # NaN cost is a miss
    with pytest.raises(ValueError, match="> 0"):
        performance_ratios({"p": {"A": 0.0, "B": 1.0}})
    with pytest.raises(ValueError):
        performance_profile({}, [1.0])


cost_tables = st.integers(1, 5).flatmap(
    lambda n_solvers: st.lists(
        st.lists(
            st.one_of(st.just(INF), st.sampled_from([1.0, 2.0, 3.0]), st.floats(0.5, 20.0)),
            min_size=n_solvers,
            max_size=n_solvers,
        ),
        min_size=1,
        max_size=6,
    )
)


def _table(rows):
    return {f"p{i}": {f"s{j}": c for j, c in enumerate(row)} for i, row in enumerate(rows)}


@settings(max_examples=80, deadline=None)
@given(cost_tables)
def test_profile_is_monotone_and_reaches_one_only_for_solvers_that_solved_everything(rows):
    costs = _table(rows)
    taus = np.concatenate([np.linspace(1.0, 30.0, 300), [INF]])
    rho = performance_profile(costs, taus)
    for s, curve in rho.items():
        assert np.all(np.diff(curve) >= 0)
        assert np.all((curve >= 0) & (curve <= 1))
        solved_all = all(math.isfinite(row[s]) for row in costs.values())
        assert (curve[-1] == 1.0) == solved_all
    # at tau = 1 the fastest solver of each problem counts; at least one per problem someone solved
    solved_problems = sum(any(math.isfinite(c) for c in row.values()) for row in costs.values())
    assert sum(curve[0] for curve in rho.values()) * len(costs) >= solved_problems - 1e-9


@settings(max_examples=60, deadline=None)
@given(cost_tables, st.sampled_from([2.0, 4.0, 7.5]))
def test_algoperf_score_is_the_integral_of_the_profile(rows, tau_max):
    costs = _table(rows)
    # midpoint rule on a fine grid: each of the |P| steps of height 1/|P| is off by at most width / 2
    m = 60_000
    width = (tau_max - 1) / m
    mids = 1 + width * (np.arange(m) + 0.5)
    rho = performance_profile(costs, mids)
    score = algoperf_score(costs, tau_max)
    for s in rho:
        assert score[s] == pytest.approx(rho[s].sum() * width / (tau_max - 1), abs=width / (tau_max - 1))


# --- runtime ECDF and aRT ---------------------------------------------------------------------


def test_ecdf_counts_misses_in_the_denominator():
    runtimes = np.array([1.0, 2.0, 2.0, 5.0, INF])
    # <= 0: none; <= 1: 1/5; <= 2: 3/5; <= 4: 3/5; <= 5: 4/5; the miss never counts, even at inf
    np.testing.assert_allclose(ecdf(runtimes, [0, 1, 2, 4, 5, 100, INF]), [0, 0.2, 0.6, 0.6, 0.8, 0.8, 0.8])
    np.testing.assert_allclose(ecdf([NAN, 1.0], [1.0]), [0.5])
    assert ecdf([INF, INF], [1e9]).tolist() == [0.0]
    with pytest.raises(ValueError):
        ecdf([], [1.0])


def test_ecdf_band_is_the_percentile_bootstrap():
    runtimes = np.array([1.0, 2.0, 2.0, 5.0, INF, 3.0, 7.0])
    budgets = np.array([0.5, 1.0, 2.5, 6.0, INF])
    lower, upper = ecdf_band(runtimes, budgets, level=0.9, n_boot=500, seed=3)
    # brute force: the same resamples (seeded generator), each compared with each budget
    draws = np.random.default_rng(3).integers(0, runtimes.size, size=(500, runtimes.size))
    sorted_rt = np.sort(runtimes)  # the function indexes the sorted runtimes
    curves = np.array(
        [[np.mean(np.isfinite(sorted_rt[row]) & (sorted_rt[row] <= b)) for b in budgets] for row in draws]
    )
    np.testing.assert_allclose(lower, np.quantile(curves, 0.05, axis=0))
    np.testing.assert_allclose(upper, np.quantile(curves, 0.95, axis=0))
    assert np.all(lower <= upper)
    assert lower[0] == upper[0] == 0.0  # nothing within 0.5 in any resample
    # the miss never counts, not even at b = inf: resamples that drew it stay below 1
    assert lower[-1] < 1.0 and upper[-1] <= 1.0


def test_ecdf_band_width_matches_the_binomial_standard_error():
    # 200 runs, half within budget 1: the band at b = 1 is about 0.5 +- 1.96 sqrt(0.25 / 200) = 0.5 +- 0.069
    runtimes = np.r_[np.full(100, 0.5), np.full(100, INF)]
    lower, upper = ecdf_band(runtimes, [1.0], n_boot=4000, seed=1)
    assert lower[0] == pytest.approx(0.5 - 0.069, abs=0.015)
    assert upper[0] == pytest.approx(0.5 + 0.069, abs=0.015)
    lo, hi = ecdf_band(np.full(5, 2.0), [1.0, 2.0])
    assert lo.tolist() == hi.tolist() == [0.0, 1.0]  # no spread, no band


def test_average_runtime():
    # (100 + 200 + 1000 + 1000) evaluations spent / 2 successes
    assert average_runtime([100, 200, 1000, 1000], [True, True, False, False]) == 1150.0
    assert average_runtime([50], [True]) == 50.0
    assert average_runtime([1000, 1000], [False, False]) == INF
    with pytest.raises(ValueError):
        average_runtime([1, 2], [True])


# --- seed statistics --------------------------------------------------------------------------


def test_mean_ci_student_t_by_hand():
    got = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3; s^2 = (4 + 1 + 0 + 1 + 4) / 4 = 2.5; half-width t_{0.975,4} s / sqrt(5) = 2.776445 sqrt(0.5)
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5)
    assert got["n"] == 5 and got["mean"] == 3.0
    assert got["std"] == pytest.approx(math.sqrt(2.5))
    assert got["low"] == pytest.approx(3 - half, rel=1e-6)
    assert got["high"] == pytest.approx(3 + half, rel=1e-6)
    # 90%: t_{0.95,4} = 2.131847
    assert mean_ci([1.0, 2.0, 3.0, 4.0, 5.0], level=0.9)["high"] == pytest.approx(
        3 + 2.131847 * math.sqrt(0.5), rel=1e-6
    )


def test_mean_ci_small_and_non_finite_samples():
    one = mean_ci([4.0])
    assert one["mean"] == 4.0 and one["n"] == 1
    assert math.isnan(one["std"]) and math.isnan(one["low"]) and math.isnan(one["high"])
    none = mean_ci([])
    assert none["n"] == 0 and math.isnan(none["mean"])
    diverged = mean_ci([1.0, 2.0, INF])  # kept, not filtered: the setting diverged once
    assert diverged["n"] == 3 and diverged["mean"] == INF
    assert math.isnan(diverged["std"]) and math.isnan(diverged["low"])
    assert math.isnan(mean_ci([1.0, NAN])["mean"])


def test_mean_ci_of_equal_values_has_no_spread():
    """np.std of three 0.9298 is 1.36e-16 (their float mean is not 0.9298): the report read '0.9298 ± 1.4e-16'."""
    for value, n in ((0.9298, 3), (0.7, 20), (1 / 3, 10)):
        got = mean_ci([value] * n)
        assert (got["mean"], got["std"], got["low"], got["high"]) == (value, 0.0, value, value)
    assert math.isnan(mean_ci([INF, INF])["std"])  # (an infinite one is still a diverged setting's)


def test_rank_sum_p_exact_and_diverged_seeds_rank_last():
    # all 3 of a below all 3 of b: U = 0, exact two-sided p = 2 * 1 / C(6, 3) = 0.1
    assert rank_sum_p([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], "min") == pytest.approx(0.1)
    # min: the NaN seed becomes +inf and ranks above all of b: U_a = 3; for n = m = 3 the counts of
    # U = 0..9 are 1, 1, 2, 3, 3, 3, 3, 2, 1, 1 (of 20), so p = 2 * P(U <= 3) = 2 * 7/20 = 0.7
    assert rank_sum_p([1.0, 2.0, NAN], [3.0, 4.0, 5.0], "min") == pytest.approx(0.7)
    # max: the same NaN becomes -inf, the worst accuracy: a is all below b again, p = 0.1
    assert rank_sum_p([1.0, 2.0, NAN], [3.0, 4.0, 5.0], "max") == pytest.approx(0.1)
    assert rank_sum_p([1.0, 2.0, -INF], [3.0, 4.0, 5.0], "min") == pytest.approx(0.7)  # any non-finite is worst
    assert rank_sum_p([NAN, NAN], [INF, INF], "min") == 1.0  # all tied: no evidence of a difference
    assert math.isnan(rank_sum_p([], [1.0, 2.0], "min"))


def test_holm_textbook_example():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_nan_cap_ties_and_empty():
    # NaN not counted: m = 2, 0.01 * 2 = 0.02, max(0.02, 0.04 * 1) = 0.04
    got = holm([0.01, NAN, 0.04])
    assert got[0] == pytest.approx(0.02) and math.isnan(got[1]) and got[2] == pytest.approx(0.04)
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # 0.5 * 2 = 1.0, capped
    assert holm([0.02, 0.02]) == pytest.approx([0.04, 0.04])  # ties: same adjusted value whichever is first
    assert holm([]) == []
    assert math.isnan(holm([NAN])[0])
    with pytest.raises(ValueError):
        holm([1.5])


@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(st.floats(0.0, 1.0), st.just(NAN)), max_size=12))
def test_holm_is_monotone_and_bounded(ps):
    adj = holm(ps)
    pairs = [(p, a) for p, a in zip(ps, adj) if not math.isnan(p)]
    m = len(pairs)
    for p, a in pairs:
        assert p - 1e-15 <= a <= min(1.0, m * p) + 1e-12
    for (p1, a1), (p2, a2) in itertools.combinations(pairs, 2):
        if p1 < p2:
            assert a1 <= a2
    assert all(math.isnan(a) for p, a in zip(ps, adj) if math.isnan(p))


def _brute_best_of_k(scores, k, direction):
    worst = INF if direction == "min" else -INF
    s = [v if math.isfinite(v) else worst for v in scores]
    best = min if direction == "min" else max
    return statistics.fmean(best(c) for c in itertools.combinations(s, k))


def test_expected_best_of_k_by_hand():
    # pairs of [1, 2, 3]: (1, 2), (1, 3), (2, 3); best for max: 2, 3, 3 -> 8/3; for min: 1, 1, 2 -> 4/3
    assert expected_best_of_k([1.0, 2.0, 3.0], 2, "max") == pytest.approx(8 / 3)
    assert expected_best_of_k([3.0, 1.0, 2.0], 2, "min") == pytest.approx(4 / 3)
    assert expected_best_of_k([1.0, 2.0, 3.0], 1, "max") == pytest.approx(2.0)  # one trial: the mean
    assert expected_best_of_k([1.0, 2.0, 3.0], 3, "max") == 3.0  # every trial: the best
    # a diverged trial is the worst: pairs of [1, -inf, 3] for max: 1, 3, 3 -> 7/3
    assert expected_best_of_k([1.0, NAN, 3.0], 2, "max") == pytest.approx(7 / 3)
    assert expected_best_of_k([1.0, NAN, 3.0], 1, "max") == -INF  # drawing it alone is possible
    assert expected_best_of_k([1.0, INF, 3.0], 2, "min") == pytest.approx(5 / 3)  # pairs: 1, 1, 3
    for bad in (0, 4, 1.5):
        with pytest.raises(ValueError):
            expected_best_of_k([1.0, 2.0, 3.0], bad, "max")


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.one_of(st.floats(-100, 100), st.sampled_from([0.0, 1.0, NAN, INF])), min_size=1, max_size=8),
    st.data(),
    st.sampled_from(["min", "max"]),
)
def test_expected_best_of_k_equals_enumeration_of_subsets(scores, data, direction):
    k = data.draw(st.integers(1, len(scores)))
    want = _brute_best_of_k(scores, k, direction)
    got = expected_best_of_k(scores, k, direction)
    if math.isinf(want):
        assert got == want
    else:
        assert got == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_expected_best_of_k_closed_form_for_ranks():
    # the max of k draws without replacement from {1, ..., N} has mean k (N + 1) / (k + 1)
    n = 2000
    for k in (1, 7, 50, 2000):
        assert expected_best_of_k(np.arange(1, n + 1), k, "max") == pytest.approx(k * (n + 1) / (k + 1), rel=1e-12)
        # by symmetry the min of k draws has mean N + 1 - k (N + 1) / (k + 1) = (N + 1) / (k + 1)
        assert expected_best_of_k(np.arange(1, n + 1), k, "min") == pytest.approx((n + 1) / (k + 1), rel=1e-12)


def test_expected_best_of_k_is_monotone_in_k():
    scores = np.random.default_rng(0).normal(size=30)
    curve = [expected_best_of_k(scores, k, "max") for k in range(1, 31)]
    assert curve[0] == pytest.approx(scores.mean()) and curve[-1] == pytest.approx(scores.max())
    assert np.all(np.diff(curve) >= -1e-12)


def test_bootstrap_ci():
    # resample means of [0, 1] (size 2): 0 w.p. 1/4, 0.5 w.p. 1/2, 1 w.p. 1/4 -> 2.5% and 97.5% points 0 and 1
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    assert bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert bootstrap_ci([7.0]) == (7.0, 7.0)
    # large normal sample: close to mean +- 1.96 s / sqrt(n)
    x = np.random.default_rng(0).normal(10.0, 2.0, size=400)
    lo, hi = bootstrap_ci(x, seed=1)
    half = 1.96 * x.std(ddof=1) / math.sqrt(x.size)
    assert lo == pytest.approx(x.mean() - half, abs=0.2 * half)
    assert hi == pytest.approx(x.mean() + half, abs=0.2 * half)
    assert bootstrap_ci(x, seed=1) == (lo, hi)  # seeded: reproducible
    # any statistic, no axis argument needed
    lo_med, hi_med = bootstrap_ci(x, statistic=lambda v: float(np.median(v)), level=0.5)
    assert lo_med < np.median(x) < hi_med
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_the_reports_interval_of_a_skewed_positive_value_stays_above_zero():
    from optlab.app.study.reduce import seed_stats

    values = [1e-12] * 9 + [5.7e-4]  # one seed far from the others (a newcomer's Rosenbrock study)
    # Student-t's interval, by hand, reaches below zero: mean - t_{0.975, 9} s / sqrt(10) < 0
    mean, s = sum(values) / 10, statistics.stdev(values)
    assert mean - 2.2621571627409915 * s / math.sqrt(10) < 0  # t_{0.975, 9}
    stats = seed_stats(values)
    assert stats["mean"] == pytest.approx(mean) and stats["std"] == pytest.approx(s)
    assert 1e-12 <= stats["low"] <= stats["high"] <= 5.7e-4
    diverged = seed_stats([1.0, math.inf, 2.0])
    assert math.isnan(diverged["low"]) and math.isnan(diverged["high"])  # as the mean: the setting diverged
