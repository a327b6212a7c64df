"""The gateway's view of a request's chunks, and rendezvous ownership (no Ray needed)."""

from __future__ import annotations

from collections import Counter

from fusionrag_integrations.replicas.affinity import chunk_token, owner, ranked, request_text, routing_tokens
from fusionrag_integrations.store.detect import ChunkIndex

PASSAGES = [f"Passage {i}: the keeper of lighthouse {i} logged {i * 3} ships in the fog of the bay." for i in range(8)]


def chat(*contents) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": c} for c in contents]}


def test_owner_moves_only_the_chunks_of_a_replica_that_left():
    tokens = [chunk_token(f"chunk {i}") for i in range(600)]
    three = {t: owner(t, ["a", "b", "c"]) for t in tokens}
    two = {t: owner(t, ["a", "b"]) for t in tokens}
    assert all(two[t] == three[t] for t in tokens if three[t] != "c")  # a's and b's chunks stay put
    shares = Counter(three.values())
    assert min(shares.values()) > 150  # spread over all three (600 / 3 = 200 each, roughly)
    assert owner(tokens[0], ["b", "a"]) == owner(tokens[0], ["a", "b"])  # order of the list does not matter


def test_ranked_puts_the_owner_of_most_chunk_text_first():
    replicas = ["r1", "r2"]
    mine = [t for t in (chunk_token(f"x{i}") for i in range(50)) if owner(t, replicas) == "r2"][:3]
    theirs = [t for t in (chunk_token(f"y{i}") for i in range(50)) if owner(t, replicas) == "r1"][:1]
    assert ranked([(t, 100) for t in mine] + [(t, 100) for t in theirs], replicas) == ["r2", "r1"]
    assert ranked([(mine[0], 10), (theirs[0], 500)], replicas) == ["r1", "r2"]  # weighted by length


def test_tokens_come_from_the_shared_catalog_found_in_the_messages():
    index = ChunkIndex()
    for p in PASSAGES[:4]:
        index.add(p)
    body = chat("Answer from the passages.", f"Passages:\n{PASSAGES[1]}\n\n{PASSAGES[3]}\n\nWhich one?")
    assert routing_tokens("/v1/chat/completions", body, index) == [
        (chunk_token(PASSAGES[1]), len(PASSAGES[1])),
        (chunk_token(PASSAGES[3]), len(PASSAGES[3])),
    ]
    parts = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": PASSAGES[2]}]}]}
    assert routing_tokens("/v1/chat/completions", parts, index) == [(chunk_token(PASSAGES[2]), len(PASSAGES[2]))]


def test_tokens_without_a_catalog_given_chunks_and_ingests():
    prompt = f"{PASSAGES[0]}\n\n{PASSAGES[5]}\n\nshort line"
    paragraphs = routing_tokens("/v1/completions", {"model": "m", "prompt": prompt}, None)
    assert [t for t, _ in paragraphs] == [chunk_token(PASSAGES[0]), chunk_token(PASSAGES[5])]
    given = chat(f"{PASSAGES[6]} and more") | {"chunks": [PASSAGES[6]]}
    assert routing_tokens("/v1/chat/completions", given, None) == [(chunk_token(PASSAGES[6]), len(PASSAGES[6]))]
    ingest = routing_tokens("/v1/chunks", {"texts": PASSAGES[:2]}, None)
    assert [t for t, _ in ingest] == [chunk_token(PASSAGES[0]), chunk_token(PASSAGES[1])]
    assert routing_tokens("/v1/chat/completions", {"messages": "not a list"}, None) == []
    assert request_text("/v1/completions", {"prompt": ["a", "b"]}) == "a\n\nb"


def test_a_responses_request_routes_by_the_chunks_in_its_input_and_instructions():
    index = ChunkIndex()
    for p in PASSAGES[:4]:
        index.add(p)
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": f"Read this.\n\n{PASSAGES[1]}"}]},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": PASSAGES[2]},
    ]
    body = {"model": "m", "instructions": PASSAGES[0], "input": items}
    found = routing_tokens("/v1/responses", body, index)
    assert found == [(chunk_token(p), len(p)) for p in PASSAGES[:3]]
    assert request_text("/v1/responses", {"input": PASSAGES[3]}) == PASSAGES[3]
