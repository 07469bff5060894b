"""Validating wire bytes against the JSON Schema files in schemas/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def load(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / name).read_text(encoding="utf-8"))


def check(name: str, raw: bytes) -> None:
    """Validate wire bytes against a schema file (raises on mismatch)."""
    schema = load(name)
    Draft202012Validator.check_schema(schema)
    Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER).validate(
        orjson.loads(raw)
    )
