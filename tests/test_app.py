"""The command line: runs, errors, what MLflow receives (counted back), statuses, multirun."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from cli_helpers import RAISES_ON_NAN, optlab, runs

pytestmark = pytest.mark.slow

FAST = ["trainer.progress_bar=false"]


# -- errors -------------------------------------------------------------------------------------------

ERRORS = [
    (["optimizer=adamm"], "Unknown optimizer 'adamm'. Did you mean 'adam'?"),
    (  # (Hydra's paragraph, "Key 'patiense' is not in struct", exit status 1: a plugin author's trial)
        ["callbacks=[early_stopping]", "callbacks.early_stopping.patiense=2"],
        "callbacks.early_stopping.patiense: EarlyStopping has no argument 'patiense'. Did you mean 'patience'?",
    ),
    (["problem=rosenbrok"], "Did you mean 'rosenbrock'?"),
    (["schedule=cosine_dekay"], "Did you mean 'cosine_decay'?"),
    (["callbacks=[early_stoping]"], "Did you mean 'early_stopping'?"),
    (["optimizer.betta_1=0.5"], "Adam has no argument 'betta_1'. Did you mean 'beta_1'? Accepted arguments:"),
    (["optimizer.beta_1=1.5"], "`beta_1` must be a float in [0, 1); received beta_1=1.5"),
    (["optimizer=sgd", "optimizer.momentum=-1"], "`momentum` must be a float in [0, 1]"),
    (["trainer.epochs=-1"], "`epochs` must be an integer >= 0"),
    (["seed=-1"], "optlab: error: `seed` must be an integer >= 0; received seed=-1\n"),  # (no "auto" to offer)
    (["trainer.dtype=float16"], "trainer: `dtype` must be float32 or float64; received dtype='float16'\n"),
    (["trainer.batch_size=0"], "`batch_size` must be an integer >= 1 or null (all the examples); received"),
    (["callbacks=[early_stopping]", "callbacks.early_stopping.patience=-2"], "`patience` must be an integer >= 0"),
    (["callbacks=[threshold_stop]"], "callbacks.threshold_stop.threshold is required"),
    (["problem=mlp_digits", "problem.activation=sigmoid"], "`activation` must be one of 'tanh', 'relu'"),
    (["problem=rosenbrock", "metric=val_acc"], "metric 'val_acc' is not logged by problem 'rosenbrock'. Logged:"),
    (["problem=rosenbrock", "trainer.target='val_loss <= 0.1'"], "problem 'rosenbrock' does not log 'val_loss'"),
    (["trainer.target='val_accuracy <= 0.1'"], "is reached by getting worse: val_accuracy is better higher"),
    (["problem=seed_linear", "trainer.target='loss <= -1'"], "trainer.target loss <= -1: no run can reach it: loss's"),
    (
        ["problem=rosenbrock", "callbacks=[early_stopping]", "callbacks.early_stopping.monitor=val_accuracy"],
        "callbacks.early_stopping: EarlyStopping: monitor 'val_accuracy' is not logged by this run",
    ),
    (
        ["callbacks=[model_checkpoint]", 'callbacks.model_checkpoint.filepath="ck/e{val_acc:.2f}.npz"'],
        "uses {val_acc}, which is not logged by this run (did you mean 'val_accuracy'?); available: accuracy, epoch,",
    ),
    (
        [
            "callbacks=[model_checkpoint]",
            "callbacks.model_checkpoint.filepath=x.npz",
            "callbacks.model_checkpoint.save_freq=0",
        ],
        "`save_freq` must be 'epoch' or an integer >= 1",
    ),
]


@pytest.mark.parametrize(("args", "message"), ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_bad_configs_fail_before_training_with_one_message(tmp_path, args, message):
    result = optlab(tmp_path, *args, "tracking=none", *FAST)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "mlflow.db").exists()
    for log in (tmp_path / ".optlab").glob("runs/*/*/main.log"):  # a run folder Hydra made says why nothing ran
        assert message in log.read_text()


def test_tutorial_preset_prints_the_seven_rows(tmp_path):
    result = optlab(tmp_path, "+experiment=seed_tutorial", "tracking=none")
    assert result.returncode == 0, result.stderr
    rows = result.stdout.strip().splitlines()[:7]
    assert rows == [
        "1.2 1.4",
        "0.98 1.22",
        "0.924 1.16",
        "0.914 1.1348",
        "0.9166 1.1202",
        "0.9222 1.1091",
        "0.9284 1.0997",
    ]
    assert "7 steps" in result.stdout


# -- tracking ------------------------------------------------------------------------------------------


def test_a_run_logs_config_tags_every_metric_and_plots(tmp_path):
    result = optlab(
        tmp_path, "problem=rosenbrock", "optimizer=adam", "optimizer.learning_rate=0.05", "trainer.epochs=180", *FAST
    )
    assert result.returncode == 0, result.stderr
    assert "mlflow ui --backend-store-uri sqlite:///" in result.stdout
    c, found = runs(tmp_path)
    assert len(found) == 1
    run = found[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["optimizer.learning_rate"] == "0.05" and run.data.params["problem.name"] == "rosenbrock"
    tags = run.data.tags
    assert tags["optimizer"] == "adam" and tags["problem"] == "rosenbrock" and tags["seed"] == "0"
    assert tags["optimizer_distribution"] == "optlab" and tags["optlab_version"]
    assert tags["metric"] == "loss"  # metric=auto: a test function holds out no validation data
    assert "warning" not in result.stderr and "INFO" not in result.stderr  # nor MLflow's store creation
    # every epoch's loss and metrics (one step each here), all at consistent steps; a constant rate once
    loss = c.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in loss) == list(range(1, 181))  # (fewer epochs than tracking.max_points, 200)
    assert len(c.get_metric_history(run.info.run_id, "train/learning_rate")) == 1
    distance = c.get_metric_history(run.info.run_id, "train/distance_to_optimum")
    assert sorted(m.step for m in distance) == list(range(1, 181))  # one step per epoch here
    artifacts = {a.path for a in c.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "curves.png", "path.png"} <= artifacts


def test_a_run_without_plots_logs_everything_else(tmp_path):
    # a sweep of many runs whose curves are read in MLflow's charts: 0.1-0.2 s a run less
    wrong = optlab(tmp_path, "problem=rosenbrock", "trainer.epochs=5", "tracking.plots=maybe", *FAST)
    assert wrong.returncode == 2, wrong.stderr
    line = wrong.stderr.strip().splitlines()[-1]
    assert line == "optlab: error: tracking.plots must be true or false; received 'maybe'"
    assert not (tmp_path / "mlflow.db").exists()  # nothing recorded (the run's folder has its log)
    result = optlab(tmp_path, "problem=rosenbrock", "trainer.epochs=5", "tracking.plots=false", *FAST)
    assert result.returncode == 0, result.stderr
    c, (run,) = runs(tmp_path)
    assert run.info.status == "FINISHED" and "plot_error" not in run.data.tags
    assert {a.path for a in c.list_artifacts(run.info.run_id)} == {"config.yaml"}
    assert len(c.get_metric_history(run.info.run_id, "train/loss")) == 5


def test_no_metric_is_lost_on_a_long_run(tmp_path):
    steps = 12_000
    args = ["problem=quadratic", "problem.dim=10", f"trainer.epochs={steps}", "optimizer=sgd", *FAST]
    result = optlab(tmp_path, *args, "tracking.log_every=1", "tracking.flush_timeout=600")
    assert result.returncode == 0, result.stderr
    c, (run,) = runs(tmp_path)
    for key in ("train/loss", "train/distance_to_optimum", "train/suboptimality"):
        assert len(c.get_metric_history(run.info.run_id, key)) == steps, key


def test_auto_interval_caps_the_per_step_curves(tmp_path):
    result = optlab(tmp_path, "problem=quadratic", "problem.dim=10", "trainer.epochs=3000", "optimizer=sgd", *FAST)
    assert result.returncode == 0, result.stderr
    c, (run,) = runs(tmp_path)
    for key in ("train/loss", "train/distance_to_optimum"):
        steps = sorted(m.step for m in c.get_metric_history(run.info.run_id, key))
        # every 16th step from the first (ceil(3000 / 198): tracking.max_points is 200), then the
        # last; the best is the last here
        assert steps == [*range(1, 3001, 16), 3000], key


def started(proc, recorded) -> None:
    """Wait until the process has recorded its run (its own sign that training has begun), however
    loaded the machine; fail at once if it ended instead (a 10-minute backstop against a hang)."""
    deadline = time.time() + 600
    while not recorded():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, "the run was never recorded"
        time.sleep(0.2)


def test_failed_and_killed_runs_have_matching_status(tmp_path, spawn):
    failed = optlab(tmp_path, *RAISES_ON_NAN, *FAST)
    assert failed.returncode != 0
    _c, (run,) = runs(tmp_path)
    assert run.info.status == "FAILED" and "NaN or Inf" in run.data.tags["error"]

    proc = spawn(
        [sys.executable, "-m", "optlab", "problem=quadratic", "trainer.epochs=100000000", *FAST],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started(proc, lambda: len(runs(tmp_path)[1]) == 2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "KILLED" in err
    _, found = runs(tmp_path)
    statuses = sorted(r.info.status for r in found)
    assert statuses == ["FAILED", "KILLED"]


def _long_run(tmp_path, spawn):
    """A tracked run of the quadratic for 1e8 epochs, logging every step, training for 0.5 s (tens of
    thousands of points the store has not taken yet when it is stopped)."""
    args = ["problem=quadratic", "trainer.epochs=100000000", "tracking.log_every=1", *FAST]
    proc = spawn(
        [sys.executable, "-m", "optlab", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started(proc, lambda: bool(runs(tmp_path)[1]))
    time.sleep(0.5)
    return proc


def test_sigterm_marks_the_run_killed_and_keeps_every_metric(tmp_path, spawn):
    # a cluster's time limit or `kill`: like Ctrl-C, the metrics gathered so far are written
    proc = _long_run(tmp_path, spawn)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    c, (run,) = runs(tmp_path)
    assert f"terminated (SIGTERM); the MLflow run {run.info.run_id} is marked KILLED" in err
    assert run.info.status == "KILLED" and run.data.tags["error"] == "terminated (SIGTERM)"
    steps = sorted(m.step for m in c.get_metric_history(run.info.run_id, "train/loss"))
    assert len(steps) > 10 and steps == list(range(1, len(steps) + 1))  # one step per epoch, none missing


def test_a_closed_terminal_marks_the_run_killed_and_keeps_its_metrics(tmp_path, spawn):
    # SIGHUP's default ended the process at once: the run stayed RUNNING (a fault-injection probe)
    proc = _long_run(tmp_path, spawn)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err  # handled as SIGTERM (conftest's spawn starts it with SIGHUP's default)
    assert "Traceback" not in err
    c, (run,) = runs(tmp_path)
    assert run.info.status == "KILLED" and f"hung up (SIGHUP); the MLflow run {run.info.run_id} is marked KILLED" in err
    assert run.data.tags["error"] == "hung up (SIGHUP)"  # (it said SIGTERM: a newcomer's trial)
    steps = sorted(m.step for m in c.get_metric_history(run.info.run_id, "train/loss"))
    assert len(steps) > 10 and steps == list(range(1, len(steps) + 1))


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_while_the_run_is_written_still_marks_it_killed(tmp_path, spawn, second):
    # once, a second SIGTERM within ~2 s of the first exited at once and left the run RUNNING;
    # now it cuts the wait for the store short, keeps the rest locally and still sets the status.
    # The exit status is the first signal's (SIGTERM then Ctrl-C ended with 130)
    proc = _long_run(tmp_path, spawn)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    proc.send_signal(second)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    _, (run,) = runs(tmp_path)
    assert run.info.status == "KILLED", err
    assert f"the MLflow run {run.info.run_id} is marked KILLED" in err


def test_a_sweep_with_a_bad_value_in_a_later_job_stops_before_any_job_runs(tmp_path):
    """Job 0 ran and was recorded FINISHED, then job 1's value failed it, and the sweep's parent
    run FAILED: a mistake must be one line before anything is recorded."""
    args = ["-m", "problem=rosenbrock", "optimizer.learning_rate=0.1,-0.1", "seed=0,1", "trainer.epochs=5", *FAST]
    result = optlab(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("optlab: error: job 2 (problem=rosenbrock optimizer.learning_rate=-0.1 seed=0 ")
    assert "`learning_rate` must be a float >= 0" in line and line.endswith("(no job was run)")
    assert "Traceback" not in result.stderr and "on rosenbrock" not in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no store, no sweep folder
    # the same sweep with its values right runs every job
    good = optlab(tmp_path, *[a.replace("-0.1", "0.01") for a in args], "tracking=none")
    assert good.returncode == 0, good.stderr
    assert good.stdout.count("adam on rosenbrock: 5 steps") == 4


def test_every_builtin_optimizer_runs_from_the_command_line(tmp_path):
    import optlab as lib

    names = ",".join(cls.registry_name for cls in lib.optimizers.BUILTIN)
    result = optlab(
        tmp_path, "-m", f"optimizer={names}", "problem=seed_linear", "trainer.epochs=3", "tracking=none", *FAST
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("on seed_linear: 3 steps") == len(lib.optimizers.BUILTIN)


def test_plugin_optimizer_is_selectable_without_yaml(tmp_path):
    result = optlab(tmp_path, "optimizer=adabelief", "problem=seed_linear", "trainer.epochs=2", "tracking=none", *FAST)
    assert result.returncode == 0, result.stderr
    assert "adabelief on seed_linear" in result.stdout


def test_a_built_wheel_carries_the_configs(tmp_path):
    """`pip install .` (not editable) must find conf/ inside the package: the wheel holds every yaml."""
    import shutil
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"  # a copy: the build leaves build/ behind, and must not see an old one
    skip = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".*cache*", "mlflow.db")
    shutil.copytree(root, source, ignore=skip)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("optlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"optlab/{p.relative_to(root / 'optlab').as_posix()}" for p in (root / "optlab/conf").rglob("*.yaml")}
    assert len(expected) >= 7  # config.yaml, trainer, tracking (2), experiments (3)
    assert expected <= names


def test_metric_auto_is_val_loss_where_validation_data_is_held_out_and_callbacks_watch_it():
    from optlab.app.bench import compose
    from optlab.app.run import build

    for problem, expected in (("mlp_digits", "val_loss"), ("rosenbrock", "loss")):
        conf = compose([f"problem={problem}", "callbacks=[early_stopping,reduce_lr_on_plateau]"])
        _, _, (early, plateau) = build(conf)
        assert conf["metric"] == expected and early.monitor == expected and plateau.monitor == expected
    conf = compose(["problem=rosenbrock", "metric=distance_to_optimum", "callbacks=[early_stopping]"])
    assert build(conf)[2][0].monitor == "distance_to_optimum"
    conf = compose(["callbacks=[early_stopping]", "callbacks.early_stopping.monitor=val_accuracy"])
    assert build(conf)[2][0].monitor == "val_accuracy" and conf["metric"] == "val_loss"


def test_a_diverging_run_says_so_and_where(tmp_path):
    # SGD at 0.01 from (-1.2, 1) on Rosenbrock overshoots: |grad| ~ 200, the iterates blow up within a few steps
    result = optlab(tmp_path, "optimizer=sgd", "problem=rosenbrock", "trainer.epochs=50", "tracking=none", *FAST)
    assert result.returncode == 0, result.stderr
    assert "the run diverged" in result.stderr and "callbacks=[terminate_on_nan]" in result.stderr
    stable = optlab(tmp_path, "optimizer=sgd", "optimizer.learning_rate=0.0005", "problem=rosenbrock", "tracking=none")
    assert "diverged" not in stable.stderr
    # in a sweep, whose (jobs print side by side: a newcomer's trial)
    swept = optlab(tmp_path, "-m", "optimizer=sgd", "problem=rosenbrock", "trainer.epochs=50", "tracking=none", *FAST)
    assert "optlab: warning: job 0 (optimizer=sgd problem=rosenbrock trainer.epochs=50" in swept.stderr, swept.stderr


def test_help_shows_usage_and_every_registered_component(tmp_path):
    result = optlab(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("python -m optlab [OVERRIDE ...]")
    groups = dict(line.split(": ", 1) for line in result.stdout.splitlines() if line.startswith("optimizer: "))
    assert {"adam", "adamw", "lion", "adabelief"} <= set(groups["optimizer"].split(", "))  # the plugin's too


def test_a_callback_that_adds_a_log_name_makes_it_a_valid_metric(monkeypatch):
    import optlab as lib
    from optlab.app.bench import compose
    from optlab.app.config import ConfigError
    from optlab.app.run import build

    class Smoothed(lib.callbacks.Callback):
        registry_name = "smoothed_loss_test"
        adds_logs = ("smoothed_loss",)

    registry = lib.callbacks.registry
    registry.names()  # plugins loaded first, so the patch below is what gets undone
    monkeypatch.setitem(registry._classes, "smoothed_loss_test", Smoothed)
    monkeypatch.setitem(registry._sources, "smoothed_loss_test", "tests")
    conf = compose(["problem=rosenbrock", "metric=smoothed_loss", "callbacks=[smoothed_loss_test]"])
    build(conf)
    assert conf["metric"] == "smoothed_loss"
    with pytest.raises(ConfigError, match="metric 'smoothed_loss' is not logged by problem 'rosenbrock'"):
        build(compose(["problem=rosenbrock", "metric=smoothed_loss"]))


def test_a_plugin_schedule_is_filled_from_the_run_by_its_declarations(monkeypatch):
    # no argument name is special: what a schedule declares fill=... gets the optimizer's rate
    # and the run's length on the command line, as the built-in schedules' do
    import numpy as np

    import optlab as lib
    from optlab.app.bench import compose
    from optlab.app.run import build
    from optlab.hparams import Hyper

    class Linear(lib.schedules.LearningRateSchedule):
        registry_name = "linear_to_zero_test"
        start = Hyper(Hyper.REQUIRED, low=0.0, fill="learning_rate", doc="rate at step 0")
        length = Hyper(Hyper.REQUIRED, kind=int, low=1, fill="run_steps", doc="steps to reach 0")

        def value(self, step):
            return self.start * np.clip(1.0 - step / self.length, 0.0, 1.0)

    registry = lib.schedules.registry
    registry.names()
    monkeypatch.setitem(registry._classes, "linear_to_zero_test", Linear)
    monkeypatch.setitem(registry._sources, "linear_to_zero_test", "tests")
    # seed_linear is full-batch: one step per epoch, so 40 epochs are 40 steps
    conf = compose(
        ["problem=seed_linear", "schedule=linear_to_zero_test", "optimizer.learning_rate=0.2", "trainer.epochs=40"]
    )
    _, optimizer, _ = build(conf)
    assert optimizer.get_config()["learning_rate"] == {"name": "linear_to_zero_test", "start": 0.2, "length": 40}
    assert lib.schedules.get(optimizer.get_config()["learning_rate"])(10) == pytest.approx(0.15)  # 0.2 * (1 - 10/40)
    conf = compose(["problem=seed_linear", "schedule=linear_to_zero_test", "schedule.length=8", "schedule.start=1.0"])
    schedule = build(conf)[1].get_config()["learning_rate"]
    assert (schedule["start"], schedule["length"]) == (1.0, 8)  # what the user sets wins


def test_fill_names_only_what_an_experiment_can_fill():
    from optlab.hparams import Hyper

    allowed = "'learning_rate', 'run_steps', 'metric' or None"
    with pytest.raises(ValueError, match=f"fill must be one of {allowed}; received 'epochs'"):
        Hyper(1.0, fill="epochs")


def test_the_sweep_benchmark_times_a_sweep_sequential_and_in_parallel(capsys):
    from optlab.app import bench

    overrides = ["optimizer=sgd,adam", "problem=seed_linear", "trainer.epochs=20"]
    assert bench.main(["--sweep", "--repeats", "1", *overrides]) == 0
    out = capsys.readouterr().out
    assert "sweep: optimizer=sgd,adam problem=seed_linear trainer.epochs=20 (untracked)" in out
    sequential = float(out.split("sequential: ")[1].split(" s")[0])
    parallel = float(out.split("2 joblib workers: ")[1].split(" s")[0])
    assert sequential > 0 and parallel > 0
    speedup = float(out.split("speed-up ")[1].split()[0])  # (the figures are for reading, not asserting)
    assert speedup == pytest.approx(sequential / parallel, abs=0.02) and "(ideal " in out
    with pytest.raises(SystemExit):
        bench.main(["--sweep", "--workers", "0"])


def test_the_tracking_benchmark_reports_the_ratio_the_fixed_cost_and_the_runs_from_the_shell(
    capsys, monkeypatch, tmp_path
):
    from optlab.app import bench

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))  # (the detached runs' listing)
    monkeypatch.setattr(bench, "SHELL", ["problem=seed_linear", "trainer.epochs=2"])  # (a shorter run: the same code)
    assert bench.main(["--repeats", "1", "problem=seed_linear", "trainer.epochs=30"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("run: problem=seed_linear trainer.epochs=30 trainer.progress_bar=false (30 steps, ")
    assert lines[1].startswith("training: tracking off ")
    assert "(the whole run, with its opening and end: ratio" in lines[1]
    off = float(lines[1].split("tracking off ")[1].split(" s")[0])
    on = float(lines[1].split("tracking on ")[1].split(" s")[0])
    assert 0 < off and 0 < on and float(lines[1].split("ratio ")[1].split()[0]) > 0  # (figures for reading)
    assert lines[2].startswith("fixed cost per run (the same run of 1 epoch, tracked less untracked, ")
    assert "opening the run " in lines[2] and "its end " in lines[2]
    close = float(lines[2].split("its end ")[1].split(" s")[0])
    plots = float(lines[2].split("drawing the plots ")[1].split(" s")[0])
    assert 0 < plots <= close  # (medians of the same runs: drawing is part of the end)
    float(lines[2].split("with tracking.plots=false ")[1].split(" s")[0])  # (a figure for reading)
    float(lines[2].split("with tracking.detach=true ")[1].split(" s")[0])
    shell = lines[3]
    assert shell.startswith("from the shell, python -m optlab problem=seed_linear trainer.epochs=2: tracked ")
    tracked = float(shell.split("tracked ")[1].split(" s")[0])
    untracked = float(shell.split("tracking=none ")[1].split(" s")[0])
    added = float(shell.split("(+")[1].split(" s")[0])
    # each figure printed to 2 decimals from the unrounded times: apart by their three roundings at most
    assert added == pytest.approx(tracked - untracked, abs=0.015)  # one repeat: the one difference
    mlflow_alone = float(lines[4].split("one query): ")[1].split(" s")[0])
    least = float(lines[4].split("with the untracked run ")[1].split(" s")[0])
    assert 0 < mlflow_alone and least == pytest.approx(untracked + mlflow_alone, abs=0.015)
    detached = float(lines[5].split("with tracking.detach=true: ")[1].split(" s")[0])
    landed = float(lines[5].split("in the store ")[1].split(" s")[0])
    # the ratio is printed to 2 decimals from the unrounded times, which are printed to 2 decimals too:
    # its worst case apart from detached / untracked is the rounding of the three (0.006 failed once in CI)
    rounding = 0.005 + 0.005 / untracked * (1 + detached / untracked)
    assert float(lines[5].split("ratio ")[1].split()[0]) == pytest.approx(detached / untracked, abs=rounding)
    assert 0 < detached < landed  # (one repeat: the same command, then its recording)
    assert not list((tmp_path / "optlab" / "recording").glob("*"))  # every run recorded


def test_a_preset_in_the_working_directorys_conf_folder_is_found(tmp_path):
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /problem: beale\n  - override /optimizer: sgd\n"
        "trainer:\n  epochs: 3\n  progress_bar: false\n"
    )
    result = optlab(tmp_path, "+experiment=mine", "tracking=none")
    assert result.returncode == 0, result.stderr
    assert "position/x" in result.stdout and "in 3 steps" in result.stdout  # beale (2-D), three epochs


def test_components_are_chosen_by_any_name_the_registry_knows(tmp_path):
    """Class names, other cases and aliases work in Python (``optimizers.get("Adam")``) and so on the
    command line: Hydra knew the group's options by their registered names alone (its raw error, exit 1)."""
    from optlab.app.config import canonical_choices

    words = ["-m", "optimizer=SGD,Adam", "+callbacks=[EarlyStopping]", "optimizer.learning_rate=0.1"]
    words += ["optimizer=choice(SGD,adam)", "schedule=none", "--cfg", "job", "problem=Rosenbrock"]
    words += ["schedule=piecewise_constant", "hydra/launcher=joblib", "experiment=Adam"]
    assert canonical_choices(words) == [
        "-m",
        "optimizer=sgd,adam",
        "+callbacks=[early_stopping]",
        "optimizer.learning_rate=0.1",
        "optimizer=choice(sgd,adam)",
        "schedule=none",
        "--cfg",
        "job",
        "problem=rosenbrock",
        "schedule=piecewise_constant_decay",  # (an alias)
        "hydra/launcher=joblib",
        "experiment=Adam",  # (not a component group)
    ]
    args = ["optimizer=AdamW", "problem=Rosenbrock", "schedule=CosineDecay", "callbacks=[EarlyStopping]"]
    result = optlab(tmp_path, *args, "--cfg", "job")
    assert result.returncode == 0, result.stderr
    for line in ("  name: adamw", "  name: rosenbrock", "  name: cosine_decay", "early_stopping:"):
        assert line in result.stdout


def test_the_seconds_printed_are_the_seconds_logged(tmp_path):
    """In sweeps the line printed 0.09 s where MLflow's summary/train_seconds held 0.030 (two clocks:
    the whole fit call and the tracker's hooks); both are the trainer's own now (a newcomer's trial)."""
    import re

    args = ["-m", "optimizer=sgd,adam,rmsprop", "problem=rosenbrock", "trainer.epochs=300", *FAST]
    result = optlab(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    printed = dict(re.findall(r"^(\w+) on rosenbrock: 300 steps, 300 epochs, ([0-9.]+) s$", result.stdout, re.M))
    _, found = runs(tmp_path)
    logged = {r.data.tags["optimizer"]: r.data.metrics["summary/train_seconds"] for r in found}
    assert sorted(printed) == sorted(logged) == ["adam", "rmsprop", "sgd"]
    for name, seconds in logged.items():
        assert f"{seconds:.2f}" == printed[name]


def test_a_run_of_one_step_says_one_step(tmp_path):
    """It said "1 steps, 1 epochs" (a newcomer's trial)."""
    from optlab.names import counted

    assert [counted(n, "run") for n in (0, 1, 2)] == ["0 runs", "1 run", "2 runs"]
    result = optlab(tmp_path, "problem=seed_linear", "trainer.epochs=1", "tracking=none", *FAST)
    assert result.returncode == 0, result.stderr
    assert " on seed_linear: 1 step, 1 epoch, " in result.stdout


def test_argument_errors_speak_the_command_lines_true_false_and_null():
    """Python's True, False and None are YAML's true, false and null there; ``None`` typed on the
    command line is a string, which the message says."""
    from optlab.app.bench import compose
    from optlab.app.config import ConfigError
    from optlab.app.run import build

    cases = {
        "optimizer.nesterov=abc": "optimizer: SGD: `nesterov` must be true or false; received nesterov='abc'$",
        "optimizer.clipnorm=None": (
            r"optimizer: SGD: `clipnorm` must be a float > 0 or null; received clipnorm='None' "
            r"\(the string 'None': on the command line, no value is written null\)$"
        ),
        "optimizer.clipnorm=abc": "`clipnorm` must be a float > 0 or null; received clipnorm='abc'$",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            build(compose(["problem=seed_linear", "optimizer=sgd", override]))
    _, optimizer, _ = build(compose(["problem=seed_linear", "optimizer=sgd", "optimizer.clipnorm=null"]))
    assert optimizer.clipnorm is None


def _main_error(capsys, *argv, app=None):
    """The exit status and stderr of the command line's ``main`` (``app``: another) stopped before Hydra runs."""
    from optlab.app.main import main

    with pytest.raises(SystemExit) as stop:
        (app or main)(list(argv))
    return stop.value.code, capsys.readouterr().err


def test_a_conf_folder_of_your_own_keeps_mistakes_to_one_line(tmp_path, monkeypatch, capsys):
    """With ./conf (your presets), Hydra's paragraph for a setting the config does not have came back
    with exit status 1, and a preset's yaml that does not parse was a traceback (a newcomer's trial)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "bad.yaml").write_text("optimizer: [sgd\n")
    (tmp_path / "conf" / "experiment" / "more.yaml").write_text("# @package _global_\ntrainer:\n  epochs: 2\n")
    epochs = "trainer.epochz is not an option (did you mean 'epochs'?). Known: trainer.batch_size, "
    cases = {
        ("trainer.epochz=3",): epochs,
        ("-m", "trainer.epochz=3,4"): epochs,  # (a sweep's values are set job by job: checked by key)
        ("+experiment=bad",): f"{tmp_path}/conf/experiment/bad.yaml, line 2, column 1: expected ',' or ']', but got ",
        ("+experiment=nothing",): (
            "In 'config': Could not find 'experiment/nothing'; Available options in 'experiment': bad, "
            "compare_adaptive, lr_search, more, seed_tutorial\n"
        ),
    }
    for argv, message in cases.items():
        code, err = _main_error(capsys, *argv)
        assert code == 2 and err.startswith(f"optlab: error: {message}") and err.count("\n") == 1, (argv, err)
    from optlab.app.config import check_composition, known_key

    # a preset of your own composes (the keys it sets are the config's)
    mine = f"hydra.searchpath=[file://{tmp_path / 'conf'}]"
    check_composition("optlab.conf", "config", ["+experiment=more", "trainer.epochs=1", mine], False, known_key)


def test_hydras_own_settings_are_checked_before_the_run(capsys):
    code, err = _main_error(capsys, "hydra/launcher=joblib", "hydra.launcher.n_jobs=abc")
    assert code == 2 and err == (
        "optlab: error: Error merging override hydra.launcher.n_jobs=abc (Value 'abc' of type 'str' could not be "
        "converted to Integer)\n"
    )


def test_a_study_says_a_preset_of_your_own_and_a_sweep_in_one_line(tmp_path, monkeypatch, capsys):
    from optlab.app.study.app import main as study

    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf" / "study").mkdir(parents=True)
    (tmp_path / "conf" / "study" / "bad.yaml").write_text("# @package _global_\nsearch: [random\n")
    (tmp_path / "conf" / "study" / "typo.yaml").write_text("# @package _global_\nbudgett: 2\n")
    cases = {
        ("study=bad",): f"study: {tmp_path}/conf/study/bad.yaml, line 3, column 1: expected ',' or ']', but got ",
        ("seeds=1,2",): "study: seeds=1,2: a study is one comparison, its settings one value each\n",
        ("optimizers=sgd,adam",): (
            "study: optimizers=sgd,adam: a study is one comparison, its settings one value each; a list is written "
            "optimizers=[sgd,adam]\n"
        ),
    }
    for argv, message in cases.items():
        code, err = _main_error(capsys, *argv, app=study)
        assert code == 2 and err.startswith(f"optlab: error: {message}") and err.count("\n") == 1, (argv, err)
    from optlab.app.study.spec import Spec, SpecError

    with pytest.raises(SpecError, match=r"^study: unknown setting 'budgett' \(did you mean 'budget'\?\); the settings"):
        Spec.from_config({"budgett": 2})


def test_a_swept_floats_run_name_keeps_four_significant_digits():
    """An Optuna trial's rate named its run 'adam lr=0.04420424869770288 seed=0' (a newcomer's trial)."""
    from types import SimpleNamespace

    from optlab.app.run import run_name_for

    sweep = {"swept": ["optimizer.learning_rate", "trainer.batch_size"]}
    optimizer, problem = SimpleNamespace(registry_name="adam"), SimpleNamespace(registry_name="mlp_digits")
    for given, shown in (("0.04420424869770288", "0.0442"), ("1e-05", "1e-05"), ("0.05", "0.05"), ("3", "3")):
        sweep["sweep_overrides"] = f"optimizer.learning_rate={given} trainer.batch_size=32"
        assert run_name_for({"seed": 0}, optimizer, problem, sweep) == f"adam lr={shown} batch_size=32 seed=0"
