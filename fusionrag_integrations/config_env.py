"""EngineConfig from the environment: FUSIONRAG_<FIELD> for the sizes and limits an operator sets per
machine (FUSIONRAG_GPU_CACHE_BYTES=8GiB, FUSIONRAG_MAX_MODEL_LEN=32768, ...), as container deployments
configure servers. An argument given in code or on the command line wins over the environment; byte
sizes take binary or decimal suffixes (KiB, MiB, GiB, TiB, KB, MB, GB, TB)."""

from __future__ import annotations

import os
import re
from typing import Any

from .errors import InvalidConfigError

ENV_FIELDS = (
    "gpu_cache_bytes",
    "cpu_cache_bytes",
    "disk_cache_bytes",
    "running_kv_bytes",
    "gpu_memory_utilization",
    "max_model_len",
    "max_running_requests",
    "max_prefill_tokens",
    "tpot_target_ms",
    "kv_format",
    "kv_backend",
    "fidelity_sample_rate",
    "fidelity_max_share",
    "mixed_steps",
)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.I)


def env_name(field: str) -> str:
    return "FUSIONRAG_" + field.upper()


def parse_size(text: str, name: str) -> int:
    match = _SIZE.match(text)
    if match is None:
        raise InvalidConfigError(f"${name}={text!r} is not a size in bytes (e.g. 8GiB, 512MiB or 1073741824)")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])


def with_environment(values: Any) -> Any:
    """The constructor's arguments with each ENV_FIELDS field it lacks taken from the environment."""
    if not isinstance(values, dict):
        return values
    out = dict(values)
    for field in ENV_FIELDS:
        raw = os.environ.get(env_name(field))
        if field not in out and raw is not None and raw.strip():
            out[field] = parse_size(raw, env_name(field)) if field.endswith("_bytes") else raw.strip()
    return out
