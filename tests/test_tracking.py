"""The MLflow tracker in process: batches handed over mid-run, failures reported, the store lock."""

from __future__ import annotations

import multiprocessing
import time

import pytest

import optlab
from optlab.app import tracking
from optlab.trainer import Trainer

pytestmark = pytest.mark.slow

EPOCHS = 6
EPOCH_KEYS = ["epoch_loss", "accuracy", "val_loss", "val_accuracy"]  # mlp_digits's epoch logs besides learning_rate


def tracked_run(tmp_path, log_every=1, **tracker_patches):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    problem = optlab.problems.get("mlp_digits")
    tracker = tracking.MlflowTracker(uri, "tests", {"a": {"b": 1}}, {"kind": "unit"}, "unit-run", log_every)
    for name, value in tracker_patches.items():
        setattr(tracker, name, value)
    trainer = Trainer(problem, optlab.optimizers.Adam(), [tracker], epochs=EPOCHS, batch_size=256, seed=0)
    tracker.start()
    trainer.fit()
    tracker.close("FINISHED")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return client, client.get_run(tracker.run_id), trainer


def test_metrics_handed_over_during_the_run_all_arrive_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "FLUSH_SECONDS", 0.0)  # hand over at every metric
    client, run, trainer = tracked_run(tmp_path)
    steps = EPOCHS * 6  # mlp_digits trains on 1,438 of the 1,797 digits (80%): 6 batches of <= 256
    assert trainer.step == steps
    assert run.info.status == "FINISHED"
    for key in ("loss", "learning_rate"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == list(range(1, steps + 1))
    for key in EPOCH_KEYS:
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [steps // EPOCHS * (e + 1) for e in range(EPOCHS)]
    assert run.data.metrics["learning_rate"] == pytest.approx(0.001)  # Adam's default, no schedule
    assert run.data.params == {"a.b": "1"}
    assert run.data.tags["kind"] == "unit"
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert names == {"config.yaml", "curves.png"}


def test_a_failing_store_marks_the_run_failed_and_says_what_was_lost(tmp_path, monkeypatch):
    original = tracking.MlflowTracker._log_start

    def log_start_then_break(self, run):
        original(self, run)
        real = self.client.log_batch

        def log_batch(run_id, metrics=(), **kwargs):
            if metrics:
                raise RuntimeError("disk full")
            return real(run_id, metrics=metrics, **kwargs)

        self.client.log_batch = log_batch

    monkeypatch.setattr(tracking.MlflowTracker, "_log_start", log_start_then_break)
    _, run, _ = tracked_run(tmp_path)
    assert run.info.status == "FAILED"
    assert "metric logging failed: RuntimeError: disk full" in run.data.tags["error"]


def test_a_plot_that_fails_does_not_hide_the_outcome(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("no fonts")

    monkeypatch.setattr(tracking, "curves_figure", broken)
    client, run, _ = tracked_run(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.tags["plot_error"] == "ValueError: no fonts"
    assert len(client.get_metric_history(run.info.run_id, "loss")) == EPOCHS * 6


def _hold_lock(uri, seconds, events):
    with tracking._store_lock(uri):
        events.put(("in", time.monotonic()))
        time.sleep(seconds)
        events.put(("out", time.monotonic()))


def test_store_lock_serialises_processes_and_writes_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    workers = [context.Process(target=_hold_lock, args=(uri, 0.3, events)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    timeline = sorted((events.get(timeout=5) for _ in range(6)), key=lambda e: e[1])
    assert [kind for kind, _ in timeline] == ["in", "out"] * 3  # never two holders at once
    assert list(tmp_path.iterdir()) == []
