"""The one grammar of path inputs, shared by `read_cutouts` / `iter_cutouts` and ``galguard check``.

An input string is, in this order:

``@LIST``
    (when no file of that exact name exists) a text file of inputs, one a line, read as UTF-8
    (a byte-order mark is dropped). Blank lines are skipped, and so is everything from a ``#``
    that starts a line or follows a blank (``path.fits  # comment``). Relative entries are
    relative to the list file. Each entry is expanded by the rules below (a directory gives its
    FITS files, a glob its matches), except that an entry is never another list. An entry
    holding a NUL byte is kept as it is and becomes an error row.
a directory
    its FITS files (names ending in `FITS_SUFFIXES`, case-insensitive), sorted by name; with
    ``recursive`` its whole tree. Entries that are not directories are kept even if they are
    dangling links, FIFOs or unreadable: they become error rows, as when named explicitly.
a glob (``*``, ``?``, ``[``) that names no existing file
    its matches, sorted (``**`` recurses with ``recursive``); directories are left out.
anything else
    a path, kept as given: a missing file becomes an error row.

A list file that cannot be read or is not UTF-8, a directory that cannot be listed or holds no
FITS file, and a glob that matches nothing are usage errors (`GalguardValueError`).
"""

import glob
import os

from ..errors import GalguardValueError
from ._options import FITS_SUFFIXES

__all__ = ["expand_item", "expand_inputs", "read_list_file", "is_expandable"]


def _is_fits_name(name):
    return name.lower().endswith(FITS_SUFFIXES)


def _is_dir(entry):
    try:
        return entry.is_dir()
    except OSError:  # a link loop, a vanished file: not a directory, kept as an entry
        return False


def _list_dir(d, recursive, name):
    out = []
    try:
        if recursive:
            def fail(exc):
                raise exc
            for root, dirs, files in os.walk(d, onerror=fail):
                dirs.sort()
                out.extend(os.path.join(root, f) for f in files if _is_fits_name(f))
        else:
            with os.scandir(d) as it:
                out = [e.path for e in it if _is_fits_name(e.name) and not _is_dir(e)]
    except OSError as exc:
        raise GalguardValueError(f"{name} {d!r}: the directory cannot be listed "
                                 f"({exc.strerror or exc})") from None
    if not out:
        raise GalguardValueError(f"{name} {d!r} is a directory with no FITS files "
                                 f"({', '.join(FITS_SUFFIXES)})")
    return sorted(out)


def _strip_comment(line):
    s = line.strip()
    if s.startswith("#"):
        return ""
    for i, ch in enumerate(s):
        if ch == "#" and i and s[i - 1] in " \t":
            return s[:i].rstrip()
    return s


def read_list_file(path, *, name="input list file"):
    """The entries of a list file (see the module docstring), relative ones made relative to it."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise GalguardValueError(f"{name} {path!r} does not exist") from None
    except OSError as exc:
        raise GalguardValueError(f"{name} {path!r} cannot be read ({exc.strerror or exc})") \
            from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GalguardValueError(f"{name} {path!r} is not UTF-8 text (byte {exc.start}: "
                                 f"{raw[exc.start:exc.start + 1]!r})") from None
    base = os.path.dirname(path)
    out = []
    for line in text.splitlines():
        entry = _strip_comment(line)
        if entry:
            out.append(entry if os.path.isabs(entry) else os.path.join(base, entry))
    return out


def is_expandable(s):
    """Whether string input ``s`` stands for more than itself (a list, directory or glob)."""
    return ((s.startswith("@") and not os.path.exists(s)) or os.path.isdir(s)
            or (glob.has_magic(s) and not os.path.exists(s)))


def expand_item(s, *, recursive=False, name="input", lists=True):
    """The paths one input string stands for, in order (see the module docstring)."""
    s = os.fspath(s)
    if "\0" in s:
        return [s]
    if lists and s.startswith("@") and not os.path.exists(s):
        out = []
        for entry in read_list_file(s[1:]):
            out.extend(expand_item(entry, recursive=recursive, name=f"entry of {s}",
                                   lists=False))
        return out
    if os.path.isdir(s):
        return _list_dir(s, recursive, name)
    if glob.has_magic(s) and not os.path.exists(s):
        try:
            paths = sorted(p for p in glob.iglob(s, recursive=recursive)
                           if not os.path.isdir(p))
        except OSError as exc:
            raise GalguardValueError(f"{name} {s!r}: the glob cannot be expanded ({exc})") \
                from None
        if not paths:
            raise GalguardValueError(f"{name} {s!r}: the glob matched no files")
        return paths
    return [s]


def expand_inputs(inputs, *, input_lists=(), recursive=False):
    """Expand inputs (``galguard check INPUT...`` and ``--input-list``) into FITS file paths.

    Parameters
    ----------
    inputs : sequence of str or path-like
        Files, directories, globs and ``@LIST`` files (module docstring).
    input_lists : sequence of str, optional
        More list files, read after ``inputs``.
    recursive : bool, optional
        Descend into sub-directories (and let ``**`` in globs recurse).

    Returns
    -------
    list of str
        In the order given. A path that does not exist is kept (it becomes a BAD_INPUT row).

    Raises
    ------
    GalguardValueError
        When no input is given, a glob matches nothing, a directory holds no FITS file or
        cannot be listed, or a list file is missing, unreadable or not UTF-8.
    """
    out = []
    for s in inputs:
        out.extend(expand_item(s, recursive=recursive))
    for lst in input_lists:
        out.extend(expand_item("@" + os.fspath(lst), recursive=recursive, name="--input-list"))
    if not out:
        raise GalguardValueError("inputs must name at least one FITS file, directory, glob or "
                                 "@list, got none")
    return out
