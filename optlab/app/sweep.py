"""A sweep's parent run: one MLflow run that holds a multirun's runs, so that the UI folds them into one row.

Hydra calls :class:`SweepParent` (registered in ``conf/config.yaml`` under ``hydra.callbacks``)
in the process that starts the sweep, before any job and after the last one, whatever the
launcher (basic, joblib, submitit). At the start it opens the parent run — named after what is
swept, tagged with a short sweep id, described by the command — and hands its id to the jobs
twice: in the environment (processes the launcher starts inherit it) and in
``<sweep dir>/optlab-sweep.json`` (for jobs on other machines, which share the folder). Each
job's run is tagged ``mlflow.parentRunId`` with it and named after its own values of the swept
settings. At the end the sweep's comparison (``python -m optlab.compare``'s table and curves)
is logged to the parent, its description gets the one-line result, and it is ended FINISHED.
A sweep stopped by a signal or a failure ends it KILLED or FAILED (:func:`end_open`).
Repeating a sweep in the same folder (``hydra.sweep.dir=...``) reuses its parent.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback

from ..files import write_text_atomic
from ..names import counted
from .keys import KIND_TAG

#: the environment variable and the file (in the sweep's folder) that tell the jobs about their sweep
ENVIRONMENT = "OPTLAB_SWEEP"
SWEEP_FILE = "optlab-sweep.json"

#: the parent run this process opened and has not ended yet (the ``SweepParent`` holding it)
_OPEN: list = []
#: the folder of the sweep this process started last (for the message of a stopped sweep)
STARTED: list[Path] = []


def swept_keys(config) -> list[str]:
    """The settings a multirun gives several values (``optimizer=sgd,adam``, ``seed=range(3)``,
    an Optuna sweeper's ``params``), in the order given."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = list(config.hydra.overrides.task)
    keys = [
        o.get_key_element().lstrip("+~")
        for o in OverridesParser.create().parse_overrides(task)
        if o.is_sweep_override()
    ]
    params = config.hydra.sweeper.get("params") if "sweeper" in config.hydra else None
    keys += [str(k) for k in (params or {}) if str(k) not in keys]
    return keys


def swept_settings(config, swept: list[str]) -> dict[str, str]:
    """Each swept setting given on the command line, with its values as given (``sgd,adam``)."""
    out = {}
    for override in config.hydra.overrides.task:
        key, _, value = str(override).partition("=")
        if key.lstrip("+~") in swept:
            out[key.lstrip("+~")] = value
    return out


def swept_values(config, swept: list[str]) -> list[str]:
    """The swept settings as given, short (``lr=0.01,0.05``), for the parent run's name."""
    from .run import SHORT_KEYS

    given = swept_settings(config, swept)
    return [f"{SHORT_KEYS.get(k, k.rsplit('.', 1)[-1])}={v}" for k, v in given.items()] or ["(no settings swept)"]


def sweep_of(sweep_dir) -> dict | None:
    """The sweep a job belongs to: from the environment, else from the file in its sweep folder."""
    text = os.environ.get(ENVIRONMENT)
    if text is None:
        try:
            text = (Path(sweep_dir) / SWEEP_FILE).read_text()
        except OSError:
            return None
    try:
        found = json.loads(text)
    except ValueError:
        return None
    return found if isinstance(found, dict) and "parent_run_id" in found else None


def check_jobs(config) -> None:
    """Build (not run) every job of a sweep of Hydra's basic sweeper before the first starts:
    a value out of range in one of them (``optimizer.learning_rate=0.1,-0.1``) is a ConfigError
    naming the job, before anything is recorded, instead of failing that job after the others
    ran. Jobs that differ only in their seed are built once. Other sweepers choose their values
    as they go (Optuna): their jobs are checked as they start."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from .config import ConfigError
    from .run import build, check_settings

    sweeper = config.hydra.get("sweeper") or {}
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    try:
        parser = OverridesParser.create()
        jobs = BasicSweeper.split_arguments(parser.parse_overrides([*params, *config.hydra.overrides.task]), None)[0]
    except Exception:  # Hydra reports its own grammar's errors as it starts the jobs
        return
    built = set()
    for number, overrides in enumerate(jobs):
        try:
            conf = _composed(config, overrides)
        except Exception:  # (composition: Hydra's own errors, as it launches the job)
            return
        job = f"job {number} ({' '.join(overrides)})"
        identity = json.dumps({k: v for k, v in conf.items() if k != "seed"}, sort_keys=True, default=str)
        try:
            if identity in built:  # the same job but its seed: the seed's own check is enough
                check_settings(conf)
            else:
                build(conf)  # (its first check is check_settings)
                built.add(identity)
        except ConfigError as error:
            raise ConfigError(f"{job}: {error} (no job was run)") from None


def _composed(config, overrides: list[str]) -> dict:
    """The plain-data config of one job of the sweep ``config`` is running (as ``_task`` gets it)."""
    from hydra import compose
    from omegaconf import OmegaConf

    searchpath = [o for o in config.hydra.overrides.hydra if o.lstrip("+").startswith("hydra.searchpath")]
    cfg = compose(config_name=config.hydra.job.config_name, overrides=[*searchpath, *overrides])
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


class SweepParent(Callback):
    """Hydra's callback opening and closing a sweep's parent run (see the module's docs)."""

    def __init__(self):
        self.tracker = None
        self.info: dict = {}
        self.sweep_dir: Path | None = None
        self.command = ""

    def __getstate__(self) -> dict:
        # launchers pickle Hydra's context, callbacks included, for their workers (joblib, submitit):
        # the parent run stays with this process, which ends it
        return {**self.__dict__, "tracker": None}

    def on_multirun_start(self, config, **kwargs) -> None:
        from omegaconf import OmegaConf

        from .config import ConfigError
        from .run import source_tags

        try:
            check_jobs(config)
        except ConfigError as error:  # before any job and any record: one line, as a single run's
            print(f"optlab: error: {error}", file=sys.stderr)
            sys.exit(2)
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        STARTED[:] = [self.sweep_dir]
        tracking = OmegaConf.to_container(config.tracking, resolve=True) if "tracking" in config else {}
        if not (tracking or {}).get("enabled"):
            return
        swept = swept_keys(config)
        earlier = self._earlier(tracking)
        sweep_id = earlier["sweep_id"] if earlier else f"{time.strftime('%m%d-%H%M')}-{secrets.token_hex(2)}"
        command = shlex.join(
            ["python", "-m", "optlab", "-m", *(a for a in sys.argv[1:] if a not in ("-m", "--multirun"))]
        )
        name = f"sweep {sweep_id}: " + " ".join(swept_values(config, swept))
        tags = {
            KIND_TAG: "sweep",
            "sweep": sweep_id,
            "sweep_dir": str(self.sweep_dir),
            "swept": ", ".join(swept),
            "mlflow.note.content": f"`{command}`\n\nswept: {', '.join(swept) or '(nothing)'}",
            **source_tags(),
        }
        from .store import TrackingError
        from .tracking import MlflowTracker

        tracker = MlflowTracker(
            tracking.get("uri"),
            tracking.get("experiment", "optlab"),
            {},
            tags,
            name[:250],
            output_dir=self.sweep_dir,
        )
        try:
            if earlier:
                tracker.reopen(earlier["parent_run_id"])
            else:
                tracker.start(plots=False)  # (the parent run has no curves of its own)
        except TrackingError as error:  # before any job: one line, as a single run's
            print(f"optlab: error: {error}", file=sys.stderr)
            sys.exit(2)
        from mlflow.entities import Param

        with contextlib.suppress(Exception):  # its params: what is swept, as given (swept.optimizer = sgd,adam)
            given = swept_settings(config, swept)
            tracker.client.log_batch(tracker.run_id, params=[Param(f"swept.{k}", v) for k, v in given.items()])
        self.tracker = tracker
        self.info = {
            "sweep_id": sweep_id,
            "parent_run_id": tracker.run_id,
            "swept": swept,
            "uri": tracker.uri,
            "experiment": tracker.experiment,
        }
        self.command = command
        text = json.dumps(self.info)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.sweep_dir / SWEEP_FILE, text + "\n")
        os.environ[ENVIRONMENT] = text
        _OPEN.append(self)

    def _earlier(self, tracking: dict) -> dict | None:
        """The parent of an earlier run of this sweep (same folder, same store and experiment)."""
        try:
            found = json.loads((self.sweep_dir / SWEEP_FILE).read_text())
        except (OSError, ValueError):
            return None
        from .store import default_uri

        same = {"experiment": tracking.get("experiment", "optlab"), "uri": tracking.get("uri") or default_uri()}
        if not isinstance(found, dict) or "parent_run_id" not in found:
            return None
        return found if all(found.get(k) == v for k, v in same.items()) else None

    def on_multirun_end(self, config, **kwargs) -> None:
        self.end("FINISHED")

    def end(self, status: str) -> None:
        """Log the sweep's comparison to the parent run and end it with ``status`` (once)."""
        if self.tracker is None or self not in _OPEN:
            return
        _OPEN.remove(self)
        os.environ.pop(ENVIRONMENT, None)
        tracker, result = self.tracker, None
        with contextlib.suppress(Exception):  # a comparison that cannot be made must not keep the parent open
            result = self._log_comparison()
        note = f"`{self.command}`\n\nswept: {', '.join(self.info['swept']) or '(nothing)'}"
        if result:
            note += f"\n\n{result}"
        if status != "FINISHED":
            note += f"\n\nthe sweep was stopped: {status}"
        with contextlib.suppress(Exception):
            tracker.client.set_tag(tracker.run_id, "mlflow.note.content", note)
        tracker.close(status)

    def _log_comparison(self) -> str | None:
        """The sweep's table and curves as the parent's artifacts; returns the one-line result."""
        import math

        from .compare import compare, format_table, log_to_parent

        output = self.sweep_dir / "compare.png"
        found = compare(self.info["experiment"], parent=self.info["parent_run_id"], uri=self.info["uri"], output=output)
        table = format_table(found)
        write_text_atomic(self.sweep_dir / "compare.txt", table + "\n")
        log_to_parent(found, table, self.info["uri"])
        client, run_id = self.tracker.client, self.tracker.run_id
        rows = found["rows"]
        statuses = {}
        for row in rows:
            statuses[row["status"]] = statuses.get(row["status"], 0) + 1
        counts = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
        best = rows[0] if rows and not math.isnan(rows[0]["final"]) else None
        client.log_metric(run_id, "summary/runs", len(rows))
        if best is not None:  # the sweep's result, a column of the runs table like its runs'
            client.log_metric(run_id, f"best/{found['metric']}", best["final"])
        if best is None:
            return f"{counted(len(rows), 'run')} ({counts}); none logged {found['metric']}"
        return f"best: {best['run']}, {found['metric']} {best['final']:.6g}; {counted(len(rows), 'run')} ({counts})"


def end_open(status: str) -> None:
    """End the parent runs this process opened and did not end (a stopped or failed sweep)."""
    for parent in list(_OPEN):
        with contextlib.suppress(BaseException):
            parent.end(status)
