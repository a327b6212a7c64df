"""examples/serve_rag.py runs end to end (its own server process) and reports reuse for each question."""

from __future__ import annotations

from tests.conftest import run_example


def test_serve_example_runs(tmp_path):
    out = run_example("serve_rag.py", tmp_path, plots=False)
    assert out.count("3 of 3 chunks reused") == 3
