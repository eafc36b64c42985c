"""MLflow tracking: every run's config, tags, per-step and per-epoch metrics, plots and status.

The loop only appends metrics to a list; every ``FLUSH_SECONDS`` (and at the end, while the
plots are drawn) they are handed, as one batch, to a writer thread that logs them with
``log_batch``. MLflow's store spends about 0.2 ms of Python per metric, holding the interpreter
lock meanwhile: a writer busy *during* training slows it more than the same writes afterwards,
hence the long interval. Per-step curves are logged at up to ``max_points`` points by default
(``tracking.log_every=1`` logs every step, at that cost). Figures: docs/tracking.md.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from pathlib import Path

import numpy as np

from ..callbacks import Callback

BATCH = 1000  # MLflow's limit of metrics per log_batch call
FLUSH_SECONDS = 10.0  # metrics are handed to the writer this often during a run (and all at its end)
DEFAULT_DB = "mlflow.db"


def default_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else MLflow's default local store: ``sqlite:///mlflow.db`` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def flatten(config, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(config, dict):
        for key, value in config.items():
            out.update(flatten(value, f"{prefix}{key}."))
    else:
        out[prefix[:-1]] = str(config)[:6000]
    return out


class MlflowTracker(Callback):
    """Logs one MLflow run per training run (see docs/tracking.md for what is recorded)."""

    registry_name = "mlflow_tracker"

    def __init__(self, uri, experiment, config: dict, tags: dict, run_name: str, log_every: int = 1):
        super().__init__()
        self.uri = uri or default_uri()
        self.experiment = experiment
        self.config = config
        self.tags = tags
        self.run_name = run_name
        self.log_every = log_every
        self.run_id = None
        self.metrics_logged = 0
        self._steps: list[int] = []
        self._losses: list[float] = []
        self._rates: list[float] = []
        self._epoch_metrics: dict[str, list[tuple[int, float]]] = {}

    # -- set-up ---------------------------------------------------------------------------
    def start(self) -> None:
        import logging

        from mlflow.tracking import MlflowClient

        # store creation and migrations are not the user's business (after the import: MLflow
        # configures its loggers when it is first imported)
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)

        with _store_lock(self.uri):  # parallel runs of a sweep must not create one store twice
            self.client = MlflowClient(tracking_uri=self.uri)
            experiment_id = self._experiment_id()
            run = self.client.create_run(experiment_id, tags=self.tags, run_name=self.run_name)
        self._log_start(run)

    def _log_start(self, run) -> None:
        self.run_id = run.info.run_id
        params = flatten(self.config)
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])
        import yaml

        self.client.log_text(self.run_id, yaml.safe_dump(self.config, sort_keys=False), "config.yaml")
        self._pending: list = []
        self._last_flush = time.time()
        self._batches: queue.Queue = queue.Queue()
        self._results: queue.Queue = queue.Queue()
        self._writer = threading.Thread(
            target=_write_batches, args=(self.client, self.run_id, self._batches, self._results), daemon=True
        )
        self._writer.start()

    def _experiment_id(self) -> str:
        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is None:
            location = None
            if self.uri.startswith("sqlite:///") and "MLFLOW_TRACKING_URI" not in os.environ:
                location = (Path(self.uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
            try:
                experiment_id = self.client.create_experiment(self.experiment, artifact_location=location)
            except Exception:  # created meanwhile by a parallel run of the same sweep
                experiment_id = self.client.get_experiment_by_name(self.experiment).experiment_id
        else:
            experiment_id = experiment.experiment_id
        return experiment_id

    def _add(self, key: str, value: float, step: int):
        now = time.time()
        self._pending.append((key, float(value), int(now * 1000), step))
        self.metrics_logged += 1
        if now - self._last_flush >= FLUSH_SECONDS:
            self._last_flush = now
            self._hand_over()

    def _hand_over(self) -> None:
        if self._pending:
            self._batches.put(self._pending)
            self._pending = []

    # -- callback hooks ---------------------------------------------------------------------
    def on_train_batch_end(self, batch, logs=None):
        step = self.trainer.step
        if step % self.log_every:
            return
        logs = logs or {}
        loss, lr = logs.get("loss"), logs.get("learning_rate")
        if loss is not None:
            self._add("loss", loss, step)
            self._steps.append(step)
            self._losses.append(float(loss))
            self._rates.append(float(lr) if lr is not None else np.nan)
        if lr is not None:
            self._add("learning_rate", lr, step)

    def on_epoch_end(self, epoch, logs=None):
        step = self.trainer.step
        for key, value in (logs or {}).items():
            if key == "learning_rate":
                continue  # the per-step curve has it
            name = "epoch_loss" if key == "loss" else key
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            self._add(name, value, step)
            self._epoch_metrics.setdefault(name, []).append((step, value))

    def close(self, status: str, error: str | None = None) -> None:
        """Write every metric, log the plots, and end the run with ``status``."""
        if self.run_id is None:
            return
        self._hand_over()
        self._batches.put(None)
        try:  # drawn while the writer thread stores the last metrics
            images, plot_error = self._render(), None
        except Exception as exc:  # a plot must never hide the run's own outcome
            images, plot_error = {}, exc
        written, write_error = self._results.get()
        self._writer.join()
        if write_error is None and written != self.metrics_logged:
            write_error = f"{self.metrics_logged - written} metrics were not written"
        if write_error is not None:
            error = f"{error + '; ' if error else ''}metric logging failed: {write_error}"
            status = "FAILED"
        try:
            self._log_images(images)
        except Exception as exc:
            plot_error = plot_error or exc
        if plot_error is not None:
            self.client.set_tag(self.run_id, "plot_error", f"{type(plot_error).__name__}: {plot_error}"[:5000])
        if error:
            self.client.set_tag(self.run_id, "error", error[:5000])
        self.client.set_terminated(self.run_id, status=status)
        self.run_id_closed = self.run_id

    # -- artifacts --------------------------------------------------------------------------
    def _render(self) -> dict[str, bytes]:
        """The run's plots as PNG bytes: loss and learning-rate curves, and the path on 2-D problems."""
        images = {}
        if self._steps:
            images["curves.png"] = png(
                curves_figure(self._steps, self._losses, self._rates, self._epoch_metrics, self.run_name)
            )
        problem = self.trainer.problem
        path = self.trainer.history.path
        if problem.record_path and path:
            images["path.png"] = png(path_figure(problem, np.array(path), self.run_name))
        return images

    def _log_images(self, images: dict[str, bytes]) -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            for name, data in images.items():
                file = Path(folder) / name
                file.write_bytes(data)
                self.client.log_artifact(self.run_id, str(file))


def _write_batches(client, run_id: str, batches: queue.Queue, results: queue.Queue) -> None:
    """The writer thread: log each batch of (key, value, timestamp_ms, step) tuples until ``None``, then
    report (metrics written, first error or None)."""
    from mlflow.entities import Metric

    written, error = 0, None
    while True:
        batch = batches.get()
        if batch is None:
            break
        while True:  # take whatever else is waiting too: fewer, larger transactions
            try:
                more = batches.get_nowait()
            except queue.Empty:
                break
            if more is None:
                batches.put(None)
                break
            batch.extend(more)
        if error is not None:
            continue
        try:
            for start in range(0, len(batch), BATCH):
                client.log_batch(run_id, metrics=[Metric(*m) for m in batch[start : start + BATCH]])
            written += len(batch)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
    results.put((written, error))


@contextlib.contextmanager
def _store_lock(uri: str):
    """An exclusive lock on the directory of a local sqlite store, so nothing is written beside it.

    A no-op for tracking servers and where ``flock`` is missing (Windows: parallel sweeps there
    should log to a tracking server).
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    try:
        import fcntl
    except ImportError:
        yield
        return
    folder = Path(uri[len("sqlite:///") :]).absolute().parent
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


def png(figure) -> bytes:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def curves_figure(steps, losses, rates, epoch_metrics, title: str):
    """Loss (per step, epoch mean, validation) above the learning rate, against the step."""
    from matplotlib.figure import Figure  # no pyplot: no global state, safe off the main thread

    fig = Figure(figsize=(7, 6))
    fig.subplots_adjust(left=0.12, right=0.97, top=0.93, bottom=0.08, hspace=0.08)
    ax_loss, ax_lr = fig.subplots(2, 1, sharex=True)
    ax_loss.plot(steps, losses, lw=0.8, label="loss (per step)")
    for key, style, label in (("epoch_loss", "o-", "loss (epoch mean)"), ("val_loss", "s-", "val_loss")):
        if key in epoch_metrics:
            at, values = zip(*epoch_metrics[key])
            ax_loss.plot(at, values, style, ms=3, label=label)
    if np.all(np.asarray(losses) > 0):
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax_loss.set_yscale("log")  # labelled 0.1, 0.01, 1e-05: plain text, no mathtext to lay out
        ax_loss.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax_loss.yaxis.set_minor_formatter(NullFormatter())
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_lr.plot(steps, rates, lw=1.0, color="tab:green")
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
