"""Each kind of bad input raises its own exception type, with a message that names the problem."""

from __future__ import annotations

import json

import pytest

from fusionrag_integrations import (
    ChatTemplateError,
    ContextLengthError,
    EmptyPromptError,
    FusionEngine,
    FusionRAGError,
    InvalidSamplingError,
    ModelNotFoundError,
    UnsupportedModelError,
)
from tests.conftest import shared_config


def load(path):
    return FusionEngine.from_pretrained(path, device="cpu", config=shared_config())


def test_missing_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError, match="not found") as e:
        load(str(missing))
    assert str(missing) in str(e.value)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, FusionRAGError)


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match="GGUF file not found"):
        load(tmp_path / "model.gguf")


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load(tmp_path)


def test_hub_id_not_in_local_cache():
    with pytest.raises(ModelNotFoundError, match="local Hugging Face cache"):
        load("nobody-org/definitely-not-cached-model")


def test_unsupported_architecture_is_named(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        load(tmp_path)


def test_unsupported_rope_variant_is_named(tiny_model_dirs, tmp_path):
    import shutil

    d = shutil.copytree(tiny_model_dirs["llama"], tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "dynamic", "factor": 2.0}
    cfg.pop("rope_parameters", None)
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="dynamic"):
        load(d)


@pytest.mark.parametrize("prompt", ["", []])
def test_empty_prompt(smol_engine, prompt):
    with pytest.raises(EmptyPromptError, match="empty|no messages"):
        smol_engine.generate(prompt)


def test_prompt_beyond_context_window(smol_engine):
    window = smol_engine.context_window
    with pytest.raises(ContextLengthError, match=str(window)):
        smol_engine.generate("hello", max_new_tokens=window)
    long_prompt = "word " * (window + 10)
    with pytest.raises(ContextLengthError, match="exceeds the context window"):
        smol_engine.generate(long_prompt, max_new_tokens=1)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -3}, "top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"seed": "x"}, "seed"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_invalid_sampling_arguments(smol_engine, kwargs, needle):
    with pytest.raises(InvalidSamplingError, match=needle):
        smol_engine.generate("hello", **kwargs)


def test_messages_without_chat_template(tiny_model_dirs, tmp_path):
    import shutil

    d = shutil.copytree(tiny_model_dirs["llama"], tmp_path / "m")
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    for f in d.glob("chat_template.*"):
        f.unlink()
    engine = load(d)
    assert engine.generate("plain text still works", max_new_tokens=2).token_ids
    with pytest.raises(ChatTemplateError, match="no chat template"):
        engine.generate([{"role": "user", "content": "hi"}])


def test_bad_message_role(smol_engine):
    with pytest.raises(ChatTemplateError, match="role"):
        smol_engine.generate([{"role": "wizard", "content": "hi"}])
