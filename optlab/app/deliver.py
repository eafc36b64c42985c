"""``python -m optlab.deliver FILE...``: write metrics a run could not deliver to its MLflow run.

When the tracking store fails during a run (or the end of a run waits longer than
``tracking.flush_timeout``), the metrics the store did not take are kept in
``undelivered-<run id>.jsonl`` in the run's folder, and the plots in ``undelivered-<run id>/``
beside it. This command logs them to the same run, in the store named in the file or given with
``--tracking-uri``, then sets the run's status if that could not be set either. Points already
in the store are skipped, so delivering twice is harmless. The file (and its plots) are deleted
only once every point in it is found in the store; a file that optlab did not write is refused
and left alone.

The file is read and sent ``BATCH`` metrics at a time, with a progress bar (a line every
``PROGRESS_SECONDS`` when not on a terminal): memory holds 16 bytes per metric of the file and
per point the store has of those metrics (to skip what is there and check what arrived), not the
metrics themselves.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .run import Terminated, handling, raise_stop
from .store import TrackingError, check_store, http_limits, shown, store_lock
from .tracking import (
    BATCH,
    RETRY_DELAYS,
    UNDELIVERED_TAG,
    kept_metrics,
    metric_digest,
    read_kept_header,
    stored_digests,
)

PROGRESS_SECONDS = 10.0  # a line this often when the output is not a terminal


class Delivered(NamedTuple):
    written: int  # distinct points written now
    skipped: int  # distinct points the store had already
    uri: str
    plots: list[str]  # plots logged as artifacts


class Progress:
    """How far a delivery is: a tqdm bar on a terminal, elsewhere (a log, a pipe) a line every
    ``PROGRESS_SECONDS``; nothing without a stream."""

    def __init__(self, stream, label: str, total: int):
        self.stream, self.label, self.total, self.count = stream, label, total, 0
        self.bar = None
        self.started = self.shown = time.monotonic()
        if stream is not None and getattr(stream, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit=" metrics", unit_scale=True, file=stream, leave=False)

    def update(self, count: int) -> None:
        self.count += count
        if self.bar is not None:
            self.bar.update(count)
        elif self.stream is not None and time.monotonic() - self.shown >= PROGRESS_SECONDS:
            self.shown = now = time.monotonic()
            rate = self.count / max(now - self.started, 1e-9)
            print(f"{self.label}: {self.count} of {self.total} metrics ({rate:.0f}/s)", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _say(stream, text: str) -> None:
    if stream is not None:
        print(text, file=stream, flush=True)


def _log(client, run_id: str, metrics: list) -> None:
    """``log_batch`` of at most ``BATCH`` metrics, retried after ``RETRY_DELAYS``."""
    from mlflow.entities import Metric

    chunk = [Metric(*m) for m in metrics]
    for delay in (*RETRY_DELAYS, None):
        try:
            client.log_batch(run_id, metrics=chunk)
            return
        except Exception:
            if delay is None:
                raise
            time.sleep(delay)


def _scan(path: Path) -> tuple[np.ndarray, list[str]]:
    """Every line of the file checked before anything is written: its metrics' digests (in file order) and keys."""
    keys: set[str] = set()
    found = bytearray()
    for metric in kept_metrics(path):
        keys.add(metric[0])
        found += metric_digest(*metric)
    return np.frombuffer(bytes(found), dtype="S16"), sorted(keys)


def _plots(path: Path, names: list[str], progress) -> tuple[Path, list[Path]]:
    """The kept plots (in ``undelivered-<run id>/`` beside the file) that are there; the others are named."""
    folder = path.with_suffix("")
    files = [folder / name for name in names]
    missing = [str(file) for file in files if not file.is_file()]
    if missing:
        _say(progress, f"optlab.deliver: warning: {', '.join(missing)} not found: not delivered")
    return folder, [file for file in files if file.is_file()]


def deliver(path: Path, uri: str | None = None, progress=None) -> Delivered:
    """Deliver one kept file (its metrics, plots and end status); ``progress``: a stream for progress lines.

    Raises TrackingError for a file optlab did not write or a store that cannot be used;
    anything the store refuses propagates, and the file stays.
    """
    from mlflow.entities import RunTag
    from mlflow.exceptions import MlflowException

    header = read_kept_header(path)
    wanted, keys = _scan(path)
    folder, plots = _plots(path, header.get("plots") or [], progress)
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
        _say(progress, f"{path}: {len(wanted)} metrics for run {run_id}; asking {shown(uri)} which it has")
        present = np.isin(wanted, stored_digests(client, run_id, keys))
        bar = Progress(progress, "writing", int(len(wanted) - present.sum()))
        try:
            chunk: list = []
            for index, metric in enumerate(kept_metrics(path)):
                if index >= len(wanted):
                    raise TrackingError(f"{path} changed while it was being delivered; deliver it again")
                if not present[index]:
                    chunk.append(metric)
                if len(chunk) == BATCH:
                    _log(client, run_id, chunk)
                    bar.update(len(chunk))
                    chunk = []
            if chunk:
                _log(client, run_id, chunk)
                bar.update(len(chunk))
        finally:
            bar.close()
        for file in plots:
            client.log_artifact(run_id, str(file))
        end = header.get("end")
        if end:
            tags = end.get("tags") or {}
            if tags:
                client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            client.set_terminated(run_id, status=end["status"], end_time=end.get("end_time"))
        unique = np.unique(wanted)
        missing = 0  # with nothing to write, every point was found in the store already
        if bar.total:
            _say(progress, f"{path}: checking that every metric is in {shown(uri)}")
            missing = int((~np.isin(unique, stored_digests(client, run_id, keys))).sum())
        if missing:
            raise TrackingError(
                f"{missing} of the metrics in {path} are still not in tracking store {shown(uri)}; "
                "the file is kept, try again"
            )
        logged = {item.path: item.file_size for item in client.list_artifacts(run_id)} if plots else {}
        absent = [f.name for f in plots if f.name not in logged or logged[f.name] not in (None, f.stat().st_size)]
        if absent:
            raise TrackingError(
                f"the plots {', '.join(absent)} of {path} are not in the run's artifacts; the file is kept, try again"
            )
        run = client.get_run(run_id)
        if UNDELIVERED_TAG in run.data.tags:
            client.delete_tag(run_id, UNDELIVERED_TAG)
    skipped = int(np.isin(unique, wanted[present]).sum())
    for file in plots:  # ours: kept by the run, now in the store
        file.unlink()
    if plots:
        with contextlib.suppress(OSError):
            folder.rmdir()  # the run made it for its plots; only if nothing else is in it
    path.unlink()
    return Delivered(len(unique) - skipped, skipped, uri, [f.name for f in plots])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m optlab.deliver", description=__doc__.split("\n\n")[0].split(": ", 1)[1]
    )
    parser.add_argument("files", nargs="+", type=Path, help="undelivered-<run id>.jsonl files a run kept")
    parser.add_argument("--tracking-uri", help="the store to write to (default: the one named in each file)")
    args = parser.parse_args(argv)
    with handling(raise_stop):
        return _deliver_all(args)


def _deliver_all(args) -> int:
    status = 0
    for path in args.files:
        try:
            written, skipped, uri, plots = deliver(path, args.tracking_uri, progress=sys.stderr)
        except KeyboardInterrupt as interrupt:  # what the store took stays there; delivering again skips it
            print(
                f"\noptlab.deliver: {str(interrupt) or 'interrupted (Ctrl-C)'}: {path} is kept (what the store took "
                "stays there: delivering the file again writes the rest)",
                file=sys.stderr,
            )
            return 143 if isinstance(interrupt, Terminated) else 130
        except TrackingError as exc:
            print(f"optlab.deliver: error: {exc}", file=sys.stderr)
            user_error = any(
                text in str(exc) for text in ("not a file of undelivered", "no such file", "cannot be read")
            )
            status = max(status, 2 if user_error else 1)
            continue
        except Exception as exc:
            line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            message = f"{path}: the store failed ({line}); the file is kept, try again"
            print(f"optlab.deliver: error: {message}", file=sys.stderr)
            status = max(status, 1)
            continue
        already = f" ({skipped} were already there)" if skipped else ""
        logged = f" and the plot{'s' if len(plots) > 1 else ''} {', '.join(plots)}" if plots else ""
        print(f"{path}: {written} metrics{logged} written to {shown(uri)}{already}; file removed")
    return status
