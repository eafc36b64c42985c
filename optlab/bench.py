"""Benchmark: time per step and memory bandwidth of every optimizer's update.

    python -m optlab.bench                       # every optimizer, 1e5 .. 3e7 float32 parameters
    python -m optlab.bench --optimizers adam,sgd --sizes 1e6,1e7 --json out.json

Figures are medians over repeated steps. Each optimizer's effective bandwidth is
the bytes its update must read and write (``traffic(optimizer)`` parameter-sized
arrays x 4 bytes x n) divided by the step time, and is also reported as a fraction
of the machine's memory bandwidth *measured in the same run* by a parallel
read-modify-write kernel ``a[i] += s * b[i]`` (3 arrays' worth of bytes) on arrays
far larger than the cache, because shared machines are noisy and absolute figures
from another day mean little. A many-small-arrays case (500 arrays of 2,000
elements, separate and as views of one flat buffer) shows the per-array overhead. Every
problem runs once at its declared budget: seconds against its size class, steps per second.
Where torch is installed (never required) its CPU Adam, ``fused=True`` and
``foreach=True``, runs as a peer in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from .kernels import kernel, prange

DEFAULT_SIZES = (100_000, 1_000_000, 10_000_000, 30_000_000)
#: optimizers whose work is matrix-shaped: benchmarked on matrices of this many columns
MATRIX_SHAPED = {"adafactor": 256, "muon": 256}
MANY_ARRAYS, MANY_SIZE = 500, 2_000
#: optimizers whose step makes a read-only pass over parameter-sized arrays before the update: how
#: many arrays it reads (Adafactor's statistics pass reads p and g: the column averages and the
#: update's RMS depend on every row before any parameter can move)
READ_PASSES = {"adafactor": 2}


@kernel
def _rmw(a, b, s):
    for i in prange(a.shape[0]):
        a[i] += s * b[i]


@kernel(fastmath={"reassoc"})
def _sum_squares(a, b, out):
    """out[k] = the sum over block k of a's and b's rows of a^2 + b^2: a read-only pass over two
    (rows, 256) arrays, a row at a time (a statistics pass's access; a flat 1-D sum inside ``prange``
    ran at half the speed here: numba did not vectorize its inner loop)."""
    blocks = out.shape[0]
    rows, cols = a.shape
    for k in prange(blocks):
        x = a[0, 0] - a[0, 0]
        y = x
        for i in range(k * rows // blocks, (k + 1) * rows // blocks):
            for j in range(cols):
                x += a[i, j] * a[i, j]
                y += b[i, j] * b[i, j]
        out[k] = x + y


def median_time(fn: Callable[[], object], min_repeats: int = 5, min_seconds: float = 0.3, max_repeats: int = 200):
    """Median wall time of ``fn()`` over at least ``min_repeats`` calls and ``min_seconds``."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def memory_bandwidth(n: int = 30_000_000, rounds: int = 3) -> float:
    """Bytes per second of the parallel read-modify-write kernel on float32 arrays of ``n`` elements.

    The best of ``rounds`` medians: other load on a shared machine only ever lowers the figure.
    """
    a = np.ones(n, np.float32)
    b = np.full(n, 0.5, np.float32)
    s = np.float32(1e-3)
    _rmw(a, b, s)  # compile, fault the pages in
    seconds = min(median_time(lambda: _rmw(a, b, s), min_repeats=10) for _ in range(rounds))
    return 3 * 4 * n / seconds


def read_bandwidth(n: int = 30_000_000, rounds: int = 3) -> float:
    """Bytes per second of a parallel read-only pass (a sum of squares) over two float32 arrays of
    about ``n`` elements as (n / 256, 256) matrices; the best of ``rounds`` medians. Reported beside
    :func:`memory_bandwidth`: a pass that only reads need not run at that kernel's rate."""
    a = np.ones((n // 256, 256), np.float32)
    b = np.full((n // 256, 256), 0.5, np.float32)
    out = np.empty(64, np.float32)
    _sum_squares(a, b, out)  # compile, fault the pages in
    seconds = min(median_time(lambda: _sum_squares(a, b, out), min_repeats=10) for _ in range(rounds))
    return 2 * 4 * a.size / seconds


#: the reference product of ``matmul_rate``: (MATMUL_ROWS x MATMUL_INNER) @ (MATMUL_INNER x MATMUL_INNER)
MATMUL_ROWS, MATMUL_INNER = 4096, 256


def matmul_rate(rounds: int = 3) -> float:
    """Flop/s of numpy's float32 matmul (its BLAS) on a (4096 x 256) @ (256 x 256) product, the shape
    of Muon's work on the benchmark's (n / 256, 256) matrices; the best of ``rounds`` medians."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((MATMUL_ROWS, MATMUL_INNER), dtype=np.float32)
    b = rng.standard_normal((MATMUL_INNER, MATMUL_INNER), dtype=np.float32)
    out = np.empty_like(a)
    np.matmul(a, b, out=out)  # warm up BLAS's threads
    seconds = min(median_time(lambda: np.matmul(a, b, out=out), min_repeats=10) for _ in range(rounds))
    return 2 * MATMUL_ROWS * MATMUL_INNER**2 / seconds


def _problem(n: int, columns: int | None, seed: int = 0):
    import optlab

    rng = np.random.default_rng(seed)
    shape = (n // columns, columns) if columns else (n,)
    params = optlab.flat_parameters([shape], np.float32)
    params.flat[:] = rng.standard_normal(params.flat.size, dtype=np.float32)
    grads = optlab.flat_like(params)
    grads.flat[:] = rng.standard_normal(grads.flat.size, dtype=np.float32) * np.float32(1e-2)
    return params, grads


def traffic(optimizer) -> int:
    """Parameter-sized arrays one step of ``optimizer`` reads plus writes (for bandwidth figures).

    The update rule's own count (``3 + 2 *`` parameter-shaped slots — the parameters read and
    written, the gradient read, each slot read and written — unless the class sets
    ``traffic_per_element``) plus the generic passes in use: weight decay reads and writes the
    parameters (2, unless the rule fuses it), the EMA reads the average and the parameters and
    writes the average (3).
    """
    from .optimizers import Slot

    own = optimizer.traffic_per_element
    if own is None:
        slots = optimizer.slots().values()
        own = 3 + 2 * sum(1 for s in slots if not isinstance(s, Slot) or s.size is None)
    if optimizer.weight_decay and not optimizer.fuses_weight_decay:
        own += 2
    if optimizer.use_ema:
        own += 3
    return own


def bench_optimizer(name: str, n: int) -> dict:
    """Time one step of optimizer ``name`` (Keras defaults) on ``n`` float32 parameters."""
    import optlab

    columns = MATRIX_SHAPED.get(name)
    params, grads = _problem(n, columns)
    opt = optlab.optimizers.get(name)
    for _ in range(2):  # build and compile
        opt.apply(grads, params)
    seconds = median_time(lambda: opt.apply(grads, params))
    size = params.flat.size
    state = opt.get_state()[1]
    nbytes = traffic(opt) * 4 * size + 2 * sized_slot_bytes(opt, state)
    row = {"optimizer": name, "n": size, "seconds": seconds, "bytes": nbytes, "gbps": nbytes / seconds / 1e9}
    row["state_bytes"] = sum(a.nbytes for a in state.values())  # slots, EMA, accumulator
    if hasattr(opt, "step_flops"):  # matrix-product work (Muon's Newton-Schulz)
        row["flops"] = opt.step_flops([p.shape for p in params])
        row["gflops"] = row["flops"] / seconds / 1e9
    return row


def sized_slot_bytes(optimizer, state: dict) -> int:
    """Bytes of the slots not shaped like the parameters (Adafactor's row and column factors) in
    ``state`` (``get_state()[1]``): a step reads and writes each once, on top of ``traffic``."""
    from .optimizers import Slot

    sized = [k for k, s in optimizer.slots().items() if isinstance(s, Slot) and s.size is not None]
    return sum(state[f"slot/{k}"].nbytes for k in sized if f"slot/{k}" in state)


def bench_many(name: str = "adam") -> dict:
    """One step over 500 arrays of 2,000 elements, separate and flat, against one array of 1e6."""
    import optlab

    rng = np.random.default_rng(0)
    shapes = [(MANY_SIZE,)] * MANY_ARRAYS
    separate = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    separate_grads = [rng.standard_normal(s, dtype=np.float32) * np.float32(1e-2) for s in shapes]
    flat = optlab.flatten(separate, dtype=np.float32)
    flat_grads = optlab.flatten(separate_grads, dtype=np.float32)
    one, one_grads = _problem(MANY_ARRAYS * MANY_SIZE, None)
    out = {"optimizer": name}
    for label, params, grads in (
        ("separate", separate, separate_grads),
        ("flat", flat, flat_grads),
        ("one", one, one_grads),
    ):
        opt = optlab.optimizers.get(name)
        for _ in range(2):
            opt.apply(grads, params)
        out[label] = median_time(lambda opt=opt, grads=grads, params=params: opt.apply(grads, params))
    return out


#: the sparse case: an embedding table of SPARSE_ROWS x SPARSE_WIDTH, SPARSE_TOUCHED rows per step
SPARSE_ROWS, SPARSE_WIDTH, SPARSE_TOUCHED = 1_000_000, 64, 1_000


def bench_sparse(name: str) -> dict:
    """One step on a ``SPARSE_ROWS x SPARSE_WIDTH`` float32 table from an ``IndexedSlices`` of
    ``SPARSE_TOUCHED`` random rows, against the step on the same gradient made dense (the ratio is the point)."""
    import optlab
    from optlab.sparse import IndexedSlices

    rows, width, touched = SPARSE_ROWS, SPARSE_WIDTH, SPARSE_TOUCHED
    rng = np.random.default_rng(0)
    grad = IndexedSlices(
        rng.standard_normal((touched, width), dtype=np.float32) * np.float32(1e-2),
        rng.choice(rows, touched, replace=False),
    )
    dense = grad.to_dense((rows, width))
    out = {"optimizer": name, "rows": rows, "width": width, "touched": touched}
    for label, g in (("sparse", grad), ("dense", dense)):
        table = rng.standard_normal((rows, width), dtype=np.float32)
        opt = optlab.optimizers.get(name)
        for _ in range(2):
            opt.apply([g], [table])
        out[label] = median_time(lambda opt=opt, g=g, table=table: opt.apply([g], [table]))
        out["rows_alone"] = opt.updates_rows_alone()
    return out


def bench_loop(problem, optimizer, steps: int) -> dict:
    """Steps per second of the Trainer against the bare loop (gradient + optimizer step) on the same problem."""
    import optlab
    from optlab.trainer import Trainer

    problem = optlab.problems.get(problem)
    params = problem.init(0)
    grads = optlab.flat_like(params)
    opt = optlab.optimizers.get(optimizer)

    def bare():
        for _ in range(steps):
            problem.loss_and_grad(params, grads, None, None)
            opt.apply(grads, params)

    class Clock(optlab.callbacks.Callback):
        """Times the epochs only: making the parameters is set-up, not loop. No per-epoch hook of
        its own, so that the loop timed is the one a run without callbacks gets."""

        def on_train_begin(self, logs=None):
            self.start = time.perf_counter()

        def on_train_end(self, logs=None):
            self.seconds = time.perf_counter() - self.start

    def trained():
        clock = Clock()
        Trainer(problem, optlab.optimizers.get(optimizer), [clock], epochs=steps).fit()
        return clock.seconds

    bare()
    trained()  # compile, warm up
    bare_times, trainer_times = [], []
    for _ in range(3):  # in turns: a shared machine's load falls on both alike
        bare_times.append(median_time(bare, min_repeats=3, min_seconds=0.2) / steps)
        trainer_times.append(statistics.median(trained() for _ in range(3)) / steps)
    bare_s, trainer_s = statistics.median(bare_times), statistics.median(trainer_times)
    return {"problem": problem.registry_name, "steps": steps, "bare": bare_s, "trainer": trainer_s}


def _alternate(cases: dict, rounds: int = 3, **timing) -> dict:
    """The median over ``rounds`` of each case's ``median_time``, the cases taking turns in each
    round, so that a shared machine's load falls on all of them alike (their ratios are the point)."""
    times: dict = {label: [] for label in cases}
    for _ in range(rounds):
        for label, fn in cases.items():
            times[label].append(median_time(fn, **timing))
    return {label: statistics.median(t) for label, t in times.items()}


def bench_fresh_grads(name: str = "adam", arrays: int = MANY_ARRAYS, size: int = MANY_SIZE) -> dict:
    """One step with the parameters in one flat buffer (``optlab.flat_parameters``) and the gradients
    as separate arrays, new ones at every step (what a user gets who computes gradients the ordinary
    way), against the same step with flat gradients (``flat_like``): ``arrays`` arrays of ``size``.

    The new arrays of each step are new array objects over the same separate memory (three sets of
    views, in turn): both cases then touch the same bytes, so that their ratio is the path's cost,
    not whether the gradients happen to be in the cache (new memory at each step would be colder
    than the flat case's one buffer; a gradient just computed is rather in the cache)."""
    import optlab

    rng = np.random.default_rng(0)
    shapes = [(size,)] * arrays
    values = rng.standard_normal(arrays * size, dtype=np.float32)
    flat_grads = optlab.flat_parameters(shapes, np.float32)
    flat_grads.flat[:] = rng.standard_normal(arrays * size, dtype=np.float32) * np.float32(1e-2)
    separate = [g.copy() for g in flat_grads]  # one allocation each, as gradients computed one by one
    fresh = [[g[...] for g in separate] for _ in range(3)]  # other array objects at each call, in turn
    cases, turn = {}, [0]
    for label, grads in (("flat", flat_grads), ("fresh", None)):
        params = optlab.flat_parameters(shapes, np.float32)
        params.flat[:] = values
        opt = optlab.optimizers.get(name)
        if grads is None:

            def step(opt=opt, params=params):
                turn[0] += 1
                opt.apply(fresh[turn[0] % 3], params)
        else:

            def step(opt=opt, params=params, grads=grads):
                opt.apply(grads, params)

        for _ in range(2):
            step()
        cases[label] = step
    gathered = np.empty(arrays * size, np.float32)

    def copy():  # the gradients gathered into one buffer, alone: what a step that gathered them would pay
        turn[0] += 1
        np.concatenate(fresh[turn[0] % 3], out=gathered)

    cases["copy"] = copy
    return {"optimizer": name, "arrays": arrays, "size": size, **_alternate(cases)}


def bench_tiny(names=("adam", "sgd"), calls: int = 1000) -> dict:
    """The fixed cost of one ``apply_gradients`` on tiny parameters (2 arrays of 2 float32, as views
    of one flat buffer, the gradients too), per optimizer; torch's fused Adam and optax's jitted Adam
    on the same where installed (never required)."""
    import optlab

    cases = {}
    for name in names:
        params = optlab.flat_parameters([(2,), (2,)], np.float32, fill=1.0)
        grads = optlab.flat_like(params)
        grads.flat[:] = 0.01
        opt = optlab.optimizers.get(name)
        opt.apply_gradients(zip(grads, params))

        def run(opt=opt, grads=grads, params=params):
            for _ in range(calls):
                opt.apply_gradients(zip(grads, params))

        cases[name] = run
    for label, make in (("torch-adam-fused", _tiny_torch), ("optax-adam-jit", _tiny_optax)):
        run = make(calls)
        if run is not None:
            cases[label] = run
    return {label: seconds / calls for label, seconds in _alternate(cases, min_seconds=0.2).items()}


def _tiny_torch(calls: int):
    try:
        import torch
    except ImportError:
        return None
    params = [torch.nn.Parameter(torch.ones(2)) for _ in range(2)]
    for p in params:
        p.grad = torch.full((2,), 0.01)
    opt = torch.optim.Adam(params, lr=1e-3, eps=1e-7, fused=True)
    opt.step()

    def run():
        for _ in range(calls):
            opt.step()

    return run


def _tiny_optax(calls: int):
    try:
        import jax
        import jax.numpy as jnp
        import optax
    except ImportError:
        return None
    tx = optax.adam(1e-3, eps=1e-7)
    params = [jnp.ones(2, jnp.float32) for _ in range(2)]
    grads = [jnp.full(2, 0.01, jnp.float32) for _ in range(2)]

    @jax.jit
    def step(params, state):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    box = [params, tx.init(params)]
    jax.block_until_ready(step(*box))

    def run():
        for _ in range(calls):
            box[:] = step(*box)
        jax.block_until_ready(box[0])

    return run


def bench_problem(name: str) -> dict:
    """One run of ``name`` at its budget with SGD (after a warm-up epoch): seconds and steps per
    second, against its size class's bound, and the gradient alone (``loss_and_grad`` over the
    same batches) as a share of the step."""
    import optlab
    from optlab.problems import SIZE_CLASSES
    from optlab.trainer import Trainer

    problem = optlab.problems.get(name)
    Trainer(problem, "sgd", epochs=1, batch_size="auto").fit()  # compile, load, warm the caches
    trainer = Trainer(problem, "sgd", epochs="auto", batch_size="auto")
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    params = problem.init(0)
    grads = optlab.flat_like(params)
    rng = np.random.default_rng(0)
    batches = list(problem.batches(rng, trainer.batch_size))

    def gradients():
        for batch in batches:
            problem.loss_and_grad(params, grads if not problem.sparse_gradients else list(grads), batch, rng)

    gradient = median_time(gradients, min_repeats=3, min_seconds=0.2) / len(batches)
    return {
        "problem": name,
        "size_class": problem.size_class,
        "bound": SIZE_CLASSES[problem.size_class],
        "steps": trainer.step,
        "seconds": seconds,
        "gradient": gradient,
    }


def torch_peers(sizes) -> list[dict]:
    """torch.optim.Adam on the CPU (fused and foreach) on the same problems, if torch is installed."""
    try:
        import torch
    except ImportError:
        return []
    rows = []
    for mode in ("fused", "foreach"):
        for n in sizes:
            p = torch.nn.Parameter(torch.randn(n, dtype=torch.float32))
            p.grad = torch.randn(n, dtype=torch.float32) * 1e-2
            opt = torch.optim.Adam([p], lr=1e-3, eps=1e-7, **{mode: True})
            for _ in range(2):
                opt.step()
            seconds = median_time(opt.step)
            nbytes = 7 * 4 * n
            rows.append(
                {
                    "optimizer": f"torch-adam-{mode}",
                    "n": n,
                    "seconds": seconds,
                    "bytes": nbytes,
                    "gbps": nbytes / seconds / 1e9,
                }
            )
        params = [torch.nn.Parameter(torch.randn(MANY_SIZE)) for _ in range(MANY_ARRAYS)]
        for q in params:
            q.grad = torch.randn(MANY_SIZE) * 1e-2
        opt = torch.optim.Adam(params, lr=1e-3, **{mode: True})
        for _ in range(2):
            opt.step()
        rows.append({"optimizer": f"torch-adam-{mode}", "many": median_time(opt.step)})
    return rows


def adam_against_torch(sizes, rounds: int = 5) -> list[dict]:
    """optlab's Adam against torch's fused CPU Adam on the same n float32 parameters, the two taking
    turns in each round (their ratio is the figure: measured minutes apart, as the sections above
    are, the machine's state differs); [] without torch."""
    try:
        import torch
    except ImportError:
        return []
    rows = []
    for n in sizes:
        times = _alternate(_adam_pair(torch, n), rounds=rounds)
        rows.append({"n": n, **times, "ratio": times["optlab"] / times["torch"]})
    return rows


def _adam_pair(torch, n: int) -> dict:
    """One step of optlab's Adam and one of torch's fused Adam on the same n parameters, warmed up."""
    import functools

    import optlab

    rng = np.random.default_rng(0)
    params = [rng.standard_normal(n, dtype=np.float32)]
    grads = [rng.standard_normal(n, dtype=np.float32) * np.float32(1e-2)]
    mine = optlab.optimizers.Adam(learning_rate=1e-3)
    p = torch.nn.Parameter(torch.from_numpy(params[0].copy()))
    p.grad = torch.from_numpy(grads[0].copy())
    theirs = torch.optim.Adam([p], lr=1e-3, eps=1e-7, fused=True)
    for _ in range(2):
        mine.apply(grads, params)
        theirs.step()
    return {"optlab": functools.partial(mine.apply, grads, params), "torch": theirs.step}


_FIRST_STEPS = """
import json, sys, time
import numpy as np
import optlab
out = {}
for label, n in (("small", 8), ("large", 1 << 20)):  # the serial kernel, then the parallel one
    opt = optlab.optimizers.get(sys.argv[1])
    params = [np.ones((n // 8, 8), np.float32)]  # (matrix-shaped, for the optimizers that need it)
    grads = [np.full_like(params[0], 0.01)]
    start = time.perf_counter()
    opt.apply(grads, params)
    out[label] = time.perf_counter() - start
print(json.dumps(out))
"""


def bench_cold(name: str, cache: str) -> dict:
    """The first step of ``name`` in a new process, with numba's cache in the empty folder ``cache``
    (the first run after installing: every kernel compiles) and again with it filled (every run
    after: kernels load from the cache); on 8 parameters (the serial kernel) and on 2^20 (the
    parallel one). The seconds of the first step alone, imports not counted."""
    import os

    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    row = {"optimizer": name}
    for state in ("cold", "warm"):
        for label, seconds in _in_new_process(_FIRST_STEPS, [name], env).items():
            row[f"{state}_{label}"] = seconds
    return row


def _in_new_process(code: str, args: list[str], env=None) -> dict:
    """The JSON ``code`` prints last, run with ``args`` by a new Python process."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


#: one row of the training loop's section, in a process of its own (see ``main``)
_LOOP_ROW = """
import json, sys
from optlab.bench import bench_loop
print(json.dumps(bench_loop(json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]))))
"""


def _fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:9.3f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:9.1f} us"


#: what ``--only`` can choose (each a part of the run, in its order)
SECTIONS = ("steps", "many", "fresh", "tiny", "sparse", "loop", "problems", "torch", "cold")


def main(argv=None) -> int:
    import optlab

    parser = argparse.ArgumentParser(prog="python -m optlab.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizers", help="comma-separated names (default: every registered optimizer)")
    parser.add_argument("--sizes", help="comma-separated parameter counts, e.g. 1e6,1e7 (default: 1e5,1e6,1e7,3e7)")
    parser.add_argument("--problems", help="comma-separated problem names (default: every registered problem)")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch peers even if torch is installed")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument(
        "--only",
        metavar="SECTIONS",
        help=f"comma-separated sections to run, of {','.join(SECTIONS)} (default: all)",
    )
    args = parser.parse_args(argv)
    only = None
    if args.only:
        only = {s.strip() for s in args.only.split(",") if s.strip()}
        if only - set(SECTIONS):
            parser.error(f"--only: unknown section {sorted(only - set(SECTIONS))[0]!r}; known: {', '.join(SECTIONS)}")

    if args.json:  # before minutes of measuring: a path that cannot take the file is said now
        from .callbacks.base import check_writable

        try:
            check_writable(args.json, "--json")
        except ValueError as error:
            parser.error(str(error))

    def want(section: str) -> bool:
        return only is None or section in only

    registry = optlab.optimizers.registry
    if args.optimizers:
        try:
            names = [registry.canonical(s.strip()) for s in args.optimizers.split(",") if s.strip()]
        except ValueError as err:
            parser.error(str(err))
    else:
        names = registry.names()
    try:
        sizes = [int(float(s)) for s in args.sizes.split(",")] if args.sizes else list(DEFAULT_SIZES)
    except ValueError:
        parser.error(f"--sizes must be comma-separated numbers, e.g. 1e6,1e7; received {args.sizes!r}")
    if any(n < 1 for n in sizes):
        parser.error("--sizes must be positive")
    problem_names = optlab.problems.registry.names()
    if args.problems:
        problem_names = [s.strip() for s in args.problems.split(",") if s.strip()]
        unknown = [n for n in problem_names if n not in optlab.problems.registry]
        if unknown:
            parser.error(f"unknown problem {unknown[0]!r}; known: {', '.join(optlab.problems.registry.names())}")

    import numba

    print(
        f"optlab {optlab.__version__}, numpy {np.__version__}, numba {numba.__version__}, "
        f"{numba.config.NUMBA_NUM_THREADS} threads, float32"
    )
    bandwidth = memory_bandwidth()
    print(f"memory bandwidth (parallel a[i] += s*b[i] on 3e7 float32): {bandwidth / 1e9:.1f} GB/s")
    results: dict = {"bandwidth_gbps": bandwidth / 1e9, "steps": [], "many": [], "torch": []}
    reading = None
    if want("steps") and any(name in READ_PASSES for name in names):
        reading = read_bandwidth()
        results["read_bandwidth_gbps"] = reading / 1e9
        print(
            f"read-only bandwidth (parallel sum of a^2 + b^2 over two 3e7 float32): {reading / 1e9:.1f} GB/s, "
            f"{reading / bandwidth:.2f} of the above"
        )
    flop_rate = None
    if want("steps") and any(hasattr(registry.get(name), "step_flops") for name in names):
        flop_rate = matmul_rate()
        results["matmul_gflops"] = flop_rate / 1e9
        print(
            f"numpy float32 matmul ({MATMUL_ROWS} x {MATMUL_INNER} @ {MATMUL_INNER} x {MATMUL_INNER}): "
            f"{flop_rate / 1e9:.1f} GFLOP/s"
        )
    print()

    if want("steps"):
        print(f"{'optimizer':<22}{'n':>12}{'time/step':>14}{'GB/s':>9}{'of bw':>8}   bytes/elem  state B/param")
    for name in names if want("steps") else ():
        for n in sizes:
            row = bench_optimizer(name, n)
            row["fraction"] = row["gbps"] * 1e9 / bandwidth
            note = f"  ({MATRIX_SHAPED[name]}-column matrix)" if name in MATRIX_SHAPED else ""
            if name in READ_PASSES:  # the least time a read-only pass and then the update can take here
                floor = READ_PASSES[name] * 4 * row["n"] / reading + row["bytes"] / bandwidth
                row["ceiling"] = row["bytes"] / bandwidth / floor
                row["of_floor"] = floor / row["seconds"]
                note += f"  two passes: ceiling {row['ceiling']:.2f} of bw, {row['of_floor']:.2f} of it reached"
            if "gflops" in row:
                row["matmul_fraction"] = row["gflops"] * 1e9 / flop_rate
                note += f"  {row['gflops']:.1f} GFLOP/s, {row['matmul_fraction']:.2f} of matmul"
            results["steps"].append(row)
            print(
                f"{name:<22}{row['n']:>12.0e}{_fmt_time(row['seconds']):>14}{row['gbps']:>9.1f}"
                f"{row['fraction']:>8.2f}   {row['bytes'] / row['n']:>10.1f}"
                f"{row['state_bytes'] / row['n']:>15.2f}{note}"
            )
        sys.stdout.flush()

    if want("many"):
        print(f"\n{MANY_ARRAYS} arrays of {MANY_SIZE} elements vs one array of {MANY_ARRAYS * MANY_SIZE}:")
        for name in [n for n in ("adam", "sgd") if n in names] or names[:1]:
            many = bench_many(name)
            results["many"].append(many)
            print(
                f"  {name:<10} separate {_fmt_time(many['separate'])}  flat {_fmt_time(many['flat'])}  "
                f"one array {_fmt_time(many['one'])}  flat/one = {many['flat'] / many['one']:.2f}  "
                f"separate/one = {many['separate'] / many['one']:.2f}"
            )

    if want("fresh"):
        print("\nFlat parameters with separate gradient arrays, new ones at every step, against flat gradients:")
        for arrays, size in ((1, MANY_ARRAYS * MANY_SIZE), (MANY_ARRAYS, MANY_SIZE)):
            row = bench_fresh_grads("adam", arrays, size)
            results.setdefault("fresh_grads", []).append(row)
            print(
                f"  adam  {arrays:>4} x {size:<8} flat {_fmt_time(row['flat'])}  separate fresh "
                f"{_fmt_time(row['fresh'])}  fresh/flat = {row['fresh'] / row['flat']:.2f}   "
                f"(read in place; a gather would add np.concatenate alone, {_fmt_time(row['copy'])}: "
                f"(flat + it)/flat = {(row['flat'] + row['copy']) / row['flat']:.2f})"
            )

    if want("tiny"):
        print("\nFixed cost of one apply_gradients on 2 arrays of 2 float32 (views of one flat buffer):")
        tiny = bench_tiny([n for n in ("adam", "sgd") if n in names] or names[:1])
        results["tiny"] = tiny
        for label, seconds in tiny.items():
            peers = [p for p in ("torch-adam-fused", "optax-adam-jit") if p in tiny and label == "adam"]
            versus = "".join(f"   {seconds / tiny[p]:.2f} of {p}" for p in peers)
            print(f"  {label:<20}{_fmt_time(seconds)}{versus}")

    if want("sparse"):
        print(
            f"\nSparse gradient: {SPARSE_TOUCHED} of {SPARSE_ROWS:,} rows of a {SPARSE_ROWS:,} x {SPARSE_WIDTH} table "
            "(IndexedSlices), against the same gradient dense:"
        )
        for name in [n for n in ("sgd", "adagrad", "adam") if n in names] or names[:1]:
            sparse = bench_sparse(name)
            results.setdefault("sparse", []).append(sparse)
            how = "its rows alone" if sparse["rows_alone"] else "dense (rows without a gradient move too)"
            print(
                f"  {name:<10} sparse {_fmt_time(sparse['sparse'])}  dense {_fmt_time(sparse['dense'])}  "
                f"dense/sparse = {sparse['dense'] / sparse['sparse']:.1f}   updates {how}"
            )

    if want("loop"):
        print("\nTraining loop (Trainer.fit, one step per epoch) against the bare gradient + step loop:")
        for problem, optimizer, steps in (
            ("seed_linear", "sgd", 2000),
            ({"name": "quadratic", "dim": 1_000_000}, "adam", 50),
        ):
            # in a new process, as a run is: the sections before leave hundreds of MB freed and their
            # threads behind, and seed_linear's loop measured 10-30% slower after them than alone
            row = _in_new_process(_LOOP_ROW, [json.dumps(problem), optimizer, str(steps)])
            results.setdefault("loop", []).append(row)
            print(
                f"  {row['problem']:<12} {optimizer:<5} trainer {1 / row['trainer']:>10,.0f} steps/s   "
                f"bare {1 / row['bare']:>10,.0f} steps/s   trainer/bare {row['bare'] / row['trainer']:.2f}   "
                f"overhead {(row['trainer'] - row['bare']) * 1e6:8.1f} us/step"
            )

    if want("problems"):
        print("\nProblems, one run at the budget with SGD (after a warm-up epoch); the gradient's share of a step:")
        for name in problem_names:
            row = bench_problem(name)
            results.setdefault("problems", []).append(row)
            rate = row["steps"] / row["seconds"]
            print(
                f"  {name:<22}{row['size_class']:<7}{row['seconds']:>7.2f} s (bound {row['bound']:g} s)"
                f"{rate:>12,.0f} steps/s   gradient {row['gradient'] * rate:.2f} of a step"
            )
            sys.stdout.flush()

    if not args.no_torch and want("torch"):
        peers = torch_peers(sizes)
        if peers:
            print("\ntorch peers (CPU, same run):")
        for row in peers:
            results["torch"].append(row)
            if "many" in row:
                print(f"  {row['optimizer']:<20} {MANY_ARRAYS} arrays of {MANY_SIZE}: {_fmt_time(row['many'])}")
            else:
                print(
                    f"  {row['optimizer']:<20}{row['n']:>12.0e}{_fmt_time(row['seconds']):>14}"
                    f"{row['gbps']:>9.1f}{row['gbps'] * 1e9 / bandwidth:>8.2f}"
                )
        pairs = adam_against_torch(sizes)
        if pairs:
            results["adam_vs_torch_fused"] = pairs
            print("\noptlab's Adam against torch's fused Adam, taking turns in each round (time / torch's time):")
            for row in pairs:
                print(
                    f"  {row['n']:>10.0e}   optlab {_fmt_time(row['optlab'])}   torch fused {_fmt_time(row['torch'])}"
                    f"   ratio {row['ratio']:.2f}"
                )

    if want("cold"):
        import tempfile

        print(
            "\nCold start: the first step in a new process with numba's cache empty (the first run after "
            "installing) and filled (every run after), on 8 parameters (serial kernel) and 2^20 (parallel):"
        )
        print(f"  {'optimizer':<20}{'cold 8':>10}{'warm 8':>10}{'cold 2^20':>11}{'warm 2^20':>11}")
        with tempfile.TemporaryDirectory(prefix="optlab-cold-") as folder:
            for name in names:
                row = bench_cold(name, f"{folder}/{name}")
                results.setdefault("cold", []).append(row)
                print(
                    f"  {name:<20}{row['cold_small']:>9.2f}s{row['warm_small']:>9.2f}s"
                    f"{row['cold_large']:>10.2f}s{row['warm_large']:>10.2f}s"
                )
                sys.stdout.flush()
        cold = sum(r["cold_small"] + r["cold_large"] for r in results["cold"])
        warm = sum(r["warm_small"] + r["warm_large"] for r in results["cold"])
        print(f"  all of them: {cold:.1f} s cold, {warm:.2f} s warm ({cold / max(warm, 1e-9):.0f}x)")

    again = memory_bandwidth(rounds=1)
    results["bandwidth_end_gbps"] = again / 1e9
    print(
        f"\nmemory bandwidth measured again at the end: {again / 1e9:.1f} GB/s "
        f"(start {bandwidth / 1e9:.1f}; a large difference means the machine was busy)"
    )

    if args.json:  # atomically: a file of that name is replaced whole or left as it was
        import os

        from .files import write_text_atomic

        try:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            write_text_atomic(args.json, json.dumps(results, indent=2) + "\n")
        except OSError as error:
            print(
                f"python -m optlab.bench: error: the figures were not written to {args.json} "
                f"({error.strerror or error}); a file of that name is left as it was",
                file=sys.stderr,
            )
            return 1
    return 0


if __name__ == "__main__":
    from optlab.commands import command

    raise SystemExit(command(main))
