"""Problems to optimize: the tutorial's line fit, test functions, a quadratic, real small data sets.

>>> problem = get("seed_linear")
>>> params = problem.init(seed=0)                     # views of one flat buffer
>>> grads = optlab.flat_like(params)                  # doctest: +SKIP
>>> loss = problem.loss_and_grad(params, grads)       # doctest: +SKIP
"""

from __future__ import annotations

from ..commands import check_package

check_package()  # (python -m optlab.problems imports this package before its __main__)

from ..plugins import REGISTRIES  # noqa: E402
from .base import SIZE_CLASSES, Budget, Problem, Target  # noqa: E402
from .data import LinearRegression, LogisticRegression, MLPDigits, SeedLinear, SoftmaxRegression  # noqa: E402
from .factorization import MatrixFactorization  # noqa: E402
from .functions import (  # noqa: E402
    AnalyticFunction,
    Beale,
    Himmelblau,
    NoisyQuadratic,
    Quadratic,
    Rastrigin,
    Rosenbrock,
    StyblinskiTang,
)
from .nets import AutoencoderDigits, CNNDigits  # noqa: E402

BUILTIN = (
    SeedLinear,
    LinearRegression,
    Rosenbrock,
    Beale,
    Himmelblau,
    Rastrigin,
    StyblinskiTang,
    Quadratic,
    NoisyQuadratic,
    LogisticRegression,
    SoftmaxRegression,
    MLPDigits,
    CNNDigits,
    AutoencoderDigits,
    MatrixFactorization,
)

#: problem names (filled by the plugin hooks on first use: the built-ins and installed plugins)
registry = REGISTRIES["problems"]


def get(identifier, **overrides) -> Problem | None:
    """A problem from a name, a config dict (``{"name": ..., **arguments}``) or an instance."""
    if identifier is None or isinstance(identifier, Problem):
        return identifier
    return registry.create(identifier, **overrides)


__all__ = [
    "SIZE_CLASSES",
    "AnalyticFunction",
    "Budget",
    "Problem",
    "Target",
    "get",
    "registry",
    *(c.__name__ for c in BUILTIN),
]
