"""The ``sprout`` command line: one module per command, sharing :mod:`sprout.cli.options`.

:mod:`sprout.cli.app` builds the parser from the command modules and runs it; the
``sprout`` script is :func:`main`. Nothing below the command line imports this package.

Each command imports what it runs inside its handler, not at the top of its module: building
the parser loads every command module, and ``sprout --help`` or ``sprout keys`` should not
wait for the ledger's, the simulator's or the server's imports. This is the one package where
function-local imports of light modules are the rule (see docs/architecture.md).
"""

from sprout.cli.app import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, build_parser, main

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]
