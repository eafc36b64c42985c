"""The documentation: generated references up to date, examples that run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from doc_blocks import run_blocks

import optlab

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"


def _make_docs():
    spec = importlib.util.spec_from_file_location("make_docs", DOCS / "make_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("filename", ["optimizers.md", "schedules.md"])
def test_generated_reference_is_up_to_date(filename):
    expected = _make_docs().DOCUMENTS[filename]()
    assert (DOCS / filename).read_text() == expected, f"docs/{filename} is stale: run `python docs/make_docs.py`"


def test_optimizer_reference_covers_every_optimizer_argument_and_paper():
    text = (DOCS / "optimizers.md").read_text()
    for cls in optlab.optimizers.BUILTIN:
        section = text.split(f"## {cls.__name__}\n", 1)[1].split("\n## ", 1)[0]
        assert "Reference" in section, cls.__name__
        assert "$$" in section or "$" in section, cls.__name__
        for name in cls.hyperparameters():
            if name in section or name in text.split("## Options every optimizer takes", 1)[1]:
                continue
            pytest.fail(f"{cls.__name__}.{name} is not documented")


@pytest.mark.parametrize("document", ["README.md", "docs/tutorial.md"])
def test_examples_run(document):
    ran = 0
    for index, _source, printed, expected in run_blocks(ROOT / document):
        ran += 1
        if expected is not None:
            assert printed == expected, f"{document} block {index}"
    assert ran >= 1
