"""A chunk's status and a job's status: two different things, with two different types; pure."""

from __future__ import annotations

from enum import StrEnum


class ChunkStatus(StrEnum):
    """How a chunk (or a task's chunks together) ended: its rows committed to Kafka, or not at all."""

    COMMITTED = "committed"
    FAILED = "failed"


class JobStatus(StrEnum):
    """How a job ended, in its report: every chunk committed, or at least one failed."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
