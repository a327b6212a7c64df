"""The console script's subcommands, run in-process."""

from __future__ import annotations

import argparse
import json
import re

import pytest

from fusionrag_integrations import FusionRAGError, cli
from tests.conftest import DOCS, MODELS


def test_generate_and_precompute(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FUSIONRAG_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("FUSIONRAG_MODEL_CACHE", str(MODELS))  # the shared conversion, not one per test (~12 s)
    doc = tmp_path / "doc.txt"
    doc.write_text("\n\n".join(DOCS))
    assert cli.main(["precompute", str(doc), "--device", "cpu"]) == 0
    assert "4 chunks (4 computed now" in capsys.readouterr().out
    assert cli.main(["precompute", str(doc), "--device", "cpu"]) == 0
    assert "4 chunks (0 computed now" in capsys.readouterr().out  # persistent: a new engine reuses them
    assert cli.main(["generate", "What is the capital of France?", "--max-new-tokens", "8", "--device", "cpu"]) == 0
    assert "Paris" in capsys.readouterr().out


def test_every_option_has_help():
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    from fusionrag_integrations.evaluation.cli import build_parser as quality_parser

    for name, sub in [("fusionrag", parser), *subparsers.items(), ("bench quality", quality_parser())]:
        for action in sub._actions:
            if action.dest not in ("help", "command"):
                assert action.help, f"{name}: {action.option_strings or action.dest} has no help text"


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["generate", ""], "the prompt is empty"),
        (["generate", "hi", "--model", "/no/such/model.gguf"], "GGUF file not found"),
        (["generate", "hi", "--device", "tpu"], "device"),
        (["generate", "hi", "--device", "cpu", "--dtype", "float8"], "dtype"),
        (["generate", "hi", "--device", "cpu", "--selector", "bogus"], "unknown selector"),
        (["generate", "hi", "--device", "cpu", "--temperature", "-1"], "temperature"),
        (["precompute", "/no/such/file.txt", "--device", "cpu"], "No such file"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONRAG_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("FUSIONRAG_MODEL_CACHE", str(MODELS))  # the shared conversion, not one per test (~12 s)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("fusionrag: error:") and needle in err and "Traceback" not in err


def test_cuda_without_cuda_is_a_user_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert cli.main(["generate", "hi", "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_debug_shows_the_traceback():
    with pytest.raises(FusionRAGError):
        cli.main(["--debug", "generate", ""])
    with pytest.raises(FusionRAGError):
        cli.main(["generate", "", "--debug"])


def test_stats_as_a_table_and_as_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FUSIONRAG_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("FUSIONRAG_MODEL_CACHE", str(MODELS))  # the shared conversion, not one per test (~12 s)
    assert cli.main(["generate", "Hi", "--max-new-tokens", "3", "--device", "cpu", "--stats"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^ttft_ms\s+[\d.]+$", err, re.M) and re.search(r"^completion_tokens\s+3$", err, re.M)
    assert cli.main(["generate", "Hi", "--max-new-tokens", "3", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["usage"]["completion_tokens"] == 3 and "ttft_ms" in result["stats"]


def test_bench_quality_refuses_limit_without_data(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "quality", "--limit", "3"])
    assert exit_.value.code == 2 and "--limit applies to --data" in capsys.readouterr().err


def _held_port():
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


@pytest.mark.parametrize(
    "argv, env, needle",
    [
        (["serve", "--host", "0.0.0.0"], {}, "no API key is set"),
        (["serve", "--api-key", ""], {}, "the API key is empty"),
        (["serve"], {"FUSIONRAG_API_KEY": ""}, "the API key is empty"),
        (["serve", "--max-body-bytes", "-1"], {}, "--max-body-bytes"),
        (["serve", "--timeout-body", "0"], {}, "--timeout-body"),
        (["serve", "--port", "PORT_IN_USE"], {}, "cannot listen on 127.0.0.1"),
    ],
    ids=["open_to_the_network", "empty_key", "empty_key_env", "negative_body_limit", "zero_timeout", "port_in_use"],
)
def test_unsafe_or_impossible_server_set_ups_are_one_line_before_the_model_loads(
    argv, env, needle, capsys, monkeypatch
):
    from fusionrag_integrations.cli import _engine  # noqa: F401 - the model must not load: fail if it is asked for

    monkeypatch.delenv("FUSIONRAG_API_KEY", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("fusionrag_integrations.cli._engine", lambda args: pytest.fail("the model was loaded"))
    held = _held_port()
    argv = [str(held.getsockname()[1]) if a == "PORT_IN_USE" else a for a in argv]
    try:
        assert cli.main(argv) == 2
    finally:
        held.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_a_port_out_of_range_is_refused_by_argparse(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", "--port", "99999"])
    assert exit_.value.code == 2 and "99999 is not a port" in capsys.readouterr().err


@pytest.mark.parametrize("rate", ["1.5", "-0.1", "nan"])
def test_a_fidelity_sample_rate_outside_0_to_1_is_refused(rate, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", "--fidelity-sample-rate", rate])
    assert exit_.value.code == 2 and f"{rate} is not a share" in capsys.readouterr().err


def test_serve_flags_become_engine_settings(capsys):
    from fusionrag_integrations.server.command import engine_flags

    args = argparse.Namespace(fidelity="guarded", fidelity_target=0.95, max_num_seqs=8, max_model_len=None)
    assert engine_flags(args) == {"max_running_requests": 8, "fusion": {"fidelity": "guarded", "fidelity_target": 0.95}}
    assert engine_flags(argparse.Namespace(fidelity=None, fidelity_target=None)) == {}
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", "--fidelity", "always"])
    assert exit_.value.code == 2 and "always" in capsys.readouterr().err


def test_a_config_file_gives_flags_and_the_command_line_wins(tmp_path, capsys):
    from fusionrag_integrations.server.command import expand_config_file

    config = tmp_path / "serve.yaml"
    config.write_text("model: /models/x\nmax_num_seqs: 16\nmax-model-len: 4096\naccess_log: true\napi_key: [a, b]\n")
    argv = expand_config_file(["serve", "--config", str(config), "--max-num-seqs", "4"])
    args = cli.build_parser().parse_args(argv)
    assert (args.model, args.max_num_seqs, args.max_model_len, args.access_log) == ("/models/x", 4, 4096, True)
    assert args.api_key == ["a", "b"]
    config.write_text("max_num_sequences: 16\n")
    with pytest.raises(SystemExit):
        cli.main(["serve", f"--config={config}"])
    assert "--max-num-sequences" in capsys.readouterr().err
    assert cli.main(["serve", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_max_model_len_caps_the_context_window(smol_engine, tmp_path):
    from fusionrag_integrations import ContextLengthError
    from tests.conftest import engine_on

    capped = engine_on(smol_engine.loaded, tmp_path / "cache", max_model_len=64)
    assert capped.context_window == 64 < smol_engine.context_window
    with pytest.raises(ContextLengthError):
        capped.generate("word " * 80, max_new_tokens=2)
    assert capped.generate("Hi", max_new_tokens=2).text is not None


def test_gpu_memory_utilization_flag_and_the_budget_it_sets():
    from fusionrag_integrations.runtime.runner import running_kv_budget
    from fusionrag_integrations.server.command import engine_flags

    args = cli.build_parser().parse_args(["serve", "--gpu-memory-utilization", "0.5"])
    assert engine_flags(args) == {"gpu_memory_utilization": 0.5}
    gib = 1 << 30
    # 80 GiB card, 16 GiB of weights held, 60 GiB free, an 8 GiB GPU tier: half the card leaves 40 - 16 - 8 - 4
    assert running_kv_budget(60 * gib, 80 * gib, 16 * gib, 8 * gib, 0.5) == 12 * gib
    assert running_kv_budget(60 * gib, 80 * gib, 16 * gib, 8 * gib, 1.0) == 48 * gib  # never more than is free
    assert running_kv_budget(60 * gib, 80 * gib, 16 * gib, 8 * gib, None) == int(0.9 * 48 * gib)


def test_engine_sizes_from_the_environment(monkeypatch, tmp_path):
    from fusionrag_integrations import EngineConfig
    from fusionrag_integrations.errors import InvalidConfigError

    monkeypatch.setenv("FUSIONRAG_GPU_CACHE_BYTES", "2GiB")
    monkeypatch.setenv("FUSIONRAG_CPU_CACHE_BYTES", "1500MB")
    monkeypatch.setenv("FUSIONRAG_MAX_MODEL_LEN", "4096")
    monkeypatch.setenv("FUSIONRAG_KV_FORMAT", "int4")
    config = EngineConfig(cache_dir=tmp_path)
    assert (config.gpu_cache_bytes, config.cpu_cache_bytes) == (2 << 30, 1_500_000_000)
    assert (config.max_model_len, config.kv_format) == (4096, "int4")
    assert EngineConfig(cache_dir=tmp_path, max_model_len=1024).max_model_len == 1024  # the argument wins
    monkeypatch.setenv("FUSIONRAG_RUNNING_KV_BYTES", "lots")
    with pytest.raises(InvalidConfigError, match="FUSIONRAG_RUNNING_KV_BYTES"):
        EngineConfig(cache_dir=tmp_path)
    monkeypatch.setenv("FUSIONRAG_RUNNING_KV_BYTES", "1GiB")
    monkeypatch.setenv("FUSIONRAG_GPU_MEMORY_UTILIZATION", "1.5")
    with pytest.raises(InvalidConfigError, match="gpu_memory_utilization"):
        EngineConfig(cache_dir=tmp_path)
