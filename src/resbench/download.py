"""Fetching an official archive: HTTP with timeouts, retries and Range resume, verified by MD5.

An archive placed by hand in the downloads folder is used without any network access; otherwise
it is fetched from its official URL or a mirror (a base URL or a local folder). Downloads stream
to ``<file>.part``, time out instead of hanging, retry with exponential back-off, resume with
HTTP Range requests, and are moved into place only after their MD5 matches.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .console import log, progress
from .errors import DataError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """Where a dataset's official archive comes from and the MD5 it must have."""

    filename: str
    url: str
    md5: str


def file_md5(path: Path) -> str:
    """Hex MD5 of a file, read in chunks (archives are hundreds of MB)."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_md5(path: Path, expected: str, *, delete: bool) -> None:
    """Raise DataError on a mismatch; a downloaded file is deleted so it is never used as data."""
    actual = file_md5(path)
    if actual == expected.lower():
        return
    name = path.name.removesuffix(".part")
    if delete:
        path.unlink()
        advice = "the download was deleted; try again, or use --mirror"
    else:
        advice = f"replace or delete {path} (or, if you trust it, prepare it with `resbench data download --no-verify`)"
    raise DataError(f"checksum mismatch for {name}: expected md5 {expected}, got {actual}; {advice}")


class _ShortTransfer(OSError):
    """The connection ended before the announced number of bytes arrived (retried)."""


def _content_range_start(value: str | None) -> int | None:
    """First byte of a ``Content-Range: bytes A-B/T`` header, or None if absent or malformed."""
    if not value or not value.startswith("bytes "):
        return None
    first = value[len("bytes "):].split("-", 1)[0]
    return int(first) if first.isdigit() else None


def _fetch_once(url: str, part: Path, timeout: float) -> None:
    """One attempt: continue ``part`` from its current size if the server honours the Range.

    A 206 whose range starts at our offset is appended; anything else (200, or a 206 for
    another range) means the server sends the whole file, so the part file restarts at zero.
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "resbench"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416:  # our part file is not a prefix of the remote file: start over
            part.unlink(missing_ok=True)
        raise
    with response:
        resumed = (offset > 0 and getattr(response, "status", None) == 206
                   and _content_range_start(response.headers.get("Content-Range")) == offset)
        start = offset if resumed else 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        with open(part, "ab" if resumed else "wb") as out, progress(total, part.name, start) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size != total:
        raise _ShortTransfer(f"connection closed after {part.stat().st_size} of {total} bytes")


def _describe(err: Exception) -> str:
    """A short reason: urllib wraps socket errors as '<urlopen error ...>'."""
    if isinstance(err, urllib.error.URLError) and not isinstance(err, urllib.error.HTTPError):
        return str(err.reason)
    return str(err) or err.__class__.__name__


def _is_permanent(err: Exception) -> bool:
    """Client errors (404, 403, ...) will not go away by retrying; timeouts and resets may."""
    return isinstance(err, urllib.error.HTTPError) and 400 <= err.code < 500 and err.code not in (408, 416, 429)


def download(url: str, dest: Path, md5: str | None, *, timeout: float = 30.0,
             tries: int = 4, backoff: float = 1.0) -> Path:
    """Download ``url`` to ``dest`` via ``dest.part``; resumable, verified, then moved into place.

    ``timeout`` is the socket timeout in seconds (a stalled server raises instead of hanging);
    failed attempts are retried ``tries`` times in all, sleeping backoff, 2*backoff, ... between
    them and resuming where the previous attempt stopped. With ``md5=None`` nothing is checked.
    A partial ``.part`` file is kept after a final failure so that the next run resumes it.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    log(f"downloading {url}")
    for attempt in range(1, tries + 1):
        try:
            _fetch_once(url, part, timeout)
            break
        except (OSError, http.client.HTTPException) as err:
            if attempt == tries or _is_permanent(err):
                raise DataError(
                    f"could not download {url} ({_describe(err)}); check the network and run again to resume, "
                    f"or place {dest.name} in {dest.parent}, or use --mirror") from None
            delay = backoff * 2 ** (attempt - 1)
            log(f"download attempt {attempt}/{tries} failed ({_describe(err)}); retrying in {delay:g} s")
            time.sleep(delay)
    if md5 is not None:
        check_md5(part, md5, delete=True)
    os.replace(part, dest)
    return dest


def _archive_url(source: Source, mirror: str | None) -> str:
    """The URL to fetch ``source`` from: official, a mirror base URL, or a local mirror folder."""
    if mirror is None:
        return source.url
    if "://" in mirror:
        return mirror.rstrip("/") + "/" + source.filename
    local = Path(mirror).expanduser() / source.filename
    if not local.is_file():
        raise DataError(f"{source.filename} not found in mirror folder {mirror}; put it there or drop --mirror")
    return local.resolve().as_uri()


def fetch_archive(source: Source, downloads: Path, mirror: str | None = None, verify: bool = True) -> Path:
    """Return the verified archive in ``downloads``, fetching it only if it is not there yet.

    An archive placed there by hand is used without any network access (but still verified;
    it is not deleted on a mismatch, since the user put it there).
    """
    dest = downloads / source.filename
    if not verify:
        log(f"warning: --no-verify: the MD5 of {source.filename} is not checked")
    if dest.is_file():
        log(f"using {dest}")
        if verify:
            check_md5(dest, source.md5, delete=False)
        return dest
    return download(_archive_url(source, mirror), dest, source.md5 if verify else None)
