"""``python -m resbench``."""

import sys

from resbench.cli import main

sys.exit(main())
