"""Generate the Keras reference trajectories the equivalence tests compare against.

Run it in a scratch environment that has Keras 3 (never a dependency of optlab):

    python -m venv /tmp/kenv
    /tmp/kenv/bin/pip install keras jax jaxlib scipy
    KERAS_BACKEND=jax /tmp/kenv/bin/python tests/reference/make_keras_reference.py

The JAX backend is the reference (about six minutes; the torch backend takes seconds but is
wrong for ScheduleFreeAdamW: there ``momentum.value`` aliases ``z``, so the averaged point is
computed from the already-updated ``z``; JAX, TensorFlow and the paper use the old ``z``).

It writes, next to this file:

- ``keras_optimizers.json``: the cases (Keras class, constructor arguments, Keras version),
- ``keras_optimizers.npz``: initial parameters, the gradients of every step, and per case the
  parameters after every step (and the EMA weights at the end where ``use_ema``),
- ``keras_schedules.json``: every schedule case's values at steps 0..300.

The gradients are random normal, with an all-zero step and two steps scaled by 1e3, on
parameters of shapes (5,), (3, 4), (6, 2) and (2, 3, 4), in float32.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras
import numpy as np

HERE = Path(__file__).parent
SHAPES = [(5,), (3, 4), (6, 2), (2, 3, 4)]
STEPS = 25
ZERO_STEP = 5
LARGE_STEPS = (10, 17)

OPTIMIZERS = [
    "SGD",
    "RMSprop",
    "Adagrad",
    "Adadelta",
    "Adam",
    "Adamax",
    "Nadam",
    "Ftrl",
    "AdamW",
    "Lion",
    "Lamb",
    "Adafactor",
    "Muon",
    "ScheduleFreeAdamW",
]

VARIANTS = {
    "SGD": [{"momentum": 0.9}, {"momentum": 0.9, "nesterov": True}],
    "RMSprop": [{"momentum": 0.5}, {"centered": True}, {"centered": True, "momentum": 0.9, "rho": 0.8}],
    "Adagrad": [{"initial_accumulator_value": 0.5, "epsilon": 1e-4}],
    "Adadelta": [{"learning_rate": 1.0, "rho": 0.9}],
    "Adam": [{"amsgrad": True}, {"beta_1": 0.5, "beta_2": 0.9, "epsilon": 1e-3}],
    "Adamax": [{"beta_1": 0.8, "beta_2": 0.95}],
    "Nadam": [{"beta_1": 0.8, "beta_2": 0.99}],
    "Ftrl": [
        {"l1_regularization_strength": 0.01, "l2_regularization_strength": 0.02},
        {"learning_rate_power": -0.7, "l2_shrinkage_regularization_strength": 0.05, "beta": 0.1},
        {"initial_accumulator_value": 0.0, "l1_regularization_strength": 0.001},
    ],
    "AdamW": [{"weight_decay": 0.1, "amsgrad": True}],
    "Lion": [{"beta_1": 0.5, "beta_2": 0.9}],
    "Lamb": [{"beta_1": 0.8, "epsilon": 1e-5}],
    "Adafactor": [{"clip_threshold": 0.5, "beta_2_decay": -0.5}, {"relative_step": False, "epsilon_2": 0.1}],
    "Muon": [{"nesterov": False, "ns_steps": 3}, {"rms_rate": None, "adam_lr_ratio": 0.5, "momentum": 0.8}],
    "ScheduleFreeAdamW": [{"warmup_steps": 5}, {"beta_1": 0.5}],
}

GENERIC = {
    "clipnorm": {"clipnorm": 1.0},
    "clipvalue": {"clipvalue": 0.5},
    "global_clipnorm": {"global_clipnorm": 2.0},
    "weight_decay": {"weight_decay": 0.05},
    "ema": {"use_ema": True, "ema_momentum": 0.9, "ema_overwrite_frequency": 4},
    "ema_no_overwrite": {"use_ema": True, "ema_momentum": 0.8},
    "accumulation": {"gradient_accumulation_steps": 3},
    "loss_scale": {"loss_scale_factor": 4.0},
    "schedule": {
        "learning_rate": {"ExponentialDecay": {"initial_learning_rate": 0.05, "decay_steps": 5, "decay_rate": 0.8}}
    },
}

SCHEDULES = [
    ("ExponentialDecay", {"initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.9}),
    ("ExponentialDecay", {"initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.9, "staircase": True}),
    ("PiecewiseConstantDecay", {"boundaries": [10, 20, 50], "values": [1.0, 0.5, 0.1, 0.01]}),
    ("PolynomialDecay", {"initial_learning_rate": 0.1, "decay_steps": 50}),
    ("PolynomialDecay", {"initial_learning_rate": 0.1, "decay_steps": 50, "end_learning_rate": 0.01, "power": 2.0}),
    (
        "PolynomialDecay",
        {"initial_learning_rate": 0.1, "decay_steps": 30, "end_learning_rate": 0.01, "power": 0.5, "cycle": True},
    ),
    ("InverseTimeDecay", {"initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.5}),
    ("InverseTimeDecay", {"initial_learning_rate": 0.1, "decay_steps": 10, "decay_rate": 0.5, "staircase": True}),
    ("CosineDecay", {"initial_learning_rate": 0.1, "decay_steps": 100}),
    ("CosineDecay", {"initial_learning_rate": 0.1, "decay_steps": 100, "alpha": 0.1}),
    (
        "CosineDecay",
        {"initial_learning_rate": 0.0, "decay_steps": 100, "alpha": 0.05, "warmup_target": 0.5, "warmup_steps": 20},
    ),
    ("CosineDecayRestarts", {"initial_learning_rate": 0.1, "first_decay_steps": 20}),
    ("CosineDecayRestarts", {"initial_learning_rate": 0.1, "first_decay_steps": 20, "t_mul": 1.0}),
    (
        "CosineDecayRestarts",
        {"initial_learning_rate": 0.1, "first_decay_steps": 15, "t_mul": 1.5, "m_mul": 0.8, "alpha": 0.05},
    ),
]


def make_inputs():
    rng = np.random.default_rng(20261125)
    init = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    grads = []
    for step in range(STEPS):
        g = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
        if step == ZERO_STEP:
            g = [np.zeros_like(x) for x in g]
        if step in LARGE_STEPS:
            g = [x * np.float32(1e3) for x in g]
        grads.append(g)
    return init, grads


def build_kwargs(kwargs):
    out = {}
    for key, value in kwargs.items():
        if key == "learning_rate" and isinstance(value, dict):
            ((cls, args),) = value.items()
            value = getattr(keras.optimizers.schedules, cls)(**args)
        out[key] = value
    return out


def run_case(cls_name, kwargs, init, grads):
    opt = getattr(keras.optimizers, cls_name)(**build_kwargs(kwargs))
    variables = [keras.Variable(x.copy(), name=f"var{i}") for i, x in enumerate(init)]
    trajectory = []
    for g in grads:
        opt.apply_gradients(zip([keras.ops.convert_to_tensor(x) for x in g], variables))
        trajectory.append(np.concatenate([np.asarray(keras.ops.convert_to_numpy(v)).ravel() for v in variables]))
    ema = None
    if kwargs.get("use_ema"):
        ema = np.concatenate(
            [np.asarray(keras.ops.convert_to_numpy(a)).ravel() for a in opt._model_variables_moving_average]
        )
    return np.stack(trajectory), ema, int(keras.ops.convert_to_numpy(opt.iterations))


def main():
    init, grads = make_inputs()
    arrays = {
        "init": np.concatenate([x.ravel() for x in init]),
        "grads": np.stack([np.concatenate([x.ravel() for x in g]) for g in grads]),
    }
    cases = []
    for cls_name in OPTIMIZERS:
        plans = [("default", {}), ("lr", {"learning_rate": 0.05})]
        plans += [(f"variant{i}", v) for i, v in enumerate(VARIANTS.get(cls_name, []))]
        plans += list(GENERIC.items())
        for label, kwargs in plans:
            case_id = f"{cls_name}/{label}"
            trajectory, ema, iterations = run_case(cls_name, kwargs, init, grads)
            arrays[f"{case_id}/params"] = trajectory
            if ema is not None:
                arrays[f"{case_id}/ema"] = ema
            cases.append({"id": case_id, "keras_class": cls_name, "kwargs": kwargs, "iterations": iterations})
            print(case_id, "final |p| =", float(np.abs(trajectory[-1]).sum()))
    manifest = {
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "shapes": SHAPES,
        "steps": STEPS,
        "cases": cases,
    }
    (HERE / "keras_optimizers.json").write_text(json.dumps(manifest, indent=1) + "\n")
    np.savez_compressed(HERE / "keras_optimizers.npz", **arrays)

    steps = np.arange(301)
    schedule_cases = []
    for cls_name, kwargs in SCHEDULES:
        schedule = getattr(keras.optimizers.schedules, cls_name)(**kwargs)
        values = [float(keras.ops.convert_to_numpy(schedule(int(s)))) for s in steps]
        schedule_cases.append({"keras_class": cls_name, "kwargs": kwargs, "values": values})
    (HERE / "keras_schedules.json").write_text(
        json.dumps({"keras_version": keras.__version__, "steps": len(steps), "cases": schedule_cases}) + "\n"
    )


if __name__ == "__main__":
    main()
