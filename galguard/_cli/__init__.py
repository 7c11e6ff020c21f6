"""Subcommands of the ``galguard`` command line, one module each."""

import logging
import sys

__all__ = ["call_reporting_errors"]

log = logging.getLogger(__name__)


def call_reporting_errors(prog, func, *args, **kwargs):
    """Call ``func(*args, **kwargs)`` and turn an exception into one message and an exit code.

    Returns ``(result, None)`` on success. A `~galguard.errors.GalguardValueError` (bad
    arguments or input) prints ``"PROG: error: ..."`` and gives ``EXIT_USAGE``; any other
    exception prints ``"PROG: failed: ..."`` (the traceback goes to the debug log) and gives
    ``EXIT_FAILURE``; the result is then ``None``.
    """
    from ..cli import EXIT_FAILURE, EXIT_USAGE
    from ..errors import GalguardValueError

    try:
        return func(*args, **kwargs), None
    except GalguardValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return None, EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - reported to the user with its type
        log.debug("%s failed", prog, exc_info=True)
        print(f"{prog}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None, EXIT_FAILURE
