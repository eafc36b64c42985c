"""A run's plots drawn by a helper process, beside the run instead of in its way.

A new process pays matplotlib about 0.8 s before its first figure (the import, the fonts, the
first rendering), and the path plot's contours 40,000 evaluations of the problem (0.1 s): most
of what a tiny tracked run spent at its end. The helper (:func:`shared`, started when a tracked
run opens its store) imports matplotlib and draws a first figure on another core meanwhile; it
is told the problem when training begins (:meth:`Painter.warm`: its kernels load there, not at
the end), and it draws the figures while this process writes the run's last metrics. One helper
serves every run of a process (a sweep's jobs).

The helper is a convenience, never a dependency: if it cannot be started, dies, does not answer
within ``DRAW_TIMEOUT`` or cannot read a request (a problem defined in a script), the figures
are drawn in this process as before (:class:`Unavailable`); a helper that failed twice is not
started again in this process. It runs in its own session (the terminal's Ctrl-C reaches this
process only, which decides) and ends when this process closes its pipe or dies.

Frames on the helper's stdin and stdout: an 8-byte length, then a pickle (both ends are this
module's code, in processes of the same user). A request's payload is pickled on its own inside
its frame: one the helper cannot unpickle (a class it cannot import) is answered "unreadable"
and leaves the stream of frames in step, where a failure inside the frame's own unpickling would
not.
"""

from __future__ import annotations

import atexit
import os
import pickle
import struct
import subprocess
import sys
import threading
import time

DRAW_TIMEOUT = 30.0  # seconds the run's end waits for the helper's figures before drawing them itself
MAX_FAILURES = 2  # helpers that died or went silent before this process stops starting new ones
HEADER = struct.Struct("!Q")
#: the largest problem sent ahead (a pipe holds 64 KiB: more would wait for the helper's warm-up)
WARM_BYTES = 32 * 1024


class Unavailable(Exception):
    """The helper could not draw this request (not a plot's own error): draw it in this process."""


class PlotFailed(Exception):
    """Drawing raised in the helper; the message is ``Type: message``. Drawing here would fail the same way."""


class Painter:
    """The client side: :meth:`draw` sends a request (see :func:`.plots.draw`) and waits for the PNGs."""

    def __init__(self):
        self._process: subprocess.Popen | None = None
        self._pid = None  # the process that started the helper (a forked child must not share its pipes)
        self._lock = threading.Lock()
        self.failures = 0

    def start(self) -> bool:
        """Start the helper if it is not running; False if it cannot be (then figures are drawn here)."""
        if self._process is not None and self._pid == os.getpid() and self._process.poll() is None:
            return True
        if self._process is not None and self._pid == os.getpid():  # it ended since the last request
            self._discard()
        self._process = None
        if os.name != "posix" or self.failures >= MAX_FAILURES:  # select() on pipes is POSIX's
            return False
        # the helper imports what this process would (its sys.path, not python -c's current folder
        # first: a json.py there must not run), and ends when this process does
        code = f"import sys; sys.path[:] = {sys.path!r}; from optlab.app.painter import serve; serve({os.getpid()})"
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", code],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError:
            self.failures += 1
            return False
        os.set_blocking(self._process.stdin.fileno(), False)  # a request is written within its deadline
        self._pid = os.getpid()
        return True

    def warm(self, problem) -> None:
        """Let the helper load ``problem``'s code now (its kernels), so that the path plot does not wait
        for it at the run's end. Best effort: no answer is awaited, a failure is the draw's business."""
        with self._lock:
            if not self.start():
                return
            try:
                payload = pickle.dumps(problem, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:  # an unpicklable problem: its path plot is drawn here
                return
            if len(payload) > WARM_BYTES:
                return
            try:
                self._send(("warm", payload), time.monotonic())  # into the pipe's buffer, or not at all
            except TimeoutError as unsent:
                if unsent.written:  # part of a frame is in the pipe: out of step
                    self._discard()
            except OSError:  # a dead helper: the draw starts a new one
                pass

    def draw(self, request: dict, timeout: float | None = None) -> dict[str, bytes]:
        """The request's figures as PNG bytes by name, within ``timeout`` s (default ``DRAW_TIMEOUT``).
        Raises :class:`Unavailable` (draw them here) or :class:`PlotFailed` (drawing raised). An
        interrupt while waiting ends the helper and goes on."""
        timeout = DRAW_TIMEOUT if timeout is None else timeout
        with self._lock:
            if not self.start():
                raise Unavailable("no plot helper in this process")
            try:
                message = ("draw", pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL))
            except Exception as exc:  # e.g. a problem defined in a script: the helper is still fine
                raise Unavailable(f"the request cannot be sent: {type(exc).__name__}: {exc}") from None
            try:
                deadline = time.monotonic() + timeout
                self._send(message, deadline, timeout)
                kind, value = self._receive(deadline, timeout)
            except Exception as exc:  # dead, silent, or an answer that makes no sense
                self.failures += 1
                self._discard()
                raise Unavailable(f"the plot helper failed: {exc or type(exc).__name__}") from None
            except BaseException:  # an interrupt mid-answer leaves the pipe out of step: a new helper next time
                self._discard()
                raise
        if kind == "images":
            return value
        if kind == "failed":
            raise PlotFailed(value)
        raise Unavailable(f"the plot helper could not read the request: {value}")

    def stop(self, wait: float = 0.5) -> None:
        """Close the helper's pipe (it ends there); killed if still running after ``wait`` seconds."""
        with self._lock:
            if self._process is None or self._pid != os.getpid():
                self._process = None
                return
            process, self._process = self._process, None
            try:
                process.stdin.close()
                process.wait(wait)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
            finally:
                process.stdout.close()

    # -- the pipe ---------------------------------------------------------------------------
    def _send(self, message, deadline: float, timeout: float = 0.0) -> None:
        """Write one frame by ``deadline``, else ``TimeoutError`` (its ``written``: the bytes that were)."""
        import select

        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        pending = memoryview(HEADER.pack(len(data)) + data)
        descriptor, written = self._process.stdin.fileno(), 0
        while written < len(pending):
            try:
                written += os.write(descriptor, pending[written:])
                continue
            except BlockingIOError:  # the pipe is full: the helper has not read yet
                pass
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [descriptor], [], left)[1]:
                late = TimeoutError(f"not read in {timeout:g} s")
                late.written = written
                raise late

    def _receive(self, deadline: float, timeout: float):
        (size,) = HEADER.unpack(self._read(HEADER.size, deadline, timeout))
        return pickle.loads(self._read(size, deadline, timeout))

    def _read(self, size: int, deadline: float, timeout: float) -> bytes:
        import select

        descriptor = self._process.stdout.fileno()
        chunks = []
        while size:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([descriptor], [], [], left)[0]:
                raise TimeoutError(f"no answer in {timeout:g} s")
            chunk = os.read(descriptor, min(size, 1 << 20))
            if not chunk:
                raise EOFError(f"it ended (exit status {self._process.wait()})")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def _discard(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        process.wait()
        for pipe in (process.stdin, process.stdout):
            try:
                pipe.close()
            except OSError:  # a write that could not be flushed to a dead helper
                pass


_SHARED: Painter | None = None


def shared() -> Painter:
    """The helper of this process (started on first use, ended at exit)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = Painter()
        atexit.register(_SHARED.stop, 0.0)
    return _SHARED


# -- the helper's side -------------------------------------------------------------------------
def serve(parent: int | None = None) -> None:
    """The helper's loop: read a request, answer it, until the pipe closes or ``parent`` dies."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # its own session already; a stray Ctrl-C is the parent's
    if parent is not None and not _ends_with(parent):
        return
    source = sys.stdin.buffer
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes where stderr goes, never into the answers
    _warm_up()
    while True:
        header = source.read(HEADER.size)
        if len(header) < HEADER.size:
            return
        data = source.read(HEADER.unpack(header)[0])
        kind, payload = pickle.loads(data)
        if kind == "warm":
            _warm_problem(payload)
            continue
        answer = _answer(payload)
        blob = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        answers.write(HEADER.pack(len(blob)) + blob)
        answers.flush()


def _answer(payload: bytes) -> tuple[str, object]:
    from .plots import draw

    try:
        request = pickle.loads(payload)
    except Exception as exc:
        return "unreadable", f"{type(exc).__name__}: {exc}"
    try:
        return "images", draw(request)
    except Exception as exc:
        return "failed", f"{type(exc).__name__}: {exc}"


def _ends_with(parent: int) -> bool:
    """Be killed when ``parent`` dies, even mid-warm-up or stopped (Linux: ``PR_SET_PDEATHSIG``; a
    closed pipe ends it elsewhere); False if ``parent`` is gone already. (The kernel ties it to the
    thread that started the helper: one started by a thread that ends is replaced at the next request.)"""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    return os.getppid() == parent


def _warm_up() -> None:
    """matplotlib's import, fonts and first rendering, before the first request."""
    from .plots import curves_figure, png

    png(curves_figure({"train/loss": [(1, 1.0), (2, 0.5)], "train/learning_rate": [(0, 0.1)]}, "warm-up"))


def _warm_problem(payload: bytes) -> None:
    try:
        problem = pickle.loads(payload)
        problem.value(problem.minima()[0])
    except Exception:  # the draw request will say what is wrong, or be drawn by the run's process
        pass
