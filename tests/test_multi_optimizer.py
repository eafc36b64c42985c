"""Optimizer groups (Keras's MultiOptimizer and OptimizerMap): each parameter stepped by its
group's optimizer exactly as that optimizer alone would step it; state, logs and callbacks."""

from __future__ import annotations

import numpy as np
import pytest

from optlab import optimizers
from optlab.callbacks import LearningRateScheduler
from optlab.optimizers import SGD, Adam, AdamW, MultiOptimizer, Muon, OptimizerMap
from optlab.trainer import Trainer


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "embedding/table": rng.normal(size=(5, 3)),
        "encoder/dense/kernel": rng.normal(size=(3, 4)),
        "encoder/dense/bias": rng.normal(size=4),
        "head/kernel": rng.normal(size=(4, 2)),
    }


def _grads(params, step):
    rng = np.random.default_rng(100 + step)
    return {k: rng.normal(size=v.shape) for k, v in params.items()}


def test_optimizer_map_looks_up_as_keras_does():
    # Keras's docstring example: an exact key first, else a pattern matching the whole name
    adam, sgd, rms = Adam(), SGD(), optimizers.RMSprop()
    groups = OptimizerMap(default_optimizer=rms)
    groups["encoder/layer_0/dense"] = adam
    groups["encoder/.*"] = sgd
    groups["decoder"] = adam
    assert groups["decoder"] is adam
    assert groups["encoder/layer_0/dense"] is adam
    assert groups["encoder/layer_0/attention/query"] is sgd
    assert groups["decoder/layer_0/dense"] is rms  # "decoder" must match the whole name
    groups[".*/query"] = adam
    with pytest.raises(ValueError, match="Multiple optimizers assigned to parameter 'encoder/layer_0/attention/query'"):
        _ = groups["encoder/layer_0/attention/query"]
    with pytest.raises(ValueError, match="already mapped"):
        groups["decoder"] = sgd
    with pytest.raises(ValueError, match="cannot be a MultiOptimizer"):
        groups["x"] = MultiOptimizer(OptimizerMap(SGD()))


def test_each_group_steps_exactly_as_its_optimizer_alone():
    # Muon for the matrices, AdamW for the rest: the group's result is, bit for bit, what each
    # optimizer gives on its own share
    def make():
        return Muon(learning_rate=0.02), AdamW(learning_rate=1e-3, weight_decay=0.01)

    muon, adamw = make()
    multi = MultiOptimizer(OptimizerMap(adamw, {".*/kernel": muon}))
    params = _params()
    twin_muon, twin_adamw = make()
    alone = _params()
    kernels = [k for k in alone if k.endswith("/kernel")]
    rest = [k for k in alone if k not in kernels]
    for step in range(4):
        grads = _grads(params, step)
        multi.apply(grads, params)
        twin_muon.apply({k: grads[k] for k in kernels}, {k: alone[k] for k in kernels})
        twin_adamw.apply({k: grads[k] for k in rest}, {k: alone[k] for k in rest})
    for k in params:
        np.testing.assert_array_equal(params[k], alone[k])
    assert multi.iterations == 4 and muon.iterations == 4 and adamw.iterations == 4
    assert multi.optimizers == [muon, adamw]


def test_a_callable_chooses_by_name_or_by_position():
    fast, slow = SGD(learning_rate=1.0), SGD(learning_rate=0.1)
    chosen = []

    def choose(label):
        chosen.append(label)
        return fast if label == "0" else slow

    multi = MultiOptimizer(choose)
    a, b = np.ones(2), np.ones(2)
    multi.apply([np.ones(2), np.ones(2)], [a, b])  # unnamed: known by position
    assert chosen == ["0", "1"]
    np.testing.assert_allclose(a, 0.0)
    np.testing.assert_allclose(b, 0.9)
    multi.apply([np.ones(2), np.ones(2)])  # the parameters it was built on
    np.testing.assert_allclose(a, -1.0)


def test_there_is_no_single_learning_rate_as_in_keras():
    multi = MultiOptimizer(OptimizerMap(SGD(learning_rate=0.1, name="sgd_a"), {"b": SGD(0.2, name="sgd_b")}))
    with pytest.raises(AttributeError, match="Learning rate cannot be accessed on a MultiOptimizer"):
        _ = multi.learning_rate
    with pytest.raises(AttributeError, match="Learning rate cannot be set on a MultiOptimizer"):
        multi.learning_rate = 0.5
    assert multi.rate_logs() == {"learning_rate_sgd_b": 0.2, "learning_rate_sgd_a": 0.1}


def test_in_the_training_loop_with_callbacks_setting_each_rate():
    # one group holding every parameter behaves as its optimizer alone; each rate is logged and set
    plain = Trainer("seed_linear", SGD(learning_rate=0.05), epochs=6)
    plain.fit()
    multi = MultiOptimizer(OptimizerMap(SGD(learning_rate=0.05, name="sgd_all")))
    grouped = Trainer("seed_linear", multi, [LearningRateScheduler(lambda epoch, lr: lr)], epochs=6)
    history = grouped.fit()
    np.testing.assert_array_equal(grouped.params.flat, plain.params.flat)
    assert history.history["learning_rate_sgd_all"] == [0.05] * 6
    halving = MultiOptimizer(OptimizerMap(SGD(learning_rate=0.4, name="sgd_h")))
    Trainer("seed_linear", halving, [LearningRateScheduler(lambda epoch, lr: lr / 2)], epochs=3).fit()
    assert halving.optimizers[0].learning_rate == pytest.approx(0.05)  # 0.4 halved at each of 3 epochs


def test_state_round_trip_resumes_bit_for_bit_and_a_bad_state_changes_nothing():
    def make():
        return MultiOptimizer(OptimizerMap(Adam(learning_rate=0.01), {".*/kernel": SGD(0.1, momentum=0.9)}))

    whole, params = make(), _params()
    for step in range(6):
        whole.apply(_grads(params, step), params)
    first, resumed = make(), _params()
    for step in range(3):
        first.apply(_grads(resumed, step), resumed)
    meta, arrays = first.get_state()
    meta, arrays = meta, {k: a.copy() for k, a in arrays.items()}
    second = make()
    second.build(resumed)
    second.set_state(meta, arrays)
    for step in range(3, 6):
        second.apply(_grads(resumed, step), resumed)
    for k in params:
        np.testing.assert_array_equal(resumed[k], params[k])
    assert second.iterations == 6

    before = {k: a.copy() for k, a in second.get_state()[1].items()}
    broken = dict(arrays)
    key = next(k for k in broken if k.startswith("1/"))
    broken[key] = broken[key][:-1]  # the second optimizer's state is cut short
    with pytest.raises(ValueError):
        second.set_state(meta, broken)
    after = second.get_state()[1]
    assert all(np.array_equal(after[k], before[k]) for k in before)  # the first optimizer too
    assert second.iterations == 6


def test_config_round_trips_in_keras_form():
    multi = MultiOptimizer(OptimizerMap(Adam(learning_rate=0.01), {".*/kernel": SGD(0.1)}), name="groups")
    config = multi.get_config()
    again = optimizers.get({"class_name": "MultiOptimizer", "config": config})
    assert isinstance(again, MultiOptimizer) and again.get_config() == config
    with pytest.raises(TypeError, match="function as optimizer_map has no plain-data config"):
        MultiOptimizer(lambda name: SGD()).get_config()


def test_optimizer_groups_from_the_command_line_step_each_group_with_its_optimizer(tmp_path):
    # the line fit: `a` by SGD at 0.1 (its group), `b` by the default SGD at rate 0, which leaves it alone
    from cli_helpers import optlab as optlab_cli

    common = ("problem=seed_linear", "trainer.epochs=3", "tracking=none", "trainer.progress_bar=false")
    common += ("optimizer=sgd", "optimizer.learning_rate=0.0")
    still = optlab_cli(tmp_path, *common)
    grouped = optlab_cli(tmp_path, *common, "optimizer_groups=[{match: a, optimizer: {name: sgd, learning_rate: 0.1}}]")
    for result in (still, grouped):
        assert result.returncode == 0, result.stderr

    def final(result, key):
        (line,) = [text for text in result.stdout.splitlines() if text.split()[:1] == [key]]
        return float(line.split("final")[1].split()[0])

    assert final(grouped, "position/b") == final(still, "position/b")  # untouched, as with rate 0
    assert final(grouped, "position/a") != final(still, "position/a")
    # each optimizer's rate is logged under its name (Keras's default names: sgd, then sgd_1)
    assert final(grouped, "train/learning_rate_sgd") == 0.0 and final(grouped, "train/learning_rate_sgd_1") == 0.1
