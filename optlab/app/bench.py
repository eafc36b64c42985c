"""How much MLflow logging costs: the same run with tracking on and off.

    python -m optlab.app.bench                          # mlp_digits, 230 epochs of 45 steps (10,350 steps)
    python -m optlab.app.bench problem=seed_linear trainer.epochs=10000

Times ``Trainer.fit`` plus the final flush of every metric (the run's own wall time), median
of ``--repeats`` runs each, into a temporary store; prints the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time


def compose(overrides):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from .config import register_configs

    register_configs()
    with initialize_config_module(config_module="optlab.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def timed_run(conf) -> tuple[float, int]:
    from .run import build, fit, make_trainer
    from .tracking import MlflowTracker

    problem, optimizer, cbs = build(conf)
    tracker = None
    extra = []
    if conf["tracking"]["enabled"]:
        from .run import log_interval

        every = log_interval(conf["tracking"], problem, conf["trainer"])
        tracker = MlflowTracker(conf["tracking"]["uri"], "bench", conf, {}, "bench", every)
        extra.append(tracker)
    trainer = make_trainer(conf, problem, optimizer, cbs, extra)
    if tracker is not None:
        tracker.start()
    start = time.perf_counter()
    fit(trainer)
    if tracker is not None:
        tracker.close("FINISHED")
    return time.perf_counter() - start, trainer.step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optlab.app.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    overrides = args.overrides or ["problem=mlp_digits", "trainer.epochs=230", "trainer.batch_size=32"]
    overrides = [*overrides, "trainer.progress_bar=false"]
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{os.path.join(tmp, 'bench.db')}"
        off = compose([*overrides, "tracking=none"])
        on = compose([*overrides, "tracking=mlflow", f"tracking.uri={uri}"])
        timed_run(off)  # warm-up: compile kernels, load data
        timed_run(on)  # and create the store
        times_off, times_on = [], []
        for _ in range(args.repeats):
            seconds, steps = timed_run(off)
            times_off.append(seconds)
            seconds, steps = timed_run(on)
            times_on.append(seconds)
    t_off, t_on = statistics.median(times_off), statistics.median(times_on)
    print(f"run: {' '.join(overrides)} ({steps} steps)")
    tracking = " ".join(o for o in overrides if "tracking" in o) or "default tracking settings"
    print(f"tracking off: {t_off:.3f} s   tracking on ({tracking}): {t_on:.3f} s")
    print(f"ratio: {t_on / t_off:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
