"""Which parameters: named ones (``{name: array}``), and choices made before the optimizer knows
them (Keras's ``exclude_from_weight_decay`` way: the arrays, names matched by regular expression,
or positions), used by weight decay, constraints and ``overwrite_with_gradient``."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..names import name_pattern
from .layout import Layout


def named(params, owner: str) -> tuple[list, list[str] | None]:
    """``params`` as a list, and their names if they came as a dict ``{name: array}`` (else None)."""
    if not is_mapping(params):
        return list(params), None
    for name in params:
        if not isinstance(name, str) or not name:
            raise TypeError(f"{owner}: parameter names must be non-empty strings; received {name!r}")
    return list(params.values()), list(params)


def in_order(mapping: Mapping, names: list[str], owner: str, what: str) -> list:
    """The values of ``mapping`` in the order of ``names`` (the names the optimizer was built with)."""
    missing = [n for n in names if n not in mapping]
    extra = [n for n in mapping if n not in set(names)]
    if missing or extra:
        parts = [f"missing {missing[:5]}" if missing else "", f"unknown {extra[:5]}" if extra else ""]
        raise ValueError(
            f"{owner}: the {what} do not match the parameters' names ({'; '.join(p for p in parts if p)}); "
            f"the optimizer's parameters are {names[:10]}{' ...' if len(names) > 10 else ''}"
        )
    return [mapping[n] for n in names]


class Choice:
    """Parameters chosen before the optimizer knows them, as Keras's ``exclude_from_weight_decay``
    chooses: the arrays themselves (``var_list``), names (``var_names``, regular expressions,
    ``re.search``) or positions (``indices``, negative from the end)."""

    def __init__(self, var_list=None, var_names=None, indices=None, what: str = ""):
        self.what = what
        self.arrays = list(var_list or ())
        self.indices = list(indices or ())
        for i in self.indices:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                raise TypeError(f"{what}: indices must be integers; received {i!r}")
        self.pattern = name_pattern(var_names, f"{what}: var_names")

    def resolve(self, params: list, names: list[str] | None, owner: str) -> set[int]:
        """The positions of the chosen parameters among ``params`` (named ``names``, or unnamed)."""
        n = len(params)
        bad = sorted(i for i in self.indices if not -n <= i < n)
        if bad:
            raise ValueError(
                f"{owner}: {self.what}(indices=...) names parameter(s) {bad}, but there are {n} parameters "
                f"(allowed: 0 to {n - 1}, or -{n} to -1)"
            )
        chosen = {int(i) % n for i in self.indices}
        for a in self.arrays:
            chosen.update(i for i, p in enumerate(params) if p is a)
        if self.pattern is not None:
            if names is None:
                raise ValueError(
                    f"{owner}: {self.what}(var_names=...) selects parameters by name, and these are unnamed: "
                    "pass them as a dict {name: array} to build() or apply()"
                )
            chosen.update(i for i, name in enumerate(names) if self.pattern.search(name))
        return chosen


def label(layout: Layout, i: int) -> str:
    return f"{i} ({layout.names[i]!r})" if layout.names is not None else str(i)


def is_mapping(value) -> bool:
    """``{name: array}``, not a list or tuple (those are tested first: the per-step path's case)."""
    return not isinstance(value, (list, tuple)) and isinstance(value, Mapping)
