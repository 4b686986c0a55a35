"""`python -m tools.probe`: see tools/probe/__init__.py."""

import sys

from tools.probe.cli import main

sys.exit(main(sys.argv[1:]))
