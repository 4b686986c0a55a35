"""`python -m headend` = the `headend` command."""

import sys

from headend.cli import main

sys.exit(main())
