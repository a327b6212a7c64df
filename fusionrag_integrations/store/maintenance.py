"""`fusionrag cache stats | prune | verify`: the persistent chunk-KV cache, without loading a model.

A cache directory holds one store per (model, tokenizer, chunk prefix, stored-KV format) under
`cache_dir/kv/<namespace>/`: entry files in two-hex-digit shards and a catalog. These commands read
entry headers and the catalogs' usage table (the disk budget's bookkeeping), never tensor data,
except `verify`, which checks every entry's MAC, shapes and key and deletes the bad ones (a later
request recomputes them, as it would on its own).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..integrity import cache_secret
from .catalog import SqliteCatalog
from .chunk_kv import CorruptEntryError, read_entry, read_header
from .entry_files import entry_files


def stores(cache_dir: Path) -> list[Path]:
    root = Path(cache_dir) / "kv"
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()) if root.is_dir() else []


def _catalog(store: Path) -> SqliteCatalog:
    return SqliteCatalog(store / "catalog.sqlite", store.name)  # a store's catalog rows are keyed by its folder name


def stats(cache_dir: Path) -> list[dict]:
    """Per store: entries, bytes on disk, entries per stored-KV format, catalogued entries."""
    out = []
    for store in stores(cache_dir):
        files = list(entry_files(store))
        formats: Counter[str] = Counter()
        for path in files:
            try:
                formats[read_header(path).get("kv_format", "unknown")] += 1
            except CorruptEntryError:
                formats["unreadable"] += 1
        catalog = _catalog(store)
        out.append(
            {
                "store": store.name,
                "entries": len(files),
                "bytes": sum(p.stat().st_size for p in files),
                "formats": dict(formats),
                "catalogued": len(catalog.refs_since(0)[0]),
            }
        )
        catalog.close()
    return out


def prune(cache_dir: Path, max_bytes: int) -> dict:
    """Delete least recently used entries (across every store) until the directory's entries take at most
    max_bytes; entries the usage table does not know count as used when last modified."""
    candidates, total = [], 0
    catalogs = {store: _catalog(store) for store in stores(cache_dir)}
    for store, catalog in catalogs.items():
        known = {key: (size, used) for key, size, used in catalog.least_recent()}
        for path in entry_files(store):
            key, size = path.name[: -len(".safetensors")], path.stat().st_size
            used = known.get(key, (size, path.stat().st_mtime))[1]
            candidates.append((used, key, size, store, path))
            total += size
    removed, freed = 0, 0
    for _, key, size, store, path in sorted(candidates, key=lambda c: c[0]):
        if total - freed <= max_bytes:
            break
        path.unlink(missing_ok=True)
        catalogs[store].remove([key])
        removed, freed = removed + 1, freed + size
    for catalog in catalogs.values():
        catalog.close()
    return {"removed": removed, "freed_bytes": freed, "bytes": total - freed}


def verify(cache_dir: Path) -> dict:
    """Read and check every entry (MAC with this user's cache key, header, shapes); delete the bad ones."""
    good, bad, secret = 0, 0, cache_secret()
    for store in stores(cache_dir):
        catalog = _catalog(store)
        for path in entry_files(store):
            key = path.name[: -len(".safetensors")]
            try:
                read_entry(path, key, read_header(path).get("model_fingerprint", ""), secret)
                good += 1
            except CorruptEntryError:
                bad += 1
                path.unlink(missing_ok=True)
                catalog.remove([key])
        catalog.close()
    return {"verified": good, "removed": bad}
