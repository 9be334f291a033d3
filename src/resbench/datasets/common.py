"""What every reader returns: the prepared arrays of one dataset, at each requested image size."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

#: Arrays of one prepared dataset, keyed by file name (`resbench.data.PREPARED_FILES`).
Splits = dict[str, np.ndarray]
#: A reader turns one verified archive into the prepared arrays at each requested image size.
Reader = Callable[[Path, Sequence[int]], dict[int, Splits]]
