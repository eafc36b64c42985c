"""The built-in callbacks, registered like any plugin's."""

from ..hookspecs import hookimpl


@hookimpl
def register_callbacks(register):
    from ..callbacks import BUILTIN

    for cls in BUILTIN:
        register(cls)
