"""Callbacks against Keras's rules: scripted metric sequences with stops and learning rates worked out by hand."""

from __future__ import annotations

import csv
import math
from typing import ClassVar

import numpy as np
import pytest

import optlab
from optlab.callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    LearningRateScheduler,
    ModelCheckpoint,
    ProgressBar,
    ReduceLROnPlateau,
    TerminateOnNaN,
    ThresholdStop,
    load_checkpoint,
)
from optlab.hparams import Hyper
from optlab.problems import Problem
from optlab.trainer import Trainer


class Scripted(Problem):
    """One parameter p (loss p^2/2, gradient p) whose epoch metric follows a script."""

    registry_name = "scripted_test_problem"
    values = Hyper(Hyper.REQUIRED, kind=list, doc="metric value of each epoch")
    metric = Hyper("val_loss", kind=str, doc="the metric's name")
    nan_at = Hyper(None, kind=int, optional=True, doc="step whose loss is NaN")

    def check(self):
        self.calls = 0
        self.steps = 0

    def shapes(self):
        return [(1,)]

    def initial_values(self, rng):
        return [np.array([1.0])]

    def loss_and_grad(self, params, grads, batch=None, rng=None):
        self.steps += 1
        grads[0][...] = params[0]
        if self.nan_at is not None and self.steps == self.nan_at:
            return math.nan
        return 0.5 * float(params[0][0]) ** 2

    def evaluate(self, params):
        value = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return {self.metric: value}


class Recorder(Callback):
    """Records the learning rate each epoch runs with and the parameters after each epoch."""

    registry_name = "recorder_test"

    def on_train_begin(self, logs=None):
        self.rates, self.params = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.rates.append(float(self.trainer.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        self.params.append(float(self.trainer.params[0][0]))


def fit(values, *callbacks, lr=0.1, epochs=None, metric="val_loss", **problem_args):
    recorder = Recorder()
    trainer = Trainer(
        Scripted(values=values, metric=metric, **problem_args),
        optlab.optimizers.SGD(learning_rate=lr),
        callbacks=[*callbacks, recorder],
        epochs=epochs or len(values),
        dtype="float64",
    )
    history = trainer.fit()
    return trainer, history, recorder


# -- EarlyStopping -----------------------------------------------------------------------------------

EARLY = [
    # (arguments, scripted values, epochs run (the stop epoch + 1), why)
    ({"patience": 2}, [1.0, 0.9, 0.95, 0.96, 0.8], 4, "two epochs without improvement after epoch 1"),
    ({"patience": 0}, [1.0, 1.1, 0.5], 2, "patience 0 stops at the first non-improvement"),
    ({"patience": 0}, [1.0, 0.9, 0.8], 3, "always improving: runs to the end"),
    ({"patience": 1, "min_delta": 0.1}, [1.0, 0.95, 0.85], 2, "0.95 is not better by min_delta"),
    ({"patience": 1, "min_delta": -0.1}, [1.0, 0.95, 0.85], 2, "min_delta's sign is ignored"),
    ({"patience": 1, "monitor": "val_accuracy"}, [0.5, 0.6, 0.55, 0.58], 3, "accuracy is maximised (auto)"),
    ({"patience": 1, "mode": "max"}, [0.5, 0.6, 0.55, 0.58], 3, "mode max"),
    ({"patience": 0, "start_from_epoch": 2}, [5.0, 6.0, 3.0, 3.5, 1.0], 4, "epochs 0 and 1 are not watched"),
    ({"patience": 1, "baseline": 0.5}, [1.0, 0.9, 0.8, 0.8, 0.8], 4, "improving but above baseline: wait grows"),
    ({"patience": 1, "baseline": 0.5}, [1.0, 0.4, 0.45, 0.45], 3, "beating the baseline resets the wait"),
]


@pytest.mark.parametrize(("kwargs", "values", "epochs_run", "why"), EARLY, ids=[e[3] for e in EARLY])
def test_early_stopping_follows_keras(kwargs, values, epochs_run, why):
    metric = kwargs.get("monitor", "val_loss")
    stop = EarlyStopping(**kwargs)
    trainer, history, _ = fit(values, stop, metric=metric)
    assert len(history.epoch) == epochs_run, why
    assert trainer.stop_training == (epochs_run < len(values))
    assert stop.stopped_epoch == (epochs_run - 1 if epochs_run < len(values) else 0)


def test_early_stopping_restores_the_best_epochs_parameters():
    stop = EarlyStopping(patience=2, restore_best_weights=True)
    trainer, history, recorder = fit([1.0, 0.5, 0.7, 0.8, 0.9], stop, epochs=10)
    assert len(history.epoch) == 4 and stop.best_epoch == 1
    assert float(trainer.params[0][0]) == recorder.params[1]  # the parameters after epoch 1
    assert recorder.params[-1] != recorder.params[1]


def test_early_stopping_restores_even_without_stopping():
    stop = EarlyStopping(patience=5, restore_best_weights=True)
    trainer, _, recorder = fit([1.0, 0.5, 0.7], stop)
    assert float(trainer.params[0][0]) == recorder.params[1]


def test_early_stopping_on_a_missing_metric_warns_and_never_stops():
    with pytest.warns(UserWarning, match="`val_loss` which is not available"):
        _, history, _ = fit([1.0, 1.0, 1.0], EarlyStopping(patience=0), metric="other_metric")
    assert len(history.epoch) == 3


def test_auto_mode_needs_a_known_direction():
    with pytest.raises(ValueError, match="mode='max' or mode='min'"):
        fit([1.0, 1.0], EarlyStopping(monitor="val_wobble"), metric="val_wobble")
    with pytest.raises(ValueError, match="`mode` must be one of 'auto', 'min', 'max'"):
        EarlyStopping(mode="lowest")


# -- ReduceLROnPlateau -----------------------------------------------------------------------------------


def test_reduce_lr_on_plateau_with_min_lr_and_keras_cooldown_quirk():
    # Keras decrements the cooldown before checking it, so cooldown=1 delays nothing;
    # and a rate equal to min_lr is still "reduced" (to min_lr) because min_lr is compared in float32.
    cb = ReduceLROnPlateau(factor=0.5, patience=1, cooldown=1, min_lr=0.02, min_delta=0.0)
    _, history, recorder = fit([1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5], cb, lr=0.1)
    assert recorder.rates == pytest.approx([0.1, 0.1, 0.05, 0.025, 0.02, 0.02, 0.02, 0.02])
    assert history.history["learning_rate"] == pytest.approx(recorder.rates)


def test_reduce_lr_on_plateau_cooldown_two():
    cb = ReduceLROnPlateau(factor=0.5, patience=1, cooldown=2, min_delta=0.0)
    _, _, recorder = fit([1.0] * 7, cb, lr=1.0)
    assert recorder.rates == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125]


def test_reduce_lr_on_plateau_validation():
    with pytest.raises(ValueError, match=r"`factor` must be a float in \[0, 1\)"):
        ReduceLROnPlateau(factor=1.5)


# -- LearningRateScheduler --------------------------------------------------------------------------------


def test_learning_rate_scheduler_function_of_epoch_and_rate():
    def schedule(epoch, lr):
        return lr if epoch < 2 else lr * 0.5

    _, history, recorder = fit([1.0] * 4, LearningRateScheduler(schedule), lr=0.1)
    assert recorder.rates == pytest.approx([0.1, 0.1, 0.05, 0.025])
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.1, 0.05, 0.025])


def test_learning_rate_scheduler_old_form_and_schedule_objects():
    _, _, recorder = fit([1.0] * 3, LearningRateScheduler(lambda epoch: 0.1 / (epoch + 1)))
    assert recorder.rates == pytest.approx([0.1, 0.05, 0.1 / 3])
    decay = optlab.schedules.ExponentialDecay(1.0, decay_steps=1, decay_rate=0.5)
    _, _, recorder = fit([1.0] * 3, LearningRateScheduler(decay))
    assert recorder.rates == pytest.approx([1.0, 0.5, 0.25])
    by_config = LearningRateScheduler({"name": "piecewise_constant_decay", "boundaries": [0], "values": [1.0, 0.1]})
    _, _, recorder = fit([1.0] * 2, by_config)
    assert recorder.rates == pytest.approx([1.0, 0.1])


def test_learning_rate_scheduler_rejects_non_numbers():
    with pytest.raises(ValueError, match="should be a float"):
        fit([1.0], LearningRateScheduler(lambda epoch, lr: "fast"))


# -- TerminateOnNaN, ThresholdStop -------------------------------------------------------------------------


def test_terminate_on_nan_stops_after_the_bad_batch(capsys):
    trainer, history, _ = fit([1.0] * 10, TerminateOnNaN(), nan_at=3)
    assert trainer.step == 3 and len(history.epoch) == 3
    assert "Invalid loss" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="NaN or Inf"):
        fit([1.0] * 10, TerminateOnNaN(raise_error=True), nan_at=2)


def test_threshold_stop_per_epoch_and_per_batch():
    _, history, _ = fit([3.0, 2.0, 1.0, 0.5], ThresholdStop(monitor="val_loss", threshold=1.0), epochs=10)
    assert len(history.epoch) == 3  # 1.0 <= 1.0 at epoch 2
    _, history, _ = fit([0.1, 0.2, 0.9], ThresholdStop(monitor="val_loss", threshold=0.8, mode="max"), epochs=10)
    assert len(history.epoch) == 3
    # per batch: linear regression in minibatches stops mid-epoch
    problem = optlab.problems.LinearRegression(n_samples=100, validation_split=0.0)
    stop = ThresholdStop(monitor="distance_to_optimum", threshold=1.0, every="batch")
    trainer = Trainer(problem, optlab.optimizers.SGD(learning_rate=0.1), [stop], epochs=50, batch_size=10)
    trainer.fit()
    assert problem.evaluate(trainer.params)["distance_to_optimum"] <= 1.0
    assert stop.stopped_at.startswith("Step ")
    with pytest.raises(ValueError, match="which is not logged"):
        fit([1.0], ThresholdStop(monitor="nope", threshold=1.0))


def test_threshold_stop_max_stops_at_a_value_exactly_at_the_threshold():
    _, history, _ = fit([0.1, 0.8, 0.9, 1.0], ThresholdStop(monitor="val_loss", threshold=0.8, mode="max"), epochs=10)
    assert history.history["val_loss"] == [0.1, 0.8]  # 0.8 >= 0.8: stops after the second epoch


DIRECTIONS = {
    "loss": "min",
    "val_loss": "min",
    "my_custom_loss": "min",
    "val_mse": "min",
    "distance_to_optimum": "min",
    "excess": "min",
    "accuracy": "max",
    "val_accuracy": "max",
    "val_auc": "max",
    "x": None,
    "learning_rate": None,
    "val_x": None,
}


@pytest.mark.parametrize(("name", "expected"), DIRECTIONS.items())
def test_direction_follows_keras_name_rules(name, expected):
    assert optlab.callbacks.direction(name) == expected
    if expected is None:
        with pytest.raises(ValueError, match="Pass mode='max' or mode='min'"):
            EarlyStopping(monitor=name)._direction()
    else:
        assert EarlyStopping(monitor=name)._direction() == expected


def test_a_callback_with_its_own_init_shows_its_own_signature():
    import inspect

    class PrintKeys(Callback):
        registry_name = "print_keys_test"

        def __init__(self, keys, every=1):
            super().__init__()
            self.keys, self.every = keys, every

    assert str(inspect.signature(PrintKeys)) == "(keys, every=1)"
    assert list(inspect.signature(ThresholdStop).parameters) == ["threshold", "monitor", "mode", "every", "verbose"]


def test_callbacks_that_run_last_follow_the_others_in_every_hook():
    from optlab.callbacks import CallbackList

    class Last(Callback):
        registry_name = "last_test"
        runs_last = True

    last, first, second = Last(), Callback(), Callback()
    assert Callback.runs_last is False
    assert CallbackList([last, first, second]).callbacks == [first, second, last]


# -- CSVLogger, ProgressBar, ModelCheckpoint ----------------------------------------------------------------


def test_csv_logger(tmp_path):
    path = tmp_path / "log.csv"
    fit([3.0, 2.0, 1.0], CSVLogger(str(path)))
    rows = list(csv.DictReader(path.open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert [float(r["val_loss"]) for r in rows] == [3.0, 2.0, 1.0]
    assert set(rows[0]) == {"epoch", "loss", "learning_rate", "val_loss"}
    fit([5.0], CSVLogger(str(path), append=True))
    assert len(list(csv.DictReader(path.open()))) == 4


def test_progress_bar(capsys):
    fit([1.0, 1.0], ProgressBar(always=True))
    assert "Epoch 2/2" in capsys.readouterr().err
    fit([1.0, 1.0], ProgressBar())  # captured: not a terminal, so no bar to fill a log with
    assert capsys.readouterr().err == ""
    fit([1.0, 1.0], ProgressBar(enabled=False, always=True))
    assert capsys.readouterr().err == ""


def test_model_checkpoint_best_only(tmp_path):
    pattern = str(tmp_path / "e{epoch:02d}-{val_loss:.1f}.npz")
    _, _, recorder = fit([3.0, 1.0, 2.0, 0.5], ModelCheckpoint(pattern, save_best_only=True))
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["e01-3.0.npz", "e02-1.0.npz", "e04-0.5.npz"]
    params, meta = load_checkpoint(tmp_path / "e02-1.0.npz")
    assert float(params[0][0]) == recorder.params[1]
    assert meta["epoch"] == 1 and meta["logs"]["val_loss"] == 1.0
    assert meta["problem"]["name"] == "scripted_test_problem"


def test_model_checkpoint_every_n_batches_counts_across_epochs(tmp_path):
    # one batch per epoch here: save_freq=2 saves after steps 2, 4 and 6, i.e. epochs 2, 4, 6, batch 1
    fit([1.0] * 6, ModelCheckpoint(str(tmp_path / "s{epoch}-{batch}.npz"), save_freq=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s2-1.npz", "s4-1.npz", "s6-1.npz"]
    _, meta = load_checkpoint(tmp_path / "s4-1.npz")
    assert (meta["epoch"], meta["batch"], meta["step"]) == (3, 0, 4)


def test_model_checkpoint_weights_only_leaves_out_the_optimizer(tmp_path):
    from optlab.files import load_npz

    _, _, recorder = fit([1.0, 1.0], ModelCheckpoint(str(tmp_path / "w{epoch}.npz"), save_weights_only=True))
    meta, arrays = load_npz(tmp_path / "w2.npz")
    assert list(arrays) == ["param/0"] and "optimizer" not in meta
    assert float(arrays["param/0"][0]) == recorder.params[1]
    fit([1.0], ModelCheckpoint(str(tmp_path / "full.npz")))
    meta, arrays = load_npz(tmp_path / "full.npz")
    assert "optimizer" in meta  # (plain SGD keeps no slot arrays, only its step count)


def test_model_checkpoint_best_only_without_the_monitor_saves_with_a_warning(tmp_path):
    # Keras's rule: "Can save best model only with val_accuracy available" warns and saves anyway
    with pytest.warns(UserWarning, match="Can save best model only with"):
        fit([1.0, 2.0], ModelCheckpoint(str(tmp_path / "e{epoch}.npz"), monitor="val_accuracy", save_best_only=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e1.npz", "e2.npz"]


def test_model_checkpoint_filepath_with_an_unlogged_name_says_what_is_logged(tmp_path):
    message = r"uses \{val_acc\}, which is not logged here.*; available: epoch, learning_rate, loss"
    with pytest.raises(ValueError, match=message):
        fit([1.0], ModelCheckpoint(str(tmp_path / "e{val_acc}.npz")))
    with pytest.raises(ValueError, match="`save_freq` must be 'epoch' or an integer >= 1; received save_freq=0"):
        ModelCheckpoint("x.npz", save_freq=0)


# Keras 3's constructor order (keras.io/api/callbacks), so positional calls mean the same thing
KERAS_SIGNATURES = {
    EarlyStopping: "monitor min_delta patience verbose mode baseline restore_best_weights start_from_epoch",
    ReduceLROnPlateau: "monitor factor patience verbose mode min_delta cooldown min_lr",
    ModelCheckpoint: "filepath monitor verbose save_best_only save_weights_only mode save_freq initial_value_threshold",
    CSVLogger: "filename separator append",
}


@pytest.mark.parametrize("cls", list(KERAS_SIGNATURES), ids=lambda c: c.__name__)
def test_positional_order_follows_keras(cls):
    import inspect

    keras_order = KERAS_SIGNATURES[cls].split()
    ours = list(inspect.signature(cls).parameters)
    assert ours[: len(keras_order)] == keras_order
    early = EarlyStopping("val_accuracy", 0.01, 3)
    assert (early.monitor, early.min_delta, early.patience) == ("val_accuracy", 0.01, 3)


def test_callbacks_by_name_and_config():
    cb = optlab.callbacks.get({"name": "early_stopping", "patience": 3})
    assert isinstance(cb, EarlyStopping) and cb.patience == 3
    assert isinstance(optlab.callbacks.get("TerminateOnNaN"), TerminateOnNaN)
    with pytest.raises(ValueError, match="Did you mean 'early_stopping'"):
        optlab.callbacks.get("early_stoping")


# -- directions: the problem declares them, as Keras asks its metrics ------------------------------
# Keras 3.15's metrics' own `_direction` (keras.metrics: "down" for hinge & co, "up" for r2_score & co)
KERAS_METRIC_DIRECTIONS = {
    "hinge": "min",
    "val_squared_hinge": "min",
    "categorical_hinge": "min",
    "val_binary_crossentropy": "min",
    "categorical_crossentropy": "min",
    "sparse_categorical_crossentropy": "min",
    "kl_divergence": "min",
    "root_mean_squared_error": "min",
    "r2_score": "max",
    "val_f1_score": "max",
    "top_k_categorical_accuracy": "max",
    "cosine_similarity": "max",
}


@pytest.mark.parametrize(("name", "expected"), KERAS_METRIC_DIRECTIONS.items())
def test_direction_of_keras_metrics(name, expected):
    assert optlab.callbacks.direction(name) == expected
    assert EarlyStopping(monitor=name)._direction() == expected
    assert ReduceLROnPlateau(monitor=name)._direction() == expected


class Scored(Scripted):
    """A problem whose metric `score` improves upwards, declared as Keras's metrics declare it."""

    registry_name = "scored_test_problem"
    metric_directions: ClassVar[dict[str, str]] = {"score": "max"}


def test_early_stopping_follows_the_problems_declared_direction():
    # max: 1 -> 2 improves (wait 0); 1.5 does not (wait 1 >= patience 1): stop after epoch 2 (3 epochs)
    trainer = Trainer(Scored(values=[1.0, 2.0, 1.5, 1.4, 1.3], metric="val_score"), "sgd", epochs=5,
                      callbacks=[EarlyStopping(monitor="val_score", patience=1)])  # fmt: skip
    assert trainer.fit().epoch == [0, 1, 2]
    # the same script read as "min" stops one epoch earlier: 2 is worse than 1
    trainer = Trainer(Scored(values=[1.0, 2.0, 1.5, 1.4, 1.3], metric="val_score"), "sgd", epochs=5,
                      callbacks=[EarlyStopping(monitor="val_score", patience=1, mode="min")])  # fmt: skip
    assert trainer.fit().epoch == [0, 1]


def test_reduce_lr_follows_the_problems_declared_direction():
    # max: 1, 2 (better), 3 (better), 2.5 (wait 1 = patience: halve), 2.4 (wait 1 again: halve)
    recorder = Recorder()
    trainer = Trainer(Scored(values=[1.0, 2.0, 3.0, 2.5, 2.4], metric="score"), "sgd", epochs=5,
                      callbacks=[ReduceLROnPlateau(monitor="score", factor=0.5, patience=1), recorder])  # fmt: skip
    trainer.optimizer.learning_rate = 0.1
    trainer.fit()
    assert recorder.rates == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.05])


def test_unknown_direction_raises_at_the_first_epoch_end_even_if_missing():
    # Keras's EarlyStopping / ReduceLROnPlateau settle the direction before reading the metric
    for cb in (EarlyStopping(monitor="val_wobble"), ReduceLROnPlateau(monitor="val_wobble")):
        with pytest.raises(ValueError, match="cannot tell whether it should be maximized or minimized"):
            fit([1.0, 1.0], cb)  # logs val_loss only


def test_metric_directions_are_checked_when_the_class_is_defined():
    with pytest.raises(ValueError, match=r"BadDirections.metric_directions\['score'\] must be 'min' or 'max'.*'up'"):

        class BadDirections(Scripted):
            metric_directions: ClassVar[dict[str, str]] = {"score": "up"}

    with pytest.raises(TypeError, match="must be a dict"):

        class BadKind(Scripted):
            metric_directions = ["score"]  # noqa: RUF012


def test_builtin_problems_declare_their_metrics():
    from optlab import problems

    for name in problems.registry.names():
        cls = problems.registry.get(name)
        for key in ("distance_to_optimum",):
            assert optlab.callbacks.direction(key, cls.metric_directions) == "min"
    assert optlab.callbacks.direction("val_accuracy", problems.registry.get("mlp_digits").metric_directions) == "max"
