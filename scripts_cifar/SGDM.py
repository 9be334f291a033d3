"""The reference's entry point: `python scripts_cifar/SGDM.py <flags>` is `resbench train <flags>`.

Works from the checkout's root whether or not the package is installed.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from resbench.__main__ import run  # noqa: E402  (light: a Ctrl-C while torch imports is one line)

if __name__ == "__main__":
    sys.exit(run(["train", *sys.argv[1:]]))
