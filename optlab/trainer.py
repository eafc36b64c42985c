"""The training loop: a problem, an optimizer, Keras-style callbacks.

>>> trainer = Trainer("seed_linear", SGD(learning_rate=0.1), epochs=100,   # doctest: +SKIP
...                   callbacks=[ThresholdStop(monitor="excess", threshold=0.1)])
>>> history = trainer.fit()                                               # doctest: +SKIP

One epoch is one pass over the problem's batches (one step for full-batch problems).
Determinism: the batch order of epoch ``e`` comes from a generator seeded with
``(seed, 0, e)``; gradient noise from one generator seeded with ``(seed, 1)``, whose state
is saved with backups. The same problem, optimizer, callbacks and seed give bit-identical
parameters, and a run resumed from a ``BackupAndRestore`` backup ends exactly where an
uninterrupted one does.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np

from .callbacks.base import Callback, CallbackList
from .callbacks.core import History
from .flat import flat_like
from .hparams import Hyper

#: the batches of a full-batch epoch: one, the whole data set
_FULL_BATCH = (None,)


def logged_name(name: str) -> str:
    """The logged name behind an MLflow key as the summary prints it: ``val/accuracy`` ->
    ``val_accuracy``, ``train/loss`` -> ``loss``, ``position/x`` -> ``x``; other names as they are."""
    group, _, rest = name.partition("/")
    if not rest:
        return name
    return {"val": f"val_{rest}", "train": rest, "position": rest}.get(group, name)


class Trainer:
    """Fit ``problem`` with ``optimizer`` for ``epochs`` epochs, calling ``callbacks`` at Keras's points.

    ``problem`` and ``optimizer`` may be instances, names or config dicts; ``callbacks`` a list
    of callback instances (or names / configs). ``batch_size=None`` is full-batch.
    ``dtype`` is the parameters' dtype (float32 or float64).

    ``epochs="auto"`` and ``batch_size="auto"`` take the problem's ``budget``.

    Logs: after each batch ``loss`` (the batch's) and ``learning_rate``, the rate that batch's
    step applied (``optimizer.applied_learning_rate``); after each epoch the epoch's mean loss,
    the problem's metrics and ``learning_rate`` as Keras logs it, the optimizer's rate after the
    epoch (the rate the next step will use, after any callback changed it).

    Time to target: ``target`` (a :class:`~optlab.problems.Target` or its text,
    ``"val_accuracy >= 0.97"``; default the problem's declared one) is checked after each epoch,
    and the first epoch that reaches it is kept in ``target_reached`` (``{"epoch": epochs run,
    "step": steps run, "seconds": seconds since fit started}``, or None); with
    ``stop_at_target=True`` training stops there. ``seconds``: the training's seconds on the same
    clock, set as it ends (before ``on_train_end``); what the command line prints and MLflow logs.
    """

    epochs = Hyper(1, kind=int, low=0, doc="epochs to run")
    batch_size = Hyper(None, kind=int, low=1, doc="examples per step (None: all of them)")
    seed = Hyper(0, kind=int, low=0, doc="seeds the initial parameters, the batch order and the gradient noise")

    def __init__(
        self,
        problem,
        optimizer,
        callbacks: Iterable = (),
        epochs: int = 1,
        batch_size: int | None = None,
        seed: int = 0,
        dtype="float32",
        target=None,
        stop_at_target: bool = False,
    ):
        from . import callbacks as callback_module
        from . import optimizers, problems

        self.problem = problems.get(problem)
        self.optimizer = optimizers.get(optimizer)
        budget = self.problem.budget
        self.epochs = budget.epochs if epochs == "auto" else epochs  # validated by their declarations
        self.batch_size = budget.batch_size if batch_size == "auto" else batch_size
        self.seed = seed
        self.target = self.parse_target(target, self.problem)
        if not isinstance(stop_at_target, bool):
            raise ValueError(f"Trainer: `stop_at_target` must be True or False; received {stop_at_target!r}")
        if stop_at_target and self.target is None:
            raise ValueError(
                f"Trainer: stop_at_target=True needs a target: problem {self.problem.registry_name!r} declares "
                "none; pass target='METRIC >= VALUE' (or <=)"
            )
        self.stop_at_target = stop_at_target
        self.target_reached: dict | None = None
        self.seconds: float | None = None
        self.dtype = self.parse_dtype(dtype)
        cbs = [callback_module.get(cb) for cb in callbacks]
        for cb in cbs:
            if not isinstance(cb, Callback):
                raise TypeError(f"Trainer: callbacks must be optlab.callbacks.Callback instances; received {cb!r}")
        self.history = next((cb for cb in cbs if isinstance(cb, History)), None)
        if self.history is None:
            self.history = History()
            cbs.append(self.history)
        self.callbacks = CallbackList(cbs)
        self.params = None
        self.grads = None
        self.stop_training = False
        self._interrupt: BaseException | None = None
        self.initial_epoch = 0
        self.epoch = 0
        self.step = 0

    @staticmethod
    def parse_dtype(dtype) -> np.dtype:
        """``dtype`` as numpy's float32 or float64 (a name, a numpy type or dtype), else ``ValueError``."""
        try:
            parsed = None if dtype is None else np.dtype(dtype)  # numpy reads None as float64
        except TypeError:
            parsed = None
        if parsed not in (np.float32, np.float64):
            raise ValueError(f"Trainer: `dtype` must be float32 or float64; received dtype={dtype!r}")
        return parsed

    @staticmethod
    def parse_target(target, problem=None):
        """``target`` as a Target, or None for no target: None gives the problem's declared one
        (where it applies: :meth:`Problem.declared_target`), ``"none"`` none, text is parsed
        (``"val_accuracy >= 0.97"``; MLflow's grouped names, ``val/accuracy``, are read as the
        logged names). With a ``problem``, the metric must be one it logs, and the comparison
        must point the way the metric improves."""
        from .problems import Target

        if target is None:
            return None if problem is None else problem.declared_target()
        if isinstance(target, str):
            if target.strip().lower() == "none":
                return None
            try:
                target = Target.parse(target)
            except ValueError as error:
                raise ValueError(f"Trainer: `target`: {error}") from None
        if not isinstance(target, Target):
            raise ValueError(
                f"Trainer: `target` must be a Target, its text ('val_loss <= 0.1'), 'none' or None; received {target!r}"
            )
        metric = logged_name(target.metric)
        if metric != target.metric:
            target = Target(metric, target.op, target.value, target.measured)
        if problem is not None:
            logged = {**problem.metrics(), "learning_rate": None}
            if metric not in logged:
                from .names import closest

                near = closest(metric, list(logged))
                hint = f" (did you mean {near!r}?)" if near else ""
                raise ValueError(
                    f"Trainer: `target` {target}: problem {problem.registry_name!r} does not log {metric!r}{hint}; "
                    f"it logs {', '.join(logged)}"
                )
            way = logged[metric]
            if way is not None and way != target.direction:
                better = "lower" if way == "min" else "higher"
                raise ValueError(
                    f"Trainer: `target` {target} is reached by getting worse: {metric} is better {better} "
                    f"(write {metric} {'<=' if way == 'min' else '>='} VALUE)"
                )
            bound = problem.best_possible(metric)
            if bound is not None:  # (a typo, mostly: loss <= -1 for loss <= 1e-1)
                value, what = bound
                slack = 1e-9 * max(1.0, abs(value))  # (the best value as computed in floating point)
                if target.value > value + slack if target.direction == "max" else target.value < value - slack:
                    raise ValueError(f"Trainer: `target` {target}: no run can reach it: {what} is {value:g}")
        return target

    # -- what callbacks see ---------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch (``problem.steps_per_epoch(batch_size)``)."""
        return self.problem.steps_per_epoch(self.batch_size)

    def interrupt(self, error: BaseException) -> None:
        """Make the loop raise ``error`` at the end of the current step (or at once, before the first).

        For a signal handler whose own raise was lost: Python only reports an exception raised
        inside a finalizer or a weak-reference callback, and the loop would go on.
        """
        self._interrupt = error
        self.stop_training = True

    def _stop(self) -> None:
        if self._interrupt is not None:
            raise self._interrupt

    def _start(self):
        self.params = self.problem.init(self.seed, self.dtype)
        self.grads = flat_like(self.params)
        self.noise_rng = np.random.default_rng([self.seed, 1])
        self.initial_epoch = 0
        self.initial_batch = 0
        self.step = 0
        self._loss_sum = 0.0
        self._count = 0
        self.stop_training = self._interrupt is not None
        self.resumed = False
        self.target_reached = None
        self.seconds = None
        self._clock = time.perf_counter()

    def fit(self) -> History:
        """Run the loop; returns the ``History`` callback (``history.history[name]`` per epoch)."""
        self._start()
        callbacks = self.callbacks
        callbacks.set_trainer(self)
        callbacks.resume()  # BackupAndRestore moves initial_epoch / initial_batch here, before anyone starts
        names = self.problem.parameter_names()
        if names is not None and (not self.optimizer.built or getattr(self.optimizer, "_plan", True) is None):
            self.optimizer.build(dict(zip(names, self.params)))  # the optimizer knows them by name, as Keras's do
        callbacks.on_train_begin({})
        self._stop()
        problem, optimizer, params, grads = self.problem, self.optimizer, self.params, self.grads
        history = self.history if problem.record_path else None
        sparse = problem.sparse_gradients
        target = self.target
        # hooks run at every step of a full-batch problem: called (their logs built) only if a callback uses them
        epoch_begin = bool(callbacks.listeners("on_epoch_begin"))
        batch_begin = bool(callbacks.listeners("on_train_batch_begin"))
        batch_end = bool(callbacks.listeners("on_train_batch_end"))
        full_batch = problem.num_examples is None
        logs: dict = {}
        for epoch in range(self.initial_epoch, self.epochs):
            self.epoch = epoch
            first_batch = self.initial_batch if epoch == self.initial_epoch else 0
            if first_batch == 0:
                self._loss_sum, self._count = 0.0, 0
            if epoch_begin:
                callbacks.on_epoch_begin(epoch, {})
            if full_batch:
                batches = _FULL_BATCH  # no shuffling, no generator to seed
            else:
                batches = list(problem.batches(np.random.default_rng([self.seed, 0, epoch]), self.batch_size))
            for index in range(first_batch, len(batches)):
                batch = batches[index]
                if batch_begin:
                    callbacks.on_train_batch_begin(index, {})
                step_grads = list(grads) if sparse else grads  # a sparse problem may put IndexedSlices in
                loss = problem.loss_and_grad(params, step_grads, batch, self.noise_rng)
                scale = optimizer.scale_loss(1.0)
                if scale != 1.0:  # Keras's fit differentiates the scaled loss; the step divides it out
                    if sparse:
                        for g in step_grads:
                            g = getattr(g, "values", g)
                            np.multiply(g, scale, out=g)
                    else:
                        np.multiply(grads.flat, scale, out=grads.flat)
                optimizer.apply(step_grads, params)
                self.step += 1
                self.batch = index + 1
                size = 1 if batch is None else len(batch)
                self._loss_sum += loss * size
                self._count += size
                if history is not None:
                    history.record_step(self.step, params.flat)
                if batch_end:
                    callbacks.on_train_batch_end(index, {"loss": loss, **optimizer.rate_logs(applied=True)})
                if self.stop_training:
                    self._stop()
                    break
            logs = {
                "loss": self._loss_sum / max(self._count, 1),
                **optimizer.rate_logs(),
                **problem.evaluate(params),
            }
            self.batch = 0
            if target is not None and self.target_reached is None and self._reached(target, logs):
                self.target_reached = {
                    "epoch": epoch + 1,
                    "step": self.step,
                    "seconds": time.perf_counter() - self._clock,
                }
                self.stop_training = self.stop_training or self.stop_at_target
            callbacks.on_epoch_end(epoch, logs)
            if self.stop_training:
                self._stop()
                break
        if history is not None and self.step:
            history.record_step(self.step, params.flat, last=True)
        # Keras's fit: with use_ema, the moving average becomes the weights once training ends
        optimizer.finalize_variable_values(list(params))
        self.seconds = time.perf_counter() - self._clock
        callbacks.on_train_end(logs)
        return self.history

    @staticmethod
    def _reached(target, logs: dict) -> bool:
        value = logs.get(target.metric)
        return value is not None and target.reached(value)

    # -- state for backups ----------------------------------------------------------------------
    def position(self) -> dict:
        """Where the loop is: the next epoch and batch to run, the step count, the epoch's running loss."""
        return {
            "epoch": self.epoch,
            "batch": getattr(self, "batch", 0),
            "step": self.step,
            "loss_sum": self._loss_sum,
            "count": self._count,
            "noise_rng": self.noise_rng.bit_generator.state,
            "target_reached": self.target_reached,
        }

    def restore_position(self, position: dict, epoch_done: bool) -> None:
        self.initial_epoch = position["epoch"] + (1 if epoch_done else 0)
        self.initial_batch = 0 if epoch_done else position["batch"]
        self.epoch = self.initial_epoch
        self.resumed = True
        self.step = position["step"]
        self._loss_sum, self._count = position["loss_sum"], position["count"]
        self.noise_rng.bit_generator.state = position["noise_rng"]
        self.target_reached = position.get("target_reached")  # (backups from before time-to-target lack it)
