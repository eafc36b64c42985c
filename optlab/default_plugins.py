"""optlab's own plugin: the built-in components, registered through the public hooks like any plugin's.

It is the entry point ``optlab`` of optlab's own distribution (``pyproject.toml``), loaded first.
"""

from .hookspecs import hookimpl


@hookimpl
def register_optimizers(register):
    from .optimizers import BUILTIN

    _register_all(register, BUILTIN)


@hookimpl
def register_schedules(register):
    from .schedules import BUILTIN

    _register_all(register, BUILTIN)


@hookimpl
def register_callbacks(register):
    from .callbacks import BUILTIN

    _register_all(register, BUILTIN)


@hookimpl
def register_problems(register):
    from .problems import BUILTIN

    _register_all(register, BUILTIN)


def _register_all(register, classes) -> None:
    for cls in classes:
        register(cls)
