"""A study from start to report, over any way of running jobs.

:class:`Study` plans the runs (:mod:`.spec`), skips those its store already holds, groups the
rest into jobs and hands them to ``launch`` — a function from a list of job payloads to their
results, which the Hydra sweeper (:mod:`.sweeper`) implements with whatever launcher the
command chose (basic, joblib, submitit) and tests implement in-process. Two rounds: tuning,
then the final reruns (the tuned settings and the defaults on the final seeds), which depend on
the tuning's outcome. Then the reduction (:mod:`.reduce`) and the report (:mod:`.report`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable

from ...names import counted
from . import reduce as reducing
from .spec import Spec
from .store import Store, run_job


class Watcher(threading.Thread):
    """Hands ``log`` each trial of a round (a tuning setting's seeds, a final run) as soon as the
    jobs have stored all its runs. A launcher returns a round's results only when its last job
    ends: without this, the MLflow writer could not start on a round's hundreds of children
    before then, even when a core is idle (a worker starting, a round's last jobs) or the
    tracking server is another machine's."""

    def __init__(self, store: Store, runs: list[dict], phase: str, log, found: dict, every: float = 0.5):
        from .tracking import trials_of

        super().__init__(name="optlab-study-watch", daemon=True)
        self.store, self.phase, self.log, self.every = store, phase, log, every
        self.found = dict(found)  # key -> record: those in the store already
        self.waiting = [group for _, group in trials_of(runs, phase)]
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.every):
            try:
                self.poll()
            except OSError:  # (the folder not there yet, a file being replaced): the next look
                continue

    def poll(self) -> None:
        names = {entry.name[:-5] for entry in os.scandir(self.store.runs) if entry.name.endswith(".json")}
        ready, still = [], []
        for group in self.waiting:
            for run in group:
                key = run["key"]
                if key not in self.found and key in names:
                    record = self.store.get(key)
                    if record is not None:
                        self.found[key] = record
            if all(run["key"] in self.found for run in group):
                ready += [{**self.found[run["key"]], **run} for run in group]
            else:
                still.append(group)
        self.waiting = still
        if ready:
            self.log.add(ready, self.phase)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


class StudyFailed(RuntimeError):
    """Some jobs failed: the runs that finished are stored, and repeating the command runs the rest."""


def jobs_of(runs: list[dict], store: Store, size: int, pool: int = 1) -> list[dict]:
    """Runs as job payloads: as few jobs as ``size`` (runs a job at most) allows, since Hydra
    spends 0.2-0.5 s on each; a job's runs ordered by optimizer and problem, so that its kernels
    load once in a fresh process.

    ``pool``: the workers of a pool whose processes outlive a job (joblib's): the jobs are a
    multiple of it and each takes an equal share of every optimizer's runs on every problem, so
    that the workers finish a round together (no estimate of a run's cost is needed: the runs of
    an optimizer on a problem cost about the same). Otherwise (in this process, or a process per
    job as on a cluster) each job is a stretch of that order."""
    groups: dict = {}
    for run in runs:
        groups.setdefault((run["problem"], run["optimizer"]), []).append(run)
    ordered = [run for group in groups.values() for run in group]
    count = -(-len(ordered) // size)
    if pool > 1:
        count = pool * -(-count // pool)
        shares = [[run for group in groups.values() for run in group[j::count]] for j in range(count)]
    else:
        shares = [ordered[len(ordered) * j // count : len(ordered) * (j + 1) // count] for j in range(count)]
    folder = str(store.folder.resolve())
    return [{"store": folder, "runs": share} for share in shares if share]


def in_process(payloads: list[dict]) -> list:
    """Run the jobs one after another in this process (what the basic launcher does, without Hydra)."""
    return [run_job(p) for p in payloads]


class Study:
    """One study: ``spec``, its ``store`` folder, ``launch`` (payloads -> results, each a list of
    records or an exception), ``log`` (a :class:`~.tracking.StudyLog` or None), ``say`` (progress lines)."""

    def __init__(self, spec: Spec, store: Store, launch: Callable = in_process, log=None, say=print, workers=1, pool=1):
        self.spec = spec
        self.store = store
        self.launch = launch
        self.log = log
        self.say = say
        self.counts = {"runs": 0, "reused": 0, "jobs": 0}
        self.finals: list[dict] = []
        self.workers = workers  # jobs at once (for the time per run beyond the runs)
        self.pool = pool  # workers whose processes outlive a job (joblib's), for sharing out the runs
        self.ran: set[str] = set()  # the keys of the runs run now (not found in the store)

    def execute(self, runs: list[dict], phase: str) -> list[dict]:
        """Every run's record: from the store, else run through ``launch``."""
        records, missing = {}, []
        for run in runs:
            found = self.store.get(run["key"])
            if found is not None:
                records[run["key"]] = found
            else:
                missing.append(run)
        self.counts["reused"] += len(records)
        unique = list({r["key"]: r for r in missing}.values())
        if unique:
            payloads = jobs_of(unique, self.store, self.spec.runs_per_job, self.pool)
            self.counts["jobs"] += len(payloads)
            self.say(
                f"optlab: study {self.spec.study_id}: {phase}: {counted(len(unique), 'run')} in "
                f"{counted(len(payloads), 'job')}" + (f" ({len(records)} found done)" if records else "")
            )
            failures = []
            watcher = None
            if self.log is not None:  # the log's writer starts on each trial as soon as its runs are stored
                watcher = Watcher(self.store, runs, phase, self.log, records)
                watcher.start()
            try:
                results = self.launch(payloads)
            finally:
                if watcher is not None:
                    watcher.stop()
            for payload, result in zip(payloads, results):
                if isinstance(result, BaseException):
                    failures.append((payload, result))
                    continue
                for record in result:
                    records[record["key"]] = record
                    self.ran.add(record["key"])
            self.counts["runs"] += sum(1 for r in unique if r["key"] in records)
            if failures:
                payload, error = failures[0]
                first = payload["runs"][0]
                raise StudyFailed(
                    f"{len(failures)} of {len(payloads)} {phase} jobs failed; the first ({first['optimizer']} on "
                    f"{first['problem']}): {type(error).__name__}: {error}. The runs that finished are kept in "
                    f"{self.store.folder}; repeat the command to run the rest"
                )
        elif runs:
            self.say(f"optlab: study {self.spec.study_id}: {phase}: all {len(runs)} runs found done")
        out = [{**records[run["key"]], **run} for run in runs]
        if self.log is not None:
            self.log.add(out, phase)
        return out

    def run(self) -> dict:
        spec = self.spec
        start = time.perf_counter()
        self.store.write("spec.json", json.dumps(spec.protocol(), indent=1, sort_keys=True, default=str) + "\n")
        tuning = self.execute(spec.tuning_runs(), "tuning")
        table = reducing.tuning_table(spec, tuning)
        chosen = reducing.choose(spec, table)
        for (problem, optimizer), best in chosen.items():
            for note in reducing.edge_notes(spec, optimizer, best):
                self.say(f"optlab: warning: {optimizer} on {problem}: {note}")
        finals = self.execute(reducing.final_runs(spec, chosen), "final")
        self.finals = finals
        results = reducing.reduce(spec, tuning, finals, chosen)
        every = tuning + finals
        wall = time.perf_counter() - start
        ran = [r for r in every if r["key"] in self.ran]
        run_seconds = sum(r["wall_seconds"] for r in ran)
        warmup = sum(r.get("warmup_seconds", 0.0) for r in ran)
        now = {
            "wall_seconds": wall,
            "workers": self.workers,
            "train_seconds": sum(r["train_seconds"] for r in ran),
            # (a record stored before fit_seconds was kept counts its steps)
            "fit_seconds": sum(r.get("fit_seconds", r["train_seconds"]) for r in ran),
            "probe_seconds": sum(r.get("probe_seconds", 0.0) for r in ran),
            "run_seconds": run_seconds,
            "warmup_seconds": warmup,
            # the study's own time beyond its runs, counted as if on one worker
            "outside_seconds": max(wall * self.workers - run_seconds - warmup, 0.0),
            "runs": len(every),
            "runs_run": self.counts["runs"],
            "runs_reused": self.counts["reused"],
            "jobs": self.counts["jobs"],
        }
        # the timing the report gives is that of the command that ran the runs: a repeat that finds
        # them all done keeps it (it measured 0 runs in 0 jobs: it replaced the study's real figures)
        earlier = self._earlier_timing() if not now["runs_run"] else None
        results["timing"] = earlier if earlier is not None else now
        results["timing_now"] = now
        # every run's own figures, from its record (what a report can say when no command's timing ran them all)
        results["recorded"] = {
            key: sum(r.get(key, r["train_seconds"] if key == "fit_seconds" else 0.0) for r in every)
            for key in ("train_seconds", "fit_seconds", "warmup_seconds")
        }
        results["spec"] = spec.protocol()
        self.store.write("results.json", json.dumps(results, indent=1, sort_keys=True, default=str) + "\n")
        return results

    def _earlier_timing(self) -> dict | None:
        """The timing in the study's last ``results.json``, if it is that of a command that ran runs."""
        try:
            earlier = json.loads((self.store.folder / "results.json").read_text())["timing"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return earlier if isinstance(earlier, dict) and earlier.get("runs_run") else None
