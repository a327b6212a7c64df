"""An entry as one value (what Redis stores): round trips verified in every format, read zero-copy,
and a value whose header lies about its tensors is an unreadable entry, not a crash or a wrong view."""

from __future__ import annotations

import json

import pytest
import torch

from fusionrag_integrations.store.chunk_kv import ChunkKV, CorruptEntryError
from fusionrag_integrations.store.entry_value import entry_bytes, entry_from_bytes

SECRET = b"k" * 32
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def entry(seed: int, device: str, dtype=torch.float32) -> ChunkKV:
    g = torch.Generator().manual_seed(seed)
    k, v = (torch.randn(3, 70, 2, 32, generator=g).to(device, dtype) for _ in range(2))
    return ChunkKV(f"{seed:064x}", torch.arange(70), k, v, 4, "fp", text=f"text {seed}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kv_format", ["native", "fp8", "int4"])
def test_round_trip_of_an_entry_encoded_on_its_device(device, kv_format):
    """Encoded where it was computed (the GPU on a GPU), moved to host memory, sealed, read back."""
    for seed in range(4):  # a GPU copy that had not landed before sealing shows up as a MAC mismatch
        e = entry(seed, device, torch.bfloat16 if device == "cuda" else torch.float32).compacted(kv_format)
        value = entry_bytes(e.to(torch.device("cpu")), SECRET)
        back = entry_from_bytes(value, e.key, "fp", SECRET)
        assert back.kv_format == kv_format and back.text == e.text and back.start == 4
        for name, t in e.tensors().items():
            assert torch.equal(back.tensors()[name], t.cpu()), name


def test_read_is_zero_copy():
    value = entry_bytes(entry(1, "cpu"), SECRET)
    back = entry_from_bytes(value, f"{1:064x}", "fp", SECRET)
    start = torch.frombuffer(value, dtype=torch.uint8).data_ptr()
    assert start <= back.k.data_ptr() < start + len(value)  # a view into the value received


@pytest.mark.parametrize("lie", ["offsets_past_end", "shape_too_big", "negative_dim", "unknown_dtype"])
def test_a_header_that_lies_about_its_tensors_is_unreadable(lie):
    value = bytearray(entry_bytes(entry(2, "cpu"), SECRET))
    n = int.from_bytes(value[:8], "little")
    header = json.loads(bytes(value[8 : 8 + n]))
    spec = header["k"]
    if lie == "offsets_past_end":
        spec["data_offsets"] = [spec["data_offsets"][0], spec["data_offsets"][1] + 10**9]
    elif lie == "shape_too_big":
        spec["shape"][0] *= 1000
    elif lie == "negative_dim":
        spec["shape"][0] = -spec["shape"][0]
    else:
        spec["dtype"] = "F64"
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (n - len(raw)) if len(raw) <= n else b""
    forged = (len(raw).to_bytes(8, "little") + raw + bytes(value[8 + n :])) if len(raw) != n else \
        value[:8] + raw + value[8 + n :]  # fmt: skip
    with pytest.raises(CorruptEntryError):
        entry_from_bytes(bytes(forged), f"{2:064x}", "fp", SECRET)


def test_token_ids_stay_in_host_memory_wherever_the_kv_moves():
    """The layout reads an entry's token ids on the host for every request: they never move with its KV
    (on a GPU each chunk's ids would cost a device sync)."""
    import random

    n = random.randint(4, 40)
    entry = ChunkKV("k" * 64, torch.randint(0, 1000, (n,)), torch.randn(2, n, 2, 8), torch.randn(2, n, 2, 8), 1,
                    "model", "standalone", "text")  # fmt: skip
    moved = entry.to(torch.device("meta"))
    assert moved.k.device.type == moved.v.device.type == "meta"
    assert moved.token_ids.device.type == "cpu" and torch.equal(moved.token_ids, entry.token_ids)
    assert set(entry.device_tensors()) == set(entry.tensors()) - {"token_ids"}
