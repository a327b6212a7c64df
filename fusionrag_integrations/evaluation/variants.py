"""Selector variants for the quality harness: `name` or `name:key=value,...`, so that each lever of a
selector is measured alone (e.g. `hybrid:sink=0,adaptive=0` against `hybrid`).

A spec names a registered selector; keys set the hybrid selector's levers:
  sink=N           chunk-initial tokens recomputed inside each chunk's budget
  adaptive=0|1     the per-request adaptive ratio (over the engine's running deviation reference)
  budget=deviation|length|global   how a request's budget is split over its chunks (global: not split)
  sinks=context|all                whose sink tokens: chunks computed after other text, or every chunk
"""

from __future__ import annotations

from ..config import FusionConfig
from ..engine import FusionEngine
from ..errors import InvalidArgumentError
from ..fusion.hybrid import DeviationReference, HybridSelector
from ..fusion.selectors import SELECTORS, Selector

HYBRID_KEYS = {"sink", "adaptive", "budget", "sinks"}


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """'hybrid:sink=0,adaptive=1' -> ('hybrid', {'sink': '0', 'adaptive': '1'})."""
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise InvalidArgumentError(f"selector spec {spec!r}: {item!r} is not key=value")
        options[key.strip()] = value.strip()
    if name not in SELECTORS:
        raise InvalidArgumentError(
            f"selector spec {spec!r}: unknown selector {name!r}; choose one of {sorted(SELECTORS)}"
        )
    if options and name != "hybrid":
        raise InvalidArgumentError(f"selector spec {spec!r}: only hybrid takes options")
    unknown = set(options) - HYBRID_KEYS
    if unknown:
        raise InvalidArgumentError(
            f"selector spec {spec!r}: unknown option(s) {sorted(unknown)}; use {sorted(HYBRID_KEYS)}"
        )
    return name, options


def build_selector(engine: FusionEngine, spec: str) -> str | Selector:
    """A name the engine resolves itself, or a hybrid instance with the spec's levers (sharing the engine's
    deviation reference, so every adaptive variant sees the same stream of requests)."""
    name, options = parse_spec(spec)
    return hybrid_variant(engine.config.fusion, options, engine.selectors.deviations) if options else name


def hybrid_variant(config: FusionConfig, options: dict[str, str], deviations: DeviationReference) -> HybridSelector:
    """The hybrid selector configured by `config`, with the spec's levers changed."""
    adaptive = options.get("adaptive", "1" if config.adaptive_ratio else "0") == "1"
    return HybridSelector(
        critical_layer=config.critical_layer,
        sink_tokens=int(options.get("sink", config.sink_tokens)),
        adaptive=deviations if adaptive else None,
        budget=options.get("budget", config.hybrid_budget),
        check_layer=config.check_layer,
        sink_scope=options.get("sinks", config.sink_scope),
    )
