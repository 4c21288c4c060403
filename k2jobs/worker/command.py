"""The Celery worker command line and environment for k2jobs."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from k2jobs.config import Settings

CELERY_QUEUES = "k2jobs.chunks,k2jobs.control"


def worker_command(concurrency: int, name: str) -> list[str]:
    """The Celery worker command line for k2jobs: both queues, events for Flower."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "k2jobs.app",
        "worker",
        "-Q",
        CELERY_QUEUES,
        "-c",
        str(concurrency),
        "-n",
        name,
        "-E",
        "--loglevel",
        "INFO",
    ]


def worker_environment(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A worker's environment: `base` (default this process's), its data root made absolute, and few malloc arenas.

    Few arenas: librdkafka's threads (new ones for every chunk's producer) would otherwise each grow an arena of
    their own, and a worker's memory would creep up chunk after chunk.
    """
    return {"MALLOC_ARENA_MAX": "2", **(os.environ if base is None else base), "K2_DATA_ROOT": str(settings.data_root)}
