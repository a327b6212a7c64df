"""The console script's subcommands, run in-process."""

from __future__ import annotations

from fusionrag_integrations import cli
from tests.conftest import DOCS, MODEL_CACHE


def test_generate_and_precompute(tmp_path, capsys, monkeypatch):
    (tmp_path / "models").symlink_to(MODEL_CACHE / "models")
    monkeypatch.setenv("FUSIONRAG_CACHE_DIR", str(tmp_path))
    doc = tmp_path / "doc.txt"
    doc.write_text("\n\n".join(DOCS))
    assert cli.main(["precompute", str(doc), "--device", "cpu"]) == 0
    assert "4 chunks (4 computed now" in capsys.readouterr().out
    assert cli.main(["precompute", str(doc), "--device", "cpu"]) == 0
    assert "4 chunks (0 computed now" in capsys.readouterr().out  # persistent: a new engine reuses them
    assert cli.main(["generate", "What is the capital of France?", "--max-new-tokens", "8", "--device", "cpu"]) == 0
    assert "Paris" in capsys.readouterr().out
