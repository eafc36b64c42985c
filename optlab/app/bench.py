"""How much MLflow tracking costs (the same runs with tracking on and off), and what a parallel
sweep gains (the same sweep one job after another and with joblib's workers).

    python -m optlab.app.bench                          # mlp_digits, 230 epochs of 45 steps (10,350 steps)
    python -m optlab.app.bench problem=seed_linear trainer.epochs=10000
    python -m optlab.app.bench --no-shell               # without the tiny runs from the shell
    python -m optlab.app.bench --sweep                  # 4 jobs, sequential against 2 joblib workers

Tracking, three figures from one run, tracked and untracked runs alternating (``--repeats``
of each), into a temporary store (created by a warm-up run, as is every import); each tracked
run is compared with the untracked one just before it (the same load on a shared machine),
and the median of those comparisons is printed:

- the **ratio**: ``Trainer.fit`` tracked (the hooks that queue the points, the writer thread
  storing them meanwhile) over ``Trainer.fit`` untracked, and the same for the whole run
  (building the tracker, opening the MLflow run, the training, its end: the last metrics, the
  plots, the status); the tracker is built as ``python -m optlab`` builds it (tags, params,
  datasets, the default points);
- the **fixed cost** per run: the same run of one epoch, tracked less untracked (opening the
  run, its params, the final flush, the plots, the status), with how long opening and ending
  took, and drawing the plots (matplotlib's share of the end); and the same without the plots
  (``tracking.plots=false``) and recorded in the background (``tracking.detach=true``: the
  checks before training, writing the record and starting its process);
- a **tiny run from the shell**: ``python -m optlab problem=rosenbrock trainer.epochs=10``
  tracked and with ``tracking=none``, whole processes (imports included), and MLflow's own
  opening in a new process (importing it, its sqlite store, one query): the least a run adds
  that opens its store before training; and with ``tracking.detach=true`` (the run recorded by
  a process of its own, :mod:`.recording`), with how long after the command's start the run
  was in the store. Each detached run's recording is waited for before the next command.

``--sweep``: times ``python -m optlab -m`` (untracked) as a whole, the basic launcher against
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


def timed_run(conf) -> dict:
    """One run as ``python -m optlab`` makes it, without Hydra: seconds (building the tracker and the
    trainer, opening the MLflow run, training, its end), of which ``start`` (up to training) and
    ``close``; the steps; the points logged."""
    from .run import build, fit, make_trainer, tracker_for

    conf = dict(conf)
    problem, optimizer, cbs = build(conf)
    begin = time.perf_counter()
    tracker = tracker_for(conf, problem, optimizer, {})  # its tags: git's commit, the plugins' versions
    trainer = make_trainer(conf, problem, optimizer, cbs, [tracker] if tracker is not None else [])
    if tracker is not None:
        tracker.start(problem)
    started = time.perf_counter()
    fit(trainer)
    trained = time.perf_counter()
    if tracker is not None:
        tracker.close("FINISHED")
        handed_over = tracker.record is None or tracker.background is not None
        if tracker.status != "FINISHED" or not handed_over or (tracker.record is None and tracker.kept_count):
            message = tracker.undelivered_message()
            raise SystemExit(f"python -m optlab.app.bench: the tracked run was not stored whole: {message}")
    end = time.perf_counter()
    if tracker is not None and tracker.record is not None:
        recorded(tracker.uri)  # (not timed: its process must not slow the next run)
    return {
        "seconds": end - begin,
        "train": trained - started,
        "start": started - begin,
        "close": end - trained,
        "steps": trainer.step,
        "points": tracker.metrics_logged if tracker is not None else 0,
        "plots": tracker.plot_seconds if tracker is not None else 0.0,
    }


def recorded(uri: str) -> None:
    """Wait until the runs recorded in the background in ``uri`` are in it; SystemExit if one failed."""
    from .recording import failure_lines, settle

    busy, failed = settle(uri)
    if busy or failed:
        lines = failure_lines(failed, uri) or [f"{len(busy)} runs still being recorded"]
        raise SystemExit("python -m optlab.app.bench: " + "\n".join(lines))


def bench_tracking(overrides, repeats: int, store: str) -> dict:
    """Median seconds of the run untracked and tracked into ``store`` (alternating), and of the same
    run of one epoch: the ratio and the fixed cost per run (see the module's docstring)."""
    uri = f"sqlite:///{os.path.join(store, 'bench.db')}"
    track = ["tracking=mlflow", f"tracking.uri={uri}", "tracking.experiment=bench"]
    off, on = compose([*overrides, "tracking=none"]), compose([*overrides, *track])
    short = [*overrides, "trainer.epochs=1"]
    short_off, short_on = compose([*short, "tracking=none"]), compose([*short, *track])
    short_bare = compose([*short, *track, "tracking.plots=false"])
    short_detached = compose([*short, *track, "tracking.detach=true"])
    confs = {
        "off": off,
        "on": on,
        "short_off": short_off,
        "short_on": short_on,
        "short_bare": short_bare,
        "short_detached": short_detached,
    }
    for conf in confs.values():  # warm-up: kernels, data, imports, the store
        timed_run(conf)
    runs: dict[str, list[dict]] = {name: [] for name in confs}
    for _ in range(repeats):
        for name, conf in confs.items():
            runs[name].append(timed_run(conf))

    def median(name, key="seconds"):
        return statistics.median(r[key] for r in runs[name])

    def paired(on, off, compare, key="seconds"):  # each tracked run against the untracked one just before it
        return statistics.median(compare(a[key], b[key]) for a, b in zip(runs[on], runs[off]))

    return {
        "off": median("off", "train"),
        "on": median("on", "train"),
        "ratio": paired("on", "off", lambda a, b: a / b, "train"),
        "whole_ratio": paired("on", "off", lambda a, b: a / b),
        "fixed": paired("short_on", "short_off", lambda a, b: a - b),
        "fixed_bare": paired("short_bare", "short_off", lambda a, b: a - b),
        "fixed_detached": paired("short_detached", "short_off", lambda a, b: a - b),
        "steps": runs["on"][0]["steps"],
        "points": runs["on"][0]["points"],
        "fixed_start": median("short_on", "start"),
        "fixed_close": median("short_on", "close"),
        "fixed_plots": median("short_on", "plots"),
        "fixed_points": runs["short_on"][0]["points"],
    }


#: the tiny run the shell section times, tracked and with tracking=none
SHELL = ["problem=rosenbrock", "trainer.epochs=10"]


def timed_command(arguments, cwd) -> float:
    """Seconds of ``python -m optlab ARGUMENTS`` in ``cwd``, a whole process."""
    import subprocess

    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "optlab", *arguments], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"python -m optlab.app.bench: {' '.join(arguments)} failed: {done.stderr.strip()[-500:]}")
    return seconds


def bench_shell(repeats: int, store: str) -> dict:
    """Median seconds of :data:`SHELL` from the shell, tracked (into ``store``'s mlflow.db) and untracked."""
    tracked, untracked = [*SHELL, "trainer.progress_bar=false"], [*SHELL, "trainer.progress_bar=false", "tracking=none"]
    detached = [*tracked, "tracking.detach=true"]
    uri = f"sqlite:///{os.path.join(store, 'mlflow.db')}"
    timed_command(tracked, store)  # warm-up: the store, numba's cache
    timed_command(untracked, store)
    on, off, opening, apart, landed = [], [], [], [], []
    for _ in range(repeats):
        off.append(timed_command(untracked, store))
        on.append(timed_command(tracked, store))
        start = time.perf_counter()
        apart.append(timed_command(detached, store))
        recorded(uri)  # (the next command must not share the cores with its recording)
        landed.append(time.perf_counter() - start)
        opening.append(mlflow_opening(store))
    added = statistics.median(a - b for a, b in zip(on, off))
    return {
        "on": statistics.median(on),
        "off": statistics.median(off),
        "added": added,
        "mlflow": min(opening),
        "detached": statistics.median(apart),
        "landed": statistics.median(landed),
    }


#: what any run that writes to MLflow's default store pays before its first write, in a new process
MLFLOW_OPENING = """
import sys, time
start = time.perf_counter()
from mlflow.tracking import MlflowClient
MlflowClient(sys.argv[1]).search_experiments(max_results=1)
print(time.perf_counter() - start)
"""


def mlflow_opening(store: str) -> float:
    """Seconds a new process takes to import MLflow, open the sqlite store in ``store`` and answer one
    query (MLflow's own work, none of optlab's): the least a run adds that opens its store before training."""
    import subprocess

    uri = f"sqlite:///{os.path.join(store, 'mlflow.db')}"
    done = subprocess.run([sys.executable, "-c", MLFLOW_OPENING, uri], capture_output=True, text=True, cwd=store)
    if done.returncode:
        raise SystemExit(f"python -m optlab.app.bench: opening MLflow alone failed: {done.stderr.strip()[-500:]}")
    return float(done.stdout.strip().splitlines()[-1])


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
    parser.add_argument("--no-shell", action="store_true", help="leave out the tiny runs from the shell")
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
        result = bench_tracking(overrides, args.repeats, tmp)
        shell = None if args.no_shell else bench_shell(args.repeats, tmp)
    off, on = result["off"], result["on"]
    print(f"run: {' '.join(overrides)} ({result['steps']} steps, {result['points']} points logged when tracked)")
    print(
        f"training: tracking off {off:.3f} s   tracking on {on:.3f} s   ratio {result['ratio']:.3f}   "
        f"(the whole run, with its opening and end: ratio {result['whole_ratio']:.3f})"
    )
    print(
        f"fixed cost per run (the same run of 1 epoch, tracked less untracked, {result['fixed_points']} points): "
        f"{result['fixed']:.3f} s   (opening the run {result['fixed_start']:.3f} s, "
        f"its end {result['fixed_close']:.3f} s, of which drawing the plots {result['fixed_plots']:.3f} s); "
        f"with tracking.plots=false {result['fixed_bare']:.3f} s; with tracking.detach=true "
        f"{result['fixed_detached']:.3f} s (the run recorded by a process of its own)"
    )
    if shell is not None:
        print(
            f"from the shell, python -m optlab {' '.join(SHELL)}: tracked {shell['on']:.2f} s   "
            f"tracking=none {shell['off']:.2f} s   ratio {shell['on'] / shell['off']:.2f}   (+{shell['added']:.2f} s)"
        )
        print(
            f"  MLflow alone in a new process (import, the sqlite store, one query): {shell['mlflow']:.2f} s; "
            f"with the untracked run {shell['off'] + shell['mlflow']:.2f} s, "
            f"ratio {(shell['off'] + shell['mlflow']) / shell['off']:.2f}: "
            "the least for a run that opens its store first"
        )
        print(
            f"  with tracking.detach=true: {shell['detached']:.2f} s, ratio {shell['detached'] / shell['off']:.2f} to "
            f"tracking=none (the run in the store {shell['landed']:.2f} s after the command started)"
        )
    return 0


if __name__ == "__main__":
    from ..commands import command

    sys.exit(command(main))
