"""Sweeps with Hydra's launchers and sweepers, and the comparison of their runs."""

from __future__ import annotations

import math

import pytest
from test_app import FAST, optlab, runs

pytestmark = pytest.mark.slow


def test_parallel_joblib_sweep_loses_no_run_and_no_metric(tmp_path):
    choices = ["sgd", "adam", "rmsprop", "lion", "adagrad", "nadam"]
    result = optlab(
        tmp_path,
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=3",
        "problem=rosenbrock",
        f"optimizer={','.join(choices)}",
        "trainer.epochs=190",  # (fewer than tracking.max_points: every epoch is logged)
        *FAST,
    )
    assert result.returncode == 0, result.stderr
    client, found = runs(tmp_path)
    assert sorted(r.data.tags["optimizer"] for r in found) == sorted(choices)
    for run in found:
        assert run.info.status == "FINISHED"
        for key in ("train/loss", "train/distance_to_optimum", "position/x", "position/y"):
            assert len(client.get_metric_history(run.info.run_id, key)) == 190, (run.data.tags["optimizer"], key)


def test_optuna_sweep_runs_a_small_learning_rate_search(tmp_path):
    result = optlab(tmp_path, "-m", "+experiment=lr_search", "hydra.sweeper.n_trials=3", "trainer.epochs=50")
    assert result.returncode == 0, result.stderr
    assert "Best parameters: {'optimizer.learning_rate'" in result.stdout + result.stderr
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


def test_compare_prints_the_table_and_writes_the_png(tmp_path):
    import subprocess
    import sys

    sweep = optlab(
        tmp_path,
        "-m",
        "problem=himmelblau",
        "optimizer=sgd,adam",
        "optimizer.learning_rate=0.01",  # the same for both: seeds must still group by optimizer
        "seed=0,1",
        "trainer.epochs=40",
        "metric=distance_to_optimum",
        *FAST,
    )
    assert sweep.returncode == 0, sweep.stderr
    result = subprocess.run(
        [sys.executable, "-m", "optlab.compare", "--output", "cmp.png"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "4 runs, sorted by distance_to_optimum" in lines[0]
    header = lines[1].split()
    assert header[:2] == ["run", "optimizer"] and "seed" in header and "final" in header and "best" in header
    at = lines[1].index("final ")  # fixed-width columns (run names hold spaces: "adam seed=1")
    finals = [float(line[at:].split()[0]) for line in lines[3:7]]
    assert finals == sorted(finals)
    assert "over 2 seeds" in result.stdout
    assert (tmp_path / "cmp.png").stat().st_size > 1000

    from optlab.app.compare import compare

    data = compare(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", output=str(tmp_path / "again.png"))
    by_optimizer = {}
    for row in data["rows"]:
        by_optimizer.setdefault(row["optimizer"], []).append(row["final"])
    assert sorted(g["config"]["optimizer"] for g in data["seeds"]) == ["adam", "sgd"]
    assert {g["n"] for g in data["seeds"]} == {2}
    for group in data["seeds"]:
        values = by_optimizer[group["config"]["optimizer"]]
        assert math.isclose(group["mean"], sum(values) / 2)
        assert math.isclose(group["std"], abs(values[0] - values[1]) / math.sqrt(2))  # sample std of two


def test_compare_errors_are_clear(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "optlab.compare"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2 and "no MLflow store" in result.stderr and "Traceback" not in result.stderr
