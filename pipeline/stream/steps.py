"""The stages' batch functions under their earlier module name (see `stream.stages`)."""

from __future__ import annotations

from pipeline.stream.stages.assign import (
    QUEUE_CAP,
    AssignResult,
    Emitted,
    assign_batch,
    overdue,
    team_queue,
)
from pipeline.stream.stages.ingest import IngestResult, ingest_batch
from pipeline.stream.stages.records import RawMessage, Rejected
from pipeline.stream.stages.score import SEEN_CAP, ScoreResult, rec_traits, score_batch
from pipeline.stream.stages.stitch import StitchResult, stitch_batch

__all__ = [
    "QUEUE_CAP", "SEEN_CAP", "AssignResult", "Emitted", "IngestResult", "RawMessage",
    "Rejected", "ScoreResult", "StitchResult", "assign_batch", "ingest_batch", "overdue",
    "rec_traits", "score_batch", "stitch_batch", "team_queue",
]
