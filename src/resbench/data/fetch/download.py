"""Fetching an official archive: HTTP with timeouts, retries and Range resume, verified by MD5.

An archive placed by hand in the downloads folder is used without any network access; otherwise
it is fetched from its official URL or a mirror (a base URL or a local folder). Downloads stream
to ``<file>.part``, time out instead of hanging, retry with exponential back-off, resume with
HTTP Range requests, and are moved into place only after their MD5 matches.

Limits, so that a broken or hostile server can neither hold a download forever nor fill the disk:
the response headers must arrive within `STALL_WINDOW` seconds of the request, the body must
average at least `MIN_RATE` bytes/s over every `STALL_WINDOW` seconds (a slower attempt is cut
off, and retried from where it stopped), and a response larger than the archive's known size
(`Source.size`; `MAX_UNKNOWN_SIZE` for a source without one) is refused before it is written.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import socket
import stat
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable

from resbench.console import log, printable, progress
from resbench.errors import DataError
from resbench.files import UnsafeFileError, open_own_file

_CHUNK = 1 << 20
MIN_RATE = 10 * 1024  # bytes/s, averaged over each STALL_WINDOW
STALL_WINDOW = 60.0  # seconds
MAX_UNKNOWN_SIZE = 8 * 2**30  # the largest download accepted from a source of unknown size


@dataclass(frozen=True)
class Source:
    """Where a dataset's official archive comes from, the MD5 it must have, and its size in bytes
    (a response larger than that is refused; None: up to MAX_UNKNOWN_SIZE)."""

    filename: str
    url: str
    md5: str
    size: int | None = None


def file_md5(path: Path) -> str:
    """Hex MD5 of a file, read in chunks (archives are hundreds of MB)."""
    return file_digest(path, "md5")


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest (`hashlib`'s algorithm name) of a file, read in chunks."""
    digest = hashlib.new(algorithm)
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
        advice = f"replace or delete {path} (or, if you trust it, prepare it with `resbench data download --no_verify`)"
    raise DataError(f"checksum mismatch for {name}: expected md5 {expected}, got {actual}; {advice}")


class _ShortTransfer(OSError):
    """The connection ended before the announced number of bytes arrived (retried)."""


class _Stalled(OSError):
    """The server sent too little for too long (retried, resuming where it stopped)."""


class _Oversized(DataError):
    """The response is larger than the archive can be (not retried; nothing of it is kept)."""


class _CannotWrite(DataError):
    """The disk refused the archive's bytes (full, over quota, read-only): not retried, as the network
    is not the cause; what was written stays in the part file, for the next run to resume."""


@dataclass(frozen=True)
class Limits:
    """What one download accepts: its size (`exact`: a Content-Length must equal it) and the slowest pace."""

    size: int
    exact: bool = False
    min_rate: float = MIN_RATE
    window: float = STALL_WINDOW


class RegisteredConnection:
    """An HTTP(S) connection that appends its socket's descriptor to `descriptors`, so that a
    watchdog can cut the request off (the same descriptor once TLS wraps the socket)."""

    def __init__(self, *args: Any, descriptors: list[int], **kwargs: Any):
        super().__init__(*args, **kwargs)
        create = self._create_connection  # type: ignore[attr-defined]

        def create_registered(*args: Any, **kwargs: Any) -> socket.socket:
            sock = create(*args, **kwargs)
            descriptors.append(sock.fileno())
            return sock

        self._create_connection = create_registered


class WatchedHTTPConnection(RegisteredConnection, http.client.HTTPConnection):
    pass


WATCHED: dict[type, type] = {http.client.HTTPConnection: WatchedHTTPConnection}


class WatchedOpen:
    """A urllib handler whose connections register their sockets in `descriptors`."""

    def __init__(self, descriptors: list[int]):
        super().__init__()
        self.descriptors = descriptors

    def do_open(self, http_class: type, req: urllib.request.Request, **kwargs: Any) -> http.client.HTTPResponse:
        return super().do_open(WATCHED[http_class], req, descriptors=self.descriptors, **kwargs)  # type: ignore[misc]


class WatchedHTTPHandler(WatchedOpen, urllib.request.HTTPHandler):
    pass


WATCHED_HANDLERS: list[type] = [WatchedHTTPHandler]
if hasattr(http.client, "HTTPSConnection"):  # not in a Python built without ssl
    class WatchedHTTPSConnection(RegisteredConnection, http.client.HTTPSConnection):
        pass

    class WatchedHTTPSHandler(WatchedOpen, urllib.request.HTTPSHandler):
        pass

    WATCHED[http.client.HTTPSConnection] = WatchedHTTPSConnection
    WATCHED_HANDLERS.append(WatchedHTTPSHandler)


def _open_watched(request: urllib.request.Request, timeout: float, deadline: float) -> http.client.HTTPResponse:
    """urlopen, but the connection is cut off when the response headers are not complete `deadline`
    seconds after the request: the socket timeout alone bounds each read, so a server sending one
    byte every few seconds (of its TLS handshake, or of its headers) could hold the request forever."""
    descriptors: list[int] = []  # of the sockets this request opened (redirects open more)
    handlers = [handler(descriptors) for handler in WATCHED_HANDLERS]
    fired = threading.Event()

    def cut_off() -> None:
        fired.set()
        for fd in descriptors:
            with contextlib.suppress(OSError):
                sock = socket.socket(fileno=fd)  # a view of the descriptor, detached below so it stays open
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns, and the request fails
                finally:
                    sock.detach()

    watchdog = threading.Timer(deadline, cut_off)
    watchdog.daemon = True
    watchdog.start()
    try:
        return urllib.request.build_opener(*handlers).open(request, timeout=timeout)
    except (OSError, http.client.HTTPException):
        if fired.is_set():
            raise _Stalled(f"no complete response within {deadline:g} s") from None
        raise
    finally:
        watchdog.cancel()


def _part_offset(part: Path) -> int:
    """Bytes already in the part file; a link or anything but a regular file there is refused."""
    try:
        info = part.lstat()
    except FileNotFoundError:
        return 0
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeFileError(0, "it is a link or not a regular file; resbench never writes through one", str(part))
    return info.st_size


def _check_announced(total: int | None, limits: Limits, url: str) -> None:
    """Refuse, before writing anything, a response whose announced size cannot be the archive's."""
    if total is not None and (total > limits.size or (limits.exact and total != limits.size)):
        raise _Oversized(f"refusing the download of {url}: it is announced as {total:,} bytes, but the archive "
                         f"is {limits.size:,}; check the URL or --mirror")


def _content_range_start(value: str | None) -> int | None:
    """First byte of a ``Content-Range: bytes A-B/T`` header, or None if absent or malformed."""
    if not value or not value.startswith("bytes "):
        return None
    first = value[len("bytes "):].split("-", 1)[0]
    return int(first) if first.isdigit() else None


def _fetch_once(url: str, part: Path, timeout: float, limits: Limits) -> None:
    """One attempt: continue ``part`` from its current size if the server honours the Range.

    A 206 whose range starts at our offset is appended; anything else (200, or a 206 for
    another range) means the server sends the whole file, so the part file restarts at zero.
    """
    offset = _part_offset(part)
    headers = {"User-Agent": "resbench"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = _open_watched(urllib.request.Request(url, headers=headers), timeout, limits.window)
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
        _check_announced(total, limits, url)
        out = open_own_file(part, append=resumed)
        try:
            with progress(total, part.name, start) as bar:
                _stream(response, out, part, start, limits, url, bar.update)
        except BaseException:
            with contextlib.suppress(OSError):  # the bytes a full disk refused, offered again: the error is known
                out.close()
            raise
        _write(out.close, part, limits)
    if total is not None and part.stat().st_size != total:
        raise _ShortTransfer(f"connection closed after {part.stat().st_size} of {total} bytes")


def _stream(response: http.client.HTTPResponse, out: IO[bytes], part: Path, start: int, limits: Limits, url: str,
            advance: Callable[[int], object]) -> None:
    """Copy the body as it arrives (read1: whatever the socket has, so a trickle is noticed), cutting
    the attempt off when it averages under `limits.min_rate` over a window or outgrows `limits.size`."""
    written, window_start, window_bytes = start, time.monotonic(), 0
    while chunk := response.read1(_CHUNK):
        written += len(chunk)
        if written > limits.size:
            raise _Oversized(f"refusing the download of {url}: it is larger than the archive's "
                             f"{limits.size:,} bytes; check the URL or --mirror")
        _write(lambda: out.write(chunk), part, limits)
        advance(len(chunk))
        window_bytes += len(chunk)
        elapsed = time.monotonic() - window_start
        if elapsed >= limits.window:
            if window_bytes < limits.min_rate * elapsed:
                raise _Stalled(f"only {window_bytes:,} bytes in {elapsed:.0f} s, under the minimum of "
                               f"{limits.min_rate:,.0f} bytes/s")
            window_start, window_bytes = time.monotonic(), 0


def _write(write: Callable[[], object], part: Path, limits: Limits) -> None:
    """`write()`, a failure of which is the disk's, said as such (a network error is retried instead)."""
    try:
        write()
    except OSError as err:
        need = f" (the archive is {limits.size:,} bytes)" if limits.exact else ""
        raise _CannotWrite(f"cannot write {part} ({printable(err.strerror or err)}); {disk_advice(err, need)}, "
                           "then run again: what is written so far is kept and resumed") from None


def disk_advice(err: OSError, need: str = "") -> str:
    """What to do when writing in the data root failed with `err`."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"free space on that disk{need} or pass another --data_root"
    return "pass a --data_root this user can write in"


def _describe(err: Exception) -> str:
    """A short reason: urllib wraps socket errors as '<urlopen error ...>'."""
    if isinstance(err, urllib.error.URLError) and not isinstance(err, urllib.error.HTTPError):
        return printable(err.reason)
    return printable(str(err) or err.__class__.__name__)  # an HTTP status text is the server's: no escapes


def _is_permanent(err: Exception) -> bool:
    """Client errors (404, 403, ...) will not go away by retrying; timeouts and resets may."""
    return isinstance(err, urllib.error.HTTPError) and 400 <= err.code < 500 and err.code not in (408, 416, 429)


def download(url: str, dest: Path, md5: str | None, *, timeout: float = 30.0, tries: int = 4,
             backoff: float = 1.0, size: int | None = None, min_rate: float = MIN_RATE,
             window: float = STALL_WINDOW) -> Path:
    """Download ``url`` to ``dest`` via ``dest.part``; resumable, verified, then moved into place.

    ``timeout`` is the socket timeout in seconds (a stalled server raises instead of hanging);
    the headers must arrive within ``window`` seconds and the body average ``min_rate`` bytes/s
    over every ``window``. Failed attempts are retried ``tries`` times in all, sleeping backoff,
    2*backoff, ... between them and resuming where the previous attempt stopped. A response larger
    than ``size`` (when verifying: of another size) is refused. With ``md5=None`` nothing is checked.
    A partial ``.part`` file is kept after a final failure so that the next run resumes it.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    limits = Limits(size or MAX_UNKNOWN_SIZE, exact=size is not None and md5 is not None, min_rate=min_rate,
                    window=window)
    log(f"downloading {printable(url)}")
    for attempt in range(1, tries + 1):
        try:
            _fetch_once(url, part, timeout, limits)
            break
        except _Oversized:
            part.unlink(missing_ok=True)
            raise
        except UnsafeFileError as err:
            raise DataError(f"cannot download into {part} ({err.strerror}); remove it and run again") from None
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
        log(f"warning: --no_verify: the MD5 of {source.filename} is not checked")
    if dest.is_file():
        log(f"using {printable(dest)}")
        if verify:
            check_md5(dest, source.md5, delete=False)
        return dest
    return download(_archive_url(source, mirror), dest, source.md5 if verify else None, size=source.size)
