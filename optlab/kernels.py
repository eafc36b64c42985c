"""numba kernels: the lazy ``kernel`` decorator and the generic element-wise passes.

A kernel is written as a plain Python function over flat contiguous arrays
that loops with ``prange`` and updates in place. ``@kernel`` compiles it
twice, lazily, on first call: a serial version for small arrays (a parallel
launch costs about 2 us) and a ``parallel=True`` version for large ones.
Both use ``error_model='numpy'`` (the default Python error model's division
check blocks SIMD) and ``cache=True``. numba itself is imported on the first
kernel call, so ``import optlab`` stays light.

Callers pass per-step scalars already cast to the array dtype: a Python float
would promote float32 arithmetic to float64 inside the loop.

Variants of one rule (Adam with or without AMSGrad, with or without a fused weight decay) are
one kernel whose switches are module globals read in the loop (``if AMSGRAD:``), fixed per
variant by ``Kernel.specialize``: numba compiles globals as constants and drops the branches
not taken, so each variant is the code a hand-written one would be, with no test per element
and no switch to pass at each call (docs/benchmark.md has the measurements).
"""

from __future__ import annotations

import hashlib
import marshal
import math
import types

import numpy as np

from .inplace import Pieces

prange = range  # inside kernels; replaced by numba.prange when compiled

#: arrays with at least this many elements use the parallel variant
PARALLEL_MIN_SIZE = 1 << 15


class Kernel:
    """A kernel compiled on demand; ``k(x, ...)`` picks serial or parallel by ``x.size``."""

    def __init__(self, fn, parallel: bool = True, fastmath=False, constants: dict | None = None, elementwise=False):
        self.fn = fn
        self._fastmath = fastmath
        self._constants = dict(constants or {})
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        self._parallel = parallel
        self.elementwise = elementwise
        self._serial_impl = None
        self._parallel_impl = None
        self._pieces_impl: dict = {}  # (parallel, parameters in pieces too) -> the kernel over pieces

    def specialize(self, **constants) -> Kernel:
        """This kernel with the module globals ``constants`` fixed (compiled as constants)."""
        return Kernel(self.fn, self._parallel, self._fastmath, {**self._constants, **constants}, self.elementwise)

    def _suffix(self, parallel: bool) -> str:
        # numba's on-disk cache is keyed by qualified name, not by the globals' values: name each variant
        suffix = "".join(f"_{k.lower()}_{v}" for k, v in sorted(self._constants.items()))
        return suffix + ("_parallel" if parallel else "_serial_unaliased")

    def _cached(self) -> bool:
        # numba caches a function by its file: one defined in ``exec`` or ``python -`` (``<string>``,
        # ``<stdin>``) has none, and caching it raises; it is compiled in each process instead
        source = self.fn.__code__.co_filename
        return not source.startswith("<") or source.startswith("<ipython-input")

    def _compile(self, parallel: bool):
        import numba

        namespace = {**self.fn.__globals__, **self._constants}
        namespace["prange"] = numba.prange if parallel else range
        # a kernel may call other kernels: it gets their variant of the same kind
        for key in self.fn.__code__.co_names:
            value = namespace.get(key)
            if isinstance(value, Kernel) and value is not self:
                namespace[key] = value.parallel if parallel else value.serial
        fn = types.FunctionType(
            self.fn.__code__, namespace, self.fn.__name__ + self._suffix(parallel), self.fn.__defaults__
        )
        fn.__qualname__ = fn.__name__
        fn.__module__ = self.fn.__module__
        # only loops written with prange make a function parallel (a driver calling parallel kernels is not)
        own_parallel = parallel and "prange" in self.fn.__code__.co_names
        options = {
            "cache": self._cached(),
            "parallel": own_parallel,
            "error_model": "numpy",
            "fastmath": self._fastmath,
        }
        if not own_parallel:  # (a parallel loop's body is compiled with its arrays not aliased already)
            options["pipeline_class"] = _unaliased_pipeline()
        return numba.njit(**options)(fn)

    @property
    def serial(self):
        if self._serial_impl is None:
            self._serial_impl = self._compile(False)
        return self._serial_impl

    @property
    def parallel(self):
        if not self._parallel:
            return self.serial
        if self._parallel_impl is None:
            self._parallel_impl = self._compile(True)
        return self._parallel_impl

    def __call__(self, x, *args):
        if args and args[0].__class__ is Pieces:  # (parameters in pieces come with gradients in pieces)
            return self.over_pieces(x, *args)
        return self.variant(x)(x, *args)

    def variant(self, x, g=None):
        """The compiled variant for ``x``: parallel from ``PARALLEL_MIN_SIZE`` elements, else serial
        (``over_pieces`` when ``g``, the second argument, is a gradient in ``Pieces``).

        ``k.variant(x, g)(x, g, ...)`` is ``k(x, g, ...)`` without re-packing the arguments: 0.35 us
        less a call, a fair share of a small step's fixed cost (the rules called at every step use it)."""
        if g.__class__ is Pieces:
            return self.over_pieces
        if x.shape[0] >= PARALLEL_MIN_SIZE:
            impl = self._parallel_impl  # straight from the instance: a property's call costs too
            return impl if impl is not None else self.parallel
        impl = self._serial_impl
        return impl if impl is not None else self.serial

    def over_pieces(self, x, g, *args):
        """``k(x, g, ...)`` with ``g`` a gradient in ``Pieces`` (and ``x``, the parameters, an array
        or ``Pieces`` too): an ``elementwise`` kernel reads the pieces in place, its serial variant
        called on each task's elements (from ``prange`` over the tasks, from ``PARALLEL_MIN_SIZE``
        elements); any other kernel gets the gradient gathered, or with parameters in pieces, runs
        once per parameter (as over separate arrays)."""
        both = x.__class__ is Pieces
        if not self.elementwise:
            if both:  # once per parameter, as over separate arrays (its elements of the others' arrays)
                size = x.shape[0]
                offsets = x.offsets
                for k, (xk, gk) in enumerate(zip(x.arrays, g.arrays)):
                    a, b = offsets[k], offsets[k + 1]
                    cut = [r[a:b] if r.__class__ is np.ndarray and r.shape == (size,) else r for r in args]
                    xk = xk.reshape(-1)
                    self.variant(xk)(xk, gk.reshape(-1), *cut)
                return None
            return self.variant(x)(x, g.gathered(), *args)
        parallel = self._parallel and x.shape[0] >= PARALLEL_MIN_SIZE
        impl = self._pieces_impl.get((parallel, both))
        if impl is None:
            impl = self._pieces_impl[parallel, both] = self._compile_over_pieces(parallel, both)
        if both:
            return impl(g.tasks, x.addresses, g.addresses, g.offsets, x.like, *args)
        return impl(g.tasks, g.addresses, g.offsets, x, *args)

    def _compile_over_pieces(self, parallel: bool, both: bool):
        import numba

        from . import inplace

        template = inplace.over_both if both else inplace.over_pieces

        namespace = {
            **inplace.__dict__,
            "prange": numba.prange if parallel else range,
            "KERNEL": self.serial,
            "piece": inplace.compiled("piece"),
            "cut": inplace.compiled("cut"),
        }
        # cached under a name of the kernel's module, name, variant and code (its and the kernels it
        # calls): the driver's file is not the kernel's, so numba would not see the kernel change
        code = hashlib.sha1()
        for fn in self._code_of():
            code.update(marshal.dumps(fn.__code__))
        where = f"{self.fn.__module__}_{self.fn.__qualname__}".replace(".", "_").replace("<", "").replace(">", "")
        name = f"{where}{self._suffix(parallel)}_{template.__name__}_{code.hexdigest()[:12]}"
        fn = types.FunctionType(template.__code__, namespace, name)
        fn.__qualname__ = name
        fn.__module__ = inplace.__name__
        return numba.njit(cache=self._cached(), parallel=parallel, error_model="numpy")(fn)

    def _code_of(self, seen=None) -> list:
        """This kernel's function and those of the kernels it calls, in turn."""
        seen = [] if seen is None else seen
        if self.fn not in seen:
            seen.append(self.fn)
            for key in self.fn.__code__.co_names:
                value = self.fn.__globals__.get(key)
                if isinstance(value, Kernel):
                    value._code_of(seen)
        return seen


_PIPELINE = None


def _unaliased_pipeline():
    """numba's compiler, with the arrays a function takes declared not to overlap (LLVM's ``noalias``).

    A ``prange`` loop's body is compiled that way by numba already; a plain loop is not, so LLVM
    must check at run time that the arrays it writes do not overlap those it reads, and for
    Adam's four arrays its vector loop ran 2.4x slower than the same loop's in a parallel
    kernel on one thread (docs/benchmark.md). A kernel's arrays are distinct buffers, or the
    same one read and written at the same index (``scale_into(v, v, s)``), which no reordering
    of one element's reads and writes can change."""
    global _PIPELINE
    if _PIPELINE is None:
        from numba.core.compiler import CompilerBase, DefaultPassBuilder
        from numba.core.compiler_machinery import FunctionPass, register_pass
        from numba.core.untyped_passes import TranslateByteCode

        @register_pass(mutates_CFG=False, analysis_only=True)
        class Unaliased(FunctionPass):
            _name = "optlab_unaliased"

            def __init__(self):
                FunctionPass.__init__(self)

            def run_pass(self, state):
                state.flags.noalias = True
                return False

        class UnaliasedCompiler(CompilerBase):
            def define_pipelines(self):
                passes = DefaultPassBuilder.define_nopython_pipeline(self.state)
                passes.add_pass_after(Unaliased, TranslateByteCode)
                passes.finalize()
                return [passes]

        _PIPELINE = UnaliasedCompiler
    return _PIPELINE


def kernel(fn=None, *, parallel: bool = True, fastmath=False, elementwise=False):
    """Decorator: make ``fn`` a lazily compiled numba kernel (see module docs).

    ``fastmath`` is passed to numba; kernels with a sum reduction use ``{"reassoc"}`` so that
    LLVM may split the sum into SIMD lanes (without it, the loop runs at the add's latency).
    ``elementwise=True`` declares that the kernel ``k(x, g, ...)`` computes each element from the
    same element of its arrays alone (no sum, no neighbour): it may then run over any split of its
    elements, and reads a gradient ``g`` given in ``Pieces`` in place (``optlab.inplace``).
    """
    if fn is None:
        return lambda f: Kernel(f, parallel, fastmath, elementwise=elementwise)
    return Kernel(fn, parallel, fastmath, elementwise=elementwise)


# --- generic passes used by the optimizer base class ------------------------


@kernel(elementwise=True)
def scale_into(out, g, s):
    """out = g * s"""
    for i in prange(out.shape[0]):
        out[i] = g[i] * s


@kernel(elementwise=True)
def mul_div_into(out, g, a, b):
    """out = g * a / b (Keras's clip-by-norm rounding order)"""
    for i in prange(out.shape[0]):
        out[i] = g[i] * a / b


@kernel(elementwise=True)
def clip_into(out, g, v):
    """out = clip(g, -v, v)"""
    for i in prange(out.shape[0]):
        out[i] = min(max(g[i], -v), v)


@kernel(elementwise=True)
def accumulate(acc, g):
    """acc += g"""
    for i in prange(acc.shape[0]):
        acc[i] += g[i]


@kernel(elementwise=True)
def average_into(out, g, acc, n):
    """out = (g + acc) / n; acc = 0 (the update step of gradient accumulation)"""
    for i in prange(out.shape[0]):
        out[i] = (g[i] + acc[i]) / n
        acc[i] = 0


@kernel(elementwise=True)
def decay(p, c):
    """p = p - p * c (decoupled weight decay, c = weight_decay * learning_rate)"""
    for i in prange(p.shape[0]):
        p[i] = p[i] - p[i] * c


@kernel(elementwise=True)
def ema(avg, p, momentum, one_minus):
    """avg = momentum * avg + (1 - momentum) * p"""
    for i in prange(avg.shape[0]):
        avg[i] = momentum * avg[i] + one_minus * p[i]


@kernel(fastmath={"reassoc"})
def sum_of_squares(x):
    """sum(x**2), accumulated in float64 (parallel over large arrays)."""
    total = 0.0
    for i in prange(x.shape[0]):
        total += x[i] * x[i]
    return total


#: (dtype, value) -> ``dtype(value)``: making a numpy scalar costs ~0.4 us, a fair share of a small step
_TYPED: dict = {}


def typed(dt, value):
    """``dt(value)``, made once per value: a per-step hyperparameter in the parameters' dtype."""
    key = (dt, value)
    found = _TYPED.get(key)
    if found is None:
        found = dt(value)
        if value:  # (0.0 == -0.0 as keys: zeros are made each time, keeping their sign)
            if len(_TYPED) > 256:  # (a sweep over a hyperparameter)
                _TYPED.clear()
            _TYPED[key] = found
    return found


def sumsq(x: np.ndarray) -> float:
    """sum(x**2) of a flat array, as a Python float (BLAS dot, float64 for float64 input)."""
    return float(np.dot(x, x))


def norm(x: np.ndarray) -> float:
    return math.sqrt(sumsq(x))
