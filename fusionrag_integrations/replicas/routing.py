"""Ray Serve request routers for the engine replicas: chunk-aware (the default) and round-robin (the
baseline it is measured against).

A router is handed the candidate replicas and the pending request; the gateway passed the request's
chunks as the `affinity` keyword (affinity.py). Ray tries the ranks it gets in order and, within a
rank, the replica with the shortest queue that accepts. Offering the others in the same round as the
owner made a busy owner (slow to answer Ray's queue-length probe on a loaded host) lose requests it
could have served at once, so the owner is offered alone for a few rounds first.
"""

from __future__ import annotations

import itertools

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from .affinity import ranked


def _affinity(pending_request: PendingRequest | None) -> list[tuple[str, int]]:
    tokens = pending_request.kwargs.get("affinity") if pending_request is not None else None
    return [(str(t), int(w)) for t, w in tokens or []]


class ChunkAffinityRouter(RequestRouter):
    """The replica that owns most of the request's chunk text (rendezvous hashing); after OWNER_TRIES
    routing rounds in which it did not accept (full, or too slow to answer the queue-length probe on a
    busy host), the others too, least loaded first."""

    OWNER_TRIES = 3

    def initialize_state(self, **kwargs) -> None:
        self._tries: dict[str, int] = {}

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        tokens = _affinity(pending_request)
        if not tokens or len(candidate_replicas) < 2:
            return [candidate_replicas]  # no chunks to follow: the least loaded
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        order = ranked(tokens, sorted(by_id))
        assert pending_request is not None  # its chunks gave the tokens
        request = pending_request.metadata.internal_request_id
        self._tries[request] = tries = self._tries.pop(request, 0) + 1
        if len(self._tries) > 4096:  # routed requests are not always reported back: forget the oldest
            self._tries.pop(next(iter(self._tries)))
        if tries <= self.OWNER_TRIES:
            return [[by_id[order[0]]]]
        return [[by_id[order[0]]], [by_id[r] for r in order[1:]]]

    def on_request_routed(self, pending_request: PendingRequest, replica_id, result) -> None:
        self._tries.pop(pending_request.metadata.internal_request_id, None)


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
