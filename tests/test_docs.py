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


@pytest.mark.parametrize("filename", ["optimizers.md", "schedules.md", "problems.md", "callbacks.md"])
def test_generated_reference_is_up_to_date(filename):
    expected = _make_docs().DOCUMENTS[filename]()
    assert (DOCS / filename).read_text() == expected, f"docs/{filename} is stale: run `python docs/make_docs.py`"


def test_optimizer_reference_covers_every_optimizer_argument_and_paper():
    text = (DOCS / "optimizers.md").read_text()
    for cls in optlab.optimizers.BUILTIN:
        section = text.split(f"## {cls.__name__}\n", 1)[1].split("\n## ", 1)[0]
        assert "Reference" in section, cls.__name__
        assert "$$" in section or "$" in section, cls.__name__
        # a display's formula inside it (an indentation slip left every block empty, its formula as text)
        for block in section.split("$$")[1::2]:
            assert block.strip(), f"{cls.__name__}: an empty $$ block"
        for name in cls.hyperparameters():
            if name in section or name in text.split("## Options every optimizer takes", 1)[1]:
                continue
            pytest.fail(f"{cls.__name__}.{name} is not documented")


@pytest.mark.parametrize("document", ["README.md", "docs/tutorial.md", "docs/training.md"])
def test_examples_run(document):
    ran = 0
    for index, _source, printed, expected in run_blocks(ROOT / document):
        ran += 1
        if expected is not None:
            assert printed == expected, f"{document} block {index}"
    assert ran >= 1


def _file_blocks(text: str) -> dict[str, str]:
    from doc_blocks import FENCE

    files = {}
    for match in FENCE.finditer(text):
        body = match.group(2)
        first, _, rest = body.partition("\n")
        if first.startswith("# file: "):
            files[first[len("# file: ") :].strip()] = rest
    return files


@pytest.mark.slow
def test_plugin_guide_builds_a_working_plugin(tmp_path):
    """Write the guide's files to disk, pip-install them, and run the guide's tests and commands."""
    import os
    import subprocess
    import sys

    text = (DOCS / "plugins.md").read_text()
    files = _file_blocks(text)
    assert set(files) == {
        "optlab-signum/pyproject.toml",
        "optlab-signum/optlab_signum/__init__.py",
        "optlab-signum/tests/test_signum.py",
    }
    for relative, body in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--target", str(target), str(tmp_path / "optlab-signum")], check=True, timeout=300)
    env = dict(os.environ, PYTHONPATH=str(target))
    listed = subprocess.run(
        [sys.executable, "-m", "optlab.plugins"], env=env, capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert any(line.split()[:2] == ["optlab-signum", "0.1.0"] for line in listed.splitlines() if line.strip())
    assert any(line.split() == ["signum", "optlab-signum"] for line in listed.splitlines())
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "optlab-signum" / "tests")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert " passed" in tests.stdout


def test_plugin_guide_snippets_run():
    # the schedule plugin and the notebook registration, run as written
    ran = 0
    for index, source, printed, expected in run_blocks(DOCS / "plugins.md"):
        if source.startswith("# file: "):
            continue
        ran += 1
        if expected is not None:
            assert printed == expected, f"docs/plugins.md block {index}"
    assert ran == 4
