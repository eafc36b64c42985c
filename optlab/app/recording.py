"""Runs recorded in the background (``tracking.detach=true``): the command returns when training ends.

MLflow's import and its store cost a new process seconds (2-4 s here) before anything is written:
more than a small run's whole training. A detached run never imports MLflow. At its end it writes
its record (what opening the run logs, every point, the plots, its end status) in the run's folder
as ``undelivered-<record>.jsonl``, the file format of metrics a run could not deliver, and starts a
process of its own session (:func:`spawn`) that records it in the store with
:func:`.deliver.deliver` and then removes it. The run in the store carries the tag
``optlab.record``: delivering the file again (after a crash midway) continues that run rather than
open a second one.

Every record handed over is listed in :func:`folder` (``optlab/recording/<record>.json`` in the
user's state folder) until it is in the store. The recording process holds a lock on its log
(``undelivered-<record>.log`` beside the record) from before it starts until it ends, so that
:func:`settle` tells a record being recorded (it waits for it: ``python -m optlab.compare`` does)
from one whose process failed (its log says why; the file stays for ``python -m optlab.deliver``,
and every later command on that store says so until it is delivered or removed).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

from ..files import refusal, remove_stale_temps, write_text_atomic
from .store import TrackingError, scheme_of, shown, sqlite_path, state_folder

try:
    import fcntl
except ImportError:  # Windows: no detached runs (check_recordable says so)
    fcntl = None

WAIT_SECONDS = 120.0  # how long a comparison waits for runs being recorded
SAY_AFTER = 0.5  # seconds of waiting before the wait is said


class Record(NamedTuple):
    entry: Path  # its line in folder()
    path: Path  # the record (undelivered-<record>.jsonl)
    log: Path  # the recording process's output, locked while it runs
    uri: str


def folder() -> Path | None:
    """Where the records handed over are listed (None without a home)."""
    state = state_folder()
    return None if state is None else state / "recording"


def _writable(place: Path) -> str | None:
    reason = refusal(place, make=True)
    return None if reason is None else f"{place} is not writable ({reason})"


def default_output_dir() -> Path:
    """Where a run outside Hydra keeps what the store did not take (and a detached run its record):
    ``.optlab/undelivered/`` here."""
    return Path.cwd() / ".optlab" / "undelivered"


def recordable(output_dir) -> bool:
    """Whether :func:`check_recordable` passes (``output_dir`` None: the tracker's default folder)."""
    try:
        check_recordable(Path(output_dir) if output_dir is not None else default_output_dir())
    except TrackingError:
        return False
    return True


def check_recordable(output_dir: Path) -> None:
    """TrackingError (one line) unless a run can be recorded in the background here: the run's folder
    (for its record) and optlab's state folder (to list it) writable, file locks available."""
    if fcntl is None:
        raise TrackingError(
            "tracking.detach=true needs file locks (POSIX); record the run as it ends: tracking.detach=false"
        )
    listed = folder()
    problem = (
        "no home folder for optlab's state (set XDG_STATE_HOME)" if listed is None else _writable(listed)
    ) or _writable(output_dir)
    if problem is not None:
        raise TrackingError(
            f"the run cannot be recorded in the background: {problem}; record it as it ends with tracking.detach=false"
        )


def spawn(path: Path, uri: str) -> int:
    """List the record ``path`` and start the process that records it in ``uri``; returns its pid.

    The log is created (never opened if it exists) and locked here, then inherited: the lock is
    held from now until the process ends."""
    entry, log = listed(path, uri), path.with_suffix(".log")
    descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        # once the run is recorded (or kept), the process ends at once: Python's own shutdown with
        # MLflow loaded took seconds of one core from the next run's training
        code = (
            f"import os, sys; sys.path[:] = {sys.path!r}; from optlab.app.deliver import background; "
            f"status = background({str(path)!r}); sys.stdout.flush(); os._exit(status)"
        )
        process = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.DEVNULL,
            stdout=descriptor,
            stderr=descriptor,
            start_new_session=True,  # the terminal's Ctrl-C and hang-up do not reach it
        )
    except BaseException:
        os.close(descriptor)
        with contextlib.suppress(OSError):
            log.unlink()
        with contextlib.suppress(OSError):
            entry.unlink()
        raise
    os.close(descriptor)
    # reaped when it ends, should this process outlive it (a notebook, a benchmark)
    threading.Thread(target=process.wait, name="optlab-recording", daemon=True).start()
    return process.pid


def listed(path: Path, uri: str) -> Path:
    """List the record ``path`` of a run for the store ``uri`` in :func:`folder` (atomically); returns its line."""
    entry = folder() / f"{path.stem.removeprefix('undelivered-')}.json"
    write_text_atomic(entry, json.dumps({"record": str(path), "log": str(path.with_suffix(".log")), "uri": uri}))
    return entry


def forget(path: Path) -> None:
    """``path`` is in the store: its line in :func:`folder` and its log go (both optlab's own)."""
    where = folder()
    if where is not None:
        entry = where / f"{path.stem.removeprefix('undelivered-')}.json"
        with contextlib.suppress(OSError):
            entry.unlink()
        remove_stale_temps(entry)  # (a line being written as its writer was killed)
    with contextlib.suppress(OSError):
        path.with_suffix(".log").unlink()


def _same_store(a: str, b: str) -> bool:
    if a == b:
        return True
    if scheme_of(a) == scheme_of(b) == "sqlite":
        first, second = sqlite_path(a), sqlite_path(b)
        return first is not None and first == second
    return a.rstrip("/") == b.rstrip("/")


def records(uri: str) -> list[Record]:
    """The records handed over for the store ``uri`` and not yet in it (lines whose record is gone are dropped)."""
    listed = folder()
    if listed is None or not listed.is_dir():
        return []
    found = []
    for entry in sorted(listed.glob("*.json")):
        try:
            data = json.loads(entry.read_text(encoding="utf-8"))
            record = Record(entry, Path(data["record"]), Path(data["log"]), str(data["uri"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not ours to judge (a line being written is complete or absent: written atomically)
        if not _same_store(record.uri, uri):
            continue
        if not record.path.exists():  # recorded (or removed by the user): the line is done with
            with contextlib.suppress(OSError):
                entry.unlink()
            continue
        found.append(record)
    return found


def being_recorded(path: Path) -> bool:
    """True while a process records the detached run's file ``path`` (it holds the lock on its log)."""
    return _locked(path.with_suffix(".log"))


def in_hand(path: Path) -> bool:
    """True while a process holds the record ``path`` itself: its run, writing it as it goes, or a delivery."""
    return _locked(path)


def _locked(path: Path) -> bool:
    if fcntl is None:
        return False
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(descriptor)
    return False


def reason(record: Record) -> str:
    """Why a recording failed: the last ``error:`` line of its log, or that its process ended without one."""
    try:
        lines = record.log.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:  # never handed over: its run was killed as it wrote it
        return (
            "its run ended before its record was complete (killed, or its folder refused the last write); "
            "the record holds the points it wrote as it went"
        )
    except OSError:
        return "its process left no log"
    errors = [line.split("error: ", 1)[1] for line in lines if "error: " in line]
    if errors:
        return errors[-1][:500]
    pid = re.search(r"\(pid (\d+)", lines[0]) if lines else None
    process = f"its process (pid {pid.group(1)})" if pid else "its process"
    return f"{process} ended before it was recorded (killed, or the machine went down)"


def failed(uri: str) -> list[Record]:
    """Records for ``uri`` whose process ended without recording them."""
    return [record for record in records(uri) if _unattended(record)]


def _unattended(record: Record) -> bool:
    """A record no process works on (none records, delivers or writes it), still there."""
    return not being_recorded(record.path) and not in_hand(record.path) and record.path.exists()


def failure_lines(failures: list[Record], uri: str) -> list[str]:
    """What to tell the user about records that did not reach ``uri``."""
    if not failures:
        return []
    count = len(failures)
    lines = [
        f"optlab: warning: {count} run{'s' if count > 1 else ''} could not be recorded in the background "
        f"in {shown(uri)}; record {'them' if count > 1 else 'it'} with python -m optlab.deliver FILE:"
    ]
    lines += [f"  {record.path}: {reason(record)}" for record in failures]
    return lines


def settle(uri: str, wait: float = WAIT_SECONDS, stream=None) -> tuple[list[Record], list[Record]]:
    """Wait (``wait`` s at most) for the runs being recorded in ``uri``; returns (still running, failed).
    The wait is said on ``stream`` once it lasts ``SAY_AFTER`` s; the failures are not (see :func:`failure_lines`)."""
    if fcntl is None:
        return [], []
    started = time.monotonic()
    said = False
    while True:
        found = records(uri)
        busy = [record for record in found if being_recorded(record.path)]
        if not busy or time.monotonic() - started >= wait:
            done = [record for record in found if record not in busy and _unattended(record)]
            return busy, done
        if not said and stream is not None and time.monotonic() - started >= SAY_AFTER:
            count = len(busy)
            print(
                f"optlab: waiting for {count} run{'s' if count > 1 else ''} being recorded in the background "
                f"in {shown(uri)} ...",
                file=stream,
                flush=True,
            )
            said = True
        time.sleep(0.05)
