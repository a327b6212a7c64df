"""What makes a file in the cache directory trustworthy: a key-shaped name and a keyed checksum.

The cache directory is shared state (several processes, a disk that can fail, anyone who can
write there), so nothing read from it is used on its word:
- a key must be 64 lowercase hex digits before it becomes part of a path (no `../`);
- every entry carries a keyed BLAKE3 MAC and every converted model an HMAC-SHA256 over its header
  and payload (BLAKE3 for entries: it hashes on several threads at GB/s, so it does not bound ingest
  the way SHA-256 over tens of MB per chunk did). The key
  is a per-user secret kept outside the cache directory ($FUSIONRAG_CACHE_SECRET, else
  ~/.config/fusionrag/cache.key of the account's home, created 0600 on first use), so write access to the cache
  directory alone can change answers only through entries that are detected and rejected.
  Processes or machines sharing one cache set the same $FUSIONRAG_CACHE_SECRET.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import pwd
import re
import secrets
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TypeGuard

import blake3

log = logging.getLogger(__name__)

_KEY = re.compile(r"[0-9a-f]{64}")
_lock = threading.Lock()
_cached: dict[Path, bytes] = {}


def is_valid_key(key: object) -> TypeGuard[str]:
    """A content key as chunk_key() makes them: exactly 64 lowercase hex digits."""
    return isinstance(key, str) and _KEY.fullmatch(key) is not None


def secret_path() -> Path:
    """The account's key file: under the home directory the password database names for this user, not
    $HOME or $XDG_CONFIG_HOME. A process run with another HOME (a test, a sandbox, a service manager) is
    still the same user and must seal and verify with the same key: with a key of its own it would
    reseal the shared model cache and every later process would rebuild it."""
    try:
        home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    except (KeyError, OSError):  # no entry for this uid (some containers): the environment's home
        home = Path.home()
    return home / ".config" / "fusionrag" / "cache.key"


def cache_secret() -> bytes:
    """The HMAC key for cache files. Without a writable home the checksum still detects damage
    (an unkeyed one), and a warning says that planted entries can no longer be told apart."""
    if env := os.environ.get("FUSIONRAG_CACHE_SECRET"):
        return env.encode()
    path = secret_path()
    with _lock:
        if path not in _cached:
            _cached[path] = _load_or_create(path)
        return _cached[path]


def _load_or_create(path: Path) -> bytes:
    try:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            try:
                os.link(tmp, path)  # first writer wins; a racing process reads the winner's key
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        secret = path.read_text().strip().encode()
        if len(secret) >= 32:
            return secret
        log.warning("%s holds no usable key; cache files get an unkeyed checksum", path)
    except OSError as err:
        log.warning("cannot keep a cache key at %s (%s); cache files get an unkeyed checksum", path, err)
    return b""


def seal(secret: bytes, parts: Iterable[bytes | memoryview]) -> str:
    """HMAC-SHA256 over length-prefixed parts (so no two part lists share a byte stream)."""
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    for part in parts:
        mac.update(len(part).to_bytes(8, "little"))
        mac.update(part)
    return mac.hexdigest()


def verify(secret: bytes, parts: Iterable[bytes | memoryview], expected: object) -> bool:
    return isinstance(expected, str) and hmac.compare_digest(seal(secret, parts), expected)


def seal_payload(secret: bytes, parts: Iterable[bytes | memoryview]) -> str:
    """Keyed BLAKE3 over length-prefixed parts, multi-threaded on large ones (chunk entries)."""
    mac = blake3.blake3(key=hashlib.sha256(secret).digest(), max_threads=blake3.blake3.AUTO)
    for part in parts:
        mac.update(len(part).to_bytes(8, "little"))
        mac.update(part)
    return mac.hexdigest()


def verify_payload(secret: bytes, parts: Iterable[bytes | memoryview], expected: object) -> bool:
    return isinstance(expected, str) and hmac.compare_digest(seal_payload(secret, parts), expected)
