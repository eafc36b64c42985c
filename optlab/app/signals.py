"""Signal handling shared by the command line's entry and its sweeps (standard library only)."""

from __future__ import annotations

import errno
import os
import signal


def ignore_signals(signals) -> None:
    """Ignore ``signals`` from now on, without Python's "Signal N ignored due to race condition"
    (an ``OSError`` raised wherever the code then is, when a signal that arrived just before is
    handled after its handler became SIG_IGN): block them, let Python handle any already
    arrived with the current handler, ignore them (the system drops those pending), unblock."""
    signals = set(signals)
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        for number in signals:
            signal.signal(number, _nothing)  # handles what had arrived, with the handler it had
        for number in signals:
            signal.signal(number, signal.SIG_IGN)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)


def _nothing(signum, frame) -> None:
    pass


def handle_hangup() -> None:
    """SIGHUP as SIGTERM from now on in this process (the entry's, a sweep's workers), unless ignored.

    A closed terminal's SIGHUP ended optlab at once by default and left its run RUNNING; as SIGTERM
    it goes to whichever handler holds SIGTERM (a run's marks it KILLED with its metrics kept).
    ``nohup``, which ignores SIGHUP, is left alone."""
    if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) == signal.SIG_DFL:
        signal.signal(signal.SIGHUP, _hung_up)


#: a SIGHUP was handled as SIGTERM in this process (what stopped it is then said as such)
HUNG_UP: list[bool] = []


def terminated() -> str:
    """What stopped optlab, said for SIGTERM: a closed terminal's SIGHUP, handled as SIGTERM, is named."""
    return "hung up (SIGHUP)" if HUNG_UP else "terminated (SIGTERM)"


def _hung_up(signum, frame) -> None:
    HUNG_UP[:] = [True]
    for fd in (1, 2):  # a terminal that closed answers every write with EIO: what is said there goes nowhere
        try:
            os.write(fd, b"")
        except OSError as error:
            if error.errno == errno.EIO:  # (a failed write of the stop's message was the exit status 1)
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, fd)
                os.close(devnull)
    os.kill(os.getpid(), signal.SIGTERM)
