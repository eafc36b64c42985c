"""The figures logged with each run (optlab.app.plots): what each panel shows."""

from __future__ import annotations

import numpy as np

from optlab.app import plots

LOSSES = {"train/loss_step": [(1, 2.0), (2, 1.0), (3, 0.5), (4, 0.25)], "train/loss": [(2, 1.5), (4, 0.375)]}


def test_a_constant_learning_rate_is_said_in_the_title_not_drawn():
    fig = plots.curves_figure({**LOSSES, "train/learning_rate": [(0, 0.001), (4, 0.001)]}, "adam seed_linear")
    (ax,) = fig.axes
    assert ax.get_title() == "learning rate 0.001 (constant)"
    assert (ax.get_ylabel(), ax.get_xlabel(), ax.get_yscale()) == ("loss", "step", "log")
    assert [line.get_label() for line in ax.get_lines()] == ["train/loss_step (each step)", "train/loss (epoch mean)"]
    assert fig.get_suptitle() == "adam seed_linear"


def test_a_changing_learning_rate_gets_its_own_panel_held_between_its_points():
    fig = plots.curves_figure({**LOSSES, "train/learning_rate": [(0, 0.1), (2, 0.01)]}, "sgd")
    ax_loss, ax_lr = fig.axes
    assert ax_loss.get_title() == "" and ax_lr.get_ylabel() == "learning rate" and ax_lr.get_xlabel() == "step"
    (line,) = ax_lr.get_lines()
    assert line.get_drawstyle() == "steps-post"
    np.testing.assert_array_equal(line.get_xdata(), [0, 2, 4])  # held to the last step of any series
    np.testing.assert_array_equal(line.get_ydata(), [0.1, 0.01, 0.01])


def test_without_a_logged_learning_rate_only_the_loss_is_drawn():
    (ax,) = plots.curves_figure(LOSSES, "a rule without a rate").axes
    assert ax.get_title() == "" and ax.get_xlabel() == "step"


def test_draw_returns_pngs_of_the_figures_the_request_has():
    images = plots.draw({"title": "t", "series": LOSSES})
    assert list(images) == ["curves.png"] and images["curves.png"].startswith(b"\x89PNG\r\n\x1a\n")
    assert plots.draw({"title": "t", "series": {"train/loss_step": LOSSES["train/loss_step"]}}) == {}
