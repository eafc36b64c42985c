"""Conformance kit: the properties every optimizer and every schedule must have.

For plugin authors (and optlab's own tests)::

    from optlab.testing import check_optimizer, optimizer_checks

    def test_conformance():
        check_optimizer(AdaBelief)                         # runs every check, raises on the first failure

    @pytest.mark.parametrize("check", optimizer_checks(AdaBelief), ids=str)
    def test_property(check):                            # one test per property
        check()

A failure raises ``ConformanceError`` saying which property broke, what was seen and how
to fix it. Pass constructor arguments for the checks with ``kwargs`` (e.g. a learning rate
at which your optimizer makes progress on a quadratic within 300 steps).
"""

from __future__ import annotations

import json
import math
import tempfile
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHAPES = [(7, 5), (11,), (3, 2, 4), ()]
GENERIC_OPTIONS = {
    "clipnorm": {"clipnorm": 0.5},
    "clipvalue": {"clipvalue": 0.1},
    "global_clipnorm": {"global_clipnorm": 0.5},
    "weight_decay": {"weight_decay": 0.1},
    "ema": {"use_ema": True, "ema_momentum": 0.9, "ema_overwrite_frequency": 3},
    "gradient_accumulation": {"gradient_accumulation_steps": 3},
    "loss_scale": {"loss_scale_factor": 8.0},
}


class ConformanceError(AssertionError):
    """A conformance property does not hold: ``property``, what was seen, and how to fix it."""

    def __init__(self, prop: str, problem: str, fix: str):
        self.property = prop
        super().__init__(f"[{prop}] {problem}\n  how to fix: {fix}")


@dataclass(frozen=True)
class Check:
    """One named property check, callable without arguments."""

    name: str
    run: Callable[[], None]

    def __call__(self) -> None:
        self.run()

    def __str__(self) -> str:
        return self.name


# -- helpers ------------------------------------------------------------------------------------


def _problem(dtype, seed=0, shapes=SHAPES, steps=8, flat=False):
    import optlab

    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    if flat:
        params = optlab.flatten(params, dtype=dtype)
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]
    if steps > 3:
        grads[3] = [np.zeros(s, dtype) for s in shapes]  # a step with all-zero gradients
    if steps > 5:
        grads[5] = [g * dtype(1e3) for g in grads[5]]  # and one with large gradients
    return params, grads


def _run(cls, kwargs, dtype=np.float32, steps=8, flat=False, seed=0, options=None):
    params, grads = _problem(dtype, seed=seed, steps=steps, flat=flat)
    opt = cls(**{**kwargs, **(options or {})})
    for g in grads:
        opt.apply(g, params)
    return opt, params


def _concat(arrays):
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


# -- optimizer checks ---------------------------------------------------------------------------


def _config_round_trip(cls, kwargs):
    opt = cls(**kwargs)
    config = opt.get_config()
    try:
        text = json.dumps(config)
    except TypeError as error:
        raise ConformanceError(
            "config_round_trip",
            f"get_config() is not plain JSON data: {error}",
            "declare every argument with optlab.hparams.Hyper (kinds float/int/bool/str/list) so the "
            "base class builds the config; do not store objects in it",
        ) from None
    again = cls.from_config(json.loads(text))
    if again.get_config() != config:
        raise ConformanceError(
            "config_round_trip",
            f"from_config(get_config()) gives {again.get_config()} instead of {config}",
            "every constructor argument must be a Hyper declaration of the class (none set in __init__ by hand)",
        )
    if config.get("name") != opt.name or again.name != opt.name:
        raise ConformanceError(
            "config_round_trip",
            f"the label {opt.name!r} is not kept: get_config() writes name={config.get('name')!r}, "
            f"from_config gives {again.name!r}",
            "do not override `name` handling: the base class writes and restores the label",
        )
    for hname, value in _away_from_defaults(cls, kwargs):  # (a config that drops or rewrites one passes above)
        try:
            opt = cls(**{**kwargs, hname: value})
        except (TypeError, ValueError):
            continue  # (another argument's check refuses this combination)
        again = cls.from_config(json.loads(json.dumps(opt.get_config())))
        if not _same(getattr(again, hname), getattr(opt, hname)):
            raise ConformanceError(
                "config_round_trip",
                f"{cls.__name__}({hname}={value!r}): from_config(get_config()) gives {hname}={getattr(again, hname)!r}",
                f"get_config() must hold every argument as the optimizer has it: leave it to the base class, or "
                f"write {hname!r} from the instance",
            )
    named = cls.from_config({**config, "name": "conformance_label"})
    if named.name != "conformance_label":
        raise ConformanceError(
            "config_round_trip",
            f"from_config with name='conformance_label' gives an optimizer named {named.name!r}",
            "pass `name` on to the base class's __init__",
        )


def _away_from_defaults(cls, kwargs):
    """``(name, value)`` for each hyperparameter not in ``kwargs``: a valid value other than its default."""
    for hname, hyper in cls.hyperparameters().items():
        if hname in kwargs or hname == "name":
            continue
        default = hyper.default
        if hyper.kind is bool:
            candidates = [not default] if isinstance(default, bool) else [True, False]
        elif hyper.kind in (int, float) and isinstance(default, (int, float)) and not isinstance(default, bool):
            candidates = [default * 0.5, default * 2, default + 1, default - 0.5, 0.5, 2]
            candidates = [hyper.kind(c) if hyper.kind is int else float(c) for c in candidates]
        elif hyper.kind in (int, float) and default is None:
            candidates = [0.5, 2, 1]
        else:
            continue
        for value in candidates:
            if value == default:
                continue
            try:
                hyper.validate(value, cls.__name__)
            except (TypeError, ValueError):
                continue
            yield hname, value
            break


def _same(a, b) -> bool:
    if hasattr(a, "get_config") and hasattr(b, "get_config"):  # a schedule
        return type(a) is type(b) and a.get_config() == b.get_config()
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def _dtypes(cls, kwargs):
    results = {}
    for dtype in (np.float32, np.float64):
        _opt, params = _run(cls, kwargs, dtype=dtype)
        bad = [i for i, p in enumerate(params) if p.dtype != dtype]
        if bad:
            raise ConformanceError(
                "dtypes", f"parameters {bad} changed dtype from {np.dtype(dtype).name}", "update the arrays in place"
            )
        results[dtype] = _concat(params)
    start = _concat(_problem(np.float64)[0])
    moved = np.abs(results[np.float64] - start).max()
    diff = np.abs(results[np.float32] - results[np.float64]).max()
    if not diff <= 1e-3 * max(moved, 1.0):
        raise ConformanceError(
            "dtypes",
            f"float32 and float64 runs differ by {diff:.3g} (parameters moved by {moved:.3g})",
            "cast per-step scalars to the parameters' dtype (dt = param.dtype.type) and avoid integer "
            "or float64-only arithmetic in the kernel",
        )


def _in_place_no_allocation(cls, kwargs):
    import optlab

    n = 40_000
    params = optlab.flat_parameters([(100, 200), (n - 20_000,)], np.float32, fill=0.5)
    grads = optlab.flat_like(params)
    grads.flat[:] = np.linspace(-1, 1, n, dtype=np.float32)
    opt = cls(**kwargs)
    before = params.flat.ctypes.data
    for _ in range(3):
        opt.apply(grads, params)
    if params.flat.ctypes.data != before or np.array_equal(params.flat, 0.5):
        raise ConformanceError(
            "in_place", "the parameters were not updated in place", "write the new values into `param` (param[i] = ...)"
        )
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for _ in range(5):
            opt.apply(grads, params)
        current, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    if current - base > n * 4 // 20:
        raise ConformanceError(
            "in_place",
            f"memory held grew by {current - base} bytes over 5 steps",
            "keep state in slots (declared by slots()) or buffers made once, not new arrays each step",
        )


def _resume_bit_for_bit(cls, kwargs):
    for options in ({}, {"use_ema": True, "gradient_accumulation_steps": 2}):
        params, grads = _problem(np.float32, steps=10)
        full = cls(**kwargs, **options)
        for g in grads:
            full.apply(g, params)
        expected = _concat(params)

        params, _ = _problem(np.float32, steps=10)
        first = cls(**kwargs, **options)
        for g in grads[:5]:
            first.apply(g, params)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "state.npz"
            first.save_state(path)
            saved = [p.copy() for p in params]
            resumed = cls.from_config(first.get_config())
            resumed.load_state(path)
        for g in grads[5:]:
            resumed.apply(g, saved)
        got = _concat(saved)
        if not np.array_equal(got, expected):
            raise ConformanceError(
                "resume",
                f"with {options or 'default options'}, a run resumed after 5 steps differs from one that never "
                f"stopped by up to {np.abs(got - expected).max():.3g}",
                "keep all state in slots() or scalar_slots() (saved by save_state); recompute everything else "
                "from `step` and the hyperparameters",
            )


def _generic_options(cls, kwargs):
    for label, options in GENERIC_OPTIONS.items():
        try:
            opt, params = _run(cls, kwargs, options=options)
        except Exception as error:
            raise ConformanceError(
                f"option:{label}",
                f"{cls.__name__}(**{options}) fails: {type(error).__name__}: {error}",
                "leave generic options to the base class: do not override apply/_step; `update` must only "
                "apply your rule to the gradient it is given",
            ) from error
        if not all(np.isfinite(p).all() for p in params):
            raise ConformanceError(f"option:{label}", f"non-finite parameters with {options}", "see the finite check")
    # clipvalue must mean: the rule sees clipped gradients
    params_a, grads = _problem(np.float32, steps=3)
    params_b = [p.copy() for p in params_a]
    a, b = cls(**kwargs, clipvalue=0.1), cls(**kwargs)
    for g in grads:
        a.apply(g, params_a)
        b.apply([np.clip(x, -0.1, 0.1) for x in g], params_b)
    if not np.allclose(_concat(params_a), _concat(params_b), rtol=1e-6, atol=1e-7):
        raise ConformanceError(
            "option:clipvalue",
            "clipvalue=0.1 does not give the same step as clipping the gradients by hand",
            "use the `grad` argument of update() as the gradient (the base class clips it)",
        )
    # weight decay means Keras's p -= lr * wd * p before the rule's step, whether the rule fuses it or not
    params_a, grads = _problem(np.float32, steps=3)
    params_b = [p.copy() for p in params_a]
    a, b = cls(**{**kwargs, "weight_decay": 0.1}), cls(**{**kwargs, "weight_decay": 0.0})
    b.build(params_b)  # (slots that start at the parameters start before the first decay, as a's do)
    extra = [
        np.float32((a.weight_decay_rate(p.shape) or 0.0) - (b.weight_decay_rate(p.shape) or 0.0)) for p in params_b
    ]
    for g in grads:
        a.apply(g, params_a)
        for p, rate in zip(params_b, extra):  # (a rate by shape: Muon's matrices and the rest differ)
            p -= p * (np.float32(a.applied_learning_rate) * rate)
        b.apply(g, params_b)
    if not np.allclose(_concat(params_a), _concat(params_b), rtol=1e-5, atol=1e-6):
        raise ConformanceError(
            "option:weight_decay",
            "weight_decay=0.1 does not give the step of p -= learning_rate * 0.1 * p followed by the rule's "
            f"(by up to {np.abs(_concat(params_a) - _concat(params_b)).max():.3g})",
            "a rule that declares fuses_weight_decay must apply `decay` (a rate, or None) in update(); otherwise "
            "leave fuses_weight_decay False and the base class applies it",
        )
    # gradient accumulation: nothing moves until the N-th call
    params, grads = _problem(np.float32, steps=2)
    before = _concat(params)
    opt = cls(**kwargs, gradient_accumulation_steps=3)
    for g in grads:
        opt.apply(g, params)
    if not np.array_equal(_concat(params), before):
        raise ConformanceError(
            "option:gradient_accumulation",
            "parameters moved on an accumulating call",
            "do not update parameters outside update(); the base class calls it only on the N-th call",
        )


def _elementwise(cls, kwargs):
    """A rule declaring ``elementwise_update`` gets separate arrays in pieces of at most
    ``optlab.inplace.TASK_SIZE`` elements: its kernels must compute each element from the same
    element alone, so that the steps match the same run with every gradient gathered."""
    if not getattr(cls, "elementwise_update", False):
        return
    from . import object_layout

    shapes = [(40_000,), (3, 7), (25_000,)]  # (larger than a piece: a kernel that reduces sees a part)
    results = []
    saved = object_layout._LAYOUT
    for layout in (None, saved):  # gathered (no object layout: the path is off), then read in place
        object_layout._LAYOUT = layout
        try:
            rng = np.random.default_rng(3)
            params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
            opt = cls(**kwargs)
            for _ in range(3):  # (the first step of a plan takes the checked path)
                opt.apply([rng.standard_normal(s).astype(np.float32) for s in shapes], params)
        finally:
            object_layout._LAYOUT = saved
        results.append(_concat(params))
    if not np.allclose(results[0], results[1], rtol=1e-5, atol=1e-6, equal_nan=True):
        raise ConformanceError(
            "elementwise",
            f"{cls.__name__} declares elementwise_update = True, but its steps over separate arrays differ from "
            f"the same steps with the gradients gathered (by up to {np.abs(results[0] - results[1]).max():.3g})",
            "declare it only when update() hands param and grad to @kernel(elementwise=True) kernels that compute "
            "each element from that element alone (no sums, norms or neighbours); otherwise leave it False",
        )


def _deterministic(cls, kwargs):
    a = _concat(_run(cls, kwargs, flat=True)[1])
    b = _concat(_run(cls, kwargs, flat=True)[1])
    if not np.array_equal(a, b):
        raise ConformanceError(
            "deterministic",
            "two identical runs gave different parameters",
            "avoid unseeded randomness and parallel reductions whose order varies between runs",
        )


def _finite(cls, kwargs):
    for dtype in (np.float32, np.float64):
        _, params = _run(cls, kwargs, dtype=dtype)
        if not all(np.isfinite(p).all() for p in params):
            raise ConformanceError(
                "finite",
                f"non-finite parameters ({np.dtype(dtype).name}) from finite gradients (incl. all-zero and 1e3-scaled)",
                "guard divisions (add epsilon outside or inside the root) and the 0/0 of all-zero gradients",
            )


def _progress_on_quadratic(cls, kwargs, steps=300):
    rng = np.random.default_rng(1)
    d = rng.uniform(0.5, 2.0, size=20)
    p = rng.standard_normal(20) * 2.0

    def loss(x):
        return 0.5 * float(np.sum(d * x * x))

    start = loss(p)
    opt = cls(**kwargs)
    for _ in range(steps):
        opt.apply([d * p], [p])
    opt.finalize_variable_values()
    end = loss(p)
    if not end < 0.5 * start:
        raise ConformanceError(
            "progress",
            f"on 0.5*sum(d*x^2) the loss went from {start:.4g} to {end:.4g} in {steps} steps (needs < half)",
            "check the sign of the update (p -= ...), or pass kwargs with a learning rate suited to your method",
        )


def _shape_errors(cls, kwargs):
    params, grads = _problem(np.float32, steps=1)
    opt = cls(**kwargs)
    before = _concat(params)
    bad = [grads[0][0].reshape(-1), *grads[0][1:]]
    try:
        opt.apply(bad, params)
    except ValueError:
        pass
    else:
        raise ConformanceError(
            "shape_errors",
            "a gradient of the wrong shape was accepted",
            "do not override apply(); the base class validates gradients before any update",
        )
    if not np.array_equal(_concat(params), before):
        raise ConformanceError("shape_errors", "parameters changed before the error", "validate before updating")


OPTIMIZER_CHECKS = {
    "config_round_trip": _config_round_trip,
    "finite": _finite,
    "dtypes": _dtypes,
    "in_place": _in_place_no_allocation,
    "deterministic": _deterministic,  # (before resume: a rule that is not fails resume too, for another reason)
    "resume": _resume_bit_for_bit,
    "generic_options": _generic_options,
    "elementwise": _elementwise,
    "progress": _progress_on_quadratic,
    "shape_errors": _shape_errors,
}


def optimizer_checks(cls, **kwargs) -> list[Check]:
    """The optimizer checks as separate callables (for ``pytest.mark.parametrize``)."""
    from .optimizers import Optimizer

    if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
        raise TypeError(f"optimizer_checks() takes an Optimizer subclass, not {cls!r}")
    return [Check(f"{cls.__name__}:{name}", lambda fn=fn: fn(cls, kwargs)) for name, fn in OPTIMIZER_CHECKS.items()]


def check_optimizer(cls, **kwargs) -> None:
    """Run every optimizer check on ``cls`` (constructed with ``kwargs``); raise ``ConformanceError`` on failure."""
    for check in optimizer_checks(cls, **kwargs):
        check()


# -- schedule checks ----------------------------------------------------------------------------


def _schedule_round_trip(cls, kwargs):
    schedule = cls(**kwargs)
    config = schedule.get_config()
    try:
        again = cls.from_config(json.loads(json.dumps(config)))
    except TypeError as error:
        raise ConformanceError(
            "schedule_config", f"get_config() is not plain JSON data: {error}", "declare arguments with Hyper"
        ) from None
    steps = np.arange(200)
    # (a NaN is the values check's to report)
    if not np.array_equal(_over_steps(again, steps), _over_steps(schedule, steps), equal_nan=True):
        raise ConformanceError(
            "schedule_config", "from_config(get_config()) gives other values", "declare every argument with Hyper"
        )


def _over_steps(schedule, steps) -> np.ndarray:
    """``schedule(steps)`` as float64; a value() that does not take an array of steps is named."""
    try:
        return np.asarray(schedule(steps), dtype=np.float64)
    except (ValueError, TypeError) as error:  # ("The truth value of an array ... is ambiguous": an `if step < n`)
        raise ConformanceError(
            "schedule_values",
            f"schedule(array of {steps.size} steps) fails: {type(error).__name__}: {error}",
            "write value(step) with numpy operations that broadcast over an array of steps (np.where, "
            "np.minimum, ...), not Python's if on the step",
        ) from None


def _schedule_values(cls, kwargs):
    schedule = cls(**kwargs)
    steps = np.arange(500)
    values = _over_steps(schedule, steps)
    if values.shape != steps.shape:
        raise ConformanceError(
            "schedule_values",
            f"schedule(array of {steps.size} steps) has shape {values.shape}",
            "write value(step) with numpy operations that broadcast over an array of steps",
        )
    if not (np.isfinite(values).all() and (values >= 0).all()):
        raise ConformanceError(
            "schedule_values", "a learning rate is negative or not finite", "clamp the schedule at 0"
        )
    for step in (0, 1, 10, 499):
        scalar = schedule(step)
        if not isinstance(scalar, float) or not math.isclose(scalar, values[step], rel_tol=1e-12, abs_tol=1e-15):
            raise ConformanceError(
                "schedule_values",
                f"schedule({step}) = {scalar!r} but schedule(array)[{step}] = {values[step]!r}",
                "the base class's __call__ returns a float for a scalar step: implement value(), not __call__",
            )


def _schedule_drives_optimizer(cls, kwargs):
    import optlab

    opt = optlab.optimizers.SGD(learning_rate=cls(**kwargs))
    p = np.zeros(1)
    opt.apply([np.ones(1)], [p])
    expected = -cls(**kwargs)(0)
    if not math.isclose(float(p[0]), expected, rel_tol=1e-12, abs_tol=1e-15):
        raise ConformanceError(
            "schedule_optimizer", f"SGD with the schedule stepped to {p[0]!r}, expected {expected!r}", "see value()"
        )


SCHEDULE_CHECKS = {
    "values": _schedule_values,
    "config_round_trip": _schedule_round_trip,
    "drives_optimizer": _schedule_drives_optimizer,
}


def schedule_checks(cls, **kwargs) -> list[Check]:
    """The schedule checks as separate callables."""
    return [Check(f"{cls.__name__}:{name}", lambda fn=fn: fn(cls, kwargs)) for name, fn in SCHEDULE_CHECKS.items()]


def check_schedule(cls, **kwargs) -> None:
    """Run every schedule check on ``cls(**kwargs)``; raise ``ConformanceError`` on failure."""
    for check in schedule_checks(cls, **kwargs):
        check()
