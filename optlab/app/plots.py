"""The plots logged with each run: loss and learning-rate curves, and the path over a 2-D problem's contours.

matplotlib's ``Figure`` without pyplot: no global state, safe off the main thread.
"""

from __future__ import annotations

import numpy as np

#: zlib's level for the PNGs optlab writes: level 3 encodes a run's figure in about half the time of
#: Pillow's default 6 (20-25 ms less a figure here) for files about a quarter larger
PNG_OPTIONS = {"pil_kwargs": {"compress_level": 3}}
#: points a side of the path plot's contour grid: each is a call of the problem's function (3 us);
#: at 100 the contours look as at 200 (linear between points), for a quarter of the calls
GRID = 100


def draw(request: dict) -> dict[str, bytes]:
    """A run's plots as PNG bytes by name, from a plain ``request`` (picklable: the plot helper
    process draws it as well, :mod:`.painter`):

    - ``title``: the run's name;
    - ``series``: each logged metric's points as (step, value), sorted by step: ``curves.png``
      (if ``train/loss`` has points);
    - ``problem``, ``path``, ``start`` (optional): a 2-D problem, the optimizer's path over it
      (an array of shape (steps, 2)) and its start: ``path.png``.
    """
    images = {}
    if request["series"].get("train/loss"):
        images["curves.png"] = png(curves_figure(request["series"], request["title"]))
    if request.get("problem") is not None:
        images["path.png"] = png(path_figure(request["problem"], request["path"], request["title"], request["start"]))
    return images


def png(figure) -> bytes:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", **PNG_OPTIONS)
    return buffer.getvalue()


def curves_figure(series: dict[str, list[tuple[int, float]]], title: str):
    """Loss (per step, epoch mean, validation) above the learning rate, against the step; a rate
    that never changed is said in the loss's title instead (a flat line says nothing, and its
    panel costs as much to draw as the loss's).

    ``series``: each MLflow key's logged points as (step, value), sorted by step.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, safe off the main thread

    rates = series.get("train/learning_rate") or []
    changing = len({value for _, value in rates}) > 1
    if changing:
        fig = Figure(figsize=(7, 6))
        fig.subplots_adjust(left=0.12, right=0.97, top=0.93, bottom=0.08, hspace=0.08)
        ax_loss, ax_lr = fig.subplots(2, 1, sharex=True)
    else:
        fig = Figure(figsize=(7, 4.2))
        fig.subplots_adjust(left=0.12, right=0.97, top=0.86, bottom=0.12)
        ax_loss = fig.subplots()
        if rates:
            ax_loss.set_title(f"learning rate {rates[0][1]:g} (constant)", fontsize="medium")
    curves = [("train/loss_step", "-", "train/loss_step (each step)"), ("train/loss", "o-", "train/loss (epoch mean)")]
    curves.append(("val/loss", "s-", "val/loss"))
    losses = []
    for key, style, label in curves:
        if series.get(key):
            at, values = zip(*series[key])
            losses += values
            if key == "train/loss_step":
                ax_loss.plot(at, values, lw=0.8, label=label)
            else:  # a dot per epoch, unless the epochs are too many to see them
                ax_loss.plot(at, values, style if len(at) <= 200 else "-", ms=3, label=label)
    if np.all(np.asarray(losses) > 0):
        from matplotlib.ticker import FuncFormatter, NullLocator

        ax_loss.set_yscale("log")  # labelled 0.1, 0.01, 1e-05: plain text, no mathtext to lay out
        ax_loss.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax_loss.yaxis.set_minor_locator(NullLocator())  # (each tick is a few artists to make and draw)
    ax_loss.set_ylabel("loss")
    ax_loss.legend(loc="upper right")  # where a falling loss is not; "best" scans every point
    if changing:
        at, values = zip(*rates)
        last = max(at for points in series.values() for at, _ in points)
        ax_lr.step([*at, last], [*values, values[-1]], where="post", lw=1.0, color="tab:green")  # held between points
        ax_lr.set_ylabel("learning rate")
    (ax_lr if changing else ax_loss).set_xlabel("step")
    fig.suptitle(title)
    return fig


def path_figure(problem, path: np.ndarray, title: str, start: np.ndarray | None = None):
    """The optimizer's path from ``start`` over the contours of a 2-D problem (an ``AnalyticFunction``)."""
    from matplotlib.figure import Figure

    minima = np.array(problem.minima())
    full = path if start is None else np.vstack([start, path])
    points = np.vstack([full, minima])
    finite = points[np.all(np.isfinite(points), axis=1)]
    lo, hi = finite.min(axis=0), finite.max(axis=0)
    pad = 0.15 * (hi - lo) + 0.5
    xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], GRID)
    ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], GRID)
    with np.errstate(over="ignore", invalid="ignore"):
        grid = np.array([[problem.value(np.array([x, y])) for x in xs] for y in ys])
    fig = Figure(figsize=(6, 5))
    fig.subplots_adjust(left=0.1, right=0.97, top=0.93, bottom=0.08)  # (a tight layout is one more drawing)
    ax = fig.subplots()
    ax.contour(xs, ys, np.log1p(grid - grid.min()), levels=30, cmap="viridis", linewidths=0.6)
    ax.plot(full[:, 0], full[:, 1], "-", color="tab:red", lw=1.0, label="path")
    ax.plot(full[0, 0], full[0, 1], "o", color="black", label="start")
    ax.plot(minima[:, 0], minima[:, 1], "*", color="gold", ms=12, mec="black", label="minima")
    ax.set_title(title)
    ax.legend(loc="best")
    return fig
