"""The LangChain tutorial example runs end to end (as a user would run it) and reports reuse."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import MODEL_CACHE, REPO


def test_langchain_example_script_runs(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(MODEL_CACHE / "models")  # reuse the converted GGUF, not a 20 s conversion
    plot = tmp_path / "ttft.png"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, str(REPO / "examples" / "langchain_rag.py"), "--cache-dir", str(cache),
                          "--plot", str(plot)], capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("4 chunks reused") == 4
    assert re.search(r"mean TTFT ratio full/fused: [\d.]+x", out.stdout)  # speed itself: benchmarks, not tests
    assert plot.stat().st_size > 10_000
