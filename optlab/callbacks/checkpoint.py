"""Checkpoints: ``BackupAndRestore`` (resume a killed run exactly) and ``ModelCheckpoint`` (keep parameters).

Both write one ``.npz`` file (arrays, plus JSON metadata; no pickle) through a temporary file
and an atomic rename, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import string
import warnings
from pathlib import Path

import numpy as np

from ..files import StateFileError, load_npz, name_max, save_npz_atomic
from ..hparams import Hyper
from ..names import did_you_mean
from .base import Callback, Monitor, check_fields, check_writable, is_count, is_number

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
    saves after every epoch, an integer N every N steps. A resumed run ends with exactly the
    parameters of one that never stopped.

    The backup also records the settings that define the run: the optimizer (its class and
    configuration, a learning-rate schedule's included), the problem (its name and
    configuration), the trainer's ``seed``, ``batch_size``, ``dtype`` and ``epochs``. A run
    that finds a backup made with other settings refuses to resume from it (a ``ValueError``
    naming each difference, raised before anything is restored) instead of continuing a mixture
    of the two. ``epochs`` alone may differ — more to continue a run for longer, fewer to end it
    sooner — but not fewer than the epochs the backup has already (partly) run. A backup written
    by an older optlab, without that record, is resumed with a warning.

    The backup is one file, ``backup_dir/backup.npz``. With ``delete_checkpoint`` it is removed
    when training ends normally — that file only: anything else in ``backup_dir`` is left alone,
    and the folder itself is removed only if optlab created it (in this run or in the run it
    resumes) and it is then empty. (Keras removes the whole folder; ``backup_dir="."`` there
    deletes the working directory's contents.)
    """

    registry_name = "backup_and_restore"
    backup_dir = Hyper(Hyper.REQUIRED, kind=str, doc="directory of the backup")
    save_freq = Hyper("epoch", kind=int, low=1, choices=("epoch",), doc="save after every epoch, or every N steps")
    delete_checkpoint = Hyper(True, kind=bool, doc="remove the backup file when training ends")
    runs_last = True  # the trainer calls it after the other callbacks, so it saves their final state
    _since = 0
    _pending_states = None
    _created_dirs: tuple | list = ()  # folders this run (or the one it resumes) created, deepest first
    _settings: dict | None = None  # what defines this run, taken before it starts (see run_settings)

    @property
    def path(self) -> Path:
        return Path(self.backup_dir) / "backup.npz"

    def check_files(self):
        check_writable(self.path, "BackupAndRestore: backup_dir")

    def check_resume(self, trainer) -> None:
        if not self.path.exists():
            return
        meta, arrays = load_npz(self.path)
        params = trainer.problem.init(trainer.seed, trainer.dtype)
        with warnings.catch_warnings():  # (an older backup's warning is given once, when it is resumed)
            warnings.simplefilter("ignore")
            self._check_backup(meta, arrays, run_settings(trainer), params.flat, trainer.steps_per_epoch)
        others = [cb for cb in trainer.callbacks if cb is not self]
        self._check_states(meta, arrays, others)
        # the optimizer's state, loaded into a copy built on the run's parameters: a state
        # that does not fit is refused now, before anything is recorded (the load is checked)
        trial = copy.deepcopy(trainer.optimizer)
        names = trainer.problem.parameter_names()
        if not trial.built:
            trial.build(list(params) if names is None else dict(zip(names, params)))
        try:
            trial.set_state(meta["optimizer"], _optimizer_arrays(arrays), restore_learning_rate=True)
        except (ValueError, TypeError, KeyError) as error:
            raise StateFileError(f"{self.path}: its optimizer state cannot be loaded: {error}") from None

    def _check_states(self, meta: dict, arrays: dict, others: list) -> None:
        """Each saved callback state that a callback of this run will take passes its
        ``check_state`` (else a ``StateFileError`` naming the file and the callback)."""
        saved: dict[str, list] = {}
        for entry in meta["callbacks"]:
            saved.setdefault(entry["class"], []).append(entry["state"])
        for cb in others:
            states = saved.get(type(cb).__name__)
            if not states:
                continue
            try:
                cb.check_state(_decode(states.pop(0), arrays))
            except (ValueError, TypeError, KeyError) as error:
                raise StateFileError(
                    f"{self.path} is not a valid optlab backup: the saved state of {type(cb).__name__} is not "
                    f"valid ({error})"
                ) from None

    def resume(self):
        """Restore the parameters, the optimizer and the loop's position from the backup, if there is one.

        Runs before every callback's ``on_train_begin``; the other callbacks' own states are
        handed back in this callback's ``on_train_begin`` (it runs last), after theirs.
        """
        self._since = 0
        self._pending_states = None
        self._created_dirs = []
        # before any step or callback changes the optimizer (a scheduler sets its rate): the settings given
        self._settings = run_settings(self.trainer)
        if self.path.exists():
            self._restore()

    def on_train_begin(self, logs=None):
        if self._pending_states is None:
            return
        saved, arrays = self._pending_states
        self._pending_states = None
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

    def _others(self):
        return [cb for cb in self.trainer.callbacks if cb is not self]

    def _make_dir(self) -> None:
        folder = Path(self.backup_dir).absolute()
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        if missing:
            os.makedirs(self.backup_dir, exist_ok=True)
            self._created_dirs = [*self._created_dirs, *(str(d) for d in missing)]

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
        self._make_dir()
        meta = {
            "format": BACKUP_FORMAT,
            "position": trainer.position(),
            "epoch_done": epoch_done,
            "stopped": bool(trainer.stop_training),
            "optimizer": opt_meta,
            "callbacks": states,
            "created_dirs": [os.path.relpath(d, Path(self.backup_dir).absolute()) for d in self._created_dirs],
            "settings": self._settings if self._settings is not None else run_settings(trainer),
        }
        save_npz_atomic(self.path, meta, arrays)

    def _restore(self):
        """Read and check the whole backup, then put it in place (a bad file changes nothing)."""
        trainer = self.trainer
        meta, arrays = load_npz(self.path)
        settings = self._settings or run_settings(trainer)
        self._check_backup(meta, arrays, settings, trainer.params.flat, trainer.steps_per_epoch)
        params = arrays["params"]
        saved: dict[str, list] = {}
        for entry in meta["callbacks"]:
            saved.setdefault(entry["class"], []).append(entry["state"])
        self._check_states(meta, arrays, self._others())
        trainer.optimizer.set_state(meta["optimizer"], _optimizer_arrays(arrays), restore_learning_rate=True)
        trainer.params.flat[...] = params
        self._pending_states = (saved, arrays)
        self._created_dirs = _created_folders(meta.get("created_dirs", []), self.backup_dir)
        trainer.restore_position(meta["position"], meta["epoch_done"])
        if meta["stopped"]:
            trainer.initial_epoch = trainer.epochs  # it had stopped: only on_train_end is left

    def _check_backup(self, meta: dict, arrays: dict, current: dict, params: np.ndarray, steps: int) -> None:
        """Refuse a backup that is not well formed (a ``StateFileError`` naming the file and
        the field), or that another run made (:meth:`_check_settings`), or whose parameters
        are not ``params``'s size and dtype."""
        if meta.get("format") != BACKUP_FORMAT:
            raise ValueError(f"{self.path} is not an optlab backup (format {meta.get('format')!r})")
        _check_backup_fields(self.path, meta, self.backup_dir)
        self._check_settings(meta, current)
        if meta["position"]["batch"] > steps:  # (the same settings: the same steps per epoch)
            raise StateFileError(
                f"{self.path} is not a valid optlab backup: position.batch is {meta['position']['batch']}, "
                f"more than the {steps} steps of an epoch of this run"
            )
        saved = arrays.get("params")
        if saved is None or saved.shape != params.shape or saved.dtype != params.dtype:
            raise ValueError(
                f"{self.path} holds {getattr(saved, 'size', 0)} parameters of dtype {getattr(saved, 'dtype', '?')} "
                f"but the problem has {params.size} of {params.dtype}: it is the backup of another run"
            )

    def _check_settings(self, meta: dict, current: dict) -> None:
        """Refuse a backup made by a run with other settings (one error naming every difference)."""
        saved = meta.get("settings")
        if saved is None:
            warnings.warn(
                f"{self.path} does not record the settings it was made with (an older optlab's backup): "
                "resuming from it without checking that they are this run's",
                stacklevel=2,
            )
            return
        differences = _differences(
            {k: v for k, v in saved.items() if k != "epochs"}, {k: v for k, v in current.items() if k != "epochs"}
        )
        run = meta.get("position", {}).get("epoch", -1) + 1  # epochs the backup has run, the last maybe in part
        if current["epochs"] < run:
            differences.append(
                f"epochs {_show(saved.get('epochs'))} (backup) vs {current['epochs']} (this run), "
                f"fewer than the {run} the backup has already run"
            )
        if differences:
            raise ValueError(
                f"{self.path} was made by another run, with different settings: {'; '.join(differences)}. "
                "Resume with the same settings, or use another backup_dir (or delete the backup) to start afresh."
            )

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
        if not self.delete_checkpoint:
            return
        # only what this callback wrote: its one file, then the folders it created if now empty
        if self.path.is_file() and not self.path.is_symlink():
            self.path.unlink()
        for folder in self._created_dirs:
            try:
                os.rmdir(folder)  # fails, harmlessly, on a folder that is not empty
            except OSError:
                break


#: how a backup names the folders it created: backup_dir itself and the folders above it
_UPWARD = re.compile(r"\.|\.\.(/\.\.)*")


def _created_folders(entries: list, backup_dir) -> list[str]:
    """The folders a backup says this run (or the one it resumes) created, as absolute paths:
    only ``backup_dir`` and folders above it. Entries are relative to ``backup_dir`` (``"."``,
    ``".."``), so a backup moved with its work folder still knows them; an older optlab's
    absolute entries count only where they still name such a folder (a moved folder's do not,
    and are never removed)."""
    folder = Path(backup_dir).absolute()
    allowed = {os.path.normpath(p) for p in (folder, *folder.parents)}
    found = []
    for entry in entries:
        path = os.path.normpath(entry if os.path.isabs(entry) else os.path.join(folder, entry))
        if path in allowed:
            found.append(path)
    return found


def _optimizer_arrays(arrays: dict) -> dict:
    return {k[len("optimizer/") :]: v for k, v in arrays.items() if k.startswith("optimizer/")}


def _check_backup_fields(path, meta: dict, backup_dir) -> None:
    """Each field ``BackupAndRestore`` reads back has its type and range, else ``StateFileError``.

    ``created_dirs`` (the folders to remove when training ends, if empty) may only name
    ``backup_dir`` and folders above it: a file that names another folder is refused.
    """

    def bad(field, value, wanted):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        return StateFileError(f"{path} is not a valid optlab backup: {field} is {shown}, not {wanted}")

    position = meta.get("position")
    if not isinstance(position, dict):
        raise bad("position", position, "an object")
    for key in ("epoch", "batch", "step", "count"):
        if not is_count(position.get(key)):
            raise bad(f"position.{key}", position.get(key), "an integer >= 0")
    if not is_number(position.get("loss_sum")):
        raise bad("position.loss_sum", position.get("loss_sum"), "a number")
    try:
        np.random.PCG64().state = position.get("noise_rng")
    except (TypeError, ValueError, KeyError, OverflowError):
        raise bad("position.noise_rng", position.get("noise_rng"), "a PCG64 generator's state") from None
    reached = position.get("target_reached")
    if reached is not None and not (
        isinstance(reached, dict)
        and is_count(reached.get("epoch"))
        and is_count(reached.get("step"))
        and is_number(reached.get("seconds"))
    ):
        raise bad("position.target_reached", reached, "null or {epoch, step, seconds}")
    for key in ("epoch_done", "stopped"):
        if not isinstance(meta.get(key), bool):
            raise bad(key, meta.get(key), "true or false")
    if not isinstance(meta.get("optimizer"), dict):
        raise bad("optimizer", meta.get("optimizer"), "an object")
    entries = meta.get("callbacks")
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("class"), str) and "state" in e for e in entries
    ):
        raise bad("callbacks", entries, "a list of {class, state} objects")
    dirs = meta.get("created_dirs", [])
    if not isinstance(dirs, list) or not all(isinstance(d, str) and d for d in dirs):
        raise bad("created_dirs", dirs, "a list of folder names")
    upward = [d for d in dirs if not os.path.isabs(d) and not _UPWARD.fullmatch(d)]
    if upward:  # (absolute entries, an older optlab's, are used only where they still name such a folder)
        raise bad("created_dirs", upward, 'backup_dir (".") or folders above it ("..", "../..", ...)')
    settings = meta.get("settings")
    if settings is not None:
        if not isinstance(settings, dict) or not is_count(settings.get("epochs")):
            raise bad("settings", settings, "an object with epochs")
        if position["epoch"] >= max(settings["epochs"], 1):
            raise bad("position.epoch", position["epoch"], f"below the run's {settings['epochs']} epochs")


def run_settings(trainer) -> dict:
    """What defines a run, as plain JSON data: the optimizer, the problem, seed, batch size, dtype, epochs.

    The optimizer's ``name`` (a label) is left out; its learning rate is the number or the
    schedule's configuration it was given.
    """
    optimizer = {k: v for k, v in trainer.optimizer.get_config().items() if k != "name"}
    problem = {k: v for k, v in trainer.problem.get_config().items() if k != "name"}
    settings = {
        "optimizer": {"class": type(trainer.optimizer).registry_name, **optimizer},
        "problem": {"class": type(trainer.problem).registry_name, **problem},
        "seed": trainer.seed,
        "batch_size": trainer.batch_size,
        "dtype": np.dtype(trainer.dtype).name,
        "epochs": trainer.epochs,
    }
    # the form it has once read back from the file: tuples as lists, numpy scalars as numbers
    return json.loads(json.dumps(settings, allow_nan=True, default=_plain_json))


def _plain_json(value):
    """A JSON stand-in for a setting that is not plain data (a problem's own arrays or objects)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):  # a digest, not the data: the metadata stays small
        data = np.ascontiguousarray(value)
        return {"array": list(data.shape), "dtype": data.dtype.str, "sha1": hashlib.sha1(data.tobytes()).hexdigest()}
    # an object's repr may hold its address, which differs in every process: only its kind is compared
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def _differences(saved, current, where: str = "") -> list[str]:
    """``"<setting> <saved> (backup) vs <current> (this run)"`` for each setting that differs."""
    if isinstance(saved, dict) and isinstance(current, dict):
        if "class" in saved and not _same(saved["class"], current.get("class", _ABSENT)):
            return [f"{where} {_show(saved['class'])} (backup) vs {_show(current.get('class', _ABSENT))} (this run)"]
        found = []
        for key in (k for k in saved if k in current):  # one optlab version may have a setting the other has not
            name = key if key != "class" else ""  # optimizer.class reads as "optimizer"
            label = f"{where}.{name}" if where and name else (where or name)
            found += _differences(saved[key], current[key], label)
        return found
    if _same(saved, current):
        return []
    return [f"{where} {_show(saved)} (backup) vs {_show(current)} (this run)"]


_ABSENT = type("_Absent", (), {"__repr__": lambda self: "(not set)"})()


def _same(a, b) -> bool:
    if type(a) is not type(b) and not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
        return False
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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
    save_freq = Hyper("epoch", kind=int, low=1, choices=("epoch",), doc="save after every epoch, or every N batches")
    initial_value_threshold = Hyper(None, optional=True, allow_inf=True, doc="a value the first save must beat")

    def check(self):
        template_fields(self.filepath, "ModelCheckpoint: filepath")

    def check_logs(self, names: set[str]) -> None:
        batch_level = self.save_freq != "epoch"
        fields = {"epoch", *(("batch",) if batch_level else ())}
        # a batch-level save sees the batch's logs: loss and learning rate only
        available = fields | ({"loss", "learning_rate"} if batch_level else set(names))
        for key, _ in template_fields(self.filepath, "ModelCheckpoint: filepath"):
            if key not in available:
                raise ValueError(
                    f'ModelCheckpoint: filepath "{self.filepath}" uses {{{key}}}, which is not logged '
                    f"{'at a batch' if batch_level else 'by this run'}{did_you_mean(key, available)}; "
                    f"available: {', '.join(sorted(available))}"
                )
        if self.save_best_only and not batch_level:
            super().check_logs(names)

    def check_files(self):
        what = "ModelCheckpoint: filepath"
        fields = template_fields(self.filepath, what)
        limit = name_max(os.path.dirname(self.filepath) or ".")
        for key, spec in fields:
            # a width (or precision) beyond the limit cannot give a usable name; formatting it could
            # take gigabytes ({epoch:9999999999d}), so it is refused before anything is formatted
            if any(int(digits) > limit for digits in re.findall(r"[0-9]+", spec)):
                raise ValueError(
                    f'{what} "{self.filepath}": {{{key}:{spec}}} asks for more than {limit} characters, '
                    f"the longest file name allowed here"
                )
        sample = {key: (1 if key in ("epoch", "batch") else 0.0) for key, _ in fields}
        path = fill_template(self.filepath, sample, what)
        for part in Path(path).parts:
            if len(os.fsencode(part)) > limit:
                shown = part if len(part) <= 60 else part[:57] + "..."
                raise ValueError(
                    f'{what} "{self.filepath}" gives file names such as "{shown}" ({len(os.fsencode(part))} bytes), '
                    f"longer than the {limit} allowed here; use a shorter name or format"
                )
        check_writable(path, what)

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
        path = fill_template(self.filepath, fields, "ModelCheckpoint: filepath")
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

    def check_state(self, state):
        check_fields(
            state,
            {
                "best": (lambda v: v is None or is_number(v), "a number", True),
                "batches_since_save": (is_count, "an integer >= 0", False),
            },
        )

    def set_state(self, state):
        self.best = state["best"]
        self._batches_since_save = state.get("batches_since_save", 0)


def template_fields(template: str, what: str) -> list[tuple[str, str]]:
    """The ``(name, format spec)`` of each ``{field}`` of a file name template.

    Only plain names with an optional format spec are allowed (``{epoch:03d}``,
    ``{val_loss:.3f}``): no attribute or index access, conversion or nested field, so a
    template cannot reach into the objects it is filled from.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise ValueError(f'{what} "{template}" is not a valid template: {error}') from None
    fields = []
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier() or conversion or "{" in (spec or ""):
            raise ValueError(
                f'{what} "{template}": {{{field}}} is not allowed; a template may only use logged names '
                "with a format spec, e.g. {epoch:03d} or {val_loss:.3f}"
            )
        fields.append((field, spec or ""))
    return fields


def fill_template(template: str, fields: dict, what: str) -> str:
    """``template`` with its fields filled from ``fields`` (see :func:`template_fields`)."""
    parts = []
    for literal, field, spec, _ in string.Formatter().parse(template):
        parts.append(literal)
        if field is None:
            continue
        if field not in fields:
            raise ValueError(
                f'{what} "{template}" uses {{{field}}}, which is not logged here{did_you_mean(field, fields)}; '
                f"available: {', '.join(sorted(fields))}"
            )
        try:
            parts.append(format(fields[field], spec or ""))
        except (ValueError, TypeError) as error:
            value = fields[field]
            raise ValueError(f'{what} "{template}": cannot format {field}={value!r} as "{spec}": {error}') from None
    return "".join(parts)


def load_checkpoint(path) -> tuple[list[np.ndarray], dict]:
    """The parameters saved by ``ModelCheckpoint`` and its metadata (epoch, logs, problem config)."""
    meta, arrays = load_npz(path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an optlab checkpoint (format {meta.get('format')!r})")
    n = sum(1 for k in arrays if k.startswith("param/"))
    return [arrays[f"param/{i}"] for i in range(n)], meta
