"""Ray Serve request routers for the engine replicas: chunk-aware (the default) and round-robin (the
baseline it is measured against).

A router is handed the candidate replicas and the pending request; the gateway passed the request's
chunks as the `affinity` keyword (affinity.py). Ray tries the ranks it gets in order and, within a
rank, the replica with the shortest queue that accepts: so the chunks' owner comes first, and when it
is full (max_ongoing_requests) the others follow, least loaded first: the fallback costs nothing.
"""

from __future__ import annotations

import itertools

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from .affinity import ranked


def _affinity(pending_request: PendingRequest | None) -> list[tuple[str, int]]:
    tokens = pending_request.kwargs.get("affinity") if pending_request is not None else None
    return [(str(t), int(w)) for t, w in tokens or []]


class ChunkAffinityRouter(RequestRouter):
    """The replica that owns most of the request's chunk text first (rendezvous hashing), then the rest."""

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        tokens = _affinity(pending_request)
        if not tokens or len(candidate_replicas) < 2:
            return [candidate_replicas]  # no chunks to follow: the least loaded
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        order = ranked(tokens, sorted(by_id))
        return [[by_id[order[0]]], [by_id[r] for r in order[1:]]]


class RoundRobinRouter(RequestRouter):
    """Each replica in turn (by id), whatever the request holds: the baseline for chunk-aware routing."""

    def initialize_state(self, **kwargs) -> None:
        self._turn = itertools.count()

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        ordered = sorted(candidate_replicas, key=lambda r: r.replica_id.unique_id)
        first = next(self._turn) % len(ordered)
        return [[ordered[first]], ordered[first + 1 :] + ordered[:first]]


ROUTERS = {"chunk": ChunkAffinityRouter, "round_robin": RoundRobinRouter}
