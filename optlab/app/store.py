"""The tracking store, before a run uses it: is it usable, and creating a local one safely.

:func:`check_store` finds an unusable store in seconds, with one line (:class:`TrackingError`)
naming it and what to do: a tracking server that does not answer, a folder that is not
writable, a file that is not an SQLite database or not an MLflow store, a damaged or
half-created store, an unknown scheme. A missing sqlite store is built under a temporary name
(a copy of the empty store cached once per MLflow schema, :func:`empty_store`) and moved into
place (:func:`create_sqlite_store`), under a lock on its folder
(:func:`store_lock`), so that an interrupted first run never leaves a half-made store and
parallel runs of a sweep never create one twice. An empty SQLite file (0 bytes, or no schema)
is filled with that store in one SQLite transaction, in place (:func:`fill_empty`): it stays
the same file, and one that anything was written to meanwhile is left alone.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import time
from pathlib import Path

from .config import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no folder locks (parallel sweeps there should log to a tracking server)
    fcntl = None

PROBE_TIMEOUT = 3.0  # seconds a tracking server has to answer the pre-flight probe
HTTP_LIMITS = {  # MLflow's HTTP client while a run is tracked (unless set by the user): fail fast, retry here;
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    # and no "View run ... at:" lines of its own at each run's end (one more request each; a study
    # would print two lines per child run): optlab says once where the run is
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
QUICK_CHECK_SECONDS = 2.0  # PRAGMA quick_check budget (about 150 MB of store per second here)
SETTLE_CHECKS, SETTLE_SECONDS = 4, 15.0  # a half-made store is judged once still for 2 s (15 s at most)
DEFAULT_DB = "mlflow.db"
SQLITE_HEADER = b"SQLite format 3\x00"
MLFLOW_TABLES = {"alembic_version", "experiments", "runs", "metrics", "latest_metrics", "params", "tags"}
ADVICE = "pick another store with tracking.uri=... or train without tracking: tracking=none"


class TrackingError(ConfigError):
    """The tracking store cannot be used: one line naming the store and what to do (no traceback)."""


def default_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else MLflow's default local store: ``sqlite:///mlflow.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def shown(uri: str) -> str:
    """``uri`` without its password, for messages."""
    return re.sub(r"(://[^/:@]*:)[^/@]*@", r"\1***@", uri)


def _short(exc: BaseException) -> str:
    """The first line of an error, at most 300 characters."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# -- pre-flight --------------------------------------------------------------------------------


def scheme_of(uri: str) -> str:
    from urllib.parse import urlparse

    return urlparse(uri).scheme.lower()


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:`` URI (absolute), or None for an in-memory database."""
    plain = re.fullmatch(r"sqlite:///([^?%@]*)", uri)  # SQLAlchemy's reading of it (its import: 0.17 s)
    if plain is not None:
        database = plain.group(1)
    else:
        from sqlalchemy.engine import make_url

        database = make_url(uri).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).absolute()


def probe_http(uri: str) -> None:
    """Raise TrackingError unless the server at ``uri`` answers an HTTP request within ``PROBE_TIMEOUT``.

    Any answer will do (MLflow's own calls come next): this only finds a dead or unreachable
    server in seconds, where MLflow's client retries for minutes.
    """
    import requests  # not mlflow: its import alone takes seconds

    # MLflow's own TLS settings (mlflow/environment_variables.py), read as MLflow reads them
    insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "false").lower() in ("true", "1")
    verify = False if insecure else (os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True)
    name = shown(uri)
    try:
        requests.get(
            uri.rstrip("/") + "/health", timeout=(PROBE_TIMEOUT, PROBE_TIMEOUT), verify=verify, allow_redirects=False
        )
    except requests.exceptions.SSLError as exc:
        raise TrackingError(f"tracking server {name}: TLS failed ({_root_cause(exc)}); {ADVICE}") from None
    except requests.exceptions.Timeout:
        raise TrackingError(
            f"tracking server {name} did not answer within {PROBE_TIMEOUT:g} s; start it or check the address, "
            f"or {ADVICE}"
        ) from None
    except requests.exceptions.RequestException as exc:
        raise TrackingError(
            f"tracking server {name} is unreachable ({_root_cause(exc)}); start it or check the address, or {ADVICE}"
        ) from None


def _root_cause(exc: BaseException) -> str:
    """``Connection refused``, ``Name or service not known``: the innermost OS error of a requests failure."""
    match = re.findall(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
    return match[-1].strip().rstrip(":").rstrip() if match else _short(exc)  # (before the file's name)


def prepare_sqlite(uri: str, create: bool = True) -> None:
    """Check (and with ``create``, atomically create) the sqlite store of ``uri``. Call under :func:`store_lock`.

    The folder must be writable; an existing file must carry SQLite's header, pass
    ``PRAGMA quick_check`` (within ``QUICK_CHECK_SECONDS``) and hold MLflow's current schema. A
    missing store is built under a temporary name and moved into place, an empty one (0 bytes or
    no schema) is filled in place in one transaction: an interrupted first run leaves no
    half-created store behind.
    """
    path = sqlite_path(uri)
    if path is None:
        return
    name = shown(uri)
    _check_folder(path, name)
    for stale in leftovers(path.parent, re.escape(path.name)):  # a creator killed outright (we hold the lock)
        with contextlib.suppress(OSError):
            stale.unlink()
    if path.is_dir():
        raise TrackingError(f"tracking store {name}: {path} is a folder, not an sqlite file; {ADVICE}")
    # A half-made store may be in the making by a process that does not take our lock
    # (`mlflow ui`, a script): wait while it changes, and judge it once it stands still. An empty
    # file needs no wait: fill_empty checks it is empty under SQLite's lock, as it fills it.
    seen, still, waited = None, 0, 0.0
    while True:
        try:
            stat = path.stat()
        except FileNotFoundError:
            state, stat = "missing", None
        else:
            if not os.access(path, os.W_OK):
                raise TrackingError(f"tracking store {name}: {path} is read-only; {ADVICE}")
            state = "empty" if stat.st_size == 0 else inspect_sqlite(path, name)
        if state == "store":
            return
        if not create:
            missing = f"tracking store {name}: there is no MLflow store at {path}"
            raise TrackingError(missing if state in ("missing", "empty") else state)
        if state in ("missing", "empty"):
            if create_sqlite_store(path, in_place=state == "empty", name=name):
                return
            seen, still = None, 0  # someone wrote there meanwhile: judge theirs
            continue
        mark = (state, stat.st_size, stat.st_mtime_ns)
        still = still + 1 if mark == seen else 0
        seen = mark
        if still >= SETTLE_CHECKS or waited >= SETTLE_SECONDS:
            raise TrackingError(state)  # a half-made store: the message says what to do
        time.sleep(0.5)
        waited += 0.5


def _check_folder(path: Path, name: str) -> None:
    """TrackingError unless a file can be created beside the store ``path`` (named ``name``)."""
    from ..files import refusal

    reason = refusal(path.parent)
    if reason is not None:
        raise TrackingError(f"tracking store {name}: its folder {path.parent} is not writable ({reason}); {ADVICE}")


def inspect_sqlite(path: Path, name: str) -> str:
    """``"store"`` for a sound MLflow store at this MLflow's schema, ``"empty"`` for an SQLite file without
    any schema (no table, index, view or trigger), the message for the user for a half-made store (no runs,
    an older schema: maybe still in the making); anything else raises TrackingError saying what is wrong
    and what to do."""
    import sqlite3
    from urllib.parse import quote

    with open(path, "rb") as file:
        header = file.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        raise TrackingError(
            f"tracking store {name}: {path} is not an SQLite database, so not an MLflow store; "
            f"move it away, or {ADVICE}"
        )
    damaged = (
        f"tracking store {name}: {path} is damaged (sqlite: {{}}); keep a copy and move it away "
        f"(`sqlite3 {path} .recover` may save its runs), or {ADVICE}"
    )
    try:  # read-write, never create: a hot journal left by a killed writer must be rolled back to read
        connection = sqlite3.connect(f"file:{quote(str(path))}?mode=rw", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise TrackingError(damaged.format(_short(exc))) from None
    try:
        limit = time.monotonic() + QUICK_CHECK_SECONDS
        connection.set_progress_handler(lambda: time.monotonic() > limit, 10_000)
        try:
            verdict = connection.execute("PRAGMA quick_check").fetchall()
        except sqlite3.OperationalError as exc:  # over budget (checked in part), or locked by a writer
            if "interrupt" not in str(exc) and not _busy(exc):
                raise
            verdict = [("ok",)]
        connection.set_progress_handler(None, 0)
        if verdict[0][0] != "ok":  # "*** in database main ***\nPage 209: btreeInitPage() returns error code 11"
            lines = [line for line in verdict[0][0].splitlines() if not line.startswith("***")]
            raise TrackingError(damaged.format((lines or ["quick_check failed"])[0]))
        objects = connection.execute("SELECT type, name FROM sqlite_master").fetchall()
        if not objects:
            return "empty"  # as fill_empty judges it
        tables = {name for kind, name in objects if kind == "table"}
        if not tables & MLFLOW_TABLES:
            raise TrackingError(
                f"tracking store {name}: {path} is an SQLite database but not an MLflow store; {ADVICE}"
            )
        version = None
        if "alembic_version" in tables:
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            version = row[0] if row else None
        head, known = schema_revisions()
        if head is None or (version == head and {"experiments", "runs"} <= tables):
            return "store"
        runs = connection.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
    except sqlite3.DatabaseError as exc:
        if _busy(exc):  # a writer holds it for longer than 5 s: MLflow waits its own way
            return "store"
        raise TrackingError(damaged.format(_short(exc))) from None
    finally:
        connection.close()
    from mlflow.version import VERSION  # imported by schema_revisions

    if runs == 0:
        return (
            f"tracking store {name}: {path} was left half-created (schema {version or 'none'}, not {head}; "
            f"an interrupted first run?) and holds no runs: move it away and run again, or {ADVICE}"
        )
    if version not in known:
        raise TrackingError(
            f"tracking store {name}: {path} was written by another MLflow (schema {version} is unknown to MLflow "
            f"{VERSION}): install that MLflow version, or {ADVICE}"
        )
    raise TrackingError(
        f"tracking store {name}: {path} has MLflow schema {version}, MLflow {VERSION} expects {head}: "
        f"back it up, then upgrade it with `mlflow db upgrade sqlite:///{path}`, or {ADVICE}"
    )


def _busy(exc: BaseException) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


_REVISION = re.compile(r"""^(down_revision|revision)\s*=\s*(.+?)\s*$""", re.MULTILINE)


@functools.cache
def schema_revisions() -> tuple[str | None, set[str]]:
    """MLflow's current schema revision and every revision it knows (None, {} if that cannot be read).

    Read from the ``revision = ...`` and ``down_revision = ...`` lines of MLflow's migration
    scripts: the head is the one revision no other revises. Alembic's own reading imports every
    script (0.5-0.8 s of each tracked command); it is the fallback when the lines do not give one head.
    """
    found = _revisions_from_lines()
    return found if found is not None else _revisions_from_alembic()


def _revisions_from_lines() -> tuple[str, set[str]] | None:
    import importlib.util

    try:  # found, not imported: a submodule's spec would import mlflow (seconds)
        spec = importlib.util.find_spec("mlflow")
        folder = Path(next(iter(spec.submodule_search_locations))) / "store" / "db_migrations" / "versions"
        texts = [path.read_text(encoding="utf-8") for path in folder.glob("*.py") if path.name != "__init__.py"]
    except (ImportError, AttributeError, StopIteration, OSError, ValueError, TypeError):
        return None
    known, revised = set(), set()
    for text in texts:
        fields = dict(_REVISION.findall(text))
        if "revision" not in fields or "down_revision" not in fields:
            return None
        known.add(fields["revision"].strip("'\""))
        revised.update(re.findall(r"""["']([0-9A-Za-z_]+)["']""", fields["down_revision"]))
    heads = known - revised
    if len(heads) != 1 or not revised <= known:
        return None
    return heads.pop(), known


def _revisions_from_alembic() -> tuple[str | None, set[str]]:
    quiet_mlflow()
    try:
        from alembic.script import ScriptDirectory
        from mlflow.store.db.utils import _get_alembic_config

        script = ScriptDirectory.from_config(_get_alembic_config(""))
        return script.get_current_head(), {revision.revision for revision in script.walk_revisions()}
    except Exception:  # a future MLflow without that helper: MLflow checks the schema itself
        return None, set()


def create_sqlite_store(path: Path, in_place: bool = False, name: str | None = None) -> bool:
    """A fresh MLflow store at ``path``, built under a temporary name in the same folder, then put in place.

    The schema is copied from optlab's cached empty store of this MLflow (:func:`empty_store`),
    and MLflow opens the copy and adds its Default experiment for this folder: 0.1 s, where
    MLflow's ~70 schema steps take 1-1.5 s (they still run where the cache cannot be made).
    Without ``in_place`` it is moved there only if nothing is there by then; with ``in_place``
    it is copied into the empty SQLite file there (:func:`fill_empty`). False if something was
    written there meanwhile (by a process that does not take our lock): judge that instead. An
    interruption (Ctrl-C, SIGTERM, an error) removes the temporary file; a process killed
    outright leaves it behind, and the next run in the folder removes it (under the lock).
    """
    import shutil

    quiet_mlflow()
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    temp = new_file(path.parent, f".{path.name}.creating-")  # empty: sqlite initialises it
    try:
        cache = cache_folder()  # (a store in the cache folder itself: we hold that folder's lock already)
        template = None if cache is not None and _same_folder(cache, path.parent) else empty_store()
        if template is not None:
            shutil.copyfile(template, temp)
            if _is_empty_store(temp):
                _stamp(temp, 0)  # as MLflow leaves a store
            else:  # changed since it was checked (opened as a store meanwhile): built from scratch instead
                open(temp, "wb").close()  # (our temporary)
        _open_store(temp)  # the schema if not copied, and the Default experiment, as MLflow makes them
        with open(temp, "rb+") as file:
            os.fsync(file.fileno())
        if in_place:
            return fill_empty(path, temp, name or str(path))
        try:
            os.link(temp, path)  # atomic, and never over a file that appeared meanwhile
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links
            if path.exists():
                return False
            os.replace(temp, path)
        _fsync_folder(path.parent)
        return True
    finally:
        with contextlib.suppress(AttributeError, TypeError):  # MLflow's engine cache, keyed by URI
            for key, engine in list(SqlAlchemyStore._engine_map.items()):
                if scheme_of(key) == "sqlite" and sqlite_path(key) == path:
                    engine.dispose()  # connected to a file no longer there: reconnect to the new one
        _remove_with_journals(temp)


def _open_store(file: Path) -> None:
    """MLflow's own opening of the SQLite store ``file``: its schema made if it has none, its Default
    experiment (``./mlruns/0`` from the working folder, as ``MlflowClient`` would) added if missing."""
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{file}"
    store = None
    try:
        with _unsynced(file):
            store = SqlAlchemyStore(uri, DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)
    finally:
        if store is not None:
            store.engine.dispose()
        with contextlib.suppress(AttributeError, TypeError):
            SqlAlchemyStore._engine_map.pop(uri, None)


def _remove_with_journals(file: Path) -> None:
    for leftover in (file, Path(f"{file}-journal"), Path(f"{file}-wal"), Path(f"{file}-shm")):
        with contextlib.suppress(OSError):
            leftover.unlink()


def cache_folder() -> Path | None:
    """optlab's cache: ``$XDG_CACHE_HOME/optlab``, by default ``~/.cache/optlab``; None without a home.

    A relative ``XDG_CACHE_HOME`` is ignored, as the XDG specification asks (it would put the
    cache in whatever folder optlab runs in)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        try:
            base = Path.home() / ".cache"
        except RuntimeError:  # no home directory (HOME unset, no passwd entry)
            return None
    return Path(base) / "optlab"


def state_folder() -> Path | None:
    """optlab's state: ``$XDG_STATE_HOME/optlab``, by default ``~/.local/state/optlab``; None without a home.
    Holds what outlives a command: the runs being recorded in the background (:mod:`.recording`)."""
    base = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(base):
        try:
            base = Path.home() / ".local" / "state"
        except RuntimeError:
            return None
    return Path(base) / "optlab"


CACHE_WAIT = 15.0  # seconds a first run waits for another process building the cached store (then does without)
#: the tables an empty store holds rows in: its schema's revision, MLflow's default workspace
_EMPTY_STORE_ROWS = {"alembic_version": 1, "workspaces": 1}


def empty_store() -> Path | None:
    """A store of this MLflow's schema holding nothing, not even the Default experiment (whose artifact
    folder is the creating folder's): made once per MLflow schema in :func:`cache_folder`, under the
    folder's lock and a temporary name, then linked into place, stamped with a digest of its schema
    (SQLite's ``user_version``). Checked at each use (SQLite's header and quick check, the schema
    and its digest, no rows beyond the schema's revision and the default workspace). One that is
    not sound is never replaced: it is set aside (renamed, with a warning) and a new one made. None
    where it cannot be made or read (a read-only home), or while another process has held the
    folder's lock for ``CACHE_WAIT`` s (a builder stopped with Ctrl-Z): the store is then built from
    scratch, as before."""
    head, _ = schema_revisions()
    folder = cache_folder()
    if head is None or folder is None:
        return None
    from mlflow.version import VERSION

    template = folder / f"mlflow-{VERSION}-{head}-empty.db"
    with contextlib.suppress(Exception):  # (a full or read-only cache, MLflow's own errors): only slower
        if _is_empty_store(template):
            return template
        folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            with _flocked(descriptor, CACHE_WAIT) as locked:  # store_lock's lock, waited for a while only
                if not locked:
                    return None
                for stale in leftovers(folder, r"mlflow-[^/]+-empty\.db"):  # a builder killed outright
                    stale.unlink()
                unsound = _unsound(template)
                if unsound is not None:
                    if os.path.lexists(template):
                        _set_aside(template, unsound)
                    _build_empty_store(template)
        finally:
            os.close(descriptor)
        if _is_empty_store(template):
            return template
    return None


def _build_empty_store(template: Path) -> None:
    import sqlite3

    temp = new_file(template.parent, f".{template.name}.creating-")
    try:
        _open_store(temp)
        connection = sqlite3.connect(temp, isolation_level=None)
        try:
            connection.execute("DELETE FROM experiments")
            connection.execute(f"PRAGMA user_version = {_schema_digest(connection)}")
        finally:
            connection.close()
        with open(temp, "rb+") as file:
            os.fsync(file.fileno())
        os.link(temp, template)  # never over a file (we hold the folder's lock: none is there)
        _fsync_folder(template.parent)
    finally:
        _remove_with_journals(temp)


def _set_aside(path: Path, why: str) -> None:
    """Rename what is at the cached store's name (damaged, changed, used as a store: maybe someone's
    runs; ``why``) beside it: never replaced."""
    import warnings

    aside = path.with_name(f"{path.name}.unsound-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.rename(path, aside)
    warnings.warn(
        f"the cached empty MLflow store {path} was not sound ({why}); it is kept as {aside}, and a new one is made",
        stacklevel=3,
    )


def _schema_digest(connection) -> int:
    """CRC-32 of every table, index, trigger and view, as a non-negative 31-bit ``user_version``."""
    import zlib

    rows = connection.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").fetchall()
    return zlib.crc32(repr(rows).encode()) & 0x7FFFFFFF


def _stamp(path: Path, version: int) -> None:
    import sqlite3

    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute(f"PRAGMA user_version = {int(version)}")
    finally:
        connection.close()


def _is_empty_store(path: Path) -> bool:
    """Is ``path`` a sound store of this MLflow's schema, unchanged since it was made empty (its schema's
    digest), with no rows beyond its schema's revision and the default workspace? False if missing
    or damaged."""
    return _unsound(path) is None


def _unsound(path: Path) -> str | None:
    """Why ``path`` is not :func:`_is_empty_store` (``"missing"``, what is wrong), or None if it is."""
    import sqlite3
    from urllib.parse import quote

    try:
        if not path.is_file():
            return "missing"
        state = inspect_sqlite(path, str(path))
        if state != "store":
            return "an SQLite file without MLflow's schema" if state == "empty" else state
        connection = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
        try:
            if connection.execute("PRAGMA user_version").fetchone()[0] != _schema_digest(connection):
                return "its schema changed since it was made"
            tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                if table.startswith("sqlite_"):
                    continue
                rows = connection.execute(f"SELECT count(*) FROM {_quoted(table)}").fetchone()[0]
                empty = _EMPTY_STORE_ROWS.get(table, 0)
                if rows > empty:
                    held = f"{rows} row{'s' if rows > 1 else ''}"
                    return f"its table {table} holds {held}, where an empty store holds {empty}"
            return None
        finally:
            connection.close()
    except (OSError, sqlite3.Error, TrackingError) as exc:
        return f"{exc}".splitlines()[0][:300] if str(exc) else type(exc).__name__


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # (through links and bind mounts)
    except OSError:
        return False


def leftovers(folder: Path, name: str) -> list[Path]:
    """The temporaries :func:`new_file` named ``.<name>.creating-<12 hex>`` in ``folder`` (``name``
    a regular expression), with SQLite's journals of them: no other file, whatever its name."""
    own = re.compile(rf"\.{name}\.creating-[0-9a-f]{{12}}(-journal|-wal|-shm)?")
    try:
        return [p for p in folder.iterdir() if own.fullmatch(p.name)]
    except OSError:
        return []


@contextlib.contextmanager
def _flocked(descriptor: int, wait: float | None = None):
    """An exclusive ``flock`` on the open folder ``descriptor``, waited for ``wait`` s at most (None: as
    long as it takes); yields whether it is held. Held always where ``flock`` is missing (Windows)."""
    if fcntl is None:
        yield True
        return
    if wait is None:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        held = True
    else:
        deadline, held = time.monotonic() + wait, False
        while not held:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
    try:
        yield held
    finally:
        if held:
            fcntl.flock(descriptor, fcntl.LOCK_UN)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@contextlib.contextmanager
def _unsynced(temp: Path):
    """SQLite does not fsync ``temp`` at each of MLflow's ~70 schema steps (8-10 s here, 3-4 s without).

    Safe for this file only: it is fsynced once, whole, before it is put in place, and a crash
    meanwhile leaves only a temporary file, which the next run removes.
    """
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def connect(connection, record):
        main = connection.execute("PRAGMA database_list").fetchone()
        with contextlib.suppress(OSError, TypeError, IndexError):
            if os.path.samefile(main[2], temp):
                connection.execute("PRAGMA synchronous = OFF")

    event.listen(Engine, "connect", connect)
    try:
        yield
    finally:
        event.remove(Engine, "connect", connect)


def fill_empty(path: Path, template: Path, name: str) -> bool:
    """Copy the fresh store ``template`` into the empty SQLite file ``path``, in one transaction; False if
    ``path`` is not empty any more.

    The file is checked empty under SQLite's exclusive lock, within the transaction that fills
    it, so nothing written there meanwhile is ever overwritten. It stays the same file (inode,
    permissions): a program that has it open sees the store, where moving a new file over it
    would leave that program writing to a deleted one. A crash midway leaves a journal, and
    SQLite rolls the file back to empty when it is next opened.
    """
    import sqlite3
    from urllib.parse import quote

    try:
        connection = sqlite3.connect(f"file:{quote(str(path))}?mode=rw", uri=True, timeout=5.0, isolation_level=None)
    except sqlite3.Error as exc:
        raise TrackingError(f"tracking store {name}: cannot open {path} ({_short(exc)}); {ADVICE}") from None
    try:
        connection.execute("ATTACH DATABASE ? AS template", (f"file:{quote(str(template))}?mode=ro",))
        connection.execute("BEGIN EXCLUSIVE")
        try:
            if connection.execute("SELECT count(*) FROM main.sqlite_master").fetchone()[0]:
                connection.execute("ROLLBACK")
                return False
            schema = connection.execute(
                "SELECT type, name, sql FROM template.sqlite_master WHERE sql IS NOT NULL ORDER BY rowid"
            ).fetchall()
            tables = [table for kind, table, _ in schema if kind == "table" and not table.startswith("sqlite_")]
            for kind, table, sql in schema:
                if kind == "table" and not table.startswith("sqlite_"):  # sqlite_sequence comes by itself
                    connection.execute(sql)
            for table in tables:  # generated columns are not inserted: SQLite computes them
                quoted = _quoted(table)
                columns = ", ".join(
                    _quoted(column[1])
                    for column in connection.execute(f"PRAGMA template.table_xinfo({quoted})")
                    if column[6] == 0
                )
                connection.execute(f"INSERT INTO main.{quoted} ({columns}) SELECT {columns} FROM template.{quoted}")
            if any(table == "sqlite_sequence" for _, table, _ in schema):  # AUTOINCREMENT counters
                connection.execute("DELETE FROM main.sqlite_sequence")
                connection.execute("INSERT INTO main.sqlite_sequence SELECT * FROM template.sqlite_sequence")
            for kind, _, sql in schema:  # indexes, triggers, views: after the rows
                if kind != "table":
                    connection.execute(sql)
            connection.execute("COMMIT")
            return True
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            raise
    except sqlite3.OperationalError as exc:
        if _busy(exc):
            raise TrackingError(
                f"tracking store {name}: {path} is empty and locked by another program; "
                f"run again once it is done, or {ADVICE}"
            ) from None
        raise TrackingError(f"tracking store {name}: cannot write {path} ({_short(exc)}); {ADVICE}") from None
    finally:
        connection.close()


def new_file(folder: Path, prefix: str, suffix: str = "") -> Path:
    """A new empty file with a unique name, its permissions as the umask allows (``mkstemp`` would give 0600)."""
    import secrets

    while True:
        path = folder / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return path
        except FileExistsError:
            continue


def quiet_mlflow() -> None:
    """Import mlflow, then keep store creation and migrations (INFO lines) out of the user's terminal.

    After the import: MLflow configures its loggers when it is first imported. Where the run has
    a log file (Hydra's ``main.log``), MLflow's own reports go there and not to the terminal: when
    the store fails during a run, its retries logged pages of SQL and tracebacks around optlab's
    one line saying what failed and what was kept.
    """
    import logging

    import mlflow  # noqa: F401

    for logger in ("mlflow", "alembic"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if files:
        own = logging.getLogger("mlflow")
        for handler in own.handlers:
            if not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.CRITICAL + 1)
        for handler in files:
            if handler not in own.handlers:
                own.addHandler(handler)


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def check_store(uri: str, create: bool = True):
    """Pre-flight of ``uri``, then an ``MlflowClient`` for it; TrackingError (one line) if the store is unusable.

    For sqlite, call under :func:`store_lock` (the store may be created here).
    """
    scheme = scheme_of(uri)
    if scheme in ("http", "https"):
        probe_http(uri)
    if scheme in ("", "file") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
        raise TrackingError(_folder_store_refused(uri))
    if scheme == "sqlite":
        if sqlite_path(uri) is None:
            raise TrackingError(
                f"tracking store {shown(uri)} is an in-memory database: it would vanish with the run; "
                f"use a file (sqlite:///mlflow.db), or {ADVICE}"
            )
        prepare_sqlite(uri, create)
    quiet_mlflow()
    from mlflow.tracking import MlflowClient
    from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException

    try:
        return MlflowClient(tracking_uri=uri)
    except UnsupportedModelRegistryStoreURIException as exc:
        known = ", ".join(s for s in exc.supported_uri_schemes if s and not s.endswith("uc"))
        raise TrackingError(
            f"tracking.uri {shown(uri)}: MLflow has no store for scheme {scheme!r}; supported schemes: {known} "
            "(e.g. sqlite:///mlflow.db or http://host:5000); or train without tracking: tracking=none"
        ) from None


def preflight(uri: str) -> bool:
    """:func:`check_store` without MLflow (its import takes seconds), for a run recorded in the background:
    a dead server, a folder store, an in-memory database, an unwritable folder and an existing file that
    is not a sound MLflow store raise TrackingError (one line). A missing store is left to be created
    by the background process. Returns whether the store is there (a sqlite file; any server)."""
    scheme = scheme_of(uri)
    if scheme in ("http", "https"):
        probe_http(uri)
    if scheme in ("", "file") and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
        raise TrackingError(_folder_store_refused(uri))
    if scheme != "sqlite":
        return True
    path = sqlite_path(uri)
    if path is None:
        raise TrackingError(
            f"tracking store {shown(uri)} is an in-memory database: it would vanish with the run; "
            f"use a file (sqlite:///mlflow.db), or {ADVICE}"
        )
    with store_lock(uri):
        try:
            there = path.stat().st_size > 0
        except OSError:
            there = False
        if there:
            prepare_sqlite(uri, create=False)
            return True
    _check_folder(path, shown(uri))
    return False


def _folder_store_refused(uri: str) -> str:
    """MLflow 3 refuses a folder store (``./mlruns``, ``file:///...``) unless ``MLFLOW_ALLOW_FILE_STORE``
    is set; its own message, cut to one line, lost that way out."""
    from urllib.parse import urlparse

    path = urlparse(uri).path if uri.startswith("file:") else uri
    path = path.removeprefix("./").rstrip("/") or "mlflow"
    if path.endswith((".db", ".sqlite", ".sqlite3")):
        return (
            f"tracking store {shown(uri)} is read as a folder store (MLflow 3 writes those only with "
            f"MLFLOW_ALLOW_FILE_STORE=true); a database file is tracking.uri=sqlite:///{path}"
        )
    return (
        f"tracking store {shown(uri)} is a folder store, which MLflow 3 writes only with MLFLOW_ALLOW_FILE_STORE=true; "
        f"for a database file write tracking.uri=sqlite:///{path}.db, or train without tracking: tracking=none"
    )


@contextlib.contextmanager
def http_limits(uri: str):
    """MLflow's HTTP client fails fast for ``uri`` while tracked (optlab retries itself) and prints no
    links of its own, unless the user set these variables (``HTTP_LIMITS``)."""
    added = []
    if scheme_of(uri) in ("http", "https"):
        added = [key for key in HTTP_LIMITS if key not in os.environ]
        os.environ.update({key: HTTP_LIMITS[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


@contextlib.contextmanager
def store_lock(uri: str):
    """An exclusive lock on the directory of a local sqlite store, so nothing is written beside it.

    A no-op for other stores and where ``flock`` is missing (Windows: parallel sweeps there
    should log to a tracking server).
    """
    if scheme_of(uri) != "sqlite" or sqlite_path(uri) is None or fcntl is None:
        yield
        return
    folder = sqlite_path(uri).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError as exc:
        raise TrackingError(
            f"tracking store {shown(uri)}: cannot create or open its folder {folder} ({exc.strerror or exc}); {ADVICE}"
        ) from None
    try:
        with _flocked(descriptor):
            yield
    finally:
        os.close(descriptor)
