"""/tokenize, /detokenize and /v1/embeddings, driven over HTTP (the official openai client for the
embeddings): counts equal what generation reports, ids read back, vectors equal the in-process
encoder's, and bad input is a 400 naming the field."""

from __future__ import annotations

import base64
import struct

import httpx
import pytest

from tests.server.conftest import API_KEY, MODEL

AUTH = {"Authorization": f"Bearer {API_KEY}"}
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]


def post(server: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server}{path}", json=body, headers=AUTH, timeout=120)


def test_tokenize_counts_what_generation_reports_and_detokenize_reads_ids_back(server):
    chat = post(server, "/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "max_tokens": 1}).json()
    counted = post(server, "/tokenize", {"model": MODEL, "messages": MESSAGES}).json()
    assert counted["count"] == len(counted["tokens"]) == chat["usage"]["prompt_tokens"]
    assert counted["max_model_len"] >= counted["count"]
    completion = post(server, "/v1/completions", {"model": MODEL, "prompt": "The sea is", "max_tokens": 1}).json()
    plain = post(server, "/tokenize", {"prompt": "The sea is"}).json()
    assert plain["count"] == completion["usage"]["prompt_tokens"]
    assert post(server, "/detokenize", {"tokens": plain["tokens"]}).json()["prompt"].endswith("The sea is")
    rendered = post(server, "/detokenize", {"tokens": counted["tokens"]}).json()["prompt"]
    assert "Be brief." in rendered and "Name a colour." in rendered


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/tokenize", {"prompt": "a", "messages": MESSAGES}, "prompt or messages"),
        ("/tokenize", {"prompt": "a", "model": "gpt-9"}, "gpt-9"),
        ("/detokenize", {"tokens": [1, -3]}, "tokens"),
        ("/detokenize", {"tokens": [10**9]}, "tokens"),
        ("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": ["a", ""]}, "input"),
        ("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": "a", "dimensions": 64}, "dimensions"),
        ("/v1/embeddings", {"model": MODEL, "input": "a"}, MODEL),
    ],
)
def test_bad_input_is_refused_by_name(server, path, body, field):
    response = post(server, path, body)
    assert response.status_code in (400, 404) and field in response.json()["error"]["message"], response.text


def test_embeddings_equal_the_bundled_encoder_in_process(server, embeddings):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    texts = ["The lighthouse is red.", "Voyager 2 visited Neptune."]
    out = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts, encoding_format="float")
    local = embeddings.embed_documents(texts)
    assert [d.index for d in out.data] == [0, 1] and out.usage.prompt_tokens > 0
    for remote, mine in zip(out.data, local):
        assert len(remote.embedding) == len(mine) == 384
        assert max(abs(a - b) for a, b in zip(remote.embedding, mine)) < 1e-5
    packed = post(server, "/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": texts[0],
                                             "encoding_format": "base64"}).json()  # fmt: skip
    raw = base64.b64decode(packed["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(local[0], abs=1e-5)


def test_the_api_docs_are_served_behind_the_key(server):
    page = httpx.get(f"{server}/docs", headers=AUTH, timeout=30)
    assert page.status_code == 200 and "swagger" in page.text.lower()
    schema = httpx.get(f"{server}/openapi.json", headers=AUTH, timeout=30).json()
    assert {"/tokenize", "/detokenize", "/v1/embeddings", "/v1/chat/completions"} <= set(schema["paths"])
