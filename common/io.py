"""Writing outputs so that an interrupted run never leaves a half-written checkpoint behind."""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Yield a temporary sibling directory; on success it replaces ``path`` in one rename.

    On failure the temporary directory is removed and ``path`` (if it existed) is untouched.
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.exists(path):
        old = os.path.join(parent, f".{os.path.basename(path)}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def build_checkpoint_once(path: str, build: Callable[[str], object], what: str) -> None:
    """Write a checkpoint at ``path`` with ``build(tmp_dir)`` unless one is there (atomically: never half-written)."""
    if os.path.isfile(os.path.join(path, "config.json")):
        return
    logging.getLogger("audiorl").info("building %s in %s", what, path)
    with atomic_dir(path) as tmp:
        build(tmp)


_TEMPORARY = re.compile(r"^\..+\.(?:tmp|old)-(\d+)$")  # atomic_dir's siblings: .<name>.tmp-<pid>, .<name>.old-<pid>


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str) -> list[str]:
    """Remove what an ``atomic_dir`` killed mid-save left in ``folder`` (its process is gone); returns the names."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _TEMPORARY.match(name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
            removed.append(name)
    if removed:
        logging.getLogger("audiorl").info("removed %s left in %s by a killed save", ", ".join(removed), folder)
    return removed
