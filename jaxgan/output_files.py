"""Writing what the command lines produce: a folder checked before the work, files that are whole or absent.

A command that will write somewhere checks first (:func:`writable_folder`), so that a read-only or
mistyped destination fails in a second, not after minutes of work; each file is written beside its
destination and renamed into place (:func:`write_atomically`), so that a full disk leaves no
truncated file behind. Failures raise the caller's own error class with the path and the reason.
"""

from __future__ import annotations

import glob
import os
import pathlib
import tempfile
from collections.abc import Callable


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def checkpoint_folder(folder: str | os.PathLike, error: type[Exception] = OSError) -> pathlib.Path:
    """``folder`` made absolute; ``error`` if Orbax could write checkpoints there but never read them back.

    Orbax finds the parts of a checkpoint it has written by a file-name pattern (``ocdbt.process_*``) under the
    folder's path, so that ``[``, ``]``, ``*`` or ``?`` anywhere in it act as wildcards: the parts are never
    merged, the save reports success with a warning, and every read fails ("runs/lr[2e-4]" lost a whole run).
    """
    path = pathlib.Path(folder).absolute()
    text = os.fspath(path)
    if glob.escape(text) != text or "]" in text:
        raise error(f"{path}: a checkpoint folder's path cannot hold [, ], * or ?. Orbax finds a checkpoint's "
                    "parts by a file-name pattern, in which these are wildcards, so its checkpoints would be "
                    "written but never readable. Choose a name without them, e.g. lr_2e-4 for lr[2e-4].")  # fmt: skip
    return path


def writable_folder(folder: str | os.PathLike, error: type[Exception] = OSError) -> pathlib.Path:
    """Create ``folder`` (and its parents) if needed and check that a file can be created in it.

    Raises ``error`` naming the folder, and the part of its path that is a file where that is the reason.
    """
    folder = pathlib.Path(folder)
    blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise error(f"cannot write into {folder}: {blocking} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise error(f"cannot write into {folder}: {_reason(e)}") from e
    return folder


def writable_file(
    path: str | os.PathLike, example: str, error: type[Exception] = OSError, flag: str = ""
) -> pathlib.Path:
    """``path`` as a file to write: ``error`` if it is a folder (naming ``path / example`` as a file name to
    give instead, after ``flag``, e.g. ``--output``), or if its folder cannot take a file (created if missing)."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise error(f"{flag + ' ' if flag else ''}{path} is a folder; give a file name, e.g. {path / example}")
    writable_folder(path.parent, error)
    return path


def write_atomically(
    path: str | os.PathLike, write: Callable[[pathlib.Path], None], error: type[Exception] = OSError
) -> None:
    """``write(tmp)`` to ``PATH.part``, then rename it to ``path``; on failure remove the part and raise ``error``."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".part")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise error(f"cannot write {path}: {_reason(e)}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
