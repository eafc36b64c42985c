"""The tutorial's example, and docs/tutorial.md run as written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from doc_blocks import run_blocks

import optlab

DOCS = Path(__file__).parent.parent / "docs"

# The seven rows printed by the original tutorial (Keras optimizer tutorial, gradient descent by hand).
TUTORIAL_ROWS = """\
1.2 1.4
0.98 1.22
0.924 1.16
0.914 1.1348
0.9166 1.1202
0.9222 1.1091
0.9284 1.0997
"""

X = np.array([0.0, 1.0, 2.0])
Y = np.array([1.0, 2.0, 3.0])


def gradients(a, b):
    residual = a * X + b - Y
    return [np.sum(X * residual), np.sum(residual)]


def run(opt):
    a, b = np.array(2.0), np.array(2.0)
    rows = []
    while (a - 1) > 0.1 or (b - 1) > 0.1:
        opt.apply_gradients(zip(gradients(a, b), [a, b]))
        rows.append(f"{round(float(a), 4)} {round(float(b), 4)}\n")
    return "".join(rows), opt.iterations


def test_sgd_by_config_prints_the_tutorials_seven_rows():
    rows, steps = run(optlab.optimizers.get({"name": "sgd", "learning_rate": 0.1}))
    assert rows == TUTORIAL_ROWS
    assert steps == 7


def test_sgd_object_prints_the_same_rows():
    rows, _ = run(optlab.optimizers.SGD(learning_rate=0.1))
    assert rows == TUTORIAL_ROWS


def test_tutorial_document_runs_and_prints_what_it_shows():
    checked = 0
    for index, _source, printed, expected in run_blocks(DOCS / "tutorial.md"):
        if expected is not None:
            assert printed == expected, f"docs/tutorial.md block {index} printed:\n{printed}\nexpected:\n{expected}"
            checked += 1
    assert checked >= 6
    # the by-hand loop and the optlab loop both show the tutorial's rows
    text = (DOCS / "tutorial.md").read_text()
    assert text.count(TUTORIAL_ROWS) == 2
