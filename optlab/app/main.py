"""``python -m optlab``: the Hydra command line.

python -m optlab                                   # Adam on the digits MLP, logged to MLflow
python -m optlab optimizer=sgd optimizer.learning_rate=0.05 trainer.epochs=5
python -m optlab -m optimizer=sgd,adam,rmsprop     # a sweep: one logged run per choice
"""

from __future__ import annotations

import sys

from .config import ConfigError, check_overrides, register_configs


def _fail(message: str) -> None:
    print(f"optlab: error: {message}", file=sys.stderr)
    sys.exit(2)


def _task(cfg):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from .run import Terminated, run

    try:
        conf = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except Exception as error:  # an interpolation that does not resolve
        _fail(str(error).splitlines()[0])
    sweep = {}
    hydra_conf = HydraConfig.get()
    if str(hydra_conf.mode) == "RunMode.MULTIRUN":
        sweep = {
            "sweep": hydra_conf.sweep.dir,
            "sweep_job": hydra_conf.job.num,
            "sweep_job_id": hydra_conf.job.id,
            "sweep_overrides": " ".join(hydra_conf.overrides.task),
        }
    try:
        return run(conf, sweep)
    except ConfigError as error:
        _fail(str(error))
    except KeyboardInterrupt as interrupt:
        what = str(interrupt) or "interrupted"
        print(f"\noptlab: {what}; the run is marked KILLED", file=sys.stderr)
        sys.exit(143 if isinstance(interrupt, Terminated) else 130)  # 128 + the signal's number


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m optlab`` (and the ``optlab`` console script)."""
    import hydra

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        check_overrides([a for a in argv if not a.startswith("-") and "=" in a])
    except ConfigError as error:
        _fail(str(error))
    register_configs()
    sys.argv = [sys.argv[0], *argv]
    entry = hydra.main(config_path="../conf", config_name="config", version_base="1.3")(_task)
    entry()
