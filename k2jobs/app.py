"""The Celery app and the clients each worker process builds for itself after the fork."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_process_shutdown, worker_ready, worker_shutdown

from .config import Settings, load_settings
from .errors import K2Error
from .ledger import Ledger, connect
from .publisher import MarkerReader, check_client_settings

log = logging.getLogger(__name__)
app = Celery("k2jobs", include=["k2jobs.tasks"])
app.config_from_object("celeryconfig")


@dataclass
class WorkerClients:
    """What a chunk task needs, created once per worker process."""

    settings: Settings
    ledger: Ledger
    markers: MarkerReader
    pid: int


_clients: WorkerClients | None = None


def worker_clients() -> WorkerClients:
    """This process's clients; built on first use in each process, never inherited over fork."""
    global _clients
    if _clients is None or _clients.pid != os.getpid():
        settings = load_settings()
        _clients = WorkerClients(
            settings=settings,
            ledger=Ledger(connect(settings.redis_url)),
            markers=MarkerReader(settings),
            pid=os.getpid(),
        )
    return _clients


@worker_init.connect
def _refuse_bad_settings(**_: object) -> None:
    """A worker with a setting Kafka refuses stops at start, naming it, rather than failing every chunk.

    SystemExit, because Celery logs and ignores any Exception a signal handler raises.
    """
    try:
        check_client_settings(load_settings())
    except K2Error as exc:
        raise SystemExit(f"k2jobs: this worker refuses to start: {exc}") from exc


@worker_process_init.connect
def _build_clients(**_: object) -> None:
    worker_clients()


def close_worker_clients() -> None:
    """Close this process's clients, if it built any."""
    global _clients
    if _clients is not None and _clients.pid == os.getpid():
        _clients.markers.close()
        _clients = None


@worker_process_shutdown.connect
def _close_clients(**_: object) -> None:
    close_worker_clients()


_supervisor: Any = None


@worker_ready.connect
def _start_supervisor(**_: object) -> None:
    """The job supervisor runs in the worker's main process, beside the pool."""
    from .supervisor import Supervisor  # imports the tasks' side of the app, which imports this module

    global _supervisor
    settings = load_settings()
    _supervisor = Supervisor(Ledger(connect(settings.redis_url)), settings.stall_after_s)
    _supervisor.start()


@worker_shutdown.connect
def _stop_supervisor(**_: object) -> None:
    if _supervisor is not None:
        _supervisor.stop()


@worker_process_init.connect
def _warm_up(**_: object) -> None:
    """Connect to Redis and Kafka before the first chunk arrives, so the first job runs as fast as later ones."""
    from .publisher import warm_up_kafka

    clients = worker_clients()
    try:
        clients.ledger.ping()
        warm_up_kafka(clients.settings, clients.markers)
    except K2Error as exc:  # a service still starting: the first chunk connects (and retries) itself
        log.warning("worker warm-up: %s", exc)
