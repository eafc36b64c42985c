"""Keras's callbacks (semantics, argument names and defaults), plus a threshold stop."""

from __future__ import annotations

import contextlib
import csv
import math
import os
import sys
import weakref

import numpy as np

from ..files import create_temp, remove_stale_temps
from ..hparams import Hyper
from .base import (
    Callback,
    Monitor,
    as_array_state,
    check_fields,
    check_writable,
    is_count,
    is_finite_number,
    is_number,
    numbers,
)


class History(Callback):
    """Records every epoch's logs: ``history.history["loss"]`` is the list of epoch losses.

    The trainer always adds one and returns it from ``fit()``. ``history.epoch`` lists the
    epochs recorded, ``history.path`` the parameters after each recorded step for problems
    that record their path (the 2-D test functions).

    Memory is bounded whatever the run's length: once more than ``max_points`` epochs (or
    path points) are kept, every other one is dropped and only every second epoch is kept
    from then on (the stride doubles), so between ``max_points / 2`` and ``max_points``
    remain, evenly spaced. The first and the last epoch are always kept, and ``best(key)``
    gives the exact best value and its epoch over *every* epoch, dropped ones included.
    Runs shorter than ``max_points`` epochs keep everything, as Keras does.
    """

    registry_name = "history"
    max_points = Hyper(100_000, kind=int, low=2, doc="epochs (and path points) kept at most; beyond, evenly thinned")

    def on_train_begin(self, logs=None):
        if not hasattr(self, "history") or self.trainer is None or not self.trainer.resumed:
            self.epoch: list[int] = []
            self.history: dict[str, list] = {}
            self.path: list[np.ndarray] = []
            #: the parameters before the first step, for problems that record the path
            self.start = None
            if self.trainer is not None and self.trainer.problem.record_path and self.trainer.params is not None:
                self.start = self.trainer.params.flat.astype(np.float64)
            self.stride = 1  # epochs are recorded when epoch % stride == 0
            self.path_stride = 1  # path points after steps s with (s - 1) % path_stride == 0
            self.path_recorded = 0
            self._extremes: dict[str, list] = {}  # key -> [min, epoch, max, epoch] over unrecorded epochs
        self._last = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if epoch % self.stride:
            self._last = (epoch, dict(logs))
            self._track(epoch, logs)
            return
        self._last = None
        self.epoch.append(epoch)
        history = self.history
        for key, value in logs.items():
            try:
                history[key].append(value)
            except KeyError:  # a name's first epoch
                history[key] = [value]
        if len(self.epoch) > self.__dict__["max_points"]:  # (the Hyper's value, without its descriptor)
            self._thin()

    def _track(self, epoch: int, logs: dict) -> None:
        for key, value in logs.items():
            if not is_finite_number(value):
                continue
            value = float(value)
            ext = self._extremes.get(key)
            if ext is None:
                self._extremes[key] = [value, epoch, value, epoch]
                continue
            if value < ext[0]:
                ext[0], ext[1] = value, epoch
            if value > ext[2]:
                ext[2], ext[3] = value, epoch

    def _thin(self) -> None:
        """Drop every recorded epoch that is not a multiple of twice the stride (the first stays)."""
        stride = 2 * self.stride
        keep = [i for i, e in enumerate(self.epoch) if e % stride == 0]
        dropped = [i for i, e in enumerate(self.epoch) if e % stride]
        for i in dropped:
            e = self.epoch[i]
            self._track(e, {k: v[i] for k, v in self.history.items() if len(v) == len(self.epoch)})
        for key, values in self.history.items():
            if len(values) == len(self.epoch):
                self.history[key] = [values[i] for i in keep]
            else:  # a name logged only in some epochs: thin its own list evenly
                self.history[key] = values[::2]
        self.epoch = [self.epoch[i] for i in keep]
        self.stride = stride

    def record_step(self, step: int, flat: np.ndarray, last: bool = False) -> None:
        """Keep the parameters after ``step`` (1-based) on the path, thinned like the epochs;
        ``last=True`` (the trainer's final step) keeps them whatever the stride."""
        if (step - 1) % self.path_stride:
            if last:
                self.path.append(flat.astype(np.float64))
            return
        if last and self.path_recorded == step:
            return
        self.path.append(flat.astype(np.float64))
        self.path_recorded = step
        if len(self.path) > self.max_points:
            self.path = self.path[::2]
            self.path_stride *= 2

    def on_train_end(self, logs=None):
        if self._last is not None:  # the last epoch is always kept, thinned or not
            epoch, logs = self._last
            self.epoch.append(epoch)
            for key, value in logs.items():
                self.history.setdefault(key, []).append(value)
            self._last = None

    def best(self, key: str, mode: str = "min") -> tuple[float, int] | None:
        """The smallest (``mode="min"``) or largest finite value of ``key`` over every epoch, and its epoch."""
        candidates = []
        values = self.history.get(key, [])
        epochs = self.epoch if len(values) == len(self.epoch) else range(len(values))
        candidates = [(float(v), e) for v, e in zip(values, epochs) if is_finite_number(v)]
        ext = self._extremes.get(key) if hasattr(self, "_extremes") else None
        if ext is not None:
            candidates += [(ext[0], ext[1]), (ext[2], ext[3])]
        if not candidates:
            return None
        pick = min if mode == "min" else max
        # ties go to the earliest epoch, as a scan of the full list would
        return pick(candidates, key=lambda c: (c[0], c[1] if mode == "min" else -c[1]))

    def get_state(self):
        state = {
            "epoch": list(self.epoch),
            "history": {k: list(v) for k, v in self.history.items()},
            "stride": self.stride,
            "path_stride": self.path_stride,
            "path_recorded": self.path_recorded,
            "extremes": {k: list(v) for k, v in self._extremes.items()},
        }
        if self.path:
            state["path"] = np.array(self.path)
        return state

    def check_state(self, state):
        def histories(value):
            return isinstance(value, dict) and all(isinstance(k, str) and numbers(v) for k, v in value.items())

        def positive(value):
            return is_count(value) and value >= 1

        check_fields(
            state,
            {
                "epoch": (lambda v: isinstance(v, list) and all(map(is_count, v)), "a list of epochs", True),
                "history": (histories, "a dict of name -> list of numbers", True),
                "stride": (positive, "an integer >= 1", False),
                "path_stride": (positive, "an integer >= 1", False),
                "path_recorded": (is_count, "an integer >= 0", False),
                "extremes": (histories, "a dict of name -> list of numbers", False),
                "path": (lambda v: np.ndim(v) == 2 and np.shape(v)[1:] == (2,), "an array of (x, y) points", False),
            },
        )

    def set_state(self, state):
        self.epoch = list(state["epoch"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.path = list(state["path"]) if "path" in state else []
        self.stride = int(state.get("stride", 1))
        self.path_stride = int(state.get("path_stride", 1))
        self.path_recorded = int(state.get("path_recorded", 0))
        self._extremes = {k: list(v) for k, v in state.get("extremes", {}).items()}


class LearningRateScheduler(Callback):
    """Sets the learning rate at the start of every epoch: ``lr = schedule(epoch, lr)``.

    ``schedule`` is a function ``(epoch, lr) -> lr`` (or ``epoch -> lr``, Keras's old form), or
    a learning-rate schedule (an ``optlab.schedules`` instance or config) evaluated at the epoch.
    Epochs count from 0. The optimizer's learning rate must be a number, not a schedule.
    """

    registry_name = "learning_rate_scheduler"
    schedule = Hyper(Hyper.REQUIRED, kind=object, doc="(epoch, lr) -> lr, or a schedule (instance or config)")
    verbose = Hyper(0, kind=int, low=0, doc="print the new rate each epoch")

    def check(self):
        if isinstance(self.schedule, dict):
            from .. import schedules

            self.schedule = schedules.get(self.schedule)
        if not callable(self.schedule):
            raise ValueError(f"LearningRateScheduler: `schedule` must be callable; received {self.schedule!r}")

    def get_config(self):
        from ..schedules import LearningRateSchedule

        if not isinstance(self.schedule, LearningRateSchedule):
            raise TypeError("LearningRateScheduler with a function as schedule has no plain-data config")
        return {"name": self.registry_name, "schedule": self.schedule.get_config(), "verbose": self.verbose}

    def on_epoch_begin(self, epoch, logs=None):
        from ..schedules import LearningRateSchedule

        group = getattr(self.trainer.optimizer, "optimizers", None)  # a MultiOptimizer: each one, as Keras
        for optimizer in group or [self.trainer.optimizer]:
            if isinstance(self.schedule, LearningRateSchedule):
                lr = self.schedule(epoch)
            else:
                try:
                    lr = self.schedule(epoch, float(optimizer.learning_rate))
                except TypeError:  # Keras's old one-argument form
                    lr = self.schedule(epoch)
            if not isinstance(lr, (float, np.floating)) and not (isinstance(lr, int) and not isinstance(lr, bool)):
                raise ValueError(f"The output of the `schedule` function should be a float. Got: {lr!r}")
            optimizer.learning_rate = float(lr)
            if self.verbose > 0:
                whose = f"{optimizer.name} " if group else ""
                print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting {whose}learning rate to {float(lr)}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.trainer.optimizer.rate_logs())


class EarlyStopping(Monitor):
    """Stops training when ``monitor`` has stopped improving for ``patience`` epochs (Keras's rules).

    An epoch improves when the value beats the best so far by more than ``min_delta``; the
    wait counter restarts only if it also beats ``baseline`` (when given). Training stops at
    the end of an epoch (never the first) once ``wait >= patience``. Epochs before
    ``start_from_epoch`` are ignored. With ``restore_best_weights``, the parameters of the
    best epoch are put back at the end of training, whether or not it stopped early.
    """

    registry_name = "early_stopping"
    positional = ("monitor", "min_delta", "patience", "verbose", "mode", "baseline", "restore_best_weights")
    patience = Hyper(0, kind=int, low=0, doc="epochs without improvement before stopping")
    verbose = Hyper(0, kind=int, low=0, doc="print when stopping")
    baseline = Hyper(None, optional=True, allow_inf=True, doc="a value to beat for the wait to restart")
    restore_best_weights = Hyper(False, kind=bool, doc="restore the best epoch's parameters at the end")
    start_from_epoch = Hyper(0, kind=int, low=0, doc="epochs to wait before monitoring")

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_weights = None
        self.best_epoch = 0

    def on_epoch_end(self, epoch, logs=None):
        self._direction()  # Keras settles the direction first: an unknown one raises even if the metric is missing
        current = self._current(logs, "Early stopping")
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = as_array_state(self.trainer.params)
            self.best_epoch = epoch
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = as_array_state(self.trainer.params)
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.trainer.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            for p, best in zip(self.trainer.params, self.best_weights):
                p[...] = best

    def get_state(self):
        state = {
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
        }
        if self.best_weights is not None:
            state["best_weights"] = list(self.best_weights)
        return state

    def check_state(self, state):
        check_fields(
            state,
            {
                "wait": (is_count, "an integer >= 0", True),
                "stopped_epoch": (is_count, "an integer >= 0", True),
                "best": (lambda v: v is None or is_number(v), "a number", True),
                "best_epoch": (lambda v: v is None or (is_number(v) and int(v) == v), "an epoch", True),
                "best_weights": (lambda v: isinstance(v, list), "a list of arrays", False),
            },
        )

    def set_state(self, state):
        self.wait, self.stopped_epoch = state["wait"], state["stopped_epoch"]
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        weights = state.get("best_weights")
        self.best_weights = None if weights is None else [np.array(w) for w in weights]


class ReduceLROnPlateau(Monitor):
    """Multiplies the learning rate by ``factor`` when ``monitor`` has not improved for ``patience`` epochs.

    Keras's rules: the rate never goes below ``min_lr``. After a reduction the wait counter
    is held at 0 for ``cooldown`` epochs — counted down *before* it is checked, so
    ``cooldown=1`` delays nothing and ``cooldown=2`` skips one epoch. A rate equal to
    ``min_lr`` still counts as reduced (Keras compares it with ``min_lr`` in float32), which
    restarts the cooldown.
    """

    registry_name = "reduce_lr_on_plateau"
    positional = ("monitor", "factor", "patience", "verbose", "mode", "min_delta", "cooldown", "min_lr")
    factor = Hyper(0.1, low=0.0, high=1.0, high_open=True, doc="multiplier of the learning rate")
    patience = Hyper(10, kind=int, low=0, doc="epochs without improvement before reducing")
    verbose = Hyper(0, kind=int, low=0, doc="print when reducing")
    min_delta = Hyper(1e-4, doc="the smallest change that counts as an improvement")
    cooldown = Hyper(0, kind=int, low=0, doc="epochs to wait after a reduction")
    min_lr = Hyper(0.0, low=0.0, doc="lower bound of the learning rate")

    def on_train_begin(self, logs=None):
        self.best = None
        self.cooldown_counter = 0
        self.wait = 0

    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def on_epoch_end(self, epoch, logs=None):
        optimizer = self.trainer.optimizer
        if logs is not None:
            logs.update(optimizer.rate_logs())
        self._direction()  # as Keras: settled (or raising) before the metric is read
        current = self._current(logs, "Learning rate reduction")
        if current is None:
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(current, self.best):
            self.best = current
            self.wait = 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience:
                group = getattr(optimizer, "optimizers", None)  # a MultiOptimizer: each one, as Keras
                reduced = [self._reduce(opt, epoch, group is not None) for opt in group or [optimizer]]
                if any(reduced):
                    self.cooldown_counter = self.cooldown
                    self.wait = 0

    def _reduce(self, optimizer, epoch: int, named: bool) -> bool:
        old_lr = float(optimizer.learning_rate)
        if not old_lr > np.float32(self.min_lr):
            return False
        new_lr = max(old_lr * self.factor, self.min_lr)
        optimizer.learning_rate = new_lr
        if self.verbose > 0:
            whose = f"{optimizer.name} " if named else ""
            print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing {whose}learning rate to {new_lr}.")
        return True

    def get_state(self):
        return {"best": self.best, "cooldown_counter": self.cooldown_counter, "wait": self.wait}

    def check_state(self, state):
        check_fields(
            state,
            {
                "best": (lambda v: v is None or is_number(v), "a number", True),
                "cooldown_counter": (is_count, "an integer >= 0", True),
                "wait": (is_count, "an integer >= 0", True),
            },
        )

    def set_state(self, state):
        self.best, self.cooldown_counter, self.wait = state["best"], state["cooldown_counter"], state["wait"]


class TerminateOnNaN(Callback):
    """Stops training as soon as a batch's loss is NaN or infinite (``raise_error=True``: raises instead)."""

    registry_name = "terminate_on_nan"
    raise_error = Hyper(False, kind=bool, doc="raise RuntimeError instead of stopping")

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not is_finite_number(loss):
            if self.raise_error:
                raise RuntimeError(f"NaN or Inf found in the loss at batch {batch}: {loss}")
            print(f"Batch {batch}: Invalid loss, terminating training")
            self.trainer.stop_training = True


class ThresholdStop(Callback):
    """Stops training once ``monitor`` crosses ``threshold``: at or below it (``mode="min"``), at or above (``"max"``).

    Checked after every step (``every="batch"``, with the problem's metrics evaluated then)
    or after every epoch. The tutorial's loop is ``ThresholdStop(monitor="excess",
    threshold=0.1)`` on ``seed_linear``: it steps while a - 1 > 0.1 or b - 1 > 0.1.
    """

    registry_name = "threshold_stop"
    monitor = Hyper("loss", kind=str, fill="metric", doc="the logged quantity to watch")
    threshold = Hyper(Hyper.REQUIRED, allow_inf=True, doc="the value to cross")
    mode = Hyper("min", kind=str, choices=("min", "max"), doc="stop at or below (min) or at or above (max)")
    every = Hyper("epoch", kind=str, choices=("epoch", "batch"), doc="check after every epoch or every step")
    verbose = Hyper(0, kind=int, low=0, doc="print when stopping")

    def _crossed(self, logs) -> bool:
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise ValueError(
                f"ThresholdStop monitors `{self.monitor}`, which is not logged. Logged: {', '.join(logs or {})}"
            )
        value = float(value)
        return value <= self.threshold if self.mode == "min" else value >= self.threshold

    def _check(self, logs, where):
        if self._crossed(logs):
            self.stopped_at = where
            self.trainer.stop_training = True
            if self.verbose > 0:
                print(f"{where}: {self.monitor} = {logs[self.monitor]} crossed {self.threshold}; stopping")

    def on_train_batch_end(self, batch, logs=None):
        if self.every == "batch":
            metrics = {**(logs or {}), **self.trainer.problem.evaluate(self.trainer.params)}
            self._check(metrics, f"Step {self.trainer.step}")

    def on_epoch_end(self, epoch, logs=None):
        if self.every == "epoch":
            self._check(logs, f"Epoch {epoch + 1}")


class _Separator(Hyper):
    """A CSV field separator: one character that the csv module writes and reads back (no newline, no quote)."""

    def allowed(self) -> str:
        return "a single character other than a newline or '\"'"

    def validate(self, value, owner=""):
        value = super().validate(value, owner)
        if len(value) != 1 or value in '\r\n"':
            raise self._error(owner, value)
        return value


def _discard(file, temp: str) -> None:
    """Close ``file`` and remove ``temp``, the new CSV file of a run that ended before its first row."""
    with contextlib.suppress(OSError):
        file.close()
    with contextlib.suppress(OSError):
        os.unlink(temp)


class CSVLogger(Callback):
    """Writes every epoch's logs as a CSV row (``append=True`` continues an existing file; the folder is created).

    As in Keras, a new run (``append=False``) replaces the file — but only once it has something
    to put in its place: the new file is written beside the old one (a temporary name) and moved
    over it when its header and first row are written and flushed; a run that ends or fails
    before its first row leaves the old file as it was and removes the temporary one. A run
    resumed by ``BackupAndRestore`` always appends, and skips the epochs the file already holds
    (the interrupted run may have written a row after its last backup; the resumed run
    recomputes that epoch bit for bit), so the file ends with exactly one row per epoch.
    """

    registry_name = "csv_logger"
    filename = Hyper(Hyper.REQUIRED, kind=str, doc="the CSV file")
    separator = _Separator(",", kind=str, doc="the field separator")
    append = Hyper(False, kind=bool, doc="append to an existing file instead of overwriting it")
    _pending = None  # the new file's finalizer (close it, remove it) until it has replaced the old one

    def check_files(self):
        check_writable(self.filename, "CSVLogger: filename")

    def on_train_begin(self, logs=None):
        self._close()  # an earlier run of this logger that failed without on_train_end
        resuming = self.trainer is not None and self.trainer.resumed
        appending = self.append or resuming
        exists = os.path.exists(self.filename)
        self._skip_through = self._complete_rows() if (resuming and exists) else -1
        self._append_header = not (appending and exists and os.path.getsize(self.filename) > 0)
        if os.path.dirname(self.filename):
            os.makedirs(os.path.dirname(self.filename), exist_ok=True)
        if appending:
            remove_stale_temps(self.filename)  # what a run killed before its first row left
            self._file = open(self.filename, "a", newline="")
        else:
            # a file the user cannot write (or a folder) is refused, as open(..., "w") would, not replaced
            check_writable(self.filename, "CSVLogger: filename")
            # not open(..., "w") as Keras: a run killed before its first row would leave the old file empty
            fd, self._temp = create_temp(self.filename)
            self._file = os.fdopen(fd, "w", newline="")
            # also run at exit: a run that fails never reaches on_train_end (a kill -9 leaves the
            # file to the next write of this name, which removes a dead writer's temporary file)
            self._pending = weakref.finalize(self, _discard, self._file, self._temp)
        self._writer = None
        self._keys = None

    def _complete_rows(self) -> int:
        """The epoch of the file's last complete row (-1 if none). A row the interrupted run
        left unfinished (no newline: the process died mid-write) is cut off: it is the only
        part of the file that is changed, and the resumed run writes that row again."""
        with open(self.filename, "rb") as fh:
            data = fh.read()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            os.truncate(self.filename, len(complete))
        rows = list(csv.reader(complete.decode("utf-8", "replace").splitlines(), delimiter=self.separator))
        for row in reversed(rows):
            try:
                return int(row[0])
            except (IndexError, ValueError):
                continue
        return -1

    def on_epoch_end(self, epoch, logs=None):
        if epoch <= self._skip_through:
            return
        logs = dict(logs or {})
        if self._keys is None:
            self._keys = sorted(logs)
            self._writer = csv.DictWriter(
                self._file, fieldnames=["epoch", *self._keys], delimiter=self.separator, extrasaction="ignore"
            )
            if self._append_header:
                self._writer.writeheader()
        row = {"epoch": epoch, **{k: logs.get(k, "NA") for k in self._keys}}
        self._writer.writerow(row)
        self._file.flush()
        if self._pending is not None:  # the first row: the new file takes the old one's place
            os.fsync(self._file.fileno())
            os.replace(self._temp, self.filename)
            self._pending.detach()
            self._pending = None

    def on_train_end(self, logs=None):
        self._close()

    def _close(self) -> None:
        if self._pending is not None:  # no row was written: the old file stays, the new one goes
            self._pending()
            self._pending = None
        elif getattr(self, "_file", None) is not None:
            self._file.close()
        self._file = None


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


class ProgressBar(Callback):
    """A progress bar per epoch (tqdm) showing the step, loss and learning rate; ``enabled=False`` turns it off.

    Shown only when standard error is a terminal (a log file would fill with redrawn bars),
    unless ``always=True``.
    """

    registry_name = "progress_bar"
    enabled = Hyper(True, kind=bool, doc="show the bar")
    leave = Hyper(False, kind=bool, doc="keep each epoch's bar on screen")
    always = Hyper(False, kind=bool, doc="show it when standard error is not a terminal too")

    def on_epoch_begin(self, epoch, logs=None):
        if not self.enabled or not (self.always or _is_terminal(sys.stderr)):
            return
        from tqdm.auto import tqdm

        total = self.trainer.steps_per_epoch
        epochs = self.trainer.epochs
        self._bar = tqdm(
            total=total, desc=f"Epoch {epoch + 1}/{epochs}", leave=self.leave, file=sys.stderr, unit="step"
        )

    def on_train_batch_end(self, batch, logs=None):
        bar = getattr(self, "_bar", None)
        if bar is None:
            return
        logs = logs or {}
        bar.update(1)
        if "loss" in logs:
            bar.set_postfix(loss=f"{logs['loss']:.4g}", lr=f"{logs.get('learning_rate', math.nan):.3g}", refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        bar = getattr(self, "_bar", None)
        if bar is not None:
            bar.close()
            self._bar = None

    def on_train_end(self, logs=None):
        self.on_epoch_end(None, logs)  # a run stopped mid-epoch closes its bar too
