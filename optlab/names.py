"""The "did you mean" of every error message about an unknown name (arguments, registry names, logged metrics),
and Keras's default labels (``auto_name``).

One rule everywhere: the candidate most similar to the name (``difflib``'s ratio, at least
``CUTOFF``), compared case-insensitively.
"""

from __future__ import annotations

import re
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


#: how many default names each snake-case class name has handed out (Keras's ``object_name_uids``)
_NAME_UIDS: dict[str, int] = {}


def counted(count: int, noun: str) -> str:
    """``1 run``, ``2 runs``: a count with its noun, plural unless it is one."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def snake_case(name: str) -> str:
    """Keras's ``to_snake_case``: ``"AdamW"`` -> ``"adam_w"``, ``"RMSprop"`` -> ``"rm_sprop"``."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def auto_name(class_name: str) -> str:
    """A default label, unique in the process, as Keras's ``auto_name`` makes it.

    The first ``Adam()`` is ``"adam"``, the next ``"adam_1"``; names given explicitly do not count.
    """
    base = snake_case(class_name)
    n = _NAME_UIDS.get(base, 0)
    _NAME_UIDS[base] = n + 1
    return f"{base}_{n}" if n else base


def name_pattern(patterns, what: str):
    """One compiled regular expression matching any of ``patterns`` (strings, as Keras's name
    rules take them: ``re.search``), or None for none; ``what`` names the argument in errors."""
    import re

    patterns = [patterns] if isinstance(patterns, str) else list(patterns or ())
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"{what} must be strings (regular expressions); received {pattern!r}")
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"{what} holds {pattern!r}, which is not a regular expression ({error})") from None
    return re.compile("|".join(f"(?:{p})" for p in sorted(set(patterns)))) if patterns else None
