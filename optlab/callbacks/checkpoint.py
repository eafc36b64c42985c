"""Checkpoints: ``BackupAndRestore`` (resume a killed run exactly) and ``ModelCheckpoint`` (keep parameters).

Both write one ``.npz`` file (arrays, plus JSON metadata; no pickle) through a temporary file
and an atomic rename, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from ..hparams import Hyper
from ..optimizers.base import load_npz, save_npz_atomic
from .base import Callback, Monitor, _closest

BACKUP_FORMAT = "optlab.backup/1"
CHECKPOINT_FORMAT = "optlab.checkpoint/1"


def _encode(value, arrays: dict, prefix: str):
    """JSON-able form of ``value``; numpy arrays are moved into ``arrays`` under ``prefix``."""
    if isinstance(value, np.ndarray):
        arrays[prefix] = value
        return {"__array__": prefix}
    if isinstance(value, dict):
        return {k: _encode(v, arrays, f"{prefix}/{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, arrays, f"{prefix}/{i}") for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode(value, arrays: dict):
    if isinstance(value, dict):
        if set(value) == {"__array__"}:
            return arrays[value["__array__"]]
        return {k: _decode(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    return value


class BackupAndRestore(Callback):
    """Back up the whole run to ``backup_dir``; a new run with the same backup_dir resumes from it.

    Saved: the parameters, the optimizer's state (slots, step counter, EMA, accumulators,
    learning rate), the loop's position (epoch, batch, step), the gradient-noise generator's
    state, and every other callback's state (``Callback.get_state``). ``save_freq="epoch"``
    saves after every epoch, an integer N every N steps. With ``delete_checkpoint`` the backup
    is removed when training ends normally. A resumed run ends with exactly the parameters of
    one that never stopped.
    """

    registry_name = "backup_and_restore"
    backup_dir = Hyper(Hyper.REQUIRED, kind=str, doc="directory of the backup")
    save_freq = Hyper("epoch", kind=object, doc='"epoch" or a number of steps')
    delete_checkpoint = Hyper(True, kind=bool, doc="remove the backup when training ends")
    runs_last = True  # the trainer calls it after the other callbacks, so it saves their final state

    def check(self):
        if self.save_freq != "epoch" and not (
            isinstance(self.save_freq, int) and not isinstance(self.save_freq, bool) and self.save_freq >= 1
        ):
            raise ValueError(
                f'BackupAndRestore: `save_freq` must be "epoch" or an integer >= 1; received {self.save_freq!r}'
            )

    @property
    def path(self) -> Path:
        return Path(self.backup_dir) / "backup.npz"

    def on_train_begin(self, logs=None):
        self._since = 0
        if self.path.exists():
            self._restore()

    def _others(self):
        return [cb for cb in self.trainer.callbacks if cb is not self]

    def _save(self, epoch_done: bool):
        trainer = self.trainer
        arrays: dict[str, np.ndarray] = {"params": trainer.params.flat}
        opt_meta, opt_arrays = trainer.optimizer.get_state()
        arrays.update({f"optimizer/{k}": v for k, v in opt_arrays.items()})
        states = []
        for i, cb in enumerate(self._others()):
            state = cb.get_state()
            if state:  # stateless callbacks (a progress bar) may differ between the runs
                states.append({"class": type(cb).__name__, "state": _encode(state, arrays, f"callback/{i}")})
        meta = {
            "format": BACKUP_FORMAT,
            "position": trainer.position(),
            "epoch_done": epoch_done,
            "stopped": bool(trainer.stop_training),
            "optimizer": opt_meta,
            "callbacks": states,
        }
        os.makedirs(self.backup_dir, exist_ok=True)
        save_npz_atomic(self.path, meta, arrays)

    def _restore(self):
        trainer = self.trainer
        meta, arrays = load_npz(self.path)
        if meta.get("format") != BACKUP_FORMAT:
            raise ValueError(f"{self.path} is not an optlab backup (format {meta.get('format')!r})")
        if arrays["params"].shape != trainer.params.flat.shape:
            raise ValueError(
                f"{self.path} holds {arrays['params'].size} parameters but the problem has "
                f"{trainer.params.flat.size}: it is the backup of another run"
            )
        saved: dict[str, list] = {}
        for entry in meta["callbacks"]:
            saved.setdefault(entry["class"], []).append(entry["state"])
        trainer.params.flat[...] = arrays["params"]
        trainer.optimizer.set_state(
            meta["optimizer"], {k[len("optimizer/") :]: v for k, v in arrays.items() if k.startswith("optimizer/")}
        )
        for cb in self._others():  # the k-th callback of a class gets the k-th saved state of that class
            states = saved.get(type(cb).__name__)
            if states:
                cb.set_state(_decode(states.pop(0), arrays))
        unused = [name for name, states in saved.items() for _ in states]
        if unused:
            warnings.warn(
                f"{self.path} holds the state of callbacks this run does not have: {unused}; it is ignored",
                stacklevel=2,
            )
        trainer.restore_position(meta["position"], meta["epoch_done"])
        if meta["stopped"]:
            trainer.initial_epoch = trainer.epochs  # it had stopped: only on_train_end is left

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        self._since += 1
        if self._since >= self.save_freq:
            self._since = 0
            self._save(epoch_done=False)

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch_done=True)

    def on_train_end(self, logs=None):
        if self.delete_checkpoint and self.path.exists():
            shutil.rmtree(self.backup_dir, ignore_errors=True)


class ModelCheckpoint(Monitor):
    """Save the parameters (and the optimizer's state) after every epoch or every few batches, or only the best ones.

    ``filepath`` may contain ``{epoch}`` (1-based), ``{batch}`` (1-based, when saving by
    batches) and any logged name, e.g. ``"ckpt/e{epoch:03d}-{val_loss:.3f}.npz"``. With
    ``save_best_only``, a file is written only when ``monitor`` improves; as in Keras, when
    ``monitor`` is not logged at that point the file is written anyway, with a warning.
    ``load_checkpoint(path)`` reads one back.
    """

    registry_name = "model_checkpoint"
    positional = (
        "filepath",
        "monitor",
        "verbose",
        "save_best_only",
        "save_weights_only",
        "mode",
        "save_freq",
        "initial_value_threshold",
    )
    filepath = Hyper(Hyper.REQUIRED, kind=str, doc="file to write (a format string)")
    verbose = Hyper(0, kind=int, low=0, doc="print when saving")
    save_best_only = Hyper(False, kind=bool, doc="save only when the monitored value improves")
    save_weights_only = Hyper(False, kind=bool, doc="save the parameters only, not the optimizer's state")
    save_freq = Hyper("epoch", kind=object, doc='"epoch", or an integer: save after every this many batches')
    initial_value_threshold = Hyper(None, optional=True, doc="a value the first save must beat")

    def check(self):
        freq = self.save_freq
        if freq != "epoch" and (not isinstance(freq, int) or isinstance(freq, bool) or freq < 1):
            raise ValueError(
                f"ModelCheckpoint: `save_freq` must be 'epoch' or an integer >= 1; received save_freq={freq!r}"
            )

    def check_logs(self, names: set[str]) -> None:
        import string

        batch_level = self.save_freq != "epoch"
        fields = {"epoch", *(("batch",) if batch_level else ())}
        # a batch-level save sees the batch's logs: loss and learning rate only
        available = fields | ({"loss", "learning_rate"} if batch_level else set(names))
        for _, field, _, _ in string.Formatter().parse(self.filepath):
            key = (field or "").split(".")[0].split("[")[0]
            if field is not None and key not in available:
                raise ValueError(
                    f'ModelCheckpoint: filepath "{self.filepath}" uses {{{key}}}, which is not logged '
                    f"{'at a batch' if batch_level else 'by this run'}{_closest(key, available)}; "
                    f"available: {', '.join(sorted(available))}"
                )
        if self.save_best_only and not batch_level:
            super().check_logs(names)

    def on_train_begin(self, logs=None):
        if not hasattr(self, "best") or self.trainer.initial_epoch == 0:
            self.best = self.initial_value_threshold
            self._batches_since_save = 0

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        self._batches_since_save += 1
        if self._batches_since_save >= self.save_freq:
            self._batches_since_save = 0
            self._save(self.trainer.epoch, batch, logs or {})

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self._save(epoch, None, logs or {})

    def _save(self, epoch: int, batch: int | None, logs: dict) -> None:
        if self.save_best_only:
            current = self._current(logs, "Can save best model only with")
            if current is not None:
                if not self._is_improvement(current, self.best):
                    return
                self.best = current
        fields = {"epoch": epoch + 1, **({"batch": batch + 1} if batch is not None else {}), **logs}
        try:
            path = self.filepath.format(**fields)
        except (KeyError, IndexError) as error:
            raise ValueError(
                f'ModelCheckpoint: cannot fill filepath "{self.filepath}": {error} is not logged here '
                f"(available: {', '.join(fields)})"
            ) from None
        trainer = self.trainer
        arrays = {f"param/{i}": np.array(p) for i, p in enumerate(trainer.params)}
        meta = {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "batch": batch,
            "step": trainer.step,
            "logs": {k: float(v) for k, v in logs.items() if isinstance(v, (int, float, np.floating))},
            "problem": trainer.problem.get_config(),
        }
        if not self.save_weights_only:
            opt_meta, opt_arrays = trainer.optimizer.get_state()
            arrays.update({f"optimizer/{k}": v for k, v in opt_arrays.items()})
            meta["optimizer"] = opt_meta
        if os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        save_npz_atomic(path, meta, arrays)
        if self.verbose > 0:
            where = f"Epoch {epoch + 1}" + (f", batch {batch + 1}" if batch is not None else "")
            print(f"\n{where}: saving model to {path}")

    def get_state(self):
        return {"best": self.best, "batches_since_save": self._batches_since_save}

    def set_state(self, state):
        self.best = state["best"]
        self._batches_since_save = state.get("batches_since_save", 0)


def load_checkpoint(path) -> tuple[list[np.ndarray], dict]:
    """The parameters saved by ``ModelCheckpoint`` and its metadata (epoch, logs, problem config)."""
    meta, arrays = load_npz(path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an optlab checkpoint (format {meta.get('format')!r})")
    n = sum(1 for k in arrays if k.startswith("param/"))
    return [arrays[f"param/{i}"] for i in range(n)], meta
