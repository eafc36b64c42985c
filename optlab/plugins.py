"""Plugin discovery: entry points of the group ``optlab``, loaded one at a time through pluggy.

    python -m optlab.plugins            # what is installed: distributions, and every name by kind
    python -m optlab.plugins --json

Loading happens once, on the first lookup by name. Every entry point of the group
``optlab`` (optlab's own built-ins included) is imported and registered with the plugin
manager; then each registry's hook is called plugin by plugin. A plugin that fails to
import, or whose hook raises, is skipped with a ``PluginWarning`` naming its distribution;
the rest keeps working. When two plugins register one name, the first one keeps it (optlab's
own plugins come first, then the others sorted by distribution and entry-point name) and the
second is skipped with a warning naming both distributions.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings
from dataclasses import dataclass, field
from importlib import metadata

import pluggy

from . import hookspecs
from .registry import REGISTRIES

GROUP = "optlab"
OWN = "optlab"  # optlab's own distribution
DEFAULT_PLUGINS = (
    "optlab.default_plugins.optimizers",
    "optlab.default_plugins.schedules",
    "optlab.default_plugins.problems",
    "optlab.default_plugins.callbacks",
)


class PluginWarning(UserWarning):
    """A plugin could not be loaded or registered something it may not."""


@dataclass
class PluginInfo:
    """One loaded entry point: its plugin-manager name, distribution, version and entry point."""

    name: str
    distribution: str
    version: str
    entry_point: str


@dataclass
class _State:
    manager: pluggy.PluginManager | None = None
    loaded: bool = False
    plugins: list[PluginInfo] = field(default_factory=list)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (distribution, what, error)
    sources: dict[str, str] = field(default_factory=dict)  # plugin-manager name -> distribution


_state = _State()


def manager() -> pluggy.PluginManager:
    """The plugin manager (hook specifications added; plugins loaded by ``load``)."""
    if _state.manager is None:
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
    eps.sort(key=lambda t: (_normalize(t[0]) != OWN, _normalize(t[0]), t[2].name))
    seen, unique = set(), []
    for dist, version, ep in eps:  # a distribution visible twice on sys.path counts once
        key = (_normalize(dist), ep.name)
        if key not in seen:
            seen.add(key)
            unique.append((dist, version, ep))
    return unique


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-")


def _fail(distribution: str, what: str, error: BaseException) -> None:
    message = f"{type(error).__name__}: {error}"
    _state.failures.append((distribution, what, message))
    warnings.warn(
        f"optlab plugin from distribution {distribution!r} ({what}) failed and is skipped: {message}",
        PluginWarning,
        stacklevel=4,
    )


def _register_plugin(plugin, name: str, distribution: str, version: str, entry_point: str) -> bool:
    pm = manager()
    try:
        pm.register(plugin, name=name)
    except Exception as error:  # a hook with a wrong signature, a name clash in pluggy
        _fail(distribution, f"entry point {entry_point}", error)
        return False
    _state.sources[name] = distribution
    _state.plugins.append(PluginInfo(name, distribution, version, entry_point))
    return True


def load() -> None:
    """Discover and register every plugin, then fill the registries (once per process)."""
    if _state.loaded:
        return
    _state.loaded = True  # before the hooks run: a plugin importing optlab must not recurse here
    own_found = False
    for dist, version, ep in _entry_points():
        own_found |= _normalize(dist) == OWN
        label = f"{ep.name} = {ep.value}"
        try:
            plugin = ep.load()
        except Exception as error:
            _fail(dist, f"entry point {label}", error)
            continue
        _register_plugin(plugin, f"{dist}:{ep.name}", dist, version, label)
    if not own_found:
        warnings.warn(
            "optlab's own entry points were not found (is optlab installed? `pip install -e .`); "
            "registering the built-ins directly",
            PluginWarning,
            stacklevel=3,
        )
        for module in DEFAULT_PLUGINS:
            _register_plugin(importlib.import_module(module), f"{OWN}:{module}", OWN, "source", module)
    for plugin_name in [p.name for p in _state.plugins]:
        _call_hooks(plugin_name)


def _call_hooks(plugin_name: str) -> None:
    """Call every registry hook that ``plugin_name`` implements, isolating its failures."""
    pm = manager()
    distribution = _state.sources[plugin_name]
    for registry in REGISTRIES.values():
        caller = getattr(pm.hook, registry.hook)
        for impl in caller.get_hookimpls():
            if impl.plugin_name != plugin_name:
                continue
            try:
                impl.function(register=_registrar(registry, distribution))
            except Exception as error:
                _fail(distribution, f"hook {registry.hook}", error)


def _registrar(registry, distribution: str):
    def register(cls, name: str | None = None, aliases=()):
        try:
            registry.register(cls, name=name, aliases=aliases, source=distribution)
        except ValueError as error:  # the name is taken: the first registration keeps it
            _fail(distribution, f"{registry.kind} {name or getattr(cls, 'registry_name', cls)!r}", error)
        return cls

    return register


def register(plugin, name: str | None = None) -> None:
    """Register a plugin object at run time (e.g. from a notebook or a test), without packaging.

    ``plugin`` is a module or object with ``@optlab.hookimpl`` functions; its components become
    available by name at once.
    """
    load()
    name = name or getattr(plugin, "__name__", None) or repr(plugin)
    if _register_plugin(plugin, name, "<runtime>", "", name):
        _call_hooks(name)


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


def format_report(data: dict) -> str:
    lines = ["Plugin distributions:"]
    width = max((len(d) for d in data["distributions"]), default=0)
    for dist, info in sorted(data["distributions"].items(), key=lambda kv: (_normalize(kv[0]) != OWN, kv[0])):
        eps = ", ".join(info["entry_points"]) or "(nothing loaded)"
        lines.append(f"  {dist:<{width}}  {info['version']:<10} {eps}")
    for kind, rows in data["components"].items():
        lines.append(f"\n{kind.capitalize()} ({len(rows)}):")
        if not rows:
            lines.append("  (none registered)")
        name_width = max((len(r["name"]) for r in rows), default=0)
        for row in rows:
            lines.append(f"  {row['name']:<{name_width}}  {row['distribution']}")
    if data["failures"]:
        lines.append("\nFailed:")
        for row in data["failures"]:
            lines.append(f"  {row['distribution']}: {row['what']}: {row['error']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m optlab.plugins", description="List installed optlab plugins and every registered name."
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)  # failures are part of the report below
        data = report()
    print(json.dumps(data, indent=2) if args.json else format_report(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
