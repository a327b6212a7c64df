"""What a vector store needs of an engine, declared: a local FusionEngine and RemoteEngine (a `fusionrag serve`
server's chunk API) both provide it, and the stores call nothing else, so either can stand behind them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..engine import FusionEngine
    from .remote import RemoteEngine


@runtime_checkable
class ChunkKeeper(Protocol):
    def precompute(
        self,
        texts: Sequence[str],
        context: None = None,
        neighbors: Sequence[Sequence[str]] | None = None,
        show_progress: bool | None = None,
    ) -> list[str]:
        """Compute and store each text's KV (idempotent); their keys, in order."""
        ...

    def keys_for(self, texts: Sequence[str]) -> list[str]:
        """Every stored key of these texts (standalone and context-aware): what a delete forgets."""
        ...

    def forget(self, keys: Sequence[str]) -> int:
        """Remove these entries; how many were known."""
        ...


if TYPE_CHECKING:  # the type checker holds both engines to the protocol

    def _conforms(local: FusionEngine, remote: RemoteEngine) -> tuple[ChunkKeeper, ChunkKeeper]:
        return local, remote
