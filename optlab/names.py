"""The "did you mean" of every error message about an unknown name (arguments, registry names, logged metrics).

One rule everywhere: the candidate most similar to the name (``difflib``'s ratio, at least
``CUTOFF``), compared case-insensitively.
"""

from __future__ import annotations

from collections.abc import Iterable
from difflib import get_close_matches

#: the least similarity (difflib's ratio, 0 to 1) a suggestion needs
CUTOFF = 0.6


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate most similar to ``name``, or None when none is similar enough (or ``name`` is not a string)."""
    if not isinstance(name, str):
        return None
    candidates = sorted(set(candidates))
    by_lower = {c.lower(): c for c in reversed(candidates)}  # the first spelling of each wins
    match = get_close_matches(name.lower(), list(by_lower), n=1, cutoff=CUTOFF)
    return by_lower[match[0]] if match else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest candidate, or ``""``: the tail of an error message."""
    match = closest(name, candidates)
    return f" (did you mean {match!r}?)" if match else ""
