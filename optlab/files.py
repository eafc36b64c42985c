"""optlab's files: one ``.npz`` archive per save (named arrays plus JSON metadata), no pickle.

Writing goes through a temporary file in the destination's folder, flushed and fsynced, then
moved into place with ``os.replace``: a reader sees the old file or the new one, never half a
file, and a failed write leaves the old file as it was (and no temporary file behind).

Reading turns every way a file can be bad (missing, unreadable, not an archive, truncated,
corrupt, without metadata, metadata that is not JSON, an entry that would need pickle) into
one exception, ``StateFileError``, whose one-line message names the file and what is wrong.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

META_KEY = "__meta__"


class StateFileError(ValueError):
    """A file that cannot be read as an optlab state file (the message names the path and why)."""


def save_npz_atomic(path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` and the JSON-able ``meta`` to ``path`` as one ``.npz`` archive, atomically.

    The archive is written to a temporary file in the same folder, flushed and fsynced, then
    renamed over ``path``; on any failure the temporary file is removed and ``path`` is untouched.
    """
    path = os.fspath(path)
    payload = {}
    for key, value in arrays.items():
        if key == META_KEY:
            raise ValueError(f"save_npz_atomic: the array name {META_KEY!r} is reserved for the metadata")
        value = np.asanyarray(value)
        if value.dtype.hasobject:
            # it would be pickled, and load_npz never unpickles: refuse to write a file nobody can read
            raise ValueError(f"save_npz_atomic: array {key!r} has dtype object; only plain numeric arrays are saved")
        payload[key] = value
    payload[META_KEY] = np.frombuffer(json.dumps(meta, allow_nan=True).encode("utf-8"), dtype=np.uint8)
    _write_atomic(path, lambda fh: np.savez(fh, **payload), ".npz")


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` the same way: the old file or the new one, never half."""
    _write_atomic(os.fspath(path), lambda fh: fh.write(text.encode("utf-8")), ".tmp")


def _write_atomic(path: str, write, suffix: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_npz(path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read a file written by ``save_npz_atomic``: ``(meta, arrays)``. Never unpickles.

    Raises ``StateFileError`` (a ``ValueError``) for a file that is missing, unreadable,
    truncated, corrupt, or not written by optlab.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            magic = fh.read(4)
            if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
                what = "an empty file" if not magic else "not an .npz archive"
                raise _not_ours(name, what)
            fh.seek(0)
            with zipfile.ZipFile(fh) as archive:
                entries = _read_entries(name, archive)
    except StateFileError:
        raise
    except FileNotFoundError:
        raise StateFileError(f"{name}: no such file") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, ValueError, OSError) as error:
        if isinstance(error, OSError) and not isinstance(error, zipfile.BadZipFile) and error.strerror:
            raise StateFileError(f"{name}: cannot be read ({error.strerror})") from None
        raise _not_ours(name, f"truncated or corrupt: {_one_line(error)}") from None
    if META_KEY not in entries:
        raise _not_ours(name, f"it has no {META_KEY!r} entry")
    raw = entries.pop(META_KEY)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise _not_ours(name, f"its {META_KEY!r} entry is not JSON text")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _not_ours(name, f"its metadata is not JSON: {_one_line(error)}") from None
    if not isinstance(meta, dict):
        raise _not_ours(name, f"its metadata is a JSON {type(meta).__name__}, not an object")
    return meta, entries


def _read_entries(name: str, archive: zipfile.ZipFile) -> dict[str, np.ndarray]:
    entries: dict[str, np.ndarray] = {}
    for member in archive.namelist():
        key = member[: -len(".npy")] if member.endswith(".npy") else member
        if key in entries:
            raise _not_ours(name, f"entry {key!r} appears twice")
        with archive.open(member) as fh:
            try:
                entries[key] = np.lib.format.read_array(fh, allow_pickle=False)
            except ValueError as error:
                if "allow_pickle" in str(error) or "Object arrays" in str(error):
                    raise _not_ours(
                        name, f"entry {key!r} is an object array, which would need pickle (never loaded)"
                    ) from None
                raise _not_ours(name, f"entry {key!r} is truncated or corrupt: {_one_line(error)}") from None
            except MemoryError:
                # a corrupt header can claim any size; so can a real state larger than this machine's memory
                raise StateFileError(
                    f"{name}: entry {key!r} needs more memory than is available (or its header is corrupt)"
                ) from None
    return entries


def _not_ours(name: str, what: str) -> StateFileError:
    return StateFileError(f"{name} is not an optlab state file ({what})")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:197] + "..."
