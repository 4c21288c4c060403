"""A worker's side of the app: the clients each pool process builds after the fork, and the worker's signals."""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from celery.signals import (
    task_received,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from k2jobs.config import Settings, process_settings
from k2jobs.errors import K2Error, StoredDataError
from k2jobs.jobs.supervisor import Supervisor
from k2jobs.kafka.markers import MarkerReader
from k2jobs.kafka.preflight import check_client_settings, warm_up_kafka
from k2jobs.plan.model import TaskPlan
from k2jobs.store.ledger import Ledger, connect

log = logging.getLogger(__name__)
JOBS_KEPT = 64  # jobs whose order option a process remembers
# The worker's main process imports this module before its pool forks: its pid, inherited by every pool process.
MAIN_PID = os.getpid()


def incarnation(hostname: str) -> str:
    """This run of the worker: its node name and main process. A worker restarted under the same name is
    another incarnation, so a lease of the dead one is not kept alive by the new one's heartbeat."""
    return f"{hostname}#{MAIN_PID}"


@dataclass
class WorkerClients:
    """What a chunk task needs, created once per worker process. A task reads its own record of the job's plan
    (TaskPlan: its chunks and the task after it), never the whole plan: what a process holds does not grow with
    the job's files."""

    settings: Settings
    ledger: Ledger
    markers: MarkerReader
    pid: int
    ordered: OrderedDict[str, bool] = field(default_factory=OrderedDict)

    def task(self, job_id: str, index: int) -> TaskPlan:
        """The task that loads chunk `index` (a message names a task by its first chunk)."""
        [task] = self.ledger.task_plans(job_id, [index])
        if task is None:  # a chunk inside a task, or a job Redis does not hold (then plan() says so)
            plan = self.ledger.plan(job_id)
            [task] = self.ledger.task_plans(job_id, [plan.task_of(index)])
            if task is None:
                raise StoredDataError(f"job {job_id} has no task record for chunk {index}")
        return task

    def is_ordered(self, job_id: str) -> bool:
        """Whether the job keeps each key's order (read once per job and process)."""
        ordered = self.ordered.get(job_id)
        if ordered is None:
            ordered = self.ordered[job_id] = bool(self.ledger.job_options(job_id).get("ordered", True))
            while len(self.ordered) > JOBS_KEPT:
                self.ordered.popitem(last=False)
        return ordered


def keep_out_of_gc() -> None:
    """Move what this process holds now (its imports: Celery, kombu, k2jobs) out of the cyclic garbage collector's
    reach, so that no full collection in the middle of a task scans them all. A young collection first, so that no
    recent garbage cycle is frozen with them."""
    gc.collect(1)
    gc.freeze()


_clients: WorkerClients | None = None


def worker_clients() -> WorkerClients:
    """This process's clients; built on first use in each process, never inherited over fork.

    Building them connects to nothing (Redis and librdkafka connect on first use, in the background).
    """
    global _clients
    if _clients is None or _clients.pid != os.getpid():
        settings = process_settings()
        _clients = WorkerClients(settings, Ledger(connect(settings.redis_url)), MarkerReader(settings), os.getpid())
    return _clients


@worker_init.connect
def _refuse_bad_settings(**_: object) -> None:
    """A worker with a setting Kafka refuses stops at start, naming it, rather than failing every chunk.

    SystemExit, because Celery logs and ignores any Exception a signal handler raises.
    """
    try:
        check_client_settings(process_settings())
    except K2Error as exc:
        raise SystemExit(f"k2jobs: this worker refuses to start: {exc}") from exc


@worker_process_init.connect
def _build_clients(**_: object) -> None:
    """Build the clients and warm them up in the background: Celery kills a pool process that has not
    reported in within 4 s, and a slow Kafka or Redis must not make it do so in a loop."""
    clients = worker_clients()
    keep_out_of_gc()  # what the pool process inherited at fork: Celery, kombu, k2jobs
    threading.Thread(target=_warm_up, args=(clients,), name="k2jobs-warm-up", daemon=True).start()


def _warm_up(clients: WorkerClients) -> None:
    """Connect to Redis and Kafka before the first chunk arrives, so the first job runs as fast as later ones."""
    try:
        clients.ledger.ping()
        clients.markers.kafka_log.end()
        warm_up_kafka(clients.settings)
    except K2Error as exc:  # a service still starting: the first chunk connects (and retries) itself
        log.warning("worker warm-up: %s", exc)


def close_worker_clients() -> None:
    """Close this process's clients, if it built any."""
    global _clients
    if _clients is not None and _clients.pid == os.getpid():
        _clients.markers.close()
        _clients = None


@worker_process_shutdown.connect
def _close_clients(**_: object) -> None:
    close_worker_clients()


_supervisor: Supervisor | None = None


@worker_ready.connect
def _start_supervisor(sender: Any = None, **_: object) -> None:
    """The job supervisor (and the worker's heartbeat) run in the worker's main process, beside the pool."""
    global _supervisor
    keep_out_of_gc()  # the worker's main process, started: its consumer's full collections would scan all it holds
    settings = process_settings()
    _supervisor = Supervisor(Ledger(connect(settings.redis_url)), incarnation(sender.hostname), settings.stall_after_s)
    _supervisor.start()


@worker_shutdown.connect
def _stop_supervisor(**_: object) -> None:
    if _supervisor is not None:
        _supervisor.stop()


@task_received.connect
def _mark_reserved(request: Any = None, **_: object) -> None:
    """A chunk's message is in this worker's hands (prefetched, or waiting for a retry's countdown)."""
    if request is None or request.name != "k2jobs.process_chunk" or _supervisor is None:
        return
    try:
        job_id, index = request.args[0], int(request.args[1])
        _supervisor.ledger.mark_reserved(job_id, index, _supervisor.worker)
    except Exception as exc:  # noqa: BLE001 - a message k2jobs cannot read, or Redis away: the task says so
        log.warning("could not record a received chunk: %s", exc)
