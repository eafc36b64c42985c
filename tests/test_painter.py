"""The plot helper process (optlab.app.painter): it draws what this process would draw, and every
way it can fail (a request it cannot take, a death, silence, an interrupt) leaves the run its plots."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import optlab
from optlab.app import painter, plots

pytestmark = pytest.mark.slow


@pytest.fixture
def helper():
    drawer = painter.Painter()
    yield drawer
    drawer.stop()


def curves_request():
    losses = [(step, 2.0 / step) for step in range(1, 31)]
    series = {"train/loss_step": losses, "train/loss": losses[9::10], "train/learning_rate": [(0, 0.01), (15, 0.001)]}
    return {"title": "adam rosenbrock seed=0", "series": series}


def path_request():
    problem = optlab.problems.get("rosenbrock")
    start = np.array([-1.2, 1.0])
    path = start + np.cumsum(np.full((20, 2), 0.05), axis=0)
    return {**curves_request(), "problem": problem, "path": path, "start": start}


class Unreadable:
    """Pickled here; reading it in the helper raises (as a problem class defined in a script would)."""

    def __reduce__(self):
        return int, ("not a number",)


class Fatal:
    """Reading it ends the helper with status 3, mid-request."""

    def __reduce__(self):
        return os._exit, (3,)


def ended(pid: int) -> bool:
    """The process is gone or a zombie (whoever adopted it may not reap it at once)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_the_helper_draws_the_figures_this_process_draws(helper):
    request = path_request()
    images = helper.draw(request)
    assert sorted(images) == ["curves.png", "path.png"]
    assert images == plots.draw(request)  # byte for byte
    assert helper.draw(curves_request()) == plots.draw(curves_request())


def test_one_helper_serves_request_after_request_in_its_own_session(helper):
    helper.draw(curves_request())
    pid = helper._process.pid
    helper.warm(optlab.problems.get("himmelblau"))  # no answer awaited: the next answer is still the draw's
    assert sorted(helper.draw(path_request())) == ["curves.png", "path.png"]
    assert helper._process.pid == pid
    assert os.getsid(pid) != os.getsid(0)  # the terminal's Ctrl-C reaches the run, which decides


def test_a_request_it_cannot_take_is_left_to_this_process_and_the_helper_stays(helper):
    helper.draw(curves_request())
    pid = helper._process.pid
    with pytest.raises(painter.Unavailable, match="cannot be sent"):
        helper.draw({**curves_request(), "problem": lambda: None})
    with pytest.raises(painter.Unavailable, match="could not read the request: ValueError: invalid literal"):
        helper.draw({**curves_request(), "problem": Unreadable()})
    assert helper._process.pid == pid and helper.failures == 0
    assert sorted(helper.draw(curves_request())) == ["curves.png"]


def test_a_drawing_that_raises_is_the_plots_own_error(helper):
    request = {**path_request(), "path": np.zeros(3)}  # not (steps, 2)
    with pytest.raises(ValueError) as here:
        plots.draw(request)
    with pytest.raises(painter.PlotFailed) as there:
        helper.draw(request)
    assert str(there.value) == f"ValueError: {here.value}"
    assert helper.failures == 0 and helper._process.poll() is None


def test_a_helper_that_died_between_requests_is_replaced(helper):
    helper.draw(curves_request())
    first = helper._process.pid
    os.kill(first, signal.SIGKILL)
    helper._process.wait()
    assert sorted(helper.draw(curves_request())) == ["curves.png"]
    assert helper._process.pid != first and helper.failures == 0


def test_a_helper_that_dies_or_goes_silent_mid_request_is_ended_and_then_given_up(helper):
    with pytest.raises(painter.Unavailable, match=r"it ended \(exit status 3\)"):
        helper.draw({**curves_request(), "problem": Fatal()})
    assert helper.failures == 1 and helper._process is None
    helper.draw(curves_request())  # a new one
    silent = helper._process.pid
    os.kill(silent, signal.SIGSTOP)
    began = time.monotonic()
    with pytest.raises(painter.Unavailable, match=r"no answer in 0\.5 s"):
        helper.draw(curves_request(), timeout=0.5)
    assert 0.5 <= time.monotonic() - began < 5
    assert ended(silent) and helper.failures == 2
    with pytest.raises(painter.Unavailable, match="no plot helper"):  # not started a third time
        helper.draw(curves_request())
    assert helper._process is None


def test_an_interrupt_while_waiting_ends_the_helper_and_goes_on(helper):
    helper.draw(curves_request())
    pid = helper._process.pid
    os.kill(pid, signal.SIGSTOP)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        with pytest.raises(KeyboardInterrupt):
            helper.draw(curves_request(), timeout=20)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert ended(pid) and helper._process is None and helper.failures == 0
    assert sorted(helper.draw(curves_request())) == ["curves.png"]  # a new one, in step


def test_the_helper_ends_when_its_process_is_killed(tmp_path):
    code = (
        "import sys, time\n"
        "from optlab.app import painter\n"
        "helper = painter.shared(); helper.start()\n"
        "print(helper._process.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 30  # it reads the closed pipe once its warm-up is over
    while not ended(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ended(pid)


def test_a_large_problem_is_not_sent_ahead(helper, monkeypatch):
    sent = []
    monkeypatch.setattr(helper, "_send", lambda message, deadline: sent.append(message))
    small, large = optlab.problems.get("rosenbrock"), optlab.problems.get("rosenbrock")
    large.ballast = np.zeros(painter.WARM_BYTES // 8 + 1)  # a pipe full of it would wait for the helper's warm-up
    helper.warm(small)
    helper.warm(large)
    assert [kind for kind, _ in sent] == ["warm"]


def test_a_large_request_to_a_silent_helper_is_given_up_in_time(helper):
    helper.draw(curves_request())
    silent = helper._process.pid
    os.kill(silent, signal.SIGSTOP)
    request = {**path_request(), "path": np.zeros((200_000, 2))}  # 3.2 MB: far more than a pipe holds
    with pytest.raises(painter.Unavailable, match=r"not read in 0\.5 s"):
        helper.draw(request, timeout=0.5)
    assert ended(silent) and helper._process is None and helper.failures == 1
    assert sorted(helper.draw(curves_request())) == ["curves.png"]


def test_the_helper_imports_what_this_process_would_not_the_current_folders_files(tmp_path, monkeypatch, helper):
    """python -c puts the current folder first on sys.path: the helper ran a user's json.py there,
    which this process never imports (a fault-injection probe)."""
    for name in ("json", "subprocess", "struct", "pickle", "numbers", "copy"):
        (tmp_path / f"{name}.py").write_text(f"open({str(tmp_path / ('RAN-' + name))!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    assert sorted(helper.draw(path_request())) == ["curves.png", "path.png"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("RAN-")) == []


def test_a_stopped_helper_dies_with_the_process_that_started_it(tmp_path):
    code = (
        "import sys, time\n"
        "from optlab.app import painter\n"
        "helper = painter.shared(); helper.draw({'title': 't', 'series': {}})\n"  # its warm-up is over
        "print(helper._process.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    pid = int(parent.stdout.readline())
    os.kill(pid, signal.SIGSTOP)  # a stopped helper reads no closed pipe: it stayed for ever, state T
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while not ended(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert ended(pid)
    finally:
        if not ended(pid):
            os.kill(pid, signal.SIGKILL)
