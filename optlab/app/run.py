"""One experiment from a composed config: build, train, track, summarise."""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import signal
import sys
import time

import numpy as np

from .. import __version__, callbacks, optimizers, problems, schedules
from ..callbacks import Callback, ProgressBar, direction
from ..files import write_text_atomic
from ..hparams import quoted_truth
from ..names import closest, counted, did_you_mean
from ..trainer import Trainer
from .config import INTERNAL_CALLBACKS, MISSING, ConfigError, main_config, not_an_option, preset_keys
from .signals import terminated


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
        raise ConfigError(f"{kind}: {in_yaml(str(error), config)}") from None


def in_yaml(message: str, config: dict) -> str:
    """A library's message about a component's arguments, in the command line's words: YAML's
    ``true``, ``false`` and ``null`` for Python's ``True``, ``False`` and ``None`` (``clipnorm=None``
    on the command line is the string 'None', which the message then says)."""
    message = message.replace("True or False", "true or false").replace(" or None", " or null")
    for key, value in config.items():
        if isinstance(value, str) and value.strip().lower() == "none" and f"{key}={value!r}" in message:
            return f"{message} (the string {value!r}: on the command line, no value is written null)"
    return message


def build(conf: dict):
    """Problem, optimizer and callbacks from the plain-data config; user mistakes raise ConfigError.

    Resolves ``conf["metric"]`` in place (``auto``: ``val_loss`` where the problem holds out
    validation data, else ``loss``); a callback's ``monitor`` of ``auto`` (the command line's
    default, ``${metric}``) watches that metric. Anything a callback or the metric names that
    the run will not log fails here, before training.
    """
    check_keys(conf)
    check_settings(conf)
    problem = _component("problem", problems.get, conf["problem"])
    trainer_conf = conf["trainer"]
    apply_budget(trainer_conf, problem)
    schedule = None
    schedule_conf = dict(conf.get("schedule") or {})
    if schedule_conf.get("name"):
        fill_run_steps(schedule_conf, total_steps(problem, trainer_conf))
        missing = [k for k, v in schedule_conf.items() if v == MISSING]
        if missing:
            raise ConfigError(f"schedule.{missing[0]} is required (e.g. schedule.{missing[0]}=...)")
        try:
            schedule = _component("schedule", schedules.get, schedule_conf)
        except ConfigError as error:  # the rate it starts from is the optimizer's: say so, by the key set
            rate = (conf.get("optimizer") or {}).get("learning_rate")
            cls = schedules.registry.get(schedule_conf["name"]) if schedule_conf["name"] in schedules.registry else None
            filled = [n for n, h in (cls.hyperparameters() if cls else {}).items() if h.fill == "learning_rate"]
            if not any(f"`{n}`" in str(error) and schedule_conf.get(n) == rate for n in filled):
                raise
            raise ConfigError(f"optimizer.learning_rate={rate!r}, the initial rate of the schedule: {error}") from None
    # the optimizer is built with its schedule (whose initial rate is the optimizer's learning_rate)
    overrides = {} if schedule is None else {"learning_rate": schedule}
    optimizer = _component("optimizer", lambda c: optimizers.get(c, **overrides), conf["optimizer"])
    if conf.get("optimizer_groups"):
        optimizer = optimizer_groups(conf["optimizer_groups"], optimizer, problem)
    cb_confs = {name: dict(cb_conf) for name, cb_conf in (conf.get("callbacks") or {}).items()}
    names = logged_names(conf, problem, cb_confs)
    conf["metric"] = metric = resolve_metric(conf.get("metric"), names, problem)
    printed = conf.get("print_every_epoch") or []
    if isinstance(printed, str):  # print_every_epoch=loss: one name, not its letters
        conf["print_every_epoch"] = printed = [printed]
    unknown = [k for k in printed if k not in names]
    if unknown:
        raise ConfigError(
            f"print_every_epoch: {unknown[0]!r} is not logged by this run{did_you_mean(unknown[0], names)}. "
            f"Logged: {', '.join(sorted(names))}"
        )
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
            cb.check_files()
        except ValueError as error:
            raise ConfigError(f"callbacks.{name}: {error}") from None
        cbs.append(cb)
    return problem, optimizer, cbs


GROUP_FORM = "{match: <regular expression of parameter names>, optimizer: <name or {name: ..., <argument>: ...}>}"


def optimizer_groups(groups, default, problem):
    """``optimizer_groups``: a ``MultiOptimizer`` stepping the parameters whose name a group's
    ``match`` matches (whole name, as Keras's ``OptimizerMap``) with its ``optimizer``, the rest
    with ``default`` (the ``optimizer`` group's, with its schedule). Every pattern must match
    some parameter of ``problem`` and no parameter two patterns: each mistake is one line."""
    import re

    from ..optimizers import MultiOptimizer, OptimizerMap

    if not isinstance(groups, list):
        raise ConfigError(f"optimizer_groups must be a list of {GROUP_FORM}; received {groups!r}")
    names = problem.parameter_names() or [str(k) for k in range(len(problem.init(0, np.float32)))]
    mapping, claimed = {}, {}
    for k, group in enumerate(groups):
        where = f"optimizer_groups[{k}]"
        if not isinstance(group, dict) or set(group) != {"match", "optimizer"}:
            raise ConfigError(f"{where} must be {GROUP_FORM}; received {group!r}")
        match = group["match"]
        if not isinstance(match, str) or not match:
            raise ConfigError(f"{where}.match must be a regular expression of parameter names; received {match!r}")
        try:
            pattern = re.compile(match)
        except re.error as error:
            raise ConfigError(f"{where}.match {match!r} is not a regular expression ({error})") from None
        chosen = [n for n in names if pattern.fullmatch(n)]
        if not chosen:
            raise ConfigError(
                f"{where}.match {match!r} matches none of the parameters of problem {problem.registry_name!r} "
                f"(the whole name must match): {', '.join(names)}"
            )
        for name in chosen:
            if name in claimed:
                raise ConfigError(f"parameter {name!r} is matched by two groups: {claimed[name]!r} and {match!r}")
            claimed[name] = match
        spec = group["optimizer"]
        spec = {"name": spec} if isinstance(spec, str) else spec
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}.optimizer must be a name or {{name: ..., <argument>: ...}}; received {spec!r}")
        name = spec.get("name")
        if isinstance(name, str) and name.lower() not in optimizers.registry:  # (the library's message goes on
            known = optimizers.registry.names()  # about configs from get_config(), which a command line has none of)
            near = closest(name, known)
            hint = f" Did you mean {near!r}?" if near else ""  # (as optimizer=NAME says it)
            raise ConfigError(f"{where}.optimizer: Unknown optimizer {name!r}.{hint} Known: {', '.join(known)}")
        mapping[match] = _component(f"{where}.optimizer", optimizers.get, spec)
    return MultiOptimizer(OptimizerMap(default, mapping))


def fill_run_steps(schedule_conf: dict, total: int) -> None:
    """A schedule decays over the whole run unless told otherwise: each argument it declares
    ``fill="run_steps"`` that the user left unset becomes the run's total number of steps."""
    name = str(schedule_conf["name"])
    if name.lower() not in schedules.registry:
        return  # an unknown name: schedules.get says so, listing the known ones
    for key, hyper in schedules.registry.get(name).hyperparameters().items():
        if hyper.fill == "run_steps" and schedule_conf.get(key) == MISSING:
            schedule_conf[key] = total


def check_keys(conf: dict) -> None:
    """A key nobody reads (``+trainer.epoch=5``, a typo) is an error, not silently ignored; so is
    a run without a problem, an optimizer or a trainer section."""
    for group in ("problem", "optimizer", "trainer"):
        if not isinstance(conf.get(group), dict):
            raise ConfigError(
                f"every run needs {'an' if group == 'optimizer' else 'a'} {group}; choose one with {group}=NAME"
            )
    groups = {"": (conf, main_config()[1]), "trainer.": (conf.get("trainer") or {}, preset_keys("trainer"))}
    groups["tracking."] = (conf.get("tracking") or {}, preset_keys("tracking"))
    for prefix, (node, known) in groups.items():
        for key in node:
            if key not in known:
                raise not_an_option(prefix, str(key), known)
    missing = [k for k in preset_keys("trainer") if k not in (conf.get("trainer") or {})]
    if missing:
        raise ConfigError(f"trainer.{missing[0]} is missing")


def check_settings(conf: dict) -> None:
    """The run's own settings (seed, trainer, tracking, metric, the callbacks' nodes), checked
    before anything is built: each mistake is one line naming the key and what it allows."""

    def check(key: str, ok: bool, allowed: str, value) -> None:
        if not ok:
            raise ConfigError(f"{key} must be {allowed}; received {key}={value!r}{quoted_truth(value)}")

    trainer, tracking = conf["trainer"], conf.get("tracking") or {}
    try:  # the trainer's own declarations: the same checks as Trainer(...), made before it exists
        Trainer.seed.validate(conf.get("seed"))
    except ValueError as error:
        raise ConfigError(str(error).removeprefix(": ")) from None
    try:
        Trainer.parse_dtype(trainer["dtype"])
    except ValueError as error:
        raise ConfigError(f"trainer: {str(error).removeprefix('Trainer: ')}") from None
    for name in ("epochs", "batch_size"):  # batch_size too where the problem ignores it: a typo is a typo
        try:
            if trainer[name] != "auto":
                getattr(Trainer, name).validate(trainer[name], "trainer")
        except ValueError as error:  # (None is written null on the command line)
            text = str(error).replace(" or None;", " or null (all the examples);")
            raise ConfigError(f'{text} (or "auto": the problem\'s budget)') from None
    target = trainer["target"]
    if target is not None and target != "auto":
        try:
            Trainer.parse_target(target)
        except ValueError as error:
            raise ConfigError(f"trainer.target: {str(error).removeprefix('Trainer: `target`: ')}") from None
    check(
        "trainer.stop_at_target",
        isinstance(trainer["stop_at_target"], bool),
        "true or false",
        trainer["stop_at_target"],
    )
    check("trainer.progress_bar", isinstance(trainer["progress_bar"], bool), "true or false", trainer["progress_bar"])
    enabled = tracking.get("enabled", False)
    check("tracking.enabled", isinstance(enabled, bool), "true or false (or tracking=none)", enabled)
    uri = tracking.get("uri")
    check(
        "tracking.uri",
        uri is None or (isinstance(uri, str) and uri.strip() != ""),
        "a store's URI, or left out for the default (an unset variable gives an empty one)",
        uri,
    )
    metric = conf.get("metric")
    check("metric", metric is None or (isinstance(metric, str) and metric != ""), '"auto" or a logged name', metric)
    for name, node in (conf.get("callbacks") or {}).items():
        if not isinstance(node, dict):
            known = [n for n in callbacks.registry.names() if n not in INTERNAL_CALLBACKS]
            raise ConfigError(
                f"callbacks.{name}={node!r} is not a callback's settings: callbacks are chosen with "
                f"callbacks=[name,...] and set with callbacks.<name>.<argument>=... Known: {', '.join(known)}"
            )


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
        match = closest(metric, names)
        hint = f" Did you mean {match!r}?" if match else ""
        raise ConfigError(
            f"metric {metric!r} is not logged by problem {problem.registry_name!r}.{hint} "
            f"Logged: {', '.join(sorted(names))}"
        )
    return metric


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster's time limit, ``kill``): handled like Ctrl-C, the run is flushed and marked KILLED."""


def stopped_by(signum: int) -> KeyboardInterrupt:
    """The exception a signal stops optlab with: :class:`Terminated` for SIGTERM, else Ctrl-C's."""
    return Terminated(terminated()) if signum == signal.SIGTERM else KeyboardInterrupt("interrupted (Ctrl-C)")


def raise_stop(signum, frame):
    """A signal handler that stops the program where it is, with :func:`stopped_by`'s exception."""
    raise stopped_by(signum)


class RunStopped(Exception):
    """The run ended early (a failure or a signal): the one line for the user, and the exit status."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


#: the signal that stopped a run in this process: a sweep worker then starts no further job
STOPPED_BY: int | None = None


#: in a sweep's worker, the signal its parent sends to stop it (a worker may also receive the
#: user's own SIGTERM or Ctrl-C, as a cluster scheduler or a terminal sends it to every process:
#: the parent's request then does not count as a second signal)
STOP_REQUEST = signal.SIGUSR1


class Signals:
    """What :func:`stop_signals` yields: ``first`` is the first signal's exception (the reason and
    the exit status, whatever comes next); ``trainer`` (set by the run) is told to stop should a
    signal's exception be lost; ``lost`` is that exception, for the run to raise once training is over."""

    first: BaseException | None = None
    requested = -math.inf  # when the sweep's parent asked this worker to stop
    trainer = None
    raised: BaseException | None = None
    lost: BaseException | None = None


@contextlib.contextmanager
def stop_signals(worker: bool = False):
    """The first SIGINT (Ctrl-C) or SIGTERM raises ``KeyboardInterrupt`` / :class:`Terminated` in
    the main thread, so training stops at once and the run is written and closed. A second one
    stops waiting for the store (the rest is kept locally) but still sets the run's status,
    within a few seconds; a third one exits at once, whatever is left unwritten. The exit status
    (130 / 143) and the reason are the first signal's.

    In a sweep's ``worker``, :data:`STOP_REQUEST` from the parent acts as a first signal, and
    is ignored after one. SIGTERM is left alone where someone else (a launcher such as
    submitit, which handles preemption itself) already handles it; nothing is changed off the
    main thread.
    """
    global STOPPED_BY
    received = []
    state = Signals()

    def handler(signum, frame):
        global STOPPED_BY
        if signum == STOP_REQUEST:
            if received:
                return
            state.requested = time.monotonic()
            signum = signal.SIGTERM
        elif len(received) == 1 and time.monotonic() - state.requested < 2.0:
            return  # the user's own signal to every process of the sweep, which made the parent ask too: one stop
        received.append(signum)
        STOPPED_BY = STOPPED_BY or signum
        if len(received) > 2:
            print("\noptlab: another signal: exiting now", file=sys.stderr, flush=True)
            os._exit(128 + received[0])
        if len(received) == 2:
            print(
                "\noptlab: second signal: not waiting for the store; the run is still marked (another signal exits "
                "at once)",
                file=sys.stderr,
                flush=True,
            )
        state.raised = stopped_by(signum)
        state.first = state.first or state.raised
        raise state.raised

    def unraisable(info):
        # the handler ran inside a finalizer or a weak-reference callback (a store's garbage
        # collected connection, say), where Python drops what it raises: stop at the next step
        if info.exc_value is not None and info.exc_value is state.raised:
            state.lost = info.exc_value
            if state.trainer is not None:
                state.trainer.interrupt(info.exc_value)
            return
        hook(info)

    signals = (signal.SIGINT, signal.SIGTERM, STOP_REQUEST) if worker else (signal.SIGINT, signal.SIGTERM)
    hook = sys.unraisablehook
    sys.unraisablehook = unraisable
    try:
        with handling(handler, replaces=lambda current: getattr(current, "optlab_sweep", False), signals=signals):
            yield state
    finally:
        sys.unraisablehook = hook


@contextlib.contextmanager
def handling(handler, replaces=lambda current: False, signals=(signal.SIGINT, signal.SIGTERM)):
    """``handler`` for ``signals`` inside the block, where nobody else handles them (their
    default, Python's Ctrl-C handler, optlab's own outside a run, or one ``replaces`` accepts);
    restored afterwards. Main thread only."""
    import threading

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in signals:
            current = signal.getsignal(signum)
            if current in (signal.SIG_DFL, signal.default_int_handler) or _default(current) or replaces(current):
                previous[signum] = current
                signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, current in previous.items():
            signal.signal(signum, current)


def _default(handler) -> bool:
    """``python -m optlab``'s handler outside a run (see ``optlab.app.entry``), which any other replaces."""
    return getattr(handler, "optlab_default", False)


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


def apply_budget(trainer_conf: dict, problem) -> None:
    """``trainer.epochs`` and ``trainer.batch_size`` of ``auto`` become the problem's budget, in place
    (so that the logged config and a backup's settings hold the numbers the run used)."""
    if trainer_conf.get("epochs") == "auto":
        trainer_conf["epochs"] = problem.budget.epochs
    if trainer_conf.get("batch_size") == "auto":
        trainer_conf["batch_size"] = problem.budget.batch_size


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
            target=None if t["target"] == "auto" else "none" if t["target"] is None else t["target"],
            stop_at_target=t["stop_at_target"],
        )
    except (ValueError, TypeError) as error:  # (the command line's names for the trainer's arguments)
        raise ConfigError(str(error).replace("Trainer: `target`", "trainer.target", 1)) from None


def tags_for(conf: dict, problem, optimizer, sweep: dict) -> dict:
    from importlib import metadata

    known = optimizer.registry_name in optimizers.registry  # (a MultiOptimizer of groups is optlab's own)
    source = optimizers.registry.source(optimizer.registry_name) if known else "optlab"
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
        **source_tags(),
    }
    target = problem.declared_target() if conf["trainer"].get("target") == "auto" else conf["trainer"].get("target")
    if target is not None and str(target).lower() != "none":
        tags["target"] = str(target)
    for key, value in sweep.items():
        if value is not None and key != "swept":
            tags[key] = str(value)
    return tags


def source_tags() -> dict[str, str]:
    """MLflow's own source tags, which its client leaves to the caller: who ran what, from which
    git commit (when the working directory is inside a git checkout)."""
    import getpass
    import subprocess

    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": "python -m optlab"}
    with contextlib.suppress(Exception):
        tags["mlflow.user"] = getpass.getuser()
    try:
        found = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return tags
    if found.returncode == 0 and found.stdout.strip():
        tags["mlflow.source.git.commit"] = found.stdout.strip()
    return tags


#: short names of swept settings in run names (the rest: their last part, ``trainer.epochs`` -> ``epochs``)
SHORT_KEYS = {"optimizer.learning_rate": "lr", "optimizer.weight_decay": "wd"}


def run_name_for(conf: dict, optimizer, problem, sweep: dict) -> str:
    """A run's name, short and saying what differs: ``adam mlp_digits seed=0`` for a single run;
    in a sweep the optimizer, then each swept setting (``sweep["swept"]``, the keys given several
    values), then the seed: ``lion lr=0.01 seed=0``."""
    swept = sweep.get("swept")
    if swept is None:
        return f"{optimizer.registry_name} {problem.registry_name} seed={conf['seed']}"
    values = dict(o.split("=", 1) for o in (sweep.get("sweep_overrides") or "").split() if "=" in o)
    parts = [optimizer.registry_name]
    for key in swept:
        bare = key.lstrip("+~")
        if bare in ("optimizer", "seed") or bare not in {k.lstrip("+~") for k in values}:
            continue
        value = _short(next(v for k, v in values.items() if k.lstrip("+~") == bare))
        parts.append(value if bare == "problem" else f"{SHORT_KEYS.get(bare, bare.rsplit('.', 1)[-1])}={value}")
    parts.append(f"seed={conf['seed']}")
    return " ".join(parts)


def _short(value: str) -> str:
    """A swept value as a run's name shows it: a float to 4 significant digits (an Optuna trial's
    0.04420424869770288 is 0.0442; its parameter keeps every digit), anything else as given."""
    if not any(c in value for c in ".eE") or value.lower() in ("nan", "inf", "-inf"):
        return value
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def total_steps(problem, trainer_conf) -> int:
    return max(1, problem.steps_per_epoch(trainer_conf.get("batch_size")) * int(trainer_conf["epochs"]))


def tracker_for(conf: dict, problem, optimizer, sweep: dict, output_dir=None, threads=None):
    """The run's ``MlflowTracker`` as ``conf["tracking"]`` sets it (None with tracking off), not started.

    ``python -m optlab`` and ``python -m optlab.app.bench`` build it here, so that the benchmark
    times what a run records (tags, params, datasets, points, plots).
    """
    tracking = conf.get("tracking") or {}
    if not tracking.get("enabled"):
        return None
    from .tracking import MlflowTracker, hydra_output_dir

    output_dir = output_dir or hydra_output_dir()
    return MlflowTracker(
        tracking.get("uri"),
        tracking.get("experiment", "optlab"),
        conf,
        {**tags_for(conf, problem, optimizer, sweep), **({"threads": str(threads)} if threads else {})},
        run_name_for(conf, optimizer, problem, sweep),
        tracking.get("log_every", "auto"),
        max_points=tracking.get("max_points", 200),
        flush_timeout=tracking.get("flush_timeout", 10.0),
        output_dir=output_dir,
        objective=conf["metric"],
        datasets=problem.datasets(),
        plots=tracking.get("plots", True),
        detach=detached(tracking.get("detach", "auto"), sweep, output_dir, tracking.get("log_every", "auto")),
    )


def detached(detach, sweep: dict, output_dir, log_every="auto") -> bool:
    """``tracking.detach``: true, false, or ``auto``: a single run whose output is a terminal (someone
    waiting at the shell) is recorded in the background where it can be, if its points are thinned
    (``tracking.log_every=auto``: every point of a long run would take the store minutes after the
    command returned); a script's, a pipe's or a job's run is in the store when the command
    returns. A sweep's runs are recorded as each ends."""
    if detach not in (True, False, "auto"):
        raise ConfigError(f"tracking.detach must be true, false or auto; received {detach!r}{quoted_truth(detach)}")
    if sweep:
        return False
    if detach == "auto":
        from .recording import recordable

        return log_every == "auto" and sys.stdout.isatty() and recordable(output_dir)
    return detach


def run(conf: dict, sweep: dict | None = None, output_dir=None, worker: bool = False, threads=None) -> float:
    """Train once as configured; returns the final value of ``conf["metric"]`` (the sweep objective).

    User mistakes raise ``ConfigError`` before anything is recorded; a failure or a signal
    during the run ends its MLflow run with a true status and raises :class:`RunStopped`
    (one line for the user; a failure's full traceback goes to the run's log in ``output_dir``).
    ``worker``: this process is a sweep's worker, stopped by its parent (see :func:`stop_signals`).
    ``threads``: the threads its kernels may use (:func:`~.cores.share_cores`), recorded as a tag.
    """
    sweep = sweep or {}
    conf = dict(conf)
    problem, optimizer, cbs = build(conf)
    extra = []
    if conf.get("print_every_epoch"):
        extra.append(PrintRows(conf["print_every_epoch"]))
    tracker = tracker_for(conf, problem, optimizer, sweep, output_dir, threads)
    if tracker is not None:
        extra.append(tracker)
    trainer = make_trainer(conf, problem, optimizer, cbs, extra)
    for cb in cbs:  # a backup this run cannot resume from is the user's error: nothing is recorded
        try:
            cb.check_resume(trainer)
        except ValueError as error:
            raise ConfigError(f"callbacks.{type(cb).registry_name}: {error}") from None
    with stop_signals(worker) as signals:
        signals.trainer = trainer
        try:
            if worker and STOPPED_BY is not None:  # stopped between its jobs, before this run began
                raise stopped_by(STOPPED_BY)
            if tracker is not None:
                tracker.start(problem, helper=not worker)  # (a worker's neighbours use the other cores)
                _say_unrecorded(tracker.uri)
            start = time.perf_counter()
            try:
                history = fit(trainer)
            except Exception as error:
                where = getattr(error, "optlab_callback", None)
                what = f"{type(error).__name__}: {error}"
                message = f"callback {where} failed: {what}" if where else f"training failed: {what}"
                log = _keep_traceback(error, output_dir)
                if tracker is not None:
                    tracker.close("FAILED", message)
                raise RunStopped(_failure_line(message, log, tracker), 1) from error
            seconds = trainer.seconds if trainer.seconds is not None else time.perf_counter() - start
            if signals.lost is not None:  # a signal whose exception Python dropped after the last step
                raise signals.lost
            if tracker is not None:
                tracker.close("FINISHED")
            summary(conf, trainer, history, seconds, tracker, sweep)
            if signals.lost is not None:  # ... or while the finished run was written: it is complete
                raise signals.lost
            if tracker is not None and tracker.kept_error is not None:  # neither in the store nor kept
                raise RunStopped(f"error: the run trained to its end, but {tracker.undelivered_message()}", 1)
        except KeyboardInterrupt as interrupt:
            interrupt = signals.first or interrupt  # a second signal does not change the reason
            reason = str(interrupt) or "interrupted (Ctrl-C)"
            if tracker is not None and tracker.status is None:
                try:
                    tracker.close("KILLED", reason)
                except KeyboardInterrupt:  # a second signal cut the flush short; close() still set the status
                    pass
            code = 143 if isinstance(interrupt, Terminated) else 130
            raise RunStopped(_interrupt_line(reason, tracker), code) from None
    metric = conf["metric"]
    values = history.history.get(metric)
    if not values and not trainer.step:
        print(
            f"optlab: warning: the run took no step (trainer.epochs={trainer.epochs}): nothing was logged",
            file=sys.stderr,
        )
        value = math.nan
    elif not values:
        print(
            f"optlab: warning: metric {metric!r} was not logged (logged: {', '.join(history.history)}); "
            "set metric=... for sweeps and comparisons",
            file=sys.stderr,
        )
        value = math.nan
    else:
        value = float(values[-1])
    if sweep and output_dir:
        record = {"overrides": sweep.get("sweep_overrides"), "value": value, "run_id": getattr(tracker, "run_id", None)}
        write_text_atomic(os.path.join(output_dir, RESULT_FILE), json.dumps(record))
    return value


#: written into a sweep job's folder when its run finished: a repeated sweep skips the job
RESULT_FILE = "optlab-result.json"


def finished_job(output_dir, overrides: str) -> dict | None:
    """The record of a sweep job that already finished in ``output_dir`` with the same overrides, else None."""
    try:
        with open(os.path.join(output_dir, RESULT_FILE)) as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("overrides") == overrides else None


def _keep_traceback(error: BaseException, output_dir) -> str | None:
    """Append ``error``'s traceback to the run's log (:func:`append_to_log`); returns its path. With
    ``HYDRA_FULL_ERROR=1`` it is printed as well."""
    import traceback

    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        print(text, file=sys.stderr)
    return append_to_log(text, output_dir)


def append_to_log(text: str, output_dir) -> str | None:
    """Append ``text`` to the run's log (Hydra's job log, else ``optlab.log``) in ``output_dir``;
    returns its path, or None if there is none or it cannot be written."""
    import logging

    files = [h.baseFilename for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    path = files[0] if files else (os.path.join(output_dir, "optlab.log") if output_dir else None)
    if path is None:
        return None
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "a") as fh:
            fh.write(text)
    except OSError:
        return None
    return path


def _say_unrecorded(uri: str) -> None:
    """Warn of runs of earlier commands that could not be recorded in the background in this store."""
    from .recording import failed, failure_lines

    lines = failure_lines(failed(uri), uri)
    if lines:
        print("\n".join(lines), file=sys.stderr, flush=True)


def _status_line(tracker) -> str:
    if tracker is None:
        return ""
    if tracker.record is not None and tracker.status is not None:
        where = "is being recorded in the background" if tracker.background else "is not recorded"
        return f"; its MLflow run {where}, marked {tracker.status}"
    if tracker.status is None:
        return (
            "; no MLflow run was recorded"
            if tracker.run_id is None
            else f"; its MLflow run {tracker.run_id} could not be closed"
        )
    return f"; the MLflow run {tracker.run_id} is marked {tracker.status}"


def _failure_line(message: str, log: str | None, tracker) -> str:
    where = f" (full traceback in {log})" if log else ""
    return f"{message}{where}{_status_line(tracker)}"


def _interrupt_line(reason: str, tracker) -> str:
    message = tracker.undelivered_message() if tracker is not None else None
    kept = f"; {message}" if message else ""
    return f"{reason}{_status_line(tracker)}{kept}"


def target_line(trainer) -> str:
    """``target val_accuracy >= 0.97: reached at epoch 12 (step 540, 1.31 s)``, or not reached."""
    reached = trainer.target_reached
    if reached is None:
        return f"target {trainer.target}: not reached in {trainer.step} steps"
    return (
        f"target {trainer.target}: reached at epoch {reached['epoch']} "
        f"(step {reached['step']}, {reached['seconds']:.2f} s)"
    )


def summary(conf, trainer, history, seconds, tracker, sweep: dict | None = None) -> None:
    out = sys.stdout
    h = history.history
    print(
        f"\n{trainer.optimizer.registry_name} on {trainer.problem.registry_name}: {counted(trainer.step, 'step')}, "
        f"{counted(trainer.epoch + 1 if trainer.step else 0, 'epoch')}, {seconds:.2f} s",
        file=out,
    )
    from .keys import metric_key

    shown_as = {key: "train/learning_rate" if key == "learning_rate" else metric_key(key) for key in h}
    width = max((len(k) for k in shown_as.values()), default=0)
    for key, values in h.items():
        if not values:
            continue
        best = ""
        way = direction(key, trainer.problem.metric_directions)
        found = history.best(key, way) if way is not None else None
        if found is not None:
            best = f"   best {found[0]:.6g} (epoch {found[1] + 1})"
        print(f"  {shown_as[key]:<{width}}  final {values[-1]:.6g}{best}", file=out)
    if trainer.target is not None:
        print(f"  {target_line(trainer)}", file=out)
    losses = h.get("loss") or []
    epochs = history.epoch if len(history.epoch) == len(losses) else range(len(losses))
    diverged = next(((e, v) for e, v in zip(epochs, losses) if not math.isfinite(v)), None)
    if diverged is not None:
        hint = "try a smaller optimizer.learning_rate"
        if "terminate_on_nan" not in (conf.get("callbacks") or {}):
            hint += ", or callbacks=[terminate_on_nan] to stop at once"
        out.flush()
        # (a sweep's jobs print side by side: the warning says whose it is)
        job = f"job {sweep['sweep_job']} ({sweep['sweep_overrides']}): " if (sweep or {}).get("sweep_overrides") else ""
        print(
            f"\noptlab: warning: {job}the loss became {diverged[1]} by epoch {diverged[0] + 1} (the run diverged): "
            f"{hint}",
            file=sys.stderr,
        )
    if tracker is None:
        return
    from .store import shown

    if tracker.record is None:
        print(
            f"\nlogged to MLflow: {shown(tracker.uri)}  (experiment {tracker.experiment!r}, run {tracker.run_id})",
            file=out,
        )
        print(tracker.ui_hint(), file=out)
    elif tracker.background is not None:
        print(
            f"\nrecording in MLflow in the background: {shown(tracker.uri)}  (experiment {tracker.experiment!r}, "
            f"run {tracker.run_name!r}; python -m optlab.compare waits for it)",
            file=out,
        )
        print(tracker.ui_hint(), file=out)
    undelivered = tracker.undelivered_message()
    if undelivered and tracker.kept_error is None:  # (one lost is the run's error: see run())
        out.flush()
        print(f"\noptlab: warning: {undelivered}", file=sys.stderr)
