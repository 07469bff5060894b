"""Generate `schemas/*.json` from the pydantic models, or check that the files are current.

    python -m pipeline.models.schemagen           # (re)write the files
    python -m pipeline.models.schemagen --check   # exit 1 naming the files that drifted

The models are the source of truth; the files are what non-Python consumers read, so CI
runs `--check` (and tests/models/test_schemas.py does the same comparison).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter

from pipeline.models.events import Alias, Group, Identify, Page, Screen, SegmentMessage, Track
from pipeline.models.outputs import OUTBOUND

#: The repository's schemas folder (next to the `pipeline` package).
SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"
DRAFT = "https://json-schema.org/draft/2020-12/schema"

#: Inbound Segment calls: file name -> model.
INBOUND: dict[str, type[BaseModel]] = {
    "segment-track.json": Track,
    "segment-page.json": Page,
    "segment-screen.json": Screen,
    "segment-identify.json": Identify,
    "segment-alias.json": Alias,
    "segment-group.json": Group,
}


def _finish(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    # $id is the bare file name: files reference each other relatively, wherever they live.
    return {"$schema": DRAFT, "$id": name, **schema}


def generate() -> dict[str, dict[str, Any]]:
    """Every schema file's content, by file name, generated from the models."""
    out: dict[str, dict[str, Any]] = {}
    for name, model in INBOUND.items():
        # Inbound: what we accept (validation mode), with the Segment (camelCase) names.
        out[name] = _finish(name, model.model_json_schema(by_alias=True, mode="validation"))
    union = TypeAdapter(SegmentMessage).json_schema(by_alias=True, mode="validation")
    out["segment-message.json"] = _finish("segment-message.json", union)
    for model in OUTBOUND:
        # Outbound: what we write (serialization mode: every field present).
        out[model.SCHEMA_FILE] = _finish(
            model.SCHEMA_FILE, model.model_json_schema(by_alias=True, mode="serialization")
        )
    return out


def render(schema: dict[str, Any]) -> str:
    """The file text of one schema: stable key order as generated, 2-space indent."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def drifted(directory: Path = SCHEMAS_DIR) -> list[str]:
    """Names of schema files that are missing or differ from the models."""
    bad = []
    for name, schema in generate().items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != render(schema):
            bad.append(name)
    return bad


def write(directory: Path = SCHEMAS_DIR) -> list[str]:
    """Write every schema file; returns the names of files that changed."""
    directory.mkdir(parents=True, exist_ok=True)
    changed = drifted(directory)
    for name, schema in generate().items():
        if name in changed:
            (directory / name).write_text(render(schema), encoding="utf-8")
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry: write the files, or with --check report drift and exit 1."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.models.schemagen")
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on drift")
    parser.add_argument("--dir", type=Path, default=SCHEMAS_DIR, help="schemas folder")
    args = parser.parse_args(argv)
    if args.check:
        bad = drifted(args.dir)
        for name in bad:
            print(f"drifted: {args.dir / name}", file=sys.stderr)
        if bad:
            print("run: python -m pipeline.models.schemagen", file=sys.stderr)
        return 1 if bad else 0
    for name in write(args.dir):
        print(f"wrote {args.dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
