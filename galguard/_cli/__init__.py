"""Subcommands of the ``galguard`` command line, one module each."""
