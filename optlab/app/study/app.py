"""``python -m optlab.study``: the study's Hydra app (the sweeper runs the study; each job runs runs)."""

from __future__ import annotations

import sys
from pathlib import Path

#: the command that started the study, as given
COMMAND: list[str] = []


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


def register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(
        group="hydra/sweeper",
        name="optlab_study",
        node={"_target_": "hydra_plugins.optlab_study.study_sweeper.StudySweeper"},
        provider="optlab",
    )


def main(argv: list[str] | None = None) -> None:
    import hydra

    argv = list(sys.argv[1:] if argv is None else argv)
    COMMAND[:] = ["python", "-m", "optlab.study", *argv]  # as the user gave it, for the report and MLflow
    if not ({"-m", "--multirun"} & set(argv)) and not (
        {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i"} & set(argv)
    ):
        argv = ["-m", *argv]
    register()
    if Path("conf").is_dir() and not any(a.startswith(("hydra.searchpath", "+hydra.searchpath")) for a in argv):
        # your own presets (./conf/study/NAME.yaml) beside optlab's
        argv.append(f"hydra.searchpath=[pkg://optlab.conf,file://{Path('conf').resolve()}]")
    sys.argv = [sys.argv[0], *argv]
    hydra.main(config_path="conf", config_name="study", version_base="1.3")(_task)()
