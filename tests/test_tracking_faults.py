"""Unusable tracking stores found before training, in one line; sqlite stores created atomically.

Each fault is made for real (a port nobody listens on, random bytes, a damaged page, a store
whose creation was interrupted or killed) and the message, the time it took and what is left
on disk are checked.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cli_helpers import optlab as run_optlab

import optlab
from optlab.app import deliver, tracking
from optlab.callbacks import Callback
from optlab.trainer import Trainer

pytestmark = pytest.mark.slow

FAST = ["problem=rosenbrock", "trainer.epochs=5", "trainer.progress_bar=false"]
KILL_AT_MIGRATION = 30  # of MLflow 3.17's 67 schema migrations


def optlab_cli(cwd, *args, timeout=120):
    return subprocess.run(  # run() kills the child if it times out
        [sys.executable, "-m", "optlab", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "WARNING" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("optlab: error: ")
    return lines[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed on return: nothing listens there


def tracker_for(uri, experiment="tests", output_dir=None):
    return tracking.MlflowTracker(uri, experiment, {"x": 1}, {}, "fault-run", "auto", output_dir=output_dir)


def start_error(uri, **kwargs) -> str:
    tracker = tracker_for(uri, **kwargs)
    with pytest.raises(tracking.TrackingError) as info:
        tracker.start()
    message = str(info.value)
    assert "\n" not in message
    assert tracker.run_id is None
    tracker.close("FAILED")
    assert tracker.status is None
    return message


def finished_run(uri):
    """One short tracked run into ``uri``; returns its run id."""
    tracker = tracker_for(uri)
    tracker.start()
    Trainer(optlab.problems.get("rosenbrock"), optlab.optimizers.Adam(), [tracker], epochs=20).fit()
    tracker.close("FINISHED")
    assert tracker.status == "FINISHED"
    return tracker.run_id


def runs_in(path: Path) -> int:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{path}")
    return len(client.search_runs([e.experiment_id for e in client.search_experiments()]))


class StopAtMigration(logging.Handler):
    """Raises ``exception`` when alembic announces its ``at``-th migration (as a Ctrl-C would strike there)."""

    def __init__(self, at, exception=KeyboardInterrupt):
        super().__init__()
        self.at, self.exception, self.seen = at, exception, 0

    def emit(self, record):
        if record.getMessage().startswith("Running upgrade"):
            self.seen += 1
            if self.seen == self.at:
                raise self.exception


@pytest.fixture
def no_cached_store(tmp_path_factory, monkeypatch):
    """optlab's cache in a new empty folder (outside the test's own): the next store is built by
    MLflow's schema steps, as the first store on a machine is."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache / "optlab"


@pytest.fixture
def interrupt_migration(no_cached_store):
    logger = logging.getLogger("alembic.runtime.migration")
    handler = StopAtMigration(KILL_AT_MIGRATION)
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


# -- pre-flight ------------------------------------------------------------------------------------


def test_a_dead_server_is_reported_in_one_line_within_seconds(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.perf_counter()
    message = start_error(uri)
    seconds = time.perf_counter() - start
    assert seconds < 5, seconds  # MLflow's client alone retried for about 4 minutes
    assert message.startswith(f"tracking server {uri} is unreachable (Connection refused)")
    assert "tracking=none" in message and "tracking.uri=" in message
    assert os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") is None  # the limits end with the tracker

    result = optlab_cli(tmp_path, *FAST, f"tracking.uri={uri}")
    assert f"tracking server {uri} is unreachable" in one_line_error(result)
    assert result.stdout == "" and not (tmp_path / "mlflow.db").exists()  # nothing trained, nothing written


def test_an_unknown_scheme_lists_the_supported_ones(tmp_path):
    message = start_error("mlfow://host:5000")
    assert message.startswith("tracking.uri mlfow://host:5000: MLflow has no store for scheme 'mlfow'")
    for scheme in ("sqlite", "http", "https", "postgresql", "file"):
        assert scheme in message.split("supported schemes: ", 1)[1]


def test_an_empty_experiment_name_is_one_line(tmp_path):
    line = one_line_error(optlab_cli(tmp_path, *FAST, "tracking.experiment="))
    assert "tracking.experiment must be a non-empty name" in line
    assert not (tmp_path / "mlflow.db").exists()


def test_a_folder_that_cannot_be_written_is_reported(tmp_path):
    if os.geteuid() == 0:  # root writes through permissions: /sys is read-only even for root
        folder = Path("/sys")
        try:
            (folder / "optlab-probe").touch()
            pytest.skip("/sys is writable here")
        except OSError:
            pass
    else:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    start = time.perf_counter()
    message = start_error(uri)
    assert time.perf_counter() - start < 10  # MLflow alone: 105 s of retries, then a traceback
    assert message.startswith(f"tracking store {uri}: its folder {folder} is not writable (")
    assert not (folder / "mlflow.db").exists()


def test_random_bytes_are_not_taken_for_a_store_and_are_left_alone(tmp_path):
    garbage = os.urandom(20_000)
    (tmp_path / "mlflow.db").write_bytes(garbage)
    line = one_line_error(optlab_cli(tmp_path, *FAST))
    assert f"{tmp_path / 'mlflow.db'} is not an SQLite database, so not an MLflow store; move it away" in line
    assert (tmp_path / "mlflow.db").read_bytes() == garbage
    assert sorted(p.name for p in tmp_path.iterdir()) == [".optlab", "mlflow.db"]


def test_a_store_with_a_damaged_page_is_reported_and_left_alone(tmp_path):
    db = tmp_path / "mlflow.db"
    finished_run(f"sqlite:///{db}")
    with sqlite3.connect(db) as connection:
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        root = connection.execute("SELECT rootpage FROM sqlite_master WHERE name = 'metrics'").fetchone()[0]
    connection.close()
    with open(db, "r+b") as file:  # the metrics table's first page overwritten with noise
        file.seek(page_size * (root - 1))
        file.write(os.urandom(page_size))
    before = db.read_bytes()
    message = start_error(f"sqlite:///{db}")
    assert f"{db} is damaged (sqlite: " in message and ".recover" in message
    assert db.read_bytes() == before


def test_an_sqlite_file_of_something_else_is_refused(tmp_path):
    db = tmp_path / "notes.db"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE notes (text)")
    connection.close()
    before = db.read_bytes()
    assert "is an SQLite database but not an MLflow store" in start_error(f"sqlite:///{db}")
    assert db.read_bytes() == before


def test_a_deleted_experiment_is_named_with_the_way_back(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    finished_run(uri)
    client = MlflowClient(tracking_uri=uri)
    client.delete_experiment(client.get_experiment_by_name("tests").experiment_id)
    message = start_error(uri)
    assert "experiment 'tests' is deleted; restore it with `mlflow experiments restore --experiment-id" in message


def test_an_experiment_the_store_will_not_create_is_one_line(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    def refuse(self, name, **kwargs):
        raise RuntimeError("permission denied for experiments")

    monkeypatch.setattr(MlflowClient, "create_experiment", refuse)
    message = start_error(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert "cannot create experiment 'tests' (permission denied for experiments)" in message


# -- creating a store --------------------------------------------------------------------------------


def test_a_new_store_is_created_whole_and_its_default_experiment_points_where_mlflow_puts_it(tmp_path):
    from mlflow.tracking import MlflowClient

    db = tmp_path / "store" / "mlflow.db"
    run_id = finished_run(f"sqlite:///{db}")
    assert sorted(p.name for p in db.parent.iterdir()) == ["mlartifacts", "mlflow.db"]  # no temporary left
    default = MlflowClient(tracking_uri=f"sqlite:///{db}").get_experiment("0")
    assert default.artifact_location == str(Path.cwd() / "mlruns" / "0")  # MLflow's ./mlruns, not the temp name
    assert ".creating-" not in default.artifact_location
    assert oct(db.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert runs_in(db) == 1 and run_id


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_empty_file_becomes_a_store_in_place_at_once(tmp_path, monkeypatch):
    from optlab.app import store

    db = tmp_path / "mlflow.db"
    db.touch()
    db.chmod(0o640)
    inode = db.stat().st_ino
    holder = sqlite3.connect(db)  # a program that has the empty file open (sqlite3 mlflow.db, a script)
    sleeps = []
    monkeypatch.setattr(store.time, "sleep", sleeps.append)  # the wait for a file that may still change
    try:
        finished_run(f"sqlite:///{db}")
        assert holder.execute("SELECT name FROM experiments ORDER BY experiment_id").fetchall() == [
            ("Default",),
            ("tests",),
        ]  # it sees the store: the same file, filled, not another one moved over it
    finally:
        holder.close()
    assert sleeps == []  # 12.4 s before: 2 s of waiting for the empty file to change, then the schema
    assert db.stat().st_ino == inode and oct(db.stat().st_mode & 0o777) == oct(0o640)
    assert runs_in(db) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlartifacts", "mlflow.db"]


def _schema_and_rows(db: Path) -> tuple:
    with sqlite3.connect(db) as connection:
        schema = sorted(connection.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall(), key=str)
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = {t: sorted(map(repr, connection.execute(f'SELECT * FROM "{t}"').fetchall())) for t in tables}
    connection.close()
    return schema, rows


def test_filling_an_empty_file_copies_the_whole_store_mlflow_created(tmp_path, monkeypatch):
    import shutil

    from optlab.app import store

    filled, template = tmp_path / "filled.db", tmp_path / "template.db"
    filled.touch()
    fill = store.fill_empty

    def keep_the_template(path, built, name):
        shutil.copyfile(built, template)  # the store MLflow built (closed and fsynced by now)
        return fill(path, built, name)

    monkeypatch.setattr(store, "fill_empty", keep_the_template)
    with store.store_lock(f"sqlite:///{filled}"):
        store.prepare_sqlite(f"sqlite:///{filled}")
    schema, rows = _schema_and_rows(filled)
    assert len(schema) > 100 and rows["experiments"] and rows["alembic_version"]  # a real store, not two empty ones
    assert (schema, rows) == _schema_and_rows(template)  # every table, index and trigger, every row
    with sqlite3.connect(filled) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    connection.close()


def test_a_file_written_to_while_the_store_is_built_is_never_replaced(tmp_path, monkeypatch):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    db = tmp_path / "mlflow.db"
    db.touch()
    build = SqlAlchemyStore.__init__

    def meanwhile(self, db_uri, *args, **kwargs):
        build(self, db_uri, *args, **kwargs)
        if ".creating-" in db_uri and not (tmp_path / "written").exists():  # optlab's store is built: then
            with sqlite3.connect(db) as other:  # another program writes to the empty file
                other.execute("CREATE TABLE notes (text)")
                other.execute("INSERT INTO notes VALUES ('mine')")
            other.close()
            (tmp_path / "written").touch()

    monkeypatch.setattr(SqlAlchemyStore, "__init__", meanwhile)
    message = start_error(f"sqlite:///{db}")
    assert "is an SQLite database but not an MLflow store" in message  # judged again, as found
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT text FROM notes").fetchall() == [("mine",)]
        assert [r[0] for r in connection.execute("SELECT name FROM sqlite_master")] == ["notes"]
    connection.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "written"]  # no temporary left


def test_an_interrupted_creation_leaves_nothing_and_the_next_run_works(tmp_path, interrupt_migration, no_cached_store):
    db = tmp_path / "mlflow.db"
    tracker = tracker_for(f"sqlite:///{db}")
    with pytest.raises(KeyboardInterrupt):
        tracker.start()
    assert interrupt_migration.seen == KILL_AT_MIGRATION  # it struck midway through the schema
    assert tracker.status is None and tracker.run_id is None
    assert list(tmp_path.iterdir()) == []  # neither a half-made mlflow.db nor a temporary file
    assert list(no_cached_store.iterdir()) == []  # nor a half-made empty store in the cache
    interrupt_migration.at = -1
    finished_run(f"sqlite:///{db}")
    assert runs_in(db) == 1


def _experiments(db: Path) -> list:
    with sqlite3.connect(db) as connection:
        found = connection.execute(
            "SELECT experiment_id, name, artifact_location, lifecycle_stage, workspace, creation_time FROM experiments"
        ).fetchall()
    connection.close()
    return found


def _clauses(schema: list) -> list:
    return [(*row[:3], sorted(line.strip().rstrip(",") for line in (row[3] or "").splitlines())) for row in schema]


def test_a_store_made_from_the_cached_empty_store_is_the_store_mlflow_makes(tmp_path, no_cached_store, monkeypatch):
    """Every first run in a folder ran MLflow's ~70 schema steps (1-1.5 s); the schema now comes from
    an empty store kept in optlab's cache, and MLflow adds the folder's Default experiment to the copy."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from optlab.app import store

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # the Default experiment's artifacts: ./mlruns from here, as MlflowClient has it
    before = int(time.time() * 1000)
    first, second, reference = (tmp_path / name / "mlflow.db" for name in ("first", "second", "reference"))
    for db in (first, second, reference):
        db.parent.mkdir()
    assert store.create_sqlite_store(first)  # makes the cache's empty store, then copies it
    (template,) = no_cached_store.iterdir()
    assert template.name.startswith("mlflow-") and _experiments(template) == []
    made = template.stat().st_mtime_ns
    assert store.create_sqlite_store(second)  # copies it
    assert template.stat().st_mtime_ns == made
    SqlAlchemyStore(f"sqlite:///{reference}", "./mlruns").engine.dispose()  # MLflow alone
    schema, rows = _schema_and_rows(reference)
    assert len(schema) > 100 and rows["alembic_version"] and rows["workspaces"]
    ((_, name, location, stage, workspace, _),) = _experiments(reference)
    assert (name, location) == ("Default", str(work / "mlruns" / "0"))
    for db in (first, second):
        # every table, index and trigger; each statement's clauses in any order (MLflow's own
        # migrations list a table's CHECK constraints in an order that varies from store to store)
        assert _clauses(_schema_and_rows(db)[0]) == _clauses(schema)
        assert {t: r for t, r in _schema_and_rows(db)[1].items() if t != "experiments"} == {
            t: r for t, r in rows.items() if t != "experiments"
        }
        ((number, *same, made_at),) = _experiments(db)
        assert (number, *same) == (0, name, location, stage, workspace) and made_at >= before  # made now, here
        with sqlite3.connect(db) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        connection.close()
    finished_run(f"sqlite:///{second}")
    assert runs_in(second) == 1 and _experiments(template) == []  # the cache's store is never written to


def _faulty(template: Path, fault: str) -> None:
    """What a fault-injection probe did to the cached store (each used in every new store before)."""
    if fault == "damaged":
        template.write_bytes(b"SQLite format 3\x00" + bytes(4000))
    elif fault == "used":  # someone opened it as a store: their run is in it
        finished_run(f"sqlite:///{template}")
        assert runs_in(template) == 1
    else:
        with sqlite3.connect(template) as connection:
            connection.execute(
                {
                    "a table dropped": "DROP TABLE metrics",
                    "a row added": "INSERT INTO registered_models (name) VALUES ('someone-elses-model')",
                    "a trigger added": "CREATE TRIGGER gone AFTER INSERT ON metrics BEGIN DELETE FROM metrics; END",
                }[fault]
            )
        connection.close()


UNSOUND = {  # what is wrong, as the warning says it
    "damaged": "is damaged",
    "used": "its table runs holds 1 row, where an empty store holds 0",
    "a table dropped": "its schema changed since it was made",
    "a row added": "its table registered_models holds 1 row, where an empty store holds 0",
    "a trigger added": "its schema changed since it was made",
}


@pytest.mark.parametrize("fault", list(UNSOUND))
def test_an_unsound_cached_store_is_set_aside_not_copied_nor_replaced(tmp_path, no_cached_store, fault):
    from optlab.app import store

    template = store.empty_store()
    assert template is not None and template.parent == no_cached_store
    _faulty(template, fault)
    before = template.read_bytes()
    db = tmp_path / "mlflow.db"
    with pytest.warns(UserWarning, match="was not sound .* it is kept as .*, and a new one is made") as warned:
        assert store.create_sqlite_store(db)
    assert UNSOUND[fault] in str(warned[0].message), str(
        warned[0].message
    )  # (it said only "damaged, changed, or used")
    # the new store is whole: its schema, its Default experiment and nothing else
    assert _clauses(_schema_and_rows(db)[0]) == _clauses(_schema_and_rows(template)[0])
    _, rows = _schema_and_rows(db)
    assert {t for t, r in rows.items() if r} == {"alembic_version", "workspaces", "experiments"}
    assert _experiments(template) == [] and not [p for p in no_cached_store.iterdir() if ".creating-" in p.name]
    (aside,) = [p for p in no_cached_store.iterdir() if ".unsound-" in p.name]  # kept, byte for byte
    assert aside.name.startswith(template.name) and aside.read_bytes() == before
    finished_run(f"sqlite:///{db}")
    assert runs_in(db) == 1


def test_a_cached_store_changed_as_copied_or_not_to_be_had_is_done_without(tmp_path, no_cached_store, monkeypatch):
    import fcntl
    import shutil

    from optlab.app import store

    assert store.empty_store() is not None
    # the cached store used as a store between its check and its copy: the copy is checked too
    copy = shutil.copyfile

    def copied_then_used(source, target):
        copy(source, target)
        finished_run(f"sqlite:///{target}")

    monkeypatch.setattr(shutil, "copyfile", copied_then_used)
    db = tmp_path / "raced" / "mlflow.db"
    db.parent.mkdir()
    assert store.create_sqlite_store(db)
    monkeypatch.setattr(shutil, "copyfile", copy)
    assert runs_in(db) == 0 and [e[1] for e in _experiments(db)] == ["Default"]  # built from scratch instead
    # another process holds the cache's lock (a first run stopped with Ctrl-Z as it builds it): the
    # others waited on it without end; now they wait CACHE_WAIT s, then do without
    (template,) = no_cached_store.iterdir()
    template.rename(tmp_path / "elsewhere.db")
    monkeypatch.setattr(store, "CACHE_WAIT", 0.3)
    holder = os.open(no_cached_store, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        started = time.monotonic()
        assert store.empty_store() is None and time.monotonic() - started < 30
        db = tmp_path / "waited" / "mlflow.db"
        db.parent.mkdir()
        assert store.create_sqlite_store(db) and [e[1] for e in _experiments(db)] == ["Default"]
    finally:
        os.close(holder)
    # a store in the cache folder reached by another path (a link; a bind mount alike): made without it
    (tmp_path / "link").symlink_to(no_cached_store)
    assert store.create_sqlite_store(tmp_path / "link" / "mlflow.db")
    # temporaries are optlab's by their whole name: a user's files of like names are left alone
    mine = [no_cached_store / ".mlflow-my-empty.db.creating-backup", tmp_path / ".mlflow.db.creating-backup"]
    for path in mine:
        path.write_text("mine")
    assert store.empty_store() is not None
    store.create_sqlite_store(tmp_path / "mlflow.db")
    assert all(path.read_text() == "mine" for path in mine)
    # a cache that cannot be a folder: the store is made by MLflow's schema steps, as before
    (tmp_path / "a file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a file"))
    assert store.empty_store() is None
    db = tmp_path / "without" / "mlflow.db"
    db.parent.mkdir()
    assert store.create_sqlite_store(db)
    finished_run(f"sqlite:///{db}")
    assert runs_in(db) == 1


def test_a_store_left_half_created_is_named_with_what_to_do(tmp_path, interrupt_migration):
    # what optlab before atomic creation (MLflow creating the store in place) left after a Ctrl-C
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    db = tmp_path / "mlflow.db"
    with pytest.raises(KeyboardInterrupt):
        SqlAlchemyStore(f"sqlite:///{db}", str(tmp_path / "mlruns"))
    interrupt_migration.at = -1
    before = db.read_bytes()
    message = start_error(f"sqlite:///{db}")
    assert f"{db} was left half-created (schema " in message
    assert "holds no runs: move it away and run again" in message
    assert db.read_bytes() == before
    db.rename(tmp_path / "mlflow.db.broken")  # what the message says to do
    finished_run(f"sqlite:///{db}")
    assert runs_in(db) == 1


def test_a_store_of_an_older_schema_with_runs_is_sent_to_mlflow_db_upgrade(tmp_path):
    db = tmp_path / "mlflow.db"
    finished_run(f"sqlite:///{db}")
    with sqlite3.connect(db) as connection:  # as if written by an older MLflow
        connection.execute("UPDATE alembic_version SET version_num = '0a8213491aaa'")
    connection.close()
    message = start_error(f"sqlite:///{db}")
    assert "has MLflow schema 0a8213491aaa, MLflow" in message
    assert f"back it up, then upgrade it with `mlflow db upgrade sqlite:///{db}`" in message


KILLED_CREATION = textwrap.dedent(
    """
    import logging, sys, time
    from optlab.app import tracking

    class Announce(logging.Handler):
        seen = 0
        def emit(self, record):
            if record.getMessage().startswith("Running upgrade"):
                Announce.seen += 1
                if Announce.seen == {at}:
                    print("migrating", flush=True)
                    time.sleep(120)  # killed here

    logger = logging.getLogger("alembic.runtime.migration")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(Announce())
    tracker = tracking.MlflowTracker(sys.argv[1], "tests", {{}}, {{}}, "killed", "auto")
    tracker.start()
    print("created", flush=True)
    """
)


def test_the_cache_is_where_xdg_says_and_a_store_is_made_without_one(tmp_path, monkeypatch):
    import threading

    from optlab.app import store

    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # invalid in XDG's terms: ignored, not made here
    assert store.cache_folder() == home / ".cache" / "optlab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv("HOME")
    import mlflow.environment_variables  # noqa: F401  (MLflow reads the home as it is imported)

    monkeypatch.setattr(Path, "home", classmethod(lambda cls: (_ for _ in ()).throw(RuntimeError("no home"))))
    assert store.cache_folder() is None and store.empty_store() is None
    assert store.create_sqlite_store(work / "mlflow.db")  # MLflow's own schema steps
    assert sorted(p.name for p in work.iterdir()) == ["mlflow.db"]
    # a store in the cache folder itself, under that folder's lock: made without waiting on it
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    inside = tmp_path / "cache" / "optlab" / "mlflow.db"
    made = []
    maker = threading.Thread(target=lambda: made.append(finished_run(f"sqlite:///{inside}")), daemon=True)
    maker.start()
    maker.join(120)
    assert made and runs_in(inside) == 1


def test_a_creation_killed_outright_leaves_no_store_and_the_next_run_cleans_up(tmp_path, no_cached_store):
    db = tmp_path / "mlflow.db"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_CREATION.format(at=KILL_AT_MIGRATION), f"sqlite:///{db}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # (its cache is the fixture's, empty: it builds the cache's empty store, and is killed doing it)
    try:
        line = child.stdout.readline()  # blocks until the child is midway through the schema (or dies)
        assert line == "migrating\n", child.stderr.read() if child.poll() is not None else line
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stdout.close()
        child.stderr.close()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert "mlflow.db" not in left
    assert len(left) == 1 and left[0].startswith(".mlflow.db.creating-")  # SIGKILL: no cleanup possible
    (cached,) = no_cached_store.iterdir()
    assert cached.name.startswith(".mlflow-") and ".creating-" in cached.name  # the cache's, half-made
    finished_run(f"sqlite:///{db}")  # under the store lock: a temporary there belongs to a dead creator
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlartifacts", "mlflow.db"]
    assert runs_in(db) == 1
    (cached,) = no_cached_store.iterdir()  # the same under the cache's lock, and the empty store made whole
    assert cached.name.startswith("mlflow-") and cached.name.endswith("-empty.db")


SLOW_FOREIGN_CREATION = textwrap.dedent(
    """
    import logging, sys, time
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    class Slow(logging.Handler):
        seen = 0
        def emit(self, record):
            if record.getMessage().startswith("Running upgrade"):
                Slow.seen += 1
                if Slow.seen == 10:
                    print("migrating", flush=True)
                time.sleep(0.05)

    logger = logging.getLogger("alembic.runtime.migration")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(Slow())
    SqlAlchemyStore(sys.argv[1], sys.argv[2])  # in place, without optlab's lock: as `mlflow ui` would
    print("created", flush=True)
    """
)


def test_a_store_another_program_is_creating_is_waited_for_not_replaced(tmp_path):
    db = tmp_path / "mlflow.db"
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_FOREIGN_CREATION, f"sqlite:///{db}", str(tmp_path / "mlruns")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline()
        assert line == "migrating\n", child.stderr.read() if child.poll() is not None else line
        inode = db.stat().st_ino
        finished_run(f"sqlite:///{db}")  # meanwhile: waits for the schema to be complete
        assert child.stdout.readline() == "created\n"
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stdout.close()
        child.stderr.close()
    assert db.stat().st_ino == inode  # the other program's file, not one put in its place
    assert runs_in(db) == 1


def _start_in_process(uri, results):
    tracker = tracking.MlflowTracker(uri, "tests", {}, {}, "parallel", "auto")
    try:
        tracker.start()
        tracker.close("FINISHED")
        results.put(tracker.status)
    except BaseException as exc:
        results.put(repr(exc))


def test_parallel_first_runs_in_one_folder_share_one_store(tmp_path):
    import multiprocessing

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_start_in_process, args=(uri, results)) for _ in range(3)]
    try:
        for worker in workers:
            worker.start()
        outcomes = sorted(results.get(timeout=180) for _ in workers)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
            worker.join()
    assert outcomes == ["FINISHED"] * 3
    assert runs_in(tmp_path / "mlflow.db") == 3
    assert {"mlflow.db"} <= {p.name for p in tmp_path.iterdir()} <= {"mlartifacts", "mlflow.db"}  # nothing else


# -- a real server that dies mid-run -----------------------------------------------------------------

SERVER = "import sys\nfrom mlflow.server import app\napp.run(host='127.0.0.1', port=int(sys.argv[1]))"

# A server that commits each metric write, then answers only after the seconds written in the file
# sys.argv[2] (if it exists): the client has given up by then, though the metrics are stored.
LATE_ANSWERS = textwrap.dedent(
    """
    import os, sys, time
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    committed = SqlAlchemyStore.log_batch

    def log_batch(self, run_id, metrics, params, tags):
        committed(self, run_id, metrics, params, tags)
        if metrics and os.path.exists(sys.argv[2]):
            time.sleep(float(open(sys.argv[2]).read()))

    SqlAlchemyStore.log_batch = log_batch
    from mlflow.server import app
    app.run(host="127.0.0.1", port=int(sys.argv[1]))
    """
)


class MlflowServer:
    """MLflow's tracking server (its Flask app, one process: up in seconds) on a free port, over a sqlite store."""

    def __init__(self, folder: Path, script: str = SERVER, *args: str):
        self.script, self.args = script, args
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "_MLFLOW_SERVER_FILE_STORE": f"sqlite:///{folder / 'server.db'}",
            "_MLFLOW_SERVER_ARTIFACT_ROOT": str(folder / "server-artifacts"),
        }
        self.process = None

    def start(self, timeout=120):
        import urllib.request

        self.process = subprocess.Popen(
            [sys.executable, "-c", self.script, str(self.port), *self.args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "the MLflow server exited"
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=1).read()
                # its store is made on the first real request (sqlite migrations: seconds on a busy
                # machine, more than optlab's 5 s request timeout): make it here, not in the test
                search = f"{self.uri}/api/2.0/mlflow/experiments/search?max_results=1"
                urllib.request.urlopen(search, timeout=max(1.0, deadline - time.monotonic())).read()
                return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("the MLflow server did not start")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait()


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()  # always: a failing test leaves no server behind


class KillServerAt(Callback):
    """Kills the tracking server at the end of epoch ``epoch``, once the writer has delivered something."""

    def __init__(self, server, tracker, epoch):
        super().__init__()
        self.server, self.tracker, self.epoch = server, tracker, epoch
        self.killed_at = None

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            self.tracker._hand_over()  # what has gathered so far goes to the writer now
            deadline = time.monotonic() + 60
            while self.tracker._writer.written == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert self.tracker._writer.written > 0, "the server took nothing before it was killed"
            self.server.stop()
            self.killed_at = time.perf_counter()


def test_a_server_killed_mid_run_neither_stalls_training_nor_loses_a_metric(tmp_path, mlflow_server, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setattr(tracking, "FLUSH_SECONDS", 0.2)
    monkeypatch.setattr(tracking, "RETRY_DELAYS", (0.05, 0.1, 0.2))
    epochs = 3000
    tracker = tracking.MlflowTracker(
        mlflow_server.uri, "tests", {"x": 1}, {}, "server-run", 1, flush_timeout=3.0, output_dir=tmp_path / "run"
    )
    tracker.start()
    killer = KillServerAt(mlflow_server, tracker, epoch=1000)
    trainer = Trainer(
        optlab.problems.get("quadratic"), optlab.optimizers.SGD(learning_rate=0.01), [tracker, killer], epochs=epochs
    )
    trainer.fit()
    after_kill = time.perf_counter() - killer.killed_at
    start = time.perf_counter()
    tracker.close("FINISHED")
    closing = time.perf_counter() - start
    assert after_kill < 30  # 2,000 epochs with a dead store; MLflow's client alone would retry each write for minutes
    assert closing < 30  # flush_timeout 3 s + status 5 s, against minutes of MLflow's own retries
    assert tracker.status is None  # the server is gone: the status is kept, with the metrics
    written = tracker._writer.written
    # per epoch: the loss and 2 metrics; the constant rate once; the summary at the end
    assert tracker.metrics_logged > 3 * epochs + 1
    assert 0 < written and tracker.kept_count == tracker.metrics_logged - written
    assert "could not be written to http://127.0.0.1:" in tracker.undelivered_message()

    mlflow_server.start()  # the server is back
    assert deliver.main([str(tracker.kept_path)]) == 0
    assert not tracker.kept_path.exists()
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    for key in ("train/loss", "train/suboptimality", "train/distance_to_optimum"):
        steps = sorted(m.step for m in client.get_metric_history(tracker.run_id, key))
        assert steps == list(range(1, epochs + 1)), key


def test_writes_the_server_stored_without_answering_in_time_are_not_reported_kept(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    late = tmp_path / "answer-after-seconds"
    server = MlflowServer(tmp_path, LATE_ANSWERS, str(late))
    monkeypatch.setattr(tracking, "RETRY_DELAYS", (0.05, 0.1, 0.2))
    monkeypatch.setattr(tracking, "FLUSH_SECONDS", 1e9)  # every metric in one write, at the end
    epochs = 50
    try:
        server.start()
        MlflowClient(tracking_uri=server.uri).search_experiments()  # the server creates its store (seconds)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")  # then the client waits 1 s for an answer
        tracker = tracking.MlflowTracker(
            server.uri, "tests", {"x": 1}, {}, "late-answers", 1, flush_timeout=15.0, output_dir=tmp_path / "run"
        )
        tracker.start()
        late.write_text("2.5")  # from now on each metric write is committed, then answered after 2.5 s
        optimizer = optlab.optimizers.SGD(learning_rate=0.01)
        Trainer(optlab.problems.get("quadratic"), optimizer, [tracker], epochs=epochs).fit()
        tracker.close("FINISHED")
        assert tracker._writer.written == 0  # no write was answered in time: all four tries timed out
        client = MlflowClient(tracking_uri=server.uri)
        run = client.get_run(tracker.run_id)
        stored = sum(len(client.get_metric_history(tracker.run_id, key)) for key in run.data.metrics)
        per_epoch = [
            len(client.get_metric_history(tracker.run_id, key)) for key in ("train/loss", "train/suboptimality")
        ]
    finally:
        server.stop()
    assert per_epoch == [epochs, epochs] and stored == tracker.metrics_logged  # the server has every metric
    assert tracker.kept_count == tracker.metrics_logged - stored == 0  # before: "200 metrics could not be written"
    assert tracker.kept_path is None and tracker.undelivered_message() is None
    assert not (tmp_path / "run").exists() or list((tmp_path / "run").iterdir()) == []
    assert tracker.status == "FINISHED" and run.info.status == "FINISHED"
    assert tracking.UNDELIVERED_TAG not in run.data.tags


# -- the command line: SIGTERM while the end of a run waits for the store ------------------------------

CLI_ANNOUNCING_CLOSE = textwrap.dedent(
    """
    import sys
    from optlab.app import tracking
    from optlab.app.main import main

    real = tracking.MlflowTracker.close
    tracking.FLUSH_SECONDS = 1e9  # every metric is left for the end, however slow the training on a busy machine

    def close(self, *args, **kwargs):
        print("closing", flush=True)
        return real(self, *args, **kwargs)

    tracking.MlflowTracker.close = close
    main(sys.argv[1:])
    """
)


def test_sigterm_while_a_run_ends_keeps_what_is_unwritten_and_marks_it_killed(tmp_path):
    import re

    from mlflow.tracking import MlflowClient

    epochs = 8000  # every step logged: 48,000 metrics, several seconds of sqlite
    args = ["problem=rosenbrock", f"trainer.epochs={epochs}", "tracking.log_every=1", "tracking.flush_timeout=600"]
    child = subprocess.Popen(
        [sys.executable, "-c", CLI_ANNOUNCING_CLOSE, *args, "trainer.progress_bar=false"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while (line := child.stdout.readline()) and line != "closing\n":
            pass
        assert line == "closing\n", child.stderr.read()
        time.sleep(1.0)  # the writer is busy with the last metrics
        child.send_signal(signal.SIGTERM)
        start = time.perf_counter()
        _, err = child.communicate(timeout=120)
        stopped = time.perf_counter() - start
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    assert child.returncode == 143, err
    assert stopped < 20, stopped  # not the minute the rest would take: kept, not written
    assert "Traceback" not in err and "is marked KILLED" in err
    kept = Path(re.search(r"kept in (\S+undelivered-\w+\.jsonl)", err).group(1))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = kept.name.removeprefix("undelivered-").removesuffix(".jsonl")
    assert client.get_run(run_id).info.status == "KILLED"
    assert deliver.main([str(kept)]) == 0
    for key in ("train/loss", "position/x", "position/y", "train/distance_to_optimum"):
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == list(range(1, epochs + 1)), key


def test_a_server_that_dies_as_the_run_opens_names_the_run_and_keeps_its_end(tmp_path, mlflow_server, monkeypatch):
    # seen in the probe (3 of 3): the server died right after creating the run; the run stayed
    # RUNNING, its end was kept nowhere and the message did not name it
    from mlflow.tracking import MlflowClient

    monkeypatch.setattr(tracking, "RETRY_DELAYS", (0.05, 0.1))
    create = MlflowClient.create_run

    def create_then_die(self, *args, **kwargs):
        run = create(self, *args, **kwargs)
        mlflow_server.stop()
        return run

    monkeypatch.setattr(MlflowClient, "create_run", create_then_die)
    tracker = tracker_for(mlflow_server.uri, output_dir=tmp_path / "run")
    with pytest.raises(tracking.TrackingError) as info:
        tracker.start()
    message = str(info.value)
    run_id = tracker.run_id
    assert run_id is not None and tracker.status is None
    assert message.startswith(f"tracking store {mlflow_server.uri}: Connection refused (its run {run_id} was opened"), (
        message
    )
    assert f"its run {run_id} was opened and could not be closed" in message
    assert f"the run's status (FAILED) could not be set in {mlflow_server.uri}" in message
    assert f"python -m optlab.deliver {tracker.kept_path}" in message and "\n" not in message

    monkeypatch.setattr(MlflowClient, "create_run", create)
    mlflow_server.start()  # back: one command ends the run with its true status
    assert deliver.main([str(tracker.kept_path)]) == 0
    run = MlflowClient(tracking_uri=mlflow_server.uri).get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["error"]


@pytest.mark.parametrize("how", ["in the chain", "hidden"])
def test_a_ctrl_c_a_library_turns_into_its_own_error_is_an_interrupt_not_a_bad_store(tmp_path, monkeypatch, how):
    # the re-probe: Ctrl-C while MLflow set itself up came out as "tracking store ...: Error
    # building `function-after` serializer; pick another store", exit 2
    from optlab.app import run as running

    def broken(uri):
        if how == "hidden":  # the library swallowed it; only the run's signal handler saw the signal
            monkeypatch.setattr(running, "STOPPED_BY", signal.SIGINT)
            raise RuntimeError("Error building `function-after` serializer:")
        try:
            raise KeyboardInterrupt("interrupted (Ctrl-C)")
        except KeyboardInterrupt as interrupt:
            raise RuntimeError("Error building `function-after` serializer:") from interrupt

    monkeypatch.setattr(tracking, "check_store", broken)
    tracker = tracker_for(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(KeyboardInterrupt):
        tracker.start()
    assert tracker.run_id is None and tracker.status is None


def test_ignoring_signals_drops_those_pending_without_an_error():
    from optlab.app.signals import ignore_signals

    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
        os.kill(os.getpid(), signal.SIGUSR2)  # pending: arrived while blocked
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
        assert seen == [signal.SIGUSR2]  # delivered to the handler on unblocking
        ignore_signals({signal.SIGUSR2})
        os.kill(os.getpid(), signal.SIGUSR2)
        assert signal.getsignal(signal.SIGUSR2) is signal.SIG_IGN and seen == [signal.SIGUSR2]
        assert signal.SIGUSR2 not in signal.pthread_sigmask(signal.SIG_BLOCK, set())  # unblocked again
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_the_schema_revisions_read_from_the_scripts_lines_are_alembics():
    # the store's check reads MLflow's head revision from its migration scripts' lines (alembic
    # imports every script: ~0.7 s of each tracked command); alembic's answer is the reference
    from optlab.app import store

    assert store._revisions_from_lines() == store._revisions_from_alembic()
    head, known = store.schema_revisions()
    assert head in known and len(known) > 50


def test_a_study_on_a_tracking_server_prints_no_links_of_mlflow_s_own(tmp_path, mlflow_server):
    # MLflow's HTTP client writes two lines ("View run ... at:", "View experiment at:") at each run's
    # end: twice per child run for a study, and once more for its parent (a run's tracker, as for
    # every run), which says where it is itself
    args = ["name=links", "optimizers=[sgd]", "problems=[beale]", "budget=2", "seeds=1", "final_seeds=2"]
    study = run_optlab(tmp_path, *args, "one_shot=false", f"tracking.uri={mlflow_server.uri}", module="optlab.study")
    assert study.returncode == 0, study.stderr
    assert "View run" not in study.stdout + study.stderr and "View experiment" not in study.stdout
    assert study.stdout.count("optlab: MLflow: parent run ") == 1
    assert "(4 child runs written)" in study.stdout  # 2 tuning trials, 2 final runs
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.uri)  # written by several threads at once: each child once, whole
    parent = study.stdout.split("optlab: MLflow: parent run ")[1].split()[0]
    experiment = client.get_run(parent).info.experiment_id
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len({c.data.tags["optlab.trial"] for c in children}) == len(children) == 4
    assert all(c.info.status == "FINISHED" and c.data.metrics for c in children)


INTERRUPTED_DELIVERY = """
import os, signal, sys
import optlab.app.deliver as delivering
signame = sys.argv[1]
def interrupted(path, uri=None, progress=None):
    os.kill(os.getpid(), getattr(signal, signame))  # as a user's Ctrl-C or kill while it writes
    raise AssertionError("the signal did not stop the delivery")
delivering.deliver = interrupted
sys.exit(delivering.main(sys.argv[2:]))
"""


@pytest.mark.parametrize(("signame", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_during_a_delivery_is_one_line_and_keeps_the_file(tmp_path, signame, code):
    """Ctrl-C was a 60-line traceback and a death by SIGINT (found by a fault-injection probe)."""
    kept = tmp_path / "undelivered-abc.jsonl"
    kept.write_text("the file a run kept\n")
    from cli_helpers import script

    done = script(tmp_path, INTERRUPTED_DELIVERY, signame, str(kept), timeout=120)
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("optlab.deliver: ") and f"{kept} is kept" in line
    assert kept.read_text() == "the file a run kept\n"


def test_mlflows_own_error_reports_go_to_the_runs_log_not_the_terminal(tmp_path, capfd):
    """A store failing during a run made MLflow log pages of SQL and tracebacks (ERROR) around
    optlab's one line (found by a fault-injection probe, 4 of 4)."""
    from optlab.app.store import quiet_mlflow

    own = logging.getLogger("mlflow")
    levels = {h: h.level for h in own.handlers}
    log = logging.FileHandler(tmp_path / "main.log")
    logging.getLogger().addHandler(log)
    try:
        quiet_mlflow()
        logging.getLogger("mlflow.store.db.utils").error("SQLAlchemy database error: database is locked")
        log.flush()
        assert "database is locked" not in capfd.readouterr().err
        assert "SQLAlchemy database error: database is locked" in (tmp_path / "main.log").read_text()
    finally:
        logging.getLogger().removeHandler(log)
        own.removeHandler(log)
        log.close()
        for handler, level in levels.items():
            handler.setLevel(level)


def test_the_innermost_os_error_is_named_without_its_file_s_colon():
    # a fault-injection probe saw "No space left on device:; pick another store ..." on a full disk
    from optlab.app.store import _root_cause

    full = OSError(28, "No space left on device")
    full.filename = "/work/.mlflow.db.creating-0a1b2c3d4e5f"
    assert _root_cause(RuntimeError(f"(sqlite3.OperationalError) {full}")) == "No space left on device"
    refused = "HTTPConnectionPool(host='127.0.0.1', port=9): ([Errno 111] Connection refused'))"
    assert _root_cause(RuntimeError(refused)) == "Connection refused"
