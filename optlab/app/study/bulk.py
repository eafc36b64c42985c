"""Finished runs written to MLflow's SQL store many at a time, in one transaction.

MLflow has no call that creates many runs; through its client a finished run is three calls
(``create_run``, ``log_batch``, ``set_terminated``), which its SQL store serves with 12 sessions
and 6 commits: ~30 ms of CPU per run in sqlite. A study writes hundreds of children, so for a
store that MLflow serves through SQLAlchemy (``sqlite:``, ``postgresql:``, ``mysql:``, ``mssql:``)
the writer inserts the rows those calls would make (the run, its tags, params, metric points and
latest metrics) with MLflow's own table models, many runs per transaction: ~1 ms per run. A batch
lands whole or not at all.

The rows are the ones MLflow's calls write (a test compares the two, table by table): ``NaN`` is
stored as 0 with ``is_nan``, ``±inf`` as the largest float, a point repeated exactly is stored
once, and the latest value of a key is the point with the largest (step, timestamp, value). If the
installed MLflow's tables have other columns than these, :func:`bulk_writer` returns ``None`` and
the caller writes through the client.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import NamedTuple

COLUMNS = {
    "runs": {
        "run_uuid",
        "name",
        "source_type",
        "source_name",
        "entry_point_name",
        "user_id",
        "status",
        "start_time",
        "end_time",
        "deleted_time",
        "source_version",
        "lifecycle_stage",
        "artifact_uri",
        "experiment_id",
    },
    "tags": {"key", "value", "run_uuid"},
    "params": {"key", "value", "run_uuid"},
    "metrics": {"key", "value", "timestamp", "step", "is_nan", "run_uuid"},
    "latest_metrics": {"key", "value", "timestamp", "step", "is_nan", "run_uuid"},
}
LARGEST = 1.7976931348623157e308  # MLflow's stand-in for an infinite value: SQL has no inf


class Child(NamedTuple):
    """One finished run: its name, tags and params (``str -> str``), metrics ``(key, value, step)``."""

    name: str
    tags: dict
    params: dict
    metrics: list


def bulk_writer(client):
    """A :class:`BulkWriter` for ``client``'s store if MLflow serves it with the tables it knows, else None."""
    try:
        from mlflow.store.tracking.dbmodels import models
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = client._tracking_client.store
        tables = (models.SqlRun, models.SqlTag, models.SqlParam, models.SqlMetric, models.SqlLatestMetric)
    except (ImportError, AttributeError):
        return None
    if not isinstance(store, SqlAlchemyStore):
        return None
    if any({c.name for c in t.__table__.columns} != COLUMNS[t.__tablename__] for t in tables):
        return None
    return BulkWriter(store, tables)


class BulkWriter:
    """Writes :class:`Child` runs into one experiment of an MLflow SQL store (see the module's docs)."""

    def __init__(self, store, tables):
        self.store, self.tables = store, tables

    def write(self, experiment_id: str, children: list[Child]) -> list[str]:
        """Insert ``children`` as FINISHED runs of ``experiment_id`` in one transaction; their run ids.

        Raises whatever the store raises (nothing is then written), and for an experiment that
        is not active.
        """
        from mlflow.entities import LifecycleStage
        from sqlalchemy import insert

        experiment = self.store.get_experiment(experiment_id)
        if experiment.lifecycle_stage != LifecycleStage.ACTIVE:
            raise ValueError(f"experiment {experiment_id} is {experiment.lifecycle_stage}, not active")
        location = experiment.artifact_location.rstrip("/")
        now = int(time.time() * 1000)
        ids = [uuid.uuid4().hex for _ in children]
        rows: dict = {name: [] for name in COLUMNS}
        for run_id, child in zip(ids, children):
            rows["runs"].append(
                {
                    "run_uuid": run_id,
                    "name": child.name,
                    "source_type": "UNKNOWN",
                    "source_name": "",
                    "entry_point_name": "",
                    "user_id": child.tags.get("mlflow.user", "unknown"),
                    "status": "FINISHED",
                    "start_time": now,
                    "end_time": now,
                    "deleted_time": None,
                    "source_version": "",
                    "lifecycle_stage": LifecycleStage.ACTIVE,
                    "artifact_uri": f"{location}/{run_id}/artifacts",
                    "experiment_id": int(experiment_id),
                }
            )
            tags = {**child.tags, "mlflow.runName": child.name}
            rows["tags"] += [{"run_uuid": run_id, "key": k, "value": v} for k, v in tags.items()]
            rows["params"] += [{"run_uuid": run_id, "key": k, "value": v} for k, v in child.params.items()]
            points, latest = _points(child.metrics, now)
            rows["metrics"] += [{"run_uuid": run_id, **p} for p in points]
            rows["latest_metrics"] += [{"run_uuid": run_id, **p} for p in latest]
        with self.store.ManagedSessionMaker(read_only=False) as session:  # commits on leaving, or rolls back
            for table in self.tables:
                if rows[table.__tablename__]:
                    session.execute(insert(table), rows[table.__tablename__])
        return ids


def _points(metrics: list, timestamp: int) -> tuple[list, list]:
    """The stored rows of ``(key, value, step)`` metrics: distinct points, and each key's latest."""
    points: dict = {}
    latest: dict = {}
    for key, value, step in metrics:
        is_nan = math.isnan(value)
        stored = 0.0 if is_nan else max(-LARGEST, min(LARGEST, value))
        row = {"key": key, "value": stored, "timestamp": timestamp, "step": int(step), "is_nan": is_nan}
        points.setdefault((key, stored, int(step), is_nan), row)
        if key not in latest or (row["step"], stored) > (latest[key]["step"], latest[key]["value"]):
            latest[key] = row
    return list(points.values()), list(latest.values())
