"""Directories the package builds once and reuses (converted models, unpacked embedders), verified on use.

A folder under the cache directory with a predictable name would otherwise be loaded on its
word: weights, tokenizer, a chat template that rewrites the system prompt. Each build ends
with MANIFEST (every file's BLAKE3 digest and an HMAC over them, keyed by integrity.cache_secret),
written last inside a temporary folder that is renamed into place, so a folder is complete
and verified or it is rebuilt: a changed, missing or extra file, or a truncated config,
sends it aside and it is built again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import blake3

from ..integrity import cache_secret, seal, verify

log = logging.getLogger(__name__)
MANIFEST = "fusionrag-manifest.json"


def build_directory_once(out: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """Create `out` by running build(tmp) in a temporary sibling and renaming it into place.

    The rename is atomic: concurrent builders (other processes) either win or find a complete
    directory (one holding `marker`); nobody ever sees a half-written one.
    """
    if (out / marker).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the built folder is as readable as any other
    try:
        build(tmp)
        os.replace(tmp, out)
    except OSError:
        if not (out / marker).is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def verified_directory(out: Path, build: Callable[[Path], None], source: str) -> Path:
    """`out`, built by build(tmp) if absent, and rebuilt when it fails verification. `source` names
    what it was built from (recorded in, and checked against, the manifest)."""
    secret = cache_secret()
    if out.is_dir():
        problem = manifest_problem(out, secret, source)
        if problem is None:
            return out
        log.warning("%s failed verification (%s): rebuilding it", out, problem)
        _set_aside(out)

    def build_with_manifest(tmp: Path) -> None:
        build(tmp)
        write_manifest(tmp, secret, source)

    return build_directory_once(out, MANIFEST, build_with_manifest)


MANIFEST_FORMAT = 2  # 2: BLAKE3 digests (a model's weights verify on every load: 0.06 s for 517 MB, not 0.5)


def _file_digest(path: Path) -> str:
    digest = blake3.blake3(max_threads=blake3.blake3.AUTO)
    if path.stat().st_size:
        digest.update_mmap(str(path))
    return digest.hexdigest()


def _listing(folder: Path) -> list[str]:
    """Every entry below `folder` except the manifest, relative, sorted; symlinks count as entries."""
    names = []
    for root, dirs, files in os.walk(folder):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            rel = os.path.relpath(os.path.join(root, name), folder)
            if rel != MANIFEST:
                names.append(rel)
    return sorted(names)


def _sealed(source: str, files: dict[str, str]) -> list[bytes]:
    return [source.encode(), json.dumps(sorted(files.items())).encode()]


def write_manifest(folder: Path, secret: bytes, source: str) -> None:
    files = {name: _file_digest(folder / name) for name in _listing(folder)}
    manifest = {
        "format": MANIFEST_FORMAT,
        "source": source,
        "files": files,
        "mac": seal(secret, _sealed(source, files)),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def manifest_problem(folder: Path, secret: bytes, source: str) -> str | None:
    """None when every file is the one the manifest lists (and nothing else is there); else why not."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files, mac = manifest["files"], manifest["mac"]
        if not isinstance(files, dict):
            return "malformed manifest"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"no readable manifest ({type(err).__name__})"
    if manifest.get("format") != MANIFEST_FORMAT:
        return "an older manifest format"
    if manifest.get("source") != source:
        return "built from another source"
    if not verify(secret, _sealed(source, files), mac):
        return "manifest not sealed with this cache's key"
    present = _listing(folder)
    if present != sorted(files):
        extra, missing = set(present) - set(files), set(files) - set(present)
        return f"files differ (extra: {sorted(extra)[:3]}, missing: {sorted(missing)[:3]})"
    for name, digest in files.items():
        path = folder / name
        if path.is_symlink() or _file_digest(path) != digest:
            return f"{name} changed"
    return None


def _set_aside(out: Path) -> None:
    """Rename first (atomic: readers see the old folder or none), then delete."""
    aside = out.with_name(f".bad-{out.name}-{os.getpid()}-{time.time_ns()}")
    try:
        os.replace(out, aside)
    except OSError:  # another process already moved it
        return
    shutil.rmtree(aside, ignore_errors=True)
