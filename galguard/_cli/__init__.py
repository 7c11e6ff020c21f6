"""Subcommands of the ``galguard`` command line, one module each.

Each module exposes ``register(subparsers)``; its ``run(args)`` returns an exit code or raises.
`run_command` is the one place that maps what a command raises to a message and an exit code.
"""

import logging
import sys

__all__ = ["run_command", "CommandFailed"]

log = logging.getLogger(__name__)


class CommandFailed(Exception):
    """A command could not complete; the message is printed as it is (exit status 1)."""


def run_command(prog, func, *args, **kwargs):
    """Call ``func(*args, **kwargs)`` and return its exit code; an exception becomes one message.

    * `~galguard.errors.GalguardValueError` (a bad argument, input or model file, an output in
      the way): ``"PROG: error: ..."``, exit status 2 (``EXIT_USAGE``);
    * `CommandFailed`: ``"PROG: failed: ..."`` with the command's own words, exit status 1;
    * `KeyboardInterrupt`: ``"PROG: interrupted"``, exit status 1;
    * any other exception: ``"PROG: failed: TYPE: ..."`` (the traceback goes to the debug log),
      exit status 1 (``EXIT_FAILURE``).
    """
    from ..cli import EXIT_FAILURE, EXIT_USAGE
    from ..errors import GalguardValueError

    try:
        return int(func(*args, **kwargs) or 0)
    except GalguardValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandFailed as exc:
        print(f"{prog}: failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - reported to the user with its type
        log.debug("%s failed", prog, exc_info=True)
        print(f"{prog}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
