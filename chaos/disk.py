"""A small disk that can be filled: a tmpfs mounted for PostgreSQL's data directory (its WAL
too), for the chaos run's disk-full fault and the disk-full fault test.

Filling it is what running out of space is on a database host: every write that needs a new
block fails with ENOSPC, while reads and writes into blocks already allocated go on. A ballast
file takes the last free byte and removing it gives the space back at once. Needs root (mount).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

COMMAND_TIMEOUT_S = 10
CHUNK = b"\0" * (1 << 20)
PAGE = b"\0" * 4096


class DiskUnavailable(RuntimeError):
    """No tmpfs can be mounted here (not root, or a container without the capability)."""


@contextlib.contextmanager
def tmpfs(size_mib: int, prefix: str = "pinksea-disk-") -> Iterator[Path]:
    """A tmpfs of ``size_mib`` at a fresh directory (mode 755: the ``postgres`` user reaches a
    data directory inside it), unmounted and removed on exit."""
    assert size_mib > 0, size_mib
    if os.geteuid() != 0:
        raise DiskUnavailable("mounting a tmpfs needs root")
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    if mounted.returncode != 0:
        path.rmdir()
        raise DiskUnavailable(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=COMMAND_TIMEOUT_S)
        with contextlib.suppress(OSError):
            path.rmdir()


def fill(ballast: Path, size_mib_max: int) -> int:
    """Write ``ballast`` until its file system is full; returns the bytes written. Bounded by
    ``size_mib_max`` (the disk's size): a disk that never fills is a caller's mistake."""
    assert size_mib_max > 0, size_mib_max
    written = 0
    with ballast.open("wb", buffering=0) as f:
        for _ in range(size_mib_max + 1):
            try:
                written += f.write(CHUNK)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
        else:
            raise AssertionError(f"{ballast}: {size_mib_max} MiB written and the disk not full")
        # The last partial megabyte: a tmpfs takes writes down to its last page.
        for _ in range(len(CHUNK) // len(PAGE)):
            try:
                written += f.write(PAGE)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
    assert written > 0 or free_bytes(ballast.parent) < len(PAGE), "nothing written, space left"
    return written


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
