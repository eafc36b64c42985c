"""python -m optlab.baselines: the tuning protocol and its figures, on the tutorial's problem."""

from __future__ import annotations

import json
import types

import pytest
from references import tutorial_first_epoch_within

from optlab import baselines


def test_a_baseline_tunes_on_its_own_seed_then_reports_every_seed():
    serial = types.SimpleNamespace(map=map)
    data = baselines.baseline("seed_linear", serial, seeds=(0, 1), grid=(0.001, 0.1))
    assert data["metric"] == "excess" and data["direction"] == "min" and data["target"] == "excess <= 0.1"
    rows = {(r["optimizer"], r["which"]): r for r in data["rows"]}
    assert set(rows) == {("sgd", "default"), ("sgd", "tuned"), ("adam", "default"), ("adam", "tuned")}
    assert rows["sgd", "default"]["learning_rate"] == 0.01 and rows["adam", "default"]["learning_rate"] == 0.001
    # 0.1 ends far closer to a = b = 1 than 0.001 does, for SGD and for Adam
    assert rows["sgd", "tuned"]["learning_rate"] == 0.1 and rows["adam", "tuned"]["learning_rate"] == 0.1
    # the tutorial's problem has no randomness: every seed is the same run, reached at the same step
    tuned = rows["sgd", "tuned"]
    assert tuned["reached"] == 2 and tuned["median_steps_to_target"] == tutorial_first_epoch_within(0.1, 0.1, 100)
    assert tuned["final_std"] == 0.0 and tuned["steps"] == 100  # the budget: 100 full-batch epochs
    assert rows["sgd", "default"]["median_steps_to_target"] == tutorial_first_epoch_within(0.1, 0.01, 100)
    assert set(data["tuning"]) == {"sgd", "adam"} and data["tuning_seed"] not in data["seeds"]


@pytest.mark.parametrize(
    ("values", "way", "expected"),
    [
        ([0.9612, 0.97, 0.981], "max", 0.96),  # the worst seed, rounded down: every seed reached it
        ([3.2e-6, 4.04e-6], "min", 4.1e-6),  # the worst seed, rounded up
        ([0.004979, 0.00501], "min", 0.0051),
    ],
)
def test_the_suggested_target_is_the_worst_seed_rounded_towards_easier(values, way, expected):
    assert baselines.suggested_target(values, way) == pytest.approx(expected)


def test_the_command_updates_its_json_keeping_other_problems(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(baselines, "SEEDS", (0, 1))
    monkeypatch.setattr(baselines, "GRID", (0.01, 0.1))
    out = tmp_path / "b.json"
    out.write_text(json.dumps({"problems": {"other": {"kept": True}}}))
    assert baselines.main(["seed_linear", "--out", str(out)]) == 0
    stored = json.loads(out.read_text())
    assert stored["problems"]["other"] == {"kept": True} and "seed_linear" in stored["problems"]
    assert stored["problems"]["seed_linear"]["command"] == "python -m optlab.baselines seed_linear --out " + str(out)
    assert "suggested target: excess <=" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        baselines.main(["seed_linearr"])
    assert "unknown problem 'seed_linearr'" in capsys.readouterr().err


def test_the_pool_gives_its_workers_one_thread_and_leaves_this_process_alone(monkeypatch):
    # the CI found it: the pool once set NUMBA_NUM_THREADS=1 here for its lifetime, so a numba that
    # started its threads then refused any later compile ("Cannot set NUMBA_NUM_THREADS ... currently 1")
    import os

    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    with baselines._pool(1) as pool:
        assert os.environ.get("NUMBA_NUM_THREADS") is None
        assert list(pool.map(os.getenv, ["NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS"])) == ["1", "1"]
    assert os.environ.get("NUMBA_NUM_THREADS") is None
