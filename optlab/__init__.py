"""optlab: a laboratory for gradient-descent optimizers.

Keras 3's optimizers and learning-rate schedules on numba kernels over numpy
arrays. Submodules load on first use, so ``import optlab`` is light (no numba,
no hydra, no mlflow).
"""

from __future__ import annotations

import importlib

#: names the package gives from its modules, imported on first use (so that ``python -m optlab``
#: installs its signal handlers before numpy is imported, and ``import optlab`` is instant)
_LAZY = {
    "FlatArrays": "flat",
    "flat_like": "flat",
    "flat_parameters": "flat",
    "flatten": "flat",
    "IndexedSlices": "sparse",
}


def __getattr__(name):
    if name == "hookimpl":  # the marker plugin authors decorate their hooks with
        from .hookspecs import hookimpl

        return hookimpl
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'optlab' has no attribute {name!r}")


__version__ = "0.1.0"

_SUBMODULES = {
    "optimizers",
    "schedules",
    "kernels",
    "hparams",
    "registry",
    "names",
    "plugins",
    "hookspecs",
    "testing",
    "bench",
    "problems",
    "callbacks",
    "trainer",
    "constraints",
    "sparse",
}


def __dir__():
    return sorted(set(globals()) | _SUBMODULES | set(_LAZY) | {"hookimpl"})


__all__ = [
    "FlatArrays",
    "IndexedSlices",
    "__version__",
    "flat_like",
    "flat_parameters",
    "flatten",
    "optimizers",
    "schedules",
]
