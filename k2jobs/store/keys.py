"""Every Redis key k2jobs uses, named in one place (the queue names are kombu's, under Celery's routing)."""

from __future__ import annotations

TTL_S = 30 * 24 * 3600  # jobs are kept a month, then Redis forgets them
JOBS_KEY = "k2:jobs"
RUNNING_KEY = "k2:running"  # ids of jobs without a report: what the job supervisor watches
SUPERVISOR_KEY = "k2:supervisor"  # which worker's job supervisor acts now (a redis-py Lock)
LOADED_KEY = "k2:loaded"  # file content (FilePlan.content) -> the succeeded job that published it, kept for good
EXTENTS_KEY = "k2:extents"  # file path under the data root -> what succeeded jobs published of it (appends.Extent)
CHUNK_QUEUE = "k2jobs.chunks"  # celeryconfig routes k2jobs.process_chunk here; kombu keeps it as a Redis list
UNACKED_KEY = "unacked"  # kombu: messages delivered to a worker and not acknowledged yet (restored if it dies)


def job_key(job_id: str) -> str:
    return f"k2:job:{job_id}"


def plan_key(job_id: str) -> str:
    return f"k2:job:{job_id}:plan"  # the plan's head: its files (JobPlan.head); the chunks are in the task records


def tasks_key(job_id: str) -> str:
    return f"k2:job:{job_id}:tasks"  # task (its first chunk) -> TaskPlan record: all a worker reads to run it


def gzip_indexes_key(job_id: str) -> str:
    return f"k2:job:{job_id}:gzip-index"


def results_key(job_id: str) -> str:
    return f"k2:job:{job_id}:results"  # chunk index -> final result JSON (committed or failed)


def progress_key(job_id: str) -> str:
    return f"k2:job:{job_id}:progress"  # chunk index -> rows handled so far in the current attempt


def report_key(job_id: str) -> str:
    return f"k2:job:{job_id}:report"


def reported_key(job_id: str) -> str:
    return f"k2:job:{job_id}:reported"  # a list pushed to when the report is saved: wakes a waiting submit


# Where each chunk's attempts are (k2jobs.store.attempts reads them): queued in Redis, reserved by a worker, running.
def queued_key(job_id: str) -> str:
    return f"k2:job:{job_id}:queued"  # chunk index -> Redis run_id when its message was sent


def reserved_key(job_id: str) -> str:
    return f"k2:job:{job_id}:reserved"  # chunk index -> worker holding its message (prefetched, or a retry's wait)


def starts_key(job_id: str) -> str:
    return f"k2:job:{job_id}:starts"  # chunk index -> attempts started


def ends_key(job_id: str) -> str:
    return f"k2:job:{job_id}:ends"  # chunk index -> attempts that ended in Python (not with their process)


def lease_key(job_id: str, index: int) -> str:
    return f"k2:lease:{job_id}:{index}"  # the attempt running the chunk: {worker, pid, token}


def worker_key(name: str) -> str:
    return f"k2:worker:{name}"  # exists while the worker's main process beats


def test_event_key(name: str) -> str:
    return f"k2:test:{name}"  # where a test's fault hook stopped (tests only)
