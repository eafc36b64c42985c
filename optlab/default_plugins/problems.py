"""The built-in problems, registered like any plugin's."""

from ..hookspecs import hookimpl


@hookimpl
def register_problems(register):
    from ..problems import BUILTIN

    for cls in BUILTIN:
        register(cls)
