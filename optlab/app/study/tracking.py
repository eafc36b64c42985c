"""A study in MLflow: one parent run, a nested child run per tuning trial and per final run.

The parent (tags ``optlab.kind=study``, ``optlab.study=<name>-<hash>``) holds the protocol as
params, the versions and the core count as tags, the report as artifacts and each optimizer's
AlgoPerf score as a metric. Its children (``mlflow.parentRunId``) are:

- a **tuning trial**: one setting on its tuning seeds (tags ``optlab.arm=tuning``,
  ``optlab.seeds``), with the setting as params and ``score`` plus each seed's value as metrics;
- a **final** or **defaults** run: one seed (tag ``optlab.seed``), with the metric along the
  run (at the geometric schedule's steps, where a target was reached, and at the end), its final
  and best values, and the steps to each level of the ladder.

Children are written by a background thread at the lowest priority while the study goes on,
each trial as soon as its runs are stored (:class:`~.runner.Watcher`). In a SQL store (sqlite's
by default) what is queued is written in one transaction (:mod:`.bulk`: ~1 ms a child, where
MLflow's client takes ~30 ms of CPU); through a server, or if that transaction fails, each
child through the client. A repeated study finds its parent by its tag and writes only the
children it does not have (tag ``optlab.trial``: the trial's run keys), completing any an
earlier attempt left unfinished. Only the process that runs the study writes: jobs on a
cluster need no access to the tracking server.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ..keys import KIND_TAG, STUDY_TAG, metric_key
from .bulk import Child, bulk_writer

#: the writer thread's niceness, above the runs' (0)
WRITER_NICENESS = 19
TRIAL_TAG = "optlab.trial"
#: children written in one transaction, at most
BATCH = 64
#: children written at once to a tracking server
SERVER_WRITERS = 4


def trials_of(records: list[dict], phase: str) -> list[tuple[str, list[dict]]]:
    """Records as MLflow children: tuning runs grouped by setting (one trial), final runs one each."""
    if phase != "tuning":
        return [(r["key"], [r]) for r in records]
    groups: dict = {}
    for r in records:
        groups.setdefault((r["problem"], r["optimizer"], repr(sorted(r["hparams"].items()))), []).append(r)
    out = []
    for runs in groups.values():
        key = hashlib.sha256(",".join(sorted(r["key"] for r in runs)).encode()).hexdigest()[:16]
        out.append((key, runs))
    return out


class StudyLog:
    """The study's parent run and the writer of its children (see the module's docs)."""

    def __init__(self, tracking: dict, spec, command: str):
        from ..run import source_tags
        from ..tracking import MlflowTracker

        self.spec = spec
        self.tracker = MlflowTracker(
            tracking.get("uri"),
            tracking.get("experiment", "optlab"),
            {**spec.protocol(), "problems": [p.label for p in spec.problems]},
            {
                KIND_TAG: "study",
                STUDY_TAG: spec.study_id,
                "mlflow.note.content": f"`{command}`",
                "optlab.cores": str(os.cpu_count()),
                "optlab.machine": platform.machine(),
                **_versions(),
                **source_tags(),
                "mlflow.source.name": "python -m optlab.study",
            },
            f"study {spec.study_id}",
        )
        self.logged: set[str] = set()
        self.queued = 0  # children handed to the writer
        self.written = 0
        self.unwritten = 0  # children that could not be written, twice, or not in time
        self.error: str | None = None
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._partial: dict = {}  # trial key -> [run id, logged yet]: a child an earlier attempt left unfinished

    @property
    def run_id(self) -> str:
        return self.tracker.run_id

    def open(self) -> None:
        """Open the parent, or reopen the one an earlier run of this study left; TrackingError if the store fails."""
        from ..store import check_store, store_lock

        with store_lock(self.tracker.uri):  # another command may be creating the same sqlite store
            client = check_store(self.tracker.uri)
        earlier = None
        experiment = client.get_experiment_by_name(self.tracker.experiment)
        if experiment is not None:
            found = client.search_runs(
                [experiment.experiment_id],
                f"tags.`{STUDY_TAG}` = '{self.spec.study_id}' and tags.`{KIND_TAG}` = 'study'",
                max_results=1,
            )
            earlier = found[0].info.run_id if found else None
        if earlier:
            self.tracker.reopen(earlier)
            children = client.search_runs(
                [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{earlier}'", max_results=50000
            )
            for child in children:  # one left unfinished (its writes failed, or kill -9) is completed, not made again
                key = child.data.tags.get(TRIAL_TAG)
                if child.info.status == "FINISHED":
                    self.logged.add(key)
                else:
                    self._partial[key] = [child.info.run_id, bool(child.data.metrics)]
        else:
            self.tracker.start(plots=False)  # (the parent run has no curves of its own)
        self._thread = threading.Thread(target=self._write_all, name="optlab-study-log", daemon=True)
        self._thread.start()

    def add(self, records: list[dict], phase: str) -> None:
        """Queue ``records``' children (those not logged before) for the writer."""
        for key, runs in trials_of(records, phase):
            if key not in self.logged:
                self.logged.add(key)
                self.queued += 1
                self._queue.put([key, runs, phase, *self._partial.pop(key, [None, False])])

    def _write_all(self) -> None:
        # below the runs: writing must not come out of the timed steps of the runs beside it (the
        # quick study's training took 103 s with the writer at the runs' priority, 90 s at
        # niceness 10, 74 s at 19 as with no tracking, when a child cost ~30 ms of CPU; Linux
        # sets a thread's own niceness, and threads it starts inherit it; elsewhere, no change)
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICENESS)
        bulk = bulk_writer(self.tracker.client)
        # a server's answers take round trips, not this process's CPU: several children at once
        remote = bulk is None and self.tracker.uri.startswith(("http://", "https://"))
        with ThreadPoolExecutor(SERVER_WRITERS if remote else 1, thread_name_prefix="optlab-study-log") as pool:
            failed, done = [], False
            while not done:
                items = [self._queue.get()]  # what is queued, up to a batch, written together
                while items[-1] is not None and len(items) < BATCH and not self._queue.empty():
                    items.append(self._queue.get_nowait())
                done = items[-1] is None
                items = [item for item in items if item is not None]
                new = [item for item in items if item[3] is None] if bulk else []
                if new:
                    try:  # one transaction: the whole batch, or nothing (then each child through the client)
                        self.written += len(bulk.write(self.tracker.experiment_id, [self._child(i) for i in new]))
                        items = [item for item in items if item[3] is not None]  # those an earlier attempt began
                    except Exception:
                        pass
                failed += self._attempt_all(pool, items)
            # once more for those that failed (a store busy for a moment, a server restarting); a
            # child created before the failure is completed, not made twice. What still fails is
            # written by the next attempt of the study (its runs are in the study's folder), and reported.
            self.unwritten = len(self._attempt_all(pool, failed))
            if not self.unwritten:
                self.error = None  # what failed once was written on the second try: nothing to report

    def _attempt_all(self, pool, items: list) -> list:
        """Write ``items`` through the client, on ``pool``'s threads; those that failed."""
        done = list(pool.map(self._attempt, items))
        self.written += sum(done)
        return [item for item, ok in zip(items, done) if not ok]

    def _attempt(self, item: list) -> bool:
        try:
            self._write(item)
        except Exception as exc:  # the study goes on; what was not logged is reported
            first = (str(exc).strip().splitlines() or [""])[0]  # (not SQLAlchemy's statement and its link)
            self.error = f"{type(exc).__name__}: {first}"[:300]
            return False
        return True

    def _child(self, item: list) -> Child:
        """What the child of ``item`` (``[key, runs, phase, ...]``) holds."""
        key, runs, phase = item[:3]
        first = runs[0]
        tags = {
            "mlflow.parentRunId": self.run_id,
            STUDY_TAG: self.spec.study_id,
            TRIAL_TAG: key,
            KIND_TAG: "study-run",
            "optlab.arm": first["arm"],
            "optlab.optimizer": first["optimizer"],
            "optlab.problem": first["problem"],
        }
        setting = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in first["hparams"].items())
        params = {k: str(v) for k, v in first["hparams"].items()}
        params.update(optimizer=first["optimizer"], problem=first["problem"])
        metric = metric_key(first["metric"])
        if phase == "tuning":
            tags["optlab.seeds"] = ",".join(str(r["seed"]) for r in runs)
            values = [r[self.spec.score] for r in runs]
            finite = all(v == v and abs(v) != float("inf") for v in values)
            metrics = [("score", sum(values) / len(values) if finite else float("nan"), 0)]
            metrics += [(f"seed/{j}", v, 0) for j, v in enumerate(values)]
            name = f"{first['optimizer']} {setting or 'defaults'} on {first['problem']} (tuning)"
        else:
            r = first
            tags["optlab.seed"] = str(r["seed"])
            problem = next(p for p in self.spec.problems if p.label == r["problem"])
            tags["optlab.target"] = (
                f"{problem.metric} {'<=' if problem.direction == 'min' else '>='} {problem.target:g}"
            )
            tags["optlab.curve"] = metric
            params["seed"] = str(r["seed"])
            reached = dict(_reached(self.spec, r))
            metrics = [(metric, p[3], int(p[0])) for p in _curve(r["points"], set(reached.values()))]
            metrics += [(f"final/{first['metric']}", r["final"], 0), (f"best/{first['metric']}", r["best"], 0)]
            metrics += [("summary/train_seconds", r["train_seconds"], 0), ("summary/steps", r["steps"], 0)]
            metrics += [(f"target/steps_to_{level:g}", step, 0) for level, step in reached.items()]
            what = "defaults" if r["arm"] == "defaults" else setting
            name = f"{r['optimizer']} {what} on {r['problem']} seed={r['seed']}"
        return Child(name[:250], tags, params, metrics)

    def _write(self, item: list) -> None:
        """One child through MLflow's client: ``item`` is ``[key, runs, phase, run id once created, logged yet]``."""
        from mlflow.entities import Metric, Param

        client, child = self.tracker.client, self._child(item)
        if item[3] is None:
            item[3] = client.create_run(self.tracker.experiment_id, tags=child.tags, run_name=child.name).info.run_id
        if not item[4]:
            now = int(time.time() * 1000)
            metrics = [Metric(k, v, now, step) for k, v, step in child.metrics]
            client.log_batch(item[3], metrics=metrics, params=[Param(k, v) for k, v in child.params.items()])
            item[4] = True
        client.set_terminated(item[3], "FINISHED")

    def close(self, status: str, results: dict | None = None, report=None, timeout: float = 600.0) -> None:
        """Wait for the children (up to ``timeout`` s), log the results and the report to the parent, end it."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            if self._thread.is_alive():  # the store holds them up (locked, a server not answering)
                self.unwritten = self.queued - self.written
                self.error = self.error or f"the store did not take them within {timeout:g} s"
        client, run_id = self.tracker.client, self.run_id
        with contextlib.suppress(Exception):
            if results is not None:
                from mlflow.entities import Metric

                now = int(time.time() * 1000)
                metrics = [Metric(f"algoperf/{k}", v, now, 0) for k, v in results["algoperf"].items()]
                timing = results.get("timing", {})
                metrics += [Metric(f"summary/{k}", float(v), now, 0) for k, v in timing.items()]
                client.log_batch(run_id, metrics=metrics)
        if report is not None:
            try:
                client.log_artifacts(run_id, str(report), "report")
            except Exception as exc:
                self.error = self.error or f"report not logged: {exc}"[:300]
        self.tracker.close(status)

    def pending(self) -> int:
        return self._queue.qsize()


def _curve(points: list, keep: set) -> list:
    """The points of a run's curve worth a row in MLflow's store (~0.1 ms each, and a full-batch
    run evaluates at every step): the geometric schedule's steps, the steps where a target was
    first reached, and the last; the run's file keeps them all."""
    from .trial import geometric_steps

    if not points:
        return []
    wanted = set(geometric_steps(int(points[-1][0]))) | keep
    return [p for p in points if p[0] in wanted]


def _reached(spec, record: dict):
    from . import measures
    from .reduce import _points

    problem = next(p for p in spec.problems if p.label == record["problem"])
    for level in measures.target_ladder(problem.target, problem.direction, spec.ladder):
        step = measures.time_to_target(_points(record), level, problem.direction)["step"]
        if step != float("inf"):
            yield level, step


def _versions() -> dict:
    import numba
    import numpy

    from ... import __version__

    return {"optlab.version": __version__, "numpy.version": numpy.__version__, "numba.version": numba.__version__}
