"""The ``galguard`` command line.

Each subcommand lives in its own module under ``galguard._cli`` exposing
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the parsed
arguments and returning an exit code.
"""

import argparse
import importlib
import logging
import sys

from . import __version__

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_BAD_INPUTS", "EXIT_USAGE", "EXIT_FAILURE"]

EXIT_OK = 0          #: every input was good
EXIT_FAILURE = 1     #: the command failed
EXIT_USAGE = 2       #: the command line was wrong (argparse's own convention)
EXIT_BAD_INPUTS = 3  #: the command ran, but some inputs were bad (their rows carry errors)

# Subcommand modules, in the order they appear in --help.
_SUBCOMMANDS = ["simulate", "train", "evaluate", "calibrate", "check", "report", "demo"]


_EPILOG = f"""\
exit status:
  {EXIT_OK}  success: every input was good
  {EXIT_FAILURE}  failure: the command could not complete (galguard check keeps its journal:
     rerun with --resume)
  {EXIT_USAGE}  usage error: bad arguments, an existing output without --overwrite/--resume, an
     output that is one of the inputs
  {EXIT_BAD_INPUTS}  done, but some inputs were bad: the catalog holds their rows with the
     BAD_INPUT flag and an error message

Start with `galguard demo`; `galguard COMMAND --help` describes each command.
"""


def build_parser():
    parser = argparse.ArgumentParser(
        prog="galguard",
        description="Flag galaxy-morphology classifications that should not be trusted.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"galguard {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMANDS:
        try:
            mod = importlib.import_module(f"galguard._cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"galguard._cli.{name}":
                continue  # not implemented yet
            raise
        mod.register(sub)
    return parser


def main(argv=None):
    """Run the command line; returns the exit status (see the epilog)."""
    from ._cli import run_command

    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("galguard: interrupted", file=sys.stderr)
        return EXIT_FAILURE
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    return run_command(f"galguard {args.command}", args.func, args)


if __name__ == "__main__":
    sys.exit(main())
