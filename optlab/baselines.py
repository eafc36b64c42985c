"""Baselines: SGD and Adam on a problem, at their default and at a tuned learning rate, over seeds.

    python -m optlab.baselines cnn_digits                 # one problem, printed
    python -m optlab.baselines --all --jobs 2 --out docs/baselines.json

For each optimizer the learning rate is tuned on a log grid (half decades) by the final value
of the problem's metric at its default budget, on a tuning seed kept apart from the evaluation
seeds; then the default and the tuned rate each run on every evaluation seed, and the final
and best values of the metric are reported as mean ± standard deviation, with how many seeds
reached the problem's target and the median steps they took. A *suggested target* is the level
that every seed of the better tuned optimizer reached (its worst seed's best value, rounded
to two significant figures towards the easier side): how the built-in problems' targets were
chosen, and how a plugin author can choose theirs. ``docs/problems.md`` shows the figures of
the built-in problems from ``docs/baselines.json``.

Training layer only: no Hydra, no MLflow.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np

#: the optimizers a baseline runs by default (``--optimizers`` adds others)
OPTIMIZERS = ("sgd", "adam")
#: the learning-rate grid of the tuning (half decades)
GRID = tuple(round(m * 10.0**e, 12) for e in range(-5, 2) for m in (1.0, 3.0))
SEEDS = (0, 1, 2, 3, 4)
TUNING_SEED = 1000
#: the metric a problem without a declared target is measured by: the first it logs
FALLBACK_METRICS = ("val_accuracy", "val_loss", "suboptimality", "loss")


def metric_of(problem) -> tuple[str, str]:
    """The metric a baseline measures and its direction: the target's, else the first of
    ``FALLBACK_METRICS`` the problem logs."""
    if problem.target is not None:
        return problem.target.metric, problem.target.direction
    logged = problem.metrics()
    metric = next(m for m in FALLBACK_METRICS if m in logged)
    return metric, logged[metric]


def one_run(problem_conf: dict, optimizer: str, learning_rate: float, seed: int) -> dict:
    """Train once at the problem's budget: the metric's final and best values, steps to target, seconds."""
    from . import optimizers, problems
    from .trainer import Trainer

    problem = problems.get(dict(problem_conf))
    metric, way = metric_of(problem)
    trainer = Trainer(
        problem,
        optimizers.get({"name": optimizer, "learning_rate": learning_rate}),
        epochs="auto",
        batch_size="auto",
        seed=seed,
    )
    start = time.perf_counter()
    with np.errstate(all="ignore"), warnings.catch_warnings():  # a diverging rate is part of a grid
        warnings.simplefilter("ignore", RuntimeWarning)
        history = trainer.fit().history
    seconds = time.perf_counter() - start
    values = [v for v in history.get(metric, []) if math.isfinite(v)]
    final = history[metric][-1] if history.get(metric) else math.nan
    best = (min if way == "min" else max)(values) if values else math.nan
    reached = trainer.target_reached
    return {
        "final": final,
        "best": best,
        "steps_to_target": None if reached is None else reached["step"],
        "seconds": seconds,
        "steps": trainer.step,
    }


def _score(value: float, way: str) -> float:
    """Smaller is better, NaN worst."""
    if not math.isfinite(value):
        return math.inf
    return value if way == "min" else -value


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < len(values):
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def suggested_target(values: list[float], way: str) -> float:
    """The worst of ``values`` (each seed's best), rounded to 2 significant figures towards the easier side."""
    worst = max(values) if way == "min" else min(values)
    if worst == 0 or not math.isfinite(worst):
        return worst
    scale = 10.0 ** (math.floor(math.log10(abs(worst))) - 1)
    rounded = (math.ceil if way == "min" else math.floor)(worst / scale) * scale
    return float(f"{rounded:.2g}")


def baseline(name: str, pool, seeds=None, grid=None, optimizers=None) -> dict:
    """Tune, then run every seed at the default and the tuned rate; the figures as plain data.
    ``pool`` maps the runs (an executor, or anything with ``map(fn, *iterables)``)."""
    from . import optimizers as registry
    from . import problems

    seeds, grid, names = seeds or SEEDS, grid or GRID, optimizers or OPTIMIZERS
    defaults = {opt: registry.registry.get(opt).learning_rate.default for opt in names}  # Keras's defaults

    problem = problems.get(name)
    metric, way = metric_of(problem)
    conf = {"name": name}
    tuning = {}
    for opt in names:
        runs = pool.map(one_run, *zip(*[(conf, opt, lr, TUNING_SEED) for lr in grid]))
        tuning[opt] = dict(zip(grid, runs))
    rows = []
    for opt, default_lr in defaults.items():
        tuned_lr = min(grid, key=lambda lr, opt=opt: _score(tuning[opt][lr]["final"], way))
        for label, lr in (("default", default_lr), ("tuned", tuned_lr)):
            runs = list(pool.map(one_run, *zip(*[(conf, opt, lr, seed) for seed in seeds])))
            final, best = _mean_std([r["final"] for r in runs]), _mean_std([r["best"] for r in runs])
            steps = [r["steps_to_target"] for r in runs if r["steps_to_target"] is not None]
            rows.append(
                {
                    "optimizer": opt,
                    "which": label,
                    "learning_rate": lr,
                    "final_mean": final[0],
                    "final_std": final[1],
                    "best_mean": best[0],
                    "best_std": best[1],
                    "bests": [r["best"] for r in runs],
                    "reached": len(steps),
                    "median_steps_to_target": statistics.median(steps) if steps else None,
                    "seconds": statistics.median(r["seconds"] for r in runs),
                    "steps": runs[0]["steps"],
                }
            )
    tuned = [r for r in rows if r["which"] == "tuned"]
    leader = min(tuned, key=lambda r: _score(r["final_mean"], way))
    return {
        "command": "",
        "metric": metric,
        "direction": way,
        "target": None if problem.target is None else str(problem.target),
        "budget": problem.metadata()["budget"],
        "size_class": problem.size_class,
        "grid": list(grid),
        "tuning_seed": TUNING_SEED,
        "seeds": list(seeds),
        "tuning": {opt: {str(lr): r["final"] for lr, r in runs.items()} for opt, runs in tuning.items()},
        "rows": rows,
        "suggested_target": {
            "optimizer": leader["optimizer"],
            "learning_rate": leader["learning_rate"],
            "text": f"{metric} {'<=' if way == 'min' else '>='} {suggested_target(leader['bests'], way):g}",
        },
    }


def format_baseline(name: str, data: dict) -> str:
    lines = [
        f"{name}: {data['metric']} ({data['direction']}imized), budget {data['budget']}, target {data['target']}",
        f"  {'optimizer':<9} {'lr':>8}  {'final (mean ± std)':>22}  {'best (mean ± std)':>22}  reached  steps  s/run",
    ]
    for r in data["rows"]:
        lr = f"{r['learning_rate']:g}" + ("*" if r["which"] == "tuned" else "")
        final = f"{r['final_mean']:.4g} ± {r['final_std']:.2g}"
        best = f"{r['best_mean']:.4g} ± {r['best_std']:.2g}"
        steps = "-" if r["median_steps_to_target"] is None else f"{r['median_steps_to_target']:g}"
        lines.append(
            f"  {r['optimizer']:<9} {lr:>8}  {final:>22}  {best:>22}  {r['reached']}/{len(data['seeds'])}"
            f"      {steps:>5}  {r['seconds']:.2f}"
        )
    s = data["suggested_target"]
    lines.append(f"  suggested target: {s['text']} (every seed of {s['optimizer']} at lr={s['learning_rate']:g})")
    return "\n".join(lines)


#: n workers on n cores: one thread each, for numba and for numpy's BLAS
ONE_THREAD = ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _one_thread() -> None:
    """A worker's start: one thread for numba (read when the worker first imports it, which it has
    not yet) and for numpy's BLAS (limited now: numpy is already imported)."""
    os.environ.update(dict.fromkeys(ONE_THREAD, "1"))
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


@contextlib.contextmanager
def _pool(jobs: int):
    """Worker processes started afresh (spawn) with one thread each: a forked worker keeps the
    parent's BLAS thread pool, and 2 workers x 2 threads on 2 cores ran 4-10x slower. Only the
    workers' environment changes: numba reads ``NUMBA_NUM_THREADS`` again whenever it compiles,
    and refuses a value other than the one its threads started with, so the parent's must stay."""
    import multiprocessing

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread) as pool:
        yield pool


def main(argv=None) -> int:
    from . import problems

    parser = argparse.ArgumentParser(prog="python -m optlab.baselines", description=__doc__.split("\n\n")[0])
    parser.add_argument("problems", nargs="*", help="problem names (default: --all)")
    parser.add_argument("--all", action="store_true", help="every registered problem")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (one numba thread each)")
    parser.add_argument(
        "--optimizers", default=",".join(OPTIMIZERS), help="comma-separated optimizers (default: sgd,adam)"
    )
    parser.add_argument("--out", help="a JSON file to update with the results (others' entries are kept)")
    args = parser.parse_args(argv)
    names = args.problems or (problems.registry.names() if args.all else None)
    if not names:
        parser.error("name a problem or pass --all")
    unknown = [n for n in names if n not in problems.registry]
    if unknown:
        parser.error(f"unknown problem {unknown[0]!r}; known: {', '.join(problems.registry.names())}")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    from . import optimizers

    try:
        chosen = [optimizers.registry.canonical(n.strip()) for n in args.optimizers.split(",") if n.strip()]
    except ValueError as error:
        parser.error(str(error))
    command = "python -m optlab.baselines " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {}
    with _pool(args.jobs) as pool:
        for name in names:
            results[name] = baseline(name, pool, optimizers=chosen)
            results[name]["command"] = command
            print(format_baseline(name, results[name]), flush=True)
    if args.out:
        from .files import write_text_atomic

        try:
            with open(args.out) as f:
                stored = json.load(f)
        except FileNotFoundError:
            stored = {"problems": {}}
        stored["problems"].update(results)
        write_text_atomic(args.out, json.dumps(stored, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    from optlab.commands import command

    raise SystemExit(command(main))
