"""Reading a GGUF file once while transformers converts it.

transformers builds the config, the tokenizer and the weights from a GGUF in three separate calls, and
each parses the file's metadata again (a 49K-token vocabulary is hundreds of thousands of small reads of
a memory map: seconds per parse); while it names the tensors it also rebuilds the architecture's
tensor-name table once per module. During a conversion one parsed reader per file and one table per
(architecture, block count) serve every call: the same files are written, and the first run (the
conversion is once per GGUF) waits about half as long.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_LOCK = threading.Lock()  # the patch is process-wide: one conversion at a time holds it


@contextmanager
def gguf_read_once() -> Iterator[None]:
    """Within the block, `gguf.GGUFReader(path)` returns one reader per (path, mode) and
    `gguf.get_tensor_name_map` is memoised; both are restored on exit (also on error)."""
    try:
        import gguf
    except ImportError:  # transformers reports the missing package itself
        yield
        return
    package: Any = gguf  # its attributes are replaced for the block (a class by a function)
    with _LOCK:
        reader_class, name_map = package.GGUFReader, package.get_tensor_name_map
        readers: dict[tuple[str, str], Any] = {}

        def reader(path: Any, mode: str = "r") -> Any:
            key = (str(path), mode)
            if key not in readers:
                readers[key] = reader_class(path, mode)
            return readers[key]

        package.GGUFReader, package.get_tensor_name_map = reader, functools.cache(name_map)
        try:
            yield
        finally:
            package.GGUFReader, package.get_tensor_name_map = reader_class, name_map
