"""The ``sprout`` command line: one module per command, sharing :mod:`sprout.cli.options`.

:mod:`sprout.cli.app` builds the parser from the command modules and runs it; the
``sprout`` script is :func:`main`. Nothing below the command line imports this package.
"""

from sprout.cli.app import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, build_parser, main

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]
