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
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..files import remove_stale_temps, stale_temps, write_bytes_atomic
from .run import Terminated, handling, raise_stop
from .store import TrackingError, check_store, http_limits, shown, store_lock
from .tracking import (
    BATCH,
    RETRY_DELAYS,
    UNDELIVERED_TAG,
    _not_kept,
    experiment_id,
    kept_metrics,
    log_opening,
    metric_digest,
    read_kept_header,
    stored_digests,
)

try:
    import fcntl
except ImportError:  # Windows: no lock against two deliveries of one file at once
    fcntl = None

PROGRESS_SECONDS = 10.0  # a line this often when the output is not a terminal
#: the error tag of a detached run whose record has no end: the points it wrote as it ran, no more
UNENDED = "the run ended without completing its record (its process was killed, or its folder refused the last write)"


class Delivered(NamedTuple):
    written: int  # distinct points written now
    skipped: int  # distinct points the store had already
    uri: str
    plots: list[str]  # plots logged as artifacts
    superseded: str | None = None  # the kept status, not set since the run ended after it: why
    left: str | None = None  # why the delivered file could not be removed (it stays; delivering it again is harmless)


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


def _scan(source) -> tuple[np.ndarray, list[str], int | None]:
    """Every line of the file checked before anything is written: its metrics' digests (in file
    order), keys, and latest timestamp (None without metrics)."""
    keys: set[str] = set()
    found = bytearray()
    latest = None
    for metric in kept_metrics(source):
        keys.add(metric[0])
        found += metric_digest(*metric)
        latest = metric[2] if latest is None else max(latest, metric[2])
    return np.frombuffer(bytes(found), dtype="S16"), sorted(keys), latest


def _plots(path: Path, names: list[str], progress) -> tuple[Path, list[Path]]:
    """The kept plots (in ``undelivered-<run id>/`` beside the file) that are there; the others are named."""
    folder = path.with_suffix("")
    files = [folder / name for name in names]
    missing = [str(file) for file in files if not file.is_file()]
    if missing:
        _say(progress, f"optlab.deliver: warning: {', '.join(missing)} not found: not delivered")
    return folder, [file for file in files if file.is_file()]


NICENESS = 10  # a recording process's priority below the command's: it yields the cores to training
RECORD_TAG = "optlab.record"  # a detached run's record id, on its run: delivering again continues that run


def _open_recorded(client, uri: str, path: Path, header: dict) -> str:
    """The run of a detached run's record (``header["record"]``): found by its tag if an earlier
    delivery opened it, else opened now as :meth:`.MlflowTracker.start` would have (its start time,
    tags, params, data sets and ``config.yaml``)."""
    from mlflow.entities import ViewType

    record, start = header.get("record"), header.get("start")
    if not (isinstance(record, str) and record.isalnum() and isinstance(start, dict)):
        raise TrackingError(f"{path} names no run and no run to open: it is not a file written by optlab")
    experiment = experiment_id(client, uri, header["experiment"])
    found = client.search_runs(
        [experiment], filter_string=f"tags.`{RECORD_TAG}` = '{record}'", run_view_type=ViewType.ALL, max_results=1
    )
    if found:  # opened by a delivery cut short: what it logged of the opening may be missing
        run_id = found[0].info.run_id
    else:
        tags = {**{str(k): str(v) for k, v in (start.get("tags") or {}).items()}, RECORD_TAG: record}
        run = client.create_run(
            experiment, start_time=start.get("start_time"), tags=tags, run_name=header.get("run_name")
        )
        run_id = run.info.run_id
    _log_opening(client, run_id, start)
    return run_id


def _log_opening(client, run_id: str, start: dict) -> None:
    """A detached run's opening (:func:`.tracking.log_opening`), each part unless the run has it already:
    a delivery cut short between opening the run and naming it in the file is continued whole."""
    config = start.get("config") or {}
    log_opening(client, run_id, start.get("params") or {}, start.get("datasets") or [], config, client.get_run(run_id))


def draw_recorded(source, header: dict) -> tuple[dict[str, bytes], dict]:
    """The plots of a detached run's record (its header's ``drawing``: the metrics drawn, whose points
    are the record's, read from ``source``, and a 2-D problem's path), as PNGs by name, and the run's
    end with a plot that failed as its ``plot_error`` tag."""
    from ..problems import get as problem_named
    from .plots import draw
    from .run import _component

    drawing = header["drawing"]
    error, images = None, {}
    try:
        if not isinstance(drawing, dict) or not all(isinstance(k, str) for k in drawing.get("series", [])):
            raise TrackingError(_not_kept(Path(getattr(source, "name", source))))
        series: dict[str, list] = {key: [] for key in drawing.get("series", [])}
        for key, value, _, step in kept_metrics(source):
            if key in series:
                series[key].append((step, value))
        request = {"title": str(drawing.get("title", "")), "series": {k: sorted(v) for k, v in series.items()}}
        if drawing.get("path"):
            config = (header.get("start") or {}).get("config") or {}
            start = drawing.get("start")
            request.update(
                problem=_component("problem", problem_named, config["problem"]),
                path=np.asarray(drawing["path"], dtype=float),
                start=None if start is None else np.asarray(start, dtype=float),
            )
        images = draw(request)
    except TrackingError:
        raise
    except Exception as exc:  # a plot must never cost the run its record
        error = f"{type(exc).__name__}: {exc}"
    end = header.get("end")
    if error is not None and end:
        end = dict(end)
        end["tags"] = {**(end.get("tags") or {}), "plot_error": error[:5000]}
    return images, end


def deliver(path: Path, uri: str | None = None, progress=None, recorder: bool = False) -> Delivered:
    """Deliver one kept file (its metrics, plots and end status); ``progress``: a stream for progress lines.

    The file is read through one descriptor, locked from start to end, and never written: removed
    meanwhile (its folder deleted), it is still delivered whole, and a second delivery of it at
    once is refused. Raises TrackingError for a file optlab did not write, one being delivered by
    another process, one that its recording process (a detached run's, :mod:`.recording`) is
    recording now (``recorder``: this is that process), or a store that cannot be used; anything
    the store refuses propagates, and the file stays.
    """
    from .recording import being_recorded

    first = read_kept_header(path)  # a missing file, or one optlab did not write, said as such
    if _unended(first):
        _salvage(path, first)
    if not recorder and being_recorded(path):
        raise TrackingError(
            f"{path} is being recorded right now by the process its run started; wait for it "
            "(python -m optlab.compare waits for it)"
        )
    for _ in range(3):  # (a run's end replaces the record it wrote as it went: the new one is read)
        try:
            source = open(path, encoding="utf-8")
        except OSError as exc:
            raise TrackingError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        with source:
            header = read_kept_header(path, source)
            if fcntl is not None:
                try:
                    fcntl.flock(source.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    doing = "written by its run, which has not ended"
                    doing = doing if _unended(header) else "delivered by another process right now"
                    raise TrackingError(f"{path} is being {doing}; wait for it") from None
            if _still(path, source):
                return _deliver(path, source, header, uri, progress)
    raise TrackingError(f"{path} keeps being replaced while it is opened; deliver it again")


def _unended(header: dict) -> bool:
    """Whether a kept file is a detached run's record without an end: written as the run went, and
    the run still writing it or killed before its end."""
    return header.get("record") is not None and header.get("end") is None


def _salvage(path: Path, header: dict) -> None:
    """A detached run killed while its end rewrote its record leaves the record it wrote as it went
    at ``path`` (``header``: no end) and the whole new one in a temporary file beside it, whose
    writer is dead: that one is put in place if it is complete (as many points as its header
    says), so that the run is delivered with its end and every point."""
    for temp in stale_temps(path):
        try:
            with open(temp, encoding="utf-8") as file:
                new = read_kept_header(path, file)
                whole = new.get("points") == sum(1 for _ in kept_metrics(file))
            if new.get("record") == header["record"] and new.get("end") is not None and whole:
                os.replace(temp, path)
                return
        except (OSError, TrackingError):  # (being salvaged by another delivery, or not a record)
            continue


def _still(path: Path, source) -> bool:
    """Whether ``path`` is still the file open as ``source`` (not replaced, not removed)."""
    try:
        now, mine = os.stat(path), os.fstat(source.fileno())
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)


def _deliver(path: Path, source, header: dict, uri: str | None, progress) -> Delivered:
    from mlflow.entities import RunTag
    from mlflow.exceptions import MlflowException

    end = header.get("end")
    images: dict[str, bytes] = {}
    if header.get("drawing") is not None:  # a detached run's plots, drawn from its points
        images, end = draw_recorded(source, header)
    wanted, keys, latest = _scan(source)
    if _unended(header):  # (recorded KILLED, its points those it wrote)
        end = {"status": "KILLED", "end_time": latest, "tags": {"error": UNENDED}}
    folder, plots = _plots(path, header.get("plots") or [], progress)
    uri = uri or header["tracking_uri"]
    run_id = header["run_id"]
    with http_limits(uri), tempfile.TemporaryDirectory(prefix="optlab-plots-") as drawn:
        existed = bool((header.get("start") or {}).get("store_existed"))
        with store_lock(uri):  # a detached run's store may not exist yet
            try:
                client = check_store(uri, create=run_id is None and not existed and uri == header["tracking_uri"])
            except TrackingError as exc:
                if not existed or "there is no MLflow store" not in str(exc):
                    raise
                raise TrackingError(
                    f"{exc}, which was there when the run started (moved or deleted?); the file is kept: "
                    f"give its store with python -m optlab.deliver {path} --tracking-uri URI"
                ) from None
        if run_id is None:
            run_id = _open_recorded(client, uri, path, header)
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
            for index, metric in enumerate(kept_metrics(source)):
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
        for name, data in images.items():  # drawn now: logged from a folder of this call's, gone with it
            write_bytes_atomic(Path(drawn) / name, data)
        files = [*plots, *(Path(drawn) / name for name in images)]
        for file in files:
            client.log_artifact(run_id, str(file))
        later = None  # the run's own end, when it ended after the one kept (the run was continued)
        if end:
            info = client.get_run(run_id).info
            if info.status != "RUNNING" and (info.end_time or 0) > (end.get("end_time") or 0):
                later = info.status
            else:
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
        logged = {item.path: item.file_size for item in client.list_artifacts(run_id)} if files else {}
        absent = [f.name for f in files if f.name not in logged or logged[f.name] not in (None, f.stat().st_size)]
        if absent:
            raise TrackingError(
                f"the plots {', '.join(absent)} of {path} are not in the run's artifacts; the file is kept, try again"
            )
        run = client.get_run(run_id)
        if UNDELIVERED_TAG in run.data.tags:
            client.delete_tag(run_id, UNDELIVERED_TAG)
    skipped = int(np.isin(unique, wanted[present]).sum())
    left = None  # why the file could not be removed (a read-only folder): delivered all the same
    try:
        for file in plots:  # ours: kept by the run, now in the store
            file.unlink(missing_ok=True)
        if plots:
            with contextlib.suppress(OSError):
                folder.rmdir()  # the run made it for its plots; only if nothing else is in it
        if _still(path, source):  # (removed meanwhile, with its folder: delivered all the same; replaced: not ours)
            path.unlink(missing_ok=True)
    except OSError as exc:
        left = exc.strerror or str(exc)
    remove_stale_temps(path)  # a new version of the file its writer did not finish: optlab's, and delivered
    kept_end = None if later is None else f"{end['status']}, not set: the run ended later, {later}"
    return Delivered(len(unique) - skipped, skipped, uri, [f.name for f in files], kept_end, left)


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
    from .recording import forget

    status = 0
    for path in args.files:
        try:
            written, skipped, uri, plots, superseded, left = deliver(path, args.tracking_uri, progress=sys.stderr)
        except KeyboardInterrupt as interrupt:  # what the store took stays there; delivering again skips it
            print(
                f"\noptlab.deliver: {str(interrupt) or 'interrupted (Ctrl-C)'}: {path} is kept (what the store took "
                "stays there: delivering the file again writes the rest)",
                file=sys.stderr,
            )
            return 143 if isinstance(interrupt, Terminated) else 130
        except TrackingError as exc:
            print(f"optlab.deliver: error: {exc}", file=sys.stderr)
            mistakes = ("not a file of undelivered", "no such file", "cannot be read", "is empty:")
            user_error = any(text in str(exc) for text in mistakes)
            status = max(status, 2 if user_error else 1)
            continue
        except Exception as exc:
            line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            message = f"{path}: the store failed ({line}); the file is kept, try again"
            print(f"optlab.deliver: error: {message}", file=sys.stderr)
            status = max(status, 1)
            continue
        forget(path)  # a detached run's: its listing and its recording's log
        already = f" ({skipped} were already there)" if skipped else ""
        logged = f" and the plot{'s' if len(plots) > 1 else ''} {', '.join(plots)}" if plots else ""
        status_kept = f"; its status {superseded}" if superseded else ""
        removed = f"; it could not be removed ({left}): remove it by hand" if left else "; file removed"
        print(f"{path}: {written} metrics{logged} written to {shown(uri)}{already}{status_kept}{removed}")
    return status


def background(file: str) -> int:
    """Record a detached run's file in its store (the process :func:`.recording.spawn` starts; its
    output is the record's log). On success the file, its plots, its listing and the log go; on a
    failure the file stays and the log's last line says why (:func:`.recording.reason`)."""
    from .recording import forget

    path = Path(file)
    with contextlib.suppress(OSError, AttributeError):  # (Windows has no nice)
        os.nice(NICENESS)  # the next run's training (and its timing) comes first
    niceness = os.nice(0) if hasattr(os, "nice") else 0
    print(f"optlab.deliver: recording {path} (pid {os.getpid()}, niceness {niceness})", flush=True)
    try:
        with handling(raise_stop):
            deliver(path, recorder=True)
    except KeyboardInterrupt as interrupt:
        print(
            f"optlab.deliver: error: stopped ({str(interrupt) or 'interrupted'}) before the run was recorded",
            flush=True,
        )
        return 143
    except TrackingError as exc:
        print(f"optlab.deliver: error: {exc}", flush=True)
        return 1
    except Exception as exc:
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        print(f"optlab.deliver: error: the store failed ({type(exc).__name__}: {line})", flush=True)
        return 1
    forget(path)
    return 0
