"""What optlab guarantees about a user's files and a run's memory (docs/guarantees.md), each
fault reproduced: a backup folder shared with other files, a run killed at any moment and
resumed, a CSV row cut short, a run of millions of epochs, a template that reaches into objects.
"""

from __future__ import annotations

import csv
import gc
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

import optlab
from optlab.callbacks import BackupAndRestore, Callback, CSVLogger, History, ModelCheckpoint, ReduceLROnPlateau
from optlab.files import StateFileError, load_npz, save_npz_atomic, write_text_atomic
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
    path = tmp_path / "b" / "log.csv"
    before = path.read_bytes() if path.exists() else b""  # a new file appears with its first row
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


# -- atomic writes: permissions, and the leftovers of a writer killed mid-write ------------------------------


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set the process's umask for one test (restored after it)."""
    saved = os.umask(0o022)
    yield os.umask
    os.umask(saved)


@pytest.mark.parametrize("mode", [0o664, 0o640, 0o600, 0o444])
@pytest.mark.parametrize("writer", ["npz", "text"])
def test_an_overwritten_file_keeps_its_permissions(tmp_path, umask, mode, writer):
    # mkstemp made every temporary file 0600, and the rename gave the user's 0664 checkpoint that mode
    path = tmp_path / "ckpt.npz"
    path.write_bytes(b"old")
    os.chmod(path, mode)
    umask(0o077)  # the mode comes from the file replaced, not from the umask
    if writer == "npz":
        save_npz_atomic(path, {"n": 1}, {"a": np.ones(2)})
        assert load_npz(path)[0] == {"n": 1}
    else:
        write_text_atomic(path, "new")
        assert path.read_text() == "new"
    assert mode_of(path) == mode


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600), (0, 0o666)])
def test_a_new_file_gets_the_mode_open_would_give_it(tmp_path, umask, mask, expected):
    umask(mask)
    save_npz_atomic(tmp_path / "new.npz", {"n": 1}, {"a": np.ones(2)})
    write_text_atomic(tmp_path / "new.txt", "x")
    assert mode_of(tmp_path / "new.npz") == expected  # 0o666 & ~umask, by hand
    assert mode_of(tmp_path / "new.txt") == expected
    assert os.umask(mask) == mask  # the umask itself was left as it was


def dead_pid() -> int:
    """The pid of a process that has ended (started here and waited for)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def temp_name(target: str, host: str, pid: int, random: str = "0123abcd") -> str:
    return f".{target}.optlab-tmp-{host}-{pid}-{random}"


def test_leftovers_of_a_dead_writer_are_removed_by_the_next_write_and_nothing_else(tmp_path, spawn):
    host = socket.gethostname()
    live = spawn([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = dead_pid()
    assert live.poll() is None
    stale = tmp_path / temp_name("x.npz", host, dead)
    kept = [
        tmp_path / temp_name("x.npz", host, live.pid),  # a live writer's (another process on this host)
        tmp_path / temp_name("x.npz", "another-host", dead),  # a shared filesystem: that pid is not ours to judge
        tmp_path / temp_name("y.npz", host, dead),  # another target's: its own next write cleans it
        tmp_path / temp_name("x.npz", host, dead, "not-hex!"),  # not a name optlab makes
        tmp_path / ".x.npz.tmp-notours",  # the user's
        tmp_path / ".x.npz.tmp-123",
    ]
    for path in [stale, *kept]:
        path.write_bytes(b"partial")
    save_npz_atomic(tmp_path / "x.npz", {"n": 1}, {"a": np.ones(2)})
    assert not stale.exists()
    for path in kept:
        assert path.read_bytes() == b"partial", path
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["x.npz", *(p.name for p in kept)])


KILLED_MID_WRITE = """
import os, sys, numpy as np
from optlab import files
def die(fd):
    os._exit(9)  # as a kill -9 would: no cleanup, no finalizer
files.os.fsync = die
files.save_npz_atomic(sys.argv[1], {"n": 2}, {"a": np.zeros(1000)})
"""


def test_a_write_killed_midway_leaves_its_named_temporary_which_the_next_write_removes(tmp_path):
    path = tmp_path / "ckpt.npz"
    save_npz_atomic(path, {"n": 1}, {"a": np.ones(2)})
    proc = subprocess.Popen([sys.executable, "-c", KILLED_MID_WRITE, str(path)])
    assert proc.wait(timeout=60) == 9
    assert load_npz(path)[0] == {"n": 1}  # the old file, whole
    left = [p.name for p in tmp_path.iterdir() if p.name != "ckpt.npz"]
    assert len(left) == 1 and re.fullmatch(rf"\.ckpt\.npz\.optlab-tmp-.+-{proc.pid}-[0-9a-f]{{8}}", left[0]), left
    save_npz_atomic(path, {"n": 3}, {"a": np.ones(2)})
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]
    assert load_npz(path)[0] == {"n": 3}


def test_a_target_with_the_longest_allowed_name_is_written(tmp_path):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    path = tmp_path / ("a" * (limit - 4) + ".npz")
    save_npz_atomic(path, {"n": 1}, {"a": np.ones(2)})
    save_npz_atomic(path, {"n": 2}, {"a": np.ones(2)})
    assert load_npz(path)[0] == {"n": 2}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


# -- CSVLogger(append=False) replaces the old file only once the new one has a row ----------------------------

OLD_CSV = "epoch,loss\n0,9.5\n1,8.25\n"


def _new_csv_run(path, *callbacks, epochs=3):
    problem = optlab.problems.LinearRegression(n_samples=60, noise=0.3, validation_split=0.25)
    return Trainer(problem, "sgd", [*callbacks, CSVLogger(str(path))], epochs=epochs, batch_size=9)


def test_a_new_run_that_fails_before_its_first_row_leaves_the_old_csv_as_it_was(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(OLD_CSV)
    os.chmod(path, 0o664)
    trainer = _new_csv_run(path, CrashAt(step=2))  # in epoch 0: no row yet
    with pytest.raises(Crash):
        trainer.fit()
    assert path.read_text() == OLD_CSV  # Keras's open(..., "w") had emptied it at the start
    trainer.callbacks.on_train_end({})
    assert [p.name for p in tmp_path.iterdir()] == ["log.csv"]
    assert path.read_text() == OLD_CSV and mode_of(path) == 0o664


def test_a_failed_runs_temporary_csv_goes_when_the_logger_does(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(OLD_CSV)
    trainer = _new_csv_run(path, CrashAt(step=2))
    with pytest.raises(Crash):
        trainer.fit()
    assert len(list(tmp_path.iterdir())) == 2  # the new file, under its temporary name
    del trainer
    gc.collect()
    assert [p.name for p in tmp_path.iterdir()] == ["log.csv"]
    assert path.read_text() == OLD_CSV


FAILS_IN_EPOCH_0 = """
import sys, optlab
from optlab.callbacks import Callback, CSVLogger
from optlab.trainer import Trainer
class Fail(Callback):
    def on_train_batch_end(self, batch, logs=None):
        raise RuntimeError("boom")
Trainer("seed_linear", "sgd", [Fail(), CSVLogger(sys.argv[1])], epochs=2).fit()
"""

DIES_IN_EPOCH_0 = """
import os, sys
from optlab.callbacks import CSVLogger
logger = CSVLogger(sys.argv[1])
logger.on_train_begin()
os._exit(9)  # as a kill -9 would, before the first row
"""


def test_a_process_that_fails_or_is_killed_before_the_first_row_leaves_the_old_csv(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(OLD_CSV)
    failed = subprocess.run([sys.executable, "-c", FAILS_IN_EPOCH_0, str(path)], capture_output=True, timeout=120)
    assert failed.returncode == 1 and b"boom" in failed.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["log.csv"]  # removed at exit
    assert path.read_text() == OLD_CSV

    killed = subprocess.Popen([sys.executable, "-c", DIES_IN_EPOCH_0, str(path)])
    assert killed.wait(timeout=120) == 9
    assert path.read_text() == OLD_CSV
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and re.fullmatch(rf"\.log\.csv\.optlab-tmp-.+-{killed.pid}-[0-9a-f]{{8}}", left[0]), left
    _new_csv_run(path, epochs=2).fit()  # the next run of that file removes the dead writer's leftover
    assert [p.name for p in tmp_path.iterdir()] == ["log.csv"]
    assert [r[0] for r in _rows(path)] == ["epoch", "0", "1"]


def test_a_new_run_replaces_the_csv_once_it_has_written_a_row(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(OLD_CSV)
    os.chmod(path, 0o664)
    with pytest.raises(Crash):
        _new_csv_run(path, CrashAt(step=7)).fit()  # in epoch 1, after epoch 0's row
    rows = _rows(path)
    header = ["epoch", "distance_to_optimum", "learning_rate", "loss", "val_loss"]  # the logs' names, sorted
    assert rows[0] == header
    assert [r[0] for r in rows] == ["epoch", "0"]
    assert len(list(tmp_path.iterdir())) == 1
    assert mode_of(path) == 0o664  # the user's file's permissions stay

    _new_csv_run(path).fit()
    rows = _rows(path)
    assert [r[0] for r in rows] == ["epoch", "0", "1", "2"] and rows[0] == header
    assert float(rows[1][2]) == 0.01  # SGD's default rate, logged by the new run
    assert [p.name for p in tmp_path.iterdir()] == ["log.csv"]


def test_a_csv_name_that_is_a_folder_is_refused_when_the_run_starts(tmp_path):
    (tmp_path / "log.csv").mkdir()
    (tmp_path / "log.csv" / "mine.txt").write_text("x")
    with pytest.raises(ValueError, match=r"CSVLogger: filename: .*log\.csv is a folder, not a file"):
        _new_csv_run(tmp_path / "log.csv").fit()
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["log.csv", "log.csv/mine.txt"]


def test_append_still_appends_to_the_existing_file(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(OLD_CSV)
    problem = optlab.problems.LinearRegression(n_samples=60, noise=0.3, validation_split=0.25)
    Trainer(problem, "sgd", [CSVLogger(str(path), append=True)], epochs=2, batch_size=9).fit()
    text = path.read_text()
    assert text.startswith(OLD_CSV) and [r[0] for r in _rows(path)] == ["epoch", "0", "1", "0", "1"]


@pytest.mark.parametrize("separator", ["", ";;", "\n", "\r", '"'])
def test_the_csv_separator_must_be_one_character(separator):
    # csv.writer raised only at the first row: "delimiter" must be a 1-character string
    with pytest.raises(ValueError, match="CSVLogger: `separator` must be a single character") as error:
        CSVLogger("log.csv", separator=separator)
    assert "\n" not in str(error.value)
    logger = CSVLogger("log.csv", separator=";")
    with pytest.raises(ValueError, match="`separator`"):
        logger.separator = separator
    assert logger.separator == ";"


def test_a_one_character_separator_is_written_and_read_back(tmp_path):
    path = tmp_path / "log.csv"
    Trainer("seed_linear", "sgd", [CSVLogger(str(path), separator="\t")], epochs=2).fit()
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    assert rows[0][0] == "epoch" and {"loss", "learning_rate"} <= set(rows[0])
    assert [r[0] for r in rows[1:]] == ["0", "1"] and all(len(r) == len(rows[0]) for r in rows)


# -- a backup is resumed only by a run with the same settings ----------------------------------------------


def adam(**changes):
    return lambda: optlab.optimizers.Adam(**{"learning_rate": 0.1, **changes})


def data(**changes):
    return lambda: optlab.problems.LinearRegression(
        **{"n_samples": 60, "noise": 0.3, "validation_split": 0.25, **changes}
    )


BASE = {
    "optimizer": adam(),
    "problem": data(),
    "seed": 0,
    "batch_size": 9,
    "dtype": "float32",
    "epochs": 8,
}


def _settings_run(folder, *extra, plateau=True, **changes):
    """The run of BASE (5 steps per epoch) with ``changes``; ReduceLROnPlateau changes the rate as it goes."""
    s = {**BASE, **changes}
    callbacks = [ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1, min_delta=1.0)] if plateau else []
    callbacks += extra
    callbacks.append(BackupAndRestore(str(folder / "backup"), save_freq=3))
    return Trainer(s["problem"](), s["optimizer"](), callbacks, s["epochs"], s["batch_size"], s["seed"], s["dtype"])


def _leave_a_backup(folder, step=22):
    with pytest.raises(Crash):
        _settings_run(folder, CrashAt(step=step)).fit()  # last backup at step 21: epoch 4, in part
    return (folder / "backup" / "backup.npz").read_bytes()


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"optimizer": adam(learning_rate=0.01)}, "optimizer.learning_rate 0.1 (backup) vs 0.01 (this run)"),
        ({"optimizer": adam(beta_2=0.99)}, "optimizer.beta_2 0.999 (backup) vs 0.99 (this run)"),
        ({"optimizer": adam(amsgrad=True)}, "optimizer.amsgrad False (backup) vs True (this run)"),
        ({"optimizer": adam(clipnorm=1.0)}, "optimizer.clipnorm None (backup) vs 1.0 (this run)"),
        ({"optimizer": lambda: optlab.optimizers.SGD(learning_rate=0.1)}, "optimizer 'adam' (backup) vs 'sgd'"),
        (
            {"optimizer": adam(learning_rate=optlab.schedules.CosineDecay(0.1, 50))},
            "optimizer.learning_rate 0.1 (backup) vs {'name': 'cosine_decay'",
        ),
        ({"problem": data(noise=0.5)}, "problem.noise 0.3 (backup) vs 0.5 (this run)"),
        ({"problem": data(data_seed=4)}, "problem.data_seed 0 (backup) vs 4 (this run)"),
        ({"problem": lambda: optlab.problems.Quadratic(dim=11)}, "problem 'linear_regression' (backup) vs 'quadratic'"),
        ({"seed": 1}, "seed 0 (backup) vs 1 (this run)"),
        ({"batch_size": 15}, "batch_size 9 (backup) vs 15 (this run)"),
        ({"batch_size": None}, "batch_size 9 (backup) vs None (this run)"),
        ({"dtype": "float64"}, "dtype 'float32' (backup) vs 'float64' (this run)"),
        ({"epochs": 4}, "epochs 8 (backup) vs 4 (this run), fewer than the 5 the backup has already run"),
    ],
)
def test_a_backup_of_a_run_with_other_settings_is_refused_and_changes_nothing(tmp_path, changes, named):
    saved = _leave_a_backup(tmp_path)
    trainer = _settings_run(tmp_path, **changes)
    with pytest.raises(ValueError) as error:
        trainer.fit()
    message = str(error.value)
    assert "\n" not in message
    path = tmp_path / "backup" / "backup.npz"
    assert message.startswith(f"{path} was made by another run, with different settings: {named}")
    assert message.count(" (backup) vs ") == 1  # that setting only
    assert message.endswith("or use another backup_dir (or delete the backup) to start afresh.")
    # nothing was restored: the parameters are the run's initial ones, the optimizer never stepped
    fresh = _settings_run(tmp_path / "fresh", **changes)
    np.testing.assert_array_equal(trainer.params.flat, fresh.problem.init(fresh.seed, fresh.dtype).flat, strict=True)
    assert trainer.optimizer.iterations == 0 and not trainer.optimizer.built
    assert trainer.optimizer.get_state()[1] == {}
    assert trainer.optimizer.get_config() == {**fresh.optimizer.get_config(), "name": trainer.optimizer.name}
    assert not trainer.resumed and trainer.initial_epoch == 0 and trainer.step == 0
    assert path.read_bytes() == saved  # the backup is kept as it was


def test_every_difference_is_named_in_one_message(tmp_path):
    _leave_a_backup(tmp_path)
    changed = _settings_run(tmp_path, optimizer=adam(learning_rate=0.01), seed=1)
    with pytest.raises(ValueError) as error:
        changed.fit()
    assert (
        "settings: optimizer.learning_rate 0.1 (backup) vs 0.01 (this run); seed 0 (backup) vs 1 (this run). Resume"
        in str(error.value)
    )


def test_a_schedule_that_differs_is_named_by_its_setting(tmp_path):
    def cosine(steps):
        return adam(learning_rate=optlab.schedules.CosineDecay(0.1, steps))

    with pytest.raises(Crash):
        _settings_run(tmp_path, CrashAt(step=22), plateau=False, optimizer=cosine(50)).fit()
    with pytest.raises(ValueError, match=r"settings: optimizer\.learning_rate\.decay_steps 50\.0 \(backup\) vs 60\.0 "):
        _settings_run(tmp_path, plateau=False, optimizer=cosine(60)).fit()
    whole = _settings_run(tmp_path / "whole", plateau=False, optimizer=cosine(50))
    whole.fit()
    resumed = _settings_run(tmp_path, plateau=False, optimizer=cosine(50))  # the same schedule resumes
    resumed.fit()
    np.testing.assert_array_equal(resumed.params.flat, whole.params.flat, strict=True)


@pytest.mark.parametrize("step", [22, 25])  # a backup in the middle of epoch 4; one at its end
def test_the_same_settings_resume_bit_identically(tmp_path, step):
    whole = _settings_run(tmp_path / "whole")
    expected = whole.fit().history
    _leave_a_backup(tmp_path / "b", step=step)
    resumed = _settings_run(tmp_path / "b")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either
        history = resumed.fit().history
    np.testing.assert_array_equal(resumed.params.flat, whole.params.flat, strict=True)
    assert history == expected
    assert expected["learning_rate"][-1] < 0.1  # the rate had been reduced: the saved state's rate is not the setting


@pytest.mark.parametrize("epochs", [5, 6, 12])
def test_epochs_may_change_if_not_fewer_than_the_backup_has_run(tmp_path, epochs):
    # the backup (at step 21) has run 5 epochs, the last in part; nothing in a step depends on `epochs`
    whole = _settings_run(tmp_path / "whole", epochs=epochs)
    expected = whole.fit().history
    _leave_a_backup(tmp_path / "b")
    resumed = _settings_run(tmp_path / "b", epochs=epochs)
    history = resumed.fit().history
    np.testing.assert_array_equal(resumed.params.flat, whole.params.flat, strict=True)
    assert history == expected and len(history["loss"]) == epochs


def test_a_backup_without_recorded_settings_is_resumed_with_a_warning(tmp_path):
    _leave_a_backup(tmp_path / "b")
    path = tmp_path / "b" / "backup" / "backup.npz"
    meta, arrays = load_npz(path)
    del meta["settings"]  # as an older optlab wrote it
    save_npz_atomic(path, meta, arrays)
    whole = _settings_run(tmp_path / "whole")
    whole.fit()
    resumed = _settings_run(tmp_path / "b")
    with pytest.warns(UserWarning, match=r"backup\.npz does not record the settings it was made with"):
        resumed.fit()
    np.testing.assert_array_equal(resumed.params.flat, whole.params.flat, strict=True)


def test_a_setting_an_older_optlab_did_not_record_is_not_compared(tmp_path):
    # a later optlab may add a hyperparameter: its backup from before the upgrade still resumes
    _leave_a_backup(tmp_path / "b")
    path = tmp_path / "b" / "backup" / "backup.npz"
    meta, arrays = load_npz(path)
    dropped = sorted(k for k in meta["settings"]["optimizer"] if k not in ("class", "learning_rate"))[0]
    del meta["settings"]["optimizer"][dropped]
    save_npz_atomic(path, meta, arrays)
    whole = _settings_run(tmp_path / "whole")
    whole.fit()
    resumed = _settings_run(tmp_path / "b")
    resumed.fit()
    np.testing.assert_array_equal(resumed.params.flat, whole.params.flat, strict=True)


CORRUPT_BACKUPS = [  # (what is changed in the metadata, the one line naming it)
    (lambda m: m["position"].update(epoch=-3), "position.epoch is -3, not an integer >= 0"),
    (lambda m: m["position"].update(step="x"), "position.step is 'x', not an integer >= 0"),
    (lambda m: m["position"].update(batch=True), "position.batch is True, not an integer >= 0"),
    (lambda m: m["position"].update(loss_sum=None), "position.loss_sum is None, not a number"),
    (lambda m: m["position"].update(noise_rng={"state": 1}), "position.noise_rng is {'state': 1}, not a PCG64"),
    (lambda m: m.update(position=[1]), "position is [1], not an object"),
    (lambda m: m.update(epoch_done="yes"), "epoch_done is 'yes', not true or false"),
    (lambda m: m.update(callbacks={"a": 1}), "callbacks is {'a': 1}, not a list of {class, state} objects"),
    (lambda m: m.update(created_dirs=[5]), "created_dirs is [5], not a list of folder names"),
    # a backup cannot have run more epochs than its run has: the file is corrupt, not "another run"
    (lambda m: m["position"].update(epoch=10**6), "position.epoch is 1000000, not below the run's 8 epochs"),
    (lambda m: m["position"].update(batch=10**6), "position.batch is 1000000, more than the 5 steps of an epoch"),
    # the re-probe: a History whose loss held lists ran to the end, then the summary raised (backup gone)
    (lambda m: _state_of(m, "History")["history"].update(loss=[[1.0]]), "the saved state of History is not valid"),
    (lambda m: _state_of(m, "History").update(stride=0), "stride is 0, not an integer >= 1"),
    (lambda m: _state_of(m, "ReduceLROnPlateau").update(wait=-2), "wait is -2, not an integer >= 0"),
    (lambda m: _state_of(m, "ReduceLROnPlateau").update(best="low"), "best is 'low', not a number"),
]


def _state_of(meta, name):
    return next(entry["state"] for entry in meta["callbacks"] if entry["class"] == name)


def _write_meta_text(path, text: str, arrays: dict) -> None:
    """An .npz whose metadata entry is ``text`` as it stands (json.dumps cannot write what is too deep)."""
    from optlab.files import META_KEY

    with open(path, "wb") as fh:
        np.savez(fh, **arrays, **{META_KEY: np.frombuffer(text.encode(), dtype=np.uint8)})


def _refused(tmp_path, named) -> None:
    path = tmp_path / "backup" / "backup.npz"
    before = path.read_bytes()
    trainer = _settings_run(tmp_path)
    for check in (lambda: trainer.callbacks.callbacks[-1].check_resume(trainer), trainer.fit):
        with pytest.raises(StateFileError) as error:
            check()
        message = str(error.value)
        assert message.startswith(str(path)) and named in message and "\n" not in message, message
    assert trainer.step == 0 and path.read_bytes() == before


@pytest.mark.parametrize(("corrupt", "named"), CORRUPT_BACKUPS)
def test_a_corrupt_backup_is_one_line_naming_the_file_and_changes_nothing(tmp_path, corrupt, named):
    # seen in the probe: epoch=-3 or step="x" gave a TypeError mid-restore, epoch=10**6 blamed the settings
    _leave_a_backup(tmp_path)
    path = tmp_path / "backup" / "backup.npz"
    meta, arrays = load_npz(path)
    corrupt(meta)
    save_npz_atomic(path, meta, arrays)
    _refused(tmp_path, named)


@pytest.mark.parametrize("depth", [100, 5000])
def test_deeply_nested_backup_metadata_is_refused_in_one_line(tmp_path, depth):
    # seen in the probe: 5,000 nested lists raised RecursionError
    _leave_a_backup(tmp_path)
    path = tmp_path / "backup" / "backup.npz"
    meta, arrays = load_npz(path)
    _write_meta_text(path, json.dumps(meta)[:-1] + ', "extra": ' + "[" * depth + "]" * depth + "}", arrays)
    _refused(tmp_path, "its metadata is nested deeper than 64 levels")
    opt = optlab.optimizers.Adam()  # an optimizer's state file is read the same way
    with pytest.raises(StateFileError, match="nested deeper than 64 levels"):
        opt.load_state(path)


# -- file name templates that cannot give a file name ---------------------------------------------------


@pytest.mark.parametrize("template", ["{epoch:99999999d}.npz", "{epoch:9999999999999d}.npz", "{val_loss:.400f}.npz"])
def test_a_template_width_beyond_the_name_limit_is_refused_before_training(tmp_path, template):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    start = time.perf_counter()
    with pytest.raises(ValueError, match=rf"asks for more than {limit} characters") as error:
        ModelCheckpoint(str(tmp_path / template)).check_files()
    assert time.perf_counter() - start < 1.0  # refused without formatting 100 MB
    assert "\n" not in str(error.value) and "ModelCheckpoint: filepath" in str(error.value)


def test_a_file_name_longer_than_the_limit_is_refused_and_the_longest_allowed_is_accepted(tmp_path):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    too_long = "x" * (limit - 4) + "{epoch:02d}.npz"  # limit - 4 + 2 + 4 bytes
    with pytest.raises(ValueError, match=rf"\({limit + 2} bytes\), longer than the {limit} allowed here") as error:
        ModelCheckpoint(str(tmp_path / too_long)).check_files()
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="longer than"):
        ModelCheckpoint(str(tmp_path / ("d" * (limit + 1) + "{epoch}") / "c.npz")).check_files()  # a folder's name
    longest = "x" * (limit - 6) + "{epoch:02d}.npz"
    ModelCheckpoint(str(tmp_path / longest)).check_files()
    Trainer("seed_linear", "sgd", [ModelCheckpoint(str(tmp_path / longest))], epochs=1).fit()
    assert [len(p.name) for p in tmp_path.iterdir()] == [limit]


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
    # a kill in the middle of a write can leave only a temporary file of optlab's own (never a half file),
    # named after its target; the next write of that target removes it
    expected = {"best.npz", "data", "final.npy", "link", "log.csv", "mlflow.db", "notes.txt"}
    others = {p.name for p in killed.iterdir()} - expected
    ours = re.compile(r"\.(best\.npz|backup\.npz|log\.csv)\.optlab-tmp-.+-[0-9]+-[0-9a-f]{8}")
    assert all(ours.fullmatch(n) for n in others), others


def test_a_backup_never_removes_a_folder_outside_backup_dir(tmp_path):
    # the re-probe: created_dirs = ["/elsewhere/empty"] in a backup made the resumed run remove
    # that (empty) folder at its end. A backup names the folders it created relative to
    # backup_dir, upward only; an absolute entry counts only where it names backup_dir or a
    # folder above it (a moved backup's old paths, or a forged one, are never removed)
    _leave_a_backup(tmp_path)
    victim = tmp_path / "victim_empty"
    victim.mkdir()
    path = tmp_path / "backup" / "backup.npz"
    meta, arrays = load_npz(path)
    assert meta["created_dirs"] == ["."]  # backup/ was made by the run: recorded relative to itself
    meta["created_dirs"] = ["../victim_empty"]  # not upward: refused
    save_npz_atomic(path, meta, arrays)
    _refused(tmp_path, "created_dirs is ['../victim_empty'], not backup_dir")
    meta["created_dirs"] = [str(victim)]  # absolute, elsewhere: resumed, never removed
    save_npz_atomic(path, meta, arrays)
    trainer = _settings_run(tmp_path)
    trainer.fit()
    assert victim.is_dir() and not path.exists()
    assert (tmp_path / "backup").is_dir()  # not named by the backup any more: kept, empty


def test_a_backup_moved_with_its_work_folder_resumes_and_cleans_up_after_itself(tmp_path):
    # the re-probe: with absolute created_dirs, a work folder copied elsewhere could not resume
    import shutil

    _leave_a_backup(tmp_path / "old")
    shutil.copytree(tmp_path / "old", tmp_path / "new")
    shutil.rmtree(tmp_path / "old")
    whole = _settings_run(tmp_path / "whole")
    whole.fit()
    resumed = _settings_run(tmp_path / "new")
    resumed.fit()
    np.testing.assert_array_equal(resumed.params.flat, whole.params.flat, strict=True)
    assert not (tmp_path / "new" / "backup").exists()  # the folder the backup made, removed once empty


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda m, a: m["optimizer"].update(raw_iterations=-5), "its optimizer state cannot be loaded"),
        (lambda m, a: a.update({k: -np.abs(v) for k, v in a.items() if k.endswith("velocity")}), "cannot be loaded"),
        (lambda m, a: a.update({k: v.astype(np.float64) for k, v in a.items() if k.startswith("optimizer/")}), "dtype"),
    ],
)
def test_an_optimizer_state_that_does_not_load_is_refused_before_training(tmp_path, change, named):
    # the re-probe: these were "callback BackupAndRestore.resume failed", a FAILED run, exit 1
    _leave_a_backup(tmp_path)
    path = tmp_path / "backup" / "backup.npz"
    meta, arrays = load_npz(path)
    change(meta, arrays)
    save_npz_atomic(path, meta, arrays)
    trainer = _settings_run(tmp_path)
    with pytest.raises(StateFileError) as error:
        trainer.callbacks.callbacks[-1].check_resume(trainer)
    assert str(error.value).startswith(str(path)) and named in str(error.value)
    assert not trainer.optimizer.built  # the check loaded a copy
