"""Name -> class registries, one per kind of component.

A registry maps lower-case names (and aliases) to classes. Lookups are case-insensitive; an
unknown name raises ``ValueError`` listing the known names and the closest match. A registry
knows nothing of where its names come from: it is handed a ``loader``, called once before the
first lookup, that fills it (``optlab.plugins`` hands each of its registries the plugin loader,
so optlab's built-ins and every installed plugin register through the same hooks).
"""

from __future__ import annotations

from collections.abc import Callable

from .names import closest


class Registry:
    """Names of one kind of component (``"optimizer"``, ``"schedule"``, ...).

    ``loader`` (no arguments) is called before the first lookup, and fills the registry
    through ``register``; it is called once, even when it raises.
    """

    def __init__(self, kind: str, loader: Callable[[], None] | None = None):
        self.kind = kind
        self._loader = loader
        self._classes: dict[str, type] = {}
        self._aliases: dict[str, str] = {}
        self._sources: dict[str, str] = {}

    def register(self, cls: type, name: str | None = None, aliases=(), source: str = "optlab") -> type:
        """Register ``cls`` under ``name`` (default ``cls.registry_name``) and its aliases.

        A name already registered for another class raises ``ValueError`` naming both sources.
        """
        name = (name or cls.registry_name).lower()
        if name in self._classes and self._classes[name] is not cls:
            raise ValueError(
                f"{self.kind} name {name!r} is registered twice: by {self._sources[name]} "
                f"({self._classes[name].__module__}.{self._classes[name].__qualname__}) and by {source} "
                f"({cls.__module__}.{cls.__qualname__})"
            )
        self._classes[name] = cls
        self._sources[name] = source
        for alias in {cls.__name__.lower(), *(a.lower() for a in (*aliases, *getattr(cls, "aliases", ())))}:
            if alias != name and alias not in self._classes:
                self._aliases.setdefault(alias, name)
        return cls

    def _load(self) -> None:
        loader, self._loader = self._loader, None
        if loader is not None:
            loader()

    def names(self) -> list[str]:
        """Registered names, sorted (aliases not included)."""
        self._load()
        return sorted(self._classes)

    def source(self, name: str) -> str:
        """The distribution that registered ``name``."""
        return self._sources[self.canonical(name)]

    def canonical(self, name: str) -> str:
        self._load()
        if not isinstance(name, str):
            raise self.unknown(name)
        key = name.lower()
        key = self._aliases.get(key, key)
        if key not in self._classes:
            raise self.unknown(name)
        return key

    def get(self, name: str) -> type:
        """The class registered as ``name`` (case-insensitive, aliases accepted)."""
        return self._classes[self.canonical(name)]

    def __contains__(self, name: str) -> bool:
        if not isinstance(name, str):
            return False
        self._load()
        key = name.lower()
        return self._aliases.get(key, key) in self._classes

    def __iter__(self):
        return iter(self.names())

    def items(self) -> list[tuple[str, type, str]]:
        """``(name, class, source distribution)`` for every registered name, sorted by name."""
        return [(n, self._classes[n], self._sources[n]) for n in self.names()]

    def unknown(self, name) -> ValueError:
        known = self.names()
        if not isinstance(name, str):  # no closest match: str(None) would "suggest" whatever resembles 'none'
            return ValueError(
                f"{self.kind.capitalize()} name must be a string; received {name!r}. "
                f"Known {self.kind}s: {', '.join(known)}"
            )
        match = closest(name, [*known, *self._aliases])
        hint = f" Did you mean {self._aliases.get(match, match)!r}?" if match else ""
        return ValueError(f"Unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(known)}")

    def create(self, identifier, **overrides):
        """An instance from a name (defaults) or a config, in one of two forms:

        - flat, optlab's: ``{"name": <registered name>, **arguments}``; ``name`` selects the class;
        - Keras's serialized form: ``{"class_name": <registered name or class name>, "config": {...}}``
          (``"module"`` and ``"registered_name"`` are ignored); ``class_name`` selects the class and
          ``config`` is the class's ``get_config()`` output, unchanged: its ``name`` is a label
          (an optimizer keeps it; a component without labels ignores it, as Keras's display name).

        Keyword ``overrides`` are passed to the constructor and win over the config's values.
        """
        if isinstance(identifier, str):
            return self.get(identifier)(**overrides)
        if not isinstance(identifier, dict):
            raise ValueError(f"Could not interpret {self.kind} identifier: {identifier!r}")
        article = "An" if self.kind[0] in "aeiou" else "A"
        if "class_name" in identifier:
            inner = identifier.get("config", {})
            if not isinstance(inner, dict):
                raise ValueError(f"{article} {self.kind} config's 'config' must be a dict; got {inner!r}")
            cls = self.get(identifier["class_name"])
            config = dict(inner)
            if not getattr(cls, "labelled", False):
                config.pop("name", None)
            config.update(overrides)
            return cls.from_config(config)
        config = dict(identifier)
        name = config.pop("name", None)
        if name is None:
            raise ValueError(
                f"{article} {self.kind} config needs a 'name' (a string, one of {', '.join(self.names())}); "
                f"got {identifier!r}"
            )
        if isinstance(name, str) and name not in self:
            error = self.unknown(name)
            raise ValueError(
                f"{error}. In a flat config, 'name' is the registered name; a config from get_config() whose "
                f"'name' is a label is rebuilt from {{'class_name': <registered name>, 'config': config}} "
                "(what serialize() writes)"
            ) from None
        cls = self.get(name)
        config.update(overrides)
        return cls.from_config(config)
