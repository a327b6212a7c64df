"""Declared interfaces hold: both engines behind the vector stores provide ChunkKeeper, and a store refuses
anything else by name."""

from __future__ import annotations

import pytest

from fusionrag_integrations.integrations.chunk_keeper import ChunkKeeper
from fusionrag_integrations.integrations.common import store_engine
from fusionrag_integrations.integrations.remote import RemoteEngine


def test_the_local_and_the_remote_engine_are_chunk_keepers(smol_engine):
    remote = RemoteEngine("http://127.0.0.1:9")  # no request is sent: only its surface is checked
    try:
        assert isinstance(smol_engine, ChunkKeeper) and isinstance(remote, ChunkKeeper)
        assert store_engine(smol_engine, None, None, "S", "L") is smol_engine
        assert isinstance(store_engine(None, "http://127.0.0.1:9", None, "S", "L"), RemoteEngine)
    finally:
        remote.close()


def test_a_store_refuses_an_engine_that_is_not_one():
    with pytest.raises(TypeError, match="FRStore: engine= must be a FusionEngine"):
        store_engine(object(), None, None, "FRStore", "FRLLM")
    with pytest.raises(ValueError, match="not both"):
        store_engine(object(), "http://127.0.0.1:9", None, "FRStore", "FRLLM")
