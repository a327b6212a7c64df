"""The LlamaIndex tutorial example runs end to end and reports node reuse."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import MODEL_CACHE, REPO


def test_llamaindex_example_script_runs(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(MODEL_CACHE / "models")  # reuse the converted GGUF, not a 20 s conversion
    plot = tmp_path / "ttft.png"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, str(REPO / "examples" / "llamaindex_rag.py"), "--cache-dir", str(cache),
                          "--plot", str(plot)], capture_output=True, text=True, env=env, timeout=900, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("4 nodes reused") == 4
    assert "nodes reused in the last chat turn: 3" in out.stdout
    assert re.search(r"mean TTFT ratio full/fused: [\d.]+x", out.stdout)
    assert plot.stat().st_size > 10_000
