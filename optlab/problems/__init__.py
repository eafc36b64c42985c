"""Problems to optimize: the tutorial's line fit, test functions, a quadratic, real small data sets.

>>> problem = get("seed_linear")
>>> params = problem.init(seed=0)                     # views of one flat buffer
>>> grads = optlab.flat_like(params)                  # doctest: +SKIP
>>> loss = problem.loss_and_grad(params, grads)       # doctest: +SKIP
"""

from __future__ import annotations

from ..plugins import REGISTRIES
from .base import Problem
from .data import LinearRegression, LogisticRegression, MLPDigits, SeedLinear
from .functions import Beale, Himmelblau, NoisyQuadratic, Quadratic, Rastrigin, Rosenbrock

BUILTIN = (
    SeedLinear,
    LinearRegression,
    Rosenbrock,
    Beale,
    Himmelblau,
    Rastrigin,
    Quadratic,
    NoisyQuadratic,
    LogisticRegression,
    MLPDigits,
)

#: problem names (filled by the plugin hooks on first use: the built-ins and installed plugins)
registry = REGISTRIES["problems"]


def get(identifier, **overrides) -> Problem | None:
    """A problem from a name, a config dict (``{"name": ..., **arguments}``) or an instance."""
    if identifier is None or isinstance(identifier, Problem):
        return identifier
    return registry.create(identifier, **overrides)


__all__ = ["Problem", "get", "registry", *(c.__name__ for c in BUILTIN)]
