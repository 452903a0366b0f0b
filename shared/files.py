"""Atomic file writes (temp file + rename): an interrupted write never leaves a half file, and a failed one
is one `PgolfError` naming the file, whatever the library underneath raised."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from shared import SCRIPT
from shared.errors import PgolfError

_UMASK = os.umask(0)
os.umask(_UMASK)


def write_failed(path: str | Path, err: BaseException) -> PgolfError:
    """One line for a file that could not be written, whatever raised (OSError, SafetensorError, ...)."""
    if SCRIPT:  # train_gpt.py writes only with the OS's errors, which its entry prints with the file's name
        return err
    reason = (os.strerror(err.errno) if isinstance(err, OSError) and err.errno else None) or str(err) or type(err).__name__
    hint = "free some disk space or write elsewhere" if _is_space_error(err) else "check the folder and free disk space"
    return PgolfError(f"{path}: could not write it ({' '.join(reason.split())[:300]}); {hint}, then retry")


def _is_space_error(err: BaseException) -> bool:
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    text = str(err)
    return "StorageFull" in text or "No space left" in text or "FileTooLarge" in text or "File too large" in text


def atomic_write(path: str | Path, write: Callable[[Path], None], errors: tuple = (OSError,)) -> Path:
    """Call `write(tmp_path)`, then rename the temp file over `path`.

    A failure of the write itself (OSError, or one of `errors`: a library's own wrapper of the OS
    error) leaves `path` untouched and raises one `PgolfError` naming `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise write_failed(path, e) from None
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give them the usual permissions
        os.replace(tmp, path)
    except errors as e:
        Path(tmp).unlink(missing_ok=True)
        raise write_failed(path, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))
