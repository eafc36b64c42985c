"""``python -m optlab.deliver FILE...``: write metrics a run could not deliver to its MLflow run.

When the tracking store fails during a run (or the end of a run waits longer than
``tracking.flush_timeout``), the metrics the store did not take are kept in
``undelivered-<run id>.jsonl`` in the run's folder. This command logs them to the same run, in
the store named in the file or given with ``--tracking-uri``, then sets the run's status if that
could not be set either. Points already in the store are skipped, so delivering twice is
harmless. The file is deleted only once every point in it is found in the store; a file that
optlab did not write is refused and left alone.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from .store import TrackingError, check_store, http_limits, shown, store_lock
from .tracking import BATCH, RETRY_DELAYS, UNDELIVERED_TAG, read_kept


def _identity(key: str, value: float, timestamp: int, step: int) -> tuple:
    return key, int(timestamp), int(step), "nan" if math.isnan(value) else float(value)


def _in_store(client, run_id: str, keys) -> set[tuple]:
    found = set()
    for key in keys:
        for m in client.get_metric_history(run_id, key):
            found.add(_identity(m.key, m.value, m.timestamp, m.step))
    return found


def _log(client, run_id: str, metrics: list) -> None:
    """``log_batch`` in chunks of ``BATCH``, each retried after ``RETRY_DELAYS``."""
    from mlflow.entities import Metric

    for start in range(0, len(metrics), BATCH):
        chunk = [Metric(*m) for m in metrics[start : start + BATCH]]
        for delay in (*RETRY_DELAYS, None):
            try:
                client.log_batch(run_id, metrics=chunk)
                break
            except Exception:
                if delay is None:
                    raise
                time.sleep(delay)


def deliver(path: Path, uri: str | None = None) -> tuple[int, int, str]:
    """Deliver one kept file; returns (points written, points already there, the store's URI).

    Raises TrackingError for a file optlab did not write or a store that cannot be used;
    anything the store refuses propagates, and the file stays.
    """
    from mlflow.entities import RunTag
    from mlflow.exceptions import MlflowException

    header, metrics = read_kept(path)
    uri = uri or header["tracking_uri"]
    run_id = header["run_id"]
    with http_limits(uri):
        with store_lock(uri):
            client = check_store(uri, create=False)
        try:
            client.get_run(run_id)
        except MlflowException as exc:
            raise TrackingError(
                f"run {run_id} is not in tracking store {shown(uri)} ({exc.message.splitlines()[0][:200]}); "
                "give its store with --tracking-uri URI"
            ) from None
        keys = sorted({m[0] for m in metrics})
        present = _in_store(client, run_id, keys)
        todo = [m for m in metrics if _identity(*m) not in present]
        _log(client, run_id, todo)
        end = header.get("end")
        if end:
            tags = end.get("tags") or {}
            if tags:
                client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            client.set_terminated(run_id, status=end["status"], end_time=end.get("end_time"))
        missing = {_identity(*m) for m in metrics} - _in_store(client, run_id, keys)
        if missing:
            raise TrackingError(
                f"{len(missing)} of the metrics in {path} are still not in tracking store {shown(uri)}; "
                "the file is kept, try again"
            )
        run = client.get_run(run_id)
        if UNDELIVERED_TAG in run.data.tags:
            client.delete_tag(run_id, UNDELIVERED_TAG)
    path.unlink()
    return len(todo), len(metrics) - len(todo), uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m optlab.deliver", description=__doc__.split("\n\n")[0].split(": ", 1)[1]
    )
    parser.add_argument("files", nargs="+", type=Path, help="undelivered-<run id>.jsonl files a run kept")
    parser.add_argument("--tracking-uri", help="the store to write to (default: the one named in each file)")
    args = parser.parse_args(argv)
    status = 0
    for path in args.files:
        try:
            written, skipped, uri = deliver(path, args.tracking_uri)
        except TrackingError as exc:
            print(f"optlab.deliver: error: {exc}", file=sys.stderr)
            status = max(status, 2 if "not a file of undelivered" in str(exc) else 1)
            continue
        except Exception as exc:
            line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            message = f"{path}: the store failed ({line}); the file is kept, try again"
            print(f"optlab.deliver: error: {message}", file=sys.stderr)
            status = max(status, 1)
            continue
        already = f" ({skipped} were already there)" if skipped else ""
        print(f"{path}: {written} metrics written to {shown(uri)}{already}; file removed")
    return status
