"""Constrained decoding: each step, a bitmask of the tokens a request's grammar allows next.

llguidance computes the masks (a JSON schema, any JSON object, a regex, a choice or a Lark grammar; an
Earley parser over a token trie, tens of microseconds a token). We chose it over xgrammar after measuring
both on the tokenizer we serve (benchmarks/grammar.py): per-token costs are alike and small beside a
decode step; llguidance is one dependency-free wheel for every Python, builds a grammar lazily (no compile
step to wait for on a new schema), and masks apply with our own tensor ops, no compiled kernel needed.

A request's grammar is checked when it is prepared, on the caller's thread (a bad schema is a 400, before
any compute); its matcher is copied from a cached template, so a schema is parsed once per engine. In the
batched decode step the masks of every constrained row are filled into one bitmask, copied to the device
once and applied to the whole batch in one pass (rows without a grammar keep every token).
"""

from __future__ import annotations

import json
import threading
from typing import Any

import torch

from ..errors import InvalidSamplingError
from ..lru import LRU
from ..model.config import Tokenizer
from ..request import SamplingParams
from ..response_format import ResponseFormat

TEMPLATES = 256  # distinct formats kept parsed


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """logits [B, V] with every token whose bit is 0 set to -inf, in place (bit j of word w = token 32w + j;
    tokens beyond the mask's width are disallowed). bitmask: int32 [B, ceil(V / 32)] on logits' device."""
    shifts = torch.arange(32, device=bitmask.device, dtype=torch.int32)
    allowed = ((bitmask.unsqueeze(-1) >> shifts) & 1).view(bitmask.shape[0], -1).bool()
    vocab = logits.shape[-1]
    if allowed.shape[1] < vocab:
        allowed = torch.nn.functional.pad(allowed, (0, vocab - allowed.shape[1]), value=False)
    return logits.masked_fill_(~allowed[:, :vocab], float("-inf"))


class TokenConstraint:
    """One request's grammar state: the mask of what may come next, advanced by each sampled token."""

    def __init__(self, matcher: Any, kind: str) -> None:
        self.matcher, self.kind = matcher, kind

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the next token's mask into row `row` of a CPU int32 bitmask."""
        view = bitmask[row]
        self.matcher.unsafe_compute_mask_ptr(view.data_ptr(), view.numel() * view.element_size())

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise InvalidSamplingError(f"the {self.kind} grammar refused token {token}: {self.matcher.get_error()}")

    @property
    def done(self) -> bool:
        """Nothing more may follow (the grammar is complete and admits no continuation)."""
        return self.matcher.is_stopped()


class Grammars:
    """The engine's grammar compiler: formats to matchers for its tokenizer and logits width."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos: frozenset[int]) -> None:
        self.hf_tokenizer, self.vocab_size, self.eos = tokenizer, vocab_size, eos
        self._lltokenizer: Any = None  # llguidance's, made at the first grammar
        self._templates: LRU[ResponseFormat, object] = LRU(max_entries=TEMPLATES)
        self._lock = threading.Lock()  # callers' threads check, the loop's thread copies

    def check(self, params: SamplingParams) -> None:
        """Fail now, with a typed error, on what the model cannot be asked for: a grammar that does not
        compile, a logit_bias token outside the vocabulary."""
        for token, _ in params.logit_bias:
            if token >= self.vocab_size:
                raise InvalidSamplingError(f"logit_bias names token {token}; the vocabulary has {self.vocab_size}")
        if params.response_format is not None:
            self._template(params.response_format)

    def constraint(self, params: SamplingParams) -> TokenConstraint | None:
        fmt = params.response_format
        if fmt is None:
            return None
        return TokenConstraint(self._template(fmt).deep_copy(), fmt.kind)

    def _template(self, fmt: ResponseFormat) -> Any:
        with self._lock:
            template = self._templates.get(fmt)
            if template is None:
                import llguidance

                template = llguidance.LLMatcher(self._tokenizer(), _grammar(fmt))
                if template.is_error():
                    raise InvalidSamplingError(f"response_format ({fmt.kind}) does not compile: {template.get_error()}")
                self._templates.put(fmt, template)
            return template

    def _tokenizer(self) -> Any:
        if self._lltokenizer is None:
            import llguidance.hf

            eos = sorted(self.eos) or None
            self._lltokenizer = llguidance.hf.from_tokenizer(self.hf_tokenizer, n_vocab=self.vocab_size, eos_token=eos)
        return self._lltokenizer


_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SUBSCHEMAS = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames")
_SUBSCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")


def closed_objects(schema: Any) -> Any:
    """The schema with every object that lists its properties and says nothing of others closed to others
    (`additionalProperties: false`), as OpenAI's strict mode and xgrammar read schemas: a pydantic model's
    schema then admits exactly its fields. An explicit `additionalProperties` is kept."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: closed_objects(sub) for name, sub in out[key].items()}
    for key in _SUBSCHEMAS:
        if isinstance(out.get(key), dict):
            out[key] = closed_objects(out[key])
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [closed_objects(sub) for sub in out[key]]
    return out


def _grammar(fmt: ResponseFormat) -> str:
    import llguidance

    if fmt.kind in ("json_object", "json_schema"):
        schema = closed_objects(json.loads(fmt.spec)) if fmt.kind == "json_schema" else {"type": "object"}
        if isinstance(schema, dict):  # one line, ", " and ": " between items (no whitespace runs to loop in)
            schema.setdefault("x-guidance", {"whitespace_flexible": False})
        return llguidance.grammar_from("json_schema", json.dumps(schema))
    if fmt.kind == "regex":
        return llguidance.grammar_from("regex", fmt.spec)
    if fmt.kind == "choice":  # Lark string literals read JSON strings' escapes
        return llguidance.grammar_from("lark", "start: " + " | ".join(json.dumps(c) for c in json.loads(fmt.spec)))
    return llguidance.grammar_from("lark", fmt.spec)


def constrain(logits: torch.Tensor, constraints: list[TokenConstraint | None]) -> torch.Tensor:
    """The batch's logits [B, V] masked by each row's grammar (a new tensor; `logits` is left as it was,
    raw logits are what logprobs report). Rows without a constraint keep every token and cost nothing."""
    present = [(i, c) for i, c in enumerate(constraints) if c is not None]
    rows = [i for i, _ in present]
    bitmask = torch.empty((len(rows), (logits.shape[-1] + 31) // 32), dtype=torch.int32)
    for at, (_, constraint) in enumerate(present):
        constraint.fill(bitmask, at)
    bitmask = bitmask.to(logits.device)  # a few KB a row; sampling reads the device right after anyway
    masked = logits.float().clone()
    if len(rows) == len(constraints):
        return apply_bitmask(masked, bitmask)
    index = torch.tensor(rows, device=logits.device)
    masked[index] = apply_bitmask(masked[index], bitmask)
    return masked
