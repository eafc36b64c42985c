"""Plugin discovery through entry points: built-ins go the same way, broken plugins are isolated.

Fake distributions are written as ``*.dist-info`` folders on a temporary ``sys.path`` entry
(what ``pip install`` leaves behind), and each scenario runs in a fresh interpreter so that
discovery happens from scratch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import optlab
from optlab import plugins

GOOD = '''
import numpy as np
import optlab
from optlab.hparams import Hyper
from optlab.kernels import kernel, prange
from optlab.optimizers import Optimizer


@kernel
def _signsgd(p, g, lr):
    for i in prange(p.shape[0]):
        if g[i] > 0:
            p[i] -= lr
        elif g[i] < 0:
            p[i] += lr


class SignSGD(Optimizer):
    """p <- p - lr * sign(g)."""

    registry_name = "signsgd"
    learning_rate = optlab.optimizers.LearningRate(0.01)

    def slots(self):
        return {}

    def update(self, param, grad, state, lr, step, seg):
        _signsgd(param, grad, lr)


@optlab.hookimpl
def register_optimizers(register):
    register(SignSGD)
'''

BROKEN_IMPORT = "raise RuntimeError('this plugin is broken at import')\n"

BROKEN_HOOK = """
import optlab

@optlab.hookimpl
def register_schedules(register):
    raise KeyError("the hook itself fails")
"""

DUPLICATE = """
import optlab
from optlab.optimizers import SGD


class NotAdam(SGD):
    registry_name = "adam"


class DupeSGD(SGD):
    registry_name = "dupe_sgd"


@optlab.hookimpl
def register_optimizers(register):
    register(NotAdam)
    register(DupeSGD)  # registered: only the clashing name is skipped
"""


def fake_distribution(root: Path, dist: str, module: str, source: str, version: str = "1.2.3") -> None:
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[optlab]\n{module} = {module}\n")


def run_python(root: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, *args] if not code else [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def site(tmp_path):
    fake_distribution(tmp_path, "optlab-signsgd", "optlab_signsgd", GOOD)
    fake_distribution(tmp_path, "optlab-broken", "optlab_broken", BROKEN_IMPORT, version="0.0.1")
    fake_distribution(tmp_path, "optlab-badhook", "optlab_badhook", BROKEN_HOOK)
    fake_distribution(tmp_path, "optlab-dupe", "optlab_dupe", DUPLICATE)
    return tmp_path


def test_builtins_are_registered_through_optlabs_own_entry_points():
    from importlib import metadata

    eps = {ep.name: ep.value for ep in metadata.entry_points(group="optlab") if ep.dist.name == "optlab"}
    assert eps == {"optlab": "optlab.default_plugins"}
    report = plugins.report()
    sources = {row["name"]: row["distribution"] for row in report["components"]["optimizers"]}
    assert {cls.registry_name for cls in optlab.optimizers.BUILTIN} <= set(sources)
    assert all(sources[cls.registry_name] == "optlab" for cls in optlab.optimizers.BUILTIN)
    assert optlab.optimizers.registry.source("Adam") == "optlab"


def test_installed_plugin_is_usable_by_name_and_broken_ones_are_isolated(site):
    result = run_python(
        site,
        """
        import warnings, json
        import numpy as np
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import optlab
            opt = optlab.optimizers.get("SignSGD", learning_rate=0.5)
            p = np.zeros(3)
            opt.apply([np.array([2.0, -1.0, 0.0])], [p])
            adam = optlab.optimizers.get("adam")
            cosine = optlab.schedules.get({"name": "cosine_decay", "initial_learning_rate": 1.0, "decay_steps": 4})
        print(json.dumps({
            "p": p.tolist(),
            "adam": type(adam).__module__,
            "cosine": cosine(2),
            "warnings": [str(w.message) for w in caught if w.category.__name__ == "PluginWarning"],
            "source": optlab.optimizers.registry.source("signsgd"),
            "dupe_sgd": optlab.optimizers.registry.source("dupe_sgd"),
        }))
        """,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["p"] == [-0.5, 0.5, 0.0]
    assert out["source"] == "optlab-signsgd"
    assert out["adam"] == "optlab.optimizers.adam"  # the duplicate did not take the built-in's name
    assert out["dupe_sgd"] == "optlab-dupe"  # but its other optimizer is registered
    assert out["cosine"] == pytest.approx(0.5)
    messages = "\n".join(out["warnings"])
    assert "'optlab-broken'" in messages and "this plugin is broken at import" in messages
    assert "'optlab-badhook'" in messages and "the hook itself fails" in messages
    assert "'optlab-dupe'" in messages and "by optlab" in messages and "by optlab-dupe" in messages
    clash = next(m for m in out["warnings"] if "'optlab-dupe'" in m)
    assert "optimizer 'adam'" in clash and "is skipped, the plugin's other names are registered" in clash
    assert "failed" not in clash  # issue 9: only the clashing name is skipped, not the plugin


def test_plugins_command_lists_distributions_names_and_failures(site):
    result = run_python(site, "", "-m", "optlab.plugins")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    lines = out.splitlines()
    assert any(line.split()[:2] == ["optlab-signsgd", "1.2.3"] for line in lines if line.strip())
    assert any(line.split() == ["signsgd", "optlab-signsgd"] for line in lines)
    assert "Failed:" in out and "optlab-broken" in out and "broken at import" in out
    assert "Traceback" not in result.stderr
    as_json = json.loads(run_python(site, "", "-m", "optlab.plugins", "--json").stdout)
    assert as_json["distributions"]["optlab-signsgd"]["version"] == "1.2.3"
    assert as_json["distributions"]["optlab-broken"]["version"] == "0.0.1"
    names = {row["name"]: row["distribution"] for row in as_json["components"]["optimizers"]}
    assert names["signsgd"] == "optlab-signsgd" and names["adam"] == "optlab"
    assert {f["distribution"] for f in as_json["failures"]} == {"optlab-broken", "optlab-badhook", "optlab-dupe"}


def test_hooks_are_called_through_the_plugin_manager(site):
    # pluggy's call monitoring sees every hook call: the loader goes through the manager's hook callers
    result = run_python(
        site,
        """
        import json, warnings
        warnings.simplefilter("ignore")
        from optlab import plugins
        calls = []
        plugins.manager().add_hookcall_monitoring(
            lambda hook, impls, kwargs: calls.append([hook, sorted(i.plugin_name for i in impls)]),
            lambda outcome, hook, impls, kwargs: None,
        )
        plugins.load()
        print(json.dumps(calls))
        """,
    )
    assert result.returncode == 0, result.stderr
    calls = json.loads(result.stdout)
    assert ["register_optimizers", ["optlab:optlab"]] in calls
    assert ["register_optimizers", ["optlab-signsgd:optlab_signsgd"]] in calls
    assert ["register_schedules", ["optlab-badhook:optlab_badhook"]] in calls
    # one plugin per call, so that a failing hook is attributed to its own distribution
    assert all(len(plugin_names) <= 1 for _, plugin_names in calls)


def test_unknown_name_lists_plugin_names_too(site):
    result = run_python(
        site,
        """
        import warnings
        warnings.simplefilter("ignore")
        import optlab
        try:
            optlab.optimizers.get("signsdg")
        except ValueError as error:
            print(error)
        """,
    )
    assert "Did you mean 'signsgd'" in result.stdout and "adam" in result.stdout


def test_runtime_registration_without_packaging():
    import types

    from optlab.optimizers import SGD

    class Slow(SGD):
        registry_name = "test_runtime_slow_sgd"

    module = types.ModuleType("runtime_plugin")

    @optlab.hookimpl
    def register_optimizers(register):
        register(Slow)

    module.register_optimizers = register_optimizers
    plugins.register(module, name="test-runtime-plugin")
    assert type(optlab.optimizers.get("test_runtime_slow_sgd")) is Slow
    assert optlab.optimizers.registry.source("test_runtime_slow_sgd") == "<runtime>"


def test_a_hook_optlab_would_never_call_is_said(tmp_path):
    # a newcomer's plugin: `def register_optimizer(register)` (singular), marked, was silently never
    # called ("Unknown optimizer", and optlab.plugins listed the plugin as loaded); so was a hook
    # left unmarked
    import types

    module = types.ModuleType("typo_plugin")

    @optlab.hookimpl
    def register_optimizer(register):
        raise AssertionError("never called")

    def register_schedules(register):
        raise AssertionError("never called")

    module.register_optimizer = register_optimizer
    module.register_schedules = register_schedules
    with pytest.warns(plugins.PluginWarning) as warned:
        plugins.register(module, name="test-typo-plugin")
    said = sorted(str(w.message) for w in warned)
    assert said == [
        "optlab plugin from distribution '<runtime>' (function register_optimizer) is never called: it is marked "
        "@optlab.hookimpl, but optlab has no hook 'register_optimizer' (did you mean 'register_optimizers'?); its "
        "hooks: register_optimizers, register_schedules, register_callbacks, register_problems",
        "optlab plugin from distribution '<runtime>' (function register_schedules) is never called: it is not "
        "marked @optlab.hookimpl",
    ]
    assert {(d, w) for d, w, _ in plugins.failures()} >= {
        ("<runtime>", "function register_optimizer"),
        ("<runtime>", "function register_schedules"),
    }


def test_a_kernel_defined_without_a_file_compiles():
    # a newcomer's kernel typed into `python -` failed with numba's "cannot cache function
    # '_signum_serial': no locator available for file '<string>'"
    import numpy as np

    code = (
        "import numpy as np\n"
        "from optlab.kernels import kernel, prange\n"
        "@kernel\n"
        "def _signum(p, g, lr):\n"
        "    for i in prange(p.shape[0]):\n"
        "        p[i] -= lr * np.sign(g[i])\n"
    )
    namespace: dict = {}
    exec(compile(code, "<string>", "exec"), namespace)
    p = np.ones(4, np.float32)
    namespace["_signum"](p, np.array([1, -1, 0, 2], np.float32), np.float32(0.5))
    assert p.tolist() == [0.5, 1.5, 1.0, 0.5]  # 1 - 0.5 * sign(g)


def test_hooks_are_documented():
    from optlab import hookspecs

    for name in ("register_optimizers", "register_schedules", "register_callbacks", "register_problems"):
        doc = getattr(hookspecs, name).__doc__
        assert "Called" in doc and "register(" in doc
