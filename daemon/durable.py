"""Durable writes of the files ripeye keeps for itself, and setting aside a state file that no longer reads."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


def write_durably(path: str | Path, data: str | bytes) -> None:
    """Replace `path` with `data` so that a power cut leaves either the old or the new file, never a torn one.

    The data goes to a temp file in the same folder (a rename is only atomic within one file system), is fsync-ed,
    renamed over the target, and the folder is fsync-ed so that the rename itself survives the cut.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_leftovers(path: str | Path) -> None:
    """Delete temp files of `path` left by a writer killed mid-write (only call when no writer runs: at start)."""
    path = Path(path)
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def set_aside(path: str | Path) -> Path:
    """Move a state file that does not parse or validate to `<name>.bad-<UTC time>`, kept for a post-mortem."""
    path = Path(path)
    dest = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    n = 1
    while dest.exists():
        dest = dest.with_name(f"{dest.name.split('~')[0]}~{n}")
        n += 1
    os.replace(path, dest)
    fsync_dir(path.parent)
    return dest
