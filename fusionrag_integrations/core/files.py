"""Filesystem helpers shared by the caches."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def build_directory_once(out: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """Create `out` by running build(tmp) in a temporary sibling and renaming it into place.

    The rename is atomic: concurrent builders (other processes) either win or find a complete
    directory (one holding `marker`); nobody ever sees a half-written one.
    """
    if (out / marker).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    try:
        build(tmp)
        os.replace(tmp, out)
    except OSError:
        if not (out / marker).is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
