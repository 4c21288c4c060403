"""The input layout: which files hold rows, their kind, the company map, and paths kept inside the data root."""

from __future__ import annotations

import csv
import io
import os
import re
import stat
from pathlib import Path

from k2jobs.errors import InputError, UnsafePathError
from k2jobs.plan.model import Kind
from k2jobs.sources.gz import GZIP_SUFFIX

COMPANY_INFO = Path("reference-data") / "company_info.csv"
# Top-level names that describe the data set rather than hold rows to load.
DOCUMENTATION = re.compile(r"(?i)(readme.*|.*\.(md|txt|rst))\Z")


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


def company_of(relative: str, name: str, symbols: dict[int, str]) -> int:
    """The company id a data file's name gives, refused unless company_info lists it."""
    stem = input_stem(name) or name
    if not stem.isdigit() or int(stem) not in symbols:
        raise InputError(f"{relative}: file name {stem!r} is not a company id listed in {COMPANY_INFO.as_posix()}")
    return int(stem)
