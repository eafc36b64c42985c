"""One experiment from a composed config: build, train, track, summarise."""

from __future__ import annotations

import contextlib
import gc
import math
import sys
import time
from difflib import get_close_matches

import numpy as np

from .. import __version__, callbacks, optimizers, problems, schedules
from ..callbacks import Callback, ProgressBar
from ..trainer import Trainer
from .config import MISSING, ConfigError

STEP_KEYS = ("decay_steps", "first_decay_steps")


class PrintRows(Callback):
    """Prints chosen logged values after every epoch, rounded to 4 decimals (the tutorial's rows)."""

    registry_name = "print_rows"

    def __init__(self, keys):
        super().__init__()
        self.keys = list(keys)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        print(" ".join(str(round(float(logs[k]), 4)) for k in self.keys if k in logs), flush=True)


def _component(kind: str, getter, config: dict):
    try:
        return getter(dict(config))
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{kind}: {error}") from None


def build(conf: dict):
    """Problem, optimizer and callbacks from the plain-data config; user mistakes raise ConfigError.

    Resolves ``conf["metric"]`` in place (``auto``: ``val_loss`` where the problem holds out
    validation data, else ``loss``); a callback's ``monitor`` of ``auto`` (the command line's
    default, ``${metric}``) watches that metric. Anything a callback or the metric names that
    the run will not log fails here, before training.
    """
    problem = _component("problem", problems.get, conf["problem"])
    optimizer = _component("optimizer", optimizers.get, conf["optimizer"])
    trainer_conf = conf["trainer"]
    for key in ("epochs", "batch_size", "dtype", "progress_bar"):
        if key not in trainer_conf:
            raise ConfigError(f"trainer.{key} is missing")
    schedule_conf = dict(conf.get("schedule") or {})
    if schedule_conf.get("name"):
        total = total_steps(problem, trainer_conf)
        for key in STEP_KEYS:  # decay over the whole run unless told otherwise
            if schedule_conf.get(key) == MISSING:
                schedule_conf[key] = total
        missing = [k for k, v in schedule_conf.items() if v == MISSING]
        if missing:
            raise ConfigError(f"schedule.{missing[0]} is required (e.g. schedule.{missing[0]}=...)")
        schedule = _component("schedule", schedules.get, schedule_conf)
        optimizer.learning_rate = schedule
    cb_confs = {name: dict(cb_conf) for name, cb_conf in (conf.get("callbacks") or {}).items()}
    names = logged_names(conf, problem, cb_confs)
    conf["metric"] = metric = resolve_metric(conf.get("metric"), names, problem)
    cbs = []
    for name, cb_conf in cb_confs.items():
        missing = [k for k, v in cb_conf.items() if v == MISSING]
        if missing:
            raise ConfigError(f"callbacks.{name}.{missing[0]} is required (e.g. callbacks.{name}.{missing[0]}=...)")
        if cb_conf.get("monitor") == "auto":
            cb_conf["monitor"] = metric
        cb = _component(f"callbacks.{name}", callbacks.get, cb_conf)
        try:
            cb.check_logs(names)
        except ValueError as error:
            raise ConfigError(f"callbacks.{name}: {error}") from None
        cbs.append(cb)
    return problem, optimizer, cbs


def logged_names(conf: dict, problem, cb_confs: dict) -> set[str]:
    """The names each epoch's logs will hold: the trainer's, the problem's metrics, and any a
    callback class declares it adds (``adds_logs``)."""
    logged = problem.evaluate(problem.init(conf["seed"], np.dtype(conf["trainer"]["dtype"]).type))
    added = []
    for cb_conf in cb_confs.values():
        if str(cb_conf.get("name", "")).lower() in callbacks.registry:
            added += getattr(callbacks.registry.get(cb_conf["name"]), "adds_logs", ())
    return {"loss", "learning_rate", *logged, *added}


def resolve_metric(metric: str | None, names: set[str], problem) -> str:
    """``auto`` becomes ``val_loss`` or ``loss``; any other name must be logged by the run."""
    metric = metric or "auto"
    if metric == "auto":
        return "val_loss" if "val_loss" in names else "loss"
    if metric not in names:
        match = get_close_matches(metric, sorted(names), n=1)
        hint = f" Did you mean {match[0]!r}?" if match else ""
        raise ConfigError(
            f"metric {metric!r} is not logged by problem {problem.registry_name!r}.{hint} "
            f"Logged: {', '.join(sorted(names))}"
        )
    return metric


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster's time limit, ``kill``) during training: handled like Ctrl-C, the run
    is flushed and marked KILLED."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Turn SIGTERM into :class:`Terminated` while training, unless someone else (a launcher
    such as submitit, which handles preemption itself) already handles it."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise Terminated("terminated (SIGTERM)")

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def fit(trainer):
    """``trainer.fit()``, with everything alive so far frozen out of the cyclic garbage collector.

    numba, Hydra and MLflow leave about half a million long-lived objects, which every full
    collection would walk again; the training loop (and MLflow's writer, which creates many
    short-lived objects) runs about 3% faster without that. Later runs of a sweep in the same
    process collect first (cheap then: frozen objects are not walked), so nothing leaks.
    """
    if gc.get_freeze_count():
        gc.collect()
    gc.freeze()
    return trainer.fit()


def make_trainer(conf: dict, problem, optimizer, cbs, extra=()):
    t = conf["trainer"]
    try:
        return Trainer(
            problem,
            optimizer,
            [*cbs, *extra, ProgressBar(enabled=bool(t["progress_bar"]))],
            epochs=t["epochs"],
            batch_size=t["batch_size"] if problem.num_examples is not None else None,
            seed=conf["seed"],
            dtype=t["dtype"],
        )
    except (ValueError, TypeError) as error:
        raise ConfigError(str(error)) from None


def tags_for(conf: dict, problem, optimizer, sweep: dict) -> dict:
    from importlib import metadata

    source = optimizers.registry.source(optimizer.registry_name)
    try:
        source_version = __version__ if source == "optlab" else metadata.version(source)
    except metadata.PackageNotFoundError:
        source_version = "?"
    tags = {
        "optimizer": optimizer.registry_name,
        "problem": problem.registry_name,
        "seed": str(conf["seed"]),
        "optlab_version": __version__,
        "optimizer_distribution": source,
        "optimizer_distribution_version": source_version,
        "metric": conf.get("metric", ""),
    }
    tags.update({k: str(v) for k, v in sweep.items() if v is not None})
    return tags


def total_steps(problem, trainer_conf) -> int:
    steps_per_epoch = 1
    if problem.num_examples is not None and trainer_conf.get("batch_size"):
        steps_per_epoch = -(-problem.num_examples // trainer_conf["batch_size"])
    return max(1, steps_per_epoch * int(trainer_conf["epochs"]))


def log_interval(tracking: dict, problem, trainer_conf) -> int:
    """``tracking.log_every``, or with ``auto`` the smallest interval giving <= ``max_points`` points per curve."""
    every = tracking.get("log_every", "auto")
    if every == "auto":
        points = tracking.get("max_points", 2000)
        if not isinstance(points, int) or isinstance(points, bool) or points < 1:
            raise ConfigError(f"tracking.max_points must be an integer >= 1; received {points!r}")
        return max(1, -(-total_steps(problem, trainer_conf) // points))
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ConfigError(f'tracking.log_every must be "auto" or an integer >= 1; received {every!r}')
    return every


def run(conf: dict, sweep: dict | None = None) -> float:
    """Train once as configured; returns the final value of ``conf["metric"]`` (the sweep objective)."""
    sweep = sweep or {}
    conf = dict(conf)
    problem, optimizer, cbs = build(conf)
    extra = []
    if conf.get("print_every_epoch"):
        extra.append(PrintRows(conf["print_every_epoch"]))
    tracking = conf.get("tracking") or {}
    tracker = None
    if tracking.get("enabled"):
        from .tracking import MlflowTracker

        run_name = f"{optimizer.registry_name}-{problem.registry_name}-seed{conf['seed']}"
        if sweep.get("sweep_job") is not None:
            run_name += f"-job{sweep['sweep_job']}"
        tracker = MlflowTracker(
            tracking.get("uri"),
            tracking.get("experiment", "optlab"),
            conf,
            tags_for(conf, problem, optimizer, sweep),
            run_name,
            log_interval(tracking, problem, conf["trainer"]),
        )
        extra.append(tracker)
    trainer = make_trainer(conf, problem, optimizer, cbs, extra)
    if tracker is not None:
        tracker.start()
    start = time.perf_counter()
    try:
        with sigterm_as_interrupt():
            history = fit(trainer)
    except KeyboardInterrupt as interrupt:
        if tracker is not None:
            tracker.close("KILLED", str(interrupt) or "interrupted (Ctrl-C)")
        raise
    except BaseException as error:
        if tracker is not None:
            tracker.close("FAILED", f"{type(error).__name__}: {error}")
        raise
    seconds = time.perf_counter() - start
    if tracker is not None:
        tracker.close("FINISHED")
    summary(conf, trainer, history, seconds, tracker)
    metric = conf["metric"]
    values = history.history.get(metric)
    if not values:
        print(
            f"optlab: warning: metric {metric!r} was not logged (logged: {', '.join(history.history)}); "
            "set metric=... for sweeps and comparisons",
            file=sys.stderr,
        )
        return math.nan
    return float(values[-1])


def direction(metric: str):
    """``min`` for losses and errors, ``max`` for accuracies, None when "best" means nothing (x, a, rates)."""
    from ..callbacks.base import MAXIMIZED, MINIMIZED

    name = metric.removeprefix("val_").removeprefix("epoch_")
    if name.endswith("loss") or name in MINIMIZED:
        return min
    if name in MAXIMIZED:
        return max
    return None


def summary(conf, trainer, history, seconds, tracker) -> None:
    out = sys.stdout
    h = history.history
    print(
        f"\n{trainer.optimizer.registry_name} on {trainer.problem.registry_name}: {trainer.step} steps, "
        f"{len(history.epoch)} epochs, {seconds:.2f} s",
        file=out,
    )
    width = max((len(k) for k in h), default=0)
    for key, values in h.items():
        if not values:
            continue
        finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        best = ""
        pick = direction(key)
        if finite and pick is not None:
            best = f"   best {pick(finite):.6g} (epoch {values.index(pick(finite)) + 1})"
        print(f"  {key:<{width}}  final {values[-1]:.6g}{best}", file=out)
    losses = h.get("loss") or []
    diverged = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    if diverged is not None:
        hint = "try a smaller optimizer.learning_rate"
        if "terminate_on_nan" not in (conf.get("callbacks") or {}):
            hint += ", or callbacks=[terminate_on_nan] to stop at once"
        out.flush()
        print(
            f"\noptlab: warning: the loss became {losses[diverged]} in epoch {diverged + 1} (the run diverged): {hint}",
            file=sys.stderr,
        )
    if tracker is not None:
        uri = tracker.uri
        print(f"\nlogged to MLflow: {uri}  (experiment {tracker.experiment!r}, run {tracker.run_id})", file=out)
        backend = uri if "://" in uri else f"file:{uri}"
        print(f"open it with:  mlflow ui --backend-store-uri {backend} --host 127.0.0.1", file=out)
