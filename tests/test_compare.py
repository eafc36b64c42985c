"""Run comparison's reductions (no MLflow needed): seed groups with missing or diverged values."""

from __future__ import annotations

import math
import statistics

import pytest

from optlab.app.compare import format_table, seed_summary


def test_a_group_without_the_metric_has_no_mean_instead_of_crashing():
    # `--metric grad_norm` on runs that never logged it: every final is NaN
    with pytest.raises((AttributeError, TypeError, ValueError)):
        statistics.stdev([math.nan, math.nan])  # what compare() used to call (the 'numerator' crash on some versions)
    summary = seed_summary([math.nan, math.nan])
    assert summary["n"] == 0 and summary["runs"] == 2
    assert math.isnan(summary["mean"]) and math.isnan(summary["std"])


def test_seed_summary_over_the_finite_values_only():
    summary = seed_summary([1.0, math.nan, 3.0, math.inf])
    # by hand: mean (1 + 3) / 2 = 2; sample variance ((1-2)^2 + (3-2)^2) / (2 - 1) = 2
    assert summary == {"n": 2, "runs": 4, "mean": 2.0, "std": pytest.approx(math.sqrt(2))}
    one = seed_summary([5.0, math.nan])
    assert one["n"] == 1 and one["mean"] == 5.0 and math.isnan(one["std"])


def test_format_table_reports_groups_without_values():
    row = {"run": "r1", "optimizer": "adam", "params": {}, "final": math.nan, "best": math.nan, "steps": 3,
           "seconds": 0.5, "status": "FINISHED"}  # fmt: skip
    result = {
        "experiment": "e",
        "sweep": "s",
        "metric": "grad_norm",
        "columns": [],
        "rows": [row, {**row, "run": "r2"}],
        "seeds": [
            {"config": {"optimizer": "adam"}, **seed_summary([math.nan, math.nan])},
            {"config": {"optimizer": "sgd"}, **seed_summary([1.0, 3.0, math.nan])},
        ],
        "output": "cmp.png",
    }
    text = format_table(result)
    assert "optimizer=adam: no finite value over 2 seeds" in text
    assert "optimizer=sgd: 2 ± 1.4 over 2 seeds (1 of 3 without a finite value)" in text


def test_seeds_of_one_configuration_are_one_line_with_a_band():
    from optlab.app.compare import band

    steps, mean, low, high = band([([1, 2], [1.0, 3.0]), ([1, 2, 3], [3.0, 5.0, 7.0]), ([1], [float("nan")])])
    assert steps == [1, 2, 3]
    assert list(mean) == [2.0, 4.0, 7.0] and list(low) == [1.0, 3.0, 7.0] and list(high) == [3.0, 5.0, 7.0]


def _two_runs(tmp_path) -> str:
    """A store with two finished runs of experiment ``optlab`` (their loss at steps 1, 2); its URI."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("optlab")
    for optimizer, losses in (("sgd", (3.0, 2.0)), ("adam", (3.0, 1.0))):
        run_id = client.create_run(experiment, tags={"optimizer": optimizer}).info.run_id
        for step, value in enumerate(losses, start=1):
            client.log_metric(run_id, "loss", value, step=step)
        client.set_terminated(run_id)
    return uri


def test_the_curves_output_is_a_png_file_written_whole(tmp_path, capsys, monkeypatch):
    """--output of a folder printed 'curves: udir' but wrote udir.png; notes.txt was a traceback;
    the PNG was written in place (half a file if the write failed)."""
    import errno
    import os

    from optlab.app import compare

    uri = _two_runs(tmp_path)
    capsys.readouterr()  # (MLflow's lines as it made the store)
    (tmp_path / "udir").mkdir()
    for output, message in (
        ("udir", "is a folder; give a file name, e.g. --output"),
        ("notes.txt", "the curves are a PNG; give a name ending in .png"),
    ):
        assert compare.main(["--sweep", "all", "--uri", uri, "--output", str(tmp_path / output)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("optlab.compare: error: --output") and message in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "udir"]
    assert compare.main(["--sweep", "all", "--uri", uri, "--output", str(tmp_path / "curves")]) == 0
    assert f"curves: {tmp_path / 'curves.png'}" in capsys.readouterr().out
    picture = tmp_path / "curves.png"
    assert picture.read_bytes().startswith(b"\x89PNG")
    picture.write_bytes(b"a picture of mine")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        compare.compare("optlab", "all", "loss", uri, str(picture))
    assert picture.read_bytes() == b"a picture of mine"  # left as it was, no temporary beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "mlflow.db", "udir"]


def test_all_runs_leave_out_studies_runs_which_have_their_own_view(tmp_path):
    """``--sweep all`` listed every study's tuning and final runs (hundreds) under optimizer '?' and
    grouped them into identical 'optimizer=?' lines; they are compared with ``--study``."""
    from mlflow.tracking import MlflowClient

    from optlab.app.compare import compare

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    mixed, studies = client.create_experiment("optlab"), client.create_experiment("studies")

    def run(experiment, tags, losses=(3.0, 2.0)):
        run_id = client.create_run(experiment, tags=tags).info.run_id
        for step, value in enumerate(losses, start=1):
            client.log_metric(run_id, "loss", value, step=step)
        client.set_terminated(run_id)
        return run_id

    plain = run(mixed, {"optimizer": "sgd"})
    for experiment in (mixed, studies):
        parent = run(experiment, {"optlab.kind": "study", "optlab.study": "quick-0633fd5e"}, ())
        run(experiment, {"optlab.study": "quick-0633fd5e", "optlab.optimizer": "adam", "mlflow.parentRunId": parent})
    result = compare("optlab", "all", "loss", uri, str(tmp_path / "compare.png"))
    assert [row["run_id"] for row in result["rows"]] == [plain] and result["rows"][0]["optimizer"] == "sgd"
    with pytest.raises(
        LookupError, match=r"holds only studies' runs: compare them with python -m optlab.compare --study"
    ):
        compare("studies", "all", "loss", uri, str(tmp_path / "compare.png"))


def test_a_stopped_attempt_run_again_is_the_same_seed_not_another():
    """A sweep stopped by Ctrl-C and repeated in its folder has the KILLED attempt and the finished
    run of the same seed: compare counted them as two seeds (a newcomer's trial)."""
    from optlab.app.compare import one_per_seed

    def row(seed, status, start, final):
        return {"seed": seed, "status": status, "start": start, "final": final}

    killed, rerun, other = row("0", "KILLED", 1, 0.5), row("0", "FINISHED", 2, 0.1), row("1", "FINISHED", 3, 0.3)
    assert one_per_seed([killed, rerun, other]) == [rerun, other]
    assert one_per_seed([rerun, killed]) == [rerun]  # finished beats a later attempt that was stopped
    later = row("0", "KILLED", 5, 0.7)
    assert one_per_seed([killed, later]) == [later]  # none finished: the latest
    unknown = [row("?", "FINISHED", 1, 0.1), row("?", "FINISHED", 2, 0.2)]
    assert one_per_seed(unknown) == unknown  # runs without a recorded seed are not merged
    result = {
        "experiment": "e",
        "sweep": "s",
        "metric": "loss",
        "columns": [],
        "rows": [],
        "seeds": [{"config": {"optimizer": "adam"}, **seed_summary([0.1, 0.3]), "repeats": 1}],
        "output": "cmp.png",
    }
    assert "optimizer=adam: 0.2 ± 0.14 over 2 seeds (and 1 earlier attempt of the same seeds, left out)" in (
        format_table(result)
    )


def test_compare_counts_each_seed_once(tmp_path):
    from mlflow.tracking import MlflowClient

    from optlab.app.compare import compare

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("optlab")
    for seed, status, loss in (("0", "KILLED", 9.0), ("0", "FINISHED", 1.0), ("1", "FINISHED", 3.0)):
        run_id = client.create_run(experiment, tags={"optimizer": "adam"}).info.run_id
        client.log_param(run_id, "seed", seed)
        client.log_param(run_id, "optimizer.learning_rate", "0.001")
        client.log_metric(run_id, "loss", loss, step=1)
        client.set_terminated(run_id, status=status)
    result = compare(sweep="all", uri=uri, output=str(tmp_path / "cmp.png"))
    (group,) = result["seeds"]
    assert (group["n"], group["mean"], group["repeats"]) == (2, 2.0, 1)  # (1 + 3) / 2, the KILLED 9 left out
    assert len(result["rows"]) == 3  # the table still lists every run, with its status


def test_a_run_that_never_logged_the_metric_is_not_shown_as_diverged(tmp_path):
    """compare printed 'nan' both for a run whose metric became NaN (it diverged) and for one that
    never logged the metric (a newcomer's trial): the table could not tell them apart."""
    from mlflow.tracking import MlflowClient

    from optlab.app.compare import compare

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("optlab")
    for name, seed, values in (("fine", "0", [2.0, 1.0]), ("diverged", "1", [2.0, math.nan]), ("silent", "2", [])):
        run_id = client.create_run(experiment, run_name=name, tags={"optimizer": "adam"}).info.run_id
        client.log_param(run_id, "seed", seed)
        client.log_metric(run_id, "other", 1.0, step=1)
        for step, value in enumerate(values, start=1):
            client.log_metric(run_id, "grad_norm", value, step=step)
        client.set_terminated(run_id)
    result = compare(sweep="all", metric="grad_norm", uri=uri, output=str(tmp_path / "cmp.png"))
    text = format_table(result)
    rows = {line.split()[0]: line for line in text.splitlines()[3:6]}
    assert text.splitlines()[1].split()[:5] == ["run", "optimizer", "seed", "final", "grad_norm"]
    assert rows["fine"].split()[3:5] == ["1", "1"]  # final, best
    assert rows["diverged"].split()[3:5] == ["nan", "2"]  # its last value is NaN; its best was 2
    assert "not logged" in rows["silent"] and "nan" not in rows["silent"]
    assert "optimizer=adam: 1 from 1 seed (2 of 3 without a finite value, 1 of them did not log it)" in text


def test_a_group_none_of_whose_seeds_logged_the_metric_says_so(tmp_path):
    """'no finite value over 2 seeds' was said alike of seeds that never logged the metric and of
    seeds that diverged (a newcomer's trial); and an unknown metric's error listed the first run's
    metrics only."""
    from mlflow.tracking import MlflowClient

    from optlab.app.compare import compare

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("optlab")
    for problem, seed, metrics in (("a", "0", {"loss": 1.0}), ("a", "1", {"loss": 2.0}), ("b", "0", {"val_loss": 3.0}),
                                   ("b", "1", {"val_loss": math.nan})):  # fmt: skip
        run_id = client.create_run(experiment, tags={"optimizer": "adam"}).info.run_id
        client.log_param(run_id, "seed", seed)
        client.log_param(run_id, "problem.name", problem)
        for key, value in metrics.items():
            client.log_metric(run_id, key, value, step=1)
        client.set_terminated(run_id)
    text = format_table(compare(sweep="all", metric="val_loss", uri=uri, output=str(tmp_path / "cmp.png")))
    assert "differ" not in text.splitlines()[0]  # chosen: nothing to say
    assert "problem.name=a: not logged by any of its 2 seeds" in text
    assert "problem.name=b: 3 from 1 seed (1 of 2 without a finite value)" in text
    with pytest.raises(LookupError, match=r"logged metrics: loss, val_loss$"):
        compare(sweep="all", metric="bogus", uri=uri, output=str(tmp_path / "cmp.png"))
    # runs of no step (trainer.epochs=0): "logged metrics: " and nothing after it
    empty = tmp_path / "empty.db"
    uri_empty = f"sqlite:///{empty}"
    other = MlflowClient(uri_empty)
    other.set_terminated(other.create_run(other.create_experiment("optlab")).info.run_id)
    with pytest.raises(LookupError, match=r"^no run logged 'loss': the 1 run found logged no metric at all$"):
        compare(sweep="all", metric="loss", uri=uri_empty, output=str(tmp_path / "cmp.png"))


def test_the_latest_study_is_not_called_a_study_named_latest(tmp_path):
    # "(the latest of 5 studies named 'latest' (...))": a newcomer's trial
    from mlflow.tracking import MlflowClient

    from optlab.app.compare import compare_study

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("optlab")
    for started, study in enumerate(("quick-0000aaaa", "quick-1111bbbb", "tiny-2222cccc"), start=1):
        kind = {"optlab.kind": "study", "optlab.study": study}
        parent = client.create_run(experiment, start_time=started * 1000, tags=kind).info.run_id
        arm = {"optlab.arm": "final", "optlab.problem": "beale", "optlab.optimizer": "sgd"}
        client.create_run(experiment, tags={"mlflow.parentRunId": parent, **arm})
    output = str(tmp_path / "cmp.png")
    latest = compare_study(study="latest", uri=uri, output=output)
    assert latest["study"] == "tiny-2222cccc"
    assert latest["note"] == "the latest of 3 studies (quick-0000aaaa, quick-1111bbbb, tiny-2222cccc)"
    named = compare_study(study="quick", uri=uri, output=output)
    assert named["note"] == "the latest of 2 studies named 'quick' (quick-0000aaaa, quick-1111bbbb)"


def test_a_studys_comparison_leaves_a_sweeps_png_alone(tmp_path, monkeypatch, capsys):
    """``compare --study`` wrote ./compare.png over a sweep's comparison (a newcomer's trial): its own
    is compare-<study id>.png unless --output says otherwise."""
    from mlflow.tracking import MlflowClient

    from optlab.app.compare import main

    monkeypatch.chdir(tmp_path)
    client = MlflowClient("sqlite:///mlflow.db")
    experiment = client.create_experiment("optlab")
    parent = client.create_run(experiment, tags={"optlab.kind": "study", "optlab.study": "tiny-2222cccc"}).info.run_id
    arm = {"optlab.arm": "final", "optlab.problem": "beale", "optlab.optimizer": "sgd"}
    client.create_run(experiment, tags={"mlflow.parentRunId": parent, **arm})
    (tmp_path / "compare.png").write_bytes(b"a sweep's comparison")
    assert main(["--study", "latest"]) == 0
    assert "curves: compare-tiny-2222cccc.png" in capsys.readouterr().out
    assert (tmp_path / "compare.png").read_bytes() == b"a sweep's comparison"
    assert (tmp_path / "compare-tiny-2222cccc.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["--study", "latest", "--output", "mine"]) == 0 and (tmp_path / "mine.png").exists()


def test_runs_of_different_configured_metrics_say_which_one_sorts_them(tmp_path):
    """A sweep over rosenbrock (loss) and logistic_regression (val_loss) was sorted by the first
    run's metric without a word, the others' rows 'not logged' (a newcomer's trial)."""
    from mlflow.tracking import MlflowClient

    from optlab.app.compare import compare

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("optlab")
    for metric in ("loss", "val_loss"):
        run_id = client.create_run(experiment, tags={"optimizer": "adam", "metric": metric}).info.run_id
        client.log_metric(run_id, metric, 1.0, step=1)
        client.set_terminated(run_id)
    result = compare(sweep="all", uri=uri, output=str(tmp_path / "cmp.png"))
    first = format_table(result).splitlines()[0]
    note = "(the runs' metrics differ (loss, val_loss); choose one with --metric)"
    assert first.endswith(f"sorted by {result['metric']} {note}")


def test_a_reader_that_goes_away_is_no_traceback(tmp_path):
    # `python -m optlab.compare ... | head -6` ended with a BrokenPipeError traceback (a newcomer's trial)
    import os
    import subprocess
    import sys

    uri = _two_runs(tmp_path)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the table is printed
    try:
        done = subprocess.run(
            [sys.executable, "-m", "optlab.compare", "--uri", uri, "--sweep", "all"],
            cwd=tmp_path, stdout=write, stderr=subprocess.PIPE, text=True, timeout=300,
        )  # fmt: skip
    finally:
        os.close(write)
    assert done.returncode == 1 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["optlab.problems"],
        ["optlab.bench", "--only", "tiny", "--optimizers", "sgd"],
        # `python -m optlab --help | head`, `optlab.study --help`, `optlab.plugins`: tracebacks, found this session
        ["optlab", "--help"],
        ["optlab.study", "--help"],
        ["optlab.plugins"],
    ],
)
def test_the_commands_into_a_reader_that_goes_away_are_no_traceback(tmp_path, args):
    # `python -m optlab.bench | head -3`: the benchmark prints for minutes after head has gone
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", *args], cwd=tmp_path, stdout=write, stderr=subprocess.PIPE, text=True, timeout=300
        )
    finally:
        os.close(write)
    assert done.returncode == 1 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_a_store_that_is_not_one_is_one_line(tmp_path):
    # a fault probe: a store damaged after its runs were recorded gave compare a page of SQLAlchemy's traceback
    import subprocess
    import sys

    (tmp_path / "mlflow.db").write_bytes(b"garbage, not a database" * 100)
    done = subprocess.run(
        [sys.executable, "-m", "optlab.compare"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr
    assert "is not an SQLite database" in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1


def test_runs_that_all_diverged_are_compared_as_nan(tmp_path):
    """A sweep whose every run diverged (SGD's default rate on Rosenbrock) was refused with 'no run
    logged 'loss'; logged metrics: ..., train/loss' (a newcomer's trial): their NaN is what they logged."""
    from mlflow.tracking import MlflowClient

    from optlab.app.compare import compare

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("optlab")
    for seed, values in (("0", [5.0, math.inf, math.nan]), ("1", [4.0, math.nan])):
        run_id = client.create_run(experiment, run_name=f"sgd seed={seed}", tags={"optimizer": "sgd"}).info.run_id
        client.log_param(run_id, "seed", seed)
        for step, value in enumerate(values, start=1):
            client.log_metric(run_id, "train/loss", value, step=step)
        client.set_terminated(run_id)
    result = compare(sweep="all", metric="loss", uri=uri, output=str(tmp_path / "cmp.png"))
    rows = {row["run"]: row for row in result["rows"]}
    assert set(rows) == {"sgd seed=0", "sgd seed=1"}
    assert all(math.isnan(row["final"]) and row["logged"] for row in rows.values())
    assert (rows["sgd seed=0"]["best"], rows["sgd seed=1"]["best"]) == (5.0, 4.0)  # the finite values' best
    assert "optimizer=sgd: no finite value over 2 seeds" in format_table(result)
    assert (tmp_path / "cmp.png").stat().st_size > 0
