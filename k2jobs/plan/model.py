"""The plan model: a job's files and chunks, what kind of rows they hold, and their stored form; pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import TypeVar

from k2jobs.errors import StoredDataError

# The version of the stored plan's layout (JobPlan.to_dict): raised whenever a field of a stored plan changes, so a
# plan stored by another version is refused in one place (JobPlan.from_dict) instead of being read half-right.
PLAN_VERSION = 3  # 3: stored as a head (the files) and one record per task (TaskPlan); 2 named tasks "tasks"
PlanT = TypeVar("PlanT", "ChunkPlan", "FilePlan")


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """One byte range of one file, on line boundaries, with what it must contain."""

    index: int
    path: str  # relative to the submitted directory, as in the report and `source` headers
    data_path: str  # relative to K2_DATA_ROOT, what workers open
    kind: str
    symbol: str
    company_id: int
    start: int
    end: int
    first_line: int
    rows: int
    crc32: int
    file_size: int
    # How values are written (k2jobs.config.VALUE_FORMATS) and, for Avro, the registry's schema id.
    value_format: str = "json"
    schema_id: int = 0
    # "gzip": start, end and crc32 are of the decompressed bytes, file_size the compressed file's (k2jobs.sources.gz).
    compression: str = ""
    etag: str = ""  # an object's ETag at submit (s3:// input): every read of it is conditional on it
    # Why nothing of this file can be loaded (a gzip file found corrupt or truncated at submit): the file's only
    # chunk, with no rows, in a task of its own, recorded failed with this reason (see damaged_file).
    damaged: str = ""


def stored_plan(cls: type[PlanT], raw: dict) -> PlanT:  # type: ignore[type-arg]
    """A plan from its dict. One with exactly the plan's fields, as plain() writes it, skips __init__ (a frozen
    dataclass's __init__ checks nothing these plans need, and a job of a million files has two million of them).
    The plans are slotted: no dict per object, the most of what a plan of many small files held."""
    if raw.keys() != cls.__dataclass_fields__.keys():
        return cls(**raw)
    plan = object.__new__(cls)
    for name, value in raw.items():
        object.__setattr__(plan, name, value)
    return plan


def plain(plan: ChunkPlan | FilePlan) -> dict[str, object]:
    """A plan's fields as a dict (shallow: lists are shared), for JSON; not asdict, whose deep copies are slow."""
    return {name: getattr(plan, name) for name in plan.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class FilePlan:
    """One input file and its chunks' indexes."""

    path: str
    kind: str
    symbol: str
    company_id: int
    rows: int
    chunks: list[int] = field(default_factory=list)
    size: int = 0
    crc32: int = 0  # of the whole file: with kind, company and size, what "the same content" means
    # Appending (k2jobs/appends.py): the file as a place (its path under the data root), the bytes and lines this
    # job loads -- from `start` (line `first_line`) to `end`; earlier jobs published the bytes before `start` --,
    # the line after them, whether they end a line, and (start, end, CRC-32) of the pieces of [0, end).
    identity: str = ""
    start: int = 0
    first_line: int = 1
    end: int = 0
    next_line: int = 1
    newline: bool = True
    pieces: list[list[int]] = field(default_factory=list)
    # A new file whose name sorts before a file of its key an earlier job published: its rows come after that
    # file's in the key's order, not before. Said in the job's report, never silently.
    out_of_order: str = ""

    @property
    def content(self) -> str:
        """The identity of the file's content, whatever its name or place: kind, company, size, checksum."""
        return f"{self.kind}:{self.company_id}:{self.size}:{self.crc32:08x}"


@dataclass(frozen=True)
class TaskPlan:
    """What one Celery task loads, all a worker reads of the job to run it: its chunks in publish order (the first
    names the task) and the task that follows it in its key's order (ordered jobs; None at a key's end)."""

    chunks: list[ChunkPlan]
    next: int | None = None

    @property
    def index(self) -> int:
        return self.chunks[0].index

    def to_record(self) -> dict[str, object]:
        """Its stored form (one field of the job's task records), as plain data for JSON."""
        return {"chunks": [plain(c) for c in self.chunks], "next": self.next}

    @classmethod
    def from_record(cls, raw: dict) -> TaskPlan:  # type: ignore[type-arg]
        return cls([stored_plan(ChunkPlan, c) for c in raw["chunks"]], raw["next"])


@dataclass(frozen=True)
class JobPlan:
    """Everything a job will load, fixed at submit time."""

    source_dir: str
    files: list[FilePlan]
    chunks: list[ChunkPlan]
    # The tasks of the job: each task's first chunk (which names it) -> every chunk it loads in one transaction, in
    # publish order (see group_into_tasks); a chunk that is not in one is a task of its own.
    tasks: dict[int, list[int]] = field(default_factory=dict)
    # data_path -> the gzip index of a .csv.gz file (k2jobs.sources.gz); kept in Redis beside the plan, not in it.
    gzip_indexes: dict[str, bytes] = field(default_factory=dict, repr=False)
    # Not loaded, not kept with the job: files whose published content did not grow, and files whose
    # published part changed (each with what changed).
    unchanged: list[str] = field(default_factory=list, repr=False)
    changed: list[str] = field(default_factory=list, repr=False)

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @cached_property
    def task_of_chunk(self) -> dict[int, int]:
        """Chunk -> the task that loads it (its first chunk), for chunks that share a task."""
        return {chunk: task for task, chunks in self.tasks.items() for chunk in chunks}

    def task_of(self, index: int) -> int:
        """The task (its first chunk) that loads chunk `index`."""
        return self.task_of_chunk.get(index, index)

    def tasks_of(self, indexes: list[int]) -> list[int]:
        """The tasks that load these chunks, each once, in the chunks' order."""
        return list(dict.fromkeys(self.task_of(i) for i in indexes))

    def task_chunks(self, task: int) -> list[ChunkPlan]:
        """The chunks one task loads, in the order it publishes them."""
        return [self.chunks[i] for i in self.tasks.get(task, [task])]

    def key_tasks(self) -> list[list[int]]:
        """The tasks of each key and topic in the order they must commit (key_chunks, in tasks). A task shared
        by small keys is in the chain of each of them, alone."""
        return [self.tasks_of(group) for group in self.key_chunks()]

    def key_chunks(self) -> list[list[int]]:
        """Chunk indexes per Kafka key and topic (kind and symbol), in the order they must be published.

        Files of one key follow each other in path order, each file's chunks in line order. Largest group first.
        """
        groups: dict[tuple[str, str], list[int]] = {}
        for file in sorted(self.files, key=lambda f: f.path):
            groups.setdefault((file.kind, file.symbol), []).extend(file.chunks)
        return sorted(groups.values(), key=lambda group: -sum(self.chunks[i].rows for i in group))

    def task_plans(self) -> list[TaskPlan]:
        """Every task of the job, each with the task after it in its key's chain (key_tasks), in chunk order."""
        following = {c[n]: c[n + 1] for c in self.key_tasks() for n in range(len(c) - 1)}
        firsts = dict.fromkeys(self.task_of(c.index) for c in self.chunks)
        return [TaskPlan(self.task_chunks(task), following.get(task)) for task in firsts]

    def head(self) -> dict[str, object]:
        """The stored plan without its chunks (they are in the task records, TaskPlan.to_record)."""
        return {"version": PLAN_VERSION, "source_dir": self.source_dir, "files": [plain(f) for f in self.files]}

    @classmethod
    def from_stored(cls, head: dict, records: list[dict]) -> JobPlan:  # type: ignore[type-arg]
        """A plan from its head and every task record, as head and TaskPlan.to_record wrote them."""
        check_version(head)
        tasks = [TaskPlan.from_record(record) for record in records]
        chunks = sorted((c for task in tasks for c in task.chunks), key=lambda c: c.index)
        return cls(
            source_dir=head["source_dir"],
            files=[stored_plan(FilePlan, f) for f in head["files"]],
            chunks=chunks,
            tasks={task.index: [c.index for c in task.chunks] for task in tasks if len(task.chunks) > 1},
        )

    def to_dict(self) -> dict[str, object]:
        """The plan as plain data (shallow: the files' lists are shared), for JSON."""
        return {
            "version": PLAN_VERSION,
            "source_dir": self.source_dir,
            "files": [plain(f) for f in self.files],
            "chunks": [plain(c) for c in self.chunks],
            "tasks": {str(task): chunks for task, chunks in self.tasks.items()},
        }

    @classmethod
    def from_dict(cls, raw: dict) -> JobPlan:  # type: ignore[type-arg]
        """A plan as to_dict wrote it; one stored by another version of k2jobs is refused."""
        check_version(raw)
        return cls(
            source_dir=raw["source_dir"],
            files=[stored_plan(FilePlan, f) for f in raw["files"]],
            chunks=[stored_plan(ChunkPlan, c) for c in raw["chunks"]],
            tasks={int(task): chunks for task, chunks in raw["tasks"].items()},
        )


def check_version(raw: dict) -> None:  # type: ignore[type-arg]
    """Refuse a plan stored by another version of k2jobs (the one place stored plans are checked)."""
    if raw.get("version") != PLAN_VERSION:
        raise StoredDataError(
            f"this job's plan was stored by another version of k2jobs (plan version {raw.get('version')}, "
            f"this version reads {PLAN_VERSION}): submit it again"
        )


def like(plan: PlanT, **changes: object) -> PlanT:
    """dataclasses.replace for the plans, without its checks or __init__ (stored_plan): with them, a third of
    planning's time for thousands of files."""
    return stored_plan(type(plan), {**plain(plan), **changes})


class Kind(StrEnum):
    """What a file holds; each kind has its own columns and topics."""

    TRADE = "trades"
    QUOTE = "quotes"

    @property
    def topic(self) -> str:
        return f"market.{self.value}.raw"

    @property
    def dlq_topic(self) -> str:
        return f"market.{self.value}.dlq"
