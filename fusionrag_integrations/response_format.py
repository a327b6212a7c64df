"""What a constrained answer must parse as: a JSON schema, any JSON object, a regular expression, one of
a list of strings, or a Lark grammar.

Pure data, validated for shape on construction (so `SamplingParams` fails before any compute); whether
the grammar itself compiles is checked when the request is prepared (runtime/grammar.py), still before
it reaches the step loop. Frozen and hashable: the compiled grammar is cached per format.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .errors import InvalidSamplingError

Kind = Literal["json_object", "json_schema", "regex", "choice", "grammar"]


@dataclass(frozen=True)
class ResponseFormat:
    """`spec` is the JSON schema as compact JSON text (json_schema), the pattern (regex), the options
    as a JSON list (choice), the Lark grammar (grammar), or "" (json_object: any JSON object)."""

    kind: Kind
    spec: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("json_object", "json_schema", "regex", "choice", "grammar"):
            raise InvalidSamplingError(
                f"response_format type must be json_object, json_schema, regex, choice or grammar, got {self.kind!r}"
            )
        if not isinstance(self.spec, str):
            raise InvalidSamplingError(
                f"a {self.kind} response_format's {_SPEC_NAME.get(self.kind, 'spec')} must be a "
                f"string, got {type(self.spec).__name__}"
            )
        if self.kind != "json_object" and not self.spec:
            raise InvalidSamplingError(f"a {self.kind} response_format needs its {_SPEC_NAME[self.kind]}")

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any] | str | type) -> ResponseFormat:
        """A JSON schema as a dict, JSON text or a pydantic model class."""
        if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
            schema = schema.model_json_schema()
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as exc:
                raise InvalidSamplingError(f"the JSON schema is not valid JSON: {exc}") from None
        if not isinstance(schema, Mapping):
            raise InvalidSamplingError(f"a JSON schema must be an object, got {type(schema).__name__}")
        return cls("json_schema", json.dumps(schema, separators=(",", ":")))  # key order kept: it is the output's

    @classmethod
    def json_object(cls) -> ResponseFormat:
        return cls("json_object")

    @classmethod
    def regex(cls, pattern: str) -> ResponseFormat:
        return cls("regex", pattern)  # the spec's type is checked on construction

    @classmethod
    def choice(cls, options: Sequence[str]) -> ResponseFormat:
        if isinstance(options, str) or not isinstance(options, Sequence) or not options:
            raise InvalidSamplingError("choice needs a non-empty list of strings")
        if not all(isinstance(o, str) and o for o in options):
            raise InvalidSamplingError("every choice must be a non-empty string")
        return cls("choice", json.dumps(list(options)))

    @classmethod
    def grammar(cls, lark: str) -> ResponseFormat:
        return cls("grammar", lark)

    @classmethod
    def from_openai(cls, value: Mapping[str, Any]) -> ResponseFormat | None:
        """OpenAI's `response_format` object: {"type": "text"} (None: unconstrained), {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}."""
        if not isinstance(value, Mapping):
            raise InvalidSamplingError(f"response_format must be an object, got {type(value).__name__}")
        kind = value.get("type")
        if kind == "text":
            return None
        if kind == "json_object":
            return cls.json_object()
        if kind == "json_schema":
            inner = value.get("json_schema")
            if not isinstance(inner, Mapping) or not isinstance(inner.get("schema"), Mapping):
                raise InvalidSamplingError("response_format json_schema needs json_schema.schema (an object)")
            return cls.json_schema(inner["schema"])
        raise InvalidSamplingError(f"response_format type must be text, json_object or json_schema, got {kind!r}")


def as_response_format(value: Any) -> ResponseFormat | None:
    """What SamplingParams accepts: a ResponseFormat, OpenAI's dict, a pydantic model class, or None."""
    if value is None or isinstance(value, ResponseFormat):
        return value
    if isinstance(value, type) and hasattr(value, "model_json_schema"):
        return ResponseFormat.json_schema(value)
    if isinstance(value, Mapping):
        return ResponseFormat.from_openai(value)
    raise InvalidSamplingError(
        f"response_format must be a ResponseFormat, an OpenAI response_format dict or a pydantic model class, "
        f"got {type(value).__name__}"
    )


_SPEC_NAME = {"json_schema": "schema", "regex": "pattern", "choice": "options", "grammar": "Lark grammar"}
