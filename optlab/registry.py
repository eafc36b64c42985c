"""Name -> class registries, one per kind of component, filled by the plugin hooks.

A registry maps lower-case names (and aliases) to classes. Lookups are
case-insensitive; an unknown name raises ``ValueError`` listing the known
names and the closest match. The registries are empty until the first lookup,
which loads the plugins (``optlab.plugins``): optlab's built-ins and every
installed plugin register through the same hooks.
"""

from __future__ import annotations

from difflib import get_close_matches


class Registry:
    """Names of one kind of component (``"optimizer"``, ``"schedule"``, ...)."""

    def __init__(self, kind: str, hook: str | None = None):
        self.kind = kind
        self.hook = hook  # the plugin hook that fills it
        self._classes: dict[str, type] = {}
        self._aliases: dict[str, str] = {}
        self._sources: dict[str, str] = {}

    def register(self, cls: type, name: str | None = None, aliases=(), source: str = "optlab") -> type:
        """Register ``cls`` under ``name`` (default ``cls.registry_name``) and its aliases."""
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
        if self.hook is not None:
            from . import plugins  # the plugin layer fills the registries on first use

            plugins.load()

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
        close = get_close_matches(name.lower(), known + list(self._aliases), n=1, cutoff=0.5)
        hint = ""
        if close:
            hint = f" Did you mean {self._aliases.get(close[0], close[0])!r}?"
        return ValueError(f"Unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(known)}")

    def create(self, identifier, **overrides):
        """An instance from a name (defaults) or a config ``{"name": ..., **arguments}``.

        Keras's serialized form ``{"class_name": ..., "config": {...}}`` is accepted too;
        keyword ``overrides`` are passed to the constructor.
        """
        if isinstance(identifier, str):
            return self.get(identifier)(**overrides)
        if not isinstance(identifier, dict):
            raise ValueError(f"Could not interpret {self.kind} identifier: {identifier!r}")
        config = dict(identifier)
        if "class_name" in config:
            config = {"name": config["class_name"], **config.get("config", {})}
        if config.get("name") is None:
            article = "An" if self.kind[0] in "aeiou" else "A"
            raise ValueError(
                f"{article} {self.kind} config needs a 'name' (a string, one of {', '.join(self.names())}); "
                f"got {identifier!r}"
            )
        cls = self.get(config.pop("name"))
        config.update(overrides)
        return cls.from_config(config)


#: the registries, filled by the hooks of the same name (see ``optlab.hookspecs``)
optimizers = Registry("optimizer", hook="register_optimizers")
schedules = Registry("schedule", hook="register_schedules")
callbacks = Registry("callback", hook="register_callbacks")
problems = Registry("problem", hook="register_problems")
REGISTRIES = {"optimizers": optimizers, "schedules": schedules, "callbacks": callbacks, "problems": problems}
