"""The client side of a load: submitting a job, and watching it until its report."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from k2jobs.background import Meanwhile
from k2jobs.config import Settings
from k2jobs.errors import AlreadyLoaded, InputError
from k2jobs.kafka.markers import marker_end
from k2jobs.kafka.registry import register_schemas
from k2jobs.kafka.topics import ensure_topics
from k2jobs.plan.model import JobPlan
from k2jobs.sources.choose import source_for
from k2jobs.sources.planning import plan_source
from k2jobs.store.ledger import Ledger


def new_job_id() -> str:
    """Sortable by time, unique by chance: 20261127-031502-9f3a1c."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


@dataclass(frozen=True)
class SubmitOptions:
    """How a job loads: chunk size, order, and whether content loaded before may be loaded again."""

    chunk_rows: int
    ordered: bool = True
    again: bool = False
    skip_unknown: bool = False
    value_format: str = "json"
    # watch: a last line without its line ending waits; files unchanged since published are no error
    complete_only: bool = False
    exclude: frozenset[str] = frozenset()  # paths under the data root left out (a watcher's held files)
    made_by: str = ""  # who made the job, shown by `jobs` (a watcher)


def refuse_reload(ledger: Ledger, plan: JobPlan) -> None:
    """Refuse files whose content a succeeded job already published (same kind, company, size, checksum)."""
    earlier = ledger.loaded_contents([f.content for f in plan.files])
    loaded = [(f.path, earlier[f.content]) for f in plan.files if f.content in earlier]
    if loaded:
        listed = "; ".join(f"{path} (as {was['path']} by job {was['job_id']})" for path, was in loaded[:10])
        more = f" and {len(loaded) - 10} more" if len(loaded) > 10 else ""
        raise AlreadyLoaded(
            f"{len(loaded)} of {len(plan.files)} files hold content already published: {listed}{more}. "
            "Use --again to load them again"
        )


def plan_input(
    settings: Settings,
    ledger: Ledger,
    directory: Path | str,
    options: SubmitOptions,
    before_cutting: Callable[[int], None] | None = None,
) -> JobPlan:
    """The plan of `directory` (or s3://...). Without --again, files a succeeded job published load only the lines
    that followed, and files with nothing new are left out (refused if no file has anything new). A file whose
    published part changed is refused, naming what changed. A watcher's scan (complete_only) refuses nothing:
    its plan lists those files. `before_cutting(files)`: called once a directory's files are found."""
    extents_for = None if options.again else ledger.file_extents
    plan = plan_source(
        source_for(settings.data_root, directory, options.skip_unknown),
        options.chunk_rows,
        settings.task_rows,
        extents_for,
        options.complete_only,
        options.exclude,
        before_cutting,
    )
    if plan.changed and not options.complete_only:
        listed = "; ".join(plan.changed[:10]) + (
            f" and {len(plan.changed) - 10} more" if len(plan.changed) > 10 else ""
        )
        raise InputError(f"{len(plan.changed)} files changed where a succeeded job published them: {listed}")
    if plan.unchanged and not plan.chunks and not options.complete_only:
        listed = ", ".join(plan.unchanged[:10]) + (
            f" and {len(plan.unchanged) - 10} more" if len(plan.unchanged) > 10 else ""
        )
        raise AlreadyLoaded(
            f"{len(plan.unchanged)} files hold nothing new: all their lines were already published: {listed}. "
            "Use --again to load them again"
        )
    return plan


def with_value_format(plan: JobPlan, value_format: str, schema_ids: dict[str, int]) -> JobPlan:
    """The plan with every chunk told how to write its values (and, for Avro, its kind's schema id)."""
    if value_format == "json" and not schema_ids and all(c.value_format == "json" for c in plan.chunks):
        return plan  # as planned (JSON is every chunk's default): no copy of thousands of chunks
    chunks = [replace(c, value_format=value_format, schema_id=schema_ids.get(c.kind, 0)) for c in plan.chunks]
    return replace(plan, chunks=chunks)


@dataclass(frozen=True)
class Services:
    """What a job needs of the services before it is recorded: the registry's schema ids (Avro) and where the
    commit-marker partition ends (the job's markers are searched from there)."""

    schema_ids: dict[str, int]
    marker_start: int


def prepare_services(settings: Settings, value_format: str) -> Services:
    """Kafka's topics (also the check that Kafka answers: it fails within seconds if Kafka is away), the schemas,
    the marker partition's end."""
    ensure_topics(settings)
    schema_ids = register_schemas(settings) if value_format == "avro" else {}
    return Services(schema_ids, marker_end(settings))


def import_lifecycle() -> None:
    """Import Celery (through k2jobs.jobs.lifecycle), which the enqueue needs: a large import, all Python. submit_job
    does it on a thread, off the path to the first chunk."""
    import k2jobs.jobs.lifecycle as lifecycle  # noqa: F401


# More files than this and planning is Python, a system call or two per file, each releasing the GIL: beside
# Celery's import on another thread, the GIL changes hands thousands of times, and planning and importing together
# take longer than one after the other. Fewer, larger files plan in C with the GIL released, and the import is best
# done meanwhile.
MANY_FILES = 100


def submit_job(
    settings: Settings, ledger: Ledger, directory: Path | str, options: SubmitOptions
) -> tuple[str, JobPlan]:
    """Plan (a directory under the data root, or s3://BUCKET/PREFIX), check the services, record and enqueue a
    job; nothing is enqueued on any error. The services are prepared while the input is planned: a job's first
    chunk starts that much sooner (docs/performance.md, "The start of a job")."""
    started = time.perf_counter()
    celery = Meanwhile(import_lifecycle, "k2jobs-submit-import")
    services = Meanwhile(lambda: prepare_services(settings, options.value_format), "k2jobs-submit-services")

    def before_cutting(files: int) -> None:
        if files > MANY_FILES:
            celery.result()  # the import ends first, then the files are planned alone (MANY_FILES)

    plan = plan_input(settings, ledger, directory, options, before_cutting)
    return submit_plan(settings, ledger, plan, options, started, services.result), plan


def submit_plan(
    settings: Settings,
    ledger: Ledger,
    plan: JobPlan,
    options: SubmitOptions,
    started: float,
    services: Callable[[], Services] | None = None,
) -> str:
    """Check the services, record and enqueue the job of `plan` (planned since `started`); its id. `services`:
    what prepare_services found, if it ran while the input was planned."""
    planned = time.perf_counter()
    from k2jobs.jobs.lifecycle import enqueue_chunks  # Celery: submit_job imports it meanwhile

    ledger.ping()
    if not options.again:
        refuse_reload(ledger, plan)
    ready = services() if services is not None else prepare_services(settings, options.value_format)
    schema_ids = ready.schema_ids
    plan = with_value_format(plan, options.value_format, schema_ids)
    job_id = new_job_id()
    recorded = {
        "chunk_rows": options.chunk_rows,
        "task_rows": settings.task_rows,
        "batch_rows": settings.batch_rows,
        "ordered": options.ordered,
        "format": options.value_format,
        "schema_ids": schema_ids,
        "made_by": options.made_by,
    }
    ledger.create_job(job_id, plan, recorded, marker_start=ready.marker_start)
    enqueue_chunks(ledger, job_id, plan, list(range(len(plan.chunks))), options.ordered)
    ledger.set_submit_timings(job_id, plan_s=planned - started, enqueue_s=time.perf_counter() - planned)
    return job_id
