"""The plugin hooks: how optimizers, schedules, callbacks and problems get their names.

A plugin is a module (or object) with functions named like the hooks below, marked with
``@optlab.hookimpl``, declared as an entry point in the group ``optlab`` of its
distribution::

    [project.entry-points.optlab]
    adabelief = "optlab_adabelief"

optlab's own optimizers, schedules, callbacks and problems are registered through these same
hooks, by the module ``optlab.default_plugins`` (the entry point of optlab's own distribution).

Each hook receives ``register(cls, name=None, aliases=())``: call it once per component.
``name`` defaults to ``cls.registry_name``; lookups are case-insensitive, and the class name
is an alias too. The hooks are called once per process, on the first lookup by name of any
kind (``optlab.optimizers.get("...")`` and the like), in the order optlab's own plugins
first, then the others by distribution name. The return value is ignored.
"""

from __future__ import annotations

import pluggy

PROJECT = "optlab"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_optimizers(register):
    """Register optimizer classes (subclasses of ``optlab.optimizers.Optimizer``).

    Called once, before the first optimizer lookup by name. ``register(cls, name=None,
    aliases=())`` adds one class; the return value is ignored.
    """


@hookspec
def register_schedules(register):
    """Register learning-rate schedule classes (subclasses of ``optlab.schedules.LearningRateSchedule``).

    Called once, before the first schedule lookup by name. ``register(cls, name=None,
    aliases=())`` adds one class; the return value is ignored.
    """


@hookspec
def register_callbacks(register):
    """Register training callback classes (used by the training loop).

    Called once, before the first callback lookup by name. ``register(cls, name=None,
    aliases=())`` adds one class; the return value is ignored.
    """


@hookspec
def register_problems(register):
    """Register problem classes: the objectives the training loop optimizes.

    Called once, before the first problem lookup by name. ``register(cls, name=None,
    aliases=())`` adds one class; the return value is ignored.
    """
