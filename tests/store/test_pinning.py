"""Threaded pinning for the CPU tier's demotions: the settings it asks PyTorch for, the user's choice kept."""

from __future__ import annotations

import pytest
import torch

from fusionrag_integrations.store import pinning
from fusionrag_integrations.store.pinning import register_threads, threaded_pinning_settings

CUDA = torch.cuda.is_available()


@pytest.mark.parametrize(("cpus", "threads"), [(None, 1), (1, 1), (3, 2), (12, 8), (16, 16), (128, 16)])
def test_register_threads_are_a_power_of_two_within_the_cpus(cpus, threads):
    assert register_threads(cpus) == threads


def test_the_settings_a_process_has_are_kept_and_ours_added():
    got = threaded_pinning_settings("expandable_segments:True,garbage_collection_threshold:0.8", 32)
    assert got == (
        "expandable_segments:True,garbage_collection_threshold:0.8,"
        "pinned_use_cuda_host_register:True,pinned_num_register_threads:16"
    )
    assert threaded_pinning_settings("", 4) == "pinned_use_cuda_host_register:True,pinned_num_register_threads:4"


@pytest.mark.parametrize(
    "settings",
    [
        "pinned_use_cuda_host_register:False",
        "expandable_segments:True,pinned_num_register_threads:4",
        "pinned_use_background_threads:True",
    ],
)
def test_a_pinning_option_the_user_chose_stands(settings):
    assert threaded_pinning_settings(settings, 16) is None


def test_the_environment_is_read_when_pytorch_cannot_say(monkeypatch):
    monkeypatch.delattr(torch._C, "_accelerator_getAllocatorSettings", raising=False)
    monkeypatch.setattr(pinning, "_set_here", [])  # nothing set by this process yet
    env = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "PYTORCH_ALLOC_CONF": "max_split_size_mb:64"}
    assert pinning.current_settings(env) == "expandable_segments:True,max_split_size_mb:64"
    assert pinning.current_settings({}) == ""


@pytest.mark.skipif(CUDA, reason="the CPU-only path: a machine without CUDA")
def test_without_cuda_nothing_is_set(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda.memory, "_set_allocator_settings", calls.append, raising=False)
    assert pinning.use_threaded_pinning({}) is False
    assert calls == []


@pytest.mark.skipif(not CUDA, reason="PyTorch's CUDA host allocator")
def test_a_store_with_a_gpu_tier_pins_from_several_threads_and_pinned_copies_stay_exact():
    from fusionrag_integrations.store.tiers import ChunkStore

    ChunkStore("fp", torch.device("cuda"), 1 << 20, 1 << 20, None)
    settings = pinning.current_settings({})
    assert "pinned_use_cuda_host_register" in settings  # however PyTorch renders the value
    assert pinning.use_threaded_pinning({}) is False  # already set: nothing changes twice
    src = torch.randn(3 << 20, device="cuda")
    out = torch.empty(src.shape, dtype=src.dtype, pin_memory=True).copy_(src, non_blocking=True)
    torch.cuda.synchronize()
    assert out.is_pinned()
    assert torch.equal(out, src.cpu())
