"""The callback protocol (Keras's hooks and names) and the monitored-quantity helper."""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import ClassVar

import numpy as np

from ..hparams import Configurable, Hyper
from ..names import did_you_mean


class Callback(Configurable):
    """Base class: override any of Keras's hooks.

    ``self.trainer`` (also available as ``self.model``, Keras's name) is the running
    ``Trainer``: its ``optimizer``, ``params``, ``problem``, ``stop_training``. A callback that
    keeps state across epochs implements ``get_state()`` / ``set_state(state)`` (JSON-able
    values and numpy arrays) so that ``BackupAndRestore`` can resume it exactly.
    """

    #: names this callback adds to the epoch logs (so that a front end accepts them as a metric)
    adds_logs: ClassVar[tuple[str, ...]] = ()
    #: run after every other callback in each hook (``CallbackList``'s order): for a callback that
    #: saves the others' state (``BackupAndRestore``), so that it sees their state after the hook
    runs_last: ClassVar[bool] = False

    def __init__(self, *args, **kwargs):
        self.trainer = None
        super().__init__(*args, **kwargs)

    def check_logs(self, names: set[str]) -> None:
        """Raise ``ValueError`` if this callback cannot work with epoch logs holding ``names``.

        Training does not call it (Keras only warns when a watched name is missing); a front
        end that knows what a run will log (the command line) calls it to fail before training.
        """

    def check_files(self) -> None:
        """Raise ``ValueError`` if a file this callback will write cannot be written there.

        Like ``check_logs``, for a front end to call before training.
        """

    def check_resume(self, trainer) -> None:
        """Raise ``ValueError`` if :meth:`resume` would refuse to resume ``trainer``'s run (a
        backup made with other settings, a corrupt one). For a front end to call before
        training, so that the refusal is a user's error, not a failed run.
        """

    @property
    def model(self):
        """Keras's name for the object being trained: here the trainer."""
        return self.trainer

    def set_trainer(self, trainer) -> None:
        self.trainer = trainer

    # -- Keras's hooks ----------------------------------------------------------------------
    def on_train_begin(self, logs=None): ...
    def on_train_end(self, logs=None): ...
    def on_epoch_begin(self, epoch, logs=None): ...
    def on_epoch_end(self, epoch, logs=None): ...
    def on_train_batch_begin(self, batch, logs=None):
        self.on_batch_begin(batch, logs)  # as Keras: the older names still work when overridden

    def on_train_batch_end(self, batch, logs=None):
        self.on_batch_end(batch, logs)

    def on_batch_begin(self, batch, logs=None): ...
    def on_batch_end(self, batch, logs=None): ...

    # -- resuming ---------------------------------------------------------------------------------
    def resume(self) -> None:
        """Called once before any callback's ``on_train_begin`` (not a Keras hook).

        A callback that resumes an interrupted run (``BackupAndRestore``) restores the
        parameters, the optimizer and the trainer's position here, so that every callback's
        ``on_train_begin`` already sees ``trainer.resumed`` and ``trainer.initial_epoch`` (a
        CSV logger must know it is resuming before it opens its file).
        """

    # -- resumable state ------------------------------------------------------------------------
    def get_state(self) -> dict:
        """State to save with a backup (JSON-able values; numpy arrays allowed)."""
        return {}

    def set_state(self, state: dict) -> None:
        """Restore what ``get_state`` returned."""

    def check_state(self, state: dict) -> None:
        """Raise ``ValueError`` unless ``state`` is one ``get_state`` could have returned (each
        field of its type and range). ``BackupAndRestore`` calls it before ``set_state``, and
        before training, so that a damaged backup is refused in one line and changes nothing."""


def check_fields(state, fields: dict) -> None:
    """``state`` is a dict whose ``fields`` (name -> (predicate, what it must be, required)) hold;
    else ``ValueError`` naming the first field that does not."""
    if not isinstance(state, dict):
        raise ValueError(f"the state is {type(state).__name__}, not a dict")
    for name, (ok, what, required) in fields.items():
        if name not in state:
            if required:
                raise ValueError(f"{name} is missing")
            continue
        value = state[name]
        if not ok(value):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise ValueError(f"{name} is {shown}, not {what}")


def is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def is_count(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value >= 0


def numbers(value) -> bool:
    return isinstance(value, (list, tuple)) and all(is_number(v) for v in value)


#: a hook whose default forwards to Keras's older name: a callback overriding either one listens
_FORWARDED = {"on_train_batch_begin": "on_batch_begin", "on_train_batch_end": "on_batch_end"}


def listens(cb, hook: str) -> bool:
    """Whether ``cb``'s ``hook`` does anything: overridden by its class (or set on the instance),
    or, for the batch hooks, their older Keras names overridden; not a ``Callback``: assumed so."""
    if not isinstance(cb, Callback):
        return True
    for name in (hook, _FORWARDED.get(hook)):
        if name is not None and (name in cb.__dict__ or getattr(type(cb), name) is not getattr(Callback, name)):
            return True
    return False


class CallbackList:
    """Calls every callback's hook in order, skipping the callbacks that leave a hook as
    ``Callback``'s no-op (a full-batch loop calls its hooks at every step: the hooks nobody
    uses should cost nothing). Who listens to what is worked out again by ``set_trainer``, at
    the start of every ``fit``."""

    def __init__(self, callbacks):
        callbacks = list(callbacks)
        self.callbacks = [c for c in callbacks if not c.runs_last] + [c for c in callbacks if c.runs_last]
        self._listeners: dict[str, list] = {}
        self._hooks: dict[str, list] = {}  # hook -> the listeners' bound methods, with their callbacks

    def set_trainer(self, trainer):
        self._listeners, self._hooks = {}, {}
        for cb in self.callbacks:
            cb.set_trainer(trainer)

    def __iter__(self):
        return iter(self.callbacks)

    def listeners(self, hook: str) -> list:
        """The callbacks whose ``hook`` does something, in calling order."""
        found = self._listeners.get(hook)
        if found is None:
            found = self._listeners[hook] = [cb for cb in self.callbacks if listens(cb, hook)]
        return found

    def _call(self, name, *args):
        hooks = self._hooks.get(name)
        if hooks is None:
            hooks = self._hooks[name] = [(getattr(cb, name), cb) for cb in self.listeners(name)]
        for hook, cb in hooks:
            try:
                hook(*args)
            except Exception as error:
                # which callback and hook raised, for a front end's one-line message
                if not hasattr(error, "optlab_callback"):
                    with contextlib.suppress(AttributeError):
                        error.optlab_callback = f"{type(cb).__name__}.{name}"
                raise

    def resume(self):
        self._call("resume")

    def on_train_begin(self, logs):
        self._call("on_train_begin", logs)

    def on_train_end(self, logs):
        self._call("on_train_end", logs)

    def on_epoch_begin(self, epoch, logs):
        self._call("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch, logs):
        self._call("on_epoch_end", epoch, logs)

    def on_train_batch_begin(self, batch, logs):
        self._call("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch, logs):
        self._call("on_train_batch_end", batch, logs)


#: metric names whose improvement is an increase: Keras 3.15's metrics declaring ``_direction = "up"``
#: (read from ``keras.metrics``), plus the short ``acc``
MAXIMIZED = (
    "accuracy", "acc", "auc", "binary_accuracy", "binary_io_u", "categorical_accuracy", "concordance_correlation",
    "cosine_similarity", "f1_score", "fbeta_score", "pearson_correlation", "precision", "r2_score", "recall",
    "sparse_categorical_accuracy", "sparse_top_k_categorical_accuracy", "top_k_categorical_accuracy",
)  # fmt: skip
#: metric names whose improvement is a decrease, besides anything ending in "loss": Keras 3.15's metrics
#: declaring ``_direction = "down"``, their short aliases, and optlab's own error-like names
MINIMIZED = (
    "loss", "binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy", "hinge",
    "squared_hinge", "categorical_hinge", "kl_divergence", "logcosh", "poisson", "mean_absolute_error",
    "mean_absolute_percentage_error", "mean_squared_error", "mean_squared_logarithmic_error",
    "root_mean_squared_error", "mse", "mae", "mape", "msle", "rmse", "error", "distance_to_optimum", "excess",
)  # fmt: skip


def direction(name: str, declared: dict[str, str] | None = None) -> str | None:
    """Which way the logged quantity ``name`` improves: ``"min"``, ``"max"``, or None when nothing says.

    Keras asks the metric (its ``_direction``); here ``declared`` plays that part: a problem's
    ``metric_directions`` (``{"accuracy": "max"}``), looked up by the full name, then without any
    ``val_`` prefix. Failing that, the names of Keras's own metrics: names ending in ``loss`` and
    those in ``MINIMIZED`` are minimised, those in ``MAXIMIZED`` maximised (``x``, ``learning_rate``: None).
    """
    base = name.removeprefix("val_")
    for key in (name, base):
        if declared and key in declared:
            return declared[key]
    if base.endswith("loss") or base in MINIMIZED:
        return "min"
    if base in MAXIMIZED:
        return "max"
    return None


class Monitor(Callback):
    """A callback watching one logged quantity (Keras's ``MonitorCallback``).

    ``mode="auto"`` asks, as Keras asks the metric: the direction the trainer's problem declares
    (``Problem.metric_directions``, with or without the ``val_`` prefix), else the names of
    Keras's metrics (``loss`` and error-like names minimised, accuracy-like names maximised).
    Any other name raises ``ValueError`` at the first epoch end, asking for ``mode="min"`` or
    ``"max"``, as Keras does.
    """

    monitor = Hyper("val_loss", kind=str, fill="metric", doc="the logged quantity to watch")
    mode = Hyper("auto", kind=str, choices=("auto", "min", "max"), doc="whether improvement is a decrease or increase")
    min_delta = Hyper(0.0, doc="the smallest change that counts as an improvement (sign ignored)")

    def _direction(self) -> str:
        if self.mode != "auto":
            return self.mode
        problem = getattr(self.trainer, "problem", None)
        found = direction(self.monitor, getattr(problem, "metric_directions", None))
        if found is not None:
            return found
        raise ValueError(
            f"{type(self).__name__} received monitor={self.monitor!r}, but cannot tell whether it should be "
            "maximized or minimized (neither the problem's metric_directions nor Keras's metric names say). "
            "Pass mode='max' or mode='min'."
        )

    def _is_improvement(self, value, reference) -> bool:
        if reference is None:
            return True
        delta = abs(self.min_delta)
        if self._direction() == "min":  # Keras: less(value - (-min_delta), reference)
            return value + delta < reference
        return value - delta > reference

    def check_logs(self, names: set[str]) -> None:
        if self.monitor not in names:
            raise ValueError(
                f"{type(self).__name__}: monitor {self.monitor!r} is not logged by this run"
                f"{did_you_mean(self.monitor, names)}; logged: {', '.join(sorted(names))}"
            )

    def _current(self, logs, what: str):
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:
            warnings.warn(
                f"{what} conditioned on metric `{self.monitor}` which is not available. "
                f"Available metrics are: {','.join(logs)}",
                stacklevel=3,
            )
            return None
        return float(value)


def is_finite_number(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def as_array_state(params) -> list[np.ndarray]:
    return [np.array(p, copy=True) for p in params]


def check_writable(path, what: str) -> None:
    """Raise ``ValueError`` unless a file can be written at ``path`` (its folder may not exist yet)."""
    import os

    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{what}: {path} is a folder, not a file")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ValueError(f"{what}: {path} is not writable")
    folder = os.path.dirname(path)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"{what}: cannot create a folder under {folder}, which is a file")
    from ..files import refusal

    reason = refusal(folder)
    if reason is not None:
        raise ValueError(f"{what}: cannot write in {folder} ({reason})")
