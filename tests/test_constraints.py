"""Constraints (Keras's four and any callable) and ``overwrite_with_gradient``, ported from Keras's
constraints_test.py and optimizer_test.py; reference values by hand, as Keras's tests give them."""

from __future__ import annotations

import numpy as np
import pytest

from optlab import constraints
from optlab.optimizers import SGD, Adam


def _example():  # Keras's get_example_array
    rng = np.random.default_rng(3537)
    x = rng.random((100, 100)) * 100.0 - 50.0
    x[0, 0] = 0.0
    return x


def test_max_norm_by_hand():
    # columns of norm 0, 1, 3 and 3*sqrt(3): those above 2 are scaled down to norm 2
    x = np.array([[0, 0, 0], [1.0, 0, 0], [3, 0, 0], [3, 3, 3]]).T
    target = np.array([[0, 0, 0], [1.0, 0, 0], [2.0, 0, 0], [2 / np.sqrt(3)] * 3]).T
    np.testing.assert_allclose(constraints.MaxNorm(2.0)(x), target, rtol=1e-6, atol=1e-7)


def test_non_neg_unit_norm_and_min_max_norm():
    x = _example()
    assert (constraints.NonNeg()(x) >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(constraints.UnitNorm()(x), axis=0), 1.0, rtol=1e-6)
    norms = np.linalg.norm(constraints.MinMaxNorm(min_value=0.2, max_value=0.5)(x), axis=0)
    assert (norms >= 0.2 - 1e-9).all() and (norms <= 0.5 + 1e-6).all()
    # rate 0.5 moves half way: a column of norm 4 goes to 0.5 * 1 + 0.5 * 4 = 2.5
    column = np.array([[4.0], [0.0]])
    np.testing.assert_allclose(constraints.MinMaxNorm(0.0, 1.0, rate=0.5)(column), [[2.5], [0.0]], rtol=1e-6)
    np.testing.assert_array_equal(constraints.Constraint()(np.array([1.0, -2.0])), [1.0, -2.0])


def test_get_and_configs():
    assert isinstance(constraints.get("unit_norm"), constraints.UnitNorm)
    assert isinstance(constraints.get("MaxNorm"), constraints.MaxNorm)
    assert constraints.get(None) is None
    with pytest.raises(ValueError, match=r"Unknown constraint 'max_nrom' \(did you mean 'max_norm'\?\)"):
        constraints.get("max_nrom")
    c = constraints.MaxNorm(max_value=3.0, axis=1)
    assert c.get_config() == {"max_value": 3.0, "axis": 1}  # Keras's: the arguments alone
    assert constraints.serialize(c) == {"class_name": "MaxNorm", "config": {"max_value": 3.0, "axis": 1}}
    again = constraints.get(constraints.serialize(c))
    np.testing.assert_array_equal(again(_example()), c(_example()))
    with pytest.raises(ValueError, match="`axis` must be an integer or a list of integers"):
        constraints.UnitNorm(axis="rows")
    with pytest.raises(ValueError, match="`min_value` must be <= `max_value`"):
        constraints.MinMaxNorm(min_value=2.0, max_value=1.0)


def test_constraints_are_applied_after_the_step():
    # Keras's test_constraints_are_applied: a tiny step, then NonNeg
    v = np.random.default_rng(0).random((2, 2)) - 1.0
    opt = SGD(learning_rate=0.0001)
    opt.add_constraint(constraints.NonNeg(), var_list=[v])
    opt.apply_gradients([(np.zeros((2, 2)), v)])
    assert v.min() == 0.0


def test_a_constraint_sees_the_updated_parameter_and_others_are_left_alone():
    # SGD lr 1: p = 3 - 1 = 2 per element; then MaxNorm(1) on each column of norm 2*sqrt(2)
    params = {"kernel": np.full((2, 2), 3.0), "bias": np.full(2, 3.0)}
    grads = {k: np.ones_like(v) for k, v in params.items()}
    opt = SGD(learning_rate=1.0)
    opt.add_constraint("max_norm", var_names=["kernel"])  # Keras's default max_value=2: columns of norm 2
    opt.add_constraint(lambda w: np.clip(w, -1.5, 1.5), var_names=["bias"])
    opt.apply(grads, params)
    np.testing.assert_allclose(params["kernel"], np.full((2, 2), 2 / np.sqrt(2)), rtol=1e-6)
    np.testing.assert_array_equal(params["bias"], [1.5, 1.5])


def test_constraint_mistakes_are_clear():
    opt = SGD(learning_rate=0.1)
    opt.add_constraint("non_neg", indices=[0])
    opt.add_constraint("unit_norm", indices=[0])
    p = np.ones(2)
    with pytest.raises(ValueError, match="parameter 0 has two constraints"):
        opt.apply([np.ones(2)], [p])
    np.testing.assert_array_equal(p, 1.0)
    shrink = SGD(learning_rate=0.1)
    shrink.add_constraint(lambda w: w[:1], indices=[0])
    with pytest.raises(ValueError, match=r"returned shape \(1,\) for a parameter of shape \(2,\)"):
        shrink.apply([np.ones(2)], [np.ones(2)])
    built = SGD(learning_rate=0.1)
    built.build([np.ones(2)])
    with pytest.raises(ValueError, match=r"add_constraint\(\) can only be called before the optimizer is built"):
        built.add_constraint("non_neg")


def test_overwrite_with_gradient():
    # Keras's test_overwrite_with_gradient
    v, v2 = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[1.0, 2.0], [3.0, 4.0]])
    opt = SGD(learning_rate=1.0)
    opt.overwrite_with_gradient(var_list=[v])
    opt.apply_gradients([(np.ones((2, 2)), v), (np.ones((2, 2)), v2)])
    np.testing.assert_array_equal(v, [[1.0, 1.0], [1.0, 1.0]])
    np.testing.assert_array_equal(v2, [[0.0, 1.0], [2.0, 3.0]])


def test_overwrite_with_gradient_with_gradient_accumulation():
    # Keras's test of the same name: the parameter takes the running maximum on every 2nd call
    v, v2 = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[1.0, 2.0], [3.0, 4.0]])
    ones, twos = np.ones((2, 2)), np.full((2, 2), 2.0)
    opt = SGD(learning_rate=1.0, gradient_accumulation_steps=2)
    opt.overwrite_with_gradient(indices=[0])
    opt.apply_gradients([(ones, v), (ones, v2)])
    assert (opt._iterations, opt.iterations) == (1, 0)
    np.testing.assert_array_equal(v, [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(v2, [[1.0, 2.0], [3.0, 4.0]])
    acc = opt.variables
    np.testing.assert_array_equal(acc["0/accumulated_gradient"], ones)
    np.testing.assert_array_equal(acc["1/accumulated_gradient"], ones)
    opt.apply_gradients([(twos, v), (twos, v2)])
    np.testing.assert_array_equal(v, [[2.0, 2.0], [2.0, 2.0]])
    np.testing.assert_array_equal(v2, [[-0.5, 0.5], [1.5, 2.5]])  # the mean gradient 1.5
    np.testing.assert_array_equal(opt.variables["0/accumulated_gradient"], 0.0)
    opt.apply_gradients([(ones, v), (ones, v2)])
    np.testing.assert_array_equal(v, [[2.0, 2.0], [2.0, 2.0]])
    np.testing.assert_array_equal(opt.variables["0/accumulated_gradient"], ones)


def test_an_overwritten_parameter_is_left_out_of_the_rest_of_the_step():
    # its slots stay, no decay, no EMA, and a global norm for clipping does not count it:
    # g2 = [3, 4] has norm 5 alone; with the overwritten [30, 40] it would be ~50
    v, w = np.zeros(2), np.zeros(2)
    opt = Adam(learning_rate=0.1, weight_decay=0.5, global_clipnorm=5.0, use_ema=True)
    opt.overwrite_with_gradient(var_list=[v])
    opt.apply_gradients([(np.array([30.0, 40.0]), v), (np.array([3.0, 4.0]), w)])
    np.testing.assert_array_equal(v, [30.0, 40.0])
    state = opt.variables
    np.testing.assert_array_equal(state["0/momentum"], 0.0)
    np.testing.assert_array_equal(state["0/velocity"], 0.0)
    np.testing.assert_array_equal(state["0/ema"], 0.0)
    np.testing.assert_allclose(state["1/momentum"], [0.3, 0.4])  # (1 - 0.9) * g, g unclipped (norm 5)
