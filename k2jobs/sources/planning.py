"""One planning loop for every source: list a source's input files, cut each into chunks, group chunks into tasks.

A `Source` (a local directory, an S3 prefix) says which files it holds and opens them; everything else (checking
names against the company map, resuming after what succeeded jobs published, gzip damage, the plan itself) is
the same for every source and lives here.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, BinaryIO, Protocol

from k2jobs.errors import ChunkChanged, InputError
from k2jobs.plan.grouping import group_into_tasks
from k2jobs.plan.model import ChunkPlan, FilePlan, JobPlan, Kind, like
from k2jobs.sources.cutting import BOM, UNCHANGED, Cut, Skipped, cut_after
from k2jobs.sources.gz import GZIP, GZIP_SUFFIX, GzipDamaged, check_complete, damaged_errors, export_index
from k2jobs.sources.layout import company_of, input_stem

if TYPE_CHECKING:
    from k2jobs.plan.extents import Extent


@dataclass(frozen=True)
class Input:
    """One input file of a source: its kind, its path under the source (as messages name it), its identity (the
    data path chunks are read by: a path under the data root, or an s3:// URL), and what the listing knew of it."""

    kind: Kind
    relative: str
    identity: str
    size: int = -1  # -1: the listing did not say (the file's size is taken when it is opened)
    etag: str = ""
    opened: object = None  # what the source needs to open it (a resolved path, an object's listing)


class Source(Protocol):
    """Where a job's files are. `name` is how messages call it; `source_dir` is what the plan records."""

    name: str
    source_dir: str

    def symbols(self) -> dict[int, str]:
        """The company map (company id -> symbol). Called first: a source that cannot be read is refused here."""
        ...

    def inputs(self) -> list[Input]:
        """The data files to load, sorted, each checked to be inside the source; anything unexpected is refused
        unless the source was made to skip it."""
        ...

    def open(self, item: Input, compression: str) -> tuple[int, BinaryIO, int]:
        """(its size, a reader of its bytes, decompressed for gzip, and how many bytes to cut it by at a time).
        Raises InputError if it cannot be read."""
        ...

    def open_raw(self, item: Input) -> BinaryIO:
        """A reader of its stored bytes (compressed, for gzip): to check that a gzip file is complete."""
        ...


def file_base(
    relative: str, data_path: str, kind: Kind, symbols: dict[int, str], file_size: int, etag: str = ""
) -> ChunkPlan:
    """What every chunk of one input file shares (its name gives the company and whether it is gzip)."""
    company_id = company_of(relative, relative.rpartition("/")[2], symbols)
    compression = GZIP if relative.endswith(GZIP_SUFFIX) else ""
    return ChunkPlan(
        index=0,
        path=relative,
        data_path=data_path,
        kind=kind.value,
        symbol=symbols[company_id],
        company_id=company_id,
        start=0,
        end=0,
        first_line=1,
        rows=0,
        crc32=0,
        file_size=file_size,
        compression=compression,
        etag=etag,
    )


def damaged_file(base: ChunkPlan, first_index: int, why: str) -> tuple[FilePlan, list[ChunkPlan]]:
    """The plan of a file that cannot be read whole (a corrupt or truncated gzip): one chunk, no rows, failed with
    `why` when its task runs; the job's other files load. Nothing of the file is loaded, not even the part
    before the damage: a repaired file can then be loaded later, whole and once (load-once compares whole files)."""
    reason = f"{why}: nothing of this file was loaded"
    chunk = replace(base, index=first_index, damaged=reason)
    return file_plan(base, [chunk], base.file_size, 0), [chunk]


def file_plan(base: ChunkPlan, chunks: list[ChunkPlan], size: int, crc: int) -> FilePlan:
    return FilePlan(
        path=base.path,
        kind=base.kind,
        symbol=base.symbol,
        company_id=base.company_id,
        rows=sum(c.rows for c in chunks),
        chunks=[c.index for c in chunks],
        size=size,
        crc32=crc,
    )


def grown_plan(plan: FilePlan, identity: str, cut: Cut) -> FilePlan:
    """A file's plan with what appending needs: where this job starts and ends in it, and its pieces' checksums."""
    return like(
        plan,
        identity=identity,
        start=cut.start,
        first_line=cut.first_line,
        end=cut.size,
        next_line=cut.next_line,
        newline=cut.newline,
        pieces=cut.pieces,
    )


@dataclass
class FileCut:
    """What planning one file gives: its plan and chunks, its gzip index (None for a plain file), or why it is not
    to be loaded (`skipped`: nothing new, or what changed since it was published)."""

    plan: FilePlan | None
    chunks: list[ChunkPlan]
    index: bytes | None = None
    skipped: Skipped | None = None


def plan_file(
    source: Source,
    item: Input,
    symbols: dict[int, str],
    lines_per_chunk: int,
    first_index: int,
    extent: Extent | None = None,
    complete_only: bool = False,
) -> FileCut:
    """Cut one file into chunks, counting rows and checksumming each. A .csv.gz file's chunks are ranges of its
    decompressed bytes, and its gzip index comes back with them.

    With `extent` (what succeeded jobs published of the file, k2jobs/plan/extents.py), the file is checked piece by
    piece and only what follows is cut; if nothing follows, or its published part changed, it comes back skipped.
    """
    relative = item.relative
    company_of(relative, relative.rpartition("/")[2], symbols)  # the name is checked before the file is opened
    compression = GZIP if relative.endswith(GZIP_SUFFIX) else ""
    complete_only = (complete_only or extent is not None) and not compression  # gzip files are written whole
    size, handle, block = source.open(item, compression)
    base = file_base(relative, item.identity, item.kind, symbols, size, item.etag)
    try:
        with handle:
            cut = cut_after(handle, lines_per_chunk, first_index, base, extent, complete_only, block)
            if not isinstance(cut, Cut):
                return FileCut(None, [], skipped=cut)
            crc = zlib.crc32(BOM if (cut.size if compression else size) else b"") if cut.crc is None else cut.crc
            index = None
            if compression:
                with source.open_raw(item) as raw:
                    check_complete(raw, size, cut.size, crc, relative)
                index = export_index(handle)  # type: ignore[arg-type]
    except ChunkChanged as exc:
        raise InputError(f"{exc} while it was being planned") from exc
    except GzipDamaged as exc:
        return FileCut(*damaged_file(base, first_index, str(exc)))
    except damaged_errors() as exc:
        if not compression:
            raise
        return FileCut(*damaged_file(base, first_index, f"{relative}: gzip data is corrupt or truncated ({exc})"))
    return FileCut(grown_plan(file_plan(base, cut.chunks, size, crc), item.identity, cut), cut.chunks, index)


def plan_source(
    source: Source,
    lines_per_chunk: int,
    task_rows: int = 0,
    extents_for: Callable[[list[str]], dict[str, Extent]] | None = None,
    complete_only: bool = False,
    exclude: frozenset[str] = frozenset(),
    before_cutting: Callable[[int], None] | None = None,
) -> JobPlan:
    """Cut every input file of `source` into chunks, and group small chunks into tasks of up to `task_rows` rows
    (default: `lines_per_chunk`). `before_cutting(files)` is called once the files are found.

    `extents_for` gives what succeeded jobs published of files (by identity): those are cut from where it ends, or
    listed in the plan as unchanged or changed. With `complete_only`, a last line without its line ending waits.
    Files whose identity is in `exclude` are left out.
    """
    if lines_per_chunk <= 0:
        raise InputError("--chunk-rows must be positive")
    symbols = source.symbols()
    inputs = source.inputs()
    if exclude:
        inputs = [item for item in inputs if item.identity not in exclude]
    extents = extents_for([item.identity for item in inputs]) if extents_for else {}
    if before_cutting is not None:
        before_cutting(len(inputs))
    files: list[FilePlan] = []
    chunks: list[ChunkPlan] = []
    indexes: dict[str, bytes] = {}
    unchanged: list[str] = []
    changed: list[str] = []
    for item in inputs:
        cut = plan_file(source, item, symbols, lines_per_chunk, len(chunks), extents.get(item.identity), complete_only)
        if cut.skipped is not None:
            (unchanged if cut.skipped[0] == UNCHANGED else changed).append(cut.skipped[1])
            continue
        assert cut.plan is not None
        files.append(cut.plan)
        chunks.extend(cut.chunks)
        if cut.index is not None and cut.chunks:
            indexes[item.identity] = cut.index
    if extents:
        files = out_of_order(files, inputs, extents)
    if not chunks and not unchanged and not changed and not (complete_only and files):
        raise InputError(f"the CSV files under {source.name} hold no rows")
    return JobPlan(
        source_dir=source.source_dir,
        files=files,
        chunks=chunks,
        tasks=group_into_tasks(files, chunks, task_rows or lines_per_chunk),
        gzip_indexes=indexes,
        unchanged=unchanged,
        changed=changed,
    )


def out_of_order(files: list[FilePlan], inputs: list[Input], extents: dict[str, Extent]) -> list[FilePlan]:
    """`files`, each new one that sorts before a published file of its key (kind and company) marked out of order."""
    published: dict[tuple[str, str], list[tuple[str, str]]] = {}  # key -> (name, job) of its published files
    for item in inputs:
        extent = extents.get(item.identity)
        if extent is not None:
            name = item.relative.rpartition("/")[2]
            published.setdefault((item.kind.value, input_stem(name) or name), []).append((name, extent.job_id))
    marked = []
    for file in files:
        name = file.path.rpartition("/")[2]
        later = [
            (other, job)
            for other, job in published.get((file.kind, input_stem(name) or name), [])
            if other > name and file.identity not in extents
        ]
        if later:
            other, job = min(later)
            note = f"{file.path} sorts before {other}, loaded earlier by job {job}: its rows come after that file's"
            file = replace(file, out_of_order=note)
        marked.append(file)
    return marked
