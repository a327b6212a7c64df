"""A serving engine sees a new token count on nearly every request. Triton specialises a kernel on its
integer arguments (divisible by 16, equal to 1) and on its pointers' alignment, and compiles a variant
the first time a new combination comes (about a second for the attention kernel): a stall in the middle
of serving on a machine whose compile cache is still empty. The arguments that change by request are
declared unspecialised, so one compiled variant serves every count."""

from __future__ import annotations

import pytest
import torch
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import BaseBackend

from fusionrag_integrations.kernels import dequant_place_triton, rope_gather_triton, rotary_triton
from fusionrag_integrations.kernels import sparse_attention_triton as attention_triton
from fusionrag_integrations.kernels.sparse_attention_launch import _sparse_query_attn_fwd_tuned

# kernel -> (integers that change by request, pointers whose offset changes by request)
BY_REQUEST = {
    attention_triton._sparse_query_attn_fwd: ({"n_queries"}, {"QPos", "Order"}),
    attention_triton._combine_key_splits: ({"num_splits"}, set()),
    rotary_triton._rotate_inplace_kernel: ({"n_rows"}, set()),
    rope_gather_triton._place_rotated_kernel: ({"n_rows"}, set()),
    dequant_place_triton._place_compact_kernel: ({"n_rows"}, set()),
}


def test_the_same_kernel_would_be_specialised_on_these_values():
    """Why the declarations matter: Triton's own specialisation tells these values apart."""
    spec = lambda x: native_specialize_impl(BaseBackend, x, False, True, True)[1:]  # noqa: E731
    assert len({spec(33), spec(48), spec(1)}) == 3
    positions = torch.arange(64)
    assert spec(positions[1:]) != spec(positions[2:])


def unspecialised(kernel) -> tuple[set[str], set[str], set[str]]:
    """(parameters, integers not specialised, pointers not specialised on alignment), compiled or
    interpreted (TRITON_INTERPRET=1 keeps the decorator's arguments instead of parameter objects)."""
    if hasattr(kernel, "params"):
        params = kernel.params
        return (
            {p.name for p in params},
            {p.name for p in params if p.do_not_specialize},
            {p.name for p in params if p.do_not_specialize_on_alignment},
        )
    declared = kernel.kwargs
    names = set(kernel.arg_names)
    return names, set(declared["do_not_specialize"] or ()), set(declared["do_not_specialize_on_alignment"] or ())


@pytest.mark.parametrize("kernel", list(BY_REQUEST), ids=lambda k: k.fn.__name__)
def test_values_that_change_by_request_are_not_specialised(kernel):
    ints, pointers = BY_REQUEST[kernel]
    names, plain_ints, plain_pointers = unspecialised(kernel)
    assert ints | pointers <= names, "a declared name is not a parameter of the kernel"
    assert ints <= plain_ints
    assert pointers <= plain_pointers


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="reads the GPU compile cache of the tuned kernel (no such cache in the CPU interpreter); run on the device",
)
def test_new_counts_and_position_slices_compile_nothing():
    """After one call (the small-query tuning bucket, where every count below is), query counts of every kind
    (odd, a multiple of 16, one) and position slices at odd and even offsets reuse the compiled kernel."""
    from fusionrag_integrations.kernels.sparse_attention_launch import sparse_query_attention_triton

    def call(n_q: int, offset: int) -> None:
        g = torch.Generator().manual_seed(n_q + offset)
        q = torch.randn(n_q, 32, 128, generator=g).cuda().bfloat16()
        k, v = (torch.randn(4096, 8, 128, generator=g).cuda().bfloat16() for _ in range(2))
        positions = torch.arange(4096 - n_q - offset, 4096, device="cuda")[offset:]
        sparse_query_attention_triton(q, k, v, positions, positions_sorted=True, num_splits=1)

    call(777, 0)
    torch.cuda.synchronize()
    cache = _sparse_query_attn_fwd_tuned.fn.device_caches[torch.cuda.current_device()][0]
    compiled = len(cache)
    for n_q, offset in [(800, 1), (801, 1), (1, 0), (1, 1), (1200, 2), (1201, 3)]:
        call(n_q, offset)
    torch.cuda.synchronize()
    assert len(cache) == compiled
