"""How much MLflow logging costs (the same run with tracking on and off), and what a parallel
sweep gains (the same sweep one job after another and with joblib's workers).

    python -m optlab.app.bench                          # mlp_digits, 230 epochs of 45 steps (10,350 steps)
    python -m optlab.app.bench problem=seed_linear trainer.epochs=10000
    python -m optlab.app.bench --sweep                  # 4 jobs, sequential against 2 joblib workers

Tracking: times ``Trainer.fit`` plus the final flush of every metric (the run's own wall time),
median of ``--repeats`` runs each, into a temporary store; prints the ratio. ``--sweep``: times
``python -m optlab -m`` (untracked) as a whole, the basic launcher against
``hydra/launcher=joblib`` with ``--workers`` workers (each on its share of the cores); prints
the speed-up, whose ideal is the number of workers the cores can hold.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time


def compose(overrides):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from .config import register_configs

    register_configs()
    with initialize_config_module(config_module="optlab.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def timed_run(conf) -> tuple[float, int]:
    from .run import build, fit, make_trainer
    from .tracking import MlflowTracker

    problem, optimizer, cbs = build(conf)
    tracker = None
    extra = []
    if conf["tracking"]["enabled"]:
        from .run import log_interval

        every = log_interval(conf["tracking"], problem, conf["trainer"])
        tracker = MlflowTracker(conf["tracking"]["uri"], "bench", conf, {}, "bench", every)
        extra.append(tracker)
    trainer = make_trainer(conf, problem, optimizer, cbs, extra)
    if tracker is not None:
        tracker.start()
    start = time.perf_counter()
    fit(trainer)
    if tracker is not None:
        tracker.close("FINISHED")
    return time.perf_counter() - start, trainer.step


#: the sweep ``--sweep`` times by default: 4 jobs of a few seconds, whose kernels are large enough to run parallel
SWEEP = ["optimizer=sgd,adam,rmsprop,lion", "problem=quadratic", "problem.dim=4000000", "trainer.epochs=40"]


def timed_sweep(overrides, workers: int | None, cwd) -> float:
    """Seconds of ``python -m optlab -m OVERRIDES`` untracked: the basic launcher, or joblib with ``workers``."""
    import subprocess

    launcher = [] if workers is None else ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={workers}"]
    command = [
        sys.executable,
        "-m",
        "optlab",
        "-m",
        *overrides,
        *launcher,
        "tracking=none",
        "trainer.progress_bar=false",
    ]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"python -m optlab.app.bench: the sweep failed: {done.stderr.strip().splitlines()[-1:]}")
    return seconds


def bench_sweep(overrides, workers: int, repeats: int) -> dict:
    """Median seconds of the sweep sequential and with ``workers`` joblib workers (alternating)."""
    with tempfile.TemporaryDirectory() as tmp:
        timed_sweep(overrides, None, tmp)  # warm-up: numba's cache, the data
        sequential, parallel = [], []
        for _ in range(repeats):
            sequential.append(timed_sweep(overrides, None, tmp))
            parallel.append(timed_sweep(overrides, workers, tmp))
    return {"sequential": statistics.median(sequential), "parallel": statistics.median(parallel), "workers": workers}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optlab.app.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the run (of the sweep, with --sweep)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sweep", action="store_true", help="time a sweep sequential against joblib's workers")
    parser.add_argument("--workers", type=int, default=2, help="joblib's workers for --sweep (default 2)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.workers < 1:
        parser.error("--repeats and --workers must be >= 1")
    if args.sweep:
        from .cores import usable_cores

        result = bench_sweep(args.overrides or SWEEP, args.workers, args.repeats)
        ideal = min(args.workers, usable_cores())
        print(f"sweep: {' '.join(args.overrides or SWEEP)} (untracked), {usable_cores()} usable cores")
        print(
            f"sequential: {result['sequential']:.2f} s   {args.workers} joblib workers: {result['parallel']:.2f} s   "
            f"speed-up {result['sequential'] / result['parallel']:.2f} (ideal {ideal})"
        )
        return 0
    overrides = args.overrides or ["problem=mlp_digits", "trainer.epochs=230", "trainer.batch_size=32"]
    overrides = [*overrides, "trainer.progress_bar=false"]
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{os.path.join(tmp, 'bench.db')}"
        off = compose([*overrides, "tracking=none"])
        on = compose([*overrides, "tracking=mlflow", f"tracking.uri={uri}"])
        timed_run(off)  # warm-up: compile kernels, load data
        timed_run(on)  # and create the store
        times_off, times_on = [], []
        for _ in range(args.repeats):
            seconds, steps = timed_run(off)
            times_off.append(seconds)
            seconds, steps = timed_run(on)
            times_on.append(seconds)
    t_off, t_on = statistics.median(times_off), statistics.median(times_on)
    print(f"run: {' '.join(overrides)} ({steps} steps)")
    tracking = " ".join(o for o in overrides if "tracking" in o) or "default tracking settings"
    print(f"tracking off: {t_off:.3f} s   tracking on ({tracking}): {t_on:.3f} s")
    print(f"ratio: {t_on / t_off:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
