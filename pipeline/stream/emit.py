"""The score stage's output mapping and the dead letter under their earlier module name
(see `stream.stages.score` and `stream.stages.ingest`)."""

from __future__ import annotations

from pipeline.stream.stages.ingest import dead_letter, identity_key_bytes
from pipeline.stream.stages.score import Plan, attribution_message, plan, plan_scored

__all__ = ["Plan", "attribution_message", "dead_letter", "identity_key_bytes", "plan",
           "plan_scored"]
