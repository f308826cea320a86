"""Files from the network into a cache: resumable downloads, a mirror, locks, a progress bar.

`download(url, part)` appends to a `.part` file with an HTTP Range request when one is
there (a server that ignores the range starts it over), so an interrupted download resumes.
The caller checks the part and renames it into place: a partial file is never used.
`lock(path)` serializes the processes of one machine (or of a shared file system) on a
cache entry with `fcntl.flock`, which the kernel releases when its holder dies, so the lock
file left by a crash never blocks anyone. Status lines and the bar go to stderr, as
torch.hub's do.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

USER_AGENT = "luminet_jax (teacher zoo)"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0  # per network operation (connect, each read)


class DownloadError(OSError):
    """A download that failed or was cut off (the message is one line)."""


def say(text: str) -> None:
    """A status line on stderr."""
    print(text, file=sys.stderr, flush=True)


def mirror_url(url: str, mirror: str) -> str:
    """`url` with its scheme and host replaced by the mirror's (and the mirror's path put
    before its own): `https://a.org/x/f.pth` + `http://m:8000/base` -> `http://m:8000/base/x/f.pth`.

    Raises:
      ValueError: a mirror that is not `scheme://host[:port][/path]`.
    """
    if not mirror:
        return url
    base, src = urllib.parse.urlsplit(mirror), urllib.parse.urlsplit(url)
    if not base.scheme or not base.netloc:
        raise ValueError(f"teacher mirror {mirror!r} is not a URL like http://host[:port][/path]")
    path = base.path.rstrip("/") + src.path
    return urllib.parse.urlunsplit((base.scheme, base.netloc, path, src.query, ""))


class _Progress:
    """`label  42%  35.1/83.3 MB  12.0 MB/s` redrawn in place on a terminal; elsewhere a line
    at every quarter (or every 100 MB when the size is unknown)."""

    def __init__(self, label: str, total: int | None, start: int):
        self.label, self.total, self.start = label, total, start
        self.tty = sys.stderr.isatty()
        self.t0 = self.shown = time.monotonic()
        self.mark = self._mark(start)

    def _mark(self, done: int) -> int:
        return done * 4 // self.total if self.total else done // (100 << 20)

    def _text(self, done: int) -> str:
        rate = (done - self.start) / max(time.monotonic() - self.t0, 1e-6) / 1e6
        size = (
            f"{done / 1e6:.1f}/{self.total / 1e6:.1f} MB" if self.total else f"{done / 1e6:.1f} MB"
        )
        pct = f"{100 * done // self.total:3d}%  " if self.total else ""
        return f"  {self.label}  {pct}{size}  {rate:.1f} MB/s"

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.tty and now - self.shown >= 0.2:
            sys.stderr.write("\r" + self._text(done))
            sys.stderr.flush()
            self.shown = now
        elif not self.tty and self._mark(done) > self.mark:
            self.mark = self._mark(done)
            say(self._text(done))

    def close(self, done: int) -> None:
        if self.tty:
            sys.stderr.write("\r" + self._text(done) + "\n")
            sys.stderr.flush()


def _open(url: str, start: int, timeout: float):
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return f"{e.reason}"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def download(url: str, part: str, *, label: str = "", timeout: float = TIMEOUT_S) -> None:
    """Downloads `url` into the file `part`, resuming it when it already holds a beginning.

    Args:
      url: http(s) URL.
      part: the partial file (created, or appended to after a Range request).
      label: what the progress bar calls it (default: the file name).
      timeout: seconds for the connection and for each read.

    Raises:
      DownloadError: unreachable, refused, an HTTP error, or cut off before the announced
        length (the part keeps what arrived: the next call resumes it).
    """
    label = label or os.path.basename(part).removesuffix(".part")
    have = os.path.getsize(part) if os.path.isfile(part) else 0
    try:
        response = _open(url, have, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing after `have`: the part is whole; let the check tell
            return
        raise DownloadError(_reason(e)) from e
    except (OSError, http.client.HTTPException) as e:
        raise DownloadError(_reason(e)) from e
    with response:
        resumed = have > 0 and response.status == 206
        if resumed:
            match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if not match or int(match[1]) != have:  # resumed elsewhere: start over next time
                os.remove(part)
                raise DownloadError(
                    f"the server resumed at the wrong offset ({match and match[1]})"
                )
        else:
            have = 0
        length = response.headers.get("Content-Length", "")
        total = have + int(length) if length.isdigit() else None
        if have:
            say(f"  resuming {label} at {have / 1e6:.1f} MB")
        bar, done = _Progress(label, total, have), have
        try:
            with open(part, "ab" if resumed else "wb") as f:
                while chunk := response.read(CHUNK_BYTES):
                    f.write(chunk)
                    done += len(chunk)
                    bar.update(done)
        except (OSError, http.client.HTTPException) as e:  # socket timeouts are OSErrors
            raise DownloadError(
                f"cut off after {done} of {total or '?'} bytes ({_reason(e)}); the next "
                "attempt resumes it"
            ) from e
        finally:
            bar.close(done)
    if total is not None and done < total:
        raise DownloadError(f"cut off after {done} of {total} bytes; the next attempt resumes it")


def sha256(path: str) -> str:
    """The file's sha256 hex digest."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def lock(
    path: str, *, what: str, timeout: float | None = None, poll: float = 0.2
) -> Iterator[None]:
    """Holds an exclusive `fcntl.flock` on `path` (created) for the `with` block.

    The holder's host and pid are written into the file for the waiters' message. The lock
    dies with its process, so a crash leaves a harmless file.

    Args:
      path: the lock file.
      what: what the holder is doing, for the waiting message.
      timeout: seconds to wait before TimeoutError (None: no limit).
      poll: seconds between attempts.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        start, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "?"
                    say(f"  waiting for {holder} ({what})")
                    told = True
                if timeout is not None and time.monotonic() - start > timeout:
                    raise TimeoutError(
                        f"{path} stayed locked for {timeout:.0f} s ({what})"
                    ) from None
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def wait_for(path: str, *, what: str, timeout: float, poll: float = 0.5) -> None:
    """Waits until `path` exists (another process writes it).

    Raises:
      TimeoutError: after `timeout` seconds.
    """
    start, told = time.monotonic(), False
    while not os.path.exists(path):
        if not told:
            say(f"  waiting for {what}")
            told = True
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: {path} did not appear within {timeout:.0f} s")
        time.sleep(poll)
