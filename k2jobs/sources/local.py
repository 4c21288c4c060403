"""Planning a job from a local directory: every file found, opened, checked and cut into chunks."""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from k2jobs.errors import InputError
from k2jobs.plan.grouping import bundle_chunks
from k2jobs.plan.model import ChunkPlan, FilePlan, JobPlan, Kind, like
from k2jobs.sources.cutting import BOM, READ_BLOCK, UNCHANGED, Cut, Skipped, _out_of_order, cut_after
from k2jobs.sources.gz import GZIP, GZIP_SUFFIX, GzipDamaged, check_complete, damaged_errors, export_index, open_gzip
from k2jobs.sources.layout import (
    InsideRoot,
    company_of,
    find_input_files,
    read_company_symbols,
    relative_posix,
    resolve_inside,
)

if TYPE_CHECKING:
    from k2jobs.plan.extents import Extent
SMALL_FILE = 1 << 20


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


def open_input(path: Path, compression: str) -> tuple[int, BinaryIO]:
    """A file's size and a reader of its bytes (decompressed, for gzip). A small plain file is read whole at once, in
    four system calls (open, fstat, read, close): thousands of small files are planned as much in the kernel as in
    Python, and a buffered file takes seven (a stat, and reads until one finds the end)."""
    if compression:
        return path.stat().st_size, open_gzip(path)  # type: ignore[return-value]
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    handed = False
    try:
        size = os.fstat(fd).st_size
        if size < SMALL_FILE:
            data = os.read(fd, size + 1)
            if len(data) <= size:  # a regular file's short read is its end; one byte more: it grew, read it so
                return len(data), io.BytesIO(data)
            os.lseek(fd, 0, os.SEEK_SET)
        handle = open(fd, "rb", closefd=True)  # noqa: SIM115 - the caller closes it
        handed = True
        return size, handle
    finally:
        if not handed:
            os.close(fd)


def plan_file(
    root: Path,
    directory: Path,
    kind: Kind,
    path: Path,
    symbols: dict[int, str],
    lines_per_chunk: int,
    first_index: int,
    inside: InsideRoot | None = None,
    extents: dict[str, Extent] | None = None,
    complete_only: bool = False,
    regular: bool = False,
) -> tuple[FilePlan, list[ChunkPlan], bytes | None, Skipped | None]:
    """Cut one file into chunks, counting rows and checksumming each. A .csv.gz file's chunks are ranges of
    its decompressed bytes, and its gzip index comes back with them (None for a plain file).

    With `extents` (what succeeded jobs published of each file, k2jobs/appends.py), a file published before is
    checked piece by piece and only what follows is cut. The last item says why the file is not to be loaded:
    (UNCHANGED, path and job) when nothing follows, (CHANGED, what changed) when its published part changed;
    None when it is to be loaded. `regular`: the directory's listing said the file is no symlink.
    """
    real = (inside or InsideRoot(root))(path, regular)
    relative = relative_posix(path, directory)
    company_of(relative, path.name, symbols)  # the name is checked before the file is opened
    compression = GZIP if path.name.endswith(GZIP_SUFFIX) else ""
    identity = relative_posix(real, root)
    extent = (extents or {}).get(identity)
    complete_only = (complete_only or extent is not None) and not compression  # gzip files are written whole
    try:
        size, handle = open_input(real, compression)
    except OSError as exc:
        raise InputError(f"{relative} cannot be read: {exc.strerror or exc}") from exc
    base = file_base(relative, identity, kind, symbols, size)
    with handle:
        try:
            # A small file is read in one block of its size: a read of READ_BLOCK allocates that much, each time.
            block = size + 1 if size < SMALL_FILE and not compression else READ_BLOCK
            cut = cut_after(handle, lines_per_chunk, first_index, base, extent, complete_only, block)
            if not isinstance(cut, Cut):
                return file_plan(base, [], size, 0), [], None, cut
            crc = zlib.crc32(BOM if (cut.size if compression else size) else b"") if cut.crc is None else cut.crc
            if compression:
                with real.open("rb") as raw:
                    check_complete(raw, size, cut.size, crc, relative)
            index = export_index(handle) if compression else None  # type: ignore[arg-type]
        except GzipDamaged as exc:
            return (*damaged_file(base, first_index, str(exc)), None, None)
        except damaged_errors() as exc:
            if not compression:
                raise
            why = f"{relative}: gzip data is corrupt or truncated ({exc})"
            return (*damaged_file(base, first_index, why), None, None)
    return grown_plan(file_plan(base, cut.chunks, size, crc), identity, cut), cut.chunks, index, None


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


def plan_job(
    root: Path,
    directory: Path,
    lines_per_chunk: int,
    skip_unknown: bool = False,
    task_rows: int = 0,
    extents_for: Callable[[list[str]], dict[str, Extent]] | None = None,
    complete_only: bool = False,
    exclude: frozenset[str] = frozenset(),
    before_cutting: Callable[[int], None] | None = None,
) -> JobPlan:
    """Validate `directory`, cut every input file into chunks, and bundle small chunks into tasks of up to
    `task_rows` rows (default: `lines_per_chunk`). `before_cutting(files)` is called once the files are found.

    `extents_for` gives what succeeded jobs published of files (by their path under the data root): those are
    cut from where it ends, or listed in the plan as unchanged or changed (k2jobs/appends.py). With
    `complete_only`, a last line without its line ending waits. Files whose path is in `exclude` are left out.
    """
    if lines_per_chunk <= 0:
        raise InputError("--chunk-rows must be positive")
    if not directory.exists():
        raise InputError(f"{directory} does not exist")
    real_dir = resolve_inside(root, directory)
    if not real_dir.is_dir():
        raise InputError(f"{directory} is not a directory")
    if not os.access(real_dir, os.R_OK | os.X_OK):
        raise InputError(f"{directory} is not readable")
    regular: set[str] = set()
    try:
        symbols = read_company_symbols(real_dir)
        inputs = find_input_files(real_dir, skip_unknown, regular)
    except PermissionError as exc:
        raise InputError(f"{directory} cannot be read: {exc.strerror}") from exc
    files: list[FilePlan] = []
    chunks: list[ChunkPlan] = []
    indexes: dict[str, bytes] = {}
    inside = InsideRoot(root)
    if exclude:
        inputs = [(k, p) for k, p in inputs if relative_posix(inside(p), root) not in exclude]
    extents = extents_for([relative_posix(inside(p), root) for _, p in inputs]) if extents_for else {}
    unchanged: list[str] = []
    changed: list[str] = []
    if before_cutting is not None:
        before_cutting(len(inputs))
    for kind, path in inputs:
        file_plan, file_chunks, index, skipped = plan_file(
            root,
            real_dir,
            kind,
            path,
            symbols,
            lines_per_chunk,
            len(chunks),
            inside,
            extents,
            complete_only,
            os.fspath(path) in regular,
        )
        if skipped is not None:
            (unchanged if skipped[0] == UNCHANGED else changed).append(skipped[1])
            continue
        files.append(file_plan)
        chunks.extend(file_chunks)
        if index is not None and file_chunks:
            indexes[file_chunks[0].data_path] = index
    if extents:
        files = _out_of_order(files, inputs, extents, root, inside)
    if not chunks and not unchanged and not changed and not (complete_only and files):
        raise InputError(f"the CSV files under {directory} hold no rows")
    return JobPlan(
        source_dir=real_dir.relative_to(root).as_posix() or ".",
        files=files,
        chunks=chunks,
        bundles=bundle_chunks(files, chunks, task_rows or lines_per_chunk),
        gzip_indexes=indexes,
        unchanged=unchanged,
        changed=changed,
    )
