"""`python -m k2jobs`."""

import sys

from .cli import main

sys.exit(main())
