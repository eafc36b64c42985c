"""Reference computations the tests share, written independently of the code under test."""

from __future__ import annotations

import numpy as np


def finite_difference(problem, params, batch, h=1e-6):
    """Central differences of ``problem.loss`` on ``batch``, one coordinate at a time (float64 params)."""
    grads = []
    for p in params:
        g = np.zeros(p.shape)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + h
            up = problem.loss(params, batch)
            p[idx] = old - h
            down = problem.loss(params, batch)
            p[idx] = old
            g[idx] = (up - down) / (2 * h)
        grads.append(g)
    return grads


def tutorial_first_epoch_within(threshold, learning_rate, epochs):
    """Plain gradient descent on the tutorial's three points from a = b = 2, written out: the
    first epoch (1-based) after which max(|a - 1|, |b - 1|) <= threshold, or None."""
    a = b = 2.0
    for epoch in range(1, epochs + 1):
        ga = sum(x * (a * x + b - y) for x, y in ((0, 1), (1, 2), (2, 3)))
        gb = sum(a * x + b - y for x, y in ((0, 1), (1, 2), (2, 3)))
        a, b = a - learning_rate * ga, b - learning_rate * gb
        if max(abs(a - 1), abs(b - 1)) <= threshold:
            return epoch
    return None
