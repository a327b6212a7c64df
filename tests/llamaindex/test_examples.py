"""The LlamaIndex tutorial example runs end to end and reports node reuse."""

from __future__ import annotations

import re

from tests.conftest import run_example


def test_llamaindex_example_script_runs(tmp_path):
    out = run_example("llamaindex_rag.py", tmp_path)
    assert out.count("4 nodes reused") == 4
    assert out.count("chat") >= 2
    assert re.search(r"mean TTFT ratio full/fused: [\d.]+x", out)  # speed itself: benchmarks, not tests
