"""The trainer: the tutorial's run, Keras's hook order, determinism, and exact resume from backups."""

from __future__ import annotations

import numpy as np
import pytest

import optlab
from optlab.callbacks import (
    BackupAndRestore,
    Callback,
    EarlyStopping,
    ReduceLROnPlateau,
    ThresholdStop,
)
from optlab.hparams import Hyper
from optlab.problems import Problem
from optlab.trainer import Trainer

TUTORIAL_ROWS = [
    (1.2, 1.4),
    (0.98, 1.22),
    (0.924, 1.16),
    (0.914, 1.1348),
    (0.9166, 1.1202),
    (0.9222, 1.1091),
    (0.9284, 1.0997),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tutorial_run_through_the_trainer(dtype):
    trainer = Trainer(
        "seed_linear",
        optlab.optimizers.SGD(learning_rate=0.1),
        callbacks=[ThresholdStop(monitor="excess", threshold=0.1)],
        epochs=1000,
        dtype=dtype,
    )
    history = trainer.fit()
    rows = [(round(a, 4), round(b, 4)) for a, b in zip(history.history["a"], history.history["b"])]
    assert rows == TUTORIAL_ROWS
    assert trainer.step == 7 and trainer.stop_training


class HookLog(Callback):
    registry_name = "hook_log_test"

    def on_train_begin(self, logs=None):
        self.calls = ["train_begin"]

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(f"epoch_begin {epoch}")

    def on_train_batch_begin(self, batch, logs=None):
        self.calls.append(f"batch_begin {batch}")

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(f"batch_end {batch} {sorted(logs)}")

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(f"epoch_end {epoch} {sorted(logs)}")

    def on_train_end(self, logs=None):
        self.calls.append("train_end")


def test_hooks_are_called_at_keras_points_with_logs():
    log = HookLog()
    problem = optlab.problems.LinearRegression(n_samples=25, validation_split=0.2)
    Trainer(problem, "sgd", [log], epochs=2, batch_size=10).fit()
    batch_keys = "['learning_rate', 'loss']"
    epoch_keys = "['distance_to_optimum', 'learning_rate', 'loss', 'val_loss']"
    expected = ["train_begin"]
    for epoch in range(2):
        expected.append(f"epoch_begin {epoch}")
        for batch in range(2):  # 20 training examples in batches of 10
            expected += [f"batch_begin {batch}", f"batch_end {batch} {batch_keys}"]
        expected.append(f"epoch_end {epoch} {epoch_keys}")
    assert log.calls == [*expected, "train_end"]


def test_epoch_loss_is_the_mean_over_the_epochs_examples():
    problem = optlab.problems.LinearRegression(n_samples=25, validation_split=0.0)
    losses = []

    class Batches(Callback):
        registry_name = "batches_test"

        def on_train_batch_end(self, batch, logs=None):
            losses.append(logs["loss"])

    history = Trainer(problem, "sgd", [Batches()], epochs=1, batch_size=10).fit()
    assert history.history["loss"][0] == pytest.approx((10 * losses[0] + 10 * losses[1] + 5 * losses[2]) / 25)


def test_runs_are_bit_identical_and_seeds_matter():
    def run(seed):
        problem = optlab.problems.Quadratic(dim=50, noise=0.3)
        trainer = Trainer(problem, optlab.optimizers.Adam(learning_rate=0.05), epochs=30, seed=seed)
        trainer.fit()
        return trainer.params.flat.copy()

    np.testing.assert_array_equal(run(1), run(1))
    assert not np.array_equal(run(1), run(2))


def test_two_d_functions_record_the_path():
    trainer = Trainer("rosenbrock", optlab.optimizers.Adam(learning_rate=0.02), epochs=5)
    history = trainer.fit()
    assert len(history.path) == 5 and history.path[-1] == pytest.approx(trainer.params.flat.astype(float))


def test_adam_on_mlp_digits_reaches_95_percent():
    trainer = Trainer(
        optlab.problems.MLPDigits(), optlab.optimizers.Adam(learning_rate=0.003), epochs=10, batch_size=32
    )
    history = trainer.fit()
    assert history.history["val_accuracy"][-1] >= 0.95


class Ramp(Problem):
    """One parameter x from 0 with loss -x: at learning rate lr, plain SGD moves x by exactly +lr per step.

    ``n`` examples (minibatches of the trainer's batch size; None: full batch); records the batches it sees.
    """

    registry_name = "ramp_test"
    n = Hyper(None, kind=int, low=1, doc="training examples")

    def check(self):
        self.seen = []

    @property
    def num_examples(self):
        return self.n

    def shapes(self):
        return [(1,)]

    def initial_values(self, rng):
        return [np.zeros(1)]

    def loss_and_grad(self, params, grads, batch=None, rng=None):
        self.seen.append(None if batch is None else np.array(batch))
        grads[0][...] = -1.0
        return -float(params[0][0])

    def evaluate(self, params):
        return {"x": float(params[0][0])}


def test_minibatches_are_reshuffled_every_epoch_by_the_documented_rule():
    problem = Ramp(n=10)
    Trainer(problem, optlab.optimizers.SGD(learning_rate=1.0), epochs=3, batch_size=4, seed=11).fit()
    assert [len(b) for b in problem.seen] == [4, 4, 2] * 3
    orders = [np.concatenate(problem.seen[3 * e : 3 * e + 3]) for e in range(3)]
    for epoch, order in enumerate(orders):  # epoch e's order comes from a generator seeded with (seed, 0, e)
        np.testing.assert_array_equal(order, np.random.default_rng([11, 0, epoch]).permutation(10))
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])


def test_steps_per_epoch_counts_the_batches():
    problem = Ramp(n=10)
    for batch_size, steps in [(None, 1), (1, 10), (3, 4), (4, 3), (10, 1), (25, 1)]:
        assert Trainer(problem, "sgd", batch_size=batch_size).steps_per_epoch == steps
        assert len(list(problem.batches(np.random.default_rng(0), batch_size))) == steps
    assert Ramp().steps_per_epoch(3) == 1  # no examples: full batch


def test_batch_logs_show_the_rate_each_step_applied_and_epoch_logs_the_rate_after_it():
    rates = []

    class BatchRates(Callback):
        registry_name = "batch_rates_test"

        def on_train_batch_end(self, batch, logs=None):
            rates.append(logs["learning_rate"])

    schedule = optlab.schedules.ExponentialDecay(1.0, decay_steps=1, decay_rate=0.5)  # 0.5^step
    trainer = Trainer(Ramp(), optlab.optimizers.SGD(learning_rate=schedule), [BatchRates()], epochs=4)
    history = trainer.fit()
    moves = np.diff([0.0, *history.history["x"]])  # x moves by exactly the rate each step applied
    assert rates == list(moves) == [1.0, 0.5, 0.25, 0.125]
    assert history.history["learning_rate"] == [0.5, 0.25, 0.125, 0.0625]  # Keras: the rate after the epoch


def test_threshold_stop_per_batch_stops_at_the_step_that_reaches_the_threshold():
    # 10 examples in batches of 3: 4 steps per epoch; x = 6 after step 6, the second step of epoch 1
    stop = ThresholdStop(monitor="x", threshold=6.0, mode="max", every="batch")
    trainer = Trainer(Ramp(n=10), optlab.optimizers.SGD(learning_rate=1.0), [stop], epochs=10, batch_size=3)
    history = trainer.fit()
    assert trainer.step == 6 and stop.stopped_at == "Step 6"
    assert history.history["x"] == [4.0, 6.0]  # the interrupted epoch still ends (and is logged)


def test_a_key_a_callback_adds_to_the_epoch_logs_is_in_the_history():
    class Twice(Callback):
        registry_name = "twice_test"
        adds_logs = ("twice_epoch",)

        def on_epoch_end(self, epoch, logs=None):
            logs["twice_epoch"] = 2 * epoch

    history = Trainer("seed_linear", "sgd", [Twice()], epochs=3).fit()
    assert history.history["twice_epoch"] == [0, 2, 4]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"epochs": -1}, "`epochs` must be an integer >= 0"),
        ({"batch_size": 0}, "`batch_size` must be an integer >= 1 or None"),
        ({"seed": 1.5}, "`seed` must be an integer >= 0"),
        ({"dtype": "int32"}, "`dtype` must be float32 or float64"),
    ],
)
def test_invalid_trainer_arguments(kwargs, words):
    with pytest.raises(ValueError, match=words):
        Trainer("seed_linear", "sgd", **kwargs)


# -- resume ------------------------------------------------------------------------------------------


class Crash(Exception):
    pass


class KillAt(Callback):
    """Simulates a run killed at a given step."""

    registry_name = "kill_at_test"

    def __init__(self, step):
        super().__init__()
        self.at = step

    def on_train_batch_end(self, batch, logs=None):
        if self.trainer.step == self.at:
            raise Crash


def _scenario(tmp_path, kill_at=None, save_freq="epoch"):
    problem = optlab.problems.LinearRegression(n_samples=64, noise=0.5, validation_split=0.25)
    optimizer = optlab.optimizers.Adam(learning_rate=0.05, use_ema=True, gradient_accumulation_steps=2)
    callbacks = [
        ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1, min_delta=1e-3),
        EarlyStopping(monitor="val_loss", patience=4, restore_best_weights=True),
    ]
    if kill_at is not None:
        callbacks.append(KillAt(kill_at))
    callbacks.append(BackupAndRestore(str(tmp_path / "backup"), save_freq=save_freq))
    return Trainer(problem, optimizer, callbacks, epochs=12, batch_size=10, seed=7)


def _plateau_scenario(tmp_path, kill_at=None):
    """ReduceLROnPlateau halves the rate after every epoch from the second on: min_delta=10 means
    no epoch after the first improves (validation losses here are below 10), and patience=1."""
    problem = optlab.problems.LinearRegression(n_samples=64, noise=0.5, validation_split=0.25)
    optimizer = optlab.optimizers.Adam(learning_rate=0.05, gradient_accumulation_steps=2)
    callbacks = [ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1, min_delta=10.0)]
    if kill_at is not None:
        callbacks.append(KillAt(kill_at))
    callbacks.append(BackupAndRestore(str(tmp_path / "backup"), save_freq=3))
    return Trainer(problem, optimizer, callbacks, epochs=8, batch_size=10, seed=7)


def test_a_run_resumed_after_the_learning_rate_was_reduced_ends_exactly_like_an_uninterrupted_one(tmp_path):
    whole = _plateau_scenario(tmp_path / "a")
    expected_history = whole.fit().history
    # reduced at the end of epochs 1..7; as in Keras an epoch logs the rate it ran with, before the reduction
    assert expected_history["learning_rate"] == [0.05, *(0.05 * 0.5**k for k in range(7))]

    killed = _plateau_scenario(tmp_path / "b", kill_at=23)  # 5 steps per epoch: in epoch 4, rate 0.05 / 8
    with pytest.raises(Crash):
        killed.fit()
    assert killed.optimizer.learning_rate == 0.05 / 8  # the rate had changed before the kill
    resumed = _plateau_scenario(tmp_path / "b")  # a new process starts from the default rate, 0.05
    history = resumed.fit().history
    np.testing.assert_array_equal(resumed.params.flat, whole.params.flat)
    assert history == expected_history


@pytest.mark.parametrize(("save_freq", "kill_at"), [("epoch", 23), ("epoch", 5), (3, 23), (3, 40)])
def test_killed_and_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path, save_freq, kill_at):
    whole = _scenario(tmp_path / "a")
    expected_history = whole.fit().history
    expected = whole.params.flat.copy()

    killed = _scenario(tmp_path / "b", kill_at=kill_at, save_freq=save_freq)
    with pytest.raises(Crash):
        killed.fit()
    first_save = killed.steps_per_epoch if save_freq == "epoch" else save_freq
    # killed before the first save, the resumed run starts afresh: the same result either way
    assert (tmp_path / "b" / "backup" / "backup.npz").exists() == (kill_at > first_save)
    resumed = _scenario(tmp_path / "b", save_freq=save_freq)  # a new process would build the same
    history = resumed.fit().history
    np.testing.assert_array_equal(resumed.params.flat, expected)
    assert history == expected_history
    assert resumed.optimizer.iterations == whole.optimizer.iterations
    assert not (tmp_path / "b" / "backup").exists()  # deleted after a normal end


def test_a_crash_while_writing_keeps_the_previous_backup(tmp_path, monkeypatch):
    from optlab import files

    path = tmp_path / "state.npz"
    files.save_npz_atomic(path, {"format": "x", "n": 1}, {"a": np.ones(3)})
    real = np.savez

    def failing(file, **arrays):
        real(file, **{k: v for k, v in list(arrays.items())[:1]})
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing)
    with pytest.raises(OSError, match="disk full"):
        files.save_npz_atomic(path, {"format": "x", "n": 2}, {"a": np.zeros(3), "b": np.zeros(2)})
    monkeypatch.setattr(np, "savez", real)
    meta, arrays = files.load_npz(path)
    assert meta["n"] == 1 and np.array_equal(arrays["a"], np.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["state.npz"]  # no temporary file left


def test_backup_of_another_run_is_refused(tmp_path):
    first = Trainer("seed_linear", "sgd", [BackupAndRestore(str(tmp_path), delete_checkpoint=False)], epochs=2)
    first.fit()
    other = Trainer("quadratic", "sgd", [BackupAndRestore(str(tmp_path))], epochs=2)
    with pytest.raises(ValueError, match="another run"):
        other.fit()


def test_resumed_path_of_a_two_d_function_is_complete(tmp_path):
    def run(kill_at=None):
        callbacks = [KillAt(kill_at)] if kill_at else []
        callbacks.append(BackupAndRestore(str(tmp_path / "backup")))
        return Trainer("himmelblau", optlab.optimizers.Adam(learning_rate=0.1), callbacks, epochs=20)

    whole = run()
    expected = np.array(whole.fit().path)
    with pytest.raises(Crash):
        run(kill_at=13).fit()
    np.testing.assert_array_equal(np.array(run().fit().path), expected)


class Shrink(Problem):
    """One parameter p from 1 with loss p^2 / 20: the gradient is p / 10, so SGD at rate 1 multiplies p by 0.9."""

    registry_name = "shrink_test"

    def shapes(self):
        return [(1,)]

    def initial_values(self, rng):
        return [np.ones(1)]

    def loss_and_grad(self, params, grads, batch=None, rng=None):
        grads[0][...] = params[0] / 10
        return float(params[0][0] ** 2 / 20)


def test_the_moving_average_becomes_the_weights_at_the_end_of_fit():
    # Keras's test_ema_with_model_fit: p goes 1 -> 0.9 -> 0.81; the average is p1 = 0.9 after the
    # first step (momentum 0 while iterations == 0), then 0.9 * 0.9 + 0.1 * 0.81 = 0.891
    opt = optlab.optimizers.SGD(learning_rate=1.0, use_ema=True, ema_momentum=0.9)
    trainer = Trainer(Shrink(), opt, epochs=2, dtype="float64")
    trainer.fit()
    np.testing.assert_allclose(trainer.params[0], [0.891], rtol=1e-12)
    plain = Trainer(Shrink(), optlab.optimizers.SGD(learning_rate=1.0), epochs=2, dtype="float64")
    plain.fit()
    np.testing.assert_allclose(plain.params[0], [0.81], rtol=1e-12)  # without EMA: the raw weights
