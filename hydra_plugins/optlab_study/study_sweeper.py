"""Hydra's side of ``python -m optlab.study``: a sweeper that runs a study through the chosen launcher.

Kept to the interface Hydra needs (it imports every module here at start-up); the study itself
is :mod:`optlab.app.study.sweeper`.
"""

from __future__ import annotations

from hydra.plugins.sweeper import Sweeper


class StudySweeper(Sweeper):
    """Plans a study's runs and launches them as jobs with the configured launcher (basic, joblib, submitit)."""

    def __init__(self) -> None:
        self.config = None
        self.launcher = None
        self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments):
        from optlab.app.study.sweeper import sweep

        return sweep(self, list(arguments))
