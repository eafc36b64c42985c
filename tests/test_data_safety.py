"""What optlab guarantees about a user's files and a run's memory (docs/guarantees.md), each
fault reproduced: a backup folder shared with other files, a run killed at any moment and
resumed, a CSV row cut short, a run of millions of epochs, a template that reaches into objects.
"""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import optlab
from optlab.callbacks import BackupAndRestore, Callback, CSVLogger, History, ModelCheckpoint
from optlab.trainer import Trainer


class Crash(Exception):
    pass


class CrashAt(Callback):
    """Raises at the end of a given step, or at the end of a given epoch after the others wrote."""

    registry_name = "crash_at_test"

    def __init__(self, step=None, epoch=None):
        super().__init__()
        self.step, self.epoch = step, epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.trainer.step == self.step:
            raise Crash

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Crash


def user_files(folder):
    """A user's own files: some beside the backup, one in a subfolder, one outside behind a symlink."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("mine")
    (folder / "mlflow.db").write_bytes(b"SQLite format 3\x00 not really")
    (folder / "data").mkdir()
    (folder / "data" / "x.csv").write_text("1,2\n")
    outside = folder.parent / f"{folder.name}-outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    (folder / "link").symlink_to(outside, target_is_directory=True)
    return {p: p.read_bytes() for p in [*folder.rglob("*"), *outside.rglob("*")] if p.is_file()}


def assert_untouched(files):
    for path, content in files.items():
        assert path.read_bytes() == content, path


# -- BackupAndRestore removes only its own file ------------------------------------------------------------


def test_backup_in_the_working_directory_removes_only_its_own_file(tmp_path, monkeypatch):
    # Keras's rmtree(backup_dir) with backup_dir="." deleted mlflow.db and every checkpoint
    monkeypatch.chdir(tmp_path)
    mine = user_files(tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    callbacks = [ModelCheckpoint("ckpt-{epoch}.npz"), BackupAndRestore(".")]
    Trainer("seed_linear", "sgd", callbacks, epochs=3).fit()
    assert_untouched(mine)
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [
        "ckpt-1.npz",
        "ckpt-2.npz",
        "ckpt-3.npz",
        "data",
        "link",
        "mlflow.db",
        "notes.txt",
    ]


def test_a_backup_folder_optlab_created_is_removed_only_when_empty(tmp_path):
    Trainer("seed_linear", "sgd", [BackupAndRestore(str(tmp_path / "a" / "b" / "backup"))], epochs=2).fit()
    assert list(tmp_path.iterdir()) == []  # the three folders it created, removed deepest first

    class DropsAFile(Callback):
        registry_name = "drops_a_file_test"

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:  # the folders exist since the first epoch's backup
                (tmp_path / "a" / "theirs.txt").write_text("someone else's")

    callbacks = [DropsAFile(), BackupAndRestore(str(tmp_path / "a" / "b" / "backup"))]
    Trainer("seed_linear", "sgd", callbacks, epochs=2).fit()
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["a", "a/theirs.txt"]


def test_a_resumed_run_removes_the_folder_the_killed_run_created(tmp_path):
    folder = tmp_path / "new" / "backup"
    with pytest.raises(Crash):
        Trainer("seed_linear", "sgd", [CrashAt(step=3), BackupAndRestore(str(folder))], epochs=5).fit()
    assert (folder / "backup.npz").exists()
    Trainer("seed_linear", "sgd", [BackupAndRestore(str(folder))], epochs=5).fit()
    assert list(tmp_path.iterdir()) == []


def test_an_existing_backup_folder_is_kept_even_when_empty(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    Trainer("seed_linear", "sgd", [BackupAndRestore(str(folder))], epochs=2).fit()
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_a_bad_backup_file_changes_nothing(tmp_path):
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "backup.npz").write_bytes(b"PK\x03\x04 truncated")
    trainer = Trainer("seed_linear", "sgd", [BackupAndRestore(str(folder))], epochs=2)
    with pytest.raises(ValueError, match=r"backup\.npz is not an optlab state file"):
        trainer.fit()
    assert (folder / "backup.npz").read_bytes() == b"PK\x03\x04 truncated"


# -- CSVLogger on a resumed run ----------------------------------------------------------------------------


def _csv_run(tmp_path, crash=None):
    problem = optlab.problems.LinearRegression(n_samples=60, noise=0.3, validation_split=0.25)
    callbacks = [CSVLogger(str(tmp_path / "log.csv"))]
    if crash is not None:
        callbacks.append(crash)
    callbacks.append(BackupAndRestore(str(tmp_path / "backup"), save_freq=4))
    return Trainer(problem, optlab.optimizers.Adam(learning_rate=0.05), callbacks, epochs=8, batch_size=9, seed=3)


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


@pytest.mark.parametrize(
    "crash",
    [
        pytest.param(lambda: CrashAt(step=5), id="mid-epoch-0"),  # before epoch 1 ends: the position is mid-epoch
        pytest.param(lambda: CrashAt(step=30), id="mid-run"),
        # after CSVLogger wrote epoch 4's row, before the backup of epoch 4: the resumed run recomputes it
        pytest.param(lambda: CrashAt(epoch=4), id="row-written-backup-not"),
    ],
)
def test_a_resumed_run_appends_to_its_csv_and_writes_each_epoch_once(tmp_path, crash):
    _csv_run(tmp_path / "whole").fit()
    expected = _rows(tmp_path / "whole" / "log.csv")
    assert [r[0] for r in expected] == ["epoch", *map(str, range(8))]

    with pytest.raises(Crash):
        _csv_run(tmp_path / "b", crash()).fit()
    before = (tmp_path / "b" / "log.csv").read_bytes()
    _csv_run(tmp_path / "b").fit()
    after = (tmp_path / "b" / "log.csv").read_bytes()
    assert after.startswith(before)  # appended: nothing the killed run wrote was lost
    assert _rows(tmp_path / "b" / "log.csv") == expected


def test_a_row_cut_short_by_a_kill_is_written_again_whole(tmp_path):
    _csv_run(tmp_path / "whole").fit()
    with pytest.raises(Crash):
        _csv_run(tmp_path / "b", CrashAt(step=30)).fit()
    path = tmp_path / "b" / "log.csv"
    with open(path, "ab") as fh:
        fh.write(b"4,0.12")  # the process died in the middle of writing a row
    _csv_run(tmp_path / "b").fit()
    assert _rows(path) == _rows(tmp_path / "whole" / "log.csv")


# -- bounded memory ------------------------------------------------------------------------------------


def test_history_of_a_long_run_is_thinned_but_keeps_first_last_and_best():
    epochs = 5000
    full = Trainer("rastrigin", optlab.optimizers.SGD(learning_rate=0.004), epochs=epochs, seed=1).fit()
    assert len(full.epoch) == epochs  # under the cap, everything is kept (Keras's History)
    losses = np.array(full.history["loss"])

    thin = History(max_points=64)
    Trainer("rastrigin", optlab.optimizers.SGD(learning_rate=0.004), [thin], epochs=epochs, seed=1).fit()
    assert 32 <= len(thin.epoch) <= 65
    assert thin.epoch[0] == 0 and thin.epoch[-1] == epochs - 1
    gaps = np.diff(thin.epoch[:-1])
    assert len(set(gaps)) == 1  # evenly spaced (the last is appended whatever the stride)
    assert thin.history["loss"] == [full.history["loss"][e] for e in thin.epoch]
    # the exact best over every epoch, dropped ones included; the first epoch wins ties
    best = losses.min()
    assert thin.best("loss", "min") == (best, int(np.argmin(losses)))
    assert thin.best("loss", "max") == (losses.max(), int(np.argmax(losses)))
    assert 32 <= len(thin.path) <= 65
    np.testing.assert_array_equal(thin.path[-1], full.path[-1])
    np.testing.assert_array_equal(thin.path[0], full.path[0])


def test_thinned_history_resumes_exactly(tmp_path):
    def run(crash=None):
        cbs = [History(max_points=16), *([crash] if crash else []), BackupAndRestore(str(tmp_path / "bk"))]
        trainer = Trainer("rosenbrock", optlab.optimizers.Adam(learning_rate=0.01), cbs, epochs=300)
        return trainer.fit()

    whole = run()
    with pytest.raises(Crash):
        run(CrashAt(step=211))
    resumed = run()
    assert resumed.epoch == whole.epoch and resumed.history == whole.history
    assert resumed.best("loss") == whole.best("loss")
    np.testing.assert_array_equal(np.array(resumed.path), np.array(whole.path))


# -- file name templates ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template", ["{epoch.__class__.__mro__}.npz", "{epoch[0]}.npz", "{loss!r}.npz", "{loss:{width}}.npz", "{0}.npz"]
)
def test_templates_take_names_and_format_specs_only(template):
    with pytest.raises(ValueError, match="only use logged names"):
        ModelCheckpoint(template)


def test_unwritable_output_files_are_found_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        CSVLogger(str(blocker / "log.csv")).check_files()
    with pytest.raises(ValueError, match="is a folder"):
        CSVLogger(str(tmp_path)).check_files()
    with pytest.raises(ValueError, match=r'"\{loss:d\}\.npz": cannot format loss=0.0 as "d"'):
        ModelCheckpoint("{loss:d}.npz").check_files()
    ModelCheckpoint(str(tmp_path / "new" / "e{epoch:03d}-{val_loss:.2f}.npz")).check_files()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the probe leaves nothing behind


# -- kill -9 at random moments, then resume: bit-identical, complete CSV, the user's files untouched ----------------

SCRIPT = """
import sys, numpy as np, optlab
from optlab.callbacks import BackupAndRestore, CSVLogger, ModelCheckpoint
from optlab.trainer import Trainer
problem = optlab.problems.LinearRegression(n_samples=400, n_features=20, noise=0.3, validation_split=0.25)
callbacks = [
    CSVLogger("log.csv"),
    ModelCheckpoint("best.npz", monitor="val_loss", save_best_only=True),
    BackupAndRestore(".", save_freq=int(sys.argv[1])),
]
trainer = Trainer(problem, optlab.optimizers.Adam(learning_rate=0.01, use_ema=True), callbacks,
                  epochs=int(sys.argv[2]), batch_size=7, seed=11)
trainer.fit()
np.save("final.npy", trainer.params.flat)
"""


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_is_exact(tmp_path, spawn):
    epochs = 60
    (tmp_path / "script.py").write_text(textwrap.dedent(SCRIPT))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir()
    mine = user_files(killed)
    cmd = [sys.executable, str(tmp_path / "script.py"), "5", str(epochs)]
    subprocess.run(cmd, cwd=whole, check=True, timeout=300)

    def rows():
        try:
            return len((killed / "log.csv").read_bytes().splitlines()) - 1
        except FileNotFoundError:
            return 0

    rng = np.random.default_rng(0)
    # a kill while starting up, then kills at random points of training (when the CSV reaches a
    # random epoch, plus a random fraction of an epoch): progress-driven, so the machine's load
    # does not decide where they land
    targets = sorted(rng.choice(np.arange(2, epochs - 5), size=5, replace=False))
    proc = spawn(cmd, cwd=killed, stderr=subprocess.PIPE)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    for target in targets:
        proc = spawn(cmd, cwd=killed, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while rows() < target and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(float(rng.uniform(0.0, 0.05)))
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    proc = spawn(cmd, cwd=killed, stderr=subprocess.PIPE)
    proc.wait(timeout=300)
    assert proc.returncode == 0, proc.stderr.read()
    np.testing.assert_array_equal(np.load(killed / "final.npy"), np.load(whole / "final.npy"))
    assert _rows(killed / "log.csv") == _rows(whole / "log.csv")
    assert len(_rows(killed / "log.csv")) == epochs + 1
    assert_untouched(mine)
    assert not (killed / "backup.npz").exists()
    # a kill in the middle of a write can leave only a temporary file of optlab's own (never a half file)
    expected = {"best.npz", "data", "final.npy", "link", "log.csv", "mlflow.db", "notes.txt"}
    others = {p.name for p in killed.iterdir()} - expected
    assert all(n.startswith(".tmp-") and n.endswith(".npz") for n in others), others
