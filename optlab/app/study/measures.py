"""The measures a study reports, as pure functions of numbers (no runs, no stores, no plotting).

Definitions follow ``reference/comparison-methods.md``: time-to-target with censoring (a run that
never reaches the target has time ``inf`` and is never dropped), Dolan–Moré performance profiles
and the AlgoPerf score, COCO's runtime ECDF and average runtime, seed statistics (Student-t and
bootstrap intervals, Mann–Whitney U, Holm) and Sivaprasad et al.'s expected best of k trials.

``direction`` is ``"min"`` (lower is better, a loss) or ``"max"`` (higher is better, an accuracy).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

__all__ = [
    "algoperf_score",
    "average_runtime",
    "bootstrap_ci",
    "censored_median",
    "ecdf",
    "ecdf_band",
    "expected_best_of_k",
    "first_reach",
    "holm",
    "ladder",
    "mean_ci",
    "performance_profile",
    "performance_ratios",
    "rank_sum_p",
    "target_ladder",
    "time_to_target",
]

DIRECTIONS = ("min", "max")


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'min' or 'max', got {direction!r}")


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")


def _worst(direction: str) -> float:
    return math.inf if direction == "min" else -math.inf


def _with_worst(values, direction: str) -> np.ndarray:
    """``values`` as floats, every non-finite one (NaN, ±inf: a diverged run) replaced by the worst value."""
    x = np.asarray(values, dtype=float).ravel().copy()
    x[~np.isfinite(x)] = _worst(direction)
    return x


# --- time-to-target ---------------------------------------------------------------------------


def first_reach(values: Sequence[float], level: float, direction: str) -> int | None:
    """Index of the first ``v`` in ``values`` with ``v <= level`` ("min") or ``v >= level`` ("max"); None if none.

    NaN never reaches any level (a diverged evaluation is not a success).
    """
    _check_direction(direction)
    for i, v in enumerate(values):
        # comparisons with NaN are False, which is exactly "not reached"
        if (v <= level) if direction == "min" else (v >= level):
            return i
    return None


def time_to_target(points: Sequence[Mapping[str, float]], level: float, direction: str) -> dict[str, float]:
    """Time of one run to reach ``level``: ``{"step", "examples", "seconds"}`` of its first evaluation point at
    or past the level (``points`` in schedule order, each with ``step``, ``examples``, ``seconds``, ``value``).

    A run that never reaches the level is censored: every time is ``inf`` (never dropped, never NaN).
    """
    i = first_reach([p["value"] for p in points], level, direction)
    if i is None:
        return {"step": math.inf, "examples": math.inf, "seconds": math.inf}
    return {key: points[i][key] for key in ("step", "examples", "seconds")}


def target_ladder(target_value: float, direction: str, factors: Sequence[float] = (10, 3, 1, 0.5)) -> list[float]:
    """Levels around a declared target, loosest first: ``level_f = ideal + f * (target_value - ideal)``.

    ``ideal`` is 0 for "min" (a loss) and 1 for "max" (an accuracy-like metric in [0, 1]): factor 10 is
    ten times as far from the ideal as the target (loose), 0.5 halfway between target and ideal (tight).
    The level of factor 1 is the declared target itself (returned exactly, not recomputed). The levels
    are sorted from loosest to tightest (descending for "min", ascending for "max").

    The rule assumes the ideal is reachable in principle. For a metric whose floor is far from the ideal
    (a noisy loss that plateaus well above 0, a negative-valued objective) tight levels may be unreachable:
    runs that miss them are censored (time ``inf``), not dropped, so they still count against the optimizer.
    """
    return [level for _, level in ladder(target_value, direction, factors)]


def ladder(target_value: float, direction: str, factors: Sequence[float] = (10, 3, 1, 0.5)) -> list[tuple]:
    """:func:`target_ladder`'s levels with their factors, ``(factor, level)``, loosest first. A target at
    the ideal itself (an accuracy of 1, a suboptimality of 0) makes every level the target: each factor
    keeps its own entry, so that factor 1 is always the declared target's."""
    _check_direction(direction)
    ideal = 0.0 if direction == "min" else 1.0
    pairs = [(f, float(target_value) if f == 1 else ideal + f * (target_value - ideal)) for f in factors]
    # looseness is decided by the value, not the factor, so the order holds even for a target past the ideal
    return sorted(pairs, key=lambda pair: pair[1], reverse=direction == "min")


def censored_median(times: Sequence[float]) -> float:
    """Median of times where ``inf`` means missed (NaN is read as a miss too).

    Misses sort last, so the median is ``inf`` as soon as half or more of the runs missed; for an even
    count it is the mean of the two middle values (``inf`` if either is).
    """
    t = np.asarray(times, dtype=float).ravel().copy()
    if t.size == 0:
        raise ValueError("censored_median of no times")
    t[np.isnan(t)] = math.inf
    t.sort()
    n = t.size
    if n % 2:
        return float(t[n // 2])
    lo, hi = t[n // 2 - 1], t[n // 2]
    # written out so that inf + inf stays inf rather than risking inf - inf in an interpolation
    return math.inf if math.isinf(hi) else float((lo + hi) / 2)


# --- performance profiles (Dolan and Moré 2002; AlgoPerf) -------------------------------------


def performance_ratios(costs: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Ratios ``r(p, s) = t(p, s) / min_s' t(p, s')`` from ``costs = {problem: {solver: t}}``.

    Costs are positive; ``inf`` (or NaN, or a solver absent on a problem) is a miss and gives ``r = inf``;
    a problem every solver missed gives ``inf`` for all. Solvers are the union over problems, in order of
    first appearance; the table is ``{problem: {solver: r}}``.
    """
    solvers = list(dict.fromkeys(s for row in costs.values() for s in row))
    table: dict[str, dict[str, float]] = {}
    for problem, row in costs.items():
        t = {}
        for s in solvers:
            c = float(row.get(s, math.inf))
            if math.isnan(c):
                c = math.inf
            if c <= 0:
                raise ValueError(f"cost must be > 0 (ratios of times); got {c!r} for {s!r} on problem {problem!r}")
            t[s] = c
        best = min(t.values(), default=math.inf)
        table[problem] = {s: (c / best if math.isfinite(c) else math.inf) for s, c in t.items()}
    return table


def _ratio_matrix(costs: Mapping[str, Mapping[str, float]]) -> tuple[list[str], np.ndarray]:
    """Solvers and their ratios as an array of shape (solvers, problems)."""
    if not costs:
        raise ValueError("a performance profile needs at least one problem")
    table = performance_ratios(costs)
    solvers = list(dict.fromkeys(s for row in table.values() for s in row))
    return solvers, np.array([[table[p][s] for p in table] for s in solvers], dtype=float).reshape(len(solvers), -1)


def performance_profile(costs: Mapping[str, Mapping[str, float]], taus: Sequence[float]) -> dict[str, np.ndarray]:
    """``rho_s(tau) = |{p : r(p, s) <= tau}| / |P|`` at each ``tau`` of ``taus``, for every solver.

    A miss (``r = inf``) never counts, even at ``tau = inf``: only a solver that solved every problem
    reaches 1.
    """
    solvers, r = _ratio_matrix(costs)
    tau = np.asarray(taus, dtype=float)
    solved = np.isfinite(r)[:, :, None] & (r[:, :, None] <= tau.ravel()[None, None, :])
    rho = solved.mean(axis=1)
    return {s: rho[i].reshape(tau.shape) for i, s in enumerate(solvers)}


def algoperf_score(costs: Mapping[str, Mapping[str, float]], tau_max: float = 4.0) -> dict[str, float]:
    """AlgoPerf's score: ``(1 / (tau_max - 1)) * integral_1^tau_max rho_s(tau) d tau``, exactly.

    ``rho_s`` is a sum of steps ``1[r(p, s) <= tau] / |P|``, each contributing the area ``tau_max - r``
    when ``r <= tau_max``, so the score is ``sum_p max(tau_max - r(p, s), 0) / ((tau_max - 1) |P|)``:
    1 means fastest on every problem, 0 never within ``tau_max`` times the fastest.
    """
    if not tau_max > 1:
        raise ValueError(f"tau_max must be > 1, got {tau_max!r}")
    solvers, r = _ratio_matrix(costs)
    # max(r, 1) only guards rounding: a ratio is >= 1 by construction
    area = np.where(np.isfinite(r) & (r <= tau_max), tau_max - np.maximum(r, 1.0), 0.0)
    score = area.sum(axis=1) / ((tau_max - 1) * r.shape[1])
    return {s: float(score[i]) for i, s in enumerate(solvers)}


# --- runtime ECDF and average runtime (COCO) --------------------------------------------------


def ecdf(runtimes, budgets) -> np.ndarray:
    """``F(b) = |{i : runtime_i <= b}| / n`` at each budget ``b``.

    Misses (``inf``, NaN) stay in ``n`` and are never within a budget, not even ``b = inf``: the curve
    of an optimizer that missed some triples never reaches 1.
    """
    t = np.asarray(runtimes, dtype=float).ravel()
    if t.size == 0:
        raise ValueError("ecdf of no runtimes")
    b = np.asarray(budgets, dtype=float)
    # sorted counts: O((n + m) log n) rather than an n x m comparison table
    counts = np.searchsorted(np.sort(t[np.isfinite(t)]), b.ravel(), side="right")
    return (counts / t.size).reshape(b.shape)


def ecdf_band(
    runtimes, budgets, level: float = 0.95, n_boot: int = 1000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap band of :func:`ecdf`: resample the ``n`` runtimes with replacement ``n_boot``
    times and take the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled curves at
    each budget. Returns ``(lower, upper)``.
    """
    _check_level(level)
    t = np.asarray(runtimes, dtype=float).ravel()
    if t.size == 0:
        raise ValueError("ecdf_band of no runtimes")
    b = np.asarray(budgets, dtype=float)
    n = t.size
    finite = np.sort(t[np.isfinite(t)])
    # the k smallest runtimes are the ones within budget b; misses sort last and are never within, not even b = inf
    k = np.searchsorted(finite, b.ravel(), side="right")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_boot, n))
    # how often each sorted runtime (finite ones first) was drawn, then the running count over them
    counts = np.bincount((draws + n * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * n).reshape(n_boot, n)
    cum = np.concatenate([np.zeros((n_boot, 1), dtype=np.int64), np.cumsum(counts, axis=1)], axis=1)
    curves = cum[:, k] / n
    alpha = (1 - level) / 2
    lower, upper = np.quantile(curves, [alpha, 1 - alpha], axis=0)
    return lower.reshape(b.shape), upper.reshape(b.shape)


def average_runtime(spent: Sequence[float], solved: Sequence[bool]) -> float:
    """COCO's aRT: evaluations spent by all runs (successful or not) divided by the number of successes.

    ``spent[i]`` is what run ``i`` used: its time-to-target if it succeeded, its whole budget if not.
    ``inf`` when no run succeeded.
    """
    if len(spent) != len(solved):
        raise ValueError(f"spent and solved differ in length: {len(spent)} != {len(solved)}")
    successes = sum(bool(s) for s in solved)
    if successes == 0:
        return math.inf
    return float(math.fsum(float(x) for x in spent) / successes)


# --- seed statistics --------------------------------------------------------------------------


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean, sample standard deviation (ddof 1) and Student-t interval ``mean ± t_{(1+level)/2, n-1} s / sqrt(n)``.

    Returns ``{"mean", "std", "low", "high", "n"}``. With ``n = 1`` the std and the interval are NaN
    (no spread to estimate); with ``n = 0`` everything is NaN. Non-finite values (a diverged seed) are
    kept, not filtered: an ``inf`` makes the mean ``inf`` and the std and interval NaN, a NaN makes
    everything NaN — the summary says the setting diverged instead of hiding the seed.
    """
    _check_level(level)
    x = np.asarray(values, dtype=float).ravel()
    n = int(x.size)
    nan = math.nan
    if n == 0:
        return {"mean": nan, "std": nan, "low": nan, "high": nan, "n": 0}
    with np.errstate(invalid="ignore", over="ignore"):
        mean = float(np.mean(x))
        if n == 1:
            return {"mean": mean, "std": nan, "low": nan, "high": nan, "n": 1}
        from scipy import stats  # imported here: scipy.stats costs about a second, only two measures need it

        if math.isfinite(x[0]) and np.all(x == x[0]):  # (their float mean and spread are a rounding off: 1.4e-16)
            mean, std = float(x[0]), 0.0
        else:
            std = float(np.std(x, ddof=1))
        half = float(stats.t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
        return {"mean": mean, "std": std, "low": mean - half, "high": mean + half, "n": n}


def rank_sum_p(a: Sequence[float], b: Sequence[float], direction: str) -> float:
    """Two-sided Mann–Whitney U p-value of ``a`` against ``b`` (``scipy.stats.mannwhitneyu``, scipy's choice
    of exact or asymptotic method).

    Non-finite values (a diverged seed, NaN or ±inf) are replaced by the worst value of the metric
    (``+inf`` for "min", ``-inf`` for "max") so they rank last instead of being dropped. NaN if either
    sample is empty; 1.0 when all values are tied.
    """
    _check_direction(direction)
    x, y = _with_worst(a, direction), _with_worst(b, direction)
    if x.size == 0 or y.size == 0:
        return math.nan
    from scipy import stats

    return float(stats.mannwhitneyu(x, y, alternative="two-sided").pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in input order.

    With the ``m`` non-NaN p-values sorted ``p_(1) <= ... <= p_(m)``:
    ``p~_(i) = min(1, max_{j <= i} (m - j + 1) p_(j))``. NaN stays NaN and is not counted in ``m``.
    """
    p = np.asarray(pvalues, dtype=float).ravel()
    valid = ~np.isnan(p)
    if np.any((p[valid] < 0) | (p[valid] > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {list(pvalues)!r}")
    out = np.full(p.shape, math.nan)
    idx = np.flatnonzero(valid)
    m = idx.size
    order = idx[np.argsort(p[idx], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return [float(v) for v in out]


def expected_best_of_k(scores: Sequence[float], k: int, direction: str) -> float:
    """Expected best score of ``k`` trials drawn without replacement from the ``N`` trial ``scores``
    (Sivaprasad et al. 2020's tunability at budget ``k``), exactly from order statistics.

    With the scores sorted best first, ``s_(1), ..., s_(N)``, the best of the ``k`` drawn is ``s_(i)`` when
    ``s_(i)`` is drawn and the other ``k - 1`` come from the ``N - i`` worse ones:
    ``E = sum_i C(N - i, k - 1) / C(N, k) * s_(i)``. Non-finite scores are the worst (``+inf`` for "min",
    ``-inf`` for "max"); they weigh in only when ``k`` is small enough to draw nothing else, and then
    the expectation is honestly infinite. ``1 <= k <= N``.
    """
    _check_direction(direction)
    s = _with_worst(scores, direction)
    n = s.size
    if isinstance(k, bool) or int(k) != k:
        raise ValueError(f"k must be an integer, got {k!r}")
    k = int(k)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of trials {n}, got {k}")
    s = np.sort(s) if direction == "min" else np.sort(s)[::-1]
    total = math.comb(n, k)
    # only ranks i <= N - k + 1 can be the best of k draws; skipping the zero weights avoids 0 * inf
    weights = [math.comb(n - i, k - 1) / total for i in range(1, n - k + 2)]  # exact integers, one rounding
    return float(sum(w * float(v) for w, v in zip(weights, s)))


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], float] = np.mean,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic``: its ``(1 - level) / 2`` and ``(1 + level) / 2``
    quantiles over ``n_boot`` resamples of ``values`` with replacement (same size as ``values``).

    Non-finite values are kept, as in :func:`mean_ci`: the bounds then become inf or NaN.
    """
    _check_level(level)
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError("bootstrap_ci of no values")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, x.size, size=(n_boot, x.size))
    # one call per resample: ``statistic`` need not accept an ``axis`` argument
    with np.errstate(invalid="ignore", over="ignore"):
        boot = np.array([float(statistic(x[row])) for row in draws])
        alpha = (1 - level) / 2
        lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return float(lo), float(hi)
