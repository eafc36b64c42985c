"""``python -m optlab``: the Hydra command line.

python -m optlab                                   # Adam on the digits MLP, logged to MLflow
python -m optlab optimizer=sgd optimizer.learning_rate=0.05 trainer.epochs=5
python -m optlab -m optimizer=sgd,adam,rmsprop     # a sweep: one logged run per choice
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import time
import warnings

from .config import (
    ConfigError,
    canonical_choices,
    check_composition,
    check_overrides,
    known_key,
    override_words,
    register_configs,
    sets_hydras,
)
from .signals import handle_hangup, ignore_signals


def _fail(message: str) -> None:
    print(f"optlab: error: {message}", file=sys.stderr)
    sys.exit(2)


def _task(cfg):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from . import run as running
    from .run import RunStopped, finished_job, run

    worker = _in_worker()
    if worker:
        _worker_signals()
    if running.STOPPED_BY is not None:  # a sweep that is stopping: start nothing new
        if worker:
            _park(128 + running.STOPPED_BY)
        sys.exit(128 + running.STOPPED_BY)

    try:
        conf = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except Exception as error:  # an interpolation that does not resolve
        _fail(str(error).splitlines()[0])
    sweep = {}
    hydra_conf = HydraConfig.get()
    if str(hydra_conf.mode) == "RunMode.MULTIRUN":
        from .sweep import sweep_of

        sweep = {
            "sweep": hydra_conf.sweep.dir,
            "sweep_dir": hydra_conf.sweep.dir,
            "sweep_job": hydra_conf.job.num,
            "sweep_job_id": hydra_conf.job.id,
            "sweep_overrides": " ".join(hydra_conf.overrides.task),
        }
        parent = sweep_of(hydra_conf.sweep.dir)
        if parent is not None:  # the sweep's parent run (tracked sweeps): this run is one of its children
            sweep.update({"sweep": parent["sweep_id"], "swept": parent["swept"]})
            sweep["mlflow.parentRunId"] = parent["parent_run_id"]
        done = finished_job(hydra_conf.runtime.output_dir, sweep["sweep_overrides"])
        if done is not None:  # a repeated sweep (same hydra.sweep.dir) runs only what did not finish
            print(f"optlab: job {hydra_conf.job.num} ({sweep['sweep_overrides']}) finished before; skipped")
            return done["value"]
    from .cores import share_cores, sweep_workers

    threads = share_cores(sweep_workers(hydra_conf) if sweep else 1)
    try:
        return run(conf, sweep, hydra_conf.runtime.output_dir, worker=worker, threads=threads)
    except ConfigError as error:
        # Hydra has made the run's folder (its config): its log says why nothing ran
        running.append_to_log(f"optlab: error: {error}\n", hydra_conf.runtime.output_dir)
        _fail(str(error))
    except RunStopped as stopped:
        print(f"\noptlab: {stopped}", file=sys.stderr)
        if stopped.code in (130, 143) and worker:
            sys.stdout.flush()
            sys.stderr.flush()
            _park(stopped.code)
        sys.exit(stopped.code)


#: how long a sweep's parent waits for its workers to close their runs after a signal
WORKER_GRACE_SECONDS = 20.0
#: set by a sweep's parent process (its pid), inherited by the workers it starts
SWEEP_PARENT = "OPTLAB_SWEEP_PARENT"


def _in_worker() -> bool:
    """True in a process a sweep's parent started to run its jobs (joblib's workers)."""
    return os.environ.get(SWEEP_PARENT, str(os.getpid())) != str(os.getpid())


def _worker_signals() -> None:
    """In a sweep's worker, between runs: a signal (the parent's :data:`~.run.STOP_REQUEST`, or
    the user's own) means "start nothing new", and the worker, having no run to close, is done
    at once (see :func:`_park`). During a run, the run's own handler replaces this one."""
    from . import run as running

    if getattr(signal.getsignal(signal.SIGTERM), "optlab_sweep", False):
        return

    def idle(signum, frame):
        running.STOPPED_BY = running.STOPPED_BY or (signal.SIGTERM if signum == running.STOP_REQUEST else signum)
        ignore_signals((signal.SIGINT, signal.SIGTERM, running.STOP_REQUEST))

    idle.optlab_sweep = True
    with contextlib.suppress(ValueError):  # not the main thread: joblib's defaults stay
        for number in (signal.SIGINT, signal.SIGTERM, running.STOP_REQUEST):
            signal.signal(number, idle)
        handle_hangup()  # a closed terminal reaches the workers too


def _park(code: int) -> None:
    """End a sweep's worker whose run is closed (or that had none) after a signal.

    It must not exit by itself while others may still be closing their runs: joblib takes a
    worker that ends for a crash and at once kills every other one. So it ignores signals from
    now on, which tells the parent it is done (see :func:`sweep_signals`), and waits for the
    parent to end it; it exits by itself only if the parent is gone or has not ended it in time.
    """
    from .run import STOP_REQUEST

    ignore_signals((signal.SIGINT, signal.SIGTERM, STOP_REQUEST))
    parent = os.environ.get(SWEEP_PARENT)
    deadline = time.monotonic() + WORKER_GRACE_SECONDS + 30.0
    while str(os.getppid()) == parent and time.monotonic() < deadline:
        time.sleep(0.1)
    os._exit(code)


def _children() -> list[int]:
    """This process's child processes (Linux: from /proc; elsewhere none are known)."""
    found = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children") as fh:
                found += [int(pid) for pid in fh.read().split()]
        except OSError:
            continue
    return found


def _catches(pid: int, signum: int) -> bool:
    """True if process ``pid`` is alive and has a handler for ``signum`` (Linux: from /proc)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            fields = dict(line.split(":", 1) for line in fh if ":" in line)
    except OSError:
        return False
    if fields.get("State", "").strip().startswith(("Z", "X")):  # a zombie has ended
        return False
    return bool(int(fields.get("SigCgt", "0"), 16) & (1 << (signum - 1)))


@contextlib.contextmanager
def sweep_signals():
    """In a sweep's parent: the first SIGTERM or Ctrl-C lets the workers (joblib's processes)
    close their runs before the parent stops.

    The parent asks each worker to stop with :data:`~.run.STOP_REQUEST` (a worker that got the
    user's signal too, as every process does from a terminal's Ctrl-C or a cluster's SIGTERM,
    takes the two as one): a worker in a run marks it KILLED, keeping its metrics, as a single
    run does; an idle one starts nothing new. A worker that is done ignores signals and waits
    (:func:`_park`); the parent waits up to ``WORKER_GRACE_SECONDS`` until every worker is
    done, then stops the sweep (joblib kills the workers). Jobs of the sweep that had not
    started do not run; ``hydra.sweep.dir=<the sweep's folder>`` runs them later (see
    :func:`~.run.finished_job`). A second signal to the parent exits at once. In-process jobs (Hydra's
    basic launcher) replace this handler with their own while they run.
    """
    from .run import STOP_REQUEST, handling, stopped_by

    received = []

    def handler(signum, frame):
        received.append(signum)
        if len(received) > 1:  # the status is the first signal's
            print(
                "\noptlab: sweep stopped at once by another signal: runs still being written may be left RUNNING. "
                "To run the rest, repeat the command with hydra.sweep.dir=<the sweep's folder>.",
                file=sys.stderr,
                flush=True,
            )
            os._exit(128 + received[0])
        workers = [pid for pid in _children() if _catches(pid, STOP_REQUEST)]
        for pid in workers:
            with contextlib.suppress(OSError):
                os.kill(pid, STOP_REQUEST)
        deadline = time.monotonic() + WORKER_GRACE_SECONDS
        while workers and time.monotonic() < deadline:
            time.sleep(0.1)
            workers = [pid for pid in workers if _catches(pid, STOP_REQUEST)]
        raise stopped_by(signum)

    handler.optlab_sweep = True  # a job running in this process (basic launcher) installs its own
    with handling(handler):
        yield


def _one_line_warning(message, category, filename, lineno, line=None, _default=warnings.formatwarning):
    """optlab's own warnings as one line (``optlab: warning: ...``), others as Python shows them."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.abspath(filename).startswith(package + os.sep):
        return f"optlab: warning: {message}\n"
    return _default(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m optlab`` (and the ``optlab`` console script)."""
    import hydra

    warnings.formatwarning = _one_line_warning

    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = override_words(argv)
    own_configs = not (set(argv) & CONFIG_OPTIONS) and not any(o.startswith("hydra.searchpath") for o in overrides)
    if own_configs and os.path.isdir("conf"):  # your own presets: ./conf/experiment/NAME.yaml
        own_configs = False
        argv.append(f"hydra.searchpath=[file://{os.path.abspath('conf')}]")
    try:
        _check_bare_words(argv)
        check_overrides(overrides, own_configs, multirun=bool({"-m", "--multirun"} & set(argv)))
        check_output_folder(overrides, multirun=bool({"-m", "--multirun"} & set(argv)))
    except ConfigError as error:
        _fail(str(error))
    argv = canonical_choices(argv)  # optimizer=Adam: Hydra knows the group's option as adam
    register_configs()
    if not (set(argv) & CONFIG_OPTIONS) and (not own_configs or sets_hydras(overrides)):
        try:  # presets of your own, and Hydra's settings: composed here to say a mistake in one line
            multirun = bool({"-m", "--multirun"} & set(argv))
            check_composition("optlab.conf", "config", override_words(argv), multirun, known_key)
        except ConfigError as error:
            _fail(str(error))
    flags = [a for a in argv if a in ("-m", "--multirun")]  # Hydra takes them before the overrides only
    argv = [*flags, *(a for a in argv if a not in flags)]
    sys.argv = [sys.argv[0], *argv]
    entry = hydra.main(config_path="../conf", config_name="config", version_base="1.3")(_task)
    if not ({"-m", "--multirun"} & set(argv)):
        entry()
        return
    os.environ[SWEEP_PARENT] = str(os.getpid())
    from .sweep import end_open

    try:
        with sweep_signals():
            entry()
    except KeyboardInterrupt as interrupt:  # the parent of joblib's workers
        from .run import Terminated

        end_open("KILLED")
        _sweep_stopped(str(interrupt) or "interrupted (Ctrl-C)")
        sys.exit(143 if isinstance(interrupt, Terminated) else 130)
    except SystemExit as stop:  # a job that ran in this process (basic launcher) was stopped by a signal
        end_open("KILLED" if stop.code in (130, 143) else "FAILED" if stop.code else "FINISHED")
        if stop.code in (130, 143):
            _sweep_stopped("stopped")
        raise
    except BaseException:
        end_open("FAILED")
        raise


#: Hydra's options that take the next word as their value, and those that bring other configs
VALUE_OPTIONS = {
    *("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--package", "-p"),
    *("--cfg", "-c", "--experimental-rerun"),
}
#: ``--info`` takes a value only from these
INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
CONFIG_OPTIONS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"}


def _check_bare_words(argv: list[str]) -> None:
    """A word that is neither an option nor ``key=value`` (``trainer.epochs``): Hydra's message
    is a parser's ("missing EQUAL at '<EOF>'")."""
    after_option = after_info = False
    for word in argv:
        if after_option or (after_info and word in INFO_TOPICS):
            after_option = after_info = False
            continue
        after_info = word in ("--info", "-i")
        if word in VALUE_OPTIONS:
            after_option = True
        elif not word.startswith(("-", "~")) and "=" not in word:
            raise ConfigError(
                f"{word!r}: settings are key=value ({word}=...); see python -m optlab --help for the groups and keys"
            )


def check_output_folder(overrides: list[str], multirun: bool) -> None:
    """Hydra's output folder (``hydra.run.dir`` / ``hydra.sweep.dir``, by default under
    ``.optlab/`` here) must be creatable: Hydra itself would fail with a traceback."""
    from ..callbacks.base import check_writable

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    chosen = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == key]
    if chosen and not chosen[-1].strip():
        raise ConfigError(
            f"{key} is empty: Hydra would write its files (.hydra/, the log) into the working directory; "
            f"give a folder ({key}=.optlab/my-run), or leave it out"
        )
    folder = chosen[-1].split("${", 1)[0] if chosen else ".optlab/"  # the part before any ${now:...}
    what = key if chosen else f"the working directory {os.getcwd()} (optlab writes .optlab/ and mlflow.db here)"
    try:
        check_writable(os.path.join(folder or ".", "probe"), what)
    except ValueError as error:
        hint = "" if chosen else "; start optlab from a folder you can write in"
        raise ConfigError(f"{error}{hint}") from None


def _sweep_stopped(what: str) -> None:
    from .sweep import STARTED

    if not STARTED or not STARTED[0].exists():  # (Hydra makes the folder as it starts the first job)
        print(f"\noptlab: sweep {what} before its first job: nothing was run or recorded", file=sys.stderr)
        return
    folder = shlex.quote(str(STARTED[0]))
    print(
        f"\noptlab: sweep {what}: runs that had started are marked KILLED, with their metrics; jobs that "
        f"had not started did not run. To run the rest, repeat the command with hydra.sweep.dir={folder}: "
        "jobs that finished are skipped.",
        file=sys.stderr,
    )
