"""``python -m sprout.cli``: the ``sprout`` command."""

import sys

from sprout.cli.app import main

sys.exit(main())
