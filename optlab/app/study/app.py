"""``python -m optlab.study``: the study's Hydra app (the sweeper runs the study; each job runs runs)."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

#: the command that started the study, as given, and when (the whole command's time, for the timing)
COMMAND: list[str] = []
STARTED: list[float] = []


def _task(cfg):
    """One job: the runs in its payload (``job=...``), stored and returned."""
    from hydra.core.hydra_config import HydraConfig

    from ..cores import share_cores, sweep_workers
    from .store import decode, run_job

    if cfg.get("job") is None:
        print(
            "optlab: error: python -m optlab.study runs a study as a multirun; start it without --run", file=sys.stderr
        )
        sys.exit(2)
    share_cores(sweep_workers(HydraConfig.get()))
    return run_job(decode(str(cfg.job)))


#: the top-level keys of a study's config besides its settings
OWN_KEYS = ("hydra", "tracking", "study", "job")
_SPACE = re.compile(r"^\s*\w+\s*\(.*\)\s*$")  # log(...), uniform(...), choice(...), and their typos


def _override(word: str) -> str:
    """A command-line word as Hydra must read it: ``space.sgd.learning_rate=log(1e-3, 100)``
    becomes ``+space.sgd.learning_rate='log(1e-3, 100)'`` (a key the empty ``space`` does not have
    yet, and text Hydra would otherwise take for a function of its own); a misspelled setting is
    a one-line error here, where Hydra's would be a paragraph."""
    from .spec import DEFAULTS

    if word.startswith("-") or "=" not in word:
        return word
    key, _, value = word.partition("=")
    bare = key.lstrip("+~")
    root = bare.split(".", 1)[0].split("/", 1)[0]
    if root not in DEFAULTS and root not in OWN_KEYS:
        from ...names import did_you_mean

        hint = did_you_mean(root, [*DEFAULTS, "tracking"])
        raise ValueError(f"unknown setting {root!r}{hint}; the settings are {', '.join(DEFAULTS)}, tracking")
    if bare == "study" and not key.startswith("~"):
        known = presets()
        for name in value.split(","):
            if name not in known:
                from ...names import did_you_mean

                raise ValueError(
                    f"unknown preset study={name}{did_you_mean(name, known)}; the presets are {', '.join(known)} "
                    "(yours: conf/study/NAME.yaml in the working directory)"
                )
    if root == "space" and "." in bare:
        if _SPACE.match(value):
            value = "'" + value.strip().replace("'", "") + "'"
        if not key.startswith(("+", "~")):
            key = "+" + key
    word = f"{key}={value}"
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        several = OverridesParser.create().parse_overrides([word])[0].is_sweep_override()
    except Exception:  # Hydra's grammar error: Hydra says it
        several = False
    if several:  # (each of the study's jobs would be composed with it: "Ambiguous value", after the study began)
        hint = " (one study at a time)" if bare == "study" else ""
        if isinstance(DEFAULTS.get(bare), list):
            hint = f"; a list is written {bare}=[{value}]"
        raise ValueError(f"{word}: a study is one comparison, its settings one value each{hint}")
    return word


def _check_hydra_words(argv: list[str]) -> None:
    """A launcher or sweeper that is not installed, and an output folder that cannot be made, as
    ``python -m optlab`` says them: one line each, before the study starts (Hydra's own errors
    were a paragraph, and a traceback after the first job's announcement)."""
    from ..config import HYDRA_GROUPS, check_hydra_choice
    from ..main import check_output_folder

    for word in argv:
        key, _, value = word.partition("=")
        if key in HYDRA_GROUPS and value:
            check_hydra_choice(key, value.split(","))
    check_output_folder([w for w in argv if not w.startswith("-")], multirun=True)


def presets() -> list[str]:
    """The study presets: optlab's (``conf/study/*.yaml`` beside this module) and the working
    directory's own (``./conf/study/*.yaml``)."""
    folders = (Path(__file__).parent / "conf" / "study", Path("conf") / "study")
    return sorted({p.stem for folder in folders if folder.is_dir() for p in folder.glob("*.yaml")})


def register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(
        group="hydra/sweeper",
        name="optlab_study",
        node={"_target_": "hydra_plugins.optlab_study.study_sweeper.StudySweeper"},
        provider="optlab",
    )


def main(argv: list[str] | None = None) -> None:
    STARTED[:] = [time.perf_counter()]
    import hydra

    argv = list(sys.argv[1:] if argv is None else argv)
    COMMAND[:] = ["python", "-m", "optlab.study", *argv]  # as the user gave it, for the report and MLflow
    try:
        argv = [_override(a) for a in argv]
        _check_hydra_words(argv)
    except ValueError as error:
        print(f"optlab: error: study: {error}", file=sys.stderr)
        sys.exit(2)
    if not ({"-m", "--multirun"} & set(argv)) and not (
        {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i"} & set(argv)
    ):
        argv = ["-m", *argv]
    register()
    if Path("conf").is_dir() and not any(a.startswith(("hydra.searchpath", "+hydra.searchpath")) for a in argv):
        # your own presets (./conf/study/NAME.yaml) beside optlab's
        argv.append(f"hydra.searchpath=[pkg://optlab.conf,file://{Path('conf').resolve()}]")
    from ..config import ConfigError, check_composition, override_words, sets_hydras

    words = override_words(argv)
    if Path("conf").is_dir() or sets_hydras(words):
        try:  # presets of your own, and Hydra's settings: composed here to say a mistake in one line
            check_composition("optlab.app.study.conf", "study", words, multirun="-m" in argv)
        except ConfigError as error:
            print(f"optlab: error: study: {error}", file=sys.stderr)
            sys.exit(2)
    sys.argv = [sys.argv[0], *argv]
    hydra.main(config_path="conf", config_name="study", version_base="1.3")(_task)()  # (entry.main ends it)
