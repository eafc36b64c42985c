"""A study's folder: its spec, one file per finished run (its record), its report.

``.optlab/studies/<name>-<hash>/``: ``spec.json``, ``runs/<key>.json`` (written atomically by
the job that ran it, so an interrupted study keeps every run that finished and a repeated
command reuses them), ``report/``, ``.lock`` (:meth:`Store.lock`). optlab writes only inside
this folder and deletes nothing.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import zlib
from pathlib import Path

from ...files import write_text_atomic

#: where studies live, under the working directory
ROOT = Path(".optlab") / "studies"


class StudyBusy(RuntimeError):
    """Another process runs this study now."""


class Store:
    def __init__(self, folder):
        self.folder = Path(folder)
        self.runs = self.folder / "runs"

    @contextlib.contextmanager
    def lock(self):
        """Hold the study for this process: two commands of one study at once would run its runs
        twice and write its MLflow children twice. Raises :class:`StudyBusy` if another process
        holds it. The lock is ``flock`` on ``.lock`` in the folder, released when the process ends
        however it ends; where ``flock`` is missing or refused (Windows, some network file
        systems), no lock."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl

            descriptor = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except (ImportError, OSError):
            yield
            return
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StudyBusy(
                    f"study {self.folder.name} is running in another process now (its folder {self.folder} is "
                    "locked); wait for it to end, or stop it and repeat the command"
                ) from None
            except OSError:  # locks not supported here
                pass
            yield
        finally:
            os.close(descriptor)  # (releases the lock)

    def get(self, key: str) -> dict | None:
        """The record of run ``key``, or None (never run, or a file that cannot be read: run again)."""
        try:
            record = json.loads((self.runs / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("key") == key else None

    def put(self, record: dict) -> None:
        self.runs.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.runs / f"{record['key']}.json", json.dumps(record, sort_keys=True) + "\n")

    def write(self, name: str, text: str) -> Path:
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
        return path


def encode(payload: dict) -> str:
    """A job's payload as one word Hydra's override grammar takes as is (``j`` + hex of zlib'd JSON)."""
    return "j" + zlib.compress(json.dumps(payload, sort_keys=True).encode(), 9).hex()


def decode(word: str) -> dict:
    return json.loads(zlib.decompress(bytes.fromhex(word[1:])))


def run_job(payload: dict) -> list[dict]:
    """Run a job's runs (those not in the store yet), storing each as it finishes; their records."""
    from .trial import run_one

    store = Store(payload["store"])
    records = []
    for run in payload["runs"]:
        record = store.get(run["key"])
        if record is None:
            record = run_one(run)
            store.put(record)
        records.append({**record, **run})
    return records


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
