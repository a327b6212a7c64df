"""Every ```python block of README.md runs as written, each in a fresh process, on the bundled model.

Each block runs in its own temporary directory with its own HOME (so "~/.cache/fusionrag" and
"./chroma" land there), sharing only the converted-model cache (no conversion per block).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import MODELS, REPO

BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs_as_written(index, tmp_path):
    script = tmp_path / f"readme_block_{index}.py"
    script.write_text(BLOCKS[index])
    env = {**os.environ, "HOME": str(tmp_path), "FUSIONRAG_MODEL_CACHE": str(MODELS), "PYTHONPATH": str(REPO)}
    env.pop("FUSIONRAG_CACHE_DIR", None)
    env.pop("XDG_CACHE_HOME", None)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
    )
    assert out.returncode == 0, f"README block {index}:\n{BLOCKS[index]}\n{out.stderr[-3000:]}"
