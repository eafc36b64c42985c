"""One run of a study, in this process: train, evaluate on a geometric schedule off the clock, keep the record.

A run is timed the way AlgoPerf and benchopt time one: only the optimizer's steps count (the
gradient and the update, from ``on_train_batch_begin`` to ``on_train_batch_end``); evaluations
and numba's compilation do not. Before the first run of an optimizer on a problem in a process,
a warm-up of two steps and one evaluation loads (or compiles) every kernel the run will use;
its seconds are kept apart (``warmup_seconds``).

The metric is evaluated after steps 1, 2, 3, 4, 6, 8, 11, 16, 23, 32, ... (powers of sqrt 2,
rounded) and after every epoch, so that time-to-target is not rounded up to an epoch: on a
problem with few long epochs the epoch ends alone would say little. A run whose metric turns
non-finite stops there (diverged); its remaining evaluations are missing, its final value NaN.
"""

from __future__ import annotations

import json
import math
import time
import warnings

import numpy as np

from ...callbacks.base import Callback

#: (optimizer, problem, dtype) already warmed up in this process
_WARM: set = set()
#: the problems built in this process, by config: a problem is fixed by its config (its data,
#: spectrum, instance), so the runs of a job share one instead of loading or generating it again
#: (30-90 ms a run for mlp_digits' data or noisy_quadratic's rotation); the trainer's seed decides the rest
_PROBLEMS: dict = {}
_ENVIRONMENT: dict = {}
_KEEP_PROBLEMS = 4


def geometric_steps(total: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 11, 16, 23, 32, ... up to ``total`` (powers of sqrt 2, rounded), and ``total``."""
    steps, k = set(), 0
    while True:
        step = round(2 ** (k / 2))
        if step > total:
            break
        steps.add(step)
        k += 1
    if total > 0:
        steps.add(total)
    return sorted(steps)


class Probe(Callback):
    """Times the steps and evaluates the metric at the schedule's steps (off the clock)."""

    def __init__(self, metric: str):
        super().__init__()
        self.metric = metric
        self.schedule: set[int] = set()
        self.points: list[list[float]] = []
        self.seconds = 0.0
        self.probe_seconds = 0.0  # the evaluations between epochs (the trainer evaluates at epoch ends anyway)
        self.diverged = False
        self._t = 0.0

    def _examples(self, step: int) -> float:
        trainer = self.trainer
        n = trainer.problem.num_examples
        if n is None:
            return float(step)  # a full-batch function: one gradient per step
        per_epoch = trainer.steps_per_epoch
        if trainer.batch_size is None or trainer.batch_size >= n:
            return float(step * n)
        epochs, rest = divmod(step, per_epoch)
        return float(epochs * n + rest * trainer.batch_size)

    def _record(self, step: int, value) -> None:
        value = float(value) if value is not None else math.nan
        if self.points and self.points[-1][0] == step:
            return
        self.points.append([step, self._examples(step), self.seconds, value])
        if not math.isfinite(value):
            self.diverged = True
            self.trainer.stop_training = True

    def on_train_batch_begin(self, batch, logs=None):
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds += time.perf_counter() - self._t
        trainer = self.trainer
        step = trainer.step
        if step in self.schedule and batch + 1 < trainer.steps_per_epoch:  # an epoch's end is evaluated anyway
            start = time.perf_counter()
            self._record(step, trainer.problem.metric(trainer.params, self.metric))
            self.probe_seconds += time.perf_counter() - start
        elif not math.isfinite(logs.get("loss", 0.0)):
            self._record(step, math.nan)

    def on_epoch_end(self, epoch, logs=None):
        self._record(self.trainer.step, logs.get(self.metric))


class _StopAfter(Callback):
    def __init__(self, steps: int):
        super().__init__()
        self.steps = steps

    def on_train_batch_end(self, batch, logs=None):
        if self.trainer.step >= self.steps:
            self.trainer.stop_training = True


def problem_of(config: dict):
    """The problem of ``config``, built once per process (the last few kept)."""
    from ... import problems

    key = json.dumps(config, sort_keys=True, default=str)
    problem = _PROBLEMS.pop(key, None)
    if problem is None:
        problem = problems.get(dict(config))
        while len(_PROBLEMS) >= _KEEP_PROBLEMS:
            _PROBLEMS.pop(next(iter(_PROBLEMS)))
    _PROBLEMS[key] = problem  # most recently used last
    return problem


def _trainer(run: dict, callbacks, epochs="auto"):
    from ... import optimizers
    from ...trainer import Trainer

    return Trainer(
        problem_of(run["problem_config"]),
        optimizers.get({"name": run["optimizer"], **run["hparams"]}),
        callbacks=callbacks,
        epochs=epochs,
        batch_size="auto",
        seed=run["seed"],
        dtype=run["dtype"],
        target="none",
    )


def environment() -> dict:
    """Where a run ran, for the report (its seconds depend on it): the versions of what computes it,
    the CPU, its cores, and the threads the run's kernels use."""
    import numba

    if not _ENVIRONMENT:
        import os
        import platform

        from ... import __version__

        cpu = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as fh:  # (Linux: the model's name; platform.processor() gives "x86_64")
                cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
        except OSError:
            pass
        _ENVIRONMENT.update(
            optlab=__version__,
            python=platform.python_version(),
            numpy=np.__version__,
            numba=numba.__version__,
            cpu=cpu,
            cores=os.cpu_count(),
        )
    return {**_ENVIRONMENT, "threads": numba.get_num_threads()}


def warm_up(run: dict) -> float:
    """Two steps and an evaluation of ``run``'s optimizer on its problem, once per process:
    loads or compiles the kernels before anything is timed. Returns the seconds it took (0 if warm)."""
    key = (run["optimizer"], repr(sorted(run["problem_config"].items())), run["dtype"])
    if key in _WARM:
        return 0.0
    start = time.perf_counter()
    trainer = _trainer(run, [_StopAfter(2)], epochs=2)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        trainer.fit()
    _WARM.add(key)
    return time.perf_counter() - start


def run_one(run: dict) -> dict:
    """Train ``run`` (a :meth:`Spec.run` dict) at its problem's budget; its record as plain data.

    ``points``: ``[step, examples, train seconds, metric]`` at each evaluation; ``final`` and
    ``best``: the metric's last and best values (NaN if the run diverged); ``steps``;
    ``train_seconds`` (the steps alone), ``fit_seconds`` (the training as a run alone costs it:
    the steps and the trainer's evaluations at epoch ends), ``probe_seconds`` (the study's
    evaluations between epochs) and ``wall_seconds`` (the whole run, set-up included).
    """
    warmup = warm_up(run)
    start = time.perf_counter()
    probe = Probe(run["metric"])
    trainer = _trainer(run, [probe])
    total = trainer.epochs * trainer.steps_per_epoch
    probe.schedule = set(geometric_steps(total))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fit_start = time.perf_counter()
        trainer.fit()
        fit_seconds = time.perf_counter() - fit_start - probe.probe_seconds
    values = [p[3] for p in probe.points]
    finite = [v for v in values if math.isfinite(v)]
    best = (min if run["direction"] == "min" else max)(finite) if finite else math.nan
    final = values[-1] if values and not probe.diverged else math.nan
    return {
        **run,
        "points": probe.points,
        "final": final,
        "best": best,  # a run that diverged after reaching a value did reach it
        "diverged": probe.diverged,
        "steps": trainer.step,
        "budget_steps": total,
        "train_seconds": probe.seconds,
        "fit_seconds": fit_seconds,
        "probe_seconds": probe.probe_seconds,
        "wall_seconds": time.perf_counter() - start,
        "warmup_seconds": warmup,
        "environment": environment(),
    }
