"""The built-in optimizers (Keras 3's set), registered like any plugin's."""

from ..hookspecs import hookimpl


@hookimpl
def register_optimizers(register):
    from ..optimizers import BUILTIN

    for cls in BUILTIN:
        register(cls)
