"""Threads per run: processes sharing a machine must not fight over its cores.

Two-thread kernel calls spiked from 0.1-0.4 ms to 4-8 ms here when another process kept the
other core busy. A sweep's n workers (joblib's processes) on c cores therefore get c // n
threads each, for numba's parallel kernels and for numpy's BLAS alike; any run gets at most the
cores it may run on (``os.sched_getaffinity``: a SLURM job's ``cpus_per_task``, a taskset),
where numba by default counts every core of the machine.
"""

from __future__ import annotations

import os
import sys


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # (no affinity on this platform)
        return os.cpu_count() or 1


def share_cores(workers: int = 1) -> int:
    """Limit numba's and BLAS's threads in this process to its share of the usable cores,
    ``max(1, cores // workers)``, and return it. Before numba is imported the share goes into
    ``NUMBA_NUM_THREADS`` (numba reads it once); after, into ``numba.set_num_threads``."""
    threads = max(1, usable_cores() // max(1, workers))
    if "numba" in sys.modules:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    else:
        os.environ["NUMBA_NUM_THREADS"] = str(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)  # numpy's BLAS (OpenBLAS, MKL), for this process from now on
    return threads


def sweep_workers(hydra_conf) -> int:
    """How many of a sweep's jobs run at once on this machine: joblib's ``n_jobs`` (-1: one per
    usable core); 1 for launchers that run jobs one after another or each on its own allocation."""
    launcher = hydra_conf.get("launcher") or {}
    if "joblib" not in str(launcher.get("_target_", "")):
        return 1
    n_jobs = launcher.get("n_jobs", -1)
    if n_jobs is None or n_jobs < 0:
        return usable_cores() if n_jobs in (None, -1) else max(1, usable_cores() + 1 + n_jobs)
    return max(1, n_jobs)
