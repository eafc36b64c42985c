"""Sweeps with Hydra's launchers and sweepers, and the comparison of their runs."""

from __future__ import annotations

import pytest
from test_app import FAST, optlab, runs

pytestmark = pytest.mark.slow


def test_optuna_sweep_runs_a_small_learning_rate_search(tmp_path):
    result = optlab(tmp_path, "-m", "+experiment=lr_search", "hydra.sweeper.n_trials=3", "trainer.epochs=50")
    assert result.returncode == 0, result.stderr
    assert "Best parameters: {'optimizer.learning_rate'" in result.stdout + result.stderr
    # into a pipe, Optuna's lines came with colour codes ("\x1b[32m[I 2026-...]\x1b[0m", a newcomer's try)
    assert "\x1b[" not in result.stdout + result.stderr
    _, found = runs(tmp_path)
    assert len(found) == 3
    rates = {float(r.data.params["optimizer.learning_rate"]) for r in found}
    assert len(rates) == 3 and all(1e-4 <= lr <= 0.5 for lr in rates)
    results = list((tmp_path / ".optlab" / "multirun").rglob("optimization_results.yaml"))
    assert len(results) == 1 and "best_value" in results[0].read_text()


def test_submitit_local_launcher(tmp_path):
    result = optlab(
        tmp_path,
        "-m",
        "hydra/launcher=submitit_local",
        "optimizer=sgd,adam",
        "problem=beale",
        "trainer.epochs=30",
        *FAST,
    )
    assert result.returncode == 0, result.stderr
    _, found = runs(tmp_path)
    assert sorted(r.data.tags["optimizer"] for r in found) == ["adam", "sgd"]
    assert all(r.info.status == "FINISHED" for r in found)


def test_compare_errors_are_clear(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "optlab.compare"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2 and "no MLflow store" in result.stderr and "Traceback" not in result.stderr
