"""AdaBelief: the paper's rule, optlab's conformance kit, and discovery through the entry point."""

from __future__ import annotations

import math

import numpy as np
import pytest
from optlab_adabelief import AdaBelief

import optlab
from optlab.testing import check_optimizer, optimizer_checks


def paper_adabelief(p, grads, lr, b1=0.9, b2=0.999, eps=1e-16, amsgrad=False):
    """Algorithm 2 of Zhuang et al. (2020), transcribed in float64 numpy."""
    p = p.astype(np.float64).copy()
    m = np.zeros_like(p)
    s = np.zeros_like(p)
    s_max = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * (g - m) ** 2 + eps
        if amsgrad:
            s_max = np.maximum(s_max, s)
            s_use = s_max
        else:
            s_use = s
        m_hat = m / (1 - b1**t)
        s_hat = s_use / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(s_hat) + eps)
    return p


@pytest.mark.parametrize("amsgrad", [False, True])
def test_matches_the_papers_algorithm(amsgrad):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(50)
    grads = [rng.standard_normal(50) * (1 + k % 3) for k in range(20)]
    p = p0.copy()
    opt = AdaBelief(learning_rate=0.01, amsgrad=amsgrad, epsilon=1e-12)
    for g in grads:
        opt.apply([g], [p])
    np.testing.assert_allclose(p, paper_adabelief(p0, grads, 0.01, eps=1e-12, amsgrad=amsgrad), rtol=1e-12)


def test_first_step_by_hand():
    # m = 0.1 g ; s = 0.001 (g - 0.1 g)^2 + eps = 0.001 * 0.81 g^2 + eps
    # p -= lr * (m / 0.1) / (sqrt(s / 0.001) + eps) = lr * g / (0.9 |g| + ...) = lr / 0.9 * sign(g)
    p = np.zeros(2)
    AdaBelief(learning_rate=0.09).apply([np.array([2.0, -3.0])], [p])
    np.testing.assert_allclose(p, [-0.1, 0.1], rtol=1e-9)


def test_found_by_name_through_the_entry_point():
    opt = optlab.optimizers.get({"name": "AdaBelief", "learning_rate": 0.01})
    assert type(opt) is AdaBelief and opt.learning_rate == 0.01
    assert optlab.optimizers.registry.source("adabelief") == "optlab-adabelief"
    listed = {row["name"]: row["distribution"] for row in optlab.plugins.report()["components"]["optimizers"]}
    assert listed["adabelief"] == "optlab-adabelief"


def test_conformance_kit():
    check_optimizer(AdaBelief, learning_rate=0.05)


@pytest.mark.parametrize("check", optimizer_checks(AdaBelief, learning_rate=0.05, amsgrad=True), ids=str)
def test_conformance_with_amsgrad(check):
    check()


def test_invalid_arguments():
    with pytest.raises(ValueError, match=r"`beta_2` must be a float in \[0, 1\)"):
        AdaBelief(beta_2=1.0)
    assert math.isclose(AdaBelief().epsilon, 1e-16)


def test_a_state_with_a_negative_belief_is_refused_and_the_optimizer_kept():
    # s is an average of squares (plus eps): a negative entry can only come from a damaged file
    p = np.ones(3, dtype=np.float32)
    opt = AdaBelief(learning_rate=0.05)
    opt.apply_gradients([(np.full(3, 0.5, dtype=np.float32), p)])
    meta, arrays = opt.get_state()
    bad = {k: v.copy() for k, v in arrays.items()}
    (key,) = [k for k in bad if k.endswith("belief")]
    bad[key][1] = -1.0
    with pytest.raises(ValueError, match="slot 'belief' holds -1"):
        opt.set_state(meta, bad)
    _, arrays_after = opt.get_state()
    assert all(np.array_equal(arrays_after[k], arrays[k]) for k in arrays)
