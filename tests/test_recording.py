"""Runs recorded in the background (``tracking.detach=true``): the command returns when training
ends, a process of its own records the run; what it records, how a comparison waits for it, and
what becomes of a recording that fails or is cut short."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cli_helpers import client, optlab, runs

from optlab.app import deliver as delivering
from optlab.app import recording
from optlab.app.tracking import read_kept_header

RUN = ["problem=rosenbrock", "trainer.epochs=25", "trainer.progress_bar=false"]
DETACH = "tracking.detach=true"


@pytest.fixture(autouse=True)
def state(tmp_path_factory, monkeypatch):
    """optlab's state folder (where records handed over are listed) in a new folder of the test's."""
    folder = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("XDG_STATE_HOME", str(folder))
    return folder / "optlab" / "recording"


def _settled(cwd: Path, wait: float = 120) -> None:
    busy, _ = recording.settle(f"sqlite:///{cwd / 'mlflow.db'}", wait)
    assert not busy, "a recording process did not end"


def _points(c, run) -> dict:
    """Every stored point of the run, by key, as (step, value) sorted."""
    return {k: sorted((m.step, m.value) for m in c.get_metric_history(run.info.run_id, k)) for k in run.data.metrics}


def test_a_detached_run_records_what_a_run_recorded_as_it_ends_records(tmp_path, state):
    # the same run twice, the second detached: the store must hold the same run, point for point
    attached = optlab(tmp_path, *RUN)
    assert attached.returncode == 0, attached.stderr
    detached = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "optlab", *RUN, DETACH],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert detached.returncode == 0, detached.stderr
    assert "recording in MLflow in the background" in detached.stdout
    # the command itself never imported MLflow (its record went to a process of its own)
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in detached.stderr.splitlines() if line.startswith("import time:")
    }
    assert "mlflow" not in imported and "numpy" in imported
    _settled(tmp_path)
    c, found = runs(tmp_path)
    first, second = sorted(found, key=lambda r: r.info.start_time)
    assert first.info.status == second.info.status == "FINISHED"
    assert second.data.params == first.data.params and len(first.data.params) > 10
    assert second.data.tags.pop("optlab.record").isalnum() and "optlab.record" not in first.data.tags
    assert second.data.tags == first.data.tags
    a, b = _points(c, first), _points(c, second)
    assert a.keys() == b.keys() and "train/loss" in a
    timing = {"summary/train_seconds"}  # the run's own clock: differs between any two runs
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    artifacts = {r.info.run_id: sorted(x.path for x in c.list_artifacts(r.info.run_id)) for r in (first, second)}
    assert artifacts[first.info.run_id] == artifacts[second.info.run_id] == ["config.yaml", "curves.png", "path.png"]
    png = Path(c.download_artifacts(second.info.run_id, "path.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = c.download_artifacts(first.info.run_id, "config.yaml", str(tmp_path / "a"))
    again = c.download_artifacts(second.info.run_id, "config.yaml", str(tmp_path / "b"))
    assert Path(config).read_text() == Path(again).read_text().replace("detach: true", "detach: auto")
    assert [d.dataset.digest for d in c.get_run(first.info.run_id).inputs.dataset_inputs] == [
        d.dataset.digest for d in c.get_run(second.info.run_id).inputs.dataset_inputs
    ]
    assert second.info.start_time <= second.info.end_time
    # once recorded, nothing of the record is left: not the file, its plots, its log or its listing
    assert not list((tmp_path / ".optlab").rglob("undelivered-*")) and not list(state.glob("*"))


def test_a_comparison_waits_for_runs_being_recorded(tmp_path):
    # the first runs in a new folder: the store itself is made by the recording processes
    for optimizer in ("adam", "sgd"):
        result = optlab(tmp_path, *RUN, DETACH, f"optimizer={optimizer}")
        assert result.returncode == 0, result.stderr
    compared = optlab(tmp_path, module="optlab.compare")
    assert compared.returncode == 0, compared.stderr
    assert "2 runs" in compared.stdout and "adam rosenbrock" in compared.stdout and "sgd rosenbrock" in compared.stdout


def test_a_sweep_is_not_detached(tmp_path):
    result = optlab(tmp_path, "-m", *RUN, "optimizer=adam,sgd", DETACH)
    assert result.returncode == 2, result.stderr
    assert "tracking.detach" in result.stderr and "single run" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_a_store_refused_before_training_leaves_nothing(tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"not a database")
    result = optlab(tmp_path, *RUN, DETACH)
    assert result.returncode == 2, result.stderr
    assert "is not an SQLite database" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "mlflow.db").read_bytes() == b"not a database"
    assert not list(tmp_path.rglob("undelivered-*"))


def test_a_recording_that_fails_is_kept_said_and_delivered_later(tmp_path, state):
    c = client(tmp_path)
    gone = c.create_experiment("gone")
    c.delete_experiment(gone)
    result = optlab(tmp_path, *RUN, DETACH, "tracking.experiment=gone")
    assert result.returncode == 0, result.stderr
    busy, failed = recording.settle(f"sqlite:///{tmp_path / 'mlflow.db'}", 120)
    assert not busy and len(failed) == 1
    (record,) = failed
    assert record.path.is_file() and "experiment 'gone' is deleted" in recording.reason(record)
    assert "niceness 10)" in record.log.read_text()  # (below the next run's training)
    # every later command on the store says so, naming the file, until it is delivered
    later = optlab(tmp_path, *RUN, "trainer.epochs=2")
    assert later.returncode == 0, later.stderr
    assert "1 run could not be recorded in the background" in later.stderr and str(record.path) in later.stderr
    compared = optlab(tmp_path, module="optlab.compare")
    assert str(record.path) in compared.stderr
    c.restore_experiment(gone)
    delivered = optlab(tmp_path, str(record.path), module="optlab.deliver")
    assert delivered.returncode == 0, delivered.stderr
    (run,) = c.search_runs([gone])
    assert run.info.status == "FINISHED" and len(run.data.params) > 10
    assert sorted(x.path for x in c.list_artifacts(run.info.run_id)) == ["config.yaml", "curves.png", "path.png"]
    assert [m.step for m in c.get_metric_history(run.info.run_id, "train/loss")] == list(range(1, 26))
    assert not record.path.exists() and not record.path.with_suffix("").exists() and not record.log.exists()
    quiet = optlab(tmp_path, *RUN, "trainer.epochs=2")
    assert "could not be recorded" not in quiet.stderr and not list(state.glob("*"))


def test_a_delivery_cut_after_opening_the_run_continues_that_run(tmp_path, monkeypatch):
    # the recording process dies after the store opened the run, before the file said so:
    # delivering again must find that run by its record tag, not open a second one
    result = optlab(tmp_path, *RUN, DETACH)
    assert result.returncode == 0, result.stderr
    _settled(tmp_path)
    c, (recorded,) = runs(tmp_path)
    reference = _points(c, recorded)
    (path,) = _record_kept_by_hand(tmp_path)
    header = read_kept_header(path)
    calls = []

    def cut(client, run_id, metrics):
        calls.append(run_id)
        raise ConnectionError("the recording process died here")

    monkeypatch.setattr(delivering, "_log", cut)
    with pytest.raises(ConnectionError):
        delivering.deliver(path)
    assert read_kept_header(path) == header  # (a delivery never writes the file)
    monkeypatch.undo()
    delivering.deliver(path)
    c, found = runs(tmp_path)
    mine = [r for r in found if r.data.tags.get("optlab.record") == header["record"]]
    assert len(found) == 2 and len(mine) == 1 and calls == [mine[0].info.run_id]
    (run,) = mine
    assert run.info.status == "FINISHED" and len(run.data.params) > 10
    assert sorted(x.path for x in c.list_artifacts(run.info.run_id)) == ["config.yaml", "curves.png", "path.png"]
    points = _points(c, run)
    assert points.keys() == reference.keys()
    assert all(len(points[k]) == len(reference[k]) for k in points)  # every point once
    assert not path.exists()


def test_a_record_whose_folder_is_deleted_while_it_is_recorded_is_recorded_whole(tmp_path, monkeypatch):
    # a fault probe: the run's folder deleted while its recording process wrote the run (2 of 8
    # trials) left a RUNNING run with no points in the store
    import shutil

    (path,) = _record_kept_by_hand(tmp_path)
    log = delivering._log

    def deleting(client, run_id, metrics):  # the folder goes as the first points are written
        if path.parent.exists():
            shutil.rmtree(path.parent)
        log(client, run_id, metrics)

    monkeypatch.setattr(delivering, "_log", deleting)
    delivering.deliver(path, recorder=True)
    assert not path.parent.exists()
    c, (run,) = runs(tmp_path)
    assert run.info.status == "FINISHED" and len(run.data.params) > 10
    assert [m.step for m in c.get_metric_history(run.info.run_id, "train/loss")] == list(range(1, 26))
    assert sorted(x.path for x in c.list_artifacts(run.info.run_id)) == ["config.yaml", "curves.png", "path.png"]


def test_a_record_replaced_while_it_is_delivered_is_not_removed(tmp_path, monkeypatch):
    # a delivery that opened a detached run's record as the run's end replaced it removed, at its
    # end, whatever was at the path: the new record, which nothing else may have delivered yet
    import os

    (path,) = _record_kept_by_hand(tmp_path)
    newer = path.read_bytes()
    log = delivering._log

    def replacing(client, run_id, metrics):
        if not (tmp_path / "new").exists():
            (tmp_path / "new").write_bytes(newer)
            os.replace(tmp_path / "new", path)  # (atomically, as a run's end rewrites its record)
        log(client, run_id, metrics)

    monkeypatch.setattr(delivering, "_log", replacing)
    delivering.deliver(path, recorder=True)
    assert path.read_bytes() == newer  # left for its own delivery
    monkeypatch.undo()
    again = delivering.deliver(path)
    assert again.written == 0 and again.skipped > 0 and not path.exists()
    assert len(runs(tmp_path)[1]) == 1


def test_a_file_delivered_from_a_read_only_folder_is_delivered_and_said_to_stay(tmp_path, monkeypatch, capsys):
    # a fault probe (a read-only bind mount over the run's folder): every metric was written, then
    # the file could not be removed and deliver said "the store failed (...); try again" (it would, forever)
    import errno

    (path,) = _record_kept_by_hand(tmp_path)
    unlink = Path.unlink

    def read_only(self, missing_ok=False):
        if self == path:
            raise OSError(errno.EROFS, "Read-only file system")
        return unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", read_only)
    assert delivering.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert out.endswith("; it could not be removed (Read-only file system): remove it by hand\n"), out
    assert path.exists() and runs(tmp_path)[1][0].info.status == "FINISHED"


def test_a_file_being_delivered_is_not_delivered_again_at_once(tmp_path):
    # a fault probe: of two `optlab.deliver FILE` at once, the second said "the store failed (No
    # such file)" once the first had removed the file
    import fcntl

    (path,) = _record_kept_by_hand(tmp_path)
    before = path.read_bytes()
    with open(path) as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a delivery of it holds it
        result = optlab(tmp_path, str(path), module="optlab.deliver")
    assert result.returncode == 1, result.stderr
    assert f"optlab.deliver: error: {path} is being delivered by another process right now; wait for it" in (
        result.stderr
    )
    assert path.read_bytes() == before and not (tmp_path / "mlflow.db").exists()


def test_a_detached_runs_points_go_to_its_record_as_they_come_not_into_memory(tmp_path, monkeypatch):
    # explicit tracking.detach=true with log_every=1 held every point in memory to the end (4-8 GB
    # for millions of steps, a fault probe): past SPILL_POINTS they are appended to the record
    import fcntl

    import optlab
    from optlab.app import tracking
    from optlab.callbacks import Callback
    from optlab.trainer import Trainer

    monkeypatch.setattr(tracking, "SPILL_POINTS", 50)
    monkeypatch.setattr(recording, "spawn", lambda path, uri: 0)  # (the record stays, to be read)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = tracking.MlflowTracker(uri, "tests", {"a": 1}, {}, "spilled", 1, output_dir=tmp_path, detach=True)
    seen = {}

    class Look(Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 299:
                (path,) = tmp_path.glob("undelivered-*.jsonl")
                seen["header"] = read_kept_header(path)
                seen["lines"] = len(path.read_text().splitlines()) - 1
                seen["held"] = len(tracker._pending)
                with open(path) as file, pytest.raises(BlockingIOError):  # locked by the run
                    fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)

    tracker.start()
    trainer = Trainer(optlab.problems.get("quadratic"), optlab.optimizers.SGD(), [tracker, Look()], epochs=500)
    trainer.fit()
    tracker.close("FINISHED")
    assert seen["header"]["end"] is None and seen["header"]["record"] == tracker.record
    assert seen["lines"] >= 250 and seen["held"] < 50  # written as they came, the rest held: fewer than 50
    header, metrics = tracking.read_kept(tracker.kept_path)
    assert header["end"]["status"] == "FINISHED" and header["start"]["params"] == {"a": "1"}
    assert len(metrics) == tracker.kept_count == tracker.metrics_logged
    assert [m[3] for m in metrics if m[0] == "train/loss"] == list(range(1, 501))  # every step, once, in order
    with open(tracker.kept_path) as file:  # (unlocked: the recording process takes over)
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    delivered = delivering.deliver(tracker.kept_path)
    assert delivered.written == len(metrics)
    c = client(tmp_path)
    (run,) = c.search_runs([c.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "FINISHED" and len(c.get_metric_history(run.info.run_id, "train/loss")) == 500


@pytest.mark.parametrize("whole", [True, False])
def test_a_run_killed_as_its_end_rewrote_its_record_is_delivered_from_what_it_left(tmp_path, monkeypatch, whole):
    # a fault probe, 6 of 6 SIGKILLs as a detached run's end rewrote its record: the run, trained to
    # its end, was recorded KILLED with the points written as it went, and the whole new record
    # stayed beside it as a temporary file nothing removes
    import optlab
    from optlab import files
    from optlab.app import tracking
    from optlab.trainer import Trainer

    monkeypatch.setattr(tracking, "SPILL_POINTS", 50)
    monkeypatch.setattr(recording, "spawn", lambda path, uri: 0)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = tracking.MlflowTracker(uri, "tests", {"a": 1}, {}, "cut", 1, output_dir=tmp_path, detach=True)
    tracker.start()
    Trainer(optlab.problems.get("quadratic"), optlab.optimizers.SGD(), [tracker], epochs=500).fit()
    (path,) = tmp_path.glob("undelivered-*.jsonl")
    as_it_went = path.read_bytes()
    tracker.close("FINISHED")
    # what the kill left: the new record in a temporary file of a writer now dead, the old in place
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    temp = Path(files._temp_prefix(str(path)) + f"{files._host()}-{int(dead.stdout)}-0badf00d")
    new = path.read_bytes()
    temp.write_bytes(new if whole else new[: len(new) - 100])  # (or cut short as it was written)
    path.write_bytes(as_it_went)
    delivering.deliver(path)
    c = client(tmp_path)
    (run,) = c.search_runs([c.get_experiment_by_name("tests").experiment_id])
    steps = [m.step for m in c.get_metric_history(run.info.run_id, "train/loss")]
    if whole:  # the new record, complete: the run as it ended, every point
        assert run.info.status == "FINISHED" and steps == list(range(1, 501))
    else:  # not complete: the record it wrote as it went, KILLED
        assert run.info.status == "KILLED" and run.data.tags["error"] == delivering.UNENDED
        assert 250 <= len(steps) < 500 and steps == list(range(1, len(steps) + 1))
    assert not path.exists() and not temp.exists()  # (nothing of it left behind)


def test_a_detached_run_whose_record_cannot_be_completed_says_where_its_points_are(tmp_path, monkeypatch):
    # the disk full at the run's end: the record it wrote as it went stays, and the run says so
    import errno

    import optlab
    from optlab.app import tracking
    from optlab.trainer import Trainer

    monkeypatch.setattr(tracking, "SPILL_POINTS", 50)
    monkeypatch.setattr(recording, "spawn", lambda path, uri: pytest.fail("nothing to record"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = tracking.MlflowTracker(uri, "tests", {"a": 1}, {}, "full", 1, output_dir=tmp_path, detach=True)
    tracker.start()
    Trainer(optlab.problems.get("quadratic"), optlab.optimizers.SGD(), [tracker], epochs=300).fit()

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tracking, "_write_atomic", full)
    tracker.close("FINISHED")
    (path,) = tmp_path.glob("undelivered-*.jsonl")
    assert tracker.undelivered_message() == (
        f"its record could not be completed ({path}: No space left on device); the points it had written so far "
        f"are in {path}: python -m optlab.deliver {path} records the run in {uri} with them, marked KILLED"
    )
    header, metrics = tracking.read_kept(path)
    assert header["end"] is None and len(metrics) >= 250
    monkeypatch.undo()
    delivering.deliver(path)
    c = client(tmp_path)
    (run,) = c.search_runs([c.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["error"] == delivering.UNENDED
    assert len(c.get_metric_history(run.info.run_id, "train/loss")) == len([m for m in metrics if m[0] == "train/loss"])


def test_a_detached_runs_points_go_to_its_record_as_often_as_an_attached_runs_go_to_the_store(tmp_path, monkeypatch):
    # a re-probe: appended only once 20,000 points waited, a slow run killed lost all it had logged
    # (hours of points, at a step a second); now also every FLUSH_SECONDS, as an attached run's writer
    import optlab
    from optlab.app import tracking
    from optlab.callbacks import Callback
    from optlab.trainer import Trainer

    monkeypatch.setattr(tracking, "FLUSH_SECONDS", 0.0)  # (every step: the cadence without the wait)
    monkeypatch.setattr(recording, "spawn", lambda path, uri: 0)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = tracking.MlflowTracker(uri, "tests", {"a": 1}, {}, "slow", 1, output_dir=tmp_path, detach=True)
    seen = {}

    class Look(Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 9:
                (path,) = tmp_path.glob("undelivered-*.jsonl")
                _, metrics = tracking.read_kept(path)
                seen["steps"] = [m[3] for m in metrics if m[0] == "train/loss"]

    tracker.start()
    Trainer(optlab.problems.get("quadratic"), optlab.optimizers.SGD(), [tracker, Look()], epochs=20).fit()
    tracker.close("FINISHED")
    assert seen["steps"] == list(range(1, 11))  # all ten epochs' losses in the record, as they came
    _, metrics = tracking.read_kept(tracker.kept_path)
    assert [m[3] for m in metrics if m[0] == "train/loss"] == list(range(1, 21))


def test_a_detached_run_killed_as_it_trains_leaves_its_points_for_deliver(tmp_path, spawn):
    # SIGKILL (the machine's out-of-memory killer, a cluster's hard limit): the points written so far are
    # kept in a record optlab.deliver takes, the run recorded KILLED, and nothing delivers it meanwhile
    code = (
        "import sys, optlab.app.tracking as t\n"
        "t.SPILL_POINTS = 50\n"
        "from optlab.app.entry import main\n"
        "sys.argv = ['optlab', *sys.argv[1:]]\n"
        "main()\n"
    )
    args = ["problem=quadratic", "trainer.epochs=100000000", "tracking.log_every=1", "trainer.progress_bar=false"]
    proc = spawn(
        [sys.executable, "-c", code, *args, DETACH],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    found = []
    while time.monotonic() < deadline and not found:
        found = [p for p in tmp_path.rglob("undelivered-*.jsonl") if len(p.read_bytes().splitlines()) > 200]
        time.sleep(0.05)
    assert found, proc.stderr.read() if proc.poll() is not None else "no record written"
    (path,) = found
    busy = optlab(tmp_path, str(path), module="optlab.deliver")
    assert busy.returncode == 1 and "is being written by its run, which has not ended; wait for it" in busy.stderr
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert [r.path for r in recording.records(uri)] == [path] and recording.failed(uri) == []  # (listed, in hand)
    proc.kill()
    proc.wait(60)
    # killed: later commands on the store name the record (a probe: nothing told the user it existed)
    (record,) = recording.failed(uri)
    assert record.path == path and recording.reason(record).startswith("its run ended before its record was complete")
    later = optlab(tmp_path, "problem=quadratic", "trainer.epochs=2", "trainer.progress_bar=false")
    assert "1 run could not be recorded in the background" in later.stderr and str(path) in later.stderr
    with open(path, "a") as record:  # killed in the middle of a write: an unfinished last line
        record.write('["train/loss", 0.12')
    delivered = optlab(tmp_path, str(path), module="optlab.deliver")
    assert delivered.returncode == 0, delivered.stderr
    c, found_runs = runs(tmp_path)
    (run,) = [r for r in found_runs if r.data.tags.get("optlab.record")]
    assert run.info.status == "KILLED" and run.data.tags["error"] == delivering.UNENDED
    assert run.data.params["optimizer.name"] == "adam" and run.data.tags["optlab.record"].isalnum()
    steps = [m.step for m in c.get_metric_history(run.info.run_id, "train/loss")]
    assert len(steps) > 200 and steps == list(range(1, len(steps) + 1))
    assert run.info.end_time >= run.info.start_time and not path.exists()
    assert recording.records(uri) == []  # (its listing gone with it)


def test_a_delivery_cut_as_the_run_was_opened_logs_its_params_and_config_when_continued(tmp_path, monkeypatch):
    # killed between create_run and the params (a fault probe: 4 of 4 such runs ended with no params)
    (path,) = _record_kept_by_hand(tmp_path)
    opening = delivering._log_opening

    def cut(client, run_id, start):
        monkeypatch.setattr(delivering, "_log_opening", opening)
        raise ConnectionError("the recording process died here")

    monkeypatch.setattr(delivering, "_log_opening", cut)
    with pytest.raises(ConnectionError):
        delivering.deliver(path)
    c, (opened,) = runs(tmp_path)
    assert opened.data.params == {} and opened.info.status == "RUNNING"
    delivering.deliver(path)
    c, (run,) = runs(tmp_path)
    assert run.info.run_id == opened.info.run_id and run.info.status == "FINISHED"
    assert len(run.data.params) > 10 and run.data.params["optimizer.name"] == "adam"
    assert "config.yaml" in [a.path for a in c.list_artifacts(run.info.run_id)]


def test_a_store_gone_before_its_run_is_recorded_is_not_made_anew(tmp_path):
    # a fault probe: the store deleted between the command's end and its recording: a new store
    # held that one run, and nothing was said
    first = optlab(tmp_path, *RUN, "tracking.detach=false")
    assert first.returncode == 0, first.stderr
    (path,) = _record_kept_by_hand(tmp_path)
    (tmp_path / "mlflow.db").rename(tmp_path / "moved.db")
    result = optlab(tmp_path, str(path), module="optlab.deliver")
    assert result.returncode == 1, result.stderr
    assert "there is no MLflow store at" in result.stderr and "which was there when the run started" in result.stderr
    assert not (tmp_path / "mlflow.db").exists() and path.is_file()
    moved = optlab(tmp_path, str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'moved.db'}", module="optlab.deliver")
    assert moved.returncode == 0, moved.stderr
    assert len(runs(tmp_path, db="moved.db")[1]) == 2 and not path.exists()


def _record_kept_by_hand(tmp_path: Path) -> list[Path]:
    """A detached run's record, left unrecorded: the run made again with its recording process
    replaced by nothing."""
    code = (
        "import sys, optlab.app.recording as r\n"
        "r.spawn = lambda path, uri: 0\n"
        "from optlab.app.entry import main\n"
        "sys.argv = ['optlab', *sys.argv[1:]]\n"
        "main()\n"
    )
    made = subprocess.run(
        [sys.executable, "-c", code, *RUN, DETACH],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr
    return sorted(tmp_path.rglob("undelivered-*.jsonl"))


def test_ctrl_c_in_a_detached_run_records_it_killed_with_its_points(tmp_path, spawn):
    args = ["problem=quadratic", "trainer.epochs=100000000", "tracking.log_every=1", "print_every_epoch=[loss]", DETACH]
    proc = spawn(
        [sys.executable, "-m", "optlab", "trainer.progress_bar=false", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    training = threading.Event()

    def read():
        for _ in proc.stdout:
            training.set()

    threading.Thread(target=read, daemon=True).start()
    assert training.wait(300), proc.stderr.read()
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait(120) == 130, err
    assert "its MLflow run is being recorded in the background, marked KILLED" in err and "Traceback" not in err
    _settled(tmp_path)
    c, (run,) = runs(tmp_path)
    assert run.info.status == "KILLED" and run.data.tags["error"] == "interrupted (Ctrl-C)"
    steps = [m.step for m in c.get_metric_history(run.info.run_id, "train/loss")]
    assert len(steps) >= 3 and steps == list(range(1, len(steps) + 1))  # every step, none missing
    assert "summary/steps" in run.data.metrics and run.data.metrics["summary/steps"] >= steps[-1]


def test_the_listing_of_a_record_names_its_store_and_files(tmp_path, state):
    # (what settle() reads: written before the process starts, atomically)
    result = optlab(tmp_path, *RUN, DETACH)
    assert result.returncode == 0, result.stderr
    _settled(tmp_path)
    assert not list(state.glob("*.json"))
    listing = state / "x.json"
    record = tmp_path / "undelivered-abc.jsonl"
    listing.write_text(
        json.dumps({"record": str(record), "log": str(record.with_suffix(".log")), "uri": "sqlite:///x"})
    )
    assert recording.records("sqlite:///x") == [] and not listing.exists()  # its record is gone: done with


def _on_a_terminal(cwd: Path, *args: str) -> tuple[int, str]:
    """``python -m optlab ARGS``, its output on a pseudo-terminal (someone at the shell): its status and output."""
    import os
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "optlab", *args], cwd=cwd, stdout=follower, stderr=follower, stdin=subprocess.DEVNULL
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # (the terminal's other end closed: the process ended)
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return proc.wait(120), b"".join(chunks).decode(errors="replace")


def test_by_default_a_run_at_a_terminal_is_recorded_in_the_background_and_a_scripts_as_it_ends(tmp_path):
    code, shown = _on_a_terminal(tmp_path, *RUN)
    assert code == 0, shown
    assert "recording in MLflow in the background" in shown
    piped = optlab(tmp_path, *RUN, "optimizer=sgd")
    assert piped.returncode == 0, piped.stderr
    assert "logged to MLflow" in piped.stdout
    assert "sgd" in [r.data.tags["optimizer"] for r in runs(tmp_path)[1]]  # in the store as the command returned
    _settled(tmp_path)
    _, found = runs(tmp_path)
    assert sorted(r.data.tags["optimizer"] for r in found) == ["adam", "sgd"]
    assert [r.data.tags.get("optlab.record") is not None for r in sorted(found, key=lambda r: r.info.start_time)] == [
        True,
        False,
    ]
    code, shown = _on_a_terminal(tmp_path, *RUN, "tracking.detach=false")
    assert code == 0 and "logged to MLflow" in shown and len(runs(tmp_path)[1]) == 3
    # every point kept (log_every=1 on a long run: millions, held until the end if detached): recorded as it ends
    code, shown = _on_a_terminal(tmp_path, *RUN, "tracking.log_every=1")
    assert code == 0 and "logged to MLflow" in shown and len(runs(tmp_path)[1]) == 4


def test_a_bad_detach_value_is_one_line(tmp_path):
    result = optlab(tmp_path, *RUN, "tracking.detach=sometimes")
    assert result.returncode == 2, result.stderr
    assert "tracking.detach must be true, false or auto; received 'sometimes'" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_a_record_being_recorded_is_not_delivered_twice_at_once(tmp_path):
    import fcntl
    import os

    (path,) = _record_kept_by_hand(tmp_path)
    before = path.read_bytes()
    log = os.open(path.with_suffix(".log"), os.O_WRONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(log, fcntl.LOCK_EX)  # as its recording process holds it
        result = optlab(tmp_path, str(path), module="optlab.deliver")
    finally:
        os.close(log)
    assert result.returncode == 1, result.stderr
    assert "is being recorded right now by the process its run started" in result.stderr
    assert path.read_bytes() == before and not (tmp_path / "mlflow.db").exists()
    delivered = optlab(tmp_path, str(path), module="optlab.deliver")  # (the lock released: its process is gone)
    assert delivered.returncode == 0, delivered.stderr
    assert len(runs(tmp_path)[1]) == 1 and not path.exists()


def test_deliver_into_a_reader_that_goes_away_delivers_and_is_no_traceback(tmp_path):
    # `python -m optlab.deliver FILE | head -0`: the file is delivered; the line about it has no reader
    import os

    (path,) = _record_kept_by_hand(tmp_path)
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "optlab.deliver", str(path)],
            cwd=tmp_path, stdout=write, stderr=subprocess.PIPE, text=True, timeout=300,
        )  # fmt: skip
    finally:
        os.close(write)
    assert done.returncode == 1 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert not path.exists() and runs(tmp_path)[1][0].info.status == "FINISHED"


def test_a_recording_process_that_died_is_said_to_have_died(tmp_path, state):
    # a fault probe: after a SIGKILL the warning gave the log's first line as the reason
    (path,) = _record_kept_by_hand(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    state.mkdir(parents=True, exist_ok=True)
    log = path.with_suffix(".log")
    log.write_text(f"optlab.deliver: recording {path} (pid 4242, niceness 10)\n")
    (state / "x.json").write_text(json.dumps({"record": str(path), "log": str(log), "uri": uri}))
    (record,) = recording.failed(uri)
    assert (
        recording.reason(record)
        == "its process (pid 4242) ended before it was recorded (killed, or the machine went down)"
    )


def test_a_state_folder_that_cannot_be_made_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "state").write_text("a file where optlab's state folder should be")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    result = optlab(tmp_path, *RUN, DETACH)
    assert result.returncode == 2, result.stderr
    assert "optlab: error: the run cannot be recorded in the background: " in result.stderr
    assert "is not writable (Not a directory); record it as it ends with tracking.detach=false" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_the_ui_command_for_a_store_in_a_folder_with_a_space_can_be_pasted(tmp_path):
    import shlex

    folder = tmp_path / "my runs"
    folder.mkdir()
    result = optlab(folder, *RUN)
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("open it with:"))
    words = shlex.split(line.split("open it with:", 1)[1].split("   then")[0])
    assert words[:2] == ["mlflow", "ui"] and words[3] == f"sqlite:///{folder / 'mlflow.db'}"
