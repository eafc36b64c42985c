"""What a user sees in MLflow, counted back from the store: names, params, metric keys, summary
metrics, datasets, tags, and a sweep's parent run (basic and joblib launchers)."""

from __future__ import annotations

import json
import math
import os

import pytest
from cli_helpers import optlab, runs
from references import tutorial_first_epoch_within

pytestmark = pytest.mark.slow

FAST = ["trainer.progress_bar=false"]


def _only(found):
    assert len(found) == 1, [r.info.run_name for r in found]
    return found[0]


def test_a_plain_run_is_named_grouped_summarised_and_without_clutter(tmp_path):
    result = optlab(tmp_path, "problem=rosenbrock", "optimizer.learning_rate=0.05", "trainer.epochs=180", *FAST)
    assert result.returncode == 0, result.stderr
    c, found = runs(tmp_path)
    run = _only(found)
    assert run.info.run_name == "adam rosenbrock seed=0"
    params = run.data.params
    assert "None" not in params.values() and "[]" not in params.values()
    assert not [k for k in params if k.startswith("tracking.") or k in ("trainer.progress_bar", "print_every_epoch")]
    assert params["optimizer.learning_rate"] == "0.05" and params["trainer.epochs"] == "180"
    metrics = run.data.metrics
    # one step per epoch: the epoch's loss is the step's, logged once, as the command line prints it
    assert {"train/loss", "position/x", "position/y", "train/suboptimality", "train/distance_to_optimum"} <= set(
        metrics
    )
    assert "train/loss_step" not in metrics and "loss" not in metrics and "epoch_loss" not in metrics
    assert "train/loss" in result.stdout and "position/x" in result.stdout
    # a constant learning rate is one point, not a flat line of 180
    assert [m.value for m in c.get_metric_history(run.info.run_id, "train/learning_rate")] == [0.05]
    # the summary: steps, seconds, the best of each metric with a direction and its epoch, the objective
    losses = [m.value for m in sorted(c.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)]
    assert len(losses) == 180 and metrics["summary/steps"] == 180 and metrics["summary/epochs"] == 180  # (< 200 points)
    assert metrics["best/loss"] == min(losses) and metrics["best_epoch/loss"] == losses.index(min(losses)) + 1
    assert metrics["objective"] == losses[-1]  # metric=auto is the loss here, lower is better as it is
    assert 0 < metrics["summary/train_seconds"] < 60
    assert metrics["target/reached"] == 0.0 and "target/steps" not in metrics  # 180 steps of Adam at 0.05
    tags = run.data.tags
    assert tags["mlflow.source.name"] == "python -m optlab" and tags["mlflow.user"] and tags["optlab_version"]
    assert tags["target"] == "suboptimality <= 4e-06"


def test_a_run_that_reaches_its_target_logs_what_it_took(tmp_path):
    args = ("problem=seed_linear", "optimizer=sgd", "optimizer.learning_rate=0.1", "trainer.epochs=20", *FAST)
    result = optlab(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    _, found = runs(tmp_path)
    metrics = _only(found).data.metrics
    expected = tutorial_first_epoch_within(0.1, 0.1, 20)  # 7: the tutorial's seven rows
    assert metrics["target/reached"] == 1.0
    assert metrics["target/steps"] == metrics["target/epochs"] == expected and metrics["target/seconds"] >= 0
    assert f"target excess <= 0.1: reached at epoch {expected} (step {expected}," in result.stdout


def test_a_run_with_data_logs_its_datasets_per_step_losses_and_an_inverted_objective(tmp_path):
    args = ("problem=mlp_digits", "trainer.epochs=2", "metric=val_accuracy", "schedule=cosine_decay", *FAST)
    result = optlab(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    c, found = runs(tmp_path)
    run = _only(found)
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "validation"}
    assert inputs["train"].name == "digits" and json.loads(inputs["train"].profile)["num_rows"] == 1438
    assert json.loads(inputs["validation"].profile)["num_rows"] == 359  # 20% of 1,797 held out
    steps = 2 * 45  # ceil(1,438 / 32) batches per epoch
    assert len(c.get_metric_history(run.info.run_id, "train/loss_step")) == steps
    assert len(c.get_metric_history(run.info.run_id, "train/learning_rate")) == steps  # a schedule: a curve
    accuracy = sorted(c.get_metric_history(run.info.run_id, "val/accuracy"), key=lambda m: m.step)
    assert run.data.metrics["objective"] == -accuracy[-1].value  # higher is better: negated
    assert run.data.metrics["best/val_accuracy"] == max(m.value for m in accuracy)


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_sweep_is_one_parent_run_holding_runs_named_after_what_differs(tmp_path, launcher):
    args = [
        "-m",
        "optimizer=sgd,adam",
        "optimizer.learning_rate=0.01,0.05",
        "problem=rosenbrock",
        "trainer.epochs=50",  # (fewer than tracking.max_points: every epoch is logged)
        *FAST,
    ]
    if launcher == "joblib":  # two workers writing to one store at once
        args += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    result = optlab(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    # Hydra's files go under .optlab/, nothing else appears beside the store
    assert sorted(p.name for p in tmp_path.iterdir()) == [".optlab", "mlartifacts", "mlflow.db"]
    c, found = runs(tmp_path, parents=True)
    parents = [r for r in found if r.data.tags.get("optlab.kind") == "sweep"]
    children = [r for r in found if r not in parents]
    parent = _only(parents)
    assert parent.info.status == "FINISHED" and len(children) == 4
    assert all(r.info.status == "FINISHED" for r in children)
    sweep_id = parent.data.tags["sweep"]
    assert parent.info.run_name == f"sweep {sweep_id}: optimizer=sgd,adam lr=0.01,0.05"
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert {r.data.tags["sweep"] for r in children} == {sweep_id}
    assert sorted(r.info.run_name for r in children) == [
        "adam lr=0.01 seed=0",
        "adam lr=0.05 seed=0",
        "sgd lr=0.01 seed=0",
        "sgd lr=0.05 seed=0",
    ]
    assert sorted(r.data.tags["sweep_job"] for r in children) == ["0", "1", "2", "3"]
    for run in children:  # no metric lost, whichever worker wrote it
        for key in ("train/loss", "train/distance_to_optimum", "position/x", "position/y"):
            steps = sorted(m.step for m in c.get_metric_history(run.info.run_id, key))
            assert steps == list(range(1, 51)), (run.info.run_name, key)
    # two workers share the cores; one after another, a run has them all
    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // 2) if launcher == "joblib" else cores
    assert {r.data.tags["threads"] for r in children} == {str(threads)}
    note = parent.data.tags["mlflow.note.content"]
    assert "python -m optlab -m optimizer=sgd,adam" in note and "swept: optimizer, optimizer.learning_rate" in note
    assert "best: " in note and "4 runs (4 FINISHED)" in note
    assert {a.path for a in c.list_artifacts(parent.info.run_id)} == {"compare.txt", "compare.png"}
    table = c.download_artifacts(parent.info.run_id, "compare.txt", str(tmp_path / "download"))
    assert all(r.info.run_name in open(table).read() for r in children)
    (record,) = (tmp_path / ".optlab" / "multirun").rglob("optlab-sweep.json")
    assert json.loads(record.read_text())["parent_run_id"] == parent.info.run_id
    if launcher == "joblib":
        return
    # the same sweep again in its folder: every job was done, the parent is the same run
    again = optlab(tmp_path, *args, f"hydra.sweep.dir={record.parent}")
    assert again.returncode == 0, again.stderr
    _, found = runs(tmp_path, parents=True)
    assert len(found) == 5 and _only([r for r in found if r.data.tags.get("optlab.kind") == "sweep"]).info.run_id == (
        parent.info.run_id
    )


def test_compare_reads_a_sweep_by_parent_id_or_filter_and_logs_to_the_parent(tmp_path, monkeypatch, capsys):
    from optlab.app import compare

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
    c, found = runs(tmp_path, parents=True)
    parent = _only([r for r in found if r.data.tags.get("optlab.kind") == "sweep"])
    # from the shell, once: the table, the seeds, the picture where asked, the copy on the parent
    result = optlab(tmp_path, "--parent", parent.info.run_id, "--output", "mine.png", module="optlab.compare")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "4 runs, sorted by distance_to_optimum" in lines[0]
    header = lines[1].split()
    assert header[:2] == ["run", "optimizer"] and "seed" in header and "final" in header and "best" in header
    at = lines[1].index("final ")  # fixed-width columns (run names hold spaces: "adam seed=1")
    finals = [float(line[at:].split()[0]) for line in lines[3:7]]
    assert finals == sorted(finals)
    assert "over 2 seeds" in result.stdout
    assert f"logged to the sweep's parent run {parent.info.run_id}: compare.txt, compare.png" in result.stdout
    assert (tmp_path / "mine.png").stat().st_size > 1000  # written where asked, logged under its own name
    assert {a.path for a in c.list_artifacts(parent.info.run_id)} == {"compare.txt", "compare.png"}

    # the seed statistics, recomputed from the rows
    data = compare.compare(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", output=str(tmp_path / "again.png"))
    by_optimizer = {}
    for row in data["rows"]:
        by_optimizer.setdefault(row["optimizer"], []).append(row["final"])
    assert sorted(g["config"]["optimizer"] for g in data["seeds"]) == ["adam", "sgd"]
    assert {g["n"] for g in data["seeds"]} == {2}
    for group in data["seeds"]:
        values = by_optimizer[group["config"]["optimizer"]]
        assert math.isclose(group["mean"], sum(values) / 2)
        assert math.isclose(group["std"], abs(values[0] - values[1]) / math.sqrt(2))  # sample std of two

    # the rest in this process (the command's own code, without a second MLflow start-up)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    # another metric is another comparison beside the sweep's own, not in its place
    assert compare.main(["--parent", parent.info.run_id, "--metric", "loss"]) == 0
    names = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert names == {"compare.txt", "compare.png", "compare-loss.txt", "compare-loss.png"}
    capsys.readouterr()
    assert compare.main(["--sweep", "all", "--filter", "tags.seed = '1'"]) == 0
    filtered = capsys.readouterr().out
    assert "seed=1" in filtered and "seed=0" not in filtered
    assert "parent run" not in filtered  # a part of the sweep is not the sweep's comparison
    assert len(c.list_artifacts(parent.info.run_id)) == 4
    assert compare.main(["--filter", "tags.seed ==== 1"]) == 2
    assert "--filter" in capsys.readouterr().err


def test_a_sweeps_workers_share_the_cores(monkeypatch):
    from omegaconf import OmegaConf

    from optlab.app import cores

    monkeypatch.setattr(cores, "usable_cores", lambda: 8)
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    for n_jobs, workers in ((2, 2), (-1, 8), (-2, 7), (16, 16)):
        conf = OmegaConf.create({"launcher": {"_target_": joblib, "n_jobs": n_jobs}})
        assert cores.sweep_workers(conf) == workers
    basic = OmegaConf.create({"launcher": {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}})
    assert cores.sweep_workers(basic) == 1
    import threadpoolctl

    limits = []
    monkeypatch.setattr(threadpoolctl, "threadpool_limits", lambda limits_=None, **kw: limits.append(kw["limits"]))
    monkeypatch.delitem(__import__("sys").modules, "numba", raising=False)  # as in a fresh worker
    # setenv first: delenv of an unset variable records nothing, and the "1" written below would
    # outlive the test (numba then refuses every later compile in this process: the CI found it)
    monkeypatch.setenv("NUMBA_NUM_THREADS", "0")
    monkeypatch.delenv("NUMBA_NUM_THREADS")
    assert cores.share_cores(3) == 2 and os.environ["NUMBA_NUM_THREADS"] == "2"  # 8 cores // 3 workers
    assert cores.share_cores(16) == 1 and limits == [2, 1]  # never fewer than one; BLAS limited alike
