"""Finding input files, mapping company ids to symbols, cutting files into chunks; no services."""

from __future__ import annotations

import csv
import io
import os
import re
import stat
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from .errors import InputError, UnsafePathError
from .gz import GZIP, GZIP_SUFFIX, GzipDamaged, check_complete, damaged_errors, export_index, open_gzip
from .records import Kind

if TYPE_CHECKING:
    from .appends import Extent

try:
    from ._fastrows import scan_lines as _compiled_scan_lines
except ImportError:  # installed without a C compiler: planning counts lines in Python
    _compiled_scan_lines = None

BOM = b"\xef\xbb\xbf"
PlanT = TypeVar("PlanT", "ChunkPlan", "FilePlan")
COMPANY_INFO = Path("reference-data") / "company_info.csv"
# Top-level names that describe the data set rather than hold rows to load.
DOCUMENTATION = re.compile(r"(?i)(readme.*|.*\.(md|txt|rst))\Z")
_BLANK_BETWEEN = re.compile(rb"\n[ \t\r\x0b\x0c]*\n")
SMALL_FILE = 1 << 20
READ_BLOCK = 32 << 20  # a chunk of 200,000 rows is ~13 MB: most are cut from one read, not spliced


@dataclass(frozen=True)
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
    # "gzip": start, end and crc32 are of the decompressed bytes, file_size the compressed file's (k2jobs.gz).
    compression: str = ""
    etag: str = ""  # an object's ETag at submit (s3:// input): every read of it is conditional on it
    # Why nothing of this file can be loaded (a gzip file found corrupt or truncated at submit): the file's only
    # chunk, with no rows, in a task of its own, recorded failed with this reason (see damaged_file).
    damaged: str = ""

    @classmethod
    def from_dict(cls, raw: dict) -> ChunkPlan:  # type: ignore[type-arg]
        """A chunk plan from its dict; fields of older versions (file_mtime_ns) are ignored."""
        try:
            return stored_plan(cls, raw)
        except TypeError:  # a field this version does not have
            return cls(**{name: raw[name] for name in cls.__dataclass_fields__ if name in raw})


def stored_plan(cls: type[PlanT], raw: dict) -> PlanT:  # type: ignore[type-arg]
    """A plan from its dict. One with exactly the plan's fields, as to_dict writes it, skips __init__: a frozen
    dataclass sets each field through object.__setattr__, and a worker reads thousands of plans at a job's start
    (the plans have no __post_init__: nothing but __init__ sets their fields)."""
    if raw.keys() != cls.__dataclass_fields__.keys():
        return cls(**raw)
    plan = object.__new__(cls)
    plan.__dict__.update(raw)
    return plan


@dataclass(frozen=True)
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
class JobPlan:
    """Everything a job will load, fixed at submit time."""

    source_dir: str
    files: list[FilePlan]
    chunks: list[ChunkPlan]
    # Chunks one task loads in one transaction: first chunk -> all of them, in publish order (see bundle_chunks).
    bundles: dict[int, list[int]] = field(default_factory=dict)
    # data_path -> the gzip index of a .csv.gz file (k2jobs.gz); kept in Redis beside the plan, not in it.
    gzip_indexes: dict[str, bytes] = field(default_factory=dict, repr=False)
    # Not loaded, not kept with the job: files whose published content did not grow, and files whose
    # published part changed (each with what changed).
    unchanged: list[str] = field(default_factory=list, repr=False)
    changed: list[str] = field(default_factory=list, repr=False)

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @cached_property
    def unit_of(self) -> dict[int, int]:
        """Chunk -> the first chunk of the task that loads it (itself unless it is in a bundle)."""
        return {member: lead for lead, members in self.bundles.items() for member in members}

    def unit(self, index: int) -> int:
        return self.unit_of.get(index, index)

    def units(self, indexes: list[int]) -> list[int]:
        """The tasks that load these chunks, each once, in the chunks' order."""
        return list(dict.fromkeys(self.unit(i) for i in indexes))

    def members(self, unit: int) -> list[ChunkPlan]:
        """The chunks one task loads, in the order it publishes them."""
        return [self.chunks[i] for i in self.bundles.get(unit, [unit])]

    def key_chains(self) -> list[list[int]]:
        """The tasks of each key and topic in the order they must commit (key_groups, in tasks). A task shared
        by small keys is in the chain of each of them, alone."""
        return [self.units(group) for group in self.key_groups()]

    def key_groups(self) -> list[list[int]]:
        """Chunk indexes per Kafka key and topic (kind and symbol), in the order they must be published.

        Files of one key follow each other in path order, each file's chunks in line order. Largest group first.
        """
        groups: dict[tuple[str, str], list[int]] = {}
        for file in sorted(self.files, key=lambda f: f.path):
            groups.setdefault((file.kind, file.symbol), []).extend(file.chunks)
        return sorted(groups.values(), key=lambda group: -sum(self.chunks[i].rows for i in group))

    def to_dict(self) -> dict[str, object]:
        """The plan as plain data (shallow: the files' lists are shared), for JSON."""
        return {
            "source_dir": self.source_dir,
            "files": [dict(vars(f)) for f in self.files],  # asdict's deep copies: 0.2 s for 4,000 files
            "chunks": [dict(vars(c)) for c in self.chunks],
            "bundles": {str(lead): members for lead, members in self.bundles.items()},
        }

    @classmethod
    def from_dict(cls, raw: dict) -> JobPlan:  # type: ignore[type-arg]
        return cls(
            source_dir=raw["source_dir"],
            files=[stored_plan(FilePlan, f) for f in raw["files"]],
            chunks=[ChunkPlan.from_dict(c) for c in raw["chunks"]],
            bundles={int(lead): members for lead, members in raw.get("bundles", {}).items()},
        )


def bundle_chunks(files: list[FilePlan], chunks: list[ChunkPlan], task_rows: int) -> dict[int, list[int]]:
    """Which chunks one task loads together, in one Kafka transaction, up to `task_rows` rows a task.

    A key (kind and symbol) with fewer rows than that goes whole into a task shared with other small keys,
    its files in path order (the real layout: thousands of small per-company files). A bigger key's chunks
    go, in order, into tasks of consecutive chunks of that key alone, which chain like chunks. Either way a
    key's messages keep file and line order. A task is named by its first chunk; a task of one chunk is
    not a bundle.
    """
    keys: dict[tuple[str, str], list[int]] = {}
    for file in sorted(files, key=lambda f: f.path):
        keys.setdefault((file.kind, file.symbol), []).extend(file.chunks)
    key_rows = {key: sum(chunks[i].rows for i in indexes) for key, indexes in keys.items()}
    shares = {k: key_rows[k] < task_rows and not any(chunks[i].damaged for i in keys[k]) for k in keys}
    # As few shared tasks as task_rows allows, of about equal rows: 360,000 rows of small files with task_rows
    # 200,000 make two tasks of ~180,000, not 200,000 and 160,000 (two workers finish together).
    small_rows = sum(key_rows[k] for k in keys if shares[k])
    even = -(-small_rows // max(1, -(-small_rows // task_rows)))
    bundles: list[list[int]] = []
    shared: list[int] = []
    shared_rows = 0
    for key, indexes in keys.items():
        rows = key_rows[key]
        if shares[key]:
            if shared and (shared_rows + rows > task_rows or shared_rows >= even):
                bundles.append(shared)
                shared, shared_rows = [], 0
            shared.extend(indexes)
            shared_rows += rows
            continue
        own: list[int] = []
        own_rows = 0
        for index in indexes:
            if own and (own_rows + chunks[index].rows > task_rows or chunks[index].damaged or chunks[own[-1]].damaged):
                bundles.append(own)
                own, own_rows = [], 0
            own.append(index)
            own_rows += chunks[index].rows
        bundles.append(own)
    bundles.append(shared)
    return {members[0]: members for members in bundles if len(members) > 1}


def _gf2_times(matrix: list[int], vector: int) -> int:
    total, row = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector, row = vector >> 1, row + 1
    return total


def _zeros_operators() -> list[list[int]]:
    """CRC-32 operators appending 2**n zero bytes, n = 0..63 (zlib's crc32_combine, precomputed)."""
    one_bit = [0xEDB88320] + [1 << n for n in range(31)]
    operator = one_bit
    for _ in range(3):  # 1 bit -> 8 bits: one zero byte
        operator = [_gf2_times(operator, operator[n]) for n in range(32)]
    operators = [operator]
    for _ in range(63):
        operator = [_gf2_times(operator, operator[n]) for n in range(32)]
        operators.append(operator)
    return operators


_ZEROS: list[list[int]] = []


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """zlib.crc32(a + b) from crc32(a), crc32(b) and len(b): a file's checksum from its chunks', read once.

    Python's zlib does not expose zlib's crc32_combine; this is the same algorithm.
    """
    if not _ZEROS:
        _ZEROS.extend(_zeros_operators())
    power = 0
    while len2:
        if len2 & 1:
            crc1 = _gf2_times(_ZEROS[power], crc1)
        len2, power = len2 >> 1, power + 1
    return crc1 ^ crc2


def like(plan: PlanT, **changes: object) -> PlanT:
    """dataclasses.replace for the plans, without its checks or __init__ (stored_plan): with them, a third of
    planning's time for thousands of files."""
    return stored_plan(type(plan), {**plan.__dict__, **changes})


def relative_posix(path: Path, base: Path) -> str:
    """path.relative_to(base).as_posix(), by string when `path` lies under `base` (thousands of files)."""
    text, prefix = str(path), str(base).rstrip("/") + "/"
    return text[len(prefix) :] if text.startswith(prefix) else path.relative_to(base).as_posix()


def resolve_inside(root: Path, path: Path) -> Path:
    """`path` with symlinks resolved, refused unless it lies inside `root`."""
    real = path.resolve()
    if real != root and root not in real.parents:
        raise UnsafePathError(f"{path} resolves to {real}, outside the data root {root} (K2_DATA_ROOT)")
    return real


class InsideRoot:
    """resolve_inside for many files: each directory is resolved once, and a file that is not a symlink lies
    where its resolved directory says (one lstat instead of a walk up the path: thousands of small files; none
    for a file its directory's listing said is no symlink, `regular`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._dirs: dict[str, str] = {}

    def __call__(self, path: Path, regular: bool = False) -> Path:
        folder, _, name = os.fspath(path).rpartition("/")
        folder = folder or os.fspath(path.parent)  # "x.csv" and "/x.csv" are in different folders
        parent = self._dirs.get(folder)
        if parent is None:
            parent = self._dirs[folder] = os.fspath(resolve_inside(self.root, path.parent))
        try:
            if regular or not stat.S_ISLNK(os.lstat(path).st_mode):
                return Path(os.path.join(parent, name))
        except OSError:
            pass  # missing: resolve_inside names where it would be, and opening it says it is not there
        return resolve_inside(self.root, path)


def read_company_symbols(directory: Path) -> dict[int, str]:
    """company_id → symbol from reference-data/company_info.csv (which has a header row)."""
    path = directory / COMPANY_INFO
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path} is missing: it maps each file's company id to a symbol") from None
    except OSError as exc:
        raise InputError(f"{path} cannot be read: {exc}") from exc
    return parse_company_symbols(data, str(path))


def parse_company_symbols(data: bytes, path: str) -> dict[int, str]:
    """company_id → symbol from the bytes of a company_info.csv (`path` names it in errors)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path} cannot be read: {exc}") from exc
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"company_id", "symbol"} <= set(reader.fieldnames):
        raise InputError(f"{path} is malformed: its header must name company_id and symbol columns")
    symbols: dict[int, str] = {}
    for number, row in enumerate(reader, start=2):
        company_id, symbol = (row.get("company_id") or "").strip(), (row.get("symbol") or "").strip()
        if not company_id.isdigit() or not re.fullmatch(r"[A-Za-z0-9._-]+", symbol):
            raise InputError(f"{path}:{number} is malformed: needs a numeric company_id and a symbol")
        symbols[int(company_id)] = symbol
    if not symbols:
        raise InputError(f"{path} is malformed: it lists no companies")
    return symbols


def input_stem(name: str) -> str | None:
    """The company id part of an input file's name (`7078.csv`, `7078.csv.gz`); None if it is neither."""
    for suffix in (GZIP_SUFFIX, ".csv"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def find_input_files(
    directory: Path, skip_unknown: bool = False, regular: set[str] | None = None
) -> list[tuple[Kind, Path]]:
    """The CSV files (plain or gzip) to load, by kind; anything unexpected is refused unless skipped. `regular`, if
    given, gets the paths of those the listing says are plain files, not symlinks (InsideRoot need not ask)."""
    found: list[tuple[Kind, Path]] = []
    kinds = {kind.value: kind for kind in Kind}
    for entry in sorted(directory.iterdir()):
        name = entry.name
        if name.startswith(".") or name == COMPANY_INFO.parts[0]:
            continue
        if name in kinds and entry.is_dir():
            with os.scandir(entry) as listing:  # its entries know their type: no stat per file
                files = sorted(listing, key=lambda e: e.name)  # the order Path sorts them in, faster
            for file in files:
                if file.name.startswith("."):
                    continue
                if input_stem(file.name) is not None and file.is_file():
                    found.append((kinds[name], entry / file.name))
                    if regular is not None and file.is_file(follow_symlinks=False):
                        regular.add(os.fspath(found[-1][1]))
                elif not skip_unknown:
                    raise InputError(
                        f"{file} is not a CSV file (.csv or .csv.gz) k2jobs can load (use --skip-unknown to skip it)"
                    )
            continue
        if entry.is_file() and DOCUMENTATION.match(name):
            continue
        if not skip_unknown:
            what = "folder" if entry.is_dir() else "file"
            raise InputError(
                f"{entry} is a {what} k2jobs does not know how to load; expected trades/, quotes/ "
                "and reference-data/ (use --skip-unknown to skip it)"
            )
    if not found:
        raise InputError(f"no CSV files found under {directory}/trades or {directory}/quotes")
    return found


def _after_lines(buf: bytes, start: int, lines: int, guess: float) -> int:
    """Offset just past the `lines`-th line end from `start`, or len(buf) if fewer remain.

    `guess` is the average line length so far: one count over about a chunk's bytes, then a few steps.
    """
    end = min(len(buf), start + int(lines * guess))
    found = buf.count(b"\n", start, end)
    while found > lines + 64:  # far past: cut the window back in proportion, counting only what is cut off
        cut = start + (end - start) * lines // found
        found, end = found - buf.count(b"\n", cut, end), cut
    if found >= lines:
        for _ in range(found - lines):
            end = buf.rfind(b"\n", start, end)
        return buf.rfind(b"\n", start, end) + 1
    while found < lines:
        pos = buf.find(b"\n", end)
        if pos < 0:
            return len(buf)
        end, found = pos + 1, found + 1
    return end


def _scan_lines_python(data: bytes, pos: int, lines: int) -> tuple[int, int, int]:
    """_fastrows.scan_lines in Python (the same answer, slower): (end, line endings, blank lines among them)."""
    endings = min(lines, data.count(b"\n", pos))
    end = _after_lines(data, pos, endings, 64.0) if endings else pos
    piece = data[pos:end]
    maybe_blank = _BLANK_BETWEEN.search(piece) is not None or (piece[:1].isspace())
    blank = sum(1 for line in piece.split(b"\n")[:-1] if not line.strip()) if maybe_blank else 0
    return end, endings, blank


scan_lines = _compiled_scan_lines or _scan_lines_python


def cut_ranges(
    handle: io.BufferedReader,
    lines_per_chunk: int,
    block: int = READ_BLOCK,
    offset: int = 0,
    line: int = 1,
    complete_only: bool = False,
) -> Iterator[tuple[int, bytes, int, int, int]]:
    """(file offset, bytes, first line number, line endings in it, rows in it) per chunk, streaming the file in
    blocks from where `handle` is: file offset `offset`, line number `line`. With `complete_only`, a last line
    without its line ending is left out (it is still being written). A row is a line that is not blank.

    Every byte is scanned once (scan_lines, compiled: it releases the GIL), but for a line cut by a block's end.
    """
    data = handle.read(block)
    if offset == 0 and data.startswith(BOM):
        data, offset = data[len(BOM) :], len(BOM)
    pos, eof = 0, not data
    while True:
        end, endings, blank = scan_lines(data, pos, lines_per_chunk)
        while endings < lines_per_chunk and not eof:
            more = handle.read(block)
            eof = not more
            if more:  # keep what is not cut yet, and scan on from the last line ending found
                data, offset, end, pos = data[pos:] + more, offset + pos, end - pos, 0
                end, found, more_blank = scan_lines(data, end, lines_per_chunk - endings)
                endings, blank = endings + found, blank + more_blank
        rows = endings - blank
        if endings < lines_per_chunk and end < len(data) and not complete_only:  # the file's last line, unended
            rows += 1 if data[end:].strip() else 0
            end = len(data)
        if end <= pos:
            return
        yield offset + pos, data[pos:end], line, endings, rows
        line, pos = line + endings, end


def company_of(relative: str, name: str, symbols: dict[int, str]) -> int:
    """The company id a data file's name gives, refused unless company_info lists it."""
    stem = input_stem(name) or name
    if not stem.isdigit() or int(stem) not in symbols:
        raise InputError(f"{relative}: file name {stem!r} is not a company id listed in {COMPANY_INFO.as_posix()}")
    return int(stem)


@dataclass
class Cut:
    """A file cut into chunks: the chunks, the CRC-32 and length of its bytes [0, size), the (start, end, CRC-32) of
    each piece read, the number of the line after them, and whether they end with a line ending."""

    chunks: list[ChunkPlan]
    crc: int | None  # None: nothing but (at most) a byte-order mark
    size: int
    pieces: list[list[int]]  # of the bytes [0, size): those published before `start` too
    next_line: int
    newline: bool
    start: int = 0  # where this cut started (after what was published)
    first_line: int = 1


def cut_file(
    handle: BinaryIO,
    lines_per_chunk: int,
    first_index: int,
    base: ChunkPlan,
    offset: int = 0,
    line: int = 1,
    prefix_crc: int | None = None,
    complete_only: bool = False,
    block: int = READ_BLOCK,
) -> Cut:
    """Cut an open file (decompressed, for gzip) into chunks like `base`, counting rows and checksumming each,
    from where `handle` is (`offset`, line `line`; `prefix_crc`: the CRC-32 of the bytes before), reading
    `block` bytes at a time. Pieces of blank lines only are counted but make no chunk."""
    chunks: list[ChunkPlan] = []
    pieces: list[list[int]] = []
    file_crc, size, next_line, newline = prefix_crc, offset, line, True
    for start, piece, first_line, endings, rows in cut_ranges(
        handle,  # type: ignore[arg-type]
        lines_per_chunk,
        block,
        offset=offset,
        line=line,
        complete_only=complete_only,
    ):
        piece_crc = zlib.crc32(piece)
        if file_crc is None:  # the first piece starts after the byte-order mark, if there is one
            file_crc = zlib.crc32(BOM) if start == len(BOM) else 0
            if start == len(BOM):
                pieces.append([0, start, file_crc])
        file_crc = crc32_combine(file_crc, piece_crc, len(piece))
        size = start + len(piece)
        pieces.append([start, size, piece_crc])
        newline = piece.endswith(b"\n")
        next_line = first_line + endings + (0 if newline else 1)
        if rows == 0:
            continue  # only blank lines: nothing to load, nothing to count
        chunks.append(
            like(
                base,
                index=first_index + len(chunks),
                start=start,
                end=start + len(piece),
                first_line=first_line,
                rows=rows,
                crc32=piece_crc,
            )
        )
    return Cut(chunks, file_crc, size, pieces, next_line, newline)


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


UNCHANGED, CHANGED = "unchanged", "changed"
Skipped = tuple[str, str]  # (UNCHANGED or CHANGED, what to say about the file)


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


def cut_after(
    handle: BinaryIO,
    lines_per_chunk: int,
    first_index: int,
    base: ChunkPlan,
    extent: Extent | None,
    complete_only: bool,
    block: int = READ_BLOCK,
) -> Cut | Skipped:
    """cut_file on a file (or object) read from its start, from where `extent` (what succeeded jobs published of it)
    ends; without an extent, the whole file. Or why it is not to be loaded: nothing new, or what changed."""
    if extent is None:
        return cut_file(handle, lines_per_chunk, first_index, base, complete_only=complete_only, block=block)
    resumed = resume_after(handle, extent, base.path)
    if len(resumed) == 2:
        return resumed  # type: ignore[return-value]
    offset, line, prefix_crc, pieces = resumed  # type: ignore[misc]
    cut = cut_file(handle, lines_per_chunk, first_index, base, offset, line, prefix_crc, complete_only, block)
    if not cut.chunks:
        return UNCHANGED, f"{base.path} (published by job {extent.job_id})"
    return replace(cut, pieces=pieces + cut.pieces, start=offset, first_line=line)


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


def _out_of_order(
    files: list[FilePlan], inputs: list[tuple[Kind, Path]], extents: dict[str, Extent], root: Path, inside: InsideRoot
) -> list[FilePlan]:
    """`files`, each new one that sorts before a published file of its key (kind and company) marked out of order."""
    published: dict[tuple[str, str], list[tuple[str, str]]] = {}  # key -> (name, job) of its published files
    for kind, path in inputs:
        extent = extents.get(relative_posix(inside(path), root))
        if extent is not None:
            stem = input_stem(path.name) or path.name
            published.setdefault((kind.value, stem), []).append((path.name, extent.job_id))
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


def resume_after(handle: BinaryIO, extent: Extent, relative: str) -> tuple[int, int, int, list[list[int]]] | Skipped:
    """Check a file's published part (`extent`) as `handle` reads it from the start. As published: where to cut
    from (offset, line number, CRC-32 of the bytes before, their pieces). Otherwise why it is not loaded."""
    changed = extent.first_change(handle)
    since = f"since job {extent.job_id} published them (--again loads the whole file again)"
    if changed is not None:
        return CHANGED, f"{relative}: bytes {changed[0]}-{changed[1]} changed {since}"
    pieces = [list(p) for p in extent.pieces]
    offset, crc = extent.end, extent.crc32
    if not extent.newline:  # the last published line had no line ending: only one may follow it
        ending = handle.read(2)
        if not ending:
            return UNCHANGED, f"{relative} (published by job {extent.job_id})"
        if not (ending.startswith(b"\n") or ending == b"\r\n"):
            start = pieces[-1][0]
            return CHANGED, f"{relative}: bytes {start}-{extent.end} changed {since}: its last line went on"
        ending = ending[:1] if ending.startswith(b"\n") else ending
        pieces.append([offset, offset + len(ending), zlib.crc32(ending)])
        crc, offset = crc32_combine(crc, zlib.crc32(ending), len(ending)), offset + len(ending)
        handle.seek(offset)
    return offset, extent.next_line, crc, pieces


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
