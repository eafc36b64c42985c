"""The entry of ``python -m optlab`` and of the ``optlab`` console script (see ``optlab.app.main``).

A Ctrl-C or SIGTERM from the very start (while Python imports, Hydra composes the config, the
store is opened) ends in one line and exit status 130 / 143, not a traceback or a silent death
(a closed terminal's SIGHUP is handled as SIGTERM);
a run's own handlers (``optlab.app.run.stop_signals``) take over while it trains and is written.
"""

import os
import signal
import sys
import threading

from ..commands import command, reader_gone, skip_final_collection
from .signals import handle_hangup, ignore_signals, terminated

__all__ = ["command", "main", "skip_final_collection"]


class _Stopped(KeyboardInterrupt):
    """A signal outside a run."""

    def __init__(self, signum: int):
        super().__init__(terminated() if signum == signal.SIGTERM else "interrupted (Ctrl-C)")
        self.signum = signum


def _outside_a_run(signum, frame):
    if _lost:  # sent again (see _dropped): the first one's exception never reached the program
        _lost.clear()
        raise _Stopped(signum)
    first = _first_signal()
    if first is not None:  # a run or this handler was stopped already: Python is winding up, do not wait
        sys.stderr.flush()
        os._exit(128 + first)
    _received.append(signum)
    raise _Stopped(signum)


_received: list[int] = []
_lost: list[int] = []  # a signal whose exception Python dropped, sent again


def _dropped(info, hook) -> None:
    """``sys.unraisablehook`` while a command runs: a signal's exception raised where Python drops
    it (a weak-reference callback, a finalizer, a C library's callback: numba's compiler calls
    Python from C) is not lost: the signal is sent again shortly, to stop the command where it can
    (during training, a run's own hook stops it at the next step). Anything else goes to ``hook``."""
    if isinstance(info.exc_value, _Stopped):
        _lost[:] = [info.exc_value.signum]
        again = threading.Timer(0.05, signal.pthread_kill, (threading.main_thread().ident, info.exc_value.signum))
        again.daemon = True
        again.start()
        return
    hook(info)


def _first_signal() -> int | None:
    running = sys.modules.get("optlab.app.run")
    return getattr(running, "STOPPED_BY", None) or (_received[0] if _received else None)


_outside_a_run.optlab_default = True  # handlers installed later (a run's, a sweep's) replace this one


def main(argv=None, app=None) -> None:
    """Run ``app(argv)`` (``python -m optlab``'s, by default; ``python -m optlab.study`` passes its
    own) with optlab's signal handling from the very start."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler):
            signal.signal(signum, _outside_a_run)
    handle_hangup()
    if not (sys.stderr.isatty() or "FORCE_COLOR" in os.environ):
        # colour codes in a log file or a pipe are noise: Optuna's lines (colorlog) honour NO_COLOR only
        os.environ.setdefault("NO_COLOR", "1")
    hook = sys.unraisablehook
    sys.unraisablehook = lambda info: _dropped(info, hook)
    try:
        if app is None:
            from .main import main as app

        app(argv)
    except SystemExit as stop:
        if _first_signal() is not None:  # stopped by a signal, the run closed and reported
            _ignore_signals()
            _exit_now(stop.code)
        raise
    except BrokenPipeError:  # the output's reader went away (`--help | head`): it has what it wanted
        sys.exit(reader_gone())
    except KeyboardInterrupt as interrupt:  # outside a run: a run catches its own
        signum = _first_signal() or getattr(interrupt, "signum", signal.SIGINT)
        reason = str(interrupt) or "interrupted (Ctrl-C)"
        print(f"\noptlab: {reason} outside a run: nothing was being recorded", file=sys.stderr)
        _ignore_signals()
        sys.exit(128 + signum)
    finally:
        sys.unraisablehook = hook
        skip_final_collection()


def _exit_now(code) -> None:
    """Exit without Python's shutdown, once a stopped run is written, kept and reported.

    That shutdown takes seconds of garbage collection (MLflow's objects), during which Python
    has reset its signal handlers, and a store writer the second signal cut short may still be
    inside SQLite: Python then aborts ("Fatal Python error: PyThreadState_Get ...", status -6,
    seen once in CI). Whatever such a write was doing is kept locally already, and SQLite's
    journal leaves the store as a kill would: consistent.
    """
    import logging

    logging.shutdown()  # the run's log file: flushed and closed
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code if isinstance(code, int) else 1)


def _ignore_signals() -> None:
    """SIGINT and SIGTERM ignored from now on: the process is ending with the first one's status."""
    ignore_signals((signal.SIGINT, signal.SIGTERM))
