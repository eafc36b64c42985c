"""Running ``python -m optlab`` in a test, and reading back what it recorded."""

from __future__ import annotations

import os
import subprocess
import sys


def optlab(cwd, *args, env=None, timeout=300, module="optlab"):
    """``python -m optlab ARGS`` (or ``module``, e.g. ``optlab.study``) in ``cwd``, waited for; its output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def script(cwd, code: str, *args, timeout=300):
    """``python -c CODE ARGS`` in ``cwd`` (a test's own entry that patches optlab first), waited for;
    its output captured."""
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def client(cwd, db="mlflow.db"):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{cwd / db}")


def runs(cwd, experiment="optlab", db="mlflow.db", parents=False):
    """The client of the store ``db`` in ``cwd`` and the runs of ``experiment`` (none if it does not
    exist): the training runs, and with ``parents`` the sweeps' parent runs too."""
    c = client(cwd, db)
    exp = c.get_experiment_by_name(experiment)
    found = c.search_runs([exp.experiment_id], max_results=1000) if exp else []
    return c, [r for r in found if parents or r.data.tags.get("optlab.kind") != "sweep"]


#: a run whose loss becomes NaN within a few steps, with a callback that raises when it does
RAISES_ON_NAN = (
    "problem=rosenbrock",
    "optimizer=sgd",
    "optimizer.learning_rate=0.1",
    "callbacks=[terminate_on_nan]",
    "callbacks.terminate_on_nan.raise_error=true",
    "trainer.epochs=100",
)
