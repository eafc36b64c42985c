"""Which way a logged metric improves, from its name (shared by the summary, the tracker and comparisons)."""

from __future__ import annotations


def direction(metric: str):
    """``min`` for losses and errors, ``max`` for accuracies, None when "best" means nothing (x, a, rates)."""
    from ..callbacks.base import MAXIMIZED, MINIMIZED

    name = metric.removeprefix("val_").removeprefix("epoch_")
    if name.endswith("loss") or name in MINIMIZED:
        return min
    if name in MAXIMIZED:
        return max
    return None
