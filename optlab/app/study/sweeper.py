"""The study, run by Hydra's sweeper interface: jobs go through ``sweeper.launcher``, whatever it is.

Each job is one call of the study app's task function with the override ``job=<payload>`` (a
group of runs, :func:`.store.encode`); the launcher runs it in this process (basic), in
joblib's workers, or as a SLURM job (submitit), and hands back its records. The process that
called the sweeper plans, reduces, reports and writes MLflow.
"""

from __future__ import annotations

import shlex
import signal
import sys
import time
from pathlib import Path

from ...names import counted
from ..run import Terminated, handling, raise_stop
from .reduce import significance_note
from .report import beyond_training
from .runner import Study, StudyFailed
from .spec import Spec, SpecError
from .store import ROOT, Store, StudyBusy, encode


def _fail(message: str, code: int = 2):
    print(f"optlab: error: {message}", file=sys.stderr)
    sys.exit(code)


def spec_of(config) -> Spec:
    from omegaconf import OmegaConf

    keys = [k for k in config if k not in ("hydra", "tracking", "job")]
    conf = OmegaConf.to_container(OmegaConf.masked_copy(config, keys), resolve=True)
    return Spec.from_config(conf)


def sweep(sweeper, arguments: list[str]) -> dict:
    config = sweeper.config
    try:
        spec = spec_of(config)
    except SpecError as error:
        _fail(str(error))
    if any(a.split("=", 1)[0].lstrip("+~") == "job" for a in arguments):
        _fail("`job` is set by the study for its own jobs; leave it out")
    store = Store(ROOT / spec.study_id)
    try:
        with store.lock():
            return _sweep(sweeper, arguments, spec, store)
    except StudyBusy as error:
        _fail(str(error))


def _sweep(sweeper, arguments: list[str], spec: Spec, store: Store) -> dict:
    from hydra.core.utils import JobStatus
    from omegaconf import OmegaConf

    from .app import COMMAND

    config = sweeper.config
    command = shlex.join(COMMAND or ["python", "-m", "optlab.study", *sys.argv[1:]])
    tracking = OmegaConf.to_container(config.tracking, resolve=True) if "tracking" in config else {}
    log = None
    if (tracking or {}).get("enabled"):
        from ..store import TrackingError
        from .tracking import StudyLog

        log = StudyLog(tracking, spec, command)
        try:
            log.open()
        except TrackingError as error:
            _fail(str(error))
        except KeyboardInterrupt as stop:  # (the tracker has ended a parent run it had opened)
            tracker = log.tracker
            what = "no MLflow run was recorded"
            if tracker.run_id is not None:
                what = f"its MLflow parent run {tracker.run_id} is marked {tracker.status or 'RUNNING (not closed)'}"
            reason = str(stop) or "interrupted (Ctrl-C)"
            print(
                f"\noptlab: study stopped, {reason}, while its MLflow store was opened, before any of its runs: {what}",
                file=sys.stderr,
            )
            sys.exit(_status(stop))
    next_index = [0]

    def launch(payloads: list[dict]) -> list:
        batch = [[*arguments, f"job={encode(p)}"] for p in payloads]
        try:
            returns = sweeper.launcher.launch(batch, initial_job_idx=next_index[0])
        except Exception as error:  # a signal inside a library whose cleanup raised over it (Hydra's config
            from ..tracking import _interrupt_within  # reader's `finally: f.close()`, f unbound): the signal

            interrupt = _interrupt_within(error)
            if interrupt is None:
                raise
            raise interrupt from None
        next_index[0] += len(batch)
        out = []
        for job in returns:
            if job.status == JobStatus.COMPLETED:
                out.append(job.return_value)
            else:
                out.append(
                    job._return_value if isinstance(job._return_value, BaseException) else RuntimeError("failed")
                )
        return out

    print(
        f"optlab: study {spec.study_id}: {counted(len(spec.optimizers), 'optimizer')} x "
        f"{counted(len(spec.problems), 'problem')}, {counted(spec.budget, 'trial')} x "
        f"{counted(spec.seeds, 'seed')} each, "
        f"the best rerun on {counted(spec.final_seeds, 'seed')}; folder {store.folder}"
    )
    note = significance_note(spec)
    if note:  # said before the runs: the seeds can still be changed
        print(f"optlab: warning: {note}", file=sys.stderr)
    from ..cores import sweep_workers

    workers = sweep_workers(config.hydra)
    study = Study(spec, store, launch, log, workers=workers, pool=workers)
    status = "FAILED"
    try:
        with handling(raise_stop):  # the runs that finished are stored, the parent marked KILLED
            results = study.run()
        from .report import write_report

        report = write_report(spec, results, store.folder / "report", command=command, finals=study.finals)
        status = "FINISHED"
    except StudyFailed as error:
        if log is not None:
            log.close("FAILED")  # (if the store did not take the status, `finally` says so)
        _fail(str(error), 1)
    except KeyboardInterrupt as stop:
        status = "KILLED"
        if log is not None:
            log.close("KILLED", timeout=10)
            _report_parent(log)
        reason = str(stop) or "interrupted (Ctrl-C)"
        parent = ""
        if log is not None and log.tracker.status is not None:
            parent = f"; its MLflow parent run {log.run_id} is marked {log.tracker.status}"
        print(
            f"\noptlab: study stopped, {reason}: the runs that finished are kept in {store.folder}{parent}; "
            "repeat the command to run the rest",
            file=sys.stderr,
        )
        sys.exit(_status(stop))
    finally:
        if status == "FAILED" and log is not None and log.tracker.status is None:
            log.close("FAILED", timeout=10)
            _report_parent(log)
    if log is not None:
        try:
            waiting = log.pending()
            if waiting:
                print(f"optlab: writing {waiting} runs to MLflow ...", flush=True)
            log.close("FINISHED", results, report)
        except KeyboardInterrupt as stop:  # the study is done: only its record in MLflow is cut short
            if log.tracker.status is None:
                log.close("KILLED", timeout=10)
            _report_parent(log)
            print(
                f"\noptlab: study {spec.study_id} finished, its report is in {Path(report) / 'report.md'}; stopped, "
                f"{str(stop) or 'interrupted (Ctrl-C)'}, while its runs were written to MLflow: the parent run "
                f"{log.run_id} is marked {log.tracker.status or 'RUNNING (not closed)'}; repeat the command to "
                "write the rest (no run is run again)",
                file=sys.stderr,
            )
            sys.exit(_status(stop))
        _report_parent(log)
        if log.unwritten:
            print(
                f"optlab: warning: MLflow: {counted(log.unwritten, 'child run')} not written ({log.error}); their "
                f"runs are kept in {store.folder}: repeat the command to write them",
                file=sys.stderr,
            )
        elif log.error:
            print(f"optlab: warning: MLflow: {log.error}", file=sys.stderr)
    timing = results.get("timing_now", results["timing"])  # this command's
    from .app import STARTED

    whole = time.perf_counter() - STARTED[0] if STARTED else timing["wall_seconds"]
    beyond = f"; beyond training, {beyond_training(timing, whole) * 1000:.0f} ms per run" if timing["runs_run"] else ""
    print(
        f"optlab: study {spec.study_id} done in {whole:.1f} s, the whole command ({timing['runs_run']} runs, "
        f"{timing['runs_reused']} reused; training {timing.get('fit_seconds', 0.0):.1f} s{beyond})"
    )
    print(f"optlab: report: {Path(report) / 'report.md'}")
    if log is not None:
        print(f"optlab: MLflow: parent run {log.run_id} ({log.written} child runs written)")
    return results


def _status(stop: KeyboardInterrupt) -> int:
    """The exit status of a study stopped by ``stop``: 128 + its signal (130 Ctrl-C, 143 SIGTERM)."""
    return 128 + getattr(stop, "signum", signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)


def _report_parent(log) -> None:
    """One line if the study's parent run did not get its status or metrics: what is kept for
    ``python -m optlab.deliver`` (the tracker keeps them; a run left RUNNING unsaid is a silent loss)."""
    message = log.tracker.undelivered_message()
    if message:
        print(f"optlab: warning: MLflow: the study's parent run: {message}", file=sys.stderr)
