"""The command line under faults: bad input, a callback that raises, signals to a run and to a sweep.

Every case ends in one line (no traceback), a true MLflow status, and nothing recorded lost.
Subprocesses are always ended when a test ends, passed or failed (the ``spawn`` fixture).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cli_helpers import RAISES_ON_NAN, optlab, runs

FAST = ("trainer.progress_bar=false",)


@pytest.fixture
def run_optlab(spawn):
    """Start ``python -m optlab ...`` in ``cwd``; always ended with the test (conftest's ``spawn``)."""

    def start(cwd, *args, env=None):
        return spawn(
            [sys.executable, "-m", "optlab", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )

    return start


def wait_for(predicate, seconds=120.0):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


BAD_INPUT = [
    (("seed=-1",), "`seed` must be an integer >= 0; received seed=-1"),
    (("seed=abc",), "`seed` must be an integer >= 0; received seed='abc'"),
    (("+trainer.epoch=5",), "trainer.epoch is not an option (did you mean 'epochs'?)"),
    (("+trainer_epochs=5",), "trainer_epochs is not an option"),
    (("print_every_epoch=[nonexistent]",), "print_every_epoch: 'nonexistent' is not logged by this run"),
    (("print_every_epoch=nonexistent",), "print_every_epoch: 'nonexistent' is not logged by this run"),
    (("tracking.flush_timeout=inf",), "tracking.flush_timeout must be a finite number of seconds >= 0"),
    (("trainer.dtype=foo",), "`dtype` must be float32 or float64; received dtype='foo'"),
    (("trainer.dtype=int8",), "`dtype` must be float32 or float64; received dtype='int8'"),
    # seed_linear is full-batch: batch_size is not used, but a wrong one is still a mistake
    (
        ("trainer.batch_size=0",),
        "`batch_size` must be an integer >= 1 or null (all the examples); received batch_size=0",
    ),
    (("trainer.batch_size=-1",), "received batch_size=-1"),
    (("trainer.batch_size=nan",), "received batch_size=nan (nan is not allowed)"),
    (("trainer.progress_bar=maybe",), "trainer.progress_bar must be true or false; received "),
    (("tracking.enabled=maybe",), "tracking.enabled must be true or false (or tracking=none)"),
    (("metric=",), "metric must be \"auto\" or a logged name; received metric=''"),
    (("+callbacks.foo=1",), "callbacks.foo=1 is not a callback's settings"),
    (("callbacks=[csv_logger,csv_logger]",), "'csv_logger' is listed twice"),
    (("-m", "callbacks=[early_stopping],[early_stopping,early_stopping]"), "'early_stopping' is listed twice"),
    (
        ("callbacks=[backup_and_restore]", "callbacks.backup_and_restore.backup_dir="),
        "`backup_dir` must be a non-empty string; received backup_dir=''",
    ),
    (
        ("callbacks=[csv_logger]", "callbacks.csv_logger.filename="),
        "`filename` must be a non-empty string; received filename=''",
    ),
    (
        ("callbacks=[model_checkpoint]", "callbacks.model_checkpoint.filepath='{epoch.__class__.__mro__}.npz'"),
        "a template may only use logged names",
    ),
    (
        ("callbacks=[model_checkpoint]", "callbacks.model_checkpoint.filepath='{zzz:d}.npz'"),
        "uses {zzz}, which is not logged by this run",
    ),
    (
        ("callbacks=[model_checkpoint]", "callbacks.model_checkpoint.filepath='{loss:d}.npz'"),
        'cannot format loss=0.0 as "d"',
    ),
    (("callbacks=[csv_logger]", "callbacks.csv_logger.filename=blocker/log.csv"), "which is a file"),
    # Hydra's own messages for these ran over 5 to 10 lines
    (("tracking=mlflw",), "Unknown tracking 'mlflw'. Did you mean 'mlflow'? Known: mlflow, none"),
    (("+experiment=seed_tutoral",), "Unknown experiment 'seed_tutoral'. Did you mean 'seed_tutorial'?"),
    (
        ("callbacks.early_stopping.patience=3",),
        "callbacks.early_stopping.patience: early_stopping is not one of this run's callbacks; "
        "choose it with callbacks=[early_stopping]",
    ),
    (("callbacks.early_stoping.patience=3",), "unknown callback 'early_stoping'. Did you mean 'early_stopping'?"),
    (
        ("-m", "callbacks=[early_stopping],[early_stopping,terminate_on_nan]", "callbacks.early_stopping.patience=3"),
        "in a sweep over callbacks, set a callback's argument with ++ (++callbacks.early_stopping.patience=...)",
    ),
    (
        ("-m", "callbacks=[csv_logger],[early_stopping]", "++callbacks.early_stopping.patience=3"),
        "early_stopping is not one of the callbacks of the job [csv_logger]",
    ),
    (("trainer.epochs",), "'trainer.epochs': settings are key=value (trainer.epochs=...)"),
    # a setting the config does not have, without +: Hydra's message was 4 lines, without the known ones
    (("trainer.epochz=3",), "trainer.epochz is not an option (did you mean 'epochs'?). Known: trainer.batch_size,"),
    (("seeds=2",), "seeds is not an option (did you mean 'seed'?). Known: callbacks, metric,"),
    (("tracking.urii=x",), "tracking.urii is not an option (did you mean 'uri'?). Known: tracking.detach, tracking.en"),
    (("experiment=seed_tutorial",), "experiment=seed_tutorial: a preset is added with + (+experiment=seed_tutorial)"),
    # the re-probe: a raw KeyError, and Hydra's messages of 5 to 6 lines
    (("~optimizer",), "~optimizer: every run needs an optimizer; choose one with optimizer=NAME instead"),
    (("~callbacks",), "~callbacks: a group is not removed; for none, write callbacks=[]"),
    (("schedule=none", "schedule.decay_steps=5"), "schedule.decay_steps: no schedule is chosen (schedule=none)"),
    (("print_every_epoch=loss,a",), "print_every_epoch=loss,a: several values make a sweep, which needs -m"),
    (("tracking=none", "tracking.uri=http://x"), "tracking.uri is set but tracking=none: nothing is logged"),
    (("hydra/launcher=joblb",), "Unknown hydra/launcher 'joblb'. Did you mean 'joblib'? Installed: basic, joblib"),
    (("-m", "hydra/sweeper=optna"), "Unknown hydra/sweeper 'optna'. Did you mean 'optuna'?"),
    (("trainer.epochs=1e20",), "received epochs=1e+20 (a float this large is not an exact integer"),
    (("tracking.uri=",), "tracking.uri must be a store's URI, or left out for the default"),
    # MLflow 3 refuses folder stores; its message, cut to one line, lost the way out
    (
        ("tracking.uri=./runs",),
        "./runs is a folder store, which MLflow 3 writes only with MLFLOW_ALLOW_FILE_STORE=true; "
        "for a database file write tracking.uri=sqlite:///runs.db",
    ),
    (("tracking.uri=store/mlflow.db",), "a database file is tracking.uri=sqlite:///store/mlflow.db"),
    (("hydra.run.dir=",), "hydra.run.dir is empty: Hydra would write its files"),
    (
        ("optimizer_groups=[{match: c, optimizer: sgd}]",),
        "optimizer_groups[0].match 'c' matches none of the parameters of problem 'seed_linear' "
        "(the whole name must match): a, b",
    ),
    (
        ("optimizer_groups=[{match: a, optimizer: sgd},{match: '[ab]', optimizer: adam}]",),
        "parameter 'a' is matched by two groups: 'a' and '[ab]'",
    ),
    (("optimizer_groups=[{match: '(', optimizer: sgd}]",), "optimizer_groups[0].match '(' is not a regular expression"),
    (  # (without the library's sentence on configs from get_config(), which a command line has none of)
        ("optimizer_groups=[{match: a, optimizer: sgdd}]",),
        "optimizer_groups[0].optimizer: Unknown optimizer 'sgdd'. Did you mean 'sgd'? Known: adabelief, adadelta,",
    ),
    (("optimizer_groups=[{match: a}]",), "optimizer_groups[0] must be {match: <regular expression"),
    (
        ("optimizer_groups=[{match: a, optimizer: {name: sgd, momentum: 2}}]",),
        "optimizer_groups[0].optimizer: SGD: `momentum` must be",
    ),
    (("callbacks=[backup_and_restore]", "callbacks.backup_and_restore.backup_dir=blocker"), "blocker"),
    # a schedule starts from the optimizer's rate: its error named only initial_learning_rate, never set
    (
        ("schedule=cosine_decay", "optimizer.learning_rate=-1"),
        "optimizer.learning_rate=-1, the initial rate of the schedule: schedule: CosineDecay: "
        "`initial_learning_rate` must be a float >= 0",
    ),
    # problem.name=quadratic kept mlp_digits's arguments: "Quadratic: argument(s) not recognized: ..."
    (("problem.name=quadratic",), "problem.name=quadratic: a problem is chosen with problem=quadratic"),
    # another optimizer's argument: "Adam has no argument 'momentum'. Did you mean 'ema_momentum'?" misled
    (
        ("optimizer=adam", "optimizer.momentum=0.9"),
        "optimizer.momentum: Adam has no argument 'momentum'. It is an argument of muon, rmsprop, sgd: choose one of "
        "them with optimizer=NAME. Accepted arguments: learning_rate, beta_1,",
    ),
    (("optimizer=adam", "optimizer.beta1=0.9"), "Adam has no argument 'beta1'. Did you mean 'beta_1'?"),
    # a quoted boolean is a string: "must be true or false; received 'false'" said nothing more
    (
        ("trainer.progress_bar='false'",),
        "trainer.progress_bar must be true or false; received trainer.progress_bar='false' (a string: without the "
        "quotes it is a boolean)",
    ),
    (("tracking.detach='true'",), "received 'true' (a string: without the quotes it is a boolean)"),
    (("tracking.plots='False'",), "received 'False' (a string: without the quotes it is a boolean)"),
    (("optimizer=adam", "optimizer.amsgrad='false'"), "received amsgrad='false' (a string: without the quotes it is"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_before_anything_is_recorded(tmp_path, args, message):
    (tmp_path / "blocker").write_text("a file where a folder is needed")
    result = optlab(tmp_path, "problem=seed_linear", "trainer.epochs=2", *FAST, *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
    # no store, no run: only Hydra's own run folder, made before optlab is called
    assert {p.name for p in tmp_path.iterdir()} <= {".optlab", "blocker"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("hydra.run.dir=/proc/x",), "hydra.run.dir: cannot write in /proc"),
        (("hydra.run.dir=blocker/x",), "hydra.run.dir: cannot create a folder under"),
        (("-m", "hydra.sweep.dir=blocker/${now:%H}"), "hydra.sweep.dir: cannot create a folder under"),
    ],
)
def test_an_output_folder_hydra_cannot_create_is_one_line(tmp_path, args, message):
    (tmp_path / "blocker").write_text("a file where a folder is needed")
    result = optlab(tmp_path, "problem=seed_linear", "trainer.epochs=2", *args, *FAST)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


def test_a_callback_that_raises_is_one_line_and_the_run_keeps_its_metrics(tmp_path):
    args = (*RAISES_ON_NAN, *FAST)
    result = optlab(tmp_path, *args)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = [text for text in result.stderr.splitlines() if text.startswith("optlab:")]
    assert "callback TerminateOnNaN.on_train_batch_end failed: RuntimeError: NaN or Inf found in the loss" in line
    assert "is marked FAILED" in line
    log = Path(line.split("full traceback in ")[1].split(")")[0])
    assert log.is_file() and "Traceback" in log.read_text() and "raise RuntimeError" in log.read_text()
    client, (run,) = runs(tmp_path)
    assert run.info.status == "FAILED" and "TerminateOnNaN" in run.data.tags["error"]
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) >= 2  # what was recorded is kept

    full = optlab(tmp_path, *args, env={"HYDRA_FULL_ERROR": "1"})
    assert "Traceback" in full.stderr and "raise RuntimeError" in full.stderr


#: a run whose SIGTERM arrives inside a weak-reference callback (as it did inside SQLAlchemy's
#: collection of a connection), where Python drops what the signal handler raises
STRIKE = """
import os, signal, sys, weakref
import optlab.app.run as running

class Thing:
    pass

def strike(ref):
    os.kill(os.getpid(), signal.SIGTERM)
    sum(range(100_000))  # the handler runs here, inside the callback
"""
SIGNAL_IN_A_WEAKREF_CALLBACK = (
    STRIKE
    + """
from optlab.callbacks import Callback

class Strike(Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 50:
            thing = Thing()
            self.ref = weakref.ref(thing, strike)
            del thing

make = running.make_trainer
running.make_trainer = lambda conf, problem, opt, cbs, extra=(): make(conf, problem, opt, cbs, [*extra, Strike()])
from optlab.app.main import main
sys.argv = ["optlab", *sys.argv[1:]]
main()
"""
)


def test_a_signal_whose_exception_python_drops_still_stops_the_run(tmp_path, spawn):
    # seen in the probe: a SIGTERM handled inside a garbage-collection callback was lost,
    # training went on (to the test's timeout) and the run stayed RUNNING
    args = ["problem=quadratic", "trainer.epochs=100000000", *FAST]
    proc = spawn(
        [sys.executable, "-c", SIGNAL_IN_A_WEAKREF_CALLBACK, *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    _, (run,) = runs(tmp_path)
    assert run.info.status == "KILLED" and run.data.tags["error"] == "terminated (SIGTERM)"
    assert f"the MLflow run {run.info.run_id} is marked KILLED" in err


#: a SIGTERM before the run, inside a weak-reference callback (as inside numba's compiler, which calls
#: Python from C), where Python drops what the signal handler raises
SIGNAL_IN_A_CALLBACK_BEFORE_THE_RUN = (
    STRIKE
    + """
build = running.build

def building(conf):
    thing = Thing()
    ref = weakref.ref(thing, strike)
    del thing
    return build(conf)

running.build = building
from optlab.app.entry import main
sys.argv = ["optlab", *sys.argv[1:]]
main()
"""
)


def test_a_signal_whose_exception_python_drops_before_the_run_still_stops_the_command(tmp_path):
    # a fault probe: a SIGTERM during numba's compilation, inside a callback from C, was ignored:
    # the run went on and ended FINISHED, with exit status 0
    result = subprocess.run(
        [sys.executable, "-c", SIGNAL_IN_A_CALLBACK_BEFORE_THE_RUN, "problem=quadratic", "trainer.epochs=3", *FAST],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 143, result.stderr
    assert "optlab: terminated (SIGTERM) outside a run: nothing was being recorded" in result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    assert not (tmp_path / "mlflow.db").exists()


#: ``python -m optlab`` that sends itself the signal $SIGNAL while Hydra's configs are registered
SIGNAL_BEFORE_THE_RUN = """
import os, sys
import optlab.app.main as app

register = app.register_configs

def signalled():
    os.kill(os.getpid(), int(os.environ["SIGNAL"]))
    sum(range(100_000))  # the handler runs here
    register()

app.register_configs = signalled
from optlab.app.entry import main
main()
"""


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_before_the_run_exists_is_one_line_and_claims_nothing(tmp_path, spawn, signum, code):
    # a signal while Python imports, Hydra composes the config or the store is opened: before,
    # Ctrl-C printed a KeyboardInterrupt traceback and SIGTERM ended the process without a word
    args = ["problem=seed_linear", "trainer.epochs=5", *FAST]
    env = {**os.environ, "SIGNAL": str(int(signum))}
    command = [sys.executable, "-c", SIGNAL_BEFORE_THE_RUN, *args]
    proc = spawn(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=env)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "marked KILLED" not in err, err
    reason = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted (Ctrl-C)"
    assert err.strip() == f"optlab: {reason} outside a run: nothing was being recorded"
    assert not (tmp_path / "mlflow.db").exists()


#: ``python -m optlab -m ...`` that sends itself the signal $SIGNAL as the sweep starts, before its first job
SIGNAL_AS_A_SWEEP_STARTS = """
import os, sys
import optlab.app.sweep as sweeping

check = sweeping.check_jobs

def signalled(config):
    os.kill(os.getpid(), int(os.environ["SIGNAL"]))
    sum(range(100_000))  # the handler runs here
    check(config)

sweeping.check_jobs = signalled
from optlab.app.entry import main
main()
"""


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_sweep_stopped_before_its_first_job_says_nothing_was_recorded(tmp_path, spawn, signum, code):
    """It said runs were marked KILLED and named a folder to repeat in, which did not exist (found
    by a fault-injection probe, in every sweep stopped that early)."""
    args = ["-m", "optimizer=sgd,adam", "problem=seed_linear", "trainer.epochs=5", "tracking=none", *FAST]
    env = {**os.environ, "SIGNAL": str(int(signum))}
    proc = spawn(
        [sys.executable, "-c", SIGNAL_AS_A_SWEEP_STARTS, *args],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    reason = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted (Ctrl-C)"
    assert err.strip().splitlines()[-1] == f"optlab: sweep {reason} before its first job: nothing was run or recorded"
    assert "Traceback" not in err and sorted(p.name for p in tmp_path.iterdir()) == []


SWEEP_STOPS = [  # (who gets the signal, which, exit status)
    ("parent", signal.SIGTERM, 143),  # `kill <pid>`
    ("group", signal.SIGINT, 130),  # Ctrl-C in a terminal: every process of the sweep gets it
]  # SIGTERM to the whole group (a cluster scheduler's time limit): the SIGHUP test below, as SIGTERM


@pytest.mark.slow
@pytest.mark.parametrize(("to", "signum", "code"), SWEEP_STOPS, ids=[f"{t}-{s.name}" for t, s, _ in SWEEP_STOPS])
def test_a_signal_to_a_joblib_sweep_ends_its_workers_and_marks_their_runs(tmp_path, run_optlab, to, signum, code):
    # once, joblib killed the second worker while it was still closing its run, as soon as the
    # first worker ended: that run stayed RUNNING and its last metrics were lost
    proc = run_optlab(
        tmp_path,
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "problem=quadratic",
        "trainer.epochs=100000000",
        "optimizer=sgd,adam,rmsprop,adagrad",
        *FAST,
    )
    assert wait_for(lambda: len([r for r in runs(tmp_path)[1] if r.info.status == "RUNNING"]) == 2)
    time.sleep(1.0)  # both are training
    workers = _children(proc.pid)
    assert workers
    if to == "parent":
        proc.send_signal(signum)
    else:
        os.killpg(proc.pid, signum)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == code, err
    assert "hydra.sweep.dir=" in err and "Traceback" not in err
    assert err.count("is marked KILLED") == 2, err  # each worker says which run it marked
    assert wait_for(lambda: not any(_alive(pid) for pid in workers), 30), "workers left running"
    client, found = runs(tmp_path)
    assert sorted(r.info.status for r in found) == ["KILLED", "KILLED"]  # the two that had started
    for run in found:  # each kept its metrics, its last epochs included (max_points bounds them)
        assert len(client.get_metric_history(run.info.run_id, "train/loss")) >= 2


def test_a_terminal_that_closes_stops_the_run_as_sigterm_does(tmp_path):
    """A terminal that closes (an ssh session that drops) sends SIGHUP and answers every later write
    with EIO: the stop's message, written there, ended the command with a traceback nobody saw and
    exit status 1 (a pseudo-terminal probe). The run itself was kept, and is."""
    import fcntl
    import pty
    import termios

    from conftest import _die_with_parent

    master, terminal = pty.openpty()

    def controlled():  # a session of its own, whose controlling terminal is the pseudo-terminal
        _die_with_parent()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    args = ("problem=quadratic", "trainer.epochs=100000000", "tracking.detach=false", *FAST)
    proc = subprocess.Popen(
        [sys.executable, "-m", "optlab", *args],
        cwd=tmp_path,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
        preexec_fn=controlled,
    )
    os.close(terminal)
    try:
        said, reading = [], [True]
        reader = threading.Thread(target=_drain, args=(master, said, reading), daemon=True)  # (a full terminal blocks)
        reader.start()
        assert wait_for(lambda: [r.info.status for r in runs(tmp_path)[1]] == ["RUNNING"])
        time.sleep(0.2)  # (training: its first point is sent, its last and best at its end)
        reading.clear()
        reader.join()  # (a read in progress would hold the terminal open past its close)
        os.close(master)  # the terminal closes
        assert proc.wait(timeout=120) == 143, b"".join(said).decode(errors="replace")[-2000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    client, (run,) = runs(tmp_path)
    assert run.info.status == "KILLED" and run.data.tags["error"] == "hung up (SIGHUP)"
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) >= 2


def _drain(fd: int, into: list, reading: list) -> None:
    import select

    while reading:
        if select.select([fd], [], [], 0.1)[0]:
            into.append(os.read(fd, 65536))


@pytest.mark.slow
def test_a_closed_terminal_marks_a_joblib_sweeps_runs_killed(tmp_path, run_optlab):
    """SIGHUP to the group: the workers died at once and left their runs RUNNING. They now stop as on
    SIGTERM, which each turns it into: this is also SIGTERM to every process of the sweep (a cluster
    scheduler's time limit). (joblib's own resource tracker, which has no such handling, still dies and prints its
    traceback: what is recorded is asserted here, not the terminal's text.)"""
    proc = run_optlab(tmp_path, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "problem=quadratic",
                      "trainer.epochs=100000000", "optimizer=sgd,adam,rmsprop,adagrad", *FAST)  # fmt: skip
    assert wait_for(lambda: len([r for r in runs(tmp_path)[1] if r.info.status == "RUNNING"]) == 2)
    time.sleep(1.0)  # both are training
    workers = _children(proc.pid)
    os.killpg(proc.pid, signal.SIGHUP)
    _, err = proc.communicate(timeout=90)
    assert err.count("is marked KILLED") == 2, err
    assert wait_for(lambda: not any(_alive(pid) for pid in workers), 30), "workers left running"
    client, found = runs(tmp_path)
    assert sorted(r.info.status for r in found) == ["KILLED", "KILLED"]
    for run in found:
        assert len(client.get_metric_history(run.info.run_id, "train/loss")) >= 2


def test_a_stopped_sweep_repeated_in_its_folder_skips_the_finished_jobs(tmp_path, run_optlab):
    sweep = ".optlab/multirun/resume"
    args = ("-m", f"hydra.sweep.dir={sweep}", "problem=quadratic", "trainer.epochs=20,100000000", *FAST)
    proc = run_optlab(tmp_path, *args)
    assert wait_for(lambda: len(runs(tmp_path)[1]) == 2)  # job 0 finished, job 1 running
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 143, err
    assert "hydra.sweep.dir=" in err
    _, found = runs(tmp_path)
    assert sorted(r.info.status for r in found) == ["FINISHED", "KILLED"]

    again = run_optlab(tmp_path, *args)
    assert wait_for(lambda: len(runs(tmp_path)[1]) == 3)  # only job 1 ran again
    again.send_signal(signal.SIGTERM)
    out, err = again.communicate(timeout=90)
    assert "job 0 (problem=quadratic trainer.epochs=20 trainer.progress_bar=False) finished before; skipped" in out
    assert sorted(r.info.status for r in runs(tmp_path)[1]) == ["FINISHED", "KILLED", "KILLED"]


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rpartition(")")[2].split()[1]) == pid:
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_a_relative_sqlite_uri_works_and_an_in_memory_one_is_refused(tmp_path):
    # the README's own form for `mlflow ui`; a relative path once failed to become an artifact URI
    result = optlab(tmp_path, "problem=seed_linear", "trainer.epochs=3", "tracking.uri=sqlite:///rel.db", *FAST)
    assert result.returncode == 0, result.stderr
    (run,) = runs(tmp_path, db="rel.db")[1]
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    memory = optlab(tmp_path, "problem=seed_linear", "trainer.epochs=3", "tracking.uri=sqlite://", *FAST)
    assert memory.returncode == 2 and "in-memory database" in memory.stderr and "Traceback" not in memory.stderr


def test_a_backup_this_run_cannot_resume_from_is_an_error_before_anything_is_recorded(tmp_path):
    # seen in the probe (11 of 11): "callback BackupAndRestore.resume failed", exit 1, a FAILED run
    backup = ("callbacks=[backup_and_restore]", "callbacks.backup_and_restore.backup_dir=bk", *FAST)
    first = optlab(
        tmp_path,
        "problem=seed_linear",
        "trainer.epochs=5",
        *backup,
        "tracking=none",
        "callbacks.backup_and_restore.delete_checkpoint=false",
    )
    assert first.returncode == 0, first.stderr
    saved = (tmp_path / "bk" / "backup.npz").read_bytes()
    result = optlab(tmp_path, "problem=seed_linear", "trainer.epochs=5", *backup, "optimizer.learning_rate=0.5")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"optlab: error: callbacks.backup_and_restore: {Path('bk') / 'backup.npz'} was made by another run, with "
        "different settings: optimizer.learning_rate 0.001 (backup) vs 0.5 (this run). Resume with the same "
        "settings, or use another backup_dir (or delete the backup) to start afresh."
    )
    assert not (tmp_path / "mlflow.db").exists()  # nothing recorded
    assert (tmp_path / "bk" / "backup.npz").read_bytes() == saved


#: ``python -m optlab`` that gets SIGTERM while its run is being opened, then SIGINT while the
#: store marks it KILLED
TWO_SIGNALS_AS_THE_RUN_OPENS = """
import os, signal, sys
from mlflow.tracking import MlflowClient
from optlab.app import tracking

log_start, set_terminated = tracking.MlflowTracker._log_start, MlflowClient.set_terminated

def first_signal(self):
    os.kill(os.getpid(), signal.SIGTERM)
    sum(range(100_000))
    log_start(self)

def second_signal(self, *args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    sum(range(100_000))
    return set_terminated(self, *args, **kwargs)

tracking.MlflowTracker._log_start = first_signal
MlflowClient.set_terminated = second_signal
from optlab.app.entry import main
main()
"""


def test_two_signals_as_the_run_opens_still_mark_it_and_exit_with_the_first(tmp_path, spawn):
    # seen in the probe: a second signal before the run was being written exited at once and left
    # it RUNNING; SIGTERM then SIGINT ended with 130, the second signal's status
    args = ["problem=seed_linear", "trainer.epochs=5", *FAST]
    proc = spawn(
        [sys.executable, "-c", TWO_SIGNALS_AS_THE_RUN_OPENS, *args], cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err, err
    _, (run,) = runs(tmp_path)
    assert run.info.status == "KILLED", err
    assert "optlab: terminated (SIGTERM)" in err and "interrupted (Ctrl-C)" not in err


#: ``python -m optlab`` whose run is stopped by SIGTERM; Python's shutdown, if it ran, would be
#: hit by a second signal with its handlers reset (as Python resets them before its last collection)
STOPPED_THEN_EXITING = """
import atexit, os, signal, sys, time
import optlab.app.run as running
from optlab.callbacks import Callback

class Stop(Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 3:
            os.kill(os.getpid(), signal.SIGTERM)

def second_signal_during_shutdown():
    print("python's shutdown ran", file=sys.stderr, flush=True)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(1)

atexit.register(second_signal_during_shutdown)
make = running.make_trainer
running.make_trainer = lambda conf, problem, opt, cbs, extra=(): make(conf, problem, opt, cbs, [*extra, Stop()])
from optlab.app.entry import main
main()
"""


def test_after_a_stop_python_shutting_down_does_not_die_of_a_second_signal(tmp_path, spawn):
    # the re-probe (35 of 48 pairs): a second signal during the seconds Python spends shutting down
    # (collecting MLflow's objects, its handlers reset) ended the process with that signal's status
    # (-2, -15); and CI once saw Python abort there (-6) with a store writer still in SQLite. Once a
    # stopped run is written and reported, optlab exits without Python's shutdown.
    args = ["problem=seed_linear", "trainer.epochs=100000", "tracking=none", *FAST]
    proc = spawn([sys.executable, "-c", STOPPED_THEN_EXITING, *args], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "optlab: terminated (SIGTERM)" in err and "python's shutdown ran" not in err


def test_a_sweep_flag_after_the_overrides_still_makes_a_sweep(tmp_path):
    # the re-probe: `python -m optlab problem=... -m x=1,2` printed Hydra's 8-line usage message
    result = optlab(tmp_path, "problem=seed_linear", "trainer.epochs=2", "tracking=none", *FAST, "-m", "seed=0,1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("adam on seed_linear: 2 steps") == 2


def test_optlabs_own_warnings_are_one_line(tmp_path):
    # the re-probe: a backup holding a callback this run does not have gave Python's two-line
    # warning (file:line: UserWarning: ... and the source line)
    backup = ("callbacks.backup_and_restore.backup_dir=bk", "problem=linear_regression", "tracking=none", *FAST)
    first = optlab(
        tmp_path, "trainer.epochs=3", "callbacks=[backup_and_restore,early_stopping]", *backup,
        "callbacks.backup_and_restore.delete_checkpoint=false",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    again = optlab(tmp_path, "trainer.epochs=4", "callbacks=[backup_and_restore]", *backup)
    assert again.returncode == 0, again.stderr
    assert again.stderr.strip() == (
        f"optlab: warning: {Path('bk') / 'backup.npz'} holds the state of callbacks this run does not have: "
        "['EarlyStopping']; it is ignored"
    )


def test_a_run_of_no_epoch_says_it_took_no_step(tmp_path):
    # trainer.epochs=0 warned "metric 'loss' was not logged (logged: )"
    result = optlab(tmp_path, "trainer.epochs=0", "problem=rosenbrock", "tracking=none", *FAST)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "optlab: warning: the run took no step (trainer.epochs=0): nothing was logged"


#: ``python -m optlab`` on a full disk: the store takes no metric, and the file that would keep them cannot be written
RECORD_LOST = """
import errno, sys
from mlflow.tracking import MlflowClient
import optlab.app.tracking as tracking

log_batch = MlflowClient.log_batch

def refused(self, run_id, metrics=(), **kwargs):
    if metrics:
        raise OSError(errno.ENOSPC, "No space left on device")
    return log_batch(self, run_id, metrics=metrics, **kwargs)

def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")

MlflowClient.log_batch = refused
tracking.write_text_atomic = full
from optlab.app.main import main
sys.argv = ["optlab", *sys.argv[1:]]
main()
"""


def test_a_run_whose_metrics_are_neither_stored_nor_kept_exits_with_an_error(tmp_path):
    """A fault-injection probe filled the disk: the run's metrics were lost and it exited 0, with a
    warning a script or a sweep does not read."""
    from cli_helpers import script

    done = script(tmp_path, RECORD_LOST, "problem=rosenbrock", "trainer.epochs=5", "tracking.flush_timeout=5", *FAST)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "warning: " not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("optlab: error: the run trained to its end, but ")
    assert "could not be written to " in last and "nor kept locally (" in last and "No space left on device" in last
    assert "adam on rosenbrock: 5 steps" in done.stdout  # what it trained is said all the same


@pytest.mark.parametrize("module", ["optlab", "optlab.compare", "optlab.study", "optlab.problems"])
def test_a_clones_folder_in_the_working_directory_is_said_in_one_line(tmp_path, module):
    """From the folder that holds a clone, Python takes the clone's ``optlab/`` for the package (an
    editable install is found after it): each command says so instead of an ImportError's traceback."""
    for part in ("optlab/plugins/optlab-adabelief", "optlab/docs", "optlab/tests"):  # (a clone's folders)
        (tmp_path / part).mkdir(parents=True)
    code = "import optlab; print(getattr(optlab, '__file__', None))"
    found = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    if found.stdout.strip() != "None":  # an install found before the working directory (not an editable one)
        pytest.skip("this installation's optlab is found before the working directory's folder")
    done = optlab(tmp_path, module=module)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f"optlab: error: Python takes the folder {tmp_path / 'optlab'} for the optlab package (a clone's folder, "
        "in the working directory): run the command from another folder\n"
    )
