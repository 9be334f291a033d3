"""`python -m resbench` (and `torchrun -m resbench`) run the command line."""

import sys

from .cli import main

sys.exit(main())
