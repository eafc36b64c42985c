"""Write keras_configs.json: Keras 3's own get_config() / serialize() output for every optimizer.

Run in a scratch environment with Keras (never an optlab dependency)::

    python -m venv /tmp/kvenv && /tmp/kvenv/bin/pip install keras jax
    KERAS_BACKEND=numpy /tmp/kvenv/bin/python tests/reference/make_keras_configs.py
"""

import json
from pathlib import Path

import keras
from keras import optimizers

CLASSES = ["SGD", "RMSprop", "Adam", "AdamW", "Adagrad", "Adadelta", "Adamax", "Nadam", "Ftrl", "Lion", "Lamb",
           "Adafactor", "Muon", "ScheduleFreeAdamW"]  # fmt: skip


def main():
    out = {"keras_version": keras.__version__, "default": {}, "named": {}, "two_defaults": {}, "serialized": {}}
    for name in CLASSES:
        cls = getattr(optimizers, name)
        first, second = cls(), cls()
        out["default"][name] = first.get_config()
        out["two_defaults"][name] = [first.name, second.name]
        out["named"][name] = cls(name="my_label", learning_rate=0.5).get_config()
    schedule = optimizers.schedules.CosineDecay(0.1, 10, name="warm")
    out["serialized"]["Adam_with_schedule"] = optimizers.serialize(
        optimizers.Adam(learning_rate=schedule, name="my_adam", clipnorm=1.0)
    )
    path = Path(__file__).parent / "keras_configs.json"
    path.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
