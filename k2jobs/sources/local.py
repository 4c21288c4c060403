"""A local directory as a source: its files found, checked to stay under the data root, opened and read."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from k2jobs.errors import ChunkChanged, InputError
from k2jobs.plan.model import ChunkPlan, JobPlan
from k2jobs.sources.cutting import READ_BLOCK
from k2jobs.sources.gz import GzipDamaged, open_gzip, read_range
from k2jobs.sources.layout import InsideRoot, find_input_files, read_company_symbols, relative_posix, resolve_inside
from k2jobs.sources.planning import Input, plan_source

if TYPE_CHECKING:
    from k2jobs.plan.extents import Extent

SMALL_FILE = 1 << 20


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


class LocalDirectory:
    """A directory under the data root, as planning sees it (a Source). Identities are paths under the data root,
    symlinks resolved, so that the same file reached by two paths is one file to load-once and appending."""

    def __init__(self, root: Path, directory: Path, skip_unknown: bool = False) -> None:
        self.root, self.directory, self.skip_unknown = root, directory, skip_unknown
        self.name = str(directory)
        self.source_dir = "."
        self.real_dir = directory
        self.inside = InsideRoot(root)

    def symbols(self) -> dict[int, str]:
        directory = self.directory
        if not directory.exists():
            raise InputError(f"{directory} does not exist")
        self.real_dir = resolve_inside(self.root, directory)
        if not self.real_dir.is_dir():
            raise InputError(f"{directory} is not a directory")
        if not os.access(self.real_dir, os.R_OK | os.X_OK):
            raise InputError(f"{directory} is not readable")
        self.source_dir = self.real_dir.relative_to(self.root).as_posix() or "."
        try:
            return read_company_symbols(self.real_dir)
        except PermissionError as exc:
            raise InputError(f"{directory} cannot be read: {exc.strerror}") from exc

    def inputs(self) -> list[Input]:
        regular: set[str] = set()
        try:
            found = find_input_files(self.real_dir, self.skip_unknown, regular)
        except PermissionError as exc:
            raise InputError(f"{self.directory} cannot be read: {exc.strerror}") from exc
        items = []
        for kind, path in found:
            real = self.inside(path, os.fspath(path) in regular)
            relative = relative_posix(path, self.real_dir)
            items.append(Input(kind, relative, relative_posix(real, self.root), opened=real))
        return items

    def open(self, item: Input, compression: str) -> tuple[int, BinaryIO, int]:
        try:
            size, handle = open_input(item.opened, compression)  # type: ignore[arg-type]
        except OSError as exc:
            raise InputError(f"{item.relative} cannot be read: {exc.strerror or exc}") from exc
        # A small file is read in one block of its size: a read of READ_BLOCK allocates that much, each time.
        return size, handle, size + 1 if size < SMALL_FILE and not compression else READ_BLOCK

    def open_raw(self, item: Input) -> BinaryIO:
        return item.opened.open("rb")  # type: ignore[attr-defined, no-any-return]


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
    """The plan of `directory` (under the data root `root`): see plan_source."""
    source = LocalDirectory(root, directory, skip_unknown)
    return plan_source(source, lines_per_chunk, task_rows, extents_for, complete_only, exclude, before_cutting)


def read_local_chunk(path: Path, chunk: ChunkPlan, gzip_indexes: dict[str, bytes] | None) -> bytes:
    """A chunk's bytes from the file at `path` (decompressed, for gzip: from the seek point its index names),
    refused if the file's size changed since submit."""
    try:
        if chunk.compression:
            same_size(chunk, os.stat(path).st_size)
            with open_gzip(path, (gzip_indexes or {}).get(chunk.data_path)) as reader:
                return read_range(reader, chunk.start, chunk.end, chunk.path)
        return read_range_of(path, chunk)
    except GzipDamaged as exc:
        raise ChunkChanged(f"{exc}: its chunk was not loaded") from exc
    except OSError as exc:
        raise ChunkChanged(f"{chunk.path}: cannot be read any more ({exc.strerror or exc})") from exc


def same_size(chunk: ChunkPlan, size: int) -> None:
    """Refuse a file whose size changed since submit. Content, not modification time, is compared: a copy of the
    data (another mount, rsync) has other times, the same bytes."""
    if size != chunk.file_size:
        raise ChunkChanged(
            f"{chunk.path} changed after submit (size {chunk.file_size} -> {size}): its chunk was not loaded"
        )


def read_range_of(path: Path, chunk: ChunkPlan) -> bytes:
    """A plain file's chunk bytes, refused if the file's size changed: open, fstat, pread, close (a buffered file
    stats the path, seeks, and reads again to find the end: thousands of small files' chunks in one task)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        same_size(chunk, os.fstat(fd).st_size)
        want = chunk.end - chunk.start
        data = os.pread(fd, want, chunk.start)
        while len(data) < want:  # a short read; at the file's end, the checksum says what is missing
            more = os.pread(fd, want - len(data), chunk.start + len(data))
            if not more:
                break
            data += more
        return data
    finally:
        os.close(fd)
