"""`python -m tools.flash`: see tools/flash/cli.py."""

import sys

from tools.flash.cli import main

sys.exit(main())
