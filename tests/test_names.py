"""The one "did you mean" rule behind every unknown-name message."""

from __future__ import annotations

import pytest

import optlab
from optlab.names import closest, did_you_mean


@pytest.mark.parametrize(
    ("name", "candidates", "expected"),
    [
        ("adamm", ["adam", "adamw", "sgd"], "adam"),
        ("ADAMM", ["adam", "sgd"], "adam"),  # case does not matter
        ("betta_1", ["beta_1", "beta_2", "epsilon"], "beta_1"),
        ("Val_Loss", ["val_loss", "loss"], "val_loss"),
        ("qwerty", ["adam", "sgd"], None),  # nothing similar enough
        ("adam", [], None),
        (None, ["none", "adam"], None),  # not a string: no guess
    ],
)
def test_closest(name, candidates, expected):
    assert closest(name, candidates) == expected


def test_did_you_mean_is_a_message_tail():
    assert did_you_mean("val_los", {"val_loss", "loss"}) == " (did you mean 'val_loss'?)"
    assert did_you_mean("zzz", {"val_loss"}) == ""


def test_the_library_messages_use_it():
    with pytest.raises(ValueError, match="Did you mean 'rmsprop'"):
        optlab.optimizers.get("RMSProb")
    with pytest.raises(ValueError, match=r"`epsilom` \(did you mean `epsilon`\?\)"):
        optlab.optimizers.Adam(epsilom=1e-8)
    with pytest.raises(ValueError, match=r"not logged by this run \(did you mean 'val_loss'\?\)"):
        optlab.callbacks.EarlyStopping(monitor="val_los").check_logs({"val_loss", "loss"})
