"""Compare logged runs: a table sorted by a metric, and its curves overlaid in one PNG.

    python -m optlab.compare                               # the latest sweep of experiment "optlab"
    python -m optlab.compare --sweep all --metric val_accuracy
    python -m optlab.compare my-experiment --output curves.png

Columns: the run, its optimizer, every parameter whose value differs between the runs, the
final and best value of the metric, steps and training time. Runs that differ only in their
seed are also summarised as mean ± standard deviation of the final value, each seed once
(:func:`one_per_seed`: a stopped attempt run again is the same seed).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import warnings
from pathlib import Path

from ..callbacks import direction
from ..names import counted
from .keys import KIND_TAG, STUDY_TAG, metric_key
from .store import default_uri

IGNORED_PARAMS = {"tracking.uri", "tracking.experiment", "trainer.progress_bar"}


def _fail(message: str) -> int:
    print(f"optlab.compare: error: {message}", file=sys.stderr)
    return 2


def _runs(client, experiment: str, sweep: str, parent: str | None = None, where: str = ""):
    """The runs to compare (never a sweep's parent run itself) and the sweep they are: the latest
    sweep, ``all``, a sweep by its id (``sweep`` tag) or folder, the children of a ``parent``
    run, any of them narrowed by an MLflow filter string ``where``."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise LookupError(f"no experiment {experiment!r} in this store; experiments: {', '.join(names) or '(none)'}")
    try:
        found = client.search_runs(
            [exp.experiment_id], filter_string=where, max_results=5000, order_by=["attributes.start_time DESC"]
        )
    except Exception as error:  # MLflow's message says what in the filter it could not read
        raise LookupError(f"--filter {where!r}: {str(error).splitlines()[0]}") from None
    runs = [r for r in found if r.data.tags.get(KIND_TAG) != "sweep"]
    if parent is None:  # a study's runs (its parent, tuning and final runs) have their own view: --study
        studied = [r for r in runs if r.data.tags.get(KIND_TAG) == "study" or STUDY_TAG in r.data.tags]
        if studied and len(studied) == len(runs):
            raise LookupError(
                f"experiment {experiment!r} holds only studies' runs"
                + (f" matching {where!r}" if where else "")
                + ": compare them with python -m optlab.compare --study latest (or a study's name)"
            )
        runs = [r for r in runs if r.data.tags.get(KIND_TAG) != "study" and STUDY_TAG not in r.data.tags]
    if not runs:
        raise LookupError(f"experiment {experiment!r} has no runs" + (f" matching {where!r}" if where else ""))
    if parent is not None:
        runs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
        if not runs:
            raise LookupError(f"run {parent!r} has no child runs in experiment {experiment!r}")
        return runs, runs[0].data.tags.get("sweep", parent)
    if sweep == "latest":
        swept = [r for r in runs if "sweep" in r.data.tags]
        if swept:
            sweep = swept[0].data.tags["sweep"]
            runs = [r for r in runs if r.data.tags.get("sweep") == sweep]
        else:
            sweep = "all"
    elif sweep != "all":
        runs = [r for r in runs if sweep in (r.data.tags.get("sweep"), r.data.tags.get("sweep_dir"))]
        if not runs:
            known = sorted({r.data.tags["sweep"] for r in found if "sweep" in r.data.tags})
            raise LookupError(
                f"no runs of sweep {sweep!r} in experiment {experiment!r}; sweeps: {', '.join(known[-10:]) or '(none)'}"
            )
    return runs, sweep


def _differing(runs, exclude=()) -> list[str]:
    """Parameters every run has, whose values differ (an optimizer's own arguments only when all runs share it)."""
    common = set.intersection(*(set(r.data.params) for r in runs))
    keys = sorted(common - IGNORED_PARAMS - {"optimizer.name"} - set(exclude))
    return [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1]


def compare(
    experiment="optlab", sweep="latest", metric=None, uri=None, output="compare.png", parent=None, where=""
) -> dict:
    """The comparison as data (and the PNG written to ``output``); raises LookupError when nothing matches.

    ``metric`` is a logged name (``val_loss``) or its MLflow key (``val/loss``); runs logged
    before the keys were grouped are read under their old names."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri or default_uri())
    runs, sweep = _runs(client, experiment, sweep, parent, where)
    configured = sorted({r.data.tags["metric"] for r in runs if r.data.tags.get("metric")})
    note = ""
    if metric is None and len(configured) > 1:  # (a sweep over problems of different metrics)
        note = f"the runs' metrics differ ({', '.join(configured)}); choose one with --metric"
    metric = metric or runs[0].data.tags.get("metric") or "loss"
    pick = max if direction(metric.replace("/", "_").removeprefix("train_")) == "max" else min
    rows = []
    curves = {}
    for run in runs:
        logged = run.data.metrics
        key = next((k for k in (metric, metric_key(metric)) if k in logged), metric)
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        values = [m.value for m in history]
        finite = [v for v in values if math.isfinite(v)]
        steps = logged.get("summary/steps")
        if steps is None:
            loss_steps = client.get_metric_history(run.info.run_id, "epoch_loss")
            steps = max((m.step for m in loss_steps), default=max((m.step for m in history), default=0))
        wall = logged.get("summary/train_seconds")
        if wall is None:
            wall = (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else math.nan
        rows.append(
            {
                "run": run.info.run_name,
                "run_id": run.info.run_id,
                "optimizer": run.data.tags.get("optimizer") or run.data.tags.get("optlab.optimizer", "?"),
                "seed": run.data.params.get("seed", "?"),
                "status": run.info.status,
                "start": run.info.start_time or 0,
                "final": values[-1] if values else math.nan,
                "best": pick(finite) if finite else math.nan,
                "logged": bool(values),  # (a NaN final is a diverged run's, or none was logged)
                "steps": int(steps),
                "seconds": wall,
                "params": run.data.params,
            }
        )
        curves[run.info.run_name] = ([m.step for m in history], values)
    if not any(r["logged"] for r in rows):  # (runs that diverged logged it: NaN, shown as nan)
        logged = sorted({key for run in runs for key in run.data.metrics})  # (each run's, not the first's)
        if not logged:  # (runs of no step: trainer.epochs=0, or stopped before their first)
            found = counted(len(runs), "run")
            raise LookupError(f"no run logged {metric!r}: the {found} found logged no metric at all")
        raise LookupError(f"no run logged {metric!r}; logged metrics: {', '.join(logged)}")
    reverse = pick is max
    rows.sort(key=lambda r: (math.isnan(r["final"]), -r["final"] if reverse else r["final"]))
    differing = _differing(runs)
    # runs whose whole config is the same but for the seed (the optimizer's own arguments included)
    groups: dict[frozenset, list[dict]] = {}
    for row in rows:
        identity = frozenset((k, v) for k, v in row["params"].items() if k not in IGNORED_PARAMS and k != "seed")
        groups.setdefault(identity, []).append(row)
    shown = _differing(runs, exclude=("seed",))
    seeds = []
    lines = {}  # one line per configuration: its seeds' mean, their range as a band
    for group in groups.values():
        members = one_per_seed(group)
        config = {"optimizer": members[0]["optimizer"], **{k: members[0]["params"].get(k) for k in shown}}
        if len(members) > 1:
            repeats = len(group) - len(members)
            unlogged = sum(not r.get("logged", True) for r in members)
            summary = seed_summary([r["final"] for r in members])
            seeds.append({"config": config, **summary, "repeats": repeats, "unlogged": unlogged})
            label = " ".join(f"{v}" if k == "optimizer" else f"{k.rsplit('.', 1)[-1]}={v}" for k, v in config.items())
            lines[f"{label} ({len(members)} seeds)"] = [curves[r["run"]] for r in members]
        else:
            lines[members[0]["run"]] = [curves[members[0]["run"]]]
    _plot(lines, metric, output, f"{experiment} / {sweep}")
    parents = {r.data.tags.get("mlflow.parentRunId") for r in runs}
    parent = parents.pop() if len(parents) == 1 else None
    if parent is not None and not where:  # the sweep's own comparison covers all of its runs, not a subset
        siblings = client.search_runs(
            [runs[0].info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'", max_results=5000
        )
        whole = len(siblings) == len(runs)
    else:
        whole = False
    return {
        "experiment": experiment,
        "sweep": sweep,
        "parent": parent if whole else None,
        "metric": metric,
        "columns": differing,
        "rows": rows,
        "seeds": seeds,
        "output": output,
        "note": note,
    }


def compare_study(experiment="optlab", study="latest", uri=None, output=None) -> dict:
    """A study's final and defaults runs, per problem and optimizer: the final values over seeds and
    the steps to the problem's target; the tuned runs' curves, one line per optimizer with a seed band.

    ``study``: its id (``quick-1a2b3c4d``), its name (the latest study of that name) or ``latest``.
    ``output``: the curves' PNG, by default ``compare-<study id>.png`` (a sweep's comparison is
    ``compare.png``: one does not replace the other)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri or default_uri())
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no experiment {experiment!r} in this store")
    parents = client.search_runs(
        [exp.experiment_id], f"tags.`{KIND_TAG}` = 'study'", max_results=1000, order_by=["attributes.start_time DESC"]
    )
    ids = [r.data.tags.get(STUDY_TAG, "") for r in parents]
    chosen = [r for r, i in zip(parents, ids) if study in ("latest", i) or i.rsplit("-", 1)[0] == study]
    if not chosen:
        raise LookupError(f"no study {study!r} in experiment {experiment!r}; studies: {', '.join(ids) or '(none)'}")
    parent = chosen[0]
    same = sorted({i for r, i in zip(parents, ids) if r in chosen})
    named = "" if study == "latest" else f" named {study!r}"
    note = f"the latest of {len(same)} studies{named} ({', '.join(same)})" if len(same) > 1 else ""
    children = client.search_runs(
        [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=50000
    )
    groups: dict = {}
    for run in children:
        tags = run.data.tags
        if tags.get("optlab.arm") in ("final", "defaults"):
            groups.setdefault((tags["optlab.problem"], tags["optlab.optimizer"], tags["optlab.arm"]), []).append(run)
    if not groups:
        raise LookupError(f"study {ids[parents.index(parent)]} has no final runs yet")
    rows, curves = [], {}
    for (problem, optimizer, arm), runs in sorted(groups.items()):
        tags = runs[0].data.tags
        metric = tags.get("optlab.curve", "")
        target = tags.get("optlab.target", "")
        level = target.split()[-1] if target else ""
        finals = [next((v for k, v in r.data.metrics.items() if k.startswith("final/")), math.nan) for r in runs]
        steps = sorted(r.data.metrics.get(f"target/steps_to_{level}", math.inf) for r in runs)
        reached = [s for s in steps if math.isfinite(s)]
        median = statistics.median(steps) if len(reached) * 2 > len(steps) else math.inf
        rows.append(
            {
                "problem": problem,
                "optimizer": optimizer,
                "arm": arm,
                "target": target,
                **seed_summary(finals),
                "reached": len(reached),
                "median_steps": median,
            }
        )
        if arm == "final" and metric:
            members = []
            for r in runs:
                history = sorted(client.get_metric_history(r.info.run_id, metric), key=lambda m: m.step)
                members.append(([m.step for m in history], [m.value for m in history]))
            curves.setdefault(problem, {})[f"{optimizer} ({len(runs)} seeds)"] = members
    output = output or f"compare-{parent.data.tags.get(STUDY_TAG) or 'study'}.png"
    _plot_study(curves, output, parent.data.tags.get(STUDY_TAG, ""))
    return {
        "study": parent.data.tags.get(STUDY_TAG),
        "parent": parent.info.run_id,
        "rows": rows,
        "output": output,
        "note": note,
    }


def _plot_study(curves: dict, output, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(curves), 1)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.6 * rows), squeeze=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for ax, (problem, lines) in zip(axes.flat, sorted(curves.items())):
            values = _draw_lines(ax, lines)
            if values and min(values) > 0 and max(values) / min(values) > 100:
                ax.set_yscale("log")
            ax.set_xscale("log")
            ax.set_title(problem, fontsize=10)
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
    for ax in axes.flat[len(curves) :]:
        ax.set_visible(False)
    fig.suptitle(f"study {title}: tuned settings, mean of the seeds with their range", fontsize=10)
    fig.tight_layout()
    _save(fig, output, 110)
    plt.close(fig)


def _save(fig, output, dpi: int) -> None:
    """The figure as a PNG at ``output``, written atomically (a file of that name is replaced whole)."""
    import io

    from ..files import write_bytes_atomic

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(output, buffer.getvalue())


def checked_output(output: str) -> str:
    """``--output`` as the PNG file it will be (``name`` becomes ``name.png``, as matplotlib would
    write it); ValueError (one line) for a folder, another format or a path that cannot be written."""
    from ..callbacks.base import check_writable

    if os.path.isdir(output):
        raise ValueError(
            f"--output {output} is a folder; give a file name, e.g. --output {Path(output) / 'compare.png'}"
        )
    suffix = Path(output).suffix
    if not suffix:
        output += ".png"
    elif suffix.lower() != ".png":
        raise ValueError(f"--output {output}: the curves are a PNG; give a name ending in .png")
    check_writable(output, "--output")
    return output


def format_study(result: dict) -> str:
    lines = [f"study {result['study']} (parent run {result['parent']}): final values over seeds, steps to target"]
    if result.get("note"):
        lines.append(f"({result['note']}; name one by its id)")
    header = ["problem", "optimizer", "arm", "final (mean ± std)", "seeds", "reached", "median steps"]
    table = [header]
    for r in result["rows"]:
        value = "no finite value" if r["n"] == 0 else f"{r['mean']:.5g} ± {r['std']:.2g}"
        steps = "∞" if math.isinf(r["median_steps"]) else f"{r['median_steps']:g}"
        table.append(
            [r["problem"], r["optimizer"], r["arm"], value, str(r["runs"]), f"{r['reached']}/{r['runs']}", steps]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for k, line in enumerate(table):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths)))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    targets = sorted({(r["problem"], r["target"]) for r in result["rows"]})
    lines.append("targets: " + "; ".join(f"{p}: {t}" for p, t in targets))
    lines.append(f"curves: {result['output']}")
    return "\n".join(lines)


def one_per_seed(rows: list[dict]) -> list[dict]:
    """One run per seed of a configuration: an attempt that was stopped and run again (a sweep
    repeated in its folder) is the same seed, not another one. The finished run is kept, else the
    latest; runs without a recorded seed are all kept."""
    kept: dict = {}
    unseeded = []
    for row in sorted(rows, key=lambda r: (r["status"] == "FINISHED", r["start"])):  # the kept one comes last
        if row["seed"] == "?":
            unseeded.append(row)
        else:
            kept[row["seed"]] = row
    chosen = {id(r) for r in [*kept.values(), *unseeded]}
    return [r for r in rows if id(r) in chosen]  # in the rows' order


def seed_summary(finals: list[float]) -> dict:
    """Mean and sample standard deviation of the finite final values of one group of seeded runs.

    A run that did not log the metric (NaN) or diverged (inf) has no value to average: ``n``
    counts the runs with one, ``runs`` all of them; the mean is NaN without any, the standard
    deviation NaN with fewer than two.
    """
    finite = [v for v in finals if math.isfinite(v)]
    return {
        "n": len(finite),
        "runs": len(finals),
        "mean": statistics.fmean(finite) if finite else math.nan,
        "std": statistics.stdev(finite) if len(finite) > 1 else math.nan,
    }


def _plot(curves, metric, output, title):
    with warnings.catch_warnings():  # a diverging run's huge values overflow the log axis' transform
        warnings.simplefilter("ignore", RuntimeWarning)
        _draw(curves, metric, output, title)


def band(members: list[tuple[list, list]]):
    """Curves of several seeds on the union of their steps: the steps, the mean, the lowest and
    the highest value at each (a step a seed did not log, or where it diverged, is left out)."""
    import numpy as np

    steps = sorted({s for xs, _ in members for s in xs})
    index = {s: i for i, s in enumerate(steps)}
    table = np.full((len(members), len(steps)), np.nan)
    for row, (xs, ys) in enumerate(members):
        for x, y in zip(xs, ys):
            table[row, index[x]] = y if math.isfinite(y) else np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a step no seed has a value at
        return steps, np.nanmean(table, axis=0), np.nanmin(table, axis=0), np.nanmax(table, axis=0)


def _draw_lines(ax, lines: dict) -> list[float]:
    """``lines``: label -> the (steps, values) of its runs; one run is drawn as it is, several as
    their mean with their range as a band. Returns the finite values drawn."""
    drawn = []
    for name, members in lines.items():
        members = [m for m in members if m[0]]
        if not members:
            continue
        if len(members) == 1:
            steps, values = members[0]
            shown = [v if math.isfinite(v) else math.nan for v in values]  # a diverged run stops its line
            ax.plot(steps, shown, lw=1.2, label=name)
        else:
            steps, mean, low, high = band(members)
            (line,) = ax.plot(steps, mean, lw=1.6, label=name)
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.18, lw=0)
            shown = [*low, *high]
        drawn += [v for v in shown if math.isfinite(v)]
    return drawn


def _draw(lines, metric, output, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    values = _draw_lines(ax, lines)
    if values and min(values) > 0 and max(values) / min(values) > 100:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(title + ("  (seeds: mean, range as a band)" if any(len(m) > 1 for m in lines.values()) else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, output, 120)
    plt.close(fig)


def format_table(result: dict) -> str:
    columns = result["columns"]
    header = ["run", "optimizer", *columns, f"final {result['metric']}", "best", "steps", "seconds", "status"]
    lines = [header]
    for row in result["rows"]:
        lines.append(
            [
                row["run"],
                row["optimizer"],
                *(row["params"].get(c, "") for c in columns),
                f"{row['final']:.6g}" if row.get("logged", True) else "not logged",
                f"{row['best']:.6g}" if row.get("logged", True) else "",
                str(row["steps"]),
                f"{row['seconds']:.2f}",
                row["status"],
            ]
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    text = [
        f"{result['experiment']} / sweep {result['sweep']}: {len(result['rows'])} "
        f"run{'s' if len(result['rows']) != 1 else ''}, sorted by {result['metric']}"
    ]
    if result.get("note"):
        text[0] += f" ({result['note']})"
    for k, line in enumerate(lines):
        text.append("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)))
        if k == 0:
            text.append("  ".join("-" * w for w in widths))
    if result["seeds"]:
        text.append("\nover seeds (final value):")
        for group in result["seeds"]:
            config = ", ".join(f"{k}={v}" for k, v in group["config"].items()) or "(same config)"
            without, unlogged = group["runs"] - group["n"], group.get("unlogged", 0)
            if unlogged and unlogged == without:
                tail = f" ({unlogged} of {group['runs']} did not log it)"
            elif unlogged:
                tail = f" ({without} of {group['runs']} without a finite value, {unlogged} of them did not log it)"
            else:
                tail = f" ({without} of {group['runs']} without a finite value)" if without else ""
            repeats = group.get("repeats", 0)
            if repeats:
                tail += f" (and {counted(repeats, 'earlier attempt')} of the same seeds, left out)"
            if group["n"] == 0 and unlogged == group["runs"]:
                text.append(f"  {config}: not logged by any of its {group['runs']} seeds")
            elif group["n"] == 0:
                rest = f" ({unlogged} did not log it)" if unlogged else ""
                text.append(f"  {config}: no finite value over {group['runs']} seeds{rest}")
            elif group["n"] == 1:
                text.append(f"  {config}: {group['mean']:.6g} from 1 seed{tail}")
            else:
                text.append(f"  {config}: {group['mean']:.6g} ± {group['std']:.2g} over {group['n']} seeds{tail}")
    text.append(f"\ncurves: {result['output']}")
    return "\n".join(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optlab.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", nargs="?", default="optlab", help="MLflow experiment (default: optlab)")
    parser.add_argument(
        "--sweep", default="latest", help='a sweep: its id (the runs\' "sweep" tag), its folder, "latest" or "all"'
    )
    parser.add_argument("--parent", help="the children of this run (a sweep's parent run id)")
    parser.add_argument("--study", help='a study (python -m optlab.study): its id, its name, or "latest"')
    parser.add_argument("--filter", default="", help="an MLflow filter string, e.g. \"tags.problem = 'rosenbrock'\"")
    parser.add_argument("--metric", help="metric to sort by and plot (default: the runs' configured metric)")
    parser.add_argument("--uri", help="tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db here)")
    parser.add_argument(
        "--output", help="the PNG of the curves (default: compare.png; with --study, compare-<study id>.png)"
    )
    args = parser.parse_args(argv)
    try:
        if args.output is not None or not args.study:
            args.output = checked_output(args.output or "compare.png")
        else:  # (compare-<study id>.png, named once the study is found: here, its folder is checked)
            checked_output("compare-study.png")
    except ValueError as error:
        return _fail(str(error))
    uri = args.uri or default_uri()
    _settle(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists():
        return _fail(f"no MLflow store at {uri}; run `python -m optlab` first, or pass --uri")
    unsound = _unsound_store(uri)
    if unsound:
        return _fail(unsound)
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if args.study:
        try:
            result = compare_study(args.experiment, args.study, uri, args.output)
        except LookupError as error:
            return _fail(str(error))
        print(format_study(result))
        return 0
    try:
        result = compare(args.experiment, args.sweep, args.metric, uri, args.output, args.parent, args.filter)
    except LookupError as error:
        return _fail(str(error))
    table = format_table(result)
    print(table)
    if result["parent"] is not None:  # the runs of one sweep: the comparison goes to its parent run too
        try:
            stem = log_to_parent(result, table, uri)
        except Exception as error:  # the table is printed and the PNG written whatever the store does
            print(f"optlab.compare: warning: not logged to the parent run {result['parent']}: {error}", file=sys.stderr)
        else:
            print(f"logged to the sweep's parent run {result['parent']}: {stem}.txt, {stem}.png")
    return 0


def _unsound_store(uri: str) -> str | None:
    """What is wrong with a local sqlite store (not SQLite, damaged, not MLflow's, half-made), in one
    line, or None: MLflow's own answer to those is a page of SQLAlchemy's traceback."""
    from .store import TrackingError, inspect_sqlite, scheme_of, shown, sqlite_path

    path = sqlite_path(uri) if scheme_of(uri) == "sqlite" else None
    if path is None or not os.access(path, os.R_OK | os.W_OK):
        return None
    try:
        state = inspect_sqlite(path, shown(uri))
    except TrackingError as error:
        return str(error).split("; pick another store")[0]
    if state == "empty":
        return f"no MLflow store at {uri} (an empty file); run `python -m optlab` first, or pass --uri"
    return None if state == "store" else state


def _settle(uri: str) -> None:
    """Wait for the runs being recorded in the background in ``uri`` (``tracking.detach=true``), and
    say which could not be, or are not yet after ``recording.WAIT_SECONDS``."""
    from .recording import WAIT_SECONDS, failure_lines, settle

    busy, failed = settle(uri, stream=sys.stderr)
    for line in failure_lines(failed, uri):
        print(line, file=sys.stderr)
    if busy:
        count = len(busy)
        print(
            f"optlab.compare: warning: {count} run{'s are' if count > 1 else ' is'} still being recorded in the "
            f"background after {WAIT_SECONDS:g} s: the comparison shows what the store has of "
            f"{'them' if count > 1 else 'it'} so far (RUNNING, or not yet there)",
            file=sys.stderr,
        )


def artifact_stem(result: dict, default_metric: str | None) -> str:
    """``compare`` for the sweep's own metric, ``compare-<metric>`` for another: one comparison
    per metric on the parent run, each replaced by a newer one of the same metric."""
    metric = result["metric"]
    if metric == default_metric:
        return "compare"
    return "compare-" + "".join(c if c.isalnum() or c in "._-" else "_" for c in metric)


def log_to_parent(result: dict, table: str, uri: str) -> str:
    """The comparison of a whole sweep, its table and curves, as artifacts of the sweep's parent
    run (``compare.txt`` and ``compare.png`` for the sweep's metric); returns the file stem."""
    import shutil
    import tempfile

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    stem = artifact_stem(result, client.get_run(result["rows"][0]["run_id"]).data.tags.get("metric"))
    with tempfile.TemporaryDirectory() as folder:
        text = Path(folder) / f"{stem}.txt"
        text.write_text(table.replace(f"curves: {result['output']}", f"curves: {stem}.png") + "\n")
        client.log_artifact(result["parent"], str(text))
        if Path(result["output"]).exists():
            picture = Path(folder) / f"{stem}.png"
            shutil.copyfile(result["output"], picture)
            client.log_artifact(result["parent"], str(picture))
    return stem


if __name__ == "__main__":
    from ..commands import command

    sys.exit(command(main))
