"""The LangChain tutorial example runs end to end (as a user would run it) and reports reuse."""

from __future__ import annotations

import re

from tests.conftest import run_example


def test_langchain_example_script_runs(tmp_path):
    out = run_example("langchain_rag.py", tmp_path)
    assert out.count("4 chunks reused") == 4
    assert re.search(r"mean TTFT ratio full/fused: [\d.]+x", out)  # speed itself: benchmarks, not tests
