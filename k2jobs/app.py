"""The Celery app and its configuration: the layer below jobs/ that enqueues, and nothing a worker alone needs.

The tasks and signals (k2jobs.worker) sit above it and register themselves when a worker imports them.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from celery import Celery

# The project's celeryconfig.py sits beside the k2jobs folder, in a checkout and in site-packages alike.
CELERYCONFIG = Path(__file__).resolve().parent.parent / "celeryconfig.py"


def load_celeryconfig(path: Path = CELERYCONFIG) -> ModuleType:
    """k2jobs' own celeryconfig, by its path: a celeryconfig.py in the working directory cannot shadow it."""
    spec = importlib.util.spec_from_file_location("celeryconfig", path)
    if spec is None or spec.loader is None:  # pragma: no cover - the file ships with the package
        raise ImportError(f"k2jobs' celeryconfig.py is missing at {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["celeryconfig"] = module
    return module


app = Celery("k2jobs", include=["k2jobs.worker.tasks"])
app.config_from_object(load_celeryconfig())
