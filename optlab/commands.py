"""The end of a ``python -m optlab...`` command: its exit status, without a traceback when the reader of
its output goes away, and without Python's last garbage collections."""

import gc
import os
import sys


def check_package() -> None:
    """Exit in one line (status 2) where a folder named ``optlab/`` in the working directory hides the
    installed package: a clone's own folder, run from the folder that holds it. Python then takes
    the clone for a namespace package (an editable install is found after it), and the first
    import of optlab's parts ended in an ImportError's traceback. Called by each command's module
    before it imports anything else of optlab."""
    package = sys.modules.get("optlab")
    if package is None or getattr(package, "__file__", None) is not None:
        return
    folders = " and ".join(str(folder) for folder in getattr(package, "__path__", ()))
    print(
        f"optlab: error: Python takes the folder {folders} for the optlab package (a clone's folder, in the "
        "working directory): run the command from another folder",
        file=sys.stderr,
    )
    sys.exit(2)


def command(main) -> int:
    """The exit status of a ``python -m`` command's ``main()``, its end spared (:func:`skip_final_collection`);
    a reader that goes away (``| head``) ends it with status 1 and no ``BrokenPipeError`` traceback."""
    try:
        status = main()
        sys.stdout.flush()  # (a reader gone is found here at the latest)
    except BrokenPipeError:  # the reader has what it wanted
        status = reader_gone()
    skip_final_collection()
    return status


def reader_gone() -> int:
    """The exit status of a command whose output's reader went away (``| head``): 1. What is left in
    Python's buffer goes nowhere, so that Python's own flush at exit raises no second error."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1


def skip_final_collection() -> None:
    """Spare the process's end Python's last garbage collections: with MLflow's and SQLAlchemy's
    modules loaded they took 0.7-0.8 s after the last line (0.07 s frozen), with matplotlib and
    scipy's 1.4-1.7 s. Exit handlers still run; only objects left in reference cycles are not
    finalized (optlab closes and renames its files before this)."""
    gc.freeze()
