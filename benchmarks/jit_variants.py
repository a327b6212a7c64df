"""Which compiled variants of the sparse-query attention kernel a serving run asks for, and when each is
first needed. Triton specialises a kernel on its integer arguments (divisible by 16, equal to 1) and on
its pointers' 16-byte alignment unless the kernel declares them unspecialised; each new combination is
compiled the first time it comes (about a second for this kernel on a GPU whose compile cache is empty),
so a variant first needed after warm-up is a stall in the middle of serving. This counts them on any
machine (CPU included): each launch's arguments through Triton's own specialisation rule and the
kernel's declarations, no compilation.

    python benchmarks/jit_variants.py --methods fusion --concurrency 1 4 --requests 16 --pool 24 --chunks 4

Arguments after the script's name go to benchmarks/serving.py (the run that makes the launches).
"""

from __future__ import annotations

import runpy
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from triton._C.libtriton import native_specialize_impl  # noqa: E402
from triton.backends.compiler import BaseBackend  # noqa: E402

from fusionrag_integrations.kernels.sparse_attention_triton import _sparse_query_attn_fwd  # noqa: E402
from fusionrag_integrations.model import attention as attention_module  # noqa: E402


def declared(kernel) -> tuple[set[str], set[str]]:
    """(integers not specialised, pointers not specialised on alignment) as the kernel declares them."""
    if hasattr(kernel, "params"):
        return ({p.name for p in kernel.params if p.do_not_specialize},
                {p.name for p in kernel.params if p.do_not_specialize_on_alignment})  # fmt: skip
    return set(kernel.kwargs["do_not_specialize"] or ()), set(kernel.kwargs["do_not_specialize_on_alignment"] or ())


def main() -> None:
    plain_ints, plain_pointers = declared(_sparse_query_attn_fwd)

    def spec(name: str, value) -> tuple:
        specialise, align = name not in plain_ints, name not in plain_pointers
        return tuple(native_specialize_impl(BaseBackend, value, False, specialise, align)[1:])

    seen: dict[tuple, tuple[int, float]] = {}
    launches, started = [0], time.perf_counter()
    original = attention_module.sparse_query_attention

    def counted(q, k, v, q_pos, **kwargs):
        launches[0] += 1
        n = q.shape[0]
        # the launch arguments that change by request (Order is q_pos itself when positions are sorted)
        key = (n >= 2048, spec("n_queries", n), spec("QPos", q_pos), spec("Order", q_pos), spec("Q", q))
        if key not in seen:
            seen[key] = (launches[0], time.perf_counter() - started)
            print(f"[variants] launch {launches[0]} at {seen[key][1]:.1f} s: new variant {key}", flush=True)
        return original(q, k, v, q_pos, **kwargs)

    attention_module.sparse_query_attention = counted
    sys.argv = [str(HERE / "serving.py"), *sys.argv[1:]]
    runpy.run_path(str(HERE / "serving.py"), run_name="__main__")
    firsts = ", ".join(f"launch {i} ({s:.0f} s)" for i, s in sorted(seen.values()))
    print(f"[variants] {launches[0]} sparse-query launches, {len(seen)} variants, first needed at: {firsts}")


if __name__ == "__main__":
    main()
