"""The benchmark's command line (its figures are for reading, not for asserting)."""

import itertools
import json

import numpy as np
import pytest

from optlab import bench


def test_bench_runs_and_writes_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "memory_bandwidth", lambda n=0, rounds=1: 10e9)
    monkeypatch.setattr(bench, "SPARSE_ROWS", 2_000)
    monkeypatch.setattr(bench, "SPARSE_TOUCHED", 10)
    cold = {"cold_small": 2.0, "warm_small": 0.5, "cold_large": 3.0, "warm_large": 0.5}
    monkeypatch.setattr(bench, "bench_cold", lambda name, cache: {"optimizer": name, **cold})  # (its own test)
    # the loop's rows in this process and short (each is a new process of 4 s otherwise)
    monkeypatch.setattr(bench, "_in_new_process", lambda code, args: bench.bench_loop("seed_linear", args[1], 20))
    out = tmp_path / "b.json"
    argv = ["--optimizers", "SGD,lamb", "--sizes", "1e3,2000", "--problems", "seed_linear", "--no-torch"]
    assert bench.main([*argv, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "500 arrays of 2000 elements" in printed
    data = json.loads(out.read_text())
    rows = {(r["optimizer"], r["n"]) for r in data["steps"]}
    assert rows == {("sgd", 1000), ("sgd", 2000), ("lamb", 1000), ("lamb", 2000)}
    sgd = next(r for r in data["steps"] if r["optimizer"] == "sgd")
    assert sgd["bytes"] == 12 * sgd["n"]  # p read + written, g read: 3 float32 arrays
    assert sgd["gbps"] == pytest.approx(sgd["bytes"] / sgd["seconds"] / 1e9)
    (sparse,) = data["sparse"]  # sgd alone of sgd, adagrad, adam was asked for
    assert sparse["optimizer"] == "sgd" and sparse["rows_alone"] and sparse["sparse"] > 0 and sparse["dense"] > 0
    assert "Sparse gradient: 10 of 2,000 rows" in printed
    (problem,) = data["problems"]  # one run at the budget: seed_linear's 100 full-batch steps
    assert problem["problem"] == "seed_linear" and problem["steps"] == 100 and problem["size_class"] == "tiny"
    assert problem["seconds"] > 0 and 0 < problem["gradient"] < problem["seconds"]
    assert [r["optimizer"] for r in data["cold"]] == ["sgd", "lamb"]
    assert "all of them: 10.0 s cold, 2.00 s warm (5x)" in printed
    assert [r["steps"] for r in data["loop"]] == [20, 20] and printed.count("trainer/bare") == 2
    assert all(r["bare"] > 0 and r["trainer"] > 0 for r in data["loop"])


def test_a_two_pass_optimizer_is_reported_against_its_floor_and_fresh_gradients_against_a_copy(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(bench, "memory_bandwidth", lambda n=0, rounds=1: 10e9)
    monkeypatch.setattr(bench, "read_bandwidth", lambda n=0, rounds=1: 4e9)
    out = tmp_path / "b.json"
    assert (
        bench.main(["--optimizers", "adafactor", "--sizes", "25600", "--only", "steps,fresh", "--json", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    (row,) = data["steps"]
    n, moved = 25600, row["bytes"]  # its statistics pass reads p and g (8 bytes a parameter) at 4 GB/s first
    floor = 8 * n / 4e9 + moved / 10e9
    assert row["ceiling"] == pytest.approx(moved / 10e9 / floor)
    assert row["of_floor"] == pytest.approx(floor / row["seconds"])
    assert f"two passes: ceiling {row['ceiling']:.2f} of bw" in printed
    assert data["read_bandwidth_gbps"] == pytest.approx(4.0)
    for fresh in data["fresh_grads"]:  # the copy alone is timed beside both paths
        assert fresh["copy"] > 0 and fresh["flat"] > 0 and fresh["fresh"] > 0
    assert "read in place; a gather would add np.concatenate alone" in printed


def test_the_read_only_pass_sums_the_squares_of_both_arrays():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((37, 256)).astype(np.float32)
    b = rng.standard_normal((37, 256)).astype(np.float32)
    out = np.empty(5, np.float32)
    bench._sum_squares(a, b, out)  # 5 blocks of rows
    bounds = [k * 37 // 5 for k in range(6)]
    expected = [
        np.sum(a[lo:hi].astype(np.float64) ** 2 + b[lo:hi].astype(np.float64) ** 2)
        for lo, hi in itertools.pairwise(bounds)
    ]
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_cold_start_compiles_into_an_empty_cache_then_loads_from_it(tmp_path):
    cache = tmp_path / "numba-cache"
    row = bench.bench_cold("sgd", str(cache))
    assert set(row) == {"optimizer", "cold_small", "warm_small", "cold_large", "warm_large"}
    assert all(row[k] > 0 for k in row if k != "optimizer")
    # the cold process compiled SGD's kernels into the folder given (serial and parallel variants)
    index = [p.name for p in cache.rglob("*.nbi")]
    assert any("sgd" in name and "serial" in name for name in index)
    assert any("sgd" in name and "parallel" in name for name in index)


def test_bench_rejects_unknown_optimizers_with_the_known_names(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--optimizers", "adamm"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Did you mean 'adam'" in err and "rmsprop" in err


def test_bench_rejects_bad_sizes(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--sizes", "lots"])
    assert "--sizes" in capsys.readouterr().err


def test_bench_rejects_unknown_problems(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--problems", "rosenbrok"])
    assert "unknown problem 'rosenbrok'" in capsys.readouterr().err


def test_json_output_replaces_a_file_whole_or_leaves_it_as_it_was(tmp_path, capsys, monkeypatch):
    """On a full disk --json left a user's file as 4 KB of half-written JSON (it was opened with
    "w" and written in place). The write fails here at its flush, as a full disk makes it fail."""
    import errno
    import os

    monkeypatch.setattr(bench, "memory_bandwidth", lambda n=0, rounds=1: 10e9)
    mine = tmp_path / "b.json"
    mine.write_text('{"mine": "important results"}\n')
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    argv = ["--optimizers", "sgd", "--sizes", "1000", "--only", "steps", "--json", str(mine)]
    assert bench.main(argv) == 1
    err = capsys.readouterr().err
    assert f"the figures were not written to {mine} (No space left on device)" in err
    assert mine.read_text() == '{"mine": "important results"}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]  # no temporary file left
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert bench.main(argv) == 0
    assert json.loads(mine.read_text())["steps"][0]["optimizer"] == "sgd"


def test_json_output_that_cannot_be_a_file_is_refused_before_measuring(tmp_path, capsys, monkeypatch):
    measured = []
    monkeypatch.setattr(bench, "memory_bandwidth", lambda n=0, rounds=1: measured.append(1) or 10e9)
    (tmp_path / "folder").mkdir()
    with pytest.raises(SystemExit) as stop:
        bench.main(["--sizes", "1000", "--only", "steps", "--json", str(tmp_path / "folder")])
    assert stop.value.code == 2 and "is a folder, not a file" in capsys.readouterr().err
    assert measured == []  # nothing was measured first
