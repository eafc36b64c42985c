"""How a run's configuration and logged names become MLflow params and metric keys (standard library only)."""

from __future__ import annotations


def flatten(config, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(config, dict):
        for key, value in config.items():
            out.update(flatten(value, f"{prefix}{key}."))
    else:
        out[prefix[:-1]] = str(config)[:6000]
    return out


#: config keys that are bookkeeping, not the experiment: kept in the run's config.yaml, not as params
BOOKKEEPING = ("tracking", "trainer.progress_bar", "print_every_epoch")


def params_of(config: dict) -> dict[str, str]:
    """The run's params as a user thinks of the configuration: flattened, without unset values
    (None, empty lists) and without bookkeeping (``BOOKKEEPING``)."""
    out = {}
    for key, value in flatten(config).items():
        if value in ("None", "[]", "{}") or any(key == b or key.startswith(b + ".") for b in BOOKKEEPING):
            continue
        out[key] = value
    return out


#: logged names that are coordinates of the parameters (the 2-D functions' x, y; the tutorial's a, b)
POSITIONS = {"x", "y", "a", "b"}


def metric_key(name: str) -> str:
    """The MLflow key of a logged name, grouped so that the UI draws sections: ``val_loss`` ->
    ``val/loss``, ``x`` -> ``position/x``, the rest of an epoch's logs -> ``train/<name>``
    (``train/loss`` is the epoch's mean loss, as the command line prints it)."""
    if name.startswith("val_"):
        return "val/" + name[4:]
    if name in POSITIONS:
        return "position/" + name
    return "train/" + name


#: the per-step keys: each batch's loss (where an epoch has several) and the learning rate
STEP_LOSS, RATE = "train/loss_step", "train/learning_rate"


#: the tag that marks a sweep's parent run (``optlab.kind = sweep``)
KIND_TAG = "optlab.kind"
#: the tag of a study's parent and child runs: the study's ``<name>-<hash>``
STUDY_TAG = "optlab.study"
