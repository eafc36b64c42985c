"""MLflow tracking: every run's config, tags, per-step and per-epoch metrics, plots and status.

Before training, :meth:`MlflowTracker.start` checks the store (a server answers, a sqlite file is
a sound MLflow store, its folder is writable) and creates a missing sqlite store atomically;
an unusable store raises :class:`TrackingError`, one line naming the store and what to do.

During training the loop only appends metrics to a list: each metric is thinned to at most
``max_points`` points (first, last and best always kept). Every ``FLUSH_SECONDS`` (and at the
end, while the plots are drawn) they are handed to a writer thread that logs them with
``log_batch``, retrying a failed write after 0.5, 1 and 2 s. MLflow's store spends about
0.15 ms of Python per metric, holding the interpreter lock meanwhile: a writer busy *during*
training slows it more than the same writes afterwards, hence the long interval.

:meth:`MlflowTracker.close` waits for the writer at most ``flush_timeout`` seconds; whatever the
store did not take by then (or refused) is kept in ``undelivered-<run_id>.jsonl`` for
``python -m optlab.deliver``, and the run still gets its status. Figures: docs/tracking.md.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from ..callbacks import Callback
from .config import ConfigError

BATCH = 1000  # MLflow's limit of metrics per log_batch call
FLUSH_SECONDS = 10.0  # metrics are handed to the writer this often during a run (and all at its end)
RETRY_DELAYS = (0.5, 1.0, 2.0)  # seconds between the tries of one write (never past close()'s deadline)
MAX_WAITING = 8  # batches waiting for the writer; more are merged into the last one
STATUS_TIMEOUT = 5.0  # seconds granted to set the terminal status once the flush is over
KILL_TIMEOUT = 3.0  # the same after an interrupt
PROBE_TIMEOUT = 3.0  # seconds a tracking server has to answer the pre-flight probe
HTTP_LIMITS = {  # MLflow's HTTP client while a run is tracked (unless set by the user): fail fast, retry here
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}
QUICK_CHECK_SECONDS = 2.0  # PRAGMA quick_check budget (about 150 MB of store per second here)
SETTLE_CHECKS, SETTLE_SECONDS = 4, 15.0  # an empty or half-made store is judged once still for 2 s
DEFAULT_DB = "mlflow.db"
SQLITE_HEADER = b"SQLite format 3\x00"
MLFLOW_TABLES = {"alembic_version", "experiments", "runs", "metrics", "latest_metrics", "params", "tags"}
KEPT_FORMAT = "optlab-undelivered-metrics"
KEPT_NAME = re.compile(r"undelivered-[0-9A-Za-z_-]+\.jsonl")
UNDELIVERED_TAG = "optlab.undelivered"
ADVICE = "pick another store with tracking.uri=... or train without tracking: tracking=none"


class TrackingError(ConfigError):
    """The tracking store cannot be used: one line naming the store and what to do (no traceback)."""


def default_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else MLflow's default local store: ``sqlite:///mlflow.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def shown(uri: str) -> str:
    """``uri`` without its password, for messages."""
    return re.sub(r"(://[^/:@]*:)[^/@]*@", r"\1***@", uri)


def hydra_output_dir() -> Path | None:
    """The folder of the running Hydra job (where undelivered metrics are kept), or None outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # no Hydra job: the default folder serves
        pass
    return None


def flatten(config, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(config, dict):
        for key, value in config.items():
            out.update(flatten(value, f"{prefix}{key}."))
    else:
        out[prefix[:-1]] = str(config)[:6000]
    return out


def _short(exc: BaseException) -> str:
    """The first line of an error, at most 300 characters."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# -- pre-flight ----------------------------------------------------------------------------------


def scheme_of(uri: str) -> str:
    from urllib.parse import urlparse

    return urlparse(uri).scheme.lower()


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:`` URI (absolute), or None for an in-memory database."""
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
    return match[-1].strip() if match else _short(exc)


def prepare_sqlite(uri: str, create: bool = True) -> None:
    """Check (and with ``create``, atomically create) the sqlite store of ``uri``. Call under :func:`store_lock`.

    The folder must be writable; an existing file must carry SQLite's header, pass
    ``PRAGMA quick_check`` (within ``QUICK_CHECK_SECONDS``) and hold MLflow's current schema. A
    missing (or empty) store is built under a temporary name and moved into place, so that an
    interrupted first run leaves no half-created store behind.
    """
    path = sqlite_path(uri)
    if path is None:
        return
    name = shown(uri)
    try:
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise TrackingError(
            f"tracking store {name}: its folder {path.parent} is not writable ({exc.strerror or exc}); {ADVICE}"
        ) from None
    for stale in path.parent.glob(f".{path.name}.creating-*"):  # a creator killed outright (we hold the lock)
        with contextlib.suppress(OSError):
            stale.unlink()
    if path.is_dir():
        raise TrackingError(f"tracking store {name}: {path} is a folder, not an sqlite file; {ADVICE}")
    # An empty or half-made store may be in the making by a process that does not take our lock
    # (`mlflow ui`, a script): wait while it changes, and judge it once it stands still.
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
        if state == "missing":
            if create_sqlite_store(path, replace=False):
                return
            seen, still = None, 0  # someone made one meanwhile: judge theirs
            continue
        mark = (state, stat.st_size, stat.st_mtime_ns)
        still = still + 1 if mark == seen else 0
        seen = mark
        if still >= SETTLE_CHECKS or waited >= SETTLE_SECONDS:
            if state == "empty":  # nothing in it to lose
                create_sqlite_store(path, replace=True)
                return
            raise TrackingError(state)  # a half-made store: the message says what to do
        time.sleep(0.5)
        waited += 0.5


def inspect_sqlite(path: Path, name: str) -> str:
    """``"store"`` for a sound MLflow store at this MLflow's schema, ``"empty"`` for an SQLite file without
    tables, the message for the user for a half-made store (no runs, an older schema: maybe still in the
    making); anything else raises TrackingError saying what is wrong and what to do."""
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
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            return "empty"
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


def schema_revisions() -> tuple[str | None, set[str]]:
    """MLflow's current schema revision and every revision it knows (None, {} if that cannot be read)."""
    quiet_mlflow()
    try:
        from alembic.script import ScriptDirectory
        from mlflow.store.db.utils import _get_alembic_config

        script = ScriptDirectory.from_config(_get_alembic_config(""))
        return script.get_current_head(), {revision.revision for revision in script.walk_revisions()}
    except Exception:  # a future MLflow without that helper: MLflow checks the schema itself
        return None, set()


def create_sqlite_store(path: Path, replace: bool) -> bool:
    """A fresh MLflow store at ``path``, built under a temporary name in the same folder and moved into place.

    ``replace``: over the (empty) file there; else only if nothing is there by then (False if
    something is: a process that does not take our lock made it meanwhile). An interruption
    (Ctrl-C, SIGTERM, an error) removes the temporary file; a process killed outright leaves it
    behind, and the next run in the folder removes it (under the lock).
    """
    quiet_mlflow()
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    temp = new_file(path.parent, f".{path.name}.creating-")  # empty: sqlite initialises it
    uri = f"sqlite:///{temp}"
    store = None
    try:
        # MLflow's own defaults: the Default experiment's artifacts in ./mlruns, as MlflowClient would
        store = SqlAlchemyStore(uri, DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)
        store.engine.dispose()
        with open(temp, "rb+") as file:
            os.fsync(file.fileno())
        if replace:
            os.replace(temp, path)
        else:
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
        if store is not None:
            store.engine.dispose()
        with contextlib.suppress(AttributeError, TypeError):  # MLflow's engine cache, keyed by URI
            SqlAlchemyStore._engine_map.pop(uri, None)
            for key, engine in list(SqlAlchemyStore._engine_map.items()):
                if scheme_of(key) == "sqlite" and sqlite_path(key) == path:
                    engine.dispose()  # connected to a file no longer there: reconnect to the new one
        for leftover in (temp, Path(f"{temp}-journal"), Path(f"{temp}-wal"), Path(f"{temp}-shm")):
            with contextlib.suppress(OSError):
                leftover.unlink()


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

    After the import: MLflow configures its loggers when it is first imported.
    """
    import logging

    import mlflow  # noqa: F401

    for logger in ("mlflow", "alembic"):
        logging.getLogger(logger).setLevel(logging.WARNING)


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
    if scheme == "sqlite":
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


@contextlib.contextmanager
def http_limits(uri: str):
    """MLflow's HTTP client fails fast for ``uri`` while tracked (optlab retries itself), unless the user
    set these limits."""
    added = []
    if scheme_of(uri) in ("http", "https"):
        added = [key for key in HTTP_LIMITS if key not in os.environ]
        os.environ.update({key: HTTP_LIMITS[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


# -- thinning ------------------------------------------------------------------------------------


def stride_for(count: int, max_points: int) -> int:
    """The interval sending at most ``max_points - 2`` of ``count`` points: room is left for the last and the best."""
    if count <= max_points:
        return 1
    return -(-count // (max_points - 2))


class Series:
    """One metric's points: every ``stride``-th from the first is sent at once; the last and the best
    (``pick`` is ``min``, ``max`` or None) are sent at the end (:meth:`extras`) unless already sent."""

    __slots__ = ("best", "count", "last", "lower", "points", "stride")

    def __init__(self, stride: int, pick):
        self.stride = stride
        self.lower = None if pick is None else pick is min
        self.count = 0
        self.last = None  # (value, timestamp_ms, step, sent)
        self.best = None
        self.points: list[tuple[int, float]] = []  # (step, value) sent, for the plots

    def add(self, value: float, timestamp: int, step: int) -> bool:
        """Record a point; True if it is to be sent now."""
        send = self.count % self.stride == 0
        self.count += 1
        self.last = point = (value, timestamp, step, send)
        lower = self.lower
        if lower is not None and math.isfinite(value):
            best = self.best
            if best is None or (value < best[0] if lower else value > best[0]):
                self.best = point
        if send:
            self.points.append((step, value))
        return send

    def extras(self) -> list[tuple[float, int, int]]:
        """The last and the best points if they were not sent, as (value, timestamp_ms, step)."""
        out = []
        for point in (self.last, self.best):
            if point is not None and not point[3] and not (out and out[0][2] == point[2]):
                out.append((point[0], point[1], point[2]))
        return out


# -- the callback --------------------------------------------------------------------------------


class MlflowTracker(Callback):
    """Logs one MLflow run per training run (see docs/tracking.md for what is recorded).

    ``log_every``: ``"auto"`` sends at most ``max_points`` points of every metric, per-step and
    per-epoch, the first, the last and the best always among them; an integer N sends every
    N-th step's loss and learning rate (plus the last and the best) and every epoch's metrics.
    ``flush_timeout``: seconds :meth:`close` waits for the store. ``output_dir``: where metrics the
    store did not take are kept (default ``.optlab/undelivered/`` in the working directory).

    After :meth:`close`: ``status`` (the terminal status set in the store, or None), ``kept_path``
    and ``kept_count`` (the file of undelivered metrics, or None and 0).
    """

    registry_name = "mlflow_tracker"

    def __init__(
        self,
        uri,
        experiment,
        config: dict,
        tags: dict,
        run_name: str,
        log_every="auto",
        *,
        max_points: int = 500,
        flush_timeout: float = 10.0,
        output_dir=None,
    ):
        super().__init__()
        if log_every != "auto" and (not isinstance(log_every, int) or isinstance(log_every, bool) or log_every < 1):
            raise TrackingError(f'tracking.log_every must be "auto" or an integer >= 1; received {log_every!r}')
        if not isinstance(max_points, int) or isinstance(max_points, bool) or max_points < 3:
            raise TrackingError(
                f"tracking.max_points must be an integer >= 3 (first, last and best); received {max_points!r}"
            )
        if isinstance(flush_timeout, bool) or not isinstance(flush_timeout, (int, float)) or not flush_timeout >= 0:
            raise TrackingError(f"tracking.flush_timeout must be a number of seconds >= 0; received {flush_timeout!r}")
        if not isinstance(experiment, str) or not experiment.strip():
            raise TrackingError(
                f"tracking.experiment must be a non-empty name (tracking.experiment=optlab); received {experiment!r}"
            )
        self.uri = uri or default_uri()
        self.experiment = experiment
        self.config = config
        self.tags = tags
        self.run_name = run_name
        self.log_every = log_every
        self.max_points = max_points
        self.flush_timeout = float(flush_timeout)
        self.output_dir = Path(output_dir) if output_dir is not None else Path.cwd() / ".optlab" / "undelivered"
        self.run_id = None
        self.client = None
        self.status: str | None = None
        self.kept_path: Path | None = None
        self.kept_count = 0
        self.kept_error: str | None = None
        self.metrics_logged = 0  # points handed to the writer
        self._closed = False
        self._writer = None
        self._http = None
        self._pending: list = []
        self._last_flush = time.time()
        self._series: dict[str, Series] = {}
        self._step_stride = log_every if log_every != "auto" else 1
        self._epoch_stride = 1
        self._kept: list[str] = []  # the kept metrics, as lines of the kept file
        self._extras_added = False
        self._kept_end: dict | None = None
        self._keep_lock = threading.Lock()

    # -- set-up ---------------------------------------------------------------------------
    def start(self) -> None:
        """Check the store and open the run; raises TrackingError (one line) if the store cannot be used.

        A missing sqlite store is created atomically; a dead server is found in seconds.
        """
        self._http = http_limits(self.uri)
        self._http.__enter__()
        try:
            with store_lock(self.uri):  # parallel runs of a sweep must not create one store twice
                self.client = check_store(self.uri)
                experiment_id = self._experiment_id()
                run = self.client.create_run(experiment_id, tags=self.tags, run_name=self.run_name)
                self.run_id = run.info.run_id
            self._log_start()
        except TrackingError:
            self._abort_start("FAILED")
            raise
        except Exception as exc:
            self._abort_start("FAILED", _short(exc))
            raise TrackingError(f"tracking store {shown(self.uri)}: {_short(exc)}; {ADVICE}") from None
        except BaseException:  # Ctrl-C, SIGTERM: no run left RUNNING
            self._abort_start("KILLED", "interrupted while the run was being opened")
            raise

    def _abort_start(self, status: str, error: str | None = None) -> None:
        self._closed = True
        if self._writer is not None:
            self._writer.abandon()
        if self.run_id is not None and self.client is not None:
            client, run_id = self.client, self.run_id

            def end():
                if error:
                    client.set_tag(run_id, "error", error[:5000])
                client.set_terminated(run_id, status=status)

            ok, _ = bounded(end, KILL_TIMEOUT)
            self.status = status if ok else None
        self._release_http()

    def _release_http(self) -> None:
        if self._http is not None:
            self._http.__exit__(None, None, None)
            self._http = None

    def _experiment_id(self) -> str:
        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is None:
            location = None
            if self.uri.startswith("sqlite:///") and "MLFLOW_TRACKING_URI" not in os.environ:
                location = (Path(self.uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
            try:
                return self.client.create_experiment(self.experiment, artifact_location=location)
            except Exception as exc:
                experiment = self.client.get_experiment_by_name(self.experiment)  # a parallel run created it
                if experiment is None:
                    raise TrackingError(
                        f"tracking store {shown(self.uri)}: cannot create experiment {self.experiment!r} "
                        f"({_short(exc)}); pick another name with tracking.experiment=..., or {ADVICE}"
                    ) from None
        if experiment.lifecycle_stage != "active":
            raise TrackingError(
                f"tracking store {shown(self.uri)}: experiment {self.experiment!r} is deleted; restore it with "
                f"`mlflow experiments restore --experiment-id {experiment.experiment_id}` "
                f"(MLFLOW_TRACKING_URI={shown(self.uri)}), or pick another name with tracking.experiment=..."
            )
        return experiment.experiment_id

    def _log_start(self) -> None:
        import yaml
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(self.config).items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])
        self.client.log_text(self.run_id, yaml.safe_dump(self.config, sort_keys=False), "config.yaml")
        self._last_flush = time.time()
        self._writer = Writer(self.client, self.run_id, self._keep)
        self._writer.start()

    # -- gathering --------------------------------------------------------------------------
    def _series_for(self, name: str, stride: int) -> Series:
        series = self._series.get(name)
        if series is None:
            from .direction import direction

            series = self._series[name] = Series(stride, direction(name))
        return series

    def _add(self, key: str, value: float, timestamp: int, step: int, stride: int):
        series = self._series.get(key) or self._series_for(key, stride)
        if series.add(value, timestamp, step):
            self._pending.append((key, value, timestamp, step))
            self.metrics_logged += 1

    def _maybe_hand_over(self, now: float) -> None:
        if now - self._last_flush >= FLUSH_SECONDS:
            self._last_flush = now
            self._hand_over()

    def _hand_over(self) -> None:
        if self._pending and self._writer is not None:
            self._writer.put(self._pending)  # then cleared: an interrupt in between duplicates, never loses
            self._pending = []

    # -- callback hooks ---------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        if self.log_every == "auto":  # planned totals: an early stop or a resumed run sends fewer points
            trainer = self.trainer
            self._step_stride = stride_for(trainer.epochs * trainer.steps_per_epoch, self.max_points)
            self._epoch_stride = stride_for(trainer.epochs, self.max_points)

    def on_train_batch_end(self, batch, logs=None):
        if not logs:
            return
        now = time.time()
        timestamp, step = int(now * 1000), self.trainer.step
        loss, lr = logs.get("loss"), logs.get("learning_rate")
        if loss is not None:
            self._add("loss", float(loss), timestamp, step, self._step_stride)
        if lr is not None:
            self._add("learning_rate", float(lr), timestamp, step, self._step_stride)
        self._maybe_hand_over(now)

    def on_epoch_end(self, epoch, logs=None):
        now = time.time()
        timestamp, step = int(now * 1000), self.trainer.step
        for key, value in (logs or {}).items():
            if key == "learning_rate":
                continue  # the per-step curve has it
            name = "epoch_loss" if key == "loss" else key
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            self._add(name, value, timestamp, step, self._epoch_stride)
        self._maybe_hand_over(now)

    # -- the end ----------------------------------------------------------------------------
    def close(self, status: str, error: str | None = None) -> None:
        """Write the metrics (within ``flush_timeout``), log the plots, end the run with ``status``.

        What the store did not take is kept in ``kept_path``. A ``KeyboardInterrupt`` (Ctrl-C,
        SIGTERM as ``Terminated``) while waiting stops the wait: the rest is kept, the run is
        marked KILLED (a FAILED run stays FAILED), and the interrupt goes on. Keeping the rest
        and setting the status are not interrupted (signals wait a few seconds at most). A no-op
        (``status`` None) if no run was opened.
        """
        if self._closed:
            return
        self._closed = True
        if self.run_id is None or self._writer is None:
            self.status = None
            self._release_http()
            return
        deadline = time.monotonic() + self.flush_timeout
        plot_error = None
        try:
            self._add_extras()
            self._hand_over()
            self._writer.finish(deadline)
            try:  # drawn while the writer stores the last metrics
                images = self._render()
            except Exception as exc:  # a plot must never hide the run's own outcome
                images, plot_error = {}, exc
            self._writer.wait(deadline)
            if images:  # until the deadline (1 s at least)
                ok, exc = bounded(lambda: self._log_images(images), max(deadline - time.monotonic(), 1.0))
                plot_error = plot_error if ok else plot_error or exc
        except KeyboardInterrupt as interrupt:
            final = status if status in ("FAILED", "KILLED") else "KILLED"
            with signals_held(redeliver=False):
                self._keep_unwritten()
                self._end(final, error or str(interrupt) or "interrupted (Ctrl-C)", None, KILL_TIMEOUT)
            raise
        with signals_held():  # a Ctrl-C now waits (a few seconds at most) for the status to be set
            self._keep_unwritten()
            self._end(status, error, plot_error, STATUS_TIMEOUT)

    def _add_extras(self) -> None:
        """Each metric's last and best points, if not sent yet (once; a repeat after an interrupt is harmless)."""
        if not self._extras_added:
            extras = [(key, *point) for key, series in self._series.items() for point in series.extras()]
            self._pending.extend(extras)
            self.metrics_logged += len(extras)
            self._extras_added = True

    def _keep_unwritten(self) -> None:
        self._add_extras()
        rest = self._writer.abandon() + self._pending
        self._pending = []
        if rest:
            self._keep(rest)

    def _end(self, status, error, plot_error, timeout) -> None:
        """The tags and the terminal status, within ``timeout`` s; kept for ``optlab.deliver`` if the store fails."""
        from mlflow.entities import RunTag

        client, run_id = self.client, self.run_id
        tags = {}
        if plot_error is not None:
            tags["plot_error"] = f"{type(plot_error).__name__}: {plot_error}"[:5000]
        if error:
            tags["error"] = error[:5000]
        if self.kept_count:
            tags[UNDELIVERED_TAG] = f"{self.kept_count} metrics kept in {self.kept_path}"[:5000]
        end_time = int(time.time() * 1000)

        def finish():
            if tags:
                client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            client.set_terminated(run_id, status=status, end_time=end_time)

        ok, _ = bounded(finish, timeout)
        self.status = status if ok else None
        if not ok:  # kept too: `python -m optlab.deliver` sets it
            self._kept_end = {"status": status, "end_time": end_time, "tags": tags}
            self._keep([])
        self._release_http()

    # -- metrics the store did not take --------------------------------------------------------
    def _keep(self, metrics) -> None:
        """Add ``metrics`` (key, value, timestamp_ms, step) to the kept file, rewritten atomically.

        Called by the writer (for what the store refused) and by :meth:`close` (for what it did
        not take in time); the writer's hand-over makes sure no metric is passed twice.
        """
        with self._keep_lock:
            self._kept.extend(map(metric_line, metrics))
            path = self.output_dir / f"undelivered-{self.run_id}.jsonl"
            header = {
                "format": KEPT_FORMAT,
                "version": 1,
                "tracking_uri": self.uri,
                "experiment": self.experiment,
                "run_id": self.run_id,
                "run_name": self.run_name,
                "end": self._kept_end,
            }
            try:
                atomic_write(path, "\n".join([json.dumps(header), *self._kept]) + "\n")
            except OSError as exc:
                self.kept_error = f"{path}: {exc.strerror or exc}"
                self.kept_path = None
            else:
                self.kept_error = None
                self.kept_path = path
            self.kept_count = len(self._kept)

    def undelivered_message(self) -> str | None:
        """One line for the user if anything did not reach the store (None if everything did)."""
        store = shown(self.uri)
        if self.kept_error is not None:
            return f"{self.kept_count} metrics could not be written to {store}, nor kept locally ({self.kept_error})"
        if self.kept_path is None:
            return None
        what = []
        if self.kept_count:
            what.append(f"{self.kept_count} metrics could not be written to {store}")
        if self._kept_end is not None:
            what.append(f"the run's status ({self._kept_end['status']}) could not be set in {store}")
        path = self.kept_path
        return f"{' and '.join(what)}; kept in {path}; deliver them with: python -m optlab.deliver {path}"

    # -- artifacts --------------------------------------------------------------------------
    def _render(self) -> dict[str, bytes]:
        """The run's plots as PNG bytes: loss and learning-rate curves, and the path on 2-D problems."""
        images = {}
        series = {name: sorted(s.points + [(p[2], p[0]) for p in s.extras()]) for name, s in self._series.items()}
        if series.get("loss"):
            images["curves.png"] = png(curves_figure(series, self.run_name))
        trainer = self.trainer
        if trainer is not None and trainer.problem.record_path and trainer.history.path:
            images["path.png"] = png(path_figure(trainer.problem, np.array(trainer.history.path), self.run_name))
        return images

    def _log_images(self, images: dict[str, bytes]) -> None:
        with tempfile.TemporaryDirectory() as folder:
            for name, data in images.items():
                file = Path(folder) / name
                file.write_bytes(data)
                self.client.log_artifact(self.run_id, str(file))


class Writer(threading.Thread):
    """Logs batches of (key, value, timestamp_ms, step) with ``log_batch``, off the training thread.

    A chunk the store refuses is tried again after each of ``RETRY_DELAYS`` (never past the
    deadline that :meth:`finish` sets); then it and the rest of its batch go to ``keep``.
    :meth:`abandon` stops the writer and returns everything not yet written or kept.
    """

    def __init__(self, client, run_id: str, keep):
        super().__init__(name="optlab-mlflow-writer", daemon=True)
        self.client, self.run_id, self.keep = client, run_id, keep
        self.cond = threading.Condition()
        self.todo: list[list] = []
        self.current: list = []
        self.done = 0  # items of `current` written or kept
        self.closing = False
        self.abandoned = False
        self.deadline: float | None = None
        self.written = 0
        self.error: str | None = None

    def put(self, batch: list) -> None:
        with self.cond:
            if len(self.todo) >= MAX_WAITING:
                self.todo[-1].extend(batch)
            else:
                self.todo.append(batch)
            self.cond.notify_all()

    def finish(self, deadline: float) -> None:
        """No more batches: write what is waiting, and stop retrying at ``deadline`` (time.monotonic)."""
        with self.cond:
            self.closing = True
            self.deadline = deadline
            self.cond.notify_all()

    def abandon(self) -> list:
        with self.cond:
            self.abandoned = True
            rest = self.current[self.done :] + [m for batch in self.todo for m in batch]
            self.todo, self.current, self.done = [], [], 0
            self.cond.notify_all()
        return rest

    def wait(self, deadline: float) -> bool:
        """Wait for the writer until ``deadline``; True if it is done. Interruptible (Ctrl-C)."""
        while self.is_alive():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.join(min(left, 0.1))
        return True

    def run(self) -> None:
        from mlflow.entities import Metric

        while True:
            with self.cond:
                while not self.todo and not self.closing and not self.abandoned:
                    self.cond.wait()
                if self.abandoned or not self.todo:
                    return
                self.current = batch = [m for b in self.todo for m in b]
                self.todo, self.done = [], 0
            for start in range(0, len(batch), BATCH):
                chunk = batch[start : start + BATCH]
                if self._write([Metric(*m) for m in chunk]):
                    with self.cond:
                        if self.abandoned:
                            return
                        self.written += len(chunk)
                        self.done = start + len(chunk)
                    continue
                with self.cond:  # the store is down now: keep the rest, try the next batch afresh
                    if self.abandoned:  # close() has taken them
                        return
                    self.done = len(batch)
                self.keep(batch[start:])
                break

    def _write(self, metrics) -> bool:
        for attempt in range(len(RETRY_DELAYS) + 1):
            try:
                self.client.log_batch(self.run_id, metrics=metrics)
                return True
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {_short(exc)}"
            if attempt == len(RETRY_DELAYS):
                return False
            with self.cond:
                wake = time.monotonic() + RETRY_DELAYS[attempt]
                while not self.abandoned and (left := wake - time.monotonic()) > 0:
                    if self.deadline is not None and wake > self.deadline:
                        return False
                    self.cond.wait(left)
                if self.abandoned:
                    return False
        return False


# -- the kept file -------------------------------------------------------------------------------


def atomic_write(path: Path, text: str) -> None:
    """``text`` to ``path`` through a temporary file in the same folder: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    name = new_file(path.parent, f".{path.name}.", ".tmp")
    try:
        with open(name, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise


_KEYS: dict[str, str] = {}


def metric_line(metric) -> str:
    """``["loss", 0.25, 1795612202301, 7]``: one metric (key, value, timestamp_ms, step) as a JSON line.

    Twice as fast as ``json.dumps`` (an interrupted close() may keep 100,000s); NaN and
    infinities as Python's json writes and reads them.
    """
    key, value, timestamp, step = metric
    quoted = _KEYS.get(key)
    if quoted is None:
        quoted = _KEYS[key] = json.dumps(key)
    value = float(value)
    text = repr(value) if math.isfinite(value) else "NaN" if value != value else ("-" if value < 0 else "") + "Infinity"
    return f"[{quoted}, {text}, {int(timestamp)}, {int(step)}]"


def read_kept(path: Path) -> tuple[dict, list[tuple]]:
    """The header and the metrics of a file of undelivered metrics; TrackingError if optlab did not write it."""
    refuse = f"{path} is not a file of undelivered metrics written by optlab (undelivered-<run id>.jsonl)"
    if not KEPT_NAME.fullmatch(path.name) or not path.is_file():
        raise TrackingError(refuse)
    try:
        with open(path, encoding="utf-8") as file:
            header = json.loads(file.readline())
            if not isinstance(header, dict) or header.get("format") != KEPT_FORMAT:
                raise ValueError
            metrics = [tuple(json.loads(line)) for line in file if line.strip()]
        if not all(len(m) == 4 and isinstance(m[0], str) for m in metrics):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise TrackingError(refuse) from None
    return header, metrics


# -- helpers -------------------------------------------------------------------------------------


def bounded(function, timeout: float) -> tuple[bool, BaseException | None]:
    """Call ``function`` on a helper thread, waiting at most ``timeout`` s: (succeeded, its error or a TimeoutError)."""
    box: dict = {}

    def target():
        try:
            function()
            box["ok"] = True
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="optlab-mlflow-call", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return False, TimeoutError(f"no answer within {timeout:g} s")
    return "ok" in box, box.get("error")


@contextlib.contextmanager
def signals_held(redeliver: bool = True):
    """SIGINT and SIGTERM wait until the block is over (then, with ``redeliver``, act as they would have).

    Keeps the undelivered metrics and the terminal status from being cut off half-written.
    Only on the main thread (elsewhere a no-op).
    """
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, OSError):
            previous[signum] = signal.signal(signum, lambda number, frame: caught.append((number, frame)))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if redeliver and caught:
            signum, frame = caught[0]
            handler = previous.get(signum)
            if callable(handler):
                handler(signum, frame)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


@contextlib.contextmanager
def store_lock(uri: str):
    """An exclusive lock on the directory of a local sqlite store, so nothing is written beside it.

    A no-op for other stores and where ``flock`` is missing (Windows: parallel sweeps there
    should log to a tracking server).
    """
    if scheme_of(uri) != "sqlite" or sqlite_path(uri) is None:
        yield
        return
    try:
        import fcntl
    except ImportError:
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
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


# -- plots ---------------------------------------------------------------------------------------


def png(figure) -> bytes:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def curves_figure(series: dict[str, list[tuple[int, float]]], title: str):
    """Loss (per step, epoch mean, validation) above the learning rate, against the step.

    ``series``: each metric's logged points as (step, value), sorted by step.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, safe off the main thread

    fig = Figure(figsize=(7, 6))
    fig.subplots_adjust(left=0.12, right=0.97, top=0.93, bottom=0.08, hspace=0.08)
    ax_loss, ax_lr = fig.subplots(2, 1, sharex=True)
    steps, losses = zip(*series["loss"])
    ax_loss.plot(steps, losses, lw=0.8, label="loss (per step)")
    for key, style, label in (("epoch_loss", "o-", "loss (epoch mean)"), ("val_loss", "s-", "val_loss")):
        if series.get(key):
            at, values = zip(*series[key])
            ax_loss.plot(at, values, style, ms=3, label=label)
    if np.all(np.asarray(losses) > 0):
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax_loss.set_yscale("log")  # labelled 0.1, 0.01, 1e-05: plain text, no mathtext to lay out
        ax_loss.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax_loss.yaxis.set_minor_formatter(NullFormatter())
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    if series.get("learning_rate"):
        at, rates = zip(*series["learning_rate"])
        ax_lr.plot(at, rates, lw=1.0, color="tab:green")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    fig.suptitle(title)
    return fig


def path_figure(problem, path: np.ndarray, title: str):
    """The optimizer's path over the contours of a 2-D problem."""
    from matplotlib.figure import Figure

    points = np.vstack([path, np.array([[problem.x0, problem.y0]]), np.array(problem.minima)])
    finite = points[np.all(np.isfinite(points), axis=1)]
    lo, hi = finite.min(axis=0), finite.max(axis=0)
    pad = 0.15 * (hi - lo) + 0.5
    xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], 200)
    ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], 200)
    grid = np.array([[problem.f_grad(np.float64(x), np.float64(y))[0] for x in xs] for y in ys])
    fig = Figure(figsize=(6, 5), layout="tight")
    ax = fig.subplots()
    ax.contour(xs, ys, np.log1p(grid - grid.min()), levels=30, cmap="viridis", linewidths=0.6)
    full = np.vstack([[problem.x0, problem.y0], path])
    ax.plot(full[:, 0], full[:, 1], "-", color="tab:red", lw=1.0, label="path")
    ax.plot(full[0, 0], full[0, 1], "o", color="black", label="start")
    minima = np.array(problem.minima)
    ax.plot(minima[:, 0], minima[:, 1], "*", color="gold", ms=12, mec="black", label="minima")
    ax.set_title(title)
    ax.legend(loc="best")
    return fig
