"""Model sources -> (our TransformerModel, tokenizer, fingerprints), with clear errors.

Sources: a local Hugging Face directory with safetensors, a `.gguf` file, or a hub id that
is already in the local HF cache (nothing is ever downloaded). GGUF files are dequantised
by transformers once and kept as a plain safetensors directory under the cache dir, so
later loads take about a second instead of twenty.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import torch
from safetensors.torch import load_file, save_file

from ..errors import InvalidArgumentError, InvalidConfigError, ModelNotFoundError, UnsupportedModelError
from .config import ModelConfig, Tokenizer
from .files import verified_directory
from .gguf_once import gguf_read_once
from .identity import model_fingerprint, tokenizer_fingerprint
from .rope import SUPPORTED_ROPE_TYPES, RotaryEmbedding
from .transformer import TransformerModel

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class LoadedModel:
    model: TransformerModel
    tokenizer: Any  # a transformers PreTrainedTokenizerBase
    eos_token_ids: frozenset[int]
    name: str
    model_dir: Path  # a plain HF directory holding these weights (the converted one for GGUF)
    model_fingerprint: str
    tokenizer_fingerprint: str


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise InvalidArgumentError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(f"device {device!r}: CUDA is not available on this machine (use 'cpu' or 'auto')")
    if dev.type not in ("cpu", "cuda"):
        raise InvalidArgumentError(f"device {device!r} is not supported (cpu or cuda)")
    return dev


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """'auto': bfloat16 on CUDA (what checkpoints ship in), float32 on CPU (exact, and CPUs lack fast bf16 GEMMs)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise InvalidArgumentError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def load_model(source: str | os.PathLike, device: torch.device, dtype: torch.dtype, models_dir: Path) -> LoadedModel:
    model_dir, name = resolve_model_dir(source, models_dir)
    hf_config = _auto_config(model_dir)
    config, rope = model_config_from_hf(hf_config)
    state = load_state_dict(model_dir)
    model = TransformerModel.from_state_dict(config, state, rope, device, dtype)
    tokenizer = load_tokenizer(model_dir)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        eos_token_ids=eos_token_ids(model_dir, tokenizer),
        name=name,
        model_dir=model_dir,
        model_fingerprint=model_fingerprint(model),
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
    )


def load_aux_model(source: str | os.PathLike, main: LoadedModel, models_dir: Path) -> LoadedModel:
    """A second model beside `main` (CacheClip's scorer): same device and dtype, and the same tokenizer,
    or its token ids would mean other words."""
    aux = load_model(source, main.model.device, main.model.dtype, models_dir)
    if aux.tokenizer.get_vocab() != main.tokenizer.get_vocab():
        raise InvalidConfigError(f"aux_model {source} has another tokenizer than {main.name}; pick one of its family")
    return aux


def resolve_model_dir(source: str | os.PathLike, models_dir: Path) -> tuple[Path, str]:
    """Return a local HF directory for `source` and a display name."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if text.lower().endswith(".gguf"):
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {path}")
        return convert_gguf(path, models_dir), path.stem
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} is a directory but has no config.json: not a Hugging Face model directory"
            )
        return path, path.name
    if text.startswith((".", "/", "~")) or not _HUB_ID.match(text):
        raise ModelNotFoundError(f"model path not found: {path}")
    return _hub_snapshot(text), text


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=repo_id, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError, HFValidationError, ...
        raise ModelNotFoundError(
            f"{repo_id!r} is neither a local path nor a hub id in the local Hugging Face cache "
            f"(downloads are disabled; pass a local directory or .gguf file): {exc}"
        ) from None


def file_digest(path: Path) -> str:
    """BLAKE3 of a file's bytes (memory-mapped, several threads: ~30 ms for a 100 MB GGUF)."""
    digest = blake3.blake3(max_threads=blake3.blake3.AUTO)
    digest.update_mmap(str(path))
    return digest.hexdigest()


CONVERSION_FORMAT = 2  # bumped whenever _convert_into writes different files for the same GGUF


def gguf_source(path: Path, digest: str | None = None) -> str:
    """What a converted folder was built from: the GGUF's bytes and the conversion's format, never its path."""
    return f"gguf-v{CONVERSION_FORMAT}:{path.name}:{digest or file_digest(path)}"


def convert_gguf(path: Path, models_dir: Path) -> Path:
    """Dequantise a GGUF file once (through transformers) into models_dir/<name>-<key>/ (verified on every load)."""
    digest = file_digest(path)  # by content: every copy of one file (one per virtualenv) shares one conversion
    out = models_dir / f"{path.stem}-v{CONVERSION_FORMAT}-{digest[:16]}"
    return verified_directory(out, lambda tmp: _convert_into(tmp, path), gguf_source(path, digest))


def _convert_into(tmp: Path, path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors once (seconds to a minute; later loads read the result)", path.name)
    kwargs = dict(gguf_file=path.name, local_files_only=True)
    try:
        with gguf_read_once():
            hf = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
    except ValueError as exc:  # transformers names the GGUF architecture it cannot read
        raise UnsupportedModelError(f"cannot load GGUF {path.name}: {exc}") from None
    _check_architecture(hf.config)
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    if hf.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, tmp / "model.safetensors", metadata={"format": "pt", "source": path.name})
    cfg = hf.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)  # where this copy of the GGUF lives: the folder is keyed by content only
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
    tokenizer.save_pretrained(tmp)
    if hf.generation_config is not None:
        hf.generation_config.save_pretrained(tmp)


def _auto_config(model_dir: Path) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except ValueError as exc:  # unknown model_type (or JSON that does not parse)
        raise UnsupportedModelError(f"cannot read the config in {model_dir}: {exc}") from None
    except OSError as exc:  # truncated or unreadable config.json
        raise ModelNotFoundError(f"{model_dir}/config.json is not a readable model config: {exc}") from None


def _check_architecture(hf_config: Any) -> str:
    arch = getattr(hf_config, "model_type", None)
    if arch not in SUPPORTED_ARCHITECTURES:
        named = ", ".join(getattr(hf_config, "architectures", None) or [str(arch)])
        raise UnsupportedModelError(
            f"unsupported architecture {named} (model_type={arch!r}); supported families: "
            + ", ".join(SUPPORTED_ARCHITECTURES.values())
        )
    return arch


def model_config_from_hf(hf: Any) -> tuple[ModelConfig, RotaryEmbedding]:
    """Translate a transformers config; refuse what our forward does not implement."""
    arch = _check_architecture(hf)
    if getattr(hf, "hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"{arch}: activation {hf.hidden_act!r} is not supported (only silu)")
    if getattr(hf, "mlp_bias", False):
        raise UnsupportedModelError(f"{arch}: MLP biases are not supported")
    heads = hf.num_attention_heads
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // heads
    window = getattr(hf, "sliding_window", None)
    if arch != "mistral" and not getattr(hf, "use_sliding_window", False):
        window = None
    # A sliding window only changes attention past its length: serving at most that many
    # positions keeps our full-attention forward exact.
    context = min(hf.max_position_embeddings, window) if window else hf.max_position_embeddings
    rope_type, rope = _rope_from_hf(hf, head_dim)
    config = ModelConfig(
        architecture=arch,
        vocab_size=hf.vocab_size,
        hidden_size=hf.hidden_size,
        intermediate_size=hf.intermediate_size,
        num_layers=hf.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(hf, "num_key_value_heads", None) or heads,
        head_dim=head_dim,
        rms_norm_eps=hf.rms_norm_eps,
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        context_window=int(context),
        rope_type=rope_type,
    )
    return config, rope


def _rope_from_hf(hf: Any, head_dim: int) -> tuple[str, RotaryEmbedding]:
    params = getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {}
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedModelError(
            f"{hf.model_type}: RoPE variant {rope_type!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)}); "
            "position-dependent variants such as 'dynamic' would make cached chunk keys depend on prompt length"
        )
    if float(getattr(hf, "partial_rotary_factor", 1.0) or 1.0) != 1.0:
        raise UnsupportedModelError(f"{hf.model_type}: partial rotary embeddings are not supported")
    if rope_type == "default":
        theta = params.get("rope_theta", getattr(hf, "rope_theta", 10000.0))
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        return rope_type, RotaryEmbedding(inv_freq, 1.0)
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf, None)
    return rope_type, RotaryEmbedding(inv_freq, scaling)


def model_from_hf(hf_model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> TransformerModel:
    """Our model over an in-memory transformers model's weights (benchmarks with random weights use this)."""
    config, rope = model_config_from_hf(hf_model.config)
    return TransformerModel.from_state_dict(config, dict(hf_model.state_dict()), rope, device, dtype)


def load_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelNotFoundError(f"no *.safetensors weights in {model_dir}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(load_file(f))
        except Exception as exc:  # safetensors raises its own error types for a damaged file
            raise ModelNotFoundError(f"cannot read the weights {f}: {exc}") from None
    return state


def load_tokenizer(model_dir: Path) -> Tokenizer:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"no usable tokenizer in {model_dir}: {exc}") from None


def eos_token_ids(model_dir: Path, tokenizer: Tokenizer) -> frozenset[int]:
    """The tokenizer's EOS plus generation_config's (Llama-3 instruct ends turns with <|eot_id|>)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    path = model_dir / "generation_config.json"
    if path.is_file():
        eos = json.loads(path.read_text()).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return frozenset(int(i) for i in ids)
