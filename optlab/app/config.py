"""Config groups generated from the registries, and validation of a composed config.

Every registered optimizer, schedule, problem and callback — built-in or from a plugin — is
a Hydra config group option with its declared defaults (``optimizer=adam``,
``callbacks=[early_stopping]``): no yaml is written for a component.
"""

from __future__ import annotations

import re

from .. import callbacks, optimizers, problems, schedules
from ..hparams import Hyper
from ..names import closest, did_you_mean

MISSING = "???"
GROUPS = {
    "optimizer": optimizers.registry,
    "schedule": schedules.registry,
    "problem": problems.registry,
    "callbacks": callbacks.registry,
}
#: callbacks the app adds itself (not selectable)
INTERNAL_CALLBACKS = {"history", "progress_bar"}


class ConfigError(ValueError):
    """A user mistake in the config or the command line: reported in one message, no traceback."""


def _default(hyper: Hyper):
    if hyper.required:
        return MISSING
    value = hyper.default
    if isinstance(value, (list, tuple)):
        return list(value)
    return value


#: what an argument declared ``Hyper(fill=...)`` defaults to on the command line: a callback
#: watches the run's metric, a schedule starts from the optimizer's learning rate (and decays
#: over the whole run: ``run_steps`` stays missing here, the run fills it once it knows its length)
FILLED = {"metric": "${metric}", "learning_rate": "${optimizer.learning_rate}", "run_steps": MISSING}


def component_node(cls, group: str) -> dict:
    node = {"name": cls.registry_name}
    for name, hyper in cls.hyperparameters().items():
        node[name] = FILLED[hyper.fill] if hyper.fill else _default(hyper)
    return node


def register_configs() -> None:
    """Store one config group option per registered component (Hydra's ConfigStore)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group, registry in GROUPS.items():
        for name, cls, _source in registry.items():
            if group == "callbacks":
                if name in INTERNAL_CALLBACKS:
                    continue
                cs.store(group=group, name=name, node=component_node(cls, group), package=f"callbacks.{name}")
            else:
                cs.store(group=group, name=name, node=component_node(cls, group))
    cs.store(group="schedule", name="none", node={"name": None})


def _closest(name: str, known) -> str:
    match = closest(name, known)
    return f" Did you mean {match!r}?" if match else ""


def check_overrides(overrides: list[str], own_configs: bool = True, multirun: bool = False) -> None:
    """Catch unknown component names and arguments in command-line overrides before Hydra does.

    Hydra's own messages for these do not list the valid names or arguments; ours do.
    ``own_configs``: the configs are optlab's own (no ``--config-dir`` or search path adds
    presets), so a preset group's choice (``tracking=...``) is one of its yaml files.
    ``multirun``: ``-m`` was given (without it, several values are a mistake).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as error:  # Hydra's grammar error: keep its message, without the traceback
        raise ConfigError(str(error)) from None
    tracking_off = any(
        o.key_or_group == "tracking" and not o.is_delete() and o.value() == "none"
        for o in parsed
        if not o.is_sweep_override()
    )
    for override in parsed:
        key = override.key_or_group
        parts = key.split(".")
        group = parts[0]
        if override.is_delete() and key in REQUIRED_GROUPS:
            raise ConfigError(f"~{key}: every run needs {_a(key)} {key}; choose one with {key}=NAME instead")
        if override.is_delete() and key in EMPTY_CHOICES:
            raise ConfigError(f"~{key}: a group is not removed; for none, write {EMPTY_CHOICES[key]}")
        if override.is_sweep_override() and not multirun:
            raise ConfigError(
                f"{override.input_line}: several values make a sweep, which needs -m (python -m optlab -m ...); "
                f"for a list write {key}=[a,b]"
            )
        if multirun and key == "tracking.detach" and any(v.lower() == "true" for v in _choices(override)):
            raise ConfigError(
                "tracking.detach=true is for a single run: a sweep's runs are recorded as each ends "
                "(leave out tracking.detach)"
            )
        if tracking_off and group == "tracking" and len(parts) == 2 and parts[1] != "enabled":
            raise ConfigError(f"{key} is set but tracking=none: nothing is logged (leave out tracking=none to log)")
        if own_configs and key in HYDRA_GROUPS and not override.is_delete():
            check_hydra_choice(key, _choices(override))
            continue
        if own_configs and group in PRESET_GROUPS and len(parts) == 1 and not override.is_delete():
            if group not in main_config()[0] and not override.is_add():  # not in the defaults: added with +
                raise ConfigError(f"{override.input_line}: a preset is added with + (+{override.input_line})")
            known = PRESET_GROUPS[group]
            for value in _choices(override):
                if value not in known:
                    raise ConfigError(
                        f"Unknown {group} {value!r}.{_closest(value, known)} Known: {', '.join(sorted(known))}"
                    )
            continue
        if own_configs and not (override.is_add() or override.is_delete()) and group != "hydra":
            known_key(key)
        if group not in GROUPS or override.is_delete():
            continue
        registry = GROUPS[group]
        known = [n for n in registry.names() if group != "callbacks" or n not in INTERNAL_CALLBACKS]
        if group == "schedule":
            known = ["none", *known]
        if len(parts) == 1:  # a choice: optimizer=adam, callbacks=[a,b], optimizer=sgd,adam (sweep)
            for chosen in override.sweep_iterator() if override.is_sweep_override() else [override.value()]:
                _check_listed_once(group, chosen)
            for value in _choices(override):
                if value not in known and value.lower() not in registry:
                    raise ConfigError(
                        f"Unknown {group.rstrip('s')} {value!r}.{_closest(value, known)} Known: {', '.join(known)}"
                    )
            continue
        if group == "callbacks" and not override.is_add():
            _check_callback_chosen(override, parts[1], known, overrides, parsed)
            continue  # callbacks.<name>.<arg>: checked when the callback is built
        if group == "callbacks" or override.is_add():
            continue
        if len(parts) == 2 and parts[1] == "name":  # the rest of the node would stay the other component's
            choice = ",".join(_choices(override))
            raise ConfigError(
                f"{override.input_line}: {_a(group)} {group} is chosen with {group}={choice} ({group}.name only "
                f"names the one chosen, whose other settings would stay)"
            )
        if len(parts) == 2:
            component = _selected(overrides, group)
            if component == "none":
                raise ConfigError(
                    f"{key}: no {group} is chosen ({group}=none), so it has no {parts[1]!r}; choose one with "
                    f"{group}=NAME (python -m optlab --help lists them)"
                )
            if component is not None and component.lower() in registry:
                cls = registry.get(component)
                accepted = list(cls.hyperparameters())
                if parts[1] not in accepted:
                    # another component's argument (momentum for Adam: SGD's) says so before a near name
                    others = [n for n in registry.names() if parts[1] in registry.get(n).hyperparameters()]
                    hint = (
                        f" It is an argument of {', '.join(others[:6])}{', ...' if len(others) > 6 else ''}: "
                        f"choose one of them with {group}=NAME."
                        if others
                        else _closest(parts[1], accepted)
                    )
                    raise ConfigError(
                        f"{group}.{parts[1]}: {cls.__name__} has no argument {parts[1]!r}.{hint} "
                        f"Accepted arguments: {', '.join(accepted)}"
                    )
            elif not any(parts[1] in registry.get(n).hyperparameters() for n in registry.names()):
                raise ConfigError(f"{group}.{parts[1]}: no {group} has an argument {parts[1]!r}")


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def canonical_choices(words: list[str]) -> list[str]:
    """The command line with each component chosen by another name the registry knows (its class
    name ``Adam``, another case, an alias) written as its registered name (``adam``): Hydra finds a
    group's options by their exact names, and ``optimizer=Adam`` works as it does in Python. Sweeps
    and lists too (``optimizer=SGD,Adam``, ``callbacks=[EarlyStopping]``); other words are kept."""
    out = []
    for word in words:
        key, sep, value = word.partition("=")
        registry = GROUPS.get(key.lstrip("+~")) if sep else None
        if registry is not None:

            def registered(match, registry=registry):
                name = match.group()
                return registry.canonical(name) if name in registry else name

            word = f"{key}={_NAME.sub(registered, value)}"
        out.append(word)
    return out


def known_key(key: str) -> None:
    """A setting the config does not have (``trainer.epochz=3``, ``seeds=1``): Hydra's message is
    four lines ("Could not override ... Key 'epochz' is not in struct"), without the known ones."""
    parts = key.split(".")
    known = main_config()[1]
    if parts[0] not in known:
        raise not_an_option("", parts[0], known)
    if parts[0] in ("trainer", "tracking") and len(parts) == 2 and parts[1] not in preset_keys(parts[0]):
        raise not_an_option(f"{parts[0]}.", parts[1], preset_keys(parts[0]))


def not_an_option(prefix: str, key: str, known) -> ConfigError:
    """``trainer.epochz is not an option (did you mean 'epochs'?). Known: trainer.batch_size, ...``: a
    key of the node ``prefix`` the config does not have, on the command line or after composing."""
    listed = ", ".join(prefix + k for k in sorted(known))
    return ConfigError(f"{prefix}{key} is not an option{did_you_mean(key, known)}. Known: {listed}")


#: the groups every run has: removing one (``~optimizer``) is a mistake
REQUIRED_GROUPS = ("problem", "optimizer", "trainer")
#: the groups that may be empty, and how to say so
EMPTY_CHOICES = {"callbacks": "callbacks=[]", "schedule": "schedule=none", "tracking": "tracking=none"}


def _a(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _check_callback_chosen(setting, name: str, known: list[str], overrides: list[str], parsed) -> None:
    """``callbacks.<name>.<arg>=...`` sets an argument of a callback the run (each job of a sweep)
    uses: Hydra's own message for one it does not use is "Key 'callbacks' is not in struct"."""
    key = setting.key_or_group
    if name not in known and name.lower() not in GROUPS["callbacks"]:
        raise ConfigError(f"{key}: unknown callback {name!r}.{_closest(name, known)} Known: {', '.join(known)}")
    argument = key.split(".")[2] if key.count(".") == 2 else None
    if argument is not None:  # (Hydra's message for one it does not have was "Key 'scal' is not in struct")
        cls = GROUPS["callbacks"].get(name)
        accepted = [a for a in cls.hyperparameters() if a != "name"]
        if argument not in accepted and argument != "name":
            raise ConfigError(
                f"{key}: {cls.__name__} has no argument {argument!r}.{_closest(argument, accepted)} "
                f"Accepted arguments: {', '.join(accepted)}"
            )
    if any(text.lstrip("+~").startswith("experiment=") for text in overrides):
        return  # a preset may choose it
    lists = [[]]  # the default: no callbacks
    for override in parsed:
        if override.key_or_group == "callbacks" and not override.is_delete():
            lists = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
    if len(lists) > 1 and not setting.is_force_add():
        # Hydra composes the sweep's own config (no callback chosen yet) with every setting first
        raise ConfigError(
            f"{key}: in a sweep over callbacks, set a callback's argument with ++ (++{key}=...): Hydra "
            "composes the sweep before each job chooses its callbacks"
        )
    for chosen in lists:
        chosen = [str(c) for c in (chosen if isinstance(chosen, list) else [chosen])]
        if name.lower() not in {c.lower() for c in chosen}:
            which = f"[{','.join(chosen)}]" if len(lists) > 1 else "this run's callbacks"
            raise ConfigError(
                f"{key}: {name} is not one of {'the callbacks of the job ' if len(lists) > 1 else ''}{which}; "
                f"choose it with callbacks=[{','.join([*chosen, name])}]"
            )


#: Hydra's own groups whose choices are checked (their options come with Hydra's plugins)
HYDRA_GROUPS = ("hydra/launcher", "hydra/sweeper")


def check_hydra_choice(group: str, values) -> None:
    """``hydra/launcher=jobli``: one line naming the installed options (Hydra's error is a paragraph)."""
    known = _hydra_options(group)
    for value in values:
        if value not in known:
            raise ConfigError(
                f"Unknown {group} {value!r}.{_closest(value, known)} Installed: {', '.join(known)} "
                "(others come with their Hydra plugin, e.g. hydra-submitit-launcher)"
            )


def _hydra_options(group: str) -> list[str]:
    """The options of one of Hydra's own groups (``hydra/launcher``): the built-in ones and
    those of the installed Hydra plugins, as Hydra itself finds them."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # discovers the installed plugins, which store their configs
    names = ConfigStore.instance().list(group)
    return sorted(n[: -len(".yaml")] for n in names if n.endswith(".yaml"))


def _choices(override) -> list[str]:
    """Every name an override chooses: ``adam``; ``[a,b]``; a sweep ``sgd,adam`` or ``[a],[a,b]``."""
    values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
    return [str(v) for value in values for v in (value if isinstance(value, list) else [value])]


def _check_listed_once(group: str, chosen) -> None:
    """``callbacks=[csv_logger,csv_logger]`` would silently become one callback: refused."""
    if not isinstance(chosen, list):
        return
    seen = set()
    for name in map(str, chosen):
        if name.lower() in seen:
            raise ConfigError(
                f"{group}=[{','.join(map(str, chosen))}]: {name!r} is listed twice; each is listed once, "
                f"with its settings under {group}.{name}.<argument>=..."
            )
        seen.add(name.lower())


def _conf_yaml(relative: str):
    """A yaml file of ``optlab/conf`` (the package's configs), parsed."""
    from importlib import resources

    import yaml

    return yaml.safe_load(resources.files("optlab.conf").joinpath(relative).read_text()) or {}


def main_config() -> tuple[dict[str, str], set[str]]:
    """From ``conf/config.yaml``: each config group's default choice, and the config's own keys
    (the groups and the top-level settings; Hydra's own section aside)."""
    main = _conf_yaml("config.yaml")
    choices = {}
    for entry in main.get("defaults", []):
        if isinstance(entry, dict):
            (group, choice), *_ = entry.items()
            choices[group] = "none" if choice is None else str(choice)
    return choices, set(choices) | (set(main) - {"defaults", "hydra"})


def preset_keys(group: str) -> set[str]:
    """Every key the yaml presets of a config group (``conf/<group>/*.yaml``) define."""
    from importlib import resources

    keys: set[str] = set()
    for entry in resources.files("optlab.conf").joinpath(group).iterdir():
        if entry.name.endswith(".yaml"):
            keys |= set(_conf_yaml(f"{group}/{entry.name}"))
    return keys


def _preset_groups() -> dict[str, list[str]]:
    """The config groups made of yaml files in ``optlab/conf`` (tracking, trainer, experiment) and their options."""
    from importlib import resources

    groups = {}
    for folder in resources.files("optlab.conf").iterdir():
        if folder.is_dir() and not folder.name.startswith("_"):
            names = [f.name[: -len(".yaml")] for f in folder.iterdir() if f.name.endswith(".yaml")]
            if names:
                groups[folder.name] = sorted(names)
    return groups


PRESET_GROUPS = _preset_groups()

#: the component each group starts from (conf/config.yaml), for checking arguments given without a choice
DEFAULT_CHOICES = {k: v for k, v in main_config()[0].items() if k in GROUPS and k != "callbacks"}


def _selected(overrides: list[str], group: str) -> str | None:
    """The component chosen for ``group`` on the command line (None when a preset may change it)."""
    if any(text.lstrip("+~").startswith("experiment=") for text in overrides):
        return None
    choice = DEFAULT_CHOICES.get(group)
    for text in overrides:
        key, _, value = text.partition("=")
        if key.lstrip("+~") == group and "," not in value:
            choice = value
    return choice


def override_words(argv: list[str]) -> list[str]:
    """The overrides among a command line's words (``key=value``, ``~key``), its options left out."""
    return [a for a in argv if not a.startswith("-") and ("=" in a or a.startswith("~"))]


def sets_hydras(words: list[str]) -> bool:
    """Whether an override sets one of Hydra's own settings (``hydra.launcher.n_jobs=2``)."""
    return any(w.lstrip("+~").startswith("hydra.") for w in words)


def check_composition(config_module: str, config_name: str, overrides: list[str], multirun: bool, known_key=None):
    """Compose the config as Hydra is about to, and say a mistake Hydra would report in one line.

    For what the checks above cannot vouch for: presets of the user's own (``./conf``: a yaml file
    that does not parse, a key a preset does not have) and Hydra's own settings
    (``hydra.launcher.n_jobs=abc``). Hydra's messages for these were a paragraph with exit status 1,
    a yaml error a traceback. ``known_key(key)`` raises a ConfigError naming the known keys, for a
    key Hydra could not override. A failure of another kind is left for Hydra to report."""
    import yaml
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_module(config_module=config_module, version_base="1.3"):
            config = GlobalHydra.instance().hydra.compose_config(
                config_name=config_name,
                overrides=list(overrides),
                run_mode=RunMode.MULTIRUN if multirun else RunMode.RUN,
                with_log_configuration=False,
                validate_sweep_overrides=False,
            )
    except (HydraException, OmegaConfBaseException, yaml.YAMLError) as error:
        raise ConfigError(composition_error(error, known_key)) from None
    if multirun:  # a sweep's values are set job by job: each key swept must be one the config has
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        for override in OverridesParser.create().parse_overrides(list(overrides)):
            key = override.key_or_group
            if not override.is_sweep_override() or override.is_add() or override.is_delete() or "/" in key:
                continue
            if OmegaConf.select(config, key, default=_ABSENT, throw_on_missing=False) is _ABSENT:
                if known_key is not None:
                    known_key(key)
                raise ConfigError(
                    f"{override.input_line}: the config has no {key} (add it with +{override.input_line})"
                )


def composition_error(error: BaseException, known_key=None) -> str:
    """Hydra's (or yaml's) message for a config that does not compose, in one line."""
    import yaml

    if isinstance(error, yaml.MarkedYAMLError):  # a preset that does not parse: where, and what
        mark = error.problem_mark
        where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "a yaml file"
        return f"{where}: {error.problem}" + (f" ({error.context})" if error.context else "")
    text = str(error).split("\nConfig search path:")[0].strip()  # (where Hydra looked: not the mistake)
    key = re.match(r"Could not override '([^']+)'", text)
    if key and known_key is not None:
        known_key(key.group(1))  # raises, naming the known ones, for a key the config does not have
    paragraphs = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in paragraph.splitlines() if line.strip()]
        if not lines:
            continue
        if lines[0].endswith(":") and len(lines) > 1:  # "Available options in 'experiment':" and one per line
            paragraphs.append(f"{lines[0]} {', '.join(lines[1:])}")
        else:
            paragraphs.append(" ".join(lines))
    cause = error.__cause__
    if cause is not None and str(cause).strip():
        paragraphs[-1:] = [f"{paragraphs[-1] if paragraphs else ''} ({str(cause).strip().splitlines()[0]})".strip()]
    return "; ".join(paragraphs)


_ABSENT = object()
