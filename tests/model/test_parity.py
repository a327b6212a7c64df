"""Our forward against transformers' own, logits at every position of a 64-token prompt."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from fusionrag_integrations import FusionEngine
from fusionrag_integrations.model.attention import AttentionMode
from tests.conftest import TINY_FAMILIES, shared_config


def our_logits(engine: FusionEngine, ids: list[int], mode: AttentionMode) -> torch.Tensor:
    n = len(ids)
    cache = engine.model.new_cache(n)
    return engine.model.forward(torch.tensor(ids), torch.arange(n), cache, mode, n - 1, all_logits=True)


def hf_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


@pytest.mark.parametrize("mode", [AttentionMode.CAUSAL_FROM_ZERO, AttentionMode.BY_POSITION])
def test_smollm2_gguf_logits_match_transformers(smol_engine, hf_smol, mode):
    ids = torch.randint(
        0, smol_engine.model.config.vocab_size, (64,), generator=torch.Generator().manual_seed(0)
    ).tolist()
    ours, ref = our_logits(smol_engine, ids, mode), hf_logits(hf_smol, ids)
    assert ref.std() > 1.0  # a real model: logits spread widely
    assert (ours - ref).abs().max().item() <= 1e-3


@pytest.mark.parametrize("family", list(TINY_FAMILIES))
def test_tiny_family_logits_match_transformers_fp32(family, tiny_engines, tiny_model_dirs):
    engine = tiny_engines[family]
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[family], dtype=torch.float32).eval()
    ids = torch.randint(0, 49152, (64,), generator=torch.Generator().manual_seed(1)).tolist()
    ref = hf_logits(hf, ids)
    assert ref.std() > 0.05
    for mode in (AttentionMode.CAUSAL_FROM_ZERO, AttentionMode.BY_POSITION):
        assert (our_logits(engine, ids, mode) - ref).abs().max().item() <= 1e-3


@pytest.mark.parametrize("family", ["llama3_rope", "qwen3"])
def test_tiny_family_logits_match_transformers_bf16(family, tiny_model_dirs):
    engine = FusionEngine.from_pretrained(
        tiny_model_dirs[family], device="cpu", dtype="bfloat16", config=shared_config()
    )
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[family], dtype=torch.bfloat16).eval()
    ids = torch.randint(0, 49152, (64,), generator=torch.Generator().manual_seed(2)).tolist()
    ours, ref = our_logits(engine, ids, AttentionMode.CAUSAL_FROM_ZERO), hf_logits(hf, ids)
    rel = (ours - ref).norm() / ref.norm()
    assert rel.item() < 2e-2  # bf16 operands: a few roundings apart


def test_families_are_what_they_claim(tiny_engines):
    """Guards the parity tests above: each family exercises its distinguishing feature."""
    assert tiny_engines["qwen2"].model.layers[0].qkv_bias is not None
    assert tiny_engines["qwen3"].model.layers[0].q_norm is not None
    assert tiny_engines["qwen3"].model.config.head_dim == 32
    assert tiny_engines["llama3_rope"].model.config.rope_type == "llama3"
    assert tiny_engines["llama_tied"].model.lm_head is tiny_engines["llama_tied"].model.embed_weight
