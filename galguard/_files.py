"""Writing files safely: the one atomic-write helper.

A file is written to a fresh temporary name in its own directory, flushed to disk, given the
permissions a plain ``open`` would give, and moved into place with `os.replace`: readers (and a
killed run) see the old file or the new one, never a partial file. Only regular files are ever
replaced: a device, FIFO or directory in the way is an error, never overwritten.
"""

import os
import stat
import tempfile
from pathlib import Path

from .errors import GalguardValueError

__all__ = ["atomic_write", "temporary_path", "check_replaceable", "umask"]


def umask():
    """The process umask (read without changing it for longer than a call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_replaceable(path, *, name="output"):
    """Raise unless ``path`` is absent or a regular file (so replacing it loses no device)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise GalguardValueError(f"{name} {str(path)!r} cannot be checked: {exc}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise GalguardValueError(f"{name} {str(path)!r} is {kind}; only regular files are "
                                 "replaced")


def temporary_path(path):
    """A fresh, empty temporary file next to ``path`` (its name starts with ``.NAME.``)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def atomic_write(path, write, *, overwrite=True, name="output"):
    """Write ``path`` atomically: ``write(tmp_path)`` fills a temporary file, then it is synced,
    given the default permissions and renamed onto ``path``.

    Parameters
    ----------
    path : str or path-like
    write : callable
        Called with the temporary file's `pathlib.Path`; writes the whole content there.
    overwrite : bool, optional
        Replace an existing file (default True); False raises FileExistsError.
    name : str, optional
        The argument's name in error messages.

    Returns
    -------
    pathlib.Path
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    check_replaceable(path, name=name)
    tmp = temporary_path(path)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
