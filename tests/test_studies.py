"""Studies: the spec, the protocol end to end on tiny problems, resume, launchers, MLflow's structure."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from optlab.app.study import measures
from optlab.app.study.reduce import tuning_table
from optlab.app.study.report import markdown, write_report
from optlab.app.study.runner import Study, jobs_of
from optlab.app.study.spec import Spec, SpecError
from optlab.app.study.store import Store, decode, encode
from optlab.app.study.trial import geometric_steps, run_one
from optlab.spaces import LogUniform, parse, search_space

TINY = {"optimizers": ["sgd", "adam"], "problems": ["seed_linear", "beale"], "budget": 3, "seeds": 2, "final_seeds": 3}


# -- the spec --------------------------------------------------------------------------------------
def test_bad_settings_name_the_field_and_what_it_allows():
    with pytest.raises(SpecError, match=r"adamm.*adam"):
        Spec.from_config({**TINY, "optimizers": ["adamm"]})
    with pytest.raises(SpecError, match=r"`budget` must be an integer >= 1; received budget=0"):
        Spec.from_config({**TINY, "budget": 0})
    with pytest.raises(SpecError, match=r"`search` must be one of grid, random"):
        Spec.from_config({**TINY, "search": "tpe"})
    with pytest.raises(SpecError, match=r"unknown setting 'budgets'"):
        Spec.from_config({**TINY, "budgets": 3})
    with pytest.raises(SpecError, match=r"quadratic.*has its target only at its default arguments.*target:"):
        Spec.from_config({**TINY, "problems": [{"name": "quadratic", "dim": 5}]})
    with pytest.raises(SpecError, match=r"beta_3.*not one of its hyperparameters"):
        Spec.from_config({**TINY, "space": {"adam": {"beta_3": "uniform(0.8, 0.9)"}}})
    with pytest.raises(SpecError, match=r"log\(LOW, HIGH\)"):
        Spec.from_config({**TINY, "space": {"adam": {"learning_rate": "logg(1, 2)"}}})
    with pytest.raises(SpecError, match=r"learning_rate"):  # a rate below 0 is outside what the optimizer accepts
        Spec.from_config({**TINY, "space": {"sgd": {"learning_rate": "uniform(-1, 1)"}}})
    # a target no run can reach: past an accuracy's 1, a distance's 0, a test function's minimum
    # (Styblinski-Tang's is -39.16617 per dimension: between -78.3324 and -78.3323 in 2)
    unreachable = [
        ("logistic_regression", "val_accuracy >= 1.01", r"val_accuracy's best possible value is 1\b"),
        ("rosenbrock", "distance_to_optimum <= -0.5", r"distance_to_optimum's best possible value is 0\b"),
        ("rosenbrock", "loss <= -1e-3", r"its minimum loss is 0\b"),
        ("styblinski_tang", "loss <= -78.34", r"its minimum loss is -78.332"),
        # what the problems declare (metric_best), which a newcomer's study ran in full before
        ("rosenbrock", "suboptimality <= -1", r"suboptimality's best possible value is 0\b"),
        ("seed_linear", "excess <= -1", r"excess's best possible value is 0\b"),
        ("mlp_digits", "val_loss <= -1", r"val_loss's best possible value is 0\b"),
    ]
    for name, target, why in unreachable:
        with pytest.raises(SpecError, match=f"{name}: `target` .*: no run can reach it: {why}"):
            Spec.from_config({**TINY, "problems": [{"name": name, "target": target}]})
    with pytest.raises(SpecError) as typo:
        Spec.from_config({**TINY, "problems": ["rosenbrok"]})
    assert str(typo.value).startswith("study: problems: Unknown problem 'rosenbrok'. Did you mean 'rosenbrock'?")
    assert "flat config" not in str(typo.value)  # (the registry's note on get_config() dicts)
    with pytest.raises(SpecError, match=r"`problems` is empty: name at least one"):
        Spec.from_config({**TINY, "problems": []})
    with pytest.raises(SpecError, match=r"`final_seeds` must be an integer >= 2 \(the report's intervals"):
        Spec.from_config({**TINY, "final_seeds": 1})
    for name, target in (("styblinski_tang", "loss <= -78.33"), ("rosenbrock", "loss <= 0")):
        assert Spec.from_config({**TINY, "problems": [{"name": name, "target": target}]}).problems[0].target < 1
    # a problem given its own target is accepted
    spec = Spec.from_config({**TINY, "problems": [{"name": "quadratic", "dim": 5, "target": "suboptimality <= 1e-6"}]})
    assert spec.problems[0].label == "quadratic(dim=5)" and spec.problems[0].target == 1e-6


def test_search_spaces_are_declared_by_optimizers_and_checked():
    from optlab import optimizers

    assert search_space(optimizers.registry.get("sgd")) == {"learning_rate": LogUniform(1e-3, 10)}
    assert search_space(optimizers.registry.get("lion")) == {"learning_rate": LogUniform(1e-5, 0.1)}
    # an optimizer that declares none: two decades either side of its default rate (Adafactor: 1e-3)
    space = search_space(optimizers.registry.get("adafactor"))["learning_rate"]
    assert (space.low, space.high) == pytest.approx((1e-5, 1e-1))
    assert parse("log(1e-4, 1)").grid(5) == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    assert parse("uniform(0.8, 0.9)").grid(3) == pytest.approx([0.8, 0.85, 0.9])
    assert parse("choice(true, false)").grid(3) == [True, False, True]
    # a declared space is checked as the class is defined (a study was the first to refuse it: a plugin author)
    from optlab.spaces import Uniform, tuned

    with pytest.raises(TypeError, match=r"^Beyond.search_space: .*`beta_1` must be a float in \[0, 1\)"):
        type("Beyond", (optimizers.Adam,), {"search_space": tuned(beta_1=Uniform(0.5, 1.0))})
    with pytest.raises(TypeError, match=r"names 'beta_3', not one of its hyperparameters \(did you mean 'beta_2'\?\)"):
        type("Unknown", (optimizers.Adam,), {"search_space": tuned(beta_3=Uniform(0.5, 0.9))})


def test_every_optimizer_gets_the_same_budget_and_the_same_seeds():
    spec = Spec.from_config({**TINY, "optimizers": ["sgd", "adam", "lion"], "budget": 5})
    runs = spec.tuning_runs()
    per = {}
    for r in runs:
        per.setdefault((r["optimizer"], r["problem"]), set()).add(repr(sorted(r["hparams"].items())))
    assert {len(v) for v in per.values()} == {5}  # equal budgets
    # the 1-D grid spans the declared space, both ends included, log-spaced
    sgd = sorted(h["learning_rate"] for h in (s for s in spec.settings("sgd", spec.problems[0])) for h in [h])
    assert sgd[0] == pytest.approx(1e-3) and sgd[-1] == pytest.approx(10)
    assert np.allclose(np.diff(np.log10(sgd)), 1.0, atol=1e-3)
    # common random numbers: every optimizer and setting sees the same tuning seeds; final seeds are others
    seeds = {(r["optimizer"], repr(r["hparams"])): set() for r in runs}
    for r in runs:
        seeds[(r["optimizer"], repr(r["hparams"]))].add(r["seed"])
    assert all(s == set(spec.tuning_seeds()) for s in seeds.values())
    assert not set(spec.tuning_seeds()) & set(spec.final_seed_list())
    # random search: seeded per optimizer and problem, reproducible, within the space
    random = Spec.from_config({**TINY, "search": "random", "budget": 6})
    draws = [s["learning_rate"] for s in random.settings("adam", random.problems[0])]
    assert draws == [s["learning_rate"] for s in random.settings("adam", random.problems[0])]
    assert all(1e-4 <= d <= 1.0 for d in draws) and len(set(draws)) == 6
    # a two-dimensional space: a quasi-random design of exactly `budget` points
    two = Spec.from_config(
        {**TINY, "space": {"adam": {"learning_rate": "log(1e-4, 1)", "beta_1": "uniform(0.8, 0.99)"}}}
    )
    design = two.settings("adam", two.problems[0])
    assert len(design) == 3 and all(0.8 <= s["beta_1"] <= 0.99 for s in design)


def test_the_hash_names_the_protocol_not_the_grouping():
    a = Spec.from_config(TINY)
    assert a.study_id == Spec.from_config({**TINY, "runs_per_job": 2}).study_id
    assert a.study_id != Spec.from_config({**TINY, "seeds": 3}).study_id
    assert a.study_id.startswith("study-") and len(a.digest) == 8


def test_a_payload_survives_hydras_override_grammar():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    payload = {"store": "/tmp/x y", "runs": [{"key": "k", "hparams": {"learning_rate": 1e-3}, "name": "a=b,c"}]}
    word = encode(payload)
    parsed = OverridesParser.create().parse_overrides([f"job={word}"])[0]
    assert decode(parsed.value()) == payload


def test_jobs_are_few_and_a_pool_shares_every_group_evenly(tmp_path):
    spec = Spec.from_config({**TINY, "budget": 5, "seeds": 3})  # 2 x 2 x 5 x 3 = 60 runs, 4 groups of 15
    runs, store = spec.tuning_runs(), Store(tmp_path)
    group = lambda r: (r["problem"], r["optimizer"])  # noqa: E731

    def check(jobs, count):
        assert len(jobs) == count
        flat = [r["key"] for job in jobs for r in job["runs"]]
        assert sorted(flat) == sorted(r["key"] for r in runs)  # every run once
        for job in jobs:  # a job's runs ordered by group: each group's kernels load once
            order = [group(r) for r in job["runs"]]
            assert len(set(order)) == len([k for i, k in enumerate(order) if i == 0 or order[i - 1] != k])
        return jobs

    # one process (or a process per job): as few jobs as runs_per_job allows, stretches of equal length
    jobs = check(jobs_of(runs, store, 64), 1)
    jobs = check(jobs_of(runs, store, 25), 3)
    assert [len(j["runs"]) for j in jobs] == [20, 20, 20]
    # a pool of 2 workers: a multiple of 2 jobs, each with its share of every group (7 or 8 of 15)
    for size, count in ((64, 2), (25, 4)):
        jobs = check(jobs_of(runs, store, size, pool=2), count)
        for job in jobs:
            shares = {}
            for r in job["runs"]:
                shares[group(r)] = shares.get(group(r), 0) + 1
            assert len(shares) == 4 and all(15 // count <= n <= -(-15 // count) for n in shares.values())


# -- one run ---------------------------------------------------------------------------------------
def test_geometric_schedule():
    assert geometric_steps(40) == [1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 40]


def test_time_to_target_against_a_hand_computed_descent():
    """SGD at 0.1 on the tutorial's line, by hand: the first step whose excess is <= 0.1."""
    x, y = np.array([0.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])
    a = b = 2.0
    hand = None
    for step in range(1, 101):
        r = a * x + b - y
        a, b = a - 0.1 * np.sum(x * r), b - 0.1 * np.sum(r)
        if hand is None and max(abs(a - 1), abs(b - 1)) <= 0.1:
            hand = step
    spec = Spec.from_config({**TINY, "problems": ["seed_linear"]})
    run = spec.run("final", "sgd", spec.problems[0], {"learning_rate": 0.1}, 0)
    record = run_one(run)
    assert [p[0] for p in record["points"]] == list(range(1, 101))  # full batch: every step is an epoch end
    points = [{"step": p[0], "examples": p[1], "seconds": p[2], "value": p[3]} for p in record["points"]]
    reached = measures.time_to_target(points, 0.1, "min")
    assert reached["step"] == hand and reached["examples"] == hand
    assert 0 < reached["seconds"] < record["train_seconds"]
    assert measures.time_to_target(points, 1e-30, "min")["step"] == math.inf  # censored, not dropped


def test_a_minibatch_run_is_evaluated_between_epoch_ends():
    spec = Spec.from_config({**TINY, "problems": ["logistic_regression"]})
    record = run_one(spec.run("final", "adam", spec.problems[0], {"learning_rate": 0.01}, 0))
    steps = [p[0] for p in record["points"]]
    per_epoch = record["budget_steps"] // 30  # logistic_regression: 30 epochs of batch 32 over 455 examples
    assert steps[:4] == [1, 2, 3, 4] and per_epoch in steps and steps[-1] == record["budget_steps"]
    examples = dict((p[0], p[1]) for p in record["points"])
    assert examples[1] == 32 and examples[per_epoch] == 455  # the last batch of an epoch is partial


def test_a_diverging_run_stops_and_scores_nan():
    spec = Spec.from_config({**TINY, "problems": ["beale"]})
    record = run_one(spec.run("tuning", "sgd", spec.problems[0], {"learning_rate": 10.0}, 0))
    assert record["diverged"] and math.isnan(record["final"]) and record["steps"] < record["budget_steps"]


def test_too_few_final_seeds_for_any_significant_difference_are_said():
    """The exact two-sided rank-sum test of two samples of n, wholly apart, gives p = 2 / C(2n, n):
    0.1 for 3, 0.0286 for 4; Holm over m comparisons multiplies the smallest by m."""
    from optlab.app.study.reduce import significance_note

    one = Spec.from_config({**TINY, "problems": ["beale"], "final_seeds": 3})  # 1 comparison
    assert significance_note(one) == (
        "with 3 final seeds the rank-sum test's smallest p-value is 0.1: no difference in this study can be "
        "significant at 0.05; final_seeds=4 would allow it"
    )
    assert significance_note(Spec.from_config({**TINY, "problems": ["beale"], "final_seeds": 4})) is None
    # 3 optimizers x 2 problems: 4 comparisons; n = 4 gives 4 x 2/70 = 0.114, n = 5 gives 4 x 2/252 = 0.032
    many = Spec.from_config({**TINY, "optimizers": ["sgd", "adam", "rmsprop"], "final_seeds": 4})
    assert significance_note(many) == (
        "with 4 final seeds the rank-sum test's smallest p-value is 0.029, Holm-adjusted over 4 comparisons 0.11: "
        "no difference in this study can be significant at 0.05; final_seeds=5 would allow it"
    )


def test_a_tuned_setting_worse_than_the_defaults_is_named():
    from optlab.app.study.reduce import worse_than_defaults

    spec = Spec.from_config({**TINY, "problems": ["beale"]})  # minimised

    def arm(values, diverged=0):
        return {"stats": {"mean": float(np.mean(values))}, "diverged": diverged, "values": values}

    # five seeds wholly apart: the exact two-sided rank-sum p is 2 / C(10, 5) = 2 / 252 = 0.0079
    summaries = {
        "beale|sgd|final": arm([0.50, 0.51, 0.52, 0.53, 0.54]),
        "beale|sgd|defaults": arm([0.25, 0.26, 0.27, 0.28, 0.29]),
        "beale|adam|final": arm([float("nan"), 0.1, 0.1], diverged=1),
        "beale|adam|defaults": arm([0.75, 0.75, 0.75]),
    }
    assert worse_than_defaults(spec, summaries) == [
        ("beale", "sgd", "mean 0.52 against the defaults' 0.27, rank-sum p = 0.0079"),
        ("beale", "adam", "diverged on 1 of 3 seeds, the defaults on none"),
    ]
    # worse by a hair, within the seeds' spread (a newcomer's report flagged 0.9671 against 0.9674): not said
    summaries["beale|sgd|final"] = arm([0.26, 0.28, 0.30, 0.25, 0.27])
    summaries["beale|adam|defaults"] = arm([float("nan")] * 3, diverged=3)  # both diverged: not the tuning's doing
    assert worse_than_defaults(spec, summaries) == []


# -- the protocol end to end -----------------------------------------------------------------------
def _study(tmp_path, **settings):
    spec = Spec.from_config({**TINY, **settings})
    lines = []
    return Study(spec, Store(tmp_path / spec.study_id), say=lines.append), lines


def test_protocol_end_to_end_and_resume(tmp_path):
    study, _ = _study(tmp_path)
    results = study.run()
    spec = study.spec
    timing = results["timing"]
    n_tuning = 2 * 2 * 3 * 2  # optimizers x problems x budget x seeds
    n_final = 2 * 2 * 2 * 3  # optimizers x problems x (tuned, defaults) x final seeds
    assert timing["runs"] == timing["runs_run"] == n_tuning + n_final and timing["runs_reused"] == 0
    # a trial's score is the mean of its seeds' final values, read back from the stored runs
    stored = [json.loads(p.read_text()) for p in (study.store.folder / "runs").glob("*.json")]
    assert len(stored) == n_tuning + n_final
    for r in stored:  # the steps lie within the training, which with the probes lies within the run
        assert 0 < r["train_seconds"] <= r["fit_seconds"] and r["fit_seconds"] + r["probe_seconds"] <= r["wall_seconds"]
    tuning = [r for r in stored if r["seed"] in spec.tuning_seeds()]
    table = tuning_table(spec, tuning)
    for (problem, opt), rows in table.items():
        assert len(rows) == 3
        for row in rows:
            same = [
                r["final"]
                for r in tuning
                if (r["problem"], r["optimizer"]) == (problem, opt) and r["hparams"] == row["hparams"]
            ]
            assert sorted(row["values"]) == sorted(same) and row["score"] == pytest.approx(np.mean(same), nan_ok=True)
            assert row["seeds"] == sorted(spec.tuning_seeds())  # each value's seed, in order
        best = results["chosen"][f"{problem}|{opt}"]
        finite = [r for r in rows if math.isfinite(r["score"])]
        assert best["score"] == min(r["score"] for r in finite)  # both problems minimise
    # the rerun: the tuned setting on every final seed, with a bootstrap interval within the seeds' range
    summary = results["summaries"]["beale|adam|final"]
    assert summary["seeds"] == sorted(spec.final_seed_list())
    values = summary["values"]
    assert summary["stats"]["mean"] == pytest.approx(sum(values) / len(values))
    assert min(values) <= summary["stats"]["low"] <= summary["stats"]["high"] <= max(values)
    # the tutorial's line is deterministic: every seed takes the same steps, which the profile compares
    sgd = results["summaries"]["seed_linear|sgd|final"]["ttt"]
    assert [t["factor"] for t in sgd] == [10.0, 3.0, 1.0, 0.5]
    assert (study.store.folder / "results.json").exists()

    # repeated: nothing runs again, and the report keeps the timing of the command that ran the runs
    again, _ = _study(tmp_path)
    repeat = again.run()
    now = repeat["timing_now"]
    assert now["runs_run"] == 0 and now["runs_reused"] == n_tuning + n_final and now["jobs"] == 0
    assert repeat["timing"] == timing  # (it was replaced by the repeat's: 0 runs in 0 jobs)
    assert json.loads((study.store.folder / "results.json").read_text())["timing"] == timing
    assert repeat["chosen"] == results["chosen"]
    text = markdown(study.spec, repeat, "cmd")
    # the set-up a reader needs to repeat it: budgets (Beale declares 1,000 full-batch epochs), spaces, seed
    assert "| beale | 1000 | full batch | 1000 | suboptimality <= 1e-08 |" in text
    assert "| adam | learning_rate: log(0.0001, 1) |" in text and "Root seed 0 (float32)" in text
    # the ladder each problem is timed to (Beale's target 1e-8, ideal 0: 10, 3, 1 and 0.5 times it)
    assert "| beale | 1000 | full batch | 1000 | suboptimality <= 1e-08 | 1e-07, 3e-08, 1e-08, 5e-09 |" in text
    import numba

    import optlab

    where = f"The runs ran on: optlab {optlab.__version__}, Python {sys.version.split()[0]}, numpy {np.__version__}, "
    assert where + f"numba {numba.__version__}; " in text and f"{numba.get_num_threads()} numba thread" in text
    # 2 optimizers x 2 problems: 2 comparisons, 3 final seeds: 2 x 0.1 = 0.2, final_seeds=4 gives 0.057, 5 gives 0.016
    assert (
        "- With 3 final seeds the rank-sum test's smallest p-value is 0.1, Holm-adjusted over 2 comparisons 0.2" in text
    )
    assert "final_seeds=5 would allow it." in text
    jobs = f"{timing['jobs']} job{'s' if timing['jobs'] != 1 else ''}"
    assert f"{timing['runs']} runs ({timing['runs_run']} ran in {jobs} on" in text
    # (it read "{timing['wall_seconds']:.1f}": a newcomer)
    assert f"Wall time {timing['wall_seconds']:.1f} s, from the first run" in text
    assert "{" not in text.split("## Timing")[1]  # no placeholder left unfilled
    assert f"which found all {n_tuning + n_final} runs done and ran none" in text
    # interrupted: the runs that had not finished (files missing) run, the rest is reused
    files = sorted((study.store.folder / "runs").glob("*.json"))
    for path in files[:5]:
        path.unlink()
    resumed, _ = _study(tmp_path)
    assert resumed.run()["timing"]["runs_run"] == 5
    # a run file that cannot be read (cut short by a full disk, edited by hand) is run again
    files[0].write_text('{"key": ')
    files[1].write_text("[]")
    repaired, _ = _study(tmp_path)
    assert repaired.run()["timing"]["runs_run"] == 2
    assert json.loads(files[0].read_text())["key"] == files[0].stem
    # every run done and no command's timing kept (the one that ran them was stopped before writing it): the
    # report said "Beyond it, 2532 ms per run", the repeat's whole wall time over no run (a newcomer's trial)
    (study.store.folder / "results.json").unlink()
    unknown, _ = _study(tmp_path)
    after = unknown.run()
    assert after["timing"]["runs_run"] == 0
    text = markdown(study.spec, after, "cmd").split("## Timing")[1]
    stored = [json.loads(p.read_text()) for p in (study.store.folder / "runs").glob("*.json")]
    assert f"{n_tuning + n_final} runs, all found done in the store, and no timing is kept" in text
    assert "per run" not in text.replace("time per run beyond training are not known", "")
    assert f"training {sum(r['fit_seconds'] for r in stored):.1f} s" in text


def test_an_edge_setting_is_warned_about(tmp_path):
    study, lines = _study(
        tmp_path, problems=["seed_linear"], optimizers=["adam"], space={"adam": {"learning_rate": "log(1e-4, 1e-2)"}}
    )
    results = study.run()
    assert results["chosen"]["seed_linear|adam"]["edge"] == ["learning_rate"]
    # which end, and the override that widens it there (it said "space.<optimizer>.<name>=...")
    said = (
        "adam on seed_linear: the tuned learning_rate=0.01 lies at the high end of its search space "
        'log(0.0001, 0.01): widen it there (space.adam.learning_rate="log(0.0001, 1)") or the comparison is '
        "about the space"
    )
    assert f"optlab: warning: {said}" in lines
    assert f"- {said}." in markdown(study.spec, results, "")


def test_an_edge_is_widened_at_its_end_as_far_as_the_hyperparameter_goes():
    from optlab.optimizers import SGD, Adam
    from optlab.spaces import Choice, Uniform, widened

    assert widened(SGD, "learning_rate", LogUniform(1e-3, 10), 0.001, 0.05) == ("low", LogUniform(1e-5, 10))
    assert widened(SGD, "learning_rate", LogUniform(1e-3, 10), 9.0, 0.05) == ("high", LogUniform(1e-3, 1000))
    assert widened(SGD, "learning_rate", LogUniform(1e-3, 10), 0.1, 0.05) is None  # (mid-range: log 0.1 is 0.5)
    # a linear range by half its width, but beta_2 < 1: halfway from 0.999 to 1
    assert widened(Adam, "beta_2", Uniform(0.9, 0.999), 0.999, 0.05) == ("high", Uniform(0.9, 0.9995))
    assert widened(Adam, "beta_2", Uniform(0.9, 0.999), 0.9, 0.05) == ("low", Uniform(0.8505, 0.999))
    # momentum >= 0: a range that starts at 0 cannot widen there
    assert widened(SGD, "momentum", Uniform(0.0, 0.99), 0.0, 0.05) == ("low", None)
    assert widened(SGD, "nesterov", Choice(True, False), True, 0.05) is None


# -- the command line ------------------------------------------------------------------------------
def _cli(cwd, *args):
    from cli_helpers import optlab

    return optlab(cwd, *args, module="optlab.study", timeout=600)


def test_a_launcher_typo_or_an_output_folder_under_a_file_is_one_line_before_anything(tmp_path):
    """Hydra's paragraph (exit 1) and a traceback after the first job's announcement, before
    (a newcomer's trial); ``python -m optlab -m`` said both in one line."""
    done = _cli(tmp_path, "hydra/launcher=jobli")
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "optlab: error: study: Unknown hydra/launcher 'jobli'. Did you mean 'joblib'? Installed: "
        + done.stderr.split("Installed: ", 1)[1].strip()
    ]
    (tmp_path / "compare.png").write_bytes(b"the user's picture")
    done = _cli(tmp_path, "hydra.sweep.dir=compare.png/sw", "tracking=none", "optimizers=[sgd]", "problems=[beale]")
    assert done.returncode == 2 and "Traceback" not in done.stderr and "tuning" not in done.stdout + done.stderr
    under = tmp_path / "compare.png"
    said = "optlab: error: study: hydra.sweep.dir: cannot create a folder under"
    assert done.stderr.strip() == f"{said} {under}, which is a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compare.png"]
    assert (tmp_path / "compare.png").read_bytes() == b"the user's picture"


def test_a_misspelled_space_function_is_the_studys_own_line(tmp_path):
    """logg(...) went to Hydra, whose error listed its own functions (bool, choice, float, glob, ...),
    not the study's log and uniform (a newcomer's trial)."""
    done = _cli(tmp_path, "space.adam.learning_rate=logg(1e-3, 1)", "optimizers=[adam]")
    assert done.returncode == 2 and "Traceback" not in done.stderr and "glob" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("optlab: error: study:") and "log(LOW, HIGH)" in line and "logg" in line


def test_a_target_at_the_best_possible_value_gets_its_report(tmp_path):
    """An accuracy of 1 made every level of the target ladder the same, and the study failed after
    all its runs with a StopIteration and no report (a newcomer's trial)."""
    target = "problems=[{name: logistic_regression, target: 'val_accuracy >= 1'}]"
    done = _cli(tmp_path, "tracking=none", "optimizers=[sgd]", "budget=1", "seeds=1", "final_seeds=2", target)
    assert done.returncode == 0, done.stderr
    (report,) = tmp_path.glob(".optlab/studies/*/report/report.md")
    assert "val_accuracy >= 1" in report.read_text()


ARGS = ("optimizers=[sgd,adam]", "problems=[beale,logistic_regression]", "budget=2", "seeds=2", "final_seeds=3")
ARGS = (*ARGS, "name=tiny", "runs_per_job=2")


#: the study's command with a store that never takes a run's status (its children, written in bulk, do not ask)
STATUS_REFUSED = """
import sys
from mlflow.tracking import MlflowClient

def refused(self, *args, **kwargs):
    raise RuntimeError("database is locked")

MlflowClient.set_terminated = refused
from optlab.app.study.app import main
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_a_study_whose_parent_cannot_be_ended_says_so_and_keeps_the_status_for_delivery(tmp_path):
    """The parent run's status the store refused is not left RUNNING unsaid: one line names what is
    kept and the command that delivers it, and delivering it ends the parent."""
    import re

    from cli_helpers import client

    from optlab import deliver

    result = subprocess.run(
        [sys.executable, "-c", STATUS_REFUSED, *ARGS], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert "optlab: warning: MLflow: the study's parent run: the run's status (FINISHED) could not be set" in (
        result.stderr
    ), result.stderr
    kept = re.search(r"deliver them with: python -m optlab.deliver (\S+)", result.stderr)
    assert kept, result.stderr
    c = client(tmp_path)
    exp = c.get_experiment_by_name("optlab")
    parents = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("optlab.kind") == "study"]
    assert [p.info.status for p in parents] == ["RUNNING"]
    assert deliver.main([kept.group(1)]) == 0
    assert c.get_run(parents[0].info.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_cli_study_stopped_then_resumed_records_one_parent_and_every_child_once(tmp_path):
    import signal
    import time

    from cli_helpers import client, optlab

    # stopped by SIGTERM (a cluster's time limit) once a few runs are stored
    process = subprocess.Popen(
        [sys.executable, "-m", "optlab.study", *ARGS], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    studies = tmp_path / ".optlab" / "studies"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(studies.glob("tiny-*/runs/*.json"))) < 3:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    err = err.decode()
    assert process.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "repeat the command" in err and "Traceback" not in err
    kept = len(list(studies.glob("tiny-*/runs/*.json")))
    assert 3 <= kept < 16 + 24

    # while another process runs it, the same command does not: it would run its runs and write its children twice
    from optlab.app.study.store import Store

    with Store(next(studies.glob("tiny-*"))).lock():
        busy = _cli(tmp_path, *ARGS)
    assert busy.returncode == 2 and busy.stderr.startswith("optlab: error: study tiny-"), busy.stderr
    assert "is running in another process now" in busy.stderr and len(busy.stderr.strip().splitlines()) == 1
    assert len(list(studies.glob("tiny-*/runs/*.json"))) == kept
    c = client(tmp_path)
    exp = c.get_experiment_by_name("optlab")
    stopped = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("optlab.kind") == "study"]
    (status,) = [p.info.status for p in stopped]
    # KILLED; or, on a loaded machine (once in CI), not marked in the time a stopped run waits for its
    # store, and said so, its status kept for optlab.deliver
    unmarked = re.search(r"the study's parent run: .*python -m optlab\.deliver (\S+\.jsonl)", err)
    assert status == "KILLED" or (status == "RUNNING" and unmarked), err

    # the same command: the stored runs reused, the rest run, the parent reopened
    result = _cli(tmp_path, *ARGS)
    assert result.returncode == 0, result.stderr
    assert f"({kept} found done)" in result.stdout and "report:" in result.stdout
    found = c.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in found if r.data.tags.get("optlab.kind") == "study"]
    assert [p.info.status for p in parents] == ["FINISHED"] and parents[0].info.run_id == stopped[0].info.run_id
    parent = parents[0]
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(found) - 1
    trials = [r.data.tags["optlab.trial"] for r in children]
    assert len(trials) == len(set(trials))  # none written twice
    arms = {}
    for r in children:
        arms[r.data.tags["optlab.arm"]] = arms.get(r.data.tags["optlab.arm"], 0) + 1
    assert arms == {"tuning": 2 * 2 * 2, "final": 2 * 2 * 3, "defaults": 2 * 2 * 3}
    assert all(r.info.status == "FINISHED" for r in children)
    final = next(
        r for r in children if r.data.tags["optlab.arm"] == "final" and r.data.tags["optlab.problem"] == "beale"
    )
    assert {"optlab.optimizer", "optlab.seed"} <= set(final.data.tags) and "learning_rate" in final.data.params
    assert len(c.get_metric_history(final.info.run_id, "train/suboptimality")) > 5  # the curve, on the schedule
    assert set(parent.data.tags) >= {"optlab.study", "optlab.version", "numba.version", "optlab.cores"}
    assert {f"algoperf/{o}" for o in ("sgd", "adam")} <= set(parent.data.metrics)
    artifacts = {a.path for a in c.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/profile.png", "report/curves.png"} <= artifacts
    if unmarked:  # delivered now, the stopped parent's kept status does not undo its end
        delivered = optlab(tmp_path, unmarked.group(1), module="optlab.deliver")
        assert delivered.returncode == 0, delivered.stderr
        assert c.get_run(parent.info.run_id).info.status == "FINISHED"
    folder = next(studies.glob("tiny-*"))
    assert (folder / "report" / "report.md").read_text().count("| sgd |") == 4  # the spaces, two problems, the profile

    # python -m optlab.compare --study: per problem and optimizer, the seeds' values and steps to target
    shown = subprocess.run(
        [sys.executable, "-m", "optlab.compare", "--study", "tiny", "--output", "study.png"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr
    body = [line for line in shown.stdout.splitlines() if line.startswith(("beale ", "logistic_regression "))]
    assert len(body) == 2 * 2 * 2  # problems x optimizers x (final, defaults)
    assert all(" 3 " in line for line in body) and (tmp_path / "study.png").stat().st_size > 10_000
    assert "logistic_regression: val_accuracy >= 0.95" in shown.stdout


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_cli_study_runs_on_other_launchers(tmp_path, launcher):
    args = ("optimizers=[sgd,adam]", "problems=[beale]", "budget=2", "seeds=2", "final_seeds=3", "name=tiny")
    result = _cli(tmp_path, *args, f"hydra/launcher={launcher}", "runs_per_job=100", "tracking=none")
    assert result.returncode == 0, result.stderr
    folder = next((tmp_path / ".optlab" / "studies").glob("tiny-*"))
    results = json.loads((folder / "results.json").read_text())
    assert results["timing"]["runs_run"] == 2 * 2 * 2 + 2 * 2 * 3
    # as few jobs as runs_per_job allows: one a round, or one per joblib worker a round
    assert results["timing"]["jobs"] == (4 if launcher == "joblib" else 2)
    assert results["timing"]["workers"] == (2 if launcher == "joblib" else 1)


def test_cli_bad_input_is_one_line(tmp_path):
    result = _cli(tmp_path, "optimizers=[sgd,adamm]", "tracking=none")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("optlab: error: study: optimizers:") and "Traceback" not in result.stderr


def test_the_command_line_takes_a_space_as_written_and_refuses_a_misspelled_setting():
    from optlab.app.study.app import _override

    assert _override("space.sgd.learning_rate=log(1e-3, 100)") == "+space.sgd.learning_rate='log(1e-3, 100)'"
    assert _override("+space.adam.beta_1='uniform(0.8, 0.99)'") == "+space.adam.beta_1='uniform(0.8, 0.99)'"
    assert _override("budget=3") == "budget=3" and _override("hydra/launcher=joblib") == "hydra/launcher=joblib"
    with pytest.raises(ValueError, match=r"unknown setting 'budjet' \(did you mean 'budget'\?\)"):
        _override("budjet=3")
    with pytest.raises(ValueError, match=r"unknown setting 'trackng' \(did you mean 'tracking'\?\).*, tracking$"):
        _override("trackng=none")


def test_a_misspelled_study_preset_is_one_line_and_a_preset_of_ones_own_is_known(tmp_path, monkeypatch):
    """Hydra's own message for study=quik was a paragraph ending in exit status 1."""
    from optlab.app.study.app import _override

    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        ValueError, match=r"unknown preset study=quik \(did you mean 'quick'\?\); the presets are quick, standard"
    ):
        _override("study=quik")
    assert _override("study=standard") == "study=standard"
    (tmp_path / "conf" / "study").mkdir(parents=True)
    (tmp_path / "conf" / "study" / "mine.yaml").write_text("budget: 2\n")
    assert _override("study=mine") == "study=mine"
    result = _cli(tmp_path, "study=quik")
    assert result.returncode == 2 and result.stderr.startswith("optlab: error: study: unknown preset study=quik")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_hash_follows_the_spaces_optimizers_declare(monkeypatch):
    from optlab.optimizers.sgd import SGD

    before = Spec.from_config(TINY).study_id
    monkeypatch.setattr(SGD, "search_space", {"learning_rate": LogUniform(1e-2, 1.0)})
    after = Spec.from_config(TINY)
    assert after.protocol()["spaces"]["sgd"] == {"learning_rate": "log(0.01, 1)"}
    assert after.study_id != before  # another study: its runs are not mixed into the first's


def test_column_quantiles_are_numpys_nanquantile():
    from optlab.app.study.report import column_quantiles

    rng = np.random.default_rng(3)
    table = rng.standard_normal((7, 50))
    table[rng.random(table.shape) < 0.3] = np.nan
    table[:, 4] = np.nan  # a column with no value
    table[1:, 5] = np.nan  # one value
    for q in (0.0, 0.25, 0.5, 0.75, 1.0):
        with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
            expected = np.nanquantile(table, q, axis=0)
        np.testing.assert_allclose(column_quantiles(table, q), expected, rtol=1e-12, equal_nan=True)


class _StoreRefuses:  # the bulk writer, when the store refuses its transaction: nothing is written
    def write(self, experiment_id, children):
        raise ConnectionError("store busy")


def test_a_child_that_fails_to_write_is_retried_once_and_never_made_twice(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from optlab.app.study import tracking
    from optlab.app.study.tracking import STUDY_TAG, TRIAL_TAG, StudyLog

    monkeypatch.setattr(tracking, "bulk_writer", lambda client: _StoreRefuses())  # each child then through the client
    spec = Spec.from_config({**TINY, "optimizers": ["sgd"], "problems": ["beale"], "budget": 2, "final_seeds": 2})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = StudyLog({"uri": uri, "experiment": "studies", "enabled": True}, spec, "python -m optlab.study")
    log.open()
    client = log.tracker.client
    real_log_batch, calls = client.log_batch, []

    always = f"sgd defaults on beale seed={spec.final_seed_list()[1]}"  # this child's writes always fail
    once = f"sgd defaults on beale seed={spec.final_seed_list()[0]}"  # this one's first write fails

    def flaky(run_id, **kwargs):  # after the child was created: a retry must not create it again
        name = client.get_run(run_id).info.run_name
        calls.append(name)
        if name == always or (name == once and calls.count(once) == 1):
            raise ConnectionError("store busy")
        return real_log_batch(run_id, **kwargs)

    client.log_batch = flaky
    Study(spec, Store(tmp_path / spec.study_id), log=log, say=lambda line: None).run()
    log.close("FINISHED")
    children = MlflowClient(uri).search_runs(
        [log.tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{log.run_id}'", max_results=100
    )
    keys = [c.data.tags[TRIAL_TAG] for c in children]
    # 2 tuning trials + 2 final + 2 defaults children; the one that always fails stays unwritten (reported)
    assert calls.count(once) == 2 and calls.count(always) == 2  # retried once, at the end
    assert log.unwritten == 1 and log.written == 5 and "store busy" in log.error
    assert len(keys) == 6 == len(set(keys))  # created once each, even the retried and the failed one
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert len(finished) == 5 and all(c.data.tags[STUDY_TAG] == spec.study_id for c in finished)
    assert all(c.data.metrics for c in finished)  # the retried child has its metrics


def test_a_child_written_on_the_second_try_leaves_nothing_to_report(tmp_path, monkeypatch):
    from optlab.app.study import tracking
    from optlab.app.study.tracking import StudyLog

    monkeypatch.setattr(tracking, "bulk_writer", lambda client: _StoreRefuses())
    spec = Spec.from_config({**TINY, "optimizers": ["sgd"], "problems": ["beale"], "budget": 2, "final_seeds": 2})
    log = StudyLog({"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "s", "enabled": True}, spec, "study")
    log.open()
    client, failures = log.tracker.client, []
    real_log_batch = client.log_batch

    def once(run_id, **kwargs):  # the first child's first write fails, as a store busy for a moment
        if not failures:
            failures.append(run_id)
            raise ConnectionError("store busy")
        return real_log_batch(run_id, **kwargs)

    client.log_batch = once
    Study(spec, Store(tmp_path / spec.study_id), log=log, say=lambda line: None).run()
    log.close("FINISHED")
    assert failures and log.written == log.queued == 6 and log.unwritten == 0
    assert log.error is None  # before: "ConnectionError: store busy" was printed as a warning, with every child written


def test_children_the_store_holds_up_past_the_wait_are_counted_as_not_written(tmp_path):
    import threading

    from optlab.app.study.tracking import StudyLog

    spec = Spec.from_config({**TINY, "optimizers": ["sgd"], "problems": ["beale"], "budget": 2, "final_seeds": 2})
    log = StudyLog({"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "s", "enabled": True}, spec, "study")
    held = threading.Event()

    class Locked:  # a store locked by another program for longer than the study waits
        def write(self, experiment_id, children):
            held.wait(30)
            raise ConnectionError("database is locked")

    from optlab.app.study import tracking

    real = tracking.bulk_writer
    tracking.bulk_writer = lambda client: Locked()
    try:
        log.open()
        Study(spec, Store(tmp_path / spec.study_id), log=log, say=lambda line: None).run()
        log.close("FINISHED", timeout=0.5)
    finally:
        tracking.bulk_writer = real
        held.set()
    assert log.queued == 6 and log.unwritten == 6 - log.written and log.unwritten > 0
    assert "did not take them within 0.5 s" in log.error  # before: no count, "(0 child runs written)"
    log._thread.join(30)  # (the writer goes on once the store answers)


def test_opening_a_study_log_checks_the_store_under_its_lock(tmp_path, monkeypatch):
    # two studies started at once in a folder without mlflow.db: both created the store, and one
    # failed with "attempt to write a readonly database" (a traceback)
    import fcntl
    import os

    from optlab.app import store
    from optlab.app.study.tracking import StudyLog

    real, held = store.check_store, []

    def check(uri, *args, **kwargs):
        descriptor = os.open(tmp_path, os.O_RDONLY)
        try:  # someone holds the folder's lock iff it cannot be taken now
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append(False)
        except BlockingIOError:
            held.append(True)
        finally:
            os.close(descriptor)
        return real(uri, *args, **kwargs)

    monkeypatch.setattr(store, "check_store", check)
    spec = Spec.from_config({**TINY, "optimizers": ["sgd"], "problems": ["beale"], "budget": 2})
    log = StudyLog({"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "s", "enabled": True}, spec, "study")
    log.open()
    log.close("FINISHED")
    assert held and all(held), held


def test_the_watcher_hands_the_log_each_trial_once_its_runs_are_stored(tmp_path):
    from optlab.app.study.runner import Watcher

    spec = Spec.from_config({**TINY, "optimizers": ["sgd"], "problems": ["beale"], "budget": 2})  # 2 settings x 2 seeds
    runs, store = spec.tuning_runs(), Store(tmp_path)
    added = []

    class Log:
        def add(self, records, phase):
            added.append((phase, sorted(r["key"] for r in records)))

    watcher = Watcher(store, runs, "tuning", Log(), {})
    (first, second), (third, fourth) = runs[:2], runs[2:]  # a setting's two seeds, then the other's
    store.runs.mkdir(parents=True)
    watcher.poll()
    store.put({**first, "final": 1.0})
    store.put({**third, "final": 2.0})
    watcher.poll()
    assert added == []  # no setting has all its seeds yet
    store.put({**second, "final": 3.0})
    (store.runs / f"{fourth['key']}.json").write_text('{"key": ')  # being written: not a record yet
    watcher.poll()
    assert added == [("tuning", sorted([first["key"], second["key"]]))]
    store.put({**fourth, "final": 4.0})
    watcher.poll()
    watcher.poll()  # nothing twice
    assert added[1:] == [("tuning", sorted([third["key"], fourth["key"]]))]


def test_a_repeated_study_completes_a_child_an_earlier_attempt_left_unfinished(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from optlab.app.study import tracking as study_log
    from optlab.app.study.tracking import TRIAL_TAG, StudyLog

    monkeypatch.setattr(study_log, "bulk_writer", lambda client: None)  # the first attempt writes through the client

    spec = Spec.from_config({**TINY, "optimizers": ["sgd"], "problems": ["beale"], "budget": 2, "final_seeds": 2})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = {"uri": uri, "experiment": "studies", "enabled": True}
    store = Store(tmp_path / spec.study_id)
    broken = f"sgd defaults on beale seed={spec.final_seed_list()[0]}"

    first = StudyLog(tracking, spec, "python -m optlab.study")
    first.open()
    client = first.tracker.client
    real_log_batch = client.log_batch

    def failing(run_id, **kwargs):  # this child is created, then its metrics never arrive
        if client.get_run(run_id).info.run_name == broken:
            raise ConnectionError("store gone")
        return real_log_batch(run_id, **kwargs)

    client.log_batch = failing
    Study(spec, store, log=first, say=lambda line: None).run()
    first.close("KILLED")
    assert first.unwritten == 1

    def children():
        found = MlflowClient(uri).search_runs(
            [first.tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{first.run_id}'", max_results=100
        )
        return {c.info.run_name: c for c in found}

    left = children()[broken]
    assert left.info.status == "RUNNING" and not left.data.metrics

    monkeypatch.undo()  # the repeated study writes in bulk; the child it completes, through the client
    again = StudyLog(tracking, spec, "python -m optlab.study")  # the command repeated: every run is in the store
    again.open()
    Study(spec, store, log=again, say=lambda line: None).run()
    again.close("FINISHED")
    assert again.run_id == first.run_id and again.written == 1 and again.unwritten == 0
    after = children()
    assert len(after) == 6 and len({c.data.tags[TRIAL_TAG] for c in after.values()}) == 6  # none made twice
    completed = after[broken]
    assert completed.info.run_id == left.info.run_id and completed.info.status == "FINISHED"
    assert completed.data.metrics and completed.data.params["seed"] == str(spec.final_seed_list()[0])


def _rows(db, table: str, runs: dict) -> list:
    """``table``'s rows of ``runs`` (run id -> name), with the run named instead of its id and no times."""
    import sqlite3

    with sqlite3.connect(db) as connection:
        connection.row_factory = sqlite3.Row
        found = [dict(row) for row in connection.execute(f"select * from {table}")]
    out = []
    for row in found:
        if row["run_uuid"] in runs:
            name = runs[row.pop("run_uuid")]
            row = {k: v for k, v in row.items() if k not in ("start_time", "end_time", "timestamp")}
            if "artifact_uri" in row:
                row["artifact_uri"] = row["artifact_uri"].replace(next(r for r in runs if runs[r] == name), "<id>")
            out.append(sorted({**row, "run": name}.items()))
    return sorted(out, key=repr)


def test_children_written_in_bulk_are_the_rows_mlflows_client_writes(tmp_path):
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from optlab.app.study.bulk import Child, bulk_writer

    db = tmp_path / "mlflow.db"
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.create_experiment("studies")
    inf = float("inf")
    metrics = [("loss", 4.0, 0), ("loss", 2.0, 1), ("loss", 2.0, 1), ("loss", 3.0, 1), ("loss", 1.0, 3)]
    metrics += [("loss", 0.5, 2), ("score", float("nan"), 0), ("score", float("nan"), 0), ("up", inf, 0)]
    metrics += [("down", -inf, 5), ("down", 7.0, 5), ("best/loss", 1e308, 0)]
    children = [
        Child("adam lr=0.01 on beale seed=3", {"optlab.arm": "final", "optlab.note": "é ≤ ∞"}, {"lr": "0.01"}, metrics),
        Child("sgd defaults on beale (tuning)", {"optlab.arm": "tuning"}, {}, [("score", 0.25, 0)]),
    ]
    names = {}
    for child in children:  # the reference: MLflow's own three calls per run
        run_id = client.create_run(experiment, tags=child.tags, run_name="client " + child.name).info.run_id
        child.tags["mlflow.runName"] = "client " + child.name
        now = 1_700_000_000_000
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, s) for k, v, s in child.metrics],
            params=[Param(k, v) for k, v in child.params.items()],
        )
        client.set_terminated(run_id, "FINISHED")
        names[run_id] = child.name
        del child.tags["mlflow.runName"]
    writer = bulk_writer(client)
    assert writer is not None
    bulk = writer.write(experiment, children)
    bulk_names = dict(zip(bulk, (c.name for c in children)))
    for table in ("runs", "tags", "params", "metrics", "latest_metrics"):
        expected = [
            [(k, v.replace("client ", "") if isinstance(v, str) else v) for k, v in row]
            for row in _rows(db, table, names)
        ]
        assert _rows(db, table, bulk_names) == sorted(expected, key=repr), table
    for run_id in bulk:  # and MLflow reads them back as its own
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.info.lifecycle_stage == "active"
    assert client.get_run(bulk[0]).data.metrics["loss"] == 1.0  # the point of the largest step
    found = client.search_runs([experiment], "tags.`optlab.arm` = 'tuning'")
    assert sorted(r.info.run_name for r in found) == ["client " + children[1].name, children[1].name]


def test_a_bulk_write_the_store_refuses_midway_leaves_nothing(tmp_path):
    import sqlite3

    from mlflow import MlflowClient

    from optlab.app.study.bulk import Child, bulk_writer

    db = tmp_path / "mlflow.db"
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.create_experiment("studies")
    with sqlite3.connect(db) as connection:  # the fault: the last of the five inserts fails
        connection.execute(
            "create trigger refuse before insert on latest_metrics begin select raise(abort, 'disk full'); end"
        )
    children = [Child(f"run {i}", {"optlab.arm": "final"}, {"seed": str(i)}, [("loss", 1.0, 0)]) for i in range(3)]
    writer = bulk_writer(client)
    with pytest.raises(Exception, match="disk full"):
        writer.write(experiment, children)
    with sqlite3.connect(db) as connection:
        for table in ("runs", "tags", "params", "metrics", "latest_metrics"):
            assert connection.execute(f"select count(*) from {table}").fetchone() == (0,), table
        connection.execute("drop trigger refuse")
    assert len(writer.write(experiment, children)) == 3
    assert len(client.search_runs([experiment])) == 3


SIGNAL_DURING = """
import os, signal, sys
import optlab.app.store as store
target, signame = sys.argv[1], sys.argv[2]
original = getattr(store, target)
def stopped(*args, **kwargs):
    if signame == "RAISE":  # a KeyboardInterrupt without a message (as a library may raise it)
        raise KeyboardInterrupt()
    os.kill(os.getpid(), getattr(signal, signame))  # the signal lands inside, as a user's would
    return original(*args, **kwargs)
setattr(store, target, stopped)
from optlab.study import main
sys.argv = ["python -m optlab.study", *sys.argv[3:]]
main()
"""


@pytest.mark.parametrize(("signame", "code"), [("SIGINT", 130), ("SIGTERM", 143), ("RAISE", 130)])
def test_a_signal_while_a_study_creates_its_store_is_one_line_and_leaves_no_half_store(tmp_path, signame, code):
    """Ctrl-C there was a 75-155-line traceback; SIGTERM a silent death that left
    .mlflow.db.creating-* files behind (found by a fault-injection probe)."""
    args = ["optimizers=[sgd]", "problems=[beale]", "budget=1", "seeds=1", "final_seeds=2"]
    from cli_helpers import script

    done = script(tmp_path, SIGNAL_DURING, "create_sqlite_store", signame, *args)
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("optlab: study stopped, ") and "before any of its runs: no MLflow run was recorded" in last
    assert "stopped ()" not in last  # (a KeyboardInterrupt without a message gave an empty reason)
    assert sorted(p.name for p in tmp_path.iterdir() if "mlflow.db" in p.name) == []  # no store, no half of one


STOPPED_WHILE_A_JOB_IS_COMPOSED = """
import os, signal, sys
from hydra._internal.config_loader_impl import ConfigLoaderImpl
armed = []
load = ConfigLoaderImpl.load_sweep_config
def loading(self, *args, **kwargs):
    if not armed:  # the first job's config, read by the basic launcher: SIGTERM lands inside, as in Hydra's
        armed.append("stopped")  # config reader, whose `finally: f.close()` then raises over it (f unbound)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(100_000))
        finally:
            raise UnboundLocalError("cannot access local variable 'f' where it is not associated with a value")
    return load(self, *args, **kwargs)
ConfigLoaderImpl.load_sweep_config = loading
from optlab.study import main
sys.argv = ["python -m optlab.study", *sys.argv[1:]]
main()
"""


def test_a_signal_while_a_job_is_composed_stops_the_study_as_any_signal_does(tmp_path):
    """SIGTERM inside Hydra's config reader ended the study with exit status 1 and a traceback: the
    reader's cleanup raised UnboundLocalError over the signal's exception (a flaky CI run, 1 in ~4)."""
    from cli_helpers import script

    args = ["optimizers=[sgd]", "problems=[beale]", "budget=1", "seeds=1", "final_seeds=2", "tracking=none"]
    done = script(tmp_path, STOPPED_WHILE_A_JOB_IS_COMPOSED, *args)
    assert done.returncode == 143, done.stderr
    assert "Traceback" not in done.stderr
    assert "optlab: study stopped, terminated (SIGTERM): the runs that finished are kept in " in done.stderr


STOPPED_DURING_ITS_RUNS = """
import os, signal, sys
import optlab.app.study.trial as trial
original = trial.run_one
def run_one(run):
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as the first run starts
    return original(run)
trial.run_one = run_one
from optlab.study import main
sys.argv = ["python -m optlab.study", *sys.argv[1:]]
main()
"""


def test_a_study_stopped_during_its_runs_says_its_parent_run_is_marked_killed(tmp_path):
    """It said 'study stopped (interrupted (Ctrl-C))' and not that the parent run was marked KILLED,
    which it was (a newcomer's trial)."""
    from cli_helpers import runs, script

    args = ["optimizers=[sgd]", "problems=[beale]", "budget=1", "seeds=1", "final_seeds=2"]
    done = script(tmp_path, STOPPED_DURING_ITS_RUNS, *args)
    assert done.returncode == 130, done.stderr
    _, parents = runs(tmp_path, parents=True)
    (parent,) = [r for r in parents if r.data.tags.get("optlab.kind") == "study"]
    assert parent.info.status == "KILLED"
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("optlab: study stopped, interrupted (Ctrl-C): the runs that finished are kept in ")
    assert last.endswith(
        f"; its MLflow parent run {parent.info.run_id} is marked KILLED; repeat the command to run the rest"
    )


STOPPED_AS_MLFLOW_IS_WRITTEN = """
import os, signal, sys
from optlab.app.study.tracking import StudyLog
original = StudyLog.close
def close(self, status, *args, **kwargs):
    if status == "FINISHED":  # the study is done, its report written: a Ctrl-C now
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(100_000))  # the handler runs here
    return original(self, status, *args, **kwargs)
StudyLog.close = close
from optlab.study import main
sys.argv = ["python -m optlab.study", *sys.argv[1:]]
main()
"""


def test_a_study_stopped_while_its_finished_runs_are_written_to_mlflow_says_so_and_a_repeat_completes_it(tmp_path):
    """A Ctrl-C there ended the process by the signal with no line (found by a fault-injection probe,
    3 of 3); through the entry it would have said 'outside a run: nothing was being recorded'."""
    from cli_helpers import runs, script

    args = ["optimizers=[sgd]", "problems=[beale]", "budget=1", "seeds=1", "final_seeds=2"]
    done = script(tmp_path, STOPPED_AS_MLFLOW_IS_WRITTEN, *args)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("optlab: study ") and ", its report is in " in last
    assert "stopped, interrupted (Ctrl-C), while its runs were written to MLflow: the parent run " in last
    assert last.endswith("is marked KILLED; repeat the command to write the rest (no run is run again)")
    assert len(list((tmp_path / ".optlab" / "studies").glob("*/report/report.md"))) == 1  # written before the stop
    _, parents = runs(tmp_path, parents=True)
    assert [r.info.status for r in parents if r.data.tags.get("optlab.kind") == "study"] == ["KILLED"]
    again = _cli(tmp_path, *args)  # the repeat writes what is missing and ends the same parent FINISHED
    assert again.returncode == 0, again.stderr
    assert "0 runs, " in again.stdout
    _, found = runs(tmp_path, parents=True)
    parent = [r for r in found if r.data.tags.get("optlab.kind") == "study"]
    assert [r.info.status for r in parent] == ["FINISHED"]
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert children and all(r.info.status == "FINISHED" for r in children)


def test_a_study_whose_every_tuned_setting_diverges_still_gets_its_report(tmp_path):
    """SGD's one setting (learning rate 0.1) diverges on Beale: every tuning value is NaN, and the
    report's sensitivity plot failed with matplotlib's 'Data cannot be log-scaled' (a traceback at
    the end of the study, no report)."""
    study, _ = _study(tmp_path, optimizers=["sgd"], problems=["beale"], budget=1, seeds=1, final_seeds=2)
    results = study.run()
    assert results["chosen"]["beale|sgd"]["all_failed"]
    folder = write_report(study.spec, results, tmp_path / "report", finals=study.finals)
    names = {"report.md", "curves.png", "ecdf.png", "profile.png", "sensitivity.png", "tunability.png"}
    assert names <= {p.name for p in Path(folder).iterdir()}
    assert all((Path(folder) / n).read_bytes()[:4] == b"\x89PNG" for n in names - {"report.md"})


def test_optimizers_whose_final_means_are_equal_are_marked_tied(tmp_path):
    """Two optimizers with the same final mean (both at 0 on a problem they solve) were reported as a
    leader and a loser, with the leader only the first in `optimizers`."""
    from optlab.app.study import reduce as reducing

    study, _ = _study(tmp_path, optimizers=["sgd", "adam"], problems=["beale"], budget=1, seeds=1, final_seeds=2)
    results = study.run()
    spec = study.spec
    assert not any(t["tied"] for t in results["tests"]) and "tied" not in markdown(spec, results, "cmd")
    tuning = study.execute(spec.tuning_runs(), "tuning")  # (stored: read back, not run again)
    chosen = reducing.choose(spec, reducing.tuning_table(spec, tuning))
    own = {"key", "optimizer", "hparams", "problem", "arm", "seed"}
    adam = {r["seed"]: r for r in study.finals if (r["optimizer"], r["arm"]) == ("adam", "final")}
    finals = [
        {**r, **{k: v for k, v in adam[r["seed"]].items() if k not in own}}
        if (r["optimizer"], r["arm"]) == ("sgd", "final")
        else r
        for r in study.finals
    ]  # sgd's final seeds ended exactly where adam's did
    tied = reducing.reduce(spec, tuning, finals, chosen)
    (test,) = tied["tests"]
    assert math.isfinite(tied["summaries"]["beale|adam|final"]["stats"]["mean"])
    assert test["tied"] and test["leader"] == "sgd" and test["other"] == "adam"  # (the first listed leads)
    text = markdown(spec, {**results, **tied}, "cmd")
    assert "| sgd |" in text and "leader (tied)" in text and "| tied, " in text
