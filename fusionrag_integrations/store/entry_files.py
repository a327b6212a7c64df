"""Entry files in a store's directory: finding them (and nothing else), and the temporary files of
writers that died mid-write."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

from ..integrity import is_valid_key


def remove_stale_temp_files(directory: Path, age_s: float = 600.0) -> int:
    """Temporary files of writers that died mid-write (kill -9, power loss): never read (their names are
    not keys), but they take space. Young ones may belong to a live writer and are left alone."""
    removed, cutoff = 0, time.time() - age_s
    for path in directory.glob("??/.*.tmp"):
        try:
            if path.is_file() and not path.is_symlink() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except OSError:
            continue
    return removed


def entry_files(directory: Path) -> Iterable[Path]:
    """<dir>/<2 hex>/<64 hex>.safetensors files; anything else in the directory is left alone."""
    with os.scandir(directory) as shards:
        for shard in shards:
            if len(shard.name) != 2 or not shard.is_dir(follow_symlinks=False):
                continue
            with os.scandir(shard.path) as files:
                for f in files:
                    key = f.name[: -len(".safetensors")] if f.name.endswith(".safetensors") else ""
                    if is_valid_key(key) and key[:2] == shard.name and f.is_file(follow_symlinks=False):
                        yield Path(f.path)
