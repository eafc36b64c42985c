import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import contextlib
import os
import signal
import subprocess

import pytest


def _die_with_parent():  # Linux: the child is killed if the test process dies (a CI timeout, kill -9)
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as a terminal's processes have it, even under nohup


@pytest.fixture
def spawn():
    """``subprocess.Popen`` for tests: every process it starts (and that process's own children,
    in its new session) is killed when the test ends, passed, failed or interrupted, and dies
    with the test process if that is killed."""
    started = []

    def start(args, **kwargs):
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(args, preexec_fn=_die_with_parent, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            proc.communicate(timeout=30)
