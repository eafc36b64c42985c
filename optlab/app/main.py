"""``python -m optlab``: the Hydra command line.

python -m optlab                                   # Adam on the digits MLP, logged to MLflow
python -m optlab optimizer=sgd optimizer.learning_rate=0.05 trainer.epochs=5
python -m optlab -m optimizer=sgd,adam,rmsprop     # a sweep: one logged run per choice
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

from .config import ConfigError, check_overrides, register_configs


def _fail(message: str) -> None:
    print(f"optlab: error: {message}", file=sys.stderr)
    sys.exit(2)


def _task(cfg):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from . import run as running
    from .run import RunStopped, finished_job, run

    if running.STOPPED_BY is not None:  # a worker of a sweep that is stopping: start nothing new
        sys.exit(128 + running.STOPPED_BY)

    try:
        conf = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except Exception as error:  # an interpolation that does not resolve
        _fail(str(error).splitlines()[0])
    sweep = {}
    hydra_conf = HydraConfig.get()
    if str(hydra_conf.mode) == "RunMode.MULTIRUN":
        sweep = {
            "sweep": hydra_conf.sweep.dir,
            "sweep_job": hydra_conf.job.num,
            "sweep_job_id": hydra_conf.job.id,
            "sweep_overrides": " ".join(hydra_conf.overrides.task),
        }
        done = finished_job(hydra_conf.runtime.output_dir, sweep["sweep_overrides"])
        if done is not None:  # a repeated sweep (same hydra.sweep.dir) runs only what did not finish
            print(f"optlab: job {hydra_conf.job.num} ({sweep['sweep_overrides']}) finished before; skipped")
            return done["value"]
    try:
        return run(conf, sweep, hydra_conf.runtime.output_dir)
    except ConfigError as error:
        _fail(str(error))
    except RunStopped as stopped:
        print(f"\noptlab: {stopped}", file=sys.stderr)
        if stopped.code in (130, 143) and os.environ.get(SWEEP_PARENT, str(os.getpid())) != str(os.getpid()):
            # a sweep's worker process (joblib): its run is closed; end the process, so that the
            # parent, waiting for its workers, knows, and the worker takes no further job
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(stopped.code)
        sys.exit(stopped.code)


#: how long a sweep's parent waits for its workers to close their runs after a signal
WORKER_GRACE_SECONDS = 20.0
#: set by a sweep's parent process (its pid), inherited by the workers it starts
SWEEP_PARENT = "OPTLAB_SWEEP_PARENT"


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


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


@contextlib.contextmanager
def sweep_signals():
    """In a sweep's parent: the first SIGTERM or Ctrl-C lets the workers (joblib's processes)
    close their runs before the parent stops.

    SIGTERM is passed on to the workers (each marks its run KILLED, keeping its metrics, as a
    single run does); after Ctrl-C, which the terminal already sent to every worker, the parent
    only waits. Either way it waits up to ``WORKER_GRACE_SECONDS`` for them, then stops the
    sweep (joblib kills whatever is left). Jobs of the sweep that had not started do not run;
    ``hydra.sweep.dir=<the sweep's folder>`` runs them later (see :func:`finished_job`). A
    second signal exits at once. In-process jobs (Hydra's basic launcher) replace this handler
    with their own while they run.
    """
    from .run import Terminated, handling

    received = []

    def handler(signum, frame):
        received.append(signum)
        if len(received) > 1:
            os._exit(128 + signum)
        children = _children()
        if signum == signal.SIGTERM:
            for pid in children:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + WORKER_GRACE_SECONDS
        while time.monotonic() < deadline:
            children = [pid for pid in children if _running(pid) and not _ignores_signals(pid)]
            if not children:
                break
            time.sleep(0.1)
        if signum == signal.SIGTERM:
            raise Terminated("terminated (SIGTERM)")
        raise KeyboardInterrupt("interrupted (Ctrl-C)")

    handler.optlab_sweep = True  # a job running in this process (basic launcher) installs its own
    with handling(handler):
        yield


def _ignores_signals(pid: int) -> bool:
    """True for a helper process that ignores SIGTERM (loky's resource tracker): not a worker."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("SigIgn:"):
                    return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    except OSError:
        return True
    return False


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m optlab`` (and the ``optlab`` console script)."""
    import hydra

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        check_overrides([a for a in argv if not a.startswith("-") and "=" in a])
    except ConfigError as error:
        _fail(str(error))
    register_configs()
    sys.argv = [sys.argv[0], *argv]
    entry = hydra.main(config_path="../conf", config_name="config", version_base="1.3")(_task)
    if not ({"-m", "--multirun"} & set(argv)):
        entry()
        return
    os.environ[SWEEP_PARENT] = str(os.getpid())
    try:
        with sweep_signals():
            entry()
    except KeyboardInterrupt as interrupt:  # the parent of joblib's workers
        from .run import Terminated

        _sweep_stopped(str(interrupt) or "interrupted")
        sys.exit(143 if isinstance(interrupt, Terminated) else 130)
    except SystemExit as stop:  # a job that ran in this process (basic launcher) was stopped by a signal
        if stop.code in (130, 143):
            _sweep_stopped("stopped")
        raise


def _sweep_stopped(what: str) -> None:
    print(
        f"\noptlab: sweep {what}: runs that had started are marked KILLED, with their metrics; jobs that "
        "had not started did not run. To run the rest, repeat the command with hydra.sweep.dir=<the sweep's "
        "folder, printed above>: jobs that finished are skipped.",
        file=sys.stderr,
    )
