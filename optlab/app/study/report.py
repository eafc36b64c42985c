"""A study's report: a Markdown page with its tables, and four figures.

- ``report.md``: per problem, each optimizer's tuned setting, its score over the final seeds
  (mean ± std and the 95% interval), the defaults' score, how many seeds reached the target and
  the median steps and seconds they took, and the rank-sum test against the problem's leader;
  then the AlgoPerf scores, the edge warnings and the timing.
- ``profile.png``: the performance profiles (one line per optimizer).
- ``ecdf.png``: runtime ECDFs over problems x targets x seeds, with bootstrap bands.
- ``sensitivity.png``: score against learning rate per problem, one line per optimizer, seed range as a band.
- ``curves.png``: the metric along training per problem, the mean of the final seeds and their
  interquartile band, one line per optimizer.
- ``tunability.png``: the expected best score after k of the tuning's settings (Sivaprasad et al., 2020).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ...names import counted
from .measures import target_ladder
from .reduce import edge_notes, significance_note, worse_than_defaults
from .spec import Spec


def _fmt(value: float, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return f"{value:.{digits}g}"


def _setting(hparams: dict) -> str:
    return ", ".join(f"{k}={_fmt(v, 3) if isinstance(v, float) else v}" for k, v in hparams.items()) or "defaults"


def _colors(optimizers: list[str]) -> dict:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {opt: cmap(i % 10) for i, opt in enumerate(optimizers)}


def _grid(n: int):
    import matplotlib.pyplot as plt

    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _finish(fig, ax, path: Path, legend: str) -> None:
    """A one-axes figure's legend and grid, saved."""
    ax.legend(loc=legend, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path, 110)


def plot_profile(spec: Spec, results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    colors = _colors(spec.optimizers)
    taus = results["profile"]["taus"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, opt in enumerate(spec.optimizers):
        if opt in results["profile"]:
            score = results["algoperf"].get(opt, math.nan)
            dodge = (i - (len(spec.optimizers) - 1) / 2) * 0.008  # tied lines stay visible side by side
            shown = [v + dodge for v in results["profile"][opt]]
            ax.step(taus, shown, where="post", color=colors[opt], lw=2, label=f"{opt} (score {score:.2f})")
    ax.set_xscale("log")
    ax.set_xlim(1, taus[-1])
    ax.set_ylim(-0.02, 1.02)
    ax.axvline(4, color="0.6", ls=":", lw=1)
    ax.set_xlabel(f"τ: within a factor τ of the fastest ({spec.profile} to the declared target)")
    ax.set_ylabel("share of problems")
    ax.set_title("Performance profiles (AlgoPerf score: area up to τ = 4)")
    _finish(fig, ax, path, "lower right")


def plot_ecdf(spec: Spec, results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    colors = _colors(spec.optimizers)
    data = results["ecdf"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for opt in spec.optimizers:
        if opt in data:
            ax.fill_between(
                data["budgets"], data[opt]["low"], data[opt]["high"], color=colors[opt], alpha=0.15, step="post"
            )
            ax.step(data["budgets"], data[opt]["ecdf"], where="post", color=colors[opt], lw=2, label=opt)
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("steps, as a fraction of the problem's budget")
    ax.set_ylabel("share of (problem, target, seed) reached")
    ladder = ", ".join(f"{f:g}" for f in spec.ladder)
    ax.set_title(f"Runtime ECDF, tuned settings (targets x{ladder}; 95% bootstrap band)", fontsize=10)
    _finish(fig, ax, path, "upper left")


def plot_sensitivity(spec: Spec, results: dict, path: Path) -> None:

    colors = _colors(spec.optimizers)
    fig, axes = _grid(len(spec.problems))
    for ax, problem in zip(axes, spec.problems):
        rates = []  # every learning rate tried here, shown even where each of them diverged
        for opt in spec.optimizers:
            rows = results["tuning"].get(f"{problem.label}|{opt}")
            if not rows or "learning_rate" not in rows[0]["hparams"]:
                continue
            rows = sorted(rows, key=lambda r: r["hparams"]["learning_rate"])
            lrs = [r["hparams"]["learning_rate"] for r in rows]
            rates += lrs
            values = np.array([r["values"] for r in rows], dtype=float)
            with np.errstate(all="ignore"), _quiet():
                mean = np.array([r["score"] for r in rows], dtype=float)
                low, high = np.nanmin(values, axis=1), np.nanmax(values, axis=1)
            ax.fill_between(lrs, low, high, color=colors[opt], alpha=0.15)
            ax.plot(lrs, mean, "o-", color=colors[opt], ms=3, lw=1.5, label=opt)
            best = results["chosen"][f"{problem.label}|{opt}"]
            if "learning_rate" in best["hparams"] and math.isfinite(best["score"]):
                ax.plot([best["hparams"]["learning_rate"]], [best["score"]], "*", color=colors[opt], ms=12, mec="k")
        ax.axhline(problem.target, color="0.4", ls="--", lw=1)
        ax.set_xscale("log")
        if rates and not _finite(results, problem.label):  # no point to set the axis: a log axis of none fails
            ax.set_xlim(min(rates) / 2, max(rates) * 2)
        if problem.direction == "min" and _positive(results, problem.label):
            ax.set_yscale("log")
        ax.set_title(f"{problem.label}: {spec.score} {problem.metric}", fontsize=10)
        ax.set_xlabel("learning rate")
        ax.grid(alpha=0.3)
    _legend(axes[0])
    _title(
        fig,
        "Sensitivity: score against learning rate (mean of the tuning seeds, their range as a band; "
        "★ tuned; -- target)",
    )
    fig.tight_layout()
    _save(fig, path, 100)


def plot_tunability(spec: Spec, results: dict, path: Path) -> None:
    """Sivaprasad et al. (2020): the expected best score among k of the tuning settings drawn at
    random, k = 1 .. budget, per optimizer and problem (exact, from the scores of all settings)."""

    from matplotlib.ticker import MaxNLocator

    from . import measures

    colors = _colors(spec.optimizers)
    fig, axes = _grid(len(spec.problems))
    ks = list(range(1, spec.budget + 1))
    for ax, problem in zip(axes, spec.problems):
        for opt in spec.optimizers:
            rows = results["tuning"].get(f"{problem.label}|{opt}")
            if not rows:
                continue
            scores = [r["score"] for r in rows]
            with np.errstate(all="ignore"), _quiet():
                curve = [measures.expected_best_of_k(scores, k, problem.direction) for k in ks]
            ax.plot(ks, [v if math.isfinite(v) else np.nan for v in curve], "o-", ms=3, color=colors[opt], label=opt)
        ax.axhline(problem.target, color="0.4", ls="--", lw=1)
        if problem.direction == "min" and _positive(results, problem.label):
            ax.set_yscale("log")
        ax.set_title(f"{problem.label}: {spec.score} {problem.metric}", fontsize=10)
        ax.set_xlabel("settings tried (k)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    _legend(axes[0])
    _title(fig, "Tunability: expected best score after k settings drawn at random from the tuning (-- target)")
    fig.tight_layout()
    _save(fig, path, 100)


def _title(fig, text: str) -> None:
    """A figure's title, wrapped to its width (a one-problem figure is narrow)."""
    import textwrap

    fig.suptitle("\n".join(textwrap.wrap(text, int(fig.get_figwidth() * 15))), fontsize=10)


def _save(fig, path: Path, dpi: int) -> None:
    """Save atomically: a temporary name in the same folder, then moved into place."""
    import os

    import matplotlib.pyplot as plt

    from ..plots import PNG_OPTIONS

    temp = path.with_name(f".{path.name}.tmp")
    fig.savefig(temp, dpi=dpi, format="png", **PNG_OPTIONS)
    plt.close(fig)
    os.replace(temp, path)


def _finite(results: dict, label: str) -> list[float]:
    """The finite tuning values of problem ``label`` (none where every setting diverged)."""
    return [
        v
        for key, rows in results["tuning"].items()
        if key.startswith(label + "|")
        for row in rows
        for v in row["values"]
        if math.isfinite(v)
    ]


def _legend(ax) -> None:
    """The legend of the first panel, where it has labelled lines (none where everything diverged)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _positive(results: dict, label: str) -> bool:
    """Whether the tuning values of problem ``label`` can be drawn on a log scale: some are
    finite, all of those > 0 (with none, a log axis fails to draw)."""
    finite = _finite(results, label)
    return bool(finite) and all(v > 0 for v in finite)


def plot_curves(spec: Spec, results: dict, finals: list[dict], path: Path) -> None:

    colors = _colors(spec.optimizers)
    fig, axes = _grid(len(spec.problems))
    diverged = []
    for ax, problem in zip(axes, spec.problems):
        positive, drawn = True, False
        for opt in spec.optimizers:
            runs = [
                r for r in finals if r["problem"] == problem.label and r["optimizer"] == opt and r["arm"] == "final"
            ]
            lost = [r for r in runs if r.get("diverged")]
            if lost:  # its last finite values can be 1e100: the mean would be that seed alone
                diverged.append(f"{opt} on {problem.label} ({len(lost)}/{len(runs)})")
                runs = [r for r in runs if not r.get("diverged")]
            if not runs:
                continue
            steps = sorted({p[0] for r in runs for p in r["points"]})
            table = np.full((len(runs), len(steps)), np.nan)
            index = {s: i for i, s in enumerate(steps)}
            for row, r in enumerate(runs):
                for p in r["points"]:
                    table[row, index[p[0]]] = p[3]
            with np.errstate(all="ignore"), _quiet():
                mean = np.nanmean(table, axis=0)
                low, high = column_quantiles(table, 0.25), column_quantiles(table, 0.75)
            finite = table[np.isfinite(table)]
            positive = positive and bool(np.all(finite > 0))
            drawn = drawn or finite.size > 0
            ax.fill_between(steps, low, high, color=colors[opt], alpha=0.2)
            ax.plot(steps, mean, color=colors[opt], lw=1.8, label=opt)
        ax.axhline(problem.target, color="0.4", ls="--", lw=1)
        ax.set_xscale("log")
        if problem.direction == "min" and positive and drawn:  # (a log axis of no values fails to draw)
            ax.set_yscale("log")
        ax.set_title(f"{problem.label}: {problem.metric}", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    _legend(axes[0])
    left_out = f"; seeds that diverged left out: {', '.join(diverged)}" if diverged else ""
    _title(fig, f"Training curves of the tuned settings: mean of the seeds, interquartile band; -- target{left_out}")
    fig.tight_layout()
    _save(fig, path, 100)


def column_quantiles(table: np.ndarray, q: float) -> np.ndarray:
    """``np.nanquantile(table, q, axis=0)`` (linear interpolation) in one vectorised pass: numpy's
    goes column by column once a NaN is present (2 s for the quick study's curves)."""
    ordered = np.sort(table, axis=0)  # NaN last
    count = np.sum(~np.isnan(table), axis=0)
    position = np.maximum(count - 1, 0) * q
    below = np.floor(position).astype(int)
    above = np.minimum(below + 1, np.maximum(count - 1, 0))
    columns = np.arange(table.shape[1])
    low, high = ordered[below, columns], ordered[above, columns]
    out = low + (high - low) * (position - below)
    out[count == 0] = np.nan
    return out


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def beyond_training(timing: dict, wall: float | None = None) -> float:
    """Seconds per run beyond training: ``wall`` (the study's, by default) x workers, less the
    runs' training and the warm-ups, over the runs run now."""
    wall = timing["wall_seconds"] if wall is None else wall
    fit = timing.get("fit_seconds", timing["train_seconds"])
    spent = wall * timing["workers"] - fit - timing["warmup_seconds"]
    return max(spent, 0.0) / max(timing["runs_run"], 1)


def _where(environments: list[dict] | None) -> list[str]:
    """Where the runs ran (the seconds depend on it), from their records."""
    if not environments:
        return []

    def said(env: dict | None) -> str:
        if env is None:
            return "not recorded (runs stored by an older optlab)"
        threads = counted(env["threads"], "numba thread")
        return (
            f"optlab {env['optlab']}, Python {env['python']}, numpy {env['numpy']}, numba {env['numba']}; "
            f"{env['cpu']}, {counted(env['cores'] or 0, 'core')}, {threads} a run"
        )

    if len(environments) == 1:
        return [f"The runs ran on: {said(environments[0]['environment'])}.", ""]
    lines = ["The runs ran on:", ""]
    lines += [f"- {counted(e['runs'], 'run')}: {said(e['environment'])}" for e in environments]
    return [*lines, ""]


def _stats(summary: dict, ci: str) -> str:
    st = summary["stats"]
    if summary["diverged"]:
        return f"diverged on {summary['diverged']}/{len(summary['values'])} seeds"
    return f"{_fmt(st['mean'])} ± {_fmt(st['std'], 2)} {ci}".strip()


def _setup(spec: Spec, summaries: dict, results: dict | None = None) -> list[str]:
    """What a reader needs to repeat the comparison: each problem's budget, target and ladder, each
    optimizer's search space, the root seed, and where the runs ran."""
    from ... import problems as registry

    factors = ", ".join(f"{f:g}" for f in spec.ladder)
    lines = [
        "## Setup",
        "",
        f"Root seed {spec.seed} ({spec.dtype}); every run trains at its problem's budget, the same for every "
        f"optimizer. Runs are timed to each level of a ladder around the target, ideal + f x (target - ideal) "
        f"for f in {factors} (the ideal: 0 for a loss, 1 for an accuracy; f = 1 is the target):",
        "",
        "| problem | epochs | batch size | steps a run | target | ladder |",
        "|---|---|---|---|---|---|",
    ]
    for problem in spec.problems:
        budget = registry.get({"name": problem.name, **problem.args}).budget
        steps = {v["budget_steps"] for k, v in summaries.items() if k.startswith(f"{problem.label}|")}
        way = "<=" if problem.direction == "min" else ">="
        levels = ", ".join(f"{level:g}" for level in target_ladder(problem.target, problem.direction, spec.ladder))
        lines.append(
            f"| {problem.label} | {budget.epochs} | {budget.batch_size or 'full batch'} | "
            f"{', '.join(str(n) for n in sorted(steps)) or '-'} | {problem.metric} {way} {problem.target:g} | "
            f"{levels} |"
        )
    lines += ["", *_where((results or {}).get("environments"))]
    lines += ["", f"Search spaces ({spec.search}, {counted(spec.budget, 'setting')} each):", ""]
    lines += ["| optimizer | search space |", "|---|---|"]
    for opt in spec.optimizers:
        space = ", ".join(f"{name}: {dist}" for name, dist in spec.spaces(opt).items())
        lines.append(f"| {opt} | {space or 'its defaults only'} |")
    return [*lines, ""]


def markdown(spec: Spec, results: dict, command: str) -> str:
    s = results["summaries"]
    timing = results["timing"]
    lines = [
        f"# Study {spec.study_id}",
        "",
        f"`{command}`",
        "",
        f"{counted(len(spec.optimizers), 'optimizer')} x {counted(len(spec.problems), 'problem')}. "
        "Each optimizer is tuned with the same budget: "
        f"{counted(spec.budget, 'setting')} ({spec.search} over its search space) x {counted(spec.seeds, 'seed')}, "
        "scored by the mean "
        f"{spec.score} value of the problem's metric; the best setting, and the optimizer's defaults, rerun on "
        f"{counted(spec.final_seeds, 'other seed')}. Seeds are shared by every optimizer (common random numbers). "
        "Time to target counts the optimizer's steps only (evaluation and compilation off the clock); a run that "
        "misses a target is censored (∞), never dropped. Definitions: docs/studies.md.",
        "",
    ]
    lines += _setup(spec, s, results)
    tests = {(t["problem"], t["other"]): t for t in results["tests"]}
    for problem in spec.problems:
        way = "lower" if problem.direction == "min" else "higher"
        lines += [
            f"## {problem.label}",
            "",
            f"Target: {problem.metric} {'<=' if problem.direction == 'min' else '>='} {problem.target:g} "
            f"({way} is better). Reached: how many final seeds got to the target at some evaluation (the score is "
            "their final value); steps and seconds: medians over "
            "the final seeds (∞: half or more missed).",
            "",
            "| optimizer | tuned setting | tuned: mean ± std [95% bootstrap CI] | defaults: mean ± std | reached "
            "| steps | seconds | vs leader (Holm p) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for opt in spec.optimizers:
            final = s.get(f"{problem.label}|{opt}|final")
            if final is None:
                continue
            chosen = results["chosen"][f"{problem.label}|{opt}"]
            st = final["stats"]
            ci = f"[{_fmt(st['low'])}, {_fmt(st['high'])}]"
            tuned = _stats(final, ci)
            defaults = s.get(f"{problem.label}|{opt}|defaults")
            dtext = _stats(defaults, "") if defaults else "-"
            d = next(t for t in final["ttt"] if t["factor"] == 1.0)
            test = tests.get((problem.label, opt))
            if test is None:
                ties = any(t.get("tied") for (label, _), t in tests.items() if label == problem.label)
                vs = "leader (tied)" if ties else "leader"
            else:
                vs = f"tied, {_fmt(test['p_holm'], 2)}" if test.get("tied") else _fmt(test["p_holm"], 2)
            edge = " (edge)" if chosen["edge"] else ""
            lines.append(
                f"| {opt} | {_setting(chosen['hparams'])}{edge} | {tuned} | "
                f"{dtext} | {d['reached']}/{len(final['values'])} | {_fmt(d['median_steps'])} | "
                f"{_fmt(d['median_seconds'], 3)} | {vs} |"
            )
        lines.append("")
    lines += [
        "## Across problems",
        "",
        f"Performance profile over {counted(len(spec.problems), 'problem')}, the cost being the median "
        f"{spec.profile} to the declared target of the tuned setting; the AlgoPerf score is the profile's area "
        "from τ = 1 to 4, divided by 3 (1: fastest on every problem; a problem missed counts as never within τ).",
        "",
        "| optimizer | AlgoPerf score | fastest on | " + " | ".join(p.label for p in spec.problems) + " |",
        "|---|---|---|" + "---|" * len(spec.problems),
    ]
    ratios = results["ratios"]
    for opt in spec.optimizers:
        cells = [_fmt(ratios.get(p.label, {}).get(opt, math.inf), 3) for p in spec.problems]
        fastest = sum(1 for p in spec.problems if ratios.get(p.label, {}).get(opt, math.inf) == 1.0)
        lines.append(
            f"| {opt} | {results['algoperf'].get(opt, math.nan):.3f} | {fastest} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "(the cells: each optimizer's cost as a multiple of the fastest one's on that problem)",
        "",
        "![performance profiles](profile.png)",
        "",
        "![runtime ECDF](ecdf.png)",
        "",
        "![learning-rate sensitivity](sensitivity.png)",
        "",
        "![training curves](curves.png)",
        "",
        "![tunability](tunability.png)",
        "",
    ]
    warnings = []
    for key, c in results["chosen"].items():
        if c["edge"]:
            problem, opt = key.split("|")
            warnings += [f"- {opt} on {problem}: {note}." for note in edge_notes(spec, opt, c)]
    for problem, opt, what in worse_than_defaults(spec, s):
        warnings.append(
            f"- {opt} on {problem}: the tuned setting did worse on the final seeds than the defaults ({what}): "
            f"the tuning ({counted(spec.budget, 'setting')} x {counted(spec.seeds, 'seed')}) missed the defaults' "
            "level; a larger budget, or a space around the defaults, compares the optimizer rather than the tuning."
        )
    note = significance_note(spec)
    if note:
        warnings.append(f"- {note[0].upper()}{note[1:]}.")
    if warnings:
        lines += ["## Warnings", "", *warnings, ""]
    lines += _timing(timing, results)
    return "\n".join(lines)


def _timing(timing: dict, results: dict) -> list[str]:
    """The report's Timing section: that of the command that ran the runs (``timing``)."""
    if not timing["runs_run"]:  # every run found done, and no command that ran them wrote its timing
        recorded = results.get("recorded")
        lines = [
            "## Timing",
            "",
            f"{counted(timing['runs'], 'run')}, all found done in the store, and no timing is kept of the command "
            "that ran them (one that is stopped writes none): the study's wall time and its time per run beyond "
            f"training are not known. This command took {timing['wall_seconds']:.1f} s.",
        ]
        if recorded:
            lines[-1] += (
                f" The runs' own records: training {recorded['fit_seconds']:.1f} s (the optimizers' steps "
                f"{recorded['train_seconds']:.1f} s), numba's warm-ups apart {recorded['warmup_seconds']:.1f} s."
            )
        return [*lines, ""]
    fit = timing.get("fit_seconds", timing["train_seconds"])
    probes = timing.get("probe_seconds", 0.0)
    setup = max(timing["run_seconds"] - fit - probes, 0.0)
    beyond = beyond_training(timing)
    lines = [
        "## Timing",
        "",
        f"{counted(timing['runs'], 'run')} ({timing['runs_run']} ran in "
        f"{counted(timing['jobs'], 'job')} on {counted(timing['workers'], 'worker')}, {timing['runs_reused']} "
        f"reused from the store). Wall time {timing['wall_seconds']:.1f} s, from the first run to the reduction "
        "(the console's figure adds the command's start: imports, the config). "
        f"The runs' training (the optimizers' steps, {timing['train_seconds']:.1f} s, and the trainer's "
        f"evaluations at epoch ends: what the runs cost alone) took {fit:.1f} s. Beyond it, "
        f"**{beyond * 1000:.0f} ms per run** (wall time x workers, less the training and the warm-ups): the "
        f"study's evaluations between epochs {probes:.1f} s, the runs' set-up {setup:.1f} s, and launching, the "
        f"store and the reduction {timing['outside_seconds']:.1f} s. Numba's warm-ups, apart: "
        f"{timing['warmup_seconds']:.1f} s.",
        "",
    ]
    now = results.get("timing_now", timing)
    if now is not timing and now != timing:  # a repeat that found every run done
        lines[-1:] = [
            "",
            f"This report was written again by a repeat of the command, which found all {now['runs_reused']} "
            f"runs done and ran none (wall time {now['wall_seconds']:.1f} s); the timing above is that of the "
            "command that ran them.",
            "",
        ]
    return lines


def write_report(spec: Spec, results: dict, folder, command: str = "", finals: list[dict] | None = None) -> Path:
    """Write ``report.md`` and the figures into ``folder``; returns it."""
    import matplotlib

    matplotlib.use("Agg")
    from ...files import write_text_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plot_profile(spec, results, folder / "profile.png")
    plot_ecdf(spec, results, folder / "ecdf.png")
    plot_sensitivity(spec, results, folder / "sensitivity.png")
    plot_curves(spec, results, finals or [], folder / "curves.png")
    plot_tunability(spec, results, folder / "tunability.png")
    write_text_atomic(folder / "report.md", markdown(spec, results, command) + "\n")
    return folder
