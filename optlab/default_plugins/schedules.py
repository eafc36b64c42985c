"""The built-in learning-rate schedules, registered like any plugin's."""

from ..hookspecs import hookimpl


@hookimpl
def register_schedules(register):
    from ..schedules import BUILTIN

    for cls in BUILTIN:
        register(cls)
