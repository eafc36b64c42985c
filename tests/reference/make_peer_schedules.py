"""Write peer_schedules.json: learning rates from optax's and torch's own schedules, step by step.

Run in a scratch environment with the peers (never optlab dependencies)::

    python -m venv /tmp/peervenv && /tmp/peervenv/bin/pip install optax jax torch
    /tmp/peervenv/bin/python tests/reference/make_peer_schedules.py

Each case names the peer's call (as text, for the reader), the optlab config that should give
the same rates, and the peer's rate at steps 0, 1, ... (the step is the number of updates done
before the one the rate serves). optax runs in float64 (``jax_enable_x64``). A torch scheduler
is stepped as in training: the rate before any ``scheduler.step()`` serves step 0, the rate
after the k-th ``scheduler.step()`` serves step k; ``optimizer.param_groups[0]["lr"]`` is read.
"""

import json
import warnings
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
from torch.optim import lr_scheduler as tl  # noqa: E402


def optax_values(schedule, steps):
    return [float(schedule(jnp.asarray(t, dtype=jnp.int64))) for t in range(steps)]


def torch_values(make, steps, lr):
    """Rates of ``make(optimizer)`` for steps 0 .. steps-1, on SGD with momentum (CyclicLR and
    OneCycleLR cycle the momentum by default) starting at ``lr``."""
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=lr, momentum=0.9)
    scheduler = make(optimizer)
    values = [optimizer.param_groups[0]["lr"]]
    for _ in range(steps - 1):
        optimizer.step()  # no gradient: nothing moves, but the order is the one of training
        scheduler.step()
        values.append(optimizer.param_groups[0]["lr"])
    return [float(v) for v in values]


def poly(initial, steps, end):
    """optlab's linear ramp (polynomial_decay of power 1), e.g. torch's LinearLR on a rate."""
    return {
        "name": "polynomial_decay",
        "initial_learning_rate": initial,
        "decay_steps": steps,
        "end_learning_rate": end,
        "power": 1.0,
    }


def cases():
    out = []

    def add(peer, call, optlab, values, note=""):
        out.append({"peer": peer, "call": call, "optlab": optlab, "values": values, "note": note})

    # -- sequences of schedules -----------------------------------------------------------------
    add(
        "optax",
        "join_schedules([linear_schedule(0.0, 0.1, 5), cosine_decay_schedule(0.1, 20, alpha=0.05)], [5])",
        {
            "name": "sequential_schedule",
            "boundaries": [5],
            "schedules": [
                poly(0.0, 5, 0.1),
                {"name": "cosine_decay", "initial_learning_rate": 0.1, "decay_steps": 20, "alpha": 0.05},
            ],
        },
        optax_values(
            optax.join_schedules(
                [optax.linear_schedule(0.0, 0.1, 5), optax.cosine_decay_schedule(0.1, 20, alpha=0.05)], [5]
            ),
            41,
        ),
    )
    add(
        "optax",
        "join_schedules([constant_schedule(0.05), exponential_decay(0.1, 3, 0.5, staircase=True), "
        "piecewise_constant_schedule(0.02, {4: 0.5})], [3, 10])",
        {
            "name": "sequential_schedule",
            "boundaries": [3, 10],
            "schedules": [
                0.05,
                {
                    "name": "exponential_decay",
                    "initial_learning_rate": 0.1,
                    "decay_steps": 3,
                    "decay_rate": 0.5,
                    "staircase": True,
                },
                {"name": "multi_step_decay", "initial_learning_rate": 0.02, "milestones": [4], "gamma": 0.5},
            ],
        },
        optax_values(
            optax.join_schedules(
                [
                    optax.constant_schedule(0.05),
                    optax.exponential_decay(0.1, 3, 0.5, staircase=True),
                    optax.piecewise_constant_schedule(0.02, {4: 0.5}),
                ],
                [3, 10],
            ),
            26,
        ),
    )
    add(
        "optax",
        "warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=4, decay_steps=24, end_value=0.1)",
        {
            "name": "sequential_schedule",
            "boundaries": [4],
            "schedules": [
                poly(0.0, 4, 1.0),
                {"name": "cosine_decay", "initial_learning_rate": 1.0, "decay_steps": 20, "alpha": 0.1},
            ],
        },
        optax_values(optax.warmup_cosine_decay_schedule(0.0, 1.0, 4, 24, end_value=0.1), 36),
    )
    add(
        "torch",
        "lr=0.1: SequentialLR([LinearLR(start_factor=0.1, end_factor=1.0, total_iters=5), "
        "CosineAnnealingLR(T_max=15, eta_min=0.001)], milestones=[5])",
        {
            "name": "sequential_schedule",
            "boundaries": [5],
            "schedules": [
                poly(0.01, 5, 0.1),
                {"name": "cosine_decay", "initial_learning_rate": 0.1, "decay_steps": 15, "alpha": 0.01},
            ],
        },
        torch_values(
            lambda o: tl.SequentialLR(o, [tl.LinearLR(o, 0.1, 1.0, 5), tl.CosineAnnealingLR(o, 15, 0.001)], [5]),
            21,
            0.1,
        ),
        "steps 0..20: torch's CosineAnnealingLR rises again after T_max, cosine_decay holds its end value",
    )
    add(
        "torch",
        "lr=0.2: SequentialLR([ConstantLR(factor=0.5, total_iters=3), ExponentialLR(gamma=0.9), "
        "StepLR(step_size=3, gamma=0.5)], milestones=[4, 10])",
        {
            "name": "sequential_schedule",
            "boundaries": [4, 10],
            "schedules": [
                {"name": "piecewise_constant_decay", "boundaries": [2], "values": [0.1, 0.2]},
                {"name": "exponential_decay", "initial_learning_rate": 0.2, "decay_steps": 1, "decay_rate": 0.9},
                {
                    "name": "exponential_decay",
                    "initial_learning_rate": 0.2,
                    "decay_steps": 3,
                    "decay_rate": 0.5,
                    "staircase": True,
                },
            ],
        },
        torch_values(
            lambda o: tl.SequentialLR(
                o, [tl.ConstantLR(o, 0.5, 3), tl.ExponentialLR(o, 0.9), tl.StepLR(o, 3, 0.5)], [4, 10]
            ),
            26,
            0.2,
        ),
    )

    # -- one-cycle ------------------------------------------------------------------------------
    for steps, peak, kwargs, n in [
        (20, 0.1, {}, 31),
        (33, 1.0, {"pct_start": 0.25, "div_factor": 10.0, "final_div_factor": 100.0}, 41),
        (7, 0.5, {"pct_start": 0.1}, 10),  # the peak at floor(0.7) = 0: the cycle starts at the top
    ]:
        add(
            "optax",
            f"cosine_onecycle_schedule({steps}, {peak}, **{kwargs})",
            {"name": "one_cycle", "peak_learning_rate": peak, "total_steps": steps, **kwargs},
            optax_values(optax.cosine_onecycle_schedule(steps, peak, **kwargs), n),
        )
    for steps, peak, kwargs, n in [
        (20, 0.1, {}, 31),
        (25, 2.0, {"pct_start": 0.2, "pct_final": 0.7, "div_factor": 5.0, "final_div_factor": 50.0}, 31),
    ]:
        add(
            "optax",
            f"linear_onecycle_schedule({steps}, {peak}, **{kwargs})",
            {
                "name": "one_cycle",
                "peak_learning_rate": peak,
                "total_steps": steps,
                "anneal_strategy": "linear",
                "pct_final": 0.85,
                **kwargs,
            },
            optax_values(optax.linear_onecycle_schedule(steps, peak, **kwargs), n),
        )
    torch_onecycle = [
        (20, 0.1, {}),
        (33, 1.0, {"pct_start": 0.25, "anneal_strategy": "linear", "div_factor": 10.0, "final_div_factor": 100.0}),
        (30, 0.5, {"three_phase": True}),
        (17, 0.5, {"pct_start": 0.4, "three_phase": True, "anneal_strategy": "linear"}),
        (3, 0.2, {}),  # the peak at 0.3 * 3 - 1 < 0: the cycle starts on its way down
    ]
    for steps, peak, kwargs in torch_onecycle:
        config = {
            "name": "one_cycle",
            "peak_learning_rate": peak,
            "total_steps": steps,
            "convention": "torch",
            **{k: v for k, v in kwargs.items() if k != "three_phase"},
        }
        if kwargs.get("three_phase"):
            config["pct_final"] = 2 * kwargs.get("pct_start", 0.3)
        add(
            "torch",
            f"lr=1.0: OneCycleLR(max_lr={peak}, total_steps={steps}, **{kwargs})",
            config,
            torch_values(
                lambda o, steps=steps, peak=peak, kwargs=kwargs: tl.OneCycleLR(o, peak, total_steps=steps, **kwargs),
                steps,
                1.0,
            ),
            "steps 0..total_steps-1: torch extrapolates at step total_steps and raises after it",
        )

    # -- step and multi-step decay --------------------------------------------------------------
    for lr, size, gamma in [(0.1, 3, 0.5), (1.0, 7, 0.3)]:
        add(
            "torch",
            f"lr={lr}: StepLR(step_size={size}, gamma={gamma})",
            {
                "name": "exponential_decay",
                "initial_learning_rate": lr,
                "decay_steps": size,
                "decay_rate": gamma,
                "staircase": True,
            },
            torch_values(lambda o, size=size, gamma=gamma: tl.StepLR(o, size, gamma), 30, lr),
        )
    add(
        "optax",
        "exponential_decay(0.1, transition_steps=4, decay_rate=0.5, staircase=True)",
        {
            "name": "exponential_decay",
            "initial_learning_rate": 0.1,
            "decay_steps": 4,
            "decay_rate": 0.5,
            "staircase": True,
        },
        optax_values(optax.exponential_decay(0.1, 4, 0.5, staircase=True), 21),
    )
    for lr, milestones, gamma in [(0.5, [3, 7, 12], 0.1), (1.0, [0, 5, 5, 9], 0.5)]:
        add(
            "torch",
            f"lr={lr}: MultiStepLR(milestones={milestones}, gamma={gamma})",
            {"name": "multi_step_decay", "initial_learning_rate": lr, "milestones": milestones, "gamma": gamma},
            torch_values(lambda o, m=milestones, g=gamma: tl.MultiStepLR(o, m, g), 21, lr),
        )
    add(
        "optax",
        "piecewise_constant_schedule(0.5, {3: 0.1, 7: 0.1, 12: 0.1})",
        {"name": "multi_step_decay", "initial_learning_rate": 0.5, "milestones": [3, 7, 12], "gamma": 0.1},
        optax_values(optax.piecewise_constant_schedule(0.5, {3: 0.1, 7: 0.1, 12: 0.1}), 21),
    )
    add(
        "optax",
        "piecewise_constant_schedule(1.0, {3: 0.5, 7: 0.2})",
        {"name": "piecewise_constant_decay", "boundaries": [2, 6], "values": [1.0, 0.5, 0.1]},
        optax_values(optax.piecewise_constant_schedule(1.0, {3: 0.5, 7: 0.2}), 15),
        "Keras's boundaries keep the old value at the boundary step: optax's boundary b is b - 1 there",
    )

    # -- cyclical -------------------------------------------------------------------------------
    for kwargs, optlab, n in [
        ({"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 4}, {"step_size": 4}, 31),
        (
            {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 3, "step_size_down": 5, "mode": "triangular2"},
            {"step_size": 3, "step_size_down": 5, "mode": "triangular2"},
            41,
        ),
        (
            {"base_lr": 0.0, "max_lr": 1.0, "step_size_up": 5, "mode": "exp_range", "gamma": 0.95},
            {"step_size": 5, "mode": "exp_range", "gamma": 0.95},
            41,
        ),
        ({"base_lr": 0.02, "max_lr": 0.3, "step_size_up": 2.5}, {"step_size": 2.5}, 21),
    ]:
        add(
            "torch",
            f"CyclicLR(**{kwargs})",
            {
                "name": "cyclical_learning_rate",
                "initial_learning_rate": kwargs["base_lr"],
                "maximal_learning_rate": kwargs["max_lr"],
                **optlab,
            },
            torch_values(lambda o, kwargs=kwargs: tl.CyclicLR(o, **kwargs), n, 1.0),
        )

    # -- warmup-stable-decay --------------------------------------------------------------------
    add(
        "optax",
        "join_schedules([linear_schedule(0.0, 1.0, 5), constant_schedule(1.0), linear_schedule(1.0, 0.0, 10)], "
        "[5, 40])",
        {
            "name": "warmup_stable_decay",
            "peak_learning_rate": 1.0,
            "total_steps": 50,
            "warmup_steps": 5,
            "decay_fraction": 0.2,
        },
        optax_values(
            optax.join_schedules(
                [optax.linear_schedule(0.0, 1.0, 5), optax.constant_schedule(1.0), optax.linear_schedule(1.0, 0.0, 10)],
                [5, 40],
            ),
            56,
        ),
    )
    add(
        "optax",
        "join_schedules([linear_schedule(0.01, 0.5, 3), constant_schedule(0.5), "
        "cosine_decay_schedule(0.5, 8, alpha=0.2)], [3, 12])",
        {
            "name": "warmup_stable_decay",
            "peak_learning_rate": 0.5,
            "total_steps": 20,
            "warmup_steps": 3,
            "decay_fraction": 0.4,
            "decay_type": "cosine",
            "initial_learning_rate": 0.01,
            "end_learning_rate": 0.1,
        },
        optax_values(
            optax.join_schedules(
                [
                    optax.linear_schedule(0.01, 0.5, 3),
                    optax.constant_schedule(0.5),
                    optax.cosine_decay_schedule(0.5, 8, alpha=0.2),
                ],
                [3, 12],
            ),
            26,
        ),
    )
    add(
        "optax",
        "join_schedules([constant_schedule(0.3), linear_schedule(0.3, 0.03, 10)], [30])",
        {
            "name": "warmup_stable_decay",
            "peak_learning_rate": 0.3,
            "total_steps": 40,
            "decay_fraction": 0.25,
            "end_learning_rate": 0.03,
        },
        optax_values(
            optax.join_schedules([optax.constant_schedule(0.3), optax.linear_schedule(0.3, 0.03, 10)], [30]), 46
        ),
    )
    add(
        "torch",
        "lr=0.2: SequentialLR([LinearLR(0.1, 1.0, total_iters=4), ConstantLR(factor=1.0, total_iters=1), "
        "LinearLR(1.0, 0.05, total_iters=8)], milestones=[4, 12])",
        {
            "name": "warmup_stable_decay",
            "peak_learning_rate": 0.2,
            "total_steps": 20,
            "warmup_steps": 4,
            "decay_fraction": 0.4,
            "initial_learning_rate": 0.02,
            "end_learning_rate": 0.01,
        },
        torch_values(
            lambda o: tl.SequentialLR(
                o, [tl.LinearLR(o, 0.1, 1.0, 4), tl.ConstantLR(o, 1.0, 1), tl.LinearLR(o, 1.0, 0.05, 8)], [4, 12]
            ),
            26,
            0.2,
        ),
    )
    add(
        "torch",
        "lr=0.1: SequentialLR([LinearLR(0.01, 1.0, total_iters=5), ConstantLR(factor=1.0, total_iters=1), "
        "CosineAnnealingLR(T_max=10, eta_min=0.0)], milestones=[5, 30])",
        {
            "name": "warmup_stable_decay",
            "peak_learning_rate": 0.1,
            "total_steps": 40,
            "warmup_steps": 5,
            "decay_fraction": 0.25,
            "decay_type": "cosine",
            "initial_learning_rate": 0.001,
        },
        torch_values(
            lambda o: tl.SequentialLR(
                o, [tl.LinearLR(o, 0.01, 1.0, 5), tl.ConstantLR(o, 1.0, 1), tl.CosineAnnealingLR(o, 10, 0.0)], [5, 30]
            ),
            41,
            0.1,
        ),
        "steps 0..40: torch's CosineAnnealingLR rises again after T_max, warmup_stable_decay holds its end value",
    )
    return out


def main():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation notes about its own internals
        data = cases()
    out = {"versions": {"optax": optax.__version__, "jax": jax.__version__, "torch": torch.__version__}, "cases": data}
    path = Path(__file__).parent / "peer_schedules.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {len(data)} cases, {sum(len(c['values']) for c in data)} values to {path}")


if __name__ == "__main__":
    main()
