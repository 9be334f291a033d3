"""Image files decoded into uint8 RGB pixels of one size, in parallel across the cores (`data import`).

Light (no torch), and kept so: the decoding children are forked, which is safe only in a process
without threads whose locks a child could need, as torch's thread pools are; a process that has
loaded torch (a notebook calling the import) therefore decodes in itself. Pillow's format plugins
are loaded before the fork (`Image.init`), and the children's `sys.path` loses the current folder,
so a module Pillow imports only when it needs it (`copy`, for a GIF) never comes from a file
planted there. Forking is used on Linux only (on macOS it is the unsafe choice, and a spawned child
would import its modules anew from the parent's path, the current folder included): other systems
decode in this process.

Every image is made RGB and resized the same way, whatever its format (`as_rgb`, `at_size`).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import warnings
from functools import partial
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from resbench.files import open_regular

#: Images not at the wanted size are resized with Pillow's bicubic filter, whole (the aspect ratio is
#: not kept, nothing is cropped). One filter for both directions: Pillow widens its kernel by the
#: scale factor when it shrinks an image, so downsampling is antialiased (an area average, as BOX,
#: but smoother), while enlarging a small image (8x8 digits to 32x32) stays smooth where BOX would
#: make blocks. Named in dataset.json (`facts.RESIZE_METHODS`).
RESIZE = Image.Resampling.BICUBIC
RESIZE_NAME = "PIL BICUBIC"
#: Pillow's own decompression-bomb bound (89,478,485 pixels), checked from the header before decoding.
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
DEEP_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # 16-bit (and 32-bit integer) grey: scaled from 0..65535
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
CHANNEL_COMBINATIONS = "RGB, grey (made RGB), palette, 16-bit grey (scaled), with alpha (composited onto black)"


class Decoded(NamedTuple):
    """One image file: its pixels (size x size x 3 uint8, as bytes) or why there are none."""

    pixels: bytes | None
    size: tuple[int, int] | None  # width and height as stored
    mode: str  # Pillow's mode as stored ("L", "P", "RGBA", "I;16", ...)
    resized: bool
    error: str | None


def readable_extensions() -> set[str]:
    """The file name endings Pillow reads (".png", ".jpg", ...): what counts as an image in a tree."""
    Image.init()
    return {ext.lower() for ext, kind in Image.registered_extensions().items() if kind in Image.OPEN}


def as_rgb(image: Image.Image) -> Image.Image:
    """The image as 8-bit RGB. Grey and palette images become RGB; 16-bit grey is scaled from 0..65535
    to 0..255 (Pillow's own conversion would clip it); an alpha channel or a transparent colour is
    composited onto black (transparent pixels become black, whatever colour they stored)."""
    if image.mode == "F":
        raise ValueError("holds 32-bit floating-point pixels, which have no fixed range; save it with 8 or 16 "
                         "bits per channel")
    if image.mode in DEEP_MODES:
        deep = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        image = Image.fromarray(((deep * 255 + 32767) // 65535).astype(np.uint8))
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        rgb = Image.new("RGB", image.size)
        rgb.paste(rgba, mask=rgba.getchannel("A"))
        return rgb
    if image.mode == "RGB":
        image.load()
        return image
    return image.convert("RGB")


def at_size(image: Image.Image, size: int) -> tuple[Image.Image, bool]:
    """The RGB image at size x size (RESIZE), and whether it had to be resized."""
    if image.size == (size, size):
        return image, False
    return image.resize((size, size), RESIZE), True


def decode_file(path: str, size: int) -> Decoded:
    """One image file at `size`, its header checked before its pixels are decoded; any failure is
    returned as the reason, for the caller to name the file (or skip it)."""
    mode, dims = "?", None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's per-file warnings (EXIF, palettes) would flood the terminal
            with open_regular(path) as f, Image.open(f) as image:  # (a FIFO put there is refused)
                mode, dims = image.mode, image.size
                if dims[0] * dims[1] > MAX_IMAGE_PIXELS:
                    return Decoded(None, dims, mode, False, f"is {dims[0]}x{dims[1]} pixels, more than the "
                                   f"{MAX_IMAGE_PIXELS:,} resbench decodes (a decompression bomb?)")
                rgb, resized = at_size(as_rgb(image), size)
        return Decoded(rgb.tobytes(), dims, mode, resized, None)
    except UnidentifiedImageError:
        return Decoded(None, dims, mode, False, "is not an image Pillow can read")
    except Image.DecompressionBombError as exc:
        return Decoded(None, dims, mode, False, f"is refused as a decompression bomb ({exc})")
    except OSError as exc:
        return Decoded(None, dims, mode, False, f"cannot be read ({exc.strerror or exc})")
    except Exception as exc:  # noqa: BLE001 (a damaged file makes Pillow raise anything: SyntaxError, ValueError...)
        return Decoded(None, dims, mode, False, f"cannot be decoded ({type(exc).__name__}: {exc})")


def available_cores() -> int:
    """The cores this process may run on (its affinity mask: a SLURM job's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decoding_processes(workers: int, files: int) -> int:
    """How many processes decode `files` files when `workers` are asked for (see the module's note)."""
    can_fork = sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
    return max(1, min(workers, files)) if can_fork and "torch" not in sys.modules else 1


def worker_start() -> None:
    """A decoding child: Ctrl-C and SIGTERM are the parent's to handle (it ends the pool), and the
    current folder is off the import path."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    here = os.getcwd()
    sys.path[:] = [p for p in sys.path if p not in ("", ".") and os.path.abspath(p) != here]


def decode_files(paths: list[str], size: int, workers: int, on_each: Callable[[], None]) -> Iterator[Decoded]:
    """Each file decoded at `size`, in the order of `paths`, by `workers` forked processes (or in this
    process: `decoding_processes`); `on_each` is called after each (a progress bar).

    Closing the iterator early (an unreadable file ends the import) ends the children at once."""
    decode = partial(decode_file, size=size)
    Image.init()  # every format plugin imported here, before the fork
    workers = decoding_processes(workers, len(paths))
    if workers == 1:
        yield from counted(map(decode, paths), on_each)
        return
    chunk = max(1, min(256, len(paths) // (workers * 16)))
    with multiprocessing.get_context("fork").Pool(workers, initializer=worker_start) as pool:
        yield from counted(pool.imap(decode, paths, chunksize=chunk), on_each)


def counted(results: Iterable[Decoded], on_each: Callable[[], None]) -> Iterator[Decoded]:
    for result in results:
        on_each()
        yield result
