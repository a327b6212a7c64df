"""Compact stored KV (fp8, int4): bounded reconstruction error, the fused dequantise-and-place kernel
equal to its reference, the bytes on disk, answers that stay close to native storage, and a store
that never mixes formats."""

from __future__ import annotations

import pytest
import torch

from fusionrag_integrations.kernels.codecs import decode, encode
from fusionrag_integrations.kernels.dequant_place import place_compact, place_compact_ref
from fusionrag_integrations.kernels.rope_gather import place_rotated_ref, rotation
from fusionrag_integrations.store.chunk_kv import CorruptEntryError, read_entry
from tests.conftest import DOCS, engine_on, rag_messages

BOUNDS = {"fp8": 0.04, "int4": 0.12}  # relative Frobenius error on Gaussian KV with outlier channels


def random_kv(tokens: int, seed: int, dim: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(3, tokens, 2, dim, generator=g) + 0.5
    k[..., 3] *= 12  # keys have outlier channels
    return k, torch.randn(3, tokens, 2, dim, generator=g)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("kv_format", ["fp8", "int4"])
@pytest.mark.parametrize("tokens", [1, 63, 64, 150])
def test_reconstruction_error_is_bounded(kv_format, tokens):
    k, v = random_kv(tokens, seed=tokens)
    kc, vc, scales = encode(k, v, kv_format)
    assert kc.dtype == torch.uint8 and kc.numel() < k.numel() * 4  # codes, not floats
    assert 0 < rel(decode(kc, scales, "k", kv_format, torch.float32), k) < BOUNDS[kv_format]
    assert 0 < rel(decode(vc, scales, "v", kv_format, torch.float32), v) < BOUNDS[kv_format]


@pytest.mark.parametrize("kv_format", ["fp8", "int4"])
@pytest.mark.parametrize("dst_dtype", [torch.float32, torch.bfloat16])
def test_fused_kernel_equals_the_reference(kv_format, dst_dtype, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    k, v = random_kv(100, seed=7)
    kc, vc, scales = encode(k, v, kv_format)
    cos, sin = rotation(37, 1.0 / (10000 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64)))
    ref_k, ref_v = torch.zeros(3, 100, 2, 64, dtype=dst_dtype), torch.zeros(3, 100, 2, 64, dtype=dst_dtype)
    out_k, out_v = torch.zeros_like(ref_k), torch.zeros_like(ref_v)
    place_compact_ref(ref_k, ref_v, (kc, vc), scales, kv_format, cos, sin)
    place_compact(out_k, out_v, (kc, vc), scales, kv_format, cos, sin, backend="always")
    tol = 1e-6 if dst_dtype == torch.float32 else 1e-2
    assert rel(out_k, ref_k) < tol and rel(out_v, ref_v) < tol
    exact_k = torch.zeros(3, 100, 2, 64)  # and it is the rotation of the original keys, within the codec's error
    place_rotated_ref(exact_k, k, cos, sin)
    assert rel(out_k, exact_k) < BOUNDS[kv_format]


@pytest.fixture(scope="module")
def stores(smol_engine, tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    engines = {f: engine_on(smol_engine.loaded, root / f, kv_format=f) for f in ("native", "fp8", "int4")}
    keys = {f: e.precompute(DOCS) for f, e in engines.items()}
    return engines, keys


def test_bytes_on_disk_per_format(stores):
    engines, keys = stores
    size = {f: sum(e.chunks.store.path(k).stat().st_size for k in keys[f]) for f, e in engines.items()}
    assert size["fp8"] / (size["native"] / 2) <= 0.53 and size["int4"] / (size["native"] / 2) <= 0.30
    assert len({k for f in keys for k in keys[f]}) == 3 * len(DOCS)  # each format its own keys


def test_compact_stores_answer_close_to_native(stores):
    engines, _ = stores
    messages = rag_messages(DOCS)
    logits = {}
    for f, e in engines.items():
        first = e.generate(messages, max_new_tokens=1, selector="none")
        assert first.stats.chunks_reused == len(DOCS) and first.stats.chunks_computed == 0
        logits[f] = e.prefill(messages, selector="none").logits.float().log_softmax(-1)
    for f in ("fp8", "int4"):
        kl = float((logits["native"].exp() * (logits["native"] - logits[f])).sum())
        assert kl < (0.05 if f == "fp8" else 0.5), (f, kl)
    full = {f: e.generate(messages, max_new_tokens=8, selector="full").token_ids for f, e in engines.items()}
    assert full["fp8"] == full["native"] == full["int4"]  # `full` recomputes every chunk: storage is irrelevant


def test_an_entry_of_another_format_is_never_used(stores, smol_engine):
    engines, keys = stores
    native, int4 = engines["native"].chunks.store, engines["int4"].chunks.store
    planted = int4.path(keys["int4"][0])
    planted.write_bytes(native.path(keys["native"][0]).read_bytes())  # a native file under an int4 key
    with pytest.raises(CorruptEntryError, match="key"):
        read_entry(planted, keys["int4"][0], smol_engine.loaded.model_fingerprint, int4.secret)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kv_format", ["fp8", "int4"])
def test_fused_kernel_on_the_gpu_equals_the_reference(kv_format):
    """The 8B shape's chunk (8 KV heads of 128), 4 layers, a bf16 cache."""
    g = torch.Generator(device="cuda").manual_seed(3)
    k = torch.randn(4, 512, 8, 128, device="cuda", generator=g, dtype=torch.bfloat16)
    v = torch.randn(4, 512, 8, 128, device="cuda", generator=g, dtype=torch.bfloat16)
    kc, vc, scales = encode(k, v, kv_format)
    cos, sin = rotation(1000, 1.0 / (500000 ** (torch.arange(0, 128, 2, dtype=torch.float64) / 128)))
    ref_k, ref_v = torch.zeros_like(k), torch.zeros_like(v)
    out_k, out_v = torch.zeros_like(k), torch.zeros_like(v)
    place_compact_ref(ref_k, ref_v, (kc, vc), scales, kv_format, cos.cuda(), sin.cuda())
    place_compact(out_k, out_v, (kc, vc), scales, kv_format, cos, sin, backend="always")
    assert rel(out_k, ref_k) < 1e-2 and rel(out_v, ref_v) < 1e-2
