"""Loss scaling: ``Optimizer.scale_loss`` and ``LossScaleOptimizer``, Keras's
loss_scale_optimizer_test.py ported (its reference values are by hand: SGD with lr 0.5)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optlab import optimizers
from optlab.optimizers import SGD, LossScaleOptimizer

GRADS = np.array([1.0, 6.0, 7.0, 2.0])
START = np.array([1.0, 2.0, 3.0, 4.0])


def test_scale_loss_by_the_factor():
    assert SGD(0.1).scale_loss(3.0) == 3.0
    assert SGD(0.1, loss_scale_factor=128.0).scale_loss(3.0) == 384.0


def test_finite_step():
    # p - 0.5 * (g * s) / s = [1, 2, 3, 4] - 0.5 * [1, 6, 7, 2]
    opt = LossScaleOptimizer(SGD(learning_rate=0.5))
    v = START.copy()
    opt.apply([GRADS * opt.initial_scale], [v])
    np.testing.assert_allclose(v, [0.5, -1.0, -0.5, 3.0], rtol=1e-12)
    assert opt.iterations == 1


def test_apply_with_no_vars_after_build_and_an_inner_factor_cleared():
    inner = SGD(learning_rate=0.5, loss_scale_factor=100)
    opt = LossScaleOptimizer(inner)
    assert inner.loss_scale_factor is None  # as Keras: the wrapper's scale replaces it
    v = START.copy()
    opt.build([v])
    opt.apply([GRADS * opt.initial_scale])
    np.testing.assert_allclose(v, [0.5, -1.0, -0.5, 3.0], rtol=1e-12)


def test_infinite_step_is_skipped():
    opt = LossScaleOptimizer(SGD(learning_rate=0.5))
    v = START.copy()
    opt.apply([np.full(4, np.inf)], [v])
    np.testing.assert_array_equal(v, START)
    assert opt.iterations == 0 and opt.dynamic_scale == 2.0**14


def test_overwrite_with_gradient_takes_the_gradient_unscaled():
    inner = SGD(learning_rate=0.5)
    inner.overwrite_with_gradient(indices=[0])
    opt = LossScaleOptimizer(inner)
    v = START.copy()
    opt.apply([GRADS], [v])
    np.testing.assert_array_equal(v, GRADS)


def test_downscaling_and_upscaling():
    # 400 halved four times: 25; 2 doubled after every 2 finite steps, 8 steps: 2 * 2**4 = 32
    down = LossScaleOptimizer(SGD(learning_rate=0.5), initial_scale=400.0)
    v = START.copy()
    for _ in range(4):
        down.apply([np.full(4, np.inf)], [v])
    assert down.scale_loss(1.0) == 25.0
    up = LossScaleOptimizer(SGD(learning_rate=0.5), initial_scale=2.0, dynamic_growth_steps=2)
    for _ in range(8):
        up.apply([GRADS], [v])
    assert up.scale_loss(1.0) == 32.0 and up.iterations == 8


def test_config_is_keras_form_and_round_trips():
    inner = SGD(learning_rate=0.5, momentum=0.06, nesterov=True, weight_decay=0.004)
    opt = LossScaleOptimizer(inner, initial_scale=64.0, dynamic_growth_steps=10)
    config = opt.get_config()
    assert config["inner_optimizer"]["class_name"] == "sgd" and config["initial_scale"] == 64.0
    again = optimizers.get({"class_name": "LossScaleOptimizer", "config": config})
    assert isinstance(again, LossScaleOptimizer) and again.get_config() == config
    assert optimizers.get(opt) is opt


def test_state_round_trips_the_scale_and_refuses_a_bad_one():
    opt = LossScaleOptimizer(SGD(learning_rate=0.5, momentum=0.9), initial_scale=8.0, dynamic_growth_steps=3)
    v = START.copy()
    opt.apply([GRADS], [v])
    opt.apply([np.full(4, np.nan)], [v])
    opt.apply([GRADS], [v])
    meta, arrays = opt.get_state()
    twin = LossScaleOptimizer(SGD(learning_rate=0.5, momentum=0.9), dynamic_growth_steps=3)
    twin_v = v.copy()
    twin.build([twin_v])
    twin.set_state(meta, {k: a.copy() for k, a in arrays.items()})
    assert (twin.dynamic_scale, twin.step_counter) == (4.0, 1)
    for o, p in ((opt, v), (twin, twin_v)):
        o.apply([GRADS * 4.0], [p])
    np.testing.assert_array_equal(twin_v, v)
    bad = {**meta, "loss_scale": {"dynamic_scale": -1.0, "step_counter": 0}}
    with pytest.raises(ValueError, match="`loss_scale` must hold a finite dynamic_scale > 0"):
        twin.set_state(bad, arrays)
    assert (twin.dynamic_scale, twin.step_counter) == (4.0, 2)  # unchanged: counted 2 finite steps, doubles at 3


def test_invalid_arguments():
    with pytest.raises(ValueError, match="`initial_scale` must be a finite float > 0"):
        LossScaleOptimizer(SGD(0.1), initial_scale=math.inf)
    with pytest.raises(ValueError, match="`dynamic_growth_steps` must be an integer >= 1"):
        LossScaleOptimizer(SGD(0.1), dynamic_growth_steps=0)
    with pytest.raises(TypeError, match="`inner_optimizer` must be an optimizer"):
        LossScaleOptimizer(3)


def test_the_trainer_scales_the_gradients_as_a_scaled_loss_would():
    # a power-of-two scale is exact: scaled then unscaled, every step is the unscaled one's
    from optlab.trainer import Trainer

    runs = {}
    for label, opt in [
        ("plain", SGD(learning_rate=0.05)),
        ("factor", SGD(learning_rate=0.05, loss_scale_factor=128.0)),
        ("dynamic", LossScaleOptimizer(SGD(learning_rate=0.05), initial_scale=2.0**10, dynamic_growth_steps=3)),
    ]:
        trainer = Trainer("seed_linear", opt, epochs=12)
        trainer.fit()
        runs[label] = trainer.params.flat.copy()
    np.testing.assert_array_equal(runs["factor"], runs["plain"])
    np.testing.assert_array_equal(runs["dynamic"], runs["plain"])
