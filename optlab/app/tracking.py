"""MLflow tracking: every run's config, tags, per-step and per-epoch metrics, plots and status.

Before training, :meth:`MlflowTracker.start` checks the store (a server answers, a sqlite file is
a sound MLflow store, its folder is writable) and creates a missing sqlite store atomically;
an unusable store raises :class:`TrackingError`, one line naming the store and what to do.

During training the loop only appends metrics to a list: each metric is thinned to at most
``max_points`` points (first, last and best always kept). Every ``FLUSH_SECONDS`` (and at the
end, while the plots are drawn) they are handed to a writer thread that logs them with
``log_batch``, retrying a failed write after 0.5, 1 and 2 s. MLflow's store spends about
0.15 ms of Python per metric, holding the interpreter lock meanwhile: a writer busy *during*
training slows it more than the same writes afterwards, hence the long interval.

:meth:`MlflowTracker.close` waits for the writer at most ``flush_timeout`` seconds; whatever the
store did not take by then (or refused) is kept in ``undelivered-<run_id>.jsonl`` for
``python -m optlab.deliver``, and the run still gets its status. A write that got no answer may
have landed all the same: the store is asked before the count is reported, and what it has is
dropped from the file (if it does not answer, the message says "up to"). Plots the store did not
take are kept beside the file, in ``undelivered-<run_id>/``. Figures: docs/tracking.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no detached runs (recording.check_recordable says so)
    fcntl = None

from ..callbacks import Callback
from ..files import _write_atomic, write_text_atomic
from ..hparams import quoted_truth
from . import painter as painting
from .keys import RATE, STEP_LOSS, metric_key, params_of
from .plots import draw
from .recording import default_output_dir, listed
from .store import (
    ADVICE,
    TrackingError,
    _root_cause,
    _short,
    check_store,
    default_uri,
    http_limits,
    scheme_of,
    shown,
    sqlite_path,
    store_lock,
)

BATCH = 1000  # MLflow's limit of metrics per log_batch call
FLUSH_SECONDS = 10.0  # metrics are handed to the writer this often during a run (and all at its end)
SPILL_POINTS = 20_000  # a detached run's points held in memory at most before they are appended to its record
RETRY_DELAYS = (0.5, 1.0, 2.0)  # seconds between the tries of one write (never past close()'s deadline)
MAX_WAITING = 8  # batches waiting for the writer; more are merged into the last one
STATUS_TIMEOUT = 5.0  # seconds granted to set the terminal status once the flush is over
KILL_TIMEOUT = 3.0  # the same after an interrupt
PLOTS_NOT_DRAWN = "not drawn: the run was stopped while it ended"  # its plot_error tag
KILLED_DRAW_TIMEOUT = 3.0  # seconds a stopped run waits for the plot helper (then draws the plots itself)
KEPT_FORMAT = "optlab-undelivered-metrics"
KEPT_NAME = re.compile(r"undelivered-[0-9A-Za-z_-]+\.jsonl")
KEPT_PLOT = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.-]*\.png")  # a kept plot's name, in the folder beside the file
HISTORY_PAGE = 5_000  # points per request when the store is asked what it has (memory: one page)
UNDELIVERED_TAG = "optlab.undelivered"


def hydra_output_dir() -> Path | None:
    """The folder of the running Hydra job (where undelivered metrics are kept), or None outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # no Hydra job: the default folder serves
        pass
    return None


# -- thinning ------------------------------------------------------------------------------------


def stride_for(count: int, max_points: int) -> int:
    """The interval sending at most ``max_points - 2`` of ``count`` points: room is left for the last and the best."""
    if count <= max_points:
        return 1
    return -(-count // (max_points - 2))


class Series:
    """One metric's points: every ``stride``-th from the first is sent at once; the last and the best
    (``direction`` is ``"min"``, ``"max"`` or None) are sent at the end (:meth:`extras`) unless already sent.
    ``points`` keeps those sent, for the plots drawn by this process (``plotted``; a detached run's are
    drawn from its record)."""

    __slots__ = ("best", "count", "last", "lower", "plotted", "points", "stride")

    def __init__(self, stride: int, direction: str | None, plotted: bool = True):
        self.stride = stride
        self.plotted = plotted
        self.lower = None if direction is None else direction == "min"
        self.count = 0
        self.last = None  # (value, timestamp_ms, step, sent)
        self.best = None
        self.points: list[tuple[int, float]] = []  # (step, value) sent, for the plots

    def add(self, value: float, timestamp: int, step: int) -> bool:
        """Record a point; True if it is to be sent now."""
        send = self.count % self.stride == 0
        self.count += 1
        self.last = point = (value, timestamp, step, send)
        lower = self.lower
        if lower is not None and math.isfinite(value):
            best = self.best
            if best is None or (value < best[0] if lower else value > best[0]):
                self.best = point
        if send and self.plotted:
            self.points.append((step, value))
        return send

    def extras(self) -> list[tuple[float, int, int]]:
        """The last and the best points if they were not sent, as (value, timestamp_ms, step)."""
        out = []
        for point in (self.last, self.best):
            if point is not None and not point[3] and not (out and out[0][2] == point[2]):
                out.append((point[0], point[1], point[2]))
        return out


# -- the callback --------------------------------------------------------------------------------


class MlflowTracker(Callback):
    """Logs one MLflow run per training run (see docs/tracking.md for what is recorded).

    ``log_every``: ``"auto"`` sends at most ``max_points`` points of every metric, per-step and
    per-epoch, the first, the last and the best always among them; an integer N sends every
    N-th step's loss and learning rate (plus the last and the best) and every epoch's metrics.
    ``flush_timeout``: seconds :meth:`close` waits for the store. ``output_dir``: where metrics the
    store did not take are kept (default ``.optlab/undelivered/`` in the working directory).

    After :meth:`close`: ``status`` (the terminal status set in the store, or None), ``kept_path``
    and ``kept_count`` (the file of undelivered metrics, or None and 0), ``kept_unconfirmed`` (how
    many of those got no answer from the store and may be in it after all), ``kept_plots`` (the
    plots the store did not take, kept in ``undelivered-<run_id>/`` beside the file).
    """

    registry_name = "mlflow_tracker"

    def __init__(
        self,
        uri,
        experiment,
        config: dict,
        tags: dict,
        run_name: str,
        log_every="auto",
        *,
        max_points: int = 200,
        flush_timeout: float = 10.0,
        output_dir=None,
        objective: str | None = None,
        datasets: list[dict] | None = None,
        plots: bool = True,
        detach: bool = False,
    ):
        super().__init__()
        if not isinstance(plots, bool):
            raise TrackingError(f"tracking.plots must be true or false; received {plots!r}{quoted_truth(plots)}")
        if not isinstance(detach, bool):
            raise TrackingError(f"tracking.detach must be true or false; received {detach!r}{quoted_truth(detach)}")
        if log_every != "auto" and (not isinstance(log_every, int) or isinstance(log_every, bool) or log_every < 1):
            raise TrackingError(f'tracking.log_every must be "auto" or an integer >= 1; received {log_every!r}')
        if not isinstance(max_points, int) or isinstance(max_points, bool) or max_points < 3:
            raise TrackingError(
                f"tracking.max_points must be an integer >= 3 (first, last and best); received {max_points!r}"
            )
        if (
            isinstance(flush_timeout, bool)
            or not isinstance(flush_timeout, (int, float))
            or not 0 <= flush_timeout < math.inf
        ):
            raise TrackingError(
                f"tracking.flush_timeout must be a finite number of seconds >= 0; received {flush_timeout!r}"
            )
        if not isinstance(experiment, str) or not experiment.strip():
            raise TrackingError(
                f"tracking.experiment must be a non-empty name (tracking.experiment=optlab); received {experiment!r}"
            )
        self.uri = uri or default_uri()
        self.experiment = experiment
        self.config = config
        self.tags = tags
        self.run_name = run_name
        self.objective = objective
        self.datasets = datasets or []
        self.log_every = log_every
        self.max_points = max_points
        self.flush_timeout = float(flush_timeout)
        self.output_dir = Path(output_dir) if output_dir is not None else default_output_dir()
        self.run_id = None
        self.experiment_id = None
        self.client = None
        self.status: str | None = None
        self.kept_path: Path | None = None
        self.kept_count = 0
        self.kept_unconfirmed = 0
        self.kept_plots: list[str] = []
        self.kept_error: str | None = None
        self.plots_error: str | None = None
        self.plots = plots  # (tracking.plots)
        self.detach = detach  # (tracking.detach) the run is recorded by a process started at its end
        self.record: str | None = None  # a detached run's record id (its file's name, and a tag of the run)
        self.background: int | None = None  # the pid of the process recording a detached run
        self.spawn_error = ""
        self._drawing: dict | None = None
        self._start_time = 0
        self._store_existed = False
        self._plotted = plots  # this run's plots are drawn at its end (not a sweep's parent's)
        self.metrics_logged = 0  # points handed to the writer
        self.plot_seconds = 0.0  # spent drawing the plots at the run's end (for the benchmark)
        self._closed = False
        self._writer = None
        self._http = None
        self._pending: list = []
        self._last_flush = time.time()
        self._series: dict[str, Series] = {}
        self._step_stride = log_every if log_every != "auto" else 1
        self._epoch_stride = 1
        self._kept: list[str] = []  # the kept metrics, as lines of the kept file
        self._unconfirmed: list[tuple] = []  # kept metrics whose write got no answer: maybe in the store
        self._images: dict[str, bytes] = {}  # plots drawn and not yet taken by the store
        self._painter: painting.Painter | None = None  # the helper process drawing the plots (None: drawn here)
        self._extras_added = False
        self._kept_end: dict | None = None
        self._keep_lock = threading.Lock()
        # a detached run's record, written as its points come (_write_points): the open file (locked),
        # the end of its header and of its last complete point, and the points in it
        self._spill = None
        self._spill_start = self._spill_end = self._spilled = 0
        self._spill_error: str | None = None
        self._step_losses = True
        self._last_rate = None
        self._scheduled = False
        self._clock = time.perf_counter()

    # -- set-up ---------------------------------------------------------------------------
    def start(self, problem=None, plots: bool | None = None, helper: bool = True) -> None:
        """Check the store and open the run; raises TrackingError (one line) if the store cannot be used.

        A missing sqlite store is created atomically; a dead server is found in seconds. With
        ``plots`` (by default ``tracking.plots``; False for a sweep's parent) and ``helper``, the plot helper
        (:mod:`.painter`) starts first, to import matplotlib while this process imports MLflow, and
        loads ``problem`` (the run's, if its path is plotted) meanwhile. Without ``helper`` (a
        parallel sweep's worker, whose neighbours use the other cores) the plots are drawn here.
        """
        self._plotted = plots = self.plots if plots is None else plots
        if self.detach:  # (its plots are drawn by the process that records it)
            self._start_detached()
            return
        if plots and helper:
            self._painter = painting.shared()
            self._painter.start()
            if problem is not None and problem.record_path:
                self._painter.warm(problem)
        self._http = http_limits(self.uri)
        self._http.__enter__()
        try:
            with store_lock(self.uri):  # parallel runs of a sweep must not create one store twice
                self.client = check_store(self.uri)
                self.experiment_id = experiment_id = self._experiment_id()
                with signals_held():  # a signal now waits until the new run is known, so that it can be marked
                    run = self.client.create_run(experiment_id, tags=self.tags, run_name=self.run_name)
                    self.run_id = run.info.run_id
            self._log_start()
        except Exception as exc:
            interrupt = _interrupt_within(exc)
            if interrupt is not None:  # a Ctrl-C that a library turned into its own error: not the store's fault
                self._abort_start("KILLED", "interrupted while the run was being opened")
                raise interrupt from None
            if isinstance(exc, TrackingError):
                self._abort_start("FAILED")
                raise
            self._abort_start("FAILED", _short(exc))
            reason = _root_cause(exc)  # "Connection refused", not a page of urllib3's retry report
            raise TrackingError(f"tracking store {shown(self.uri)}: {reason}{self._opened_note()}; {ADVICE}") from None
        except BaseException:  # Ctrl-C, SIGTERM: no run left RUNNING
            self._abort_start("KILLED", "interrupted while the run was being opened")
            raise

    def _start_detached(self) -> None:
        """A run recorded in the background: nothing of MLflow's in this process. The store, the
        run's folder and optlab's record of background runs are checked; the run is opened by
        the recording process, at its end (see :meth:`_close_detached`)."""
        import uuid

        from .recording import check_recordable
        from .store import preflight

        self._store_existed = preflight(self.uri)
        check_recordable(self.output_dir)
        self.record = uuid.uuid4().hex
        self._start_time = int(time.time() * 1000)

    def reopen(self, run_id: str) -> None:
        """Continue the run ``run_id`` (a repeated sweep's parent): marked RUNNING again, its
        tags updated; raises TrackingError (one line) if the store cannot be used."""
        self._http = http_limits(self.uri)
        self._http.__enter__()
        try:
            self.client = check_store(self.uri)
            self.experiment_id = self._experiment_id()
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            for key, value in self.tags.items():
                self.client.set_tag(run_id, key, value)
            self._log_start()
        except TrackingError:
            self._abort_start("FAILED")
            raise
        except Exception as exc:
            self._abort_start("FAILED", _short(exc))
            raise TrackingError(f"tracking store {shown(self.uri)}: {_root_cause(exc)}; {ADVICE}") from None

    def _abort_start(self, status: str, error: str | None = None) -> None:
        self._closed = True
        if self._writer is not None:
            self._writer.abandon()
        if self.run_id is not None and self.client is not None:
            client, run_id = self.client, self.run_id

            end_time = int(time.time() * 1000)

            def end():
                if error:
                    client.set_tag(run_id, "error", error[:5000])
                client.set_terminated(run_id, status=status, end_time=end_time)

            with signals_held(redeliver=False):  # another signal must not leave the run RUNNING (3 s at most)
                ok, _ = bounded(end, KILL_TIMEOUT)
            self.status = status if ok else None
            if not ok:  # the store failed just after opening the run: its end is kept for optlab.deliver
                tags = {"error": error[:5000]} if error else {}
                self._kept_end = {"status": status, "end_time": end_time, "tags": tags}
                self._keep([])
        self._release_http()

    def _opened_note(self) -> str:
        """After a failed start: what became of the run it had opened, if any."""
        if self.run_id is None:
            return ""
        if self.status is not None:
            return f" (its run {self.run_id} was opened and is marked {self.status})"
        kept = self.undelivered_message()
        return f" (its run {self.run_id} was opened and could not be closed: {kept})"

    def _release_http(self) -> None:
        if self._http is not None:
            self._http.__exit__(None, None, None)
            self._http = None

    def _experiment_id(self) -> str:
        return experiment_id(self.client, self.uri, self.experiment)

    def _log_start(self) -> None:
        log_opening(self.client, self.run_id, params_of(self.config), self.datasets, self.config)
        self._last_flush = time.time()
        self._writer = Writer(self.client, self.run_id, self._keep)
        self._writer.start()

    # -- gathering --------------------------------------------------------------------------
    def _series_for(self, key: str, stride: int, name: str) -> Series:
        """The series of MLflow key ``key``, of the logged name ``name`` (which says its direction)."""
        series = self._series.get(key)
        if series is None:
            from ..callbacks import direction

            problem = getattr(self.trainer, "problem", None)
            way = direction(name, getattr(problem, "metric_directions", None))
            series = self._series[key] = Series(stride, way, plotted=self.record is None)
        return series

    def _add(self, key: str, value: float, timestamp: int, step: int, stride: int, name: str | None = None):
        series = self._series.get(key) or self._series_for(key, stride, name or key)
        if series.add(value, timestamp, step):
            self._pending.append((key, value, timestamp, step))
            self.metrics_logged += 1

    def _maybe_hand_over(self, now: float) -> None:
        if now - self._last_flush >= FLUSH_SECONDS or (self._writer is None and len(self._pending) >= SPILL_POINTS):
            self._last_flush = now
            self._hand_over()

    def _hand_over(self) -> None:
        """The points so far to the writer, or a detached run's to its record (:meth:`_write_points`)."""
        if not self._pending:
            return
        if self._writer is not None:
            self._writer.put(self._pending)  # then cleared: an interrupt in between duplicates, never loses
            self._pending = []
        elif self.record is not None:
            self._write_points()

    def _write_points(self) -> None:
        """Append a detached run's points so far to its record (every ``FLUSH_SECONDS``, as an attached
        run hands them to the store, and whenever ``SPILL_POINTS`` wait), so that a run killed loses
        seconds of them at most and memory does not grow with them (``tracking.log_every=N`` on a
        long run). The record is created by this run (never
        opened if it exists), its header saying the run has not ended, and locked until the run's
        end rewrites it whole; a run killed meanwhile leaves it for ``optlab.deliver``, which
        records the run KILLED with these points. If the folder refuses a write, the points stay
        in memory, as they would without it."""
        if self._spill_error is not None:
            return
        with self._keep_lock:
            metrics, self._pending = self._pending, []
            data = "".join(metric_line(m) + "\n" for m in metrics).encode("utf-8")
            try:
                if self._spill is None:
                    path = self.output_dir / f"undelivered-{self.record}.jsonl"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    spill = open(path, "x+b")
                    try:
                        fcntl.flock(spill.fileno(), fcntl.LOCK_EX)
                        spill.write((json.dumps(self._kept_header()) + "\n").encode("utf-8"))
                        spill.flush()
                    except BaseException:
                        spill.close()
                        path.unlink()
                        raise
                    self._spill = spill
                    self._spill_start = self._spill_end = spill.tell()
                    with contextlib.suppress(OSError):  # listed: later commands name it, should the run be killed
                        listed(path, self.uri)
                self._spill.seek(self._spill_end)
                self._spill.write(data)
                self._spill.flush()
            except OSError as exc:
                self._spill_error = f"{exc.strerror or exc}"
                self._pending = metrics + self._pending
                return
            self._spill_end += len(data)
            self._spilled += len(metrics)

    # -- callback hooks ---------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        trainer = self.trainer
        if self.log_every == "auto":  # planned totals: an early stop or a resumed run sends fewer points
            self._step_stride = stride_for(trainer.epochs * trainer.steps_per_epoch, self.max_points)
            self._epoch_stride = stride_for(trainer.epochs, self.max_points)
        # one step per epoch: the epoch's mean loss is that step's loss, sent once
        self._step_losses = trainer.steps_per_epoch > 1
        self._last_rate = None
        self._scheduled = getattr(trainer.optimizer, "learning_rate_schedule", None) is not None
        self._clock = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if not logs:
            return
        now = time.time()
        timestamp, step = int(now * 1000), self.trainer.step
        loss, lr = logs.get("loss"), logs.get("learning_rate")
        if loss is not None and self._step_losses:
            self._add(STEP_LOSS, float(loss), timestamp, step, self._step_stride, "loss")
        if lr is not None:
            lr = float(lr)
            # a schedule's rate is a curve, thinned as the loss; a constant rate one point (and one
            # more wherever a callback changes it: every change is sent)
            if lr != self._last_rate or self._scheduled:
                self._add(RATE, lr, timestamp, step, self._step_stride if self._scheduled else 1)
                self._last_rate = lr
        self._maybe_hand_over(now)

    def on_epoch_end(self, epoch, logs=None):
        now = time.time()
        timestamp, step = int(now * 1000), self.trainer.step
        for key, value in (logs or {}).items():
            if key == "learning_rate":
                continue  # the per-step curve has it
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            self._add(metric_key(key), value, timestamp, step, self._epoch_stride, key)
        self._maybe_hand_over(now)

    def on_train_end(self, logs=None):
        trainer = self.trainer  # the trainer's own clock: the seconds the command line prints
        seconds = getattr(trainer, "seconds", None) if trainer is not None else None
        self._seconds = seconds if seconds is not None else time.perf_counter() - self._clock

    def _add_summary(self) -> None:
        """The run in a few numbers, at its last step, for the runs table: the best of every metric
        with a direction (``best/<name>``, ``best_epoch/<name>``), ``objective`` (the run's metric
        at the end, negated where higher is better, so that lower is better in every run),
        ``summary/steps``, ``summary/epochs``, ``summary/train_seconds`` and, where the problem has
        a target, ``target/reached`` (0 or 1) and the ``target/steps``, ``target/epochs`` and
        ``target/seconds`` it took."""
        from ..callbacks import direction

        trainer = self.trainer
        if trainer is None or not trainer.step:
            return
        history = trainer.history
        timestamp, step = int(time.time() * 1000), trainer.step
        points = {
            "summary/steps": trainer.step,
            "summary/epochs": len(history.epoch) and history.epoch[-1] + 1,
            "summary/train_seconds": getattr(self, "_seconds", time.perf_counter() - self._clock),
        }
        directions = trainer.problem.metric_directions
        for name in history.history:
            way = direction(name, directions)
            found = history.best(name, way) if way is not None else None
            if found is not None:
                points[f"best/{name}"], points[f"best_epoch/{name}"] = found[0], found[1] + 1
        values = history.history.get(self.objective or "")
        way = direction(self.objective or "", directions)
        if values and way is not None:
            points["objective"] = values[-1] if way == "min" else -values[-1]
        if trainer.target is not None:
            reached = trainer.target_reached
            points["target/reached"] = float(reached is not None)
            if reached is not None:  # (what it took: only when it was reached)
                points.update({f"target/{k}s": v for k, v in reached.items() if k in ("epoch", "step")})
                points["target/seconds"] = reached["seconds"]
        self._pending.extend((key, float(value), timestamp, step) for key, value in points.items())
        self.metrics_logged += len(points)

    # -- the end ----------------------------------------------------------------------------
    def close(self, status: str, error: str | None = None) -> None:
        """Write the metrics (within ``flush_timeout``), log the plots, end the run with ``status``.

        What the store did not take is kept in ``kept_path`` (plots beside it); what it may have
        taken without answering is asked about first (:meth:`_confirm`). A ``KeyboardInterrupt``
        (Ctrl-C, SIGTERM as ``Terminated``) while waiting stops the wait: the rest is kept, the
        run is marked KILLED (a FAILED run stays FAILED), and the interrupt goes on. Keeping the
        rest and setting the status are not interrupted (signals wait a few seconds at most). A
        no-op (``status`` None) if no run was opened.
        """
        if self._closed:
            return
        self._closed = True
        if self.record is not None:
            self._close_detached(status, error)
            return
        if self.run_id is None or self._writer is None:
            self.status = None
            self._release_http()
            return
        deadline = time.monotonic() + self.flush_timeout
        plot_error, drawn = None, False
        try:
            self._add_extras()
            self._add_summary()
            self._hand_over()
            self._writer.finish(deadline)
            drawing = time.perf_counter()
            try:  # drawn while the writer stores the last metrics
                self._images = self._render(status) if self._plotted else {}
            except painting.PlotFailed as exc:  # drawing raised in the helper: "Type: message"
                plot_error = str(exc)
            except Exception as exc:  # a plot must never hide the run's own outcome
                plot_error = exc
            self.plot_seconds = time.perf_counter() - drawing
            drawn = True
            self._writer.wait(deadline)
            if self._images:  # until the deadline (1 s at least); what the store does not take is kept
                bounded(self._log_images, max(deadline - time.monotonic(), 1.0))
            with signals_held():
                self._keep_unwritten()
            self._confirm(max(deadline, time.monotonic() + 1.0))
        except KeyboardInterrupt as interrupt:
            final = status if status in ("FAILED", "KILLED") else "KILLED"
            if not drawn and plot_error is None and self._plotted:  # said, as a failed drawing is
                plot_error = PLOTS_NOT_DRAWN
            with signals_held(redeliver=False):
                self._keep_unwritten()
                self._end(final, error or str(interrupt) or "interrupted (Ctrl-C)", plot_error, KILL_TIMEOUT)
            raise
        with signals_held():  # a Ctrl-C now waits (a few seconds at most) for the status to be set
            self._keep_unwritten()
            self._end(status, error, plot_error or self.plots_error, STATUS_TIMEOUT)

    def _close_detached(self, status: str, error: str | None) -> None:
        """Write the run's record (its start, every point, what its plots show, its end) in the run's
        folder, and start the process that records it in the store and draws its plots
        (:mod:`.recording`). Signals wait for it (a fraction of a second)."""
        from .recording import spawn

        with signals_held():
            self._add_extras()
            self._add_summary()
            tags = {"error": error[:5000]} if error else {}
            self._kept_end = {"status": status, "end_time": int(time.time() * 1000), "tags": tags}
            self._drawing = self._drawing_request() if self._plotted else None
            metrics, self._pending = self._pending, []
            self._keep(metrics)
            if self.kept_path is not None and self.kept_error is None:
                try:
                    self.background = spawn(self.kept_path, self.uri)
                except OSError as exc:
                    self.spawn_error = f"the process recording it could not be started ({exc.strerror or exc})"
            if self._spill is not None:  # (rewritten whole above, or left as it was if that failed)
                self._spill.close()
            self.status = status

    def _drawing_request(self) -> dict:
        """What a detached run's plots show, for the process that draws them (:func:`.deliver.draw_recorded`):
        the metrics drawn (their points are the record's), and on a 2-D problem the path."""
        drawing = {"title": self.run_name, "series": sorted(self._series)}
        trainer = self.trainer
        if trainer is not None and trainer.problem.record_path and trainer.history.path:
            history = trainer.history
            start = None if history.start is None else np.asarray(history.start, dtype=float).tolist()
            drawing.update(path=np.asarray(history.path, dtype=float).tolist(), start=start)
        return drawing

    def _add_extras(self) -> None:
        """Each metric's last and best points, if not sent yet (once; a repeat after an interrupt is harmless)."""
        if not self._extras_added:
            extras = [(key, *point) for key, series in self._series.items() for point in series.extras()]
            self._pending.extend(extras)
            self.metrics_logged += len(extras)
            self._extras_added = True

    def _keep_unwritten(self) -> None:
        self._add_extras()
        rest, unconfirmed = self._writer.abandon()
        rest += self._pending
        self._pending = []
        if rest:
            self._keep(rest, unconfirmed)
        if self._images:
            self._keep_images()

    def _confirm(self, until: float) -> None:
        """Drop from the kept file the metrics the store has after all, if it answers before ``until``.

        A write that got no answer (a timeout, a connection lost midway) may have been committed:
        only those metrics are asked about, once the writer's last call is over (it may land
        yet). If the store does not answer in time they stay kept, counted as unconfirmed, and
        the message says "up to": delivery skips what the store has.
        """
        if not self._unconfirmed or not self._writer.wait(until) or until <= time.monotonic():
            return
        asked = list(self._unconfirmed)
        found: list = []
        keys = {m[0] for m in asked}
        ok, _ = bounded(lambda: found.append(stored_digests(self.client, self.run_id, keys)), until - time.monotonic())
        if not ok:
            return
        landed = np.isin(digests(asked), found[0])
        drop = {metric_line(m) for m, there in zip(asked, landed) if there}
        with signals_held():
            with self._keep_lock:
                self._kept = [line for line in self._kept if line not in drop]
                self._unconfirmed = self._unconfirmed[len(asked) :]
            self._keep([])

    def _end(self, status, error, plot_error, timeout) -> None:
        """The tags and the terminal status, within ``timeout`` s; kept for ``optlab.deliver`` if the store fails."""
        from mlflow.entities import RunTag

        client, run_id = self.client, self.run_id
        tags = {}
        if plot_error is not None:
            text = plot_error if isinstance(plot_error, str) else f"{type(plot_error).__name__}: {plot_error}"
            tags["plot_error"] = text[:5000]
        if error:
            tags["error"] = error[:5000]
        if self.kept_count or self.kept_plots:
            tags[UNDELIVERED_TAG] = f"{self._kept_what()} kept in {self.kept_path}{self._unconfirmed_note()}"[:5000]
        end_time = int(time.time() * 1000)

        def finish():
            if tags:
                client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            client.set_terminated(run_id, status=status, end_time=end_time)

        ok, _ = bounded(finish, timeout)
        self.status = status if ok else None
        if not ok:  # kept too: `python -m optlab.deliver` sets it
            self._kept_end = {"status": status, "end_time": end_time, "tags": tags}
            self._keep([])
        self._release_http()

    # -- metrics the store did not take --------------------------------------------------------
    def _keep(self, metrics, unconfirmed: int = 0) -> None:
        """Add ``metrics`` (key, value, timestamp_ms, step) to the kept file, rewritten atomically.

        The first ``unconfirmed`` of them were sent and got no answer: the store may have them.
        Called by the writer (for what the store refused) and by :meth:`close` (for what it did
        not take in time); the writer's hand-over makes sure no metric is passed twice. A file
        left with nothing to deliver (all confirmed stored) is removed: this run wrote it.
        """
        with self._keep_lock:
            metrics = list(metrics)
            self._unconfirmed.extend(metrics[:unconfirmed])
            self._kept.extend(map(metric_line, metrics))
            path = self.output_dir / f"undelivered-{self.run_id or self.record}.jsonl"
            header = self._kept_header(self._spilled + len(self._kept))
            try:
                if self._spill is not None:  # a detached run's points written so far, then the rest
                    _write_atomic(os.fspath(path), lambda file: self._write_record(file, header))
                elif self._kept or self._kept_end is not None or self.kept_plots:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_text_atomic(path, "\n".join([json.dumps(header), *self._kept]) + "\n")
                else:
                    path.unlink(missing_ok=True)
                    path = None
            except OSError as exc:
                self.kept_error = f"{path}: {exc.strerror or exc}"
                self.kept_path = None
            else:
                self.kept_error = None
                self.kept_path = path
            self.kept_count = self._spilled + len(self._kept)
            self.kept_unconfirmed = len(self._unconfirmed)

    def _kept_header(self, points: int | None = None) -> dict:
        """The first line of a kept file: what it is for, how the run ended (None: not yet), and how
        many ``points`` the file holds (None: a record still being written)."""
        header = {
            "format": KEPT_FORMAT,
            "version": 1,
            "tracking_uri": self.uri,
            "experiment": self.experiment,
            "run_id": self.run_id,
            "run_name": self.run_name,
            "end": self._kept_end,
            "plots": self.kept_plots,  # in the folder undelivered-<run_id>/ beside this file
            "points": points,  # (a copy cut short is told from the whole file by it)
        }
        if self.record is not None:  # a detached run: the store has nothing of it yet
            header.update(record=self.record, start=self._recorded_start(), drawing=self._drawing)
        return header

    def _write_record(self, file, header: dict) -> None:
        """A detached run's whole record: ``header``, the points appended so far (up to the last one
        written whole), the rest."""
        file.write((json.dumps(header) + "\n").encode("utf-8"))
        self._spill.seek(self._spill_start)
        left = self._spill_end - self._spill_start
        while left:
            chunk = self._spill.read(min(left, 1 << 20))
            if not chunk:
                raise OSError(f"{self._spill.name} is shorter than was written to it")
            file.write(chunk)
            left -= len(chunk)
        if self._kept:
            file.write(("\n".join(self._kept) + "\n").encode("utf-8"))

    def _keep_images(self) -> None:
        """Keep the plots the store did not take as files in ``undelivered-<run_id>/``, beside the kept metrics."""
        with self._keep_lock:
            images, self._images = self._images, {}
        folder = self.output_dir / f"undelivered-{self.run_id or self.record}"
        kept = []
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for name, data in images.items():
                _write_atomic(os.fspath(folder / name), lambda file, data=data: file.write(data))
                kept.append(name)
        except OSError as exc:
            self.plots_error = (
                f"{', '.join(n for n in images if n not in kept)} not kept ({folder}: {exc.strerror or exc})"
            )
        if kept:
            self.kept_plots = sorted({*self.kept_plots, *kept})
            self._keep([])

    def _recorded_start(self) -> dict:
        """What opening the run logs (:meth:`start`), for the process that records a detached run."""
        return {
            "start_time": self._start_time,
            "tags": self.tags,
            "params": params_of(self.config),
            "config": self.config,
            "datasets": self.datasets,
            "store_existed": self._store_existed,  # (one that went away meanwhile is not made anew)
        }

    def _kept_what(self) -> str:
        """``up to 96 metrics and the plots curves.png, path.png``: what the kept file holds."""
        what = []
        if self.kept_count:
            what.append(f"{'up to ' if self.kept_unconfirmed else ''}{self.kept_count} metrics")
        if self.kept_plots:
            what.append(f"the plot{'s' if len(self.kept_plots) > 1 else ''} {', '.join(self.kept_plots)}")
        return " and ".join(what)

    def _unconfirmed_note(self) -> str:
        if not self.kept_unconfirmed:
            return ""
        return (
            f" ({self.kept_unconfirmed} of the metrics were sent without an answer and may be stored already; "
            "delivery skips those)"
        )

    def undelivered_message(self) -> str | None:
        """One line for the user if anything did not reach the store (None if everything did).

        True numbers: "up to N metrics" when the store did not say whether it took some of them.
        """
        store = shown(self.uri)
        if self.record is not None:
            return self._detached_message(store)
        what = []
        if self.kept_count or self.kept_plots:
            what.append(f"{self._kept_what()} could not be written to {store}{self._unconfirmed_note()}")
        if self._kept_end is not None:
            what.append(f"the run's status ({self._kept_end['status']}) could not be set in {store}")
        if self.plots_error is not None:
            what.append(f"plots {self.plots_error}")
        if self.kept_error is not None:
            return f"{' and '.join(what) or 'metrics could not be written'}, nor kept locally ({self.kept_error})"
        if self.kept_path is None:
            return f"{what[0]}" if what else None
        path = self.kept_path
        where = f"{path} and {path.with_suffix('')}{os.sep}" if self.kept_plots else f"{path}"
        return f"{' and '.join(what)}; kept in {where}; deliver them with: python -m optlab.deliver {path}"

    def _detached_message(self, store: str) -> str | None:
        lost = f"; plots {self.plots_error}" if self.plots_error is not None else ""
        if self.kept_error is not None and self._spill is not None:
            return (
                f"its record could not be completed ({self.kept_error}); the points it had written so far are in "
                f"{self._spill.name}: python -m optlab.deliver {self._spill.name} records the run in {store} with "
                "them, marked KILLED"
            )
        if self.kept_error is not None:
            return f"its record could not be written ({self.kept_error}), so nothing of it will be in {store}"
        if self.kept_path is not None and self.background is None:
            return (
                f"its record is kept in {self.kept_path}, but {self.spawn_error}; record it in {store} with: "
                f"python -m optlab.deliver {self.kept_path}{lost}"
            )
        return lost[2:] or None

    def ui_hint(self) -> str:
        """The line telling where to see the run: a tracking server's own page for it; for a store
        without a server (sqlite, a database), the ``mlflow ui`` command to start on it, then that page."""
        from urllib.parse import urlsplit, urlunsplit

        page = f"/#/experiments/{self.experiment_id}/runs/{self.run_id}" if self.run_id is not None else "/"
        if scheme_of(self.uri) in ("http", "https"):
            url = urlsplit(self.uri)
            host = url.netloc.rpartition("@")[2]  # no user or password in a line on the screen
            return f"open it at:  {urlunsplit((url.scheme, host, url.path.rstrip('/'), '', ''))}{page}"
        uri = shown(self.uri)
        import shlex

        backend = shlex.quote(uri if "://" in uri else f"file:{uri}")  # (a folder's name with a space)
        return f"open it with:  mlflow ui --backend-store-uri {backend} --host 127.0.0.1   then http://127.0.0.1:5000{page}"

    # -- artifacts --------------------------------------------------------------------------
    def _render(self, status: str = "FINISHED") -> dict[str, bytes]:
        """The run's plots as PNG bytes: loss and learning-rate curves, and the path on 2-D problems;
        drawn by the plot helper, or here if it cannot (:mod:`.painter`). A run that was stopped
        (KILLED) waits for the helper ``KILLED_DRAW_TIMEOUT`` s at most: a scheduler's SIGKILL follows
        its SIGTERM in 30 s, and the run must have its status by then."""
        request = self.plot_request()
        if self._painter is not None:
            try:
                return self._painter.draw(request, KILLED_DRAW_TIMEOUT if status == "KILLED" else None)
            except painting.Unavailable:
                pass
        return draw(request)

    def plot_request(self) -> dict:
        """What the plots show (:func:`.plots.draw`): the points sent for each metric, and the path."""
        series = {name: sorted(s.points + [(p[2], p[0]) for p in s.extras()]) for name, s in self._series.items()}
        request = {"title": self.run_name, "series": series}
        trainer = self.trainer
        if trainer is not None and trainer.problem.record_path and trainer.history.path:
            history = trainer.history
            request.update(problem=trainer.problem, path=np.array(history.path), start=history.start)
        return request

    def _log_images(self) -> None:
        """Log the drawn plots one by one; each one the store took is no longer to be kept."""
        with tempfile.TemporaryDirectory() as folder:
            for name, data in list(self._images.items()):
                file = Path(folder) / name
                file.write_bytes(data)
                self.client.log_artifact(self.run_id, str(file))
                with self._keep_lock:
                    self._images.pop(name, None)


def experiment_id(client, uri: str, name: str) -> str:
    """The id of the active experiment ``name`` in the store, created if missing (its artifacts beside a
    local sqlite store); TrackingError (one line) for a deleted one or one that cannot be created."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        database = sqlite_path(uri) if scheme_of(uri) == "sqlite" else None
        if database is not None and "MLFLOW_TRACKING_URI" not in os.environ:
            location = (database.parent / "mlartifacts").as_uri()  # absolute: a relative URI works too
        try:
            return client.create_experiment(name, artifact_location=location)
        except Exception as exc:
            experiment = client.get_experiment_by_name(name)  # a parallel run created it
            if experiment is None:
                raise TrackingError(
                    f"tracking store {shown(uri)}: cannot create experiment {name!r} "
                    f"({_short(exc)}); pick another name with tracking.experiment=..., or {ADVICE}"
                ) from None
    if experiment.lifecycle_stage != "active":
        raise TrackingError(
            f"tracking store {shown(uri)}: experiment {name!r} is deleted; restore it with "
            f"`mlflow experiments restore --experiment-id {experiment.experiment_id}` "
            f"(MLFLOW_TRACKING_URI={shown(uri)}), or pick another name with tracking.experiment=..."
        )
    return experiment.experiment_id


def log_opening(client, run_id: str, params: dict, datasets: list, config: dict, run=None) -> None:
    """What opening a run logs: its params (100 a call), its data sets and ``config.yaml`` (none for a
    sweep's parent). With ``run`` (the run as the store has it: a delivery continued after a crash),
    only the params and data sets it lacks; ``config.yaml`` is replaced by the same file."""
    import yaml
    from mlflow.entities import Param

    have = run.data.params if run is not None else {}
    items = [Param(str(k), str(v)) for k, v in params.items() if str(k) not in have]
    for first in range(0, len(items), 100):
        client.log_batch(run_id, params=items[first : first + 100])
    if datasets and (run is None or not run.inputs.dataset_inputs):
        client.log_inputs(run_id, datasets=dataset_inputs(datasets))
    if config:
        client.log_text(run_id, yaml.safe_dump(config, sort_keys=False), "config.yaml")


def dataset_inputs(datasets: list[dict]):
    """A problem's data sets (``Problem.datasets()``: name, split, size, seed, source) as MLflow
    dataset inputs: one per split, its context the split, its digest the description's hash."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = []
    for data in datasets:
        described = json.dumps(data, sort_keys=True)
        dataset = Dataset(
            name=str(data["name"]),
            digest=hashlib.sha256(described.encode()).hexdigest()[:8],
            source_type="code" if data.get("generated") else "scikit-learn",
            source=json.dumps({"source": data.get("source", "")}),
            profile=json.dumps({"num_rows": data.get("size"), "seed": data.get("seed")}),
        )
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", str(data["split"]))]))
    return inputs


class Writer(threading.Thread):
    """Logs batches of (key, value, timestamp_ms, step) with ``log_batch``, off the training thread.

    A chunk the store refuses is tried again after each of ``RETRY_DELAYS`` (never past the
    deadline that :meth:`finish` sets); then it and the rest of its batch go to ``keep``, the
    chunk marked unconfirmed (the store may have committed a write whose answer was lost).
    :meth:`abandon` stops the writer and returns everything not yet written or kept.
    """

    def __init__(self, client, run_id: str, keep):
        super().__init__(name="optlab-mlflow-writer", daemon=True)
        self.client, self.run_id, self.keep = client, run_id, keep
        self.cond = threading.Condition()
        self.todo: list[list] = []
        self.current: list = []
        self.done = 0  # items of `current` written or kept
        self.sending = 0  # items of `current` from `done` on in a write not yet answered
        self.closing = False
        self.abandoned = False
        self.deadline: float | None = None
        self.written = 0
        self.error: str | None = None

    def put(self, batch: list) -> None:
        with self.cond:
            if len(self.todo) >= MAX_WAITING:
                self.todo[-1].extend(batch)
            else:
                self.todo.append(batch)
            self.cond.notify_all()

    def finish(self, deadline: float) -> None:
        """No more batches: write what is waiting, and stop retrying at ``deadline`` (time.monotonic)."""
        with self.cond:
            self.closing = True
            self.deadline = deadline
            self.cond.notify_all()

    def abandon(self) -> tuple[list, int]:
        """Stop; returns what is neither written nor kept, and how many of it (at its head) are in a
        write still under way, which may land yet."""
        with self.cond:
            self.abandoned = True
            rest = self.current[self.done :] + [m for batch in self.todo for m in batch]
            unconfirmed = min(self.sending, len(rest))
            self.todo, self.current, self.done, self.sending = [], [], 0, 0
            self.cond.notify_all()
        return rest, unconfirmed

    def wait(self, deadline: float) -> bool:
        """Wait for the writer until ``deadline``; True if it is done. Interruptible (Ctrl-C)."""
        while self.is_alive():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.join(min(left, 0.1))
        return True

    def run(self) -> None:
        from mlflow.entities import Metric

        while True:
            with self.cond:
                while not self.todo and not self.closing and not self.abandoned:
                    self.cond.wait()
                if self.abandoned or not self.todo:
                    return
                self.current = batch = [m for b in self.todo for m in b]
                self.todo, self.done = [], 0
            for start in range(0, len(batch), BATCH):
                chunk = batch[start : start + BATCH]
                with self.cond:
                    self.sending = len(chunk)
                if self._write([Metric(*m) for m in chunk]):
                    with self.cond:
                        if self.abandoned:
                            return
                        self.written += len(chunk)
                        self.done, self.sending = start + len(chunk), 0
                    continue
                with self.cond:  # the store is down now: keep the rest, try the next batch afresh
                    if self.abandoned:  # close() has taken them
                        return
                    self.done, self.sending = len(batch), 0
                self.keep(batch[start:], len(chunk))
                break

    def _write(self, metrics) -> bool:
        for attempt in range(len(RETRY_DELAYS) + 1):
            try:
                self.client.log_batch(self.run_id, metrics=metrics)
                return True
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {_short(exc)}"
            if attempt == len(RETRY_DELAYS):
                return False
            with self.cond:
                wake = time.monotonic() + RETRY_DELAYS[attempt]
                while not self.abandoned and (left := wake - time.monotonic()) > 0:
                    if self.deadline is not None and wake > self.deadline:
                        return False
                    self.cond.wait(left)
                if self.abandoned:
                    return False
        return False


# -- the kept file -------------------------------------------------------------------------------


_KEYS: dict[str, str] = {}


def _interrupt_within(error: BaseException) -> BaseException | None:
    """The Ctrl-C / SIGTERM behind ``error``: one in its chain of causes, or the signal this
    process's run received (a library that catches ``BaseException`` may hide it entirely)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    running = sys.modules.get("optlab.app.run")  # the run's signal handler records the signal there
    if running is not None and running.STOPPED_BY is not None:
        return running.stopped_by(running.STOPPED_BY)
    return None


def metric_line(metric) -> str:
    """``["loss", 0.25, 1795612202301, 7]``: one metric (key, value, timestamp_ms, step) as a JSON line.

    Twice as fast as ``json.dumps`` (an interrupted close() may keep 100,000s); NaN and
    infinities as Python's json writes and reads them.
    """
    key, value, timestamp, step = metric
    quoted = _KEYS.get(key)
    if quoted is None:
        quoted = _KEYS[key] = json.dumps(key)
    value = float(value)
    text = repr(value) if math.isfinite(value) else "NaN" if value != value else ("-" if value < 0 else "") + "Infinity"
    return f"[{quoted}, {text}, {int(timestamp)}, {int(step)}]"


def read_kept_header(path: Path, file=None) -> dict:
    """The header of a file of undelivered metrics; TrackingError if optlab did not write it.
    ``file``: the file already open for reading (text), read from its start instead of ``path``."""
    if file is None and not path.exists():
        raise TrackingError(f"{path}: no such file (kept files are named undelivered-<run id>.jsonl)")
    if not KEPT_NAME.fullmatch(path.name) or (file is None and not path.is_file()):
        raise TrackingError(_not_kept(path))
    try:
        with _kept_lines(path if file is None else file) as lines:
            first = lines.readline()
        header = json.loads(first) if first else None
    except OSError as exc:
        raise TrackingError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError):
        raise TrackingError(_not_kept(path)) from None
    if not first:
        raise TrackingError(
            f"{path} is empty: its run was killed as it created it, before anything was in it; "
            "there is nothing to deliver (remove it)"
        )
    plots = header.get("plots", []) if isinstance(header, dict) else None
    if (
        not isinstance(header, dict)
        or header.get("format") != KEPT_FORMAT
        or not isinstance(plots, list)
        or not all(isinstance(name, str) and KEPT_PLOT.fullmatch(name) for name in plots)
    ):
        raise TrackingError(_not_kept(path))
    return header


@contextlib.contextmanager
def _kept_lines(source):
    """A kept file's lines from its start: ``source`` is its path, or the file open for reading (text)."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, encoding="utf-8") as file:
            yield file
    else:
        source.seek(0)
        yield source


def kept_metrics(source):
    """The metrics of a kept file (``source``: its path, or the file open for reading, read from its
    start), one (key, value, timestamp_ms, step) at a time: memory does not grow with the file.
    TrackingError at the first line that is not one, except an unfinished last line (no newline): a
    detached run's record, written as the run goes, ends so if the run was killed as it wrote."""
    try:
        with _kept_lines(source) as file:
            file.readline()
            for line in file:
                if not line.endswith("\n"):
                    break  # (every line written whole ends with one)
                if not line.strip():
                    continue
                metric = json.loads(line)
                if not (
                    type(metric) is list
                    and len(metric) == 4
                    and isinstance(metric[0], str)
                    and type(metric[1]) in (float, int)
                    and type(metric[2]) is int
                    and type(metric[3]) is int
                ):
                    raise ValueError
                yield tuple(metric)
    except (ValueError, UnicodeDecodeError):
        raise TrackingError(_not_kept(getattr(source, "name", source))) from None


def read_kept(path: Path) -> tuple[dict, list[tuple]]:
    """The header and all the metrics of a kept file (in memory: for small files and tests)."""
    return read_kept_header(path), list(kept_metrics(path))


def _not_kept(path: Path) -> str:
    return f"{path} is not a file of undelivered metrics written by optlab (undelivered-<run id>.jsonl)"


_MAX = sys.float_info.max


def metric_digest(key: str, value: float, timestamp: int, step: int) -> bytes:
    """16 bytes that name one point as a store tells points apart: by key, timestamp, step and value.

    The value as the store gives it back: MLflow's SQL stores keep +-inf as the largest finite
    float, and -0.0 comes back as 0.0. Collisions (2**-128) are no concern at any size.
    """
    value = float(value)
    if value != value:
        text = "nan"
    else:
        text = repr(max(-_MAX, min(_MAX, value)) + 0.0)
    return hashlib.blake2b(f"{key}\0{int(timestamp)}\0{int(step)}\0{text}".encode(), digest_size=16).digest()


def digests(metrics) -> np.ndarray:
    """The :func:`metric_digest` of each (key, value, timestamp_ms, step), as an array of 16-byte strings."""
    return np.frombuffer(b"".join(metric_digest(*m) for m in metrics), dtype="S16")


def stored_points(client, run_id: str, key: str):
    """Every point of metric ``key`` in the run, as MLflow ``Metric`` entities, ``HISTORY_PAGE`` at a time.

    Through the store's paged call, so that memory holds one page; where a client has none, its
    (unpaged) ``get_metric_history``.
    """
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if store is None:
        yield from client.get_metric_history(run_id, key)
        return
    token = None
    while True:
        page = store.get_metric_history(run_id, key, max_results=HISTORY_PAGE, page_token=token)
        yield from page
        token = getattr(page, "token", None)
        if not token:
            return


def stored_digests(client, run_id: str, keys) -> np.ndarray:
    """The sorted :func:`metric_digest` of every point the store has for ``keys`` in the run: 16 bytes per point."""
    found = [
        digests((m.key, m.value, m.timestamp, m.step) for m in stored_points(client, run_id, key))
        for key in sorted(keys)
    ]
    return np.unique(np.concatenate(found)) if found else np.array([], dtype="S16")


# -- helpers -------------------------------------------------------------------------------------


def bounded(function, timeout: float) -> tuple[bool, BaseException | None]:
    """Call ``function`` on a helper thread, waiting at most ``timeout`` s: (succeeded, its error or a TimeoutError)."""
    box: dict = {}

    def target():
        try:
            function()
            box["ok"] = True
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="optlab-mlflow-call", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return False, TimeoutError(f"no answer within {timeout:g} s")
    return "ok" in box, box.get("error")


@contextlib.contextmanager
def signals_held(redeliver: bool = True):
    """SIGINT and SIGTERM wait until the block is over (then, with ``redeliver``, act as they would have).

    Keeps the undelivered metrics and the terminal status from being cut off half-written.
    Only on the main thread (elsewhere a no-op).
    """

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, OSError):
            previous[signum] = signal.signal(signum, lambda number, frame: caught.append((number, frame)))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if redeliver and caught:
            signum, frame = caught[0]
            handler = previous.get(signum)
            if callable(handler):
                handler(signum, frame)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)
