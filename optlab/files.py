"""optlab's files: one ``.npz`` archive per save (named arrays plus JSON metadata), no pickle.

Writing goes through a temporary file in the destination's folder, flushed and fsynced, then
moved into place with ``os.replace``: a reader sees the old file or the new one, never half a
file, and a failed write leaves the old file as it was (and no temporary file behind). The file
gets the permissions ``open()`` would give it (``0o666`` less the umask), or, when it replaces
a file, that file's permission bits. The temporary file is named after its target and its
writer, ``.<name>.optlab-tmp-<host>-<pid>-<random>``, so that the next write to the same target
can remove what a writer killed mid-write (``kill -9``) left behind — only files of exactly that
form whose writer ran on this host and is gone: a folder on a cluster's shared filesystem may
hold the temporary file of a live writer on another machine.

Reading turns every way a file can be bad (missing, unreadable, not an archive, truncated,
corrupt, without metadata, metadata that is not JSON, an entry that would need pickle) into
one exception, ``StateFileError``, whose one-line message names the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import stat
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
    _write_atomic(path, lambda fh: np.savez(fh, **payload))


def refusal(folder, make: bool = False) -> str | None:
    """Why no file can be created in ``folder`` (made first, with its parents, if ``make``), as the
    system says it (``Permission denied``), or None if one can. A real file tells, where ``os.access``
    says yes to root everywhere; it is removed at once."""
    import tempfile

    try:
        if make:
            os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".optlab-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"{exc.strerror or exc}"
    return None


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` the same way: the old file or the new one, never half."""
    _write_atomic(os.fspath(path), lambda fh: fh.write(text.encode("utf-8")))


def write_bytes_atomic(path, data: bytes) -> None:
    """Write ``data`` to ``path`` the same way: the old file or the new one, never half."""
    _write_atomic(os.fspath(path), lambda fh: fh.write(data))


def _write_atomic(path: str, write) -> None:
    fd, tmp = create_temp(path)
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


TEMP_MARK = ".optlab-tmp-"


def create_temp(path) -> tuple[int, str]:
    """Create the temporary file for a new version of ``path``, beside it: ``(fd, name)`` (open for writing).

    Its mode is what ``open()`` would give a new file (the kernel applies the umask, which is
    therefore never read or changed: changing it would race with other threads), or the
    permission bits of the file it will replace. Leftovers of earlier writers of ``path`` that
    died on this host are removed first (:func:`remove_stale_temps`).
    """
    path = os.path.abspath(os.fspath(path))
    remove_stale_temps(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:  # no file yet: a new file's mode
        mode = None
    prefix = _temp_prefix(path) + f"{_host()}-{os.getpid()}-"
    for _ in range(100):
        tmp = prefix + secrets.token_hex(4)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        break
    else:
        raise FileExistsError(f"{path}: no free temporary name beside it")
    if mode is not None:
        try:
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
    return fd, tmp


def remove_stale_temps(path) -> list[str]:
    """Remove the temporary files of ``path`` left by writers that died on this host; return their paths.

    Only names of the exact form ``create_temp`` gives this very target are considered, and one
    is removed only if it was made on this host (same host name) by a process that no longer
    exists. Another host's file, a live process's file and any other file are never touched.
    """
    removed = []
    for name in stale_temps(path):
        try:
            os.unlink(name)
        except OSError:  # another writer removed it first; a cleanup never fails a write
            continue
        removed.append(name)
    return removed


def stale_temps(path) -> list[str]:
    """The temporary files of ``path`` (:func:`create_temp`'s) whose writers died on this host."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    start = os.path.basename(_temp_prefix(path)) + _host()
    # the pid and the random part are the last two fields, so a host name with '-' is unambiguous
    pattern = re.compile(re.escape(start) + r"-([0-9]+)-[0-9a-f]{8}")
    try:
        with os.scandir(folder) as entries:
            return [
                entry.path
                for entry in entries
                if entry.name.startswith(start)
                and (match := pattern.fullmatch(entry.name)) is not None
                and entry.is_file(follow_symlinks=False)
                and not _alive(int(match.group(1)))
            ]
    except OSError:
        return []


def _temp_prefix(path: str) -> str:
    """``<folder>/.<name>.optlab-tmp-``; a name too long to leave room for the rest is cut and tagged with its hash."""
    folder, name = os.path.split(path)
    room = name_max(folder) - 1 - len(TEMP_MARK) - 60  # the dot; the host (<= 40), pid and random part
    encoded = os.fsencode(name)
    if len(encoded) > room:
        name = os.fsdecode(encoded[: max(room - 11, 1)]) + "~" + hashlib.sha1(encoded).hexdigest()[:10]
    return os.path.join(folder, f".{name}{TEMP_MARK}")


def _host() -> str:
    """This host's name in temporary names ('/' and control characters replaced; a long one cut and hashed)."""
    host = socket.gethostname()
    safe = re.sub(r"[/\\\x00-\x1f]", "_", host) or "unknown"
    if len(safe) > 40:
        safe = safe[:29] + "~" + hashlib.sha1(host.encode("utf-8", "replace")).hexdigest()[:10]
    return safe


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (when in doubt, yes: its file is then kept)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's process (PermissionError), or a pid we cannot ask about
        return True
    return True


def name_max(folder) -> int:
    """The longest file name (in bytes) allowed in ``folder``, or in its nearest existing parent (else 255)."""
    folder = os.path.abspath(os.fspath(folder))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # no pathconf (not POSIX), or no answer for this filesystem
        return 255


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
    except RecursionError:
        raise _not_ours(name, f"its metadata is nested deeper than {MAX_META_DEPTH} levels") from None
    if not isinstance(meta, dict):
        raise _not_ours(name, f"its metadata is a JSON {type(meta).__name__}, not an object")
    if _depth(meta) > MAX_META_DEPTH:  # what reads it back recurses: refuse here, in one line
        raise _not_ours(name, f"its metadata is nested deeper than {MAX_META_DEPTH} levels")
    return meta, entries


#: optlab's own metadata is a few levels deep; a file nested deeper is not one it wrote
MAX_META_DEPTH = 64


def _depth(value) -> int:
    """How deeply JSON ``value`` nests lists and objects (without recursing)."""
    deepest, level = 0, [(value, 1)]
    while level:
        item, depth = level.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth > MAX_META_DEPTH:
                break
            level.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


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
