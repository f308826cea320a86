"""The teacher zoo's cache folder: where each entry lives, and making an entry exactly once.

    downloads/<file>          a published file (downloads/<file>.part while it arrives)
    files/<name>.pth          a checkpoint taken out of an archive
    converted/<name>-<C>cls/  a classifier's variables for C classes
    locks/                    one lock file per entry (`downloads.lock`)

`make_once` writes an entry under its lock; its writer uses a temporary name (`tmp`) and
renames the entry into place once complete and checked, so a partial entry is never used.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
from collections.abc import Callable

from luminet_jax import downloads, teacher_zoo


class Cache:
    """The paths of the cache's entries under `root`."""

    def __init__(self, root: str):
        self.root = root

    def download(self, source: teacher_zoo.Source) -> str:
        return os.path.join(self.root, "downloads", source.file)

    def extracted(self, name: str) -> str:
        return os.path.join(self.root, "files", name + ".pth")

    def converted(self, name: str, num_classes: int) -> str:
        return os.path.join(self.root, "converted", f"{name}-{num_classes}cls")

    def lock(self, entry: str) -> str:
        kind = os.path.basename(os.path.dirname(entry))
        return os.path.join(self.root, "locks", f"{kind}-{os.path.basename(entry)}.lock")

    def state(self, name: str, teacher: teacher_zoo.Teacher) -> tuple[str, int]:
        """(what of entry `name` is cached, its size in bytes) for `luminet-teachers list`."""
        source = teacher_zoo.SOURCES[teacher.source]
        file = self.extracted(name) if teacher.in_archive else self.download(source)
        pattern = glob.escape(os.path.join(self.root, "converted", name)) + "-*cls"
        converted = sorted(glob.glob(pattern))
        if converted:
            classes = ",".join(p.rsplit("-", 1)[1].removesuffix("cls") for p in converted)
            return f"converted ({classes} cl.)", sum(map(size, converted)) + size(file)
        if os.path.exists(file):
            return "file", size(file)
        if os.path.exists(self.download(source)):
            return "archive", 0
        return "-", 0


def size(path: str) -> int:
    """Bytes of a file, or of all files under a folder (0 when absent)."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path) if os.path.exists(path) else 0


def tmp(path: str) -> str:
    """A temporary name beside `path`, unique to this process."""
    return f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"


def make_once(
    cache: Cache,
    path: str,
    make: Callable[[str], None],
    *,
    process: int,
    what: str,
    wait_s: float,
) -> str:
    """`path` once complete: made by `make(path)` under its lock (process 0), or waited for
    (other processes: process 0 makes it). Returns `path`.

    Raises:
      TimeoutError: another process waited `wait_s` seconds in vain.
    """
    if os.path.exists(path):
        return path
    if process != 0:
        downloads.wait_for(path, what=f"process 0 {what}", timeout=wait_s)
        return path
    with downloads.lock(cache.lock(path), what=what):
        if not os.path.exists(path):  # not made meanwhile by the process we waited for
            os.makedirs(os.path.dirname(path), exist_ok=True)
            for stale in glob.glob(glob.escape(path) + ".tmp-*"):  # a crashed writer's
                shutil.rmtree(stale) if os.path.isdir(stale) else os.remove(stale)
            make(path)
    return path
