"""The Celery app: its configuration, and nothing a client does not need (the workers' side is k2jobs.worker)."""

from __future__ import annotations

from celery import Celery

app = Celery("k2jobs", include=["k2jobs.tasks"])
app.config_from_object("celeryconfig")
