"""`python -m rlx ...` is the `rlx` command."""

import sys

from rlx.cli import main

sys.exit(main())
