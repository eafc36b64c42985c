"""An optimizer's state as plain data, and loading it back as a validated transaction.

``get_state`` gives ``(meta, arrays)``: JSON-able metadata (format, optimizer name, config,
raw call count, and for a built optimizer its parameter shapes, dtype and scalar slots) and
named flat arrays (``slot/<name>``, ``ema``, ``accumulator``). ``read_state`` checks everything
against the optimizer that is to take it and returns the attributes to swap in; it changes
nothing itself, so a failure leaves the optimizer exactly as it was. Files: ``optlab.files``.
"""

from __future__ import annotations

import math

import numpy as np

from .layout import Layout, Segments, mismatch

STATE_FORMAT = "optlab.optimizer_state/1"


def get_state(opt) -> tuple[dict, dict[str, np.ndarray]]:
    """``(meta, arrays)`` of ``opt``; the arrays are its live buffers, not copies."""
    meta = {
        "format": STATE_FORMAT,
        "optimizer": opt.registry_name,
        "config": opt.get_config(),
        "raw_iterations": opt._iterations,
        "built": opt.built,
    }
    if not opt.built:
        return meta, {}
    layout = opt._layout
    meta["shapes"] = [list(s) for s in layout.shapes]
    if layout.names is not None:
        meta["names"] = list(layout.names)
    meta["dtype"] = layout.dtype.name
    meta["scalars"] = {k: float(v) for k, v in opt.scalars.items()}
    return meta, dict(layout.arrays)


def read_state(opt, meta, arrays, restore_learning_rate: bool) -> tuple[dict, list[str]]:
    """The attributes that give ``opt`` the state ``(meta, arrays)``, and the warnings to give.

    Raises ``ValueError`` naming the first thing that does not fit; see ``Optimizer.set_state``.
    """
    owner = type(opt).__name__
    if not isinstance(meta, dict):
        raise _invalid(opt, f"the metadata is a {type(meta).__name__}, not a dict")
    if meta.get("format") != STATE_FORMAT:
        raise ValueError(f"{owner}: not an optlab optimizer state (format {_short(meta.get('format'))})")
    if meta.get("optimizer") != opt.registry_name:
        raise ValueError(
            f"{owner}: the state is of optimizer {_short(meta.get('optimizer'))}, not {opt.registry_name!r}"
        )
    if not isinstance(arrays, dict):
        raise _invalid(opt, f"the arrays are a {type(arrays).__name__}, not a dict")
    raw = meta.get("raw_iterations")
    if not _is_int(raw) or raw < 0:
        raise _invalid(opt, f"`raw_iterations` must be an integer >= 0; received {_short(raw)}")
    built = meta.get("built")
    if not isinstance(built, bool):
        raise _invalid(opt, f"`built` must be True or False; received {_short(built)}")
    learning_rate, notes = _learning_rate_from(opt, meta.get("config"), restore_learning_rate)
    if built:
        attributes = _built_state_from(opt, meta, arrays)
    elif arrays:
        raise _invalid(opt, f"the state is of an unbuilt optimizer but holds arrays {sorted(arrays)}")
    else:
        attributes = {"_layout": None, "_plan": None}
    attributes["_iterations"] = int(raw)
    attributes["_learning_rate"] = learning_rate  # the live one, or a float replacing a float
    return attributes, notes


def _invalid(opt, what: str) -> ValueError:
    return ValueError(f"{type(opt).__name__}: invalid optimizer state: {what}")


def _learning_rate_from(opt, config, restore_learning_rate: bool) -> tuple[object, list[str]]:
    """Validate the saved config; returns the learning rate to install and the warnings to give."""
    owner = type(opt).__name__
    if not isinstance(config, dict):
        raise _invalid(opt, f"`config` must be a dict; received {_short(config)}")
    if "learning_rate" not in config:
        raise _invalid(opt, "its config has no `learning_rate`")
    hypers = type(opt).hyperparameters()
    for key, value in config.items():
        if key in hypers and key != "learning_rate":
            hypers[key].validate(value, f"{owner} state")  # the constructor's own check and message
    saved_n = config.get("gradient_accumulation_steps", opt.gradient_accumulation_steps)
    if saved_n != opt.gradient_accumulation_steps:
        raise _invalid(
            opt,
            f"it was saved with gradient_accumulation_steps={saved_n}, this optimizer has "
            f"{opt.gradient_accumulation_steps} (the step count and the accumulator depend on it)",
        )
    saved, live = config["learning_rate"], opt._learning_rate
    if isinstance(saved, dict):
        from .. import schedules

        try:
            saved_config = schedules.get(saved).get_config()
        except (ValueError, TypeError) as error:
            raise _invalid(opt, f"its learning-rate schedule is invalid: {error}") from None
        if not callable(live):
            return live, [
                f"{owner}: the state was saved with a learning-rate schedule ({saved_config.get('name')}); "
                f"this optimizer's own learning_rate={live!r} is kept"
            ]
        if hasattr(live, "get_config") and live.get_config() != saved_config:
            return live, [
                f"{owner}: the state was saved with the learning-rate schedule {saved_config}; this "
                f"optimizer's own {live.get_config()} is kept"
            ]
        return live, []
    if callable(saved):
        raise _invalid(opt, f"its `learning_rate` must be a number or a schedule config; received {_short(saved)}")
    value = hypers["learning_rate"].validate(saved, f"{owner} state")
    if callable(live) or value == live:
        return live, []  # a schedule or callable keeps governing
    if restore_learning_rate:
        return value, []
    return live, [
        f"{owner}: the state was saved with learning_rate={value!r}; this optimizer's own "
        f"learning_rate={live!r} is kept (restore_learning_rate=True restores the saved one)"
    ]


def _built_state_from(opt, meta: dict, arrays: dict) -> dict:
    shapes = meta.get("shapes")
    if not (
        isinstance(shapes, (list, tuple))
        and all(isinstance(s, (list, tuple)) and all(_is_int(d) and d >= 0 for d in s) for s in shapes)
    ):
        raise _invalid(opt, f"`shapes` must be a list of lists of integers >= 0; received {_short(shapes)}")
    if sum(math.prod(s) for s in shapes) >= 2**62:
        raise _invalid(opt, f"`shapes` describe more elements than any array can hold: {_short(shapes)}")
    dtype = meta.get("dtype")
    if dtype not in ("float32", "float64"):
        raise _invalid(opt, f"`dtype` must be 'float32' or 'float64'; received {_short(dtype)}")
    scalars = meta.get("scalars")
    if not isinstance(scalars, dict):
        raise _invalid(opt, f"`scalars` must be a dict of finite floats; received {_short(scalars)}")
    declared = opt.scalar_slots()
    for key, value in scalars.items():
        if not isinstance(key, str) or not _is_number(value) or not math.isfinite(value):
            raise _invalid(opt, f"scalar {_short(key)} must be a finite float; received {_short(value)}")
        if key not in declared:
            raise _invalid(opt, f"scalar {key!r} is not one of this optimizer's ({', '.join(declared) or 'none'})")
    names = meta.get("names")
    if names is not None and not (
        isinstance(names, list) and len(names) == len(shapes) and all(isinstance(n, str) and n for n in names)
    ):
        raise _invalid(opt, f"`names` must be a list of one non-empty string per parameter; received {_short(names)}")
    layout = opt._new_layout(shapes, dtype, names)
    layout.install(_copies(opt, arrays, layout.sizes, layout.dtype))
    _check_fits(opt, layout)
    _check_nonnegative(opt, layout)
    # a state saved before the first step may lack a scalar: it starts at its initial value
    return {"_layout": layout, "_plan": None, "scalars": {**declared, **{k: float(v) for k, v in scalars.items()}}}


def _check_fits(opt, layout: Layout) -> None:
    """Refuse, now, a state for other parameters than those a built optimizer knows.

    Installed, it would only fail at the next step, with the optimizer's own state gone. An
    optimizer that does not know its parameters yet (unbuilt, or holding a loaded state that
    waits for them) takes the state as it is: ``build`` or the first ``apply`` checks it.
    """
    live = opt._layout
    if live is None or not live.params_known:
        return
    difference = mismatch(layout, live.shapes, live.dtype, "this optimizer's", live.names)
    if difference:
        raise ValueError(
            f"{type(opt).__name__}: the state does not fit the parameters this optimizer is built for: "
            f"{difference} (an optimizer keeps updating the parameters it was built for; load a state saved "
            "for them, or create a new optimizer for the state's)"
        )
    if layout.names is None and live.names is not None:  # a state saved for the same parameters, unnamed
        try:
            layout.name_parameters(live.names)
        except ValueError as error:
            raise ValueError(f"{type(opt).__name__}: {error}") from None
    layout.params_known = True


def _check_nonnegative(opt, layout: Layout) -> None:
    """Refuse a negative element in a slot declared ``nonnegative`` (NaN and +inf pass: see ``Slot``)."""
    for name, spec in layout.specs.items():
        if not spec.nonnegative:
            continue
        values = layout.slots[name]
        negative = values < 0  # False for NaN
        if negative.any():
            j = int(np.argmax(negative))
            offsets = layout.slot_offsets[name]
            k = int(np.searchsorted(offsets, j, side="right")) - 1
            raise _invalid(
                opt,
                f"slot {name!r} holds {values[j]!s} (element {j - int(offsets[k])} of parameter {k}), but "
                f"{type(opt).__name__}'s update rule keeps it >= 0: the state is corrupt or not this optimizer's",
            )


def _copies(opt, source: dict, sizes: dict[str, int], dtype: np.dtype) -> dict[str, np.ndarray]:
    """Copies of the state arrays ``source``, which must be exactly ``sizes`` (name -> elements) in ``dtype``."""
    missing = sorted(set(sizes) - set(source))
    unexpected = sorted(set(source) - set(sizes))
    if missing or unexpected:
        detail = "; ".join(
            part
            for part in (f"missing {missing}" if missing else "", f"unexpected {unexpected}" if unexpected else "")
            if part
        )
        raise ValueError(
            f"{type(opt).__name__}: the state holds {sorted(source)} but this optimizer's options need "
            f"{sorted(sizes)} ({detail})"
        )
    out = {}
    for key, size in sizes.items():
        a = source[key]
        if not isinstance(a, np.ndarray):
            raise _invalid(opt, f"{key!r} is a {type(a).__name__}, not a numpy array")
        if a.dtype != dtype:
            raise _invalid(opt, f"array {key!r} has dtype {a.dtype}; the state's dtype is {dtype}")
        if a.shape != (size,):
            raise _invalid(opt, f"array {key!r} has shape {a.shape}; the state's parameter shapes need ({size},)")
        out[key] = np.array(a, dtype=dtype, copy=True)
    return out


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _short(value, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (a bad state can hold anything, of any size)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def variables(opt) -> dict:
    """``Optimizer.variables``: the state by name, read-only views."""
    found: dict = {"iterations": opt.iterations}
    if opt._rate_at is None:  # as Keras: a schedule or a callable rate is not a variable
        found["learning_rate"] = opt.learning_rate
    if not opt.built:
        return found
    layout = opt._layout
    found.update(opt.scalars)
    labels = [str(i) for i in range(len(layout.shapes))] if layout.names is None else layout.names
    seg = Segments(layout.shapes, layout.offsets, layout.slot_offsets, range(len(labels)), layout.name_list)
    for slot, buf in layout.slots.items():
        sized = layout.specs[slot].size is not None
        for label, view in zip(labels, seg.views(buf, slot if sized else None)):
            found[f"{label}/{slot}"] = _read_only(view)
    for key, buf in (("ema", layout.ema), ("accumulated_gradient", layout.accumulator)):
        if buf is not None:
            for label, view in zip(labels, seg.views(buf)):
                found[f"{label}/{key}"] = _read_only(view)
    return found


def _read_only(view: np.ndarray) -> np.ndarray:
    view = view.view()
    view.flags.writeable = False
    return view
