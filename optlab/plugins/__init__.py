"""Plugin discovery: entry points of the group ``optlab``, loaded one at a time through pluggy.

Loading happens once, on the first lookup by name in any of the registries below (each is
handed ``load`` as its loader). Every entry point of the group ``optlab`` (optlab's own
built-ins, ``optlab.default_plugins``, included) is imported and registered with the plugin
manager; then each plugin's hooks are called through the manager, plugin by plugin, with a
``register`` callback that records the plugin's distribution as the source of each name.

A single broken plugin never breaks optlab. A plugin that fails to import is skipped; a hook
that raises is skipped (the plugin's other hooks still count); each with a ``PluginWarning``
naming the distribution. When two plugins register one name, the first keeps it (optlab's own
plugins come first, then the others sorted by distribution and entry-point name): only that
registration of the second is skipped, with a warning naming both distributions.

``python -m optlab.plugins`` lists what is installed (``optlab.app.plugins_cli``).
"""

from __future__ import annotations

import importlib
import types
import warnings
from dataclasses import dataclass, field
from importlib import metadata

from ..registry import Registry

GROUP = "optlab"
OWN = "optlab"  # optlab's own distribution
DEFAULT_PLUGINS = "optlab.default_plugins"  # its entry point, registered directly if not installed


class PluginWarning(UserWarning):
    """A plugin, or one of its hooks or names, could not be loaded or registered."""


@dataclass
class PluginInfo:
    """One loaded entry point: its plugin-manager name, distribution, version and entry point."""

    name: str
    distribution: str
    version: str
    entry_point: str


@dataclass
class _State:
    manager: object = None  # the pluggy.PluginManager, made on first use
    loaded: bool = False
    plugins: list[PluginInfo] = field(default_factory=list)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (distribution, what, error)


_state = _State()


def manager():
    """The ``pluggy.PluginManager`` (hook specifications added; plugins registered by ``load``)."""
    if _state.manager is None:
        import pluggy  # here, not at import: looking up a name needs no plugin manager until loading

        from .. import hookspecs

        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        _state.manager = pm
    return _state.manager


def _entry_points():
    eps = []
    for ep in metadata.entry_points(group=GROUP):
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        eps.append((dist, version, ep))
    # optlab's own first, then by distribution and name: a deterministic precedence
    eps.sort(key=lambda t: (normalize(t[0]) != OWN, normalize(t[0]), t[2].name))
    seen, unique = set(), []
    for dist, version, ep in eps:  # a distribution visible twice on sys.path counts once
        key = (normalize(dist), ep.name)
        if key not in seen:
            seen.add(key)
            unique.append((dist, version, ep))
    return unique


def normalize(name: str) -> str:
    """A distribution name as pip compares them (``Optlab_X`` and ``optlab-x`` are one)."""
    return name.lower().replace("_", "-")


def _warn(distribution: str, what: str, message: str, outcome: str) -> None:
    _state.failures.append((distribution, what, message))
    warnings.warn(
        f"optlab plugin from distribution {distribution!r} ({what}) {outcome}: {message}",
        PluginWarning,
        stacklevel=5,
    )


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _register_plugin(plugin, name: str, distribution: str, version: str, entry_point: str) -> bool:
    try:
        manager().register(_hashable(plugin, name), name=name)
    except Exception as error:  # a hook with a wrong signature, a name clash in pluggy
        _warn(distribution, f"entry point {entry_point}", _error_text(error), "failed and is skipped")
        return False
    _state.plugins.append(PluginInfo(name, distribution, version, entry_point))
    _check_hooks(plugin, distribution)
    return True


def _check_hooks(plugin, distribution: str) -> None:
    """Warn of a plugin's function that optlab will never call: marked ``@optlab.hookimpl`` under a
    name that is no hook (a typo: ``register_optimizer``), or named as a hook and not marked."""
    from ..names import did_you_mean

    pm = manager()
    hooks = [f"register_{kind}" for kind in REGISTRIES]
    for attr in dir(plugin):
        if attr.startswith("_"):
            continue
        try:
            options = pm.parse_hookimpl_opts(plugin, attr)
        except Exception:  # (an attribute that raises when read: not a hook)
            continue
        if options is not None:
            name = options.get("specname") or attr
            if name not in hooks:
                _warn(
                    distribution,
                    f"function {attr}",
                    f"it is marked @optlab.hookimpl, but optlab has no hook {name!r}{did_you_mean(name, hooks)}; "
                    f"its hooks: {', '.join(hooks)}",
                    "is never called",
                )
        elif attr in hooks and callable(getattr(plugin, attr, None)):
            _warn(distribution, f"function {attr}", "it is not marked @optlab.hookimpl", "is never called")


def _hashable(plugin, name: str):
    """``plugin``, or, if it cannot be hashed (a ``SimpleNamespace``), a module holding its attributes.

    pluggy keeps plugins in sets when it calls a hook for some of them (``subset_hook_caller``).
    """
    try:
        hash(plugin)
    except TypeError:
        stand_in = types.ModuleType(name)
        for attr in dir(plugin):
            if not attr.startswith("__"):
                setattr(stand_in, attr, getattr(plugin, attr))
        return stand_in
    return plugin


def load() -> None:
    """Discover and register every plugin, then fill the registries (once per process)."""
    if _state.loaded:
        return
    _state.loaded = True  # before the hooks run: a plugin importing optlab must not recurse here
    own_found = False
    for dist, version, ep in _entry_points():
        own_found |= normalize(dist) == OWN
        label = f"{ep.name} = {ep.value}"
        try:
            plugin = ep.load()
        except Exception as error:
            _warn(dist, f"entry point {label}", _error_text(error), "failed to import and is skipped")
            continue
        _register_plugin(plugin, f"{dist}:{ep.name}", dist, version, label)
    if not own_found:
        warnings.warn(
            "optlab's own entry points were not found (is optlab installed? `pip install -e .`); "
            "registering the built-ins directly",
            PluginWarning,
            stacklevel=3,
        )
        module = importlib.import_module(DEFAULT_PLUGINS)
        _register_plugin(module, f"{OWN}:{DEFAULT_PLUGINS}", OWN, "source", DEFAULT_PLUGINS)
    for info in list(_state.plugins):
        _call_hooks(info)


def _call_hooks(info: PluginInfo) -> None:
    """Call every registry hook of one plugin through the manager, each hook's failure isolated."""
    pm = manager()
    plugin = pm.get_plugin(info.name)
    others = [p for p in pm.get_plugins() if p is not plugin]
    for kind, registry in REGISTRIES.items():
        hook = f"register_{kind}"
        try:  # the hook's caller, restricted to this one plugin
            pm.subset_hook_caller(hook, remove_plugins=others)(register=_registrar(registry, info.distribution))
        except Exception as error:
            _warn(
                info.distribution, f"hook {hook}", _error_text(error), "raised and is skipped (its other hooks count)"
            )


def _registrar(registry: Registry, distribution: str):
    def register(cls, name: str | None = None, aliases=()):
        try:
            registry.register(cls, name=name, aliases=aliases, source=distribution)
        except ValueError as error:  # the name is taken: the first registration keeps it
            what = f"{registry.kind} {name or getattr(cls, 'registry_name', cls)!r}"
            _warn(distribution, what, str(error), "is skipped, the plugin's other names are registered")
        return cls

    return register


def register(plugin, name: str | None = None) -> None:
    """Register a plugin object at run time (e.g. from a notebook or a test), without packaging.

    ``plugin`` is a module or object with ``@optlab.hookimpl`` functions; its components become
    available by name at once.
    """
    load()
    name = name or getattr(plugin, "__name__", None) or repr(plugin)
    info = PluginInfo(name, "<runtime>", "", name)
    if _register_plugin(plugin, name, info.distribution, info.version, info.entry_point):
        _call_hooks(info)


def plugins() -> list[PluginInfo]:
    """The loaded plugins (entry points), in load order."""
    load()
    return list(_state.plugins)


def failures() -> list[tuple[str, str, str]]:
    """``(distribution, what, error)`` for every plugin part that failed to load or register."""
    load()
    return list(_state.failures)


def report() -> dict:
    """What is installed, as plain data: distributions, names by kind, failures."""
    load()
    distributions: dict[str, dict] = {}
    for info in _state.plugins:
        entry = distributions.setdefault(info.distribution, {"version": info.version, "entry_points": []})
        entry["entry_points"].append(info.entry_point)
    for dist, _what, _error in _state.failures:
        distributions.setdefault(dist, {"version": _version(dist), "entry_points": []})
    return {
        "distributions": distributions,
        "components": {
            kind: [{"name": n, "class": f"{c.__module__}.{c.__qualname__}", "distribution": s} for n, c, s in r.items()]
            for kind, r in REGISTRIES.items()
        },
        "failures": [{"distribution": d, "what": w, "error": e} for d, w, e in _state.failures],
    }


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


#: the registries, each filled through the hook ``register_<key>`` (see ``optlab.hookspecs``) on first use
REGISTRIES = {
    "optimizers": Registry("optimizer", loader=load),
    "schedules": Registry("schedule", loader=load),
    "callbacks": Registry("callback", loader=load),
    "problems": Registry("problem", loader=load),
}
