"""Render the recorded benchmark results into the docs.

Every recorded run is one dated JSON file in bench/results/, named `<date>[T<HH-MM>]-<command>[-<commit>].json`
(e.g. 2026-12-07T10-15-bench-check-c3b57d8.json), with the fields date (ISO 8601, UTC), commit, command, machine,
figures ({name: value}), targets ({name: {value, target, met}}, where known) and notes. The files bench.py and
shapes.py write there themselves (latest.json, smoke.json, shapes.json, task_cost.json) are scratch output, not
records, and are not read.

This script rewrites the text between two markers in each of these files:

- README.md and bench/README.md, between `<!-- performance:start -->` and `<!-- performance:end -->`: the newest
  recorded run (by its date field), its targets (and, in bench/README.md, its figures);
- docs/performance.md, between `<!-- history:start -->` and `<!-- history:end -->`: one line per recorded run.

    python bench/report.py           # rewrite the tables
    python bench/report.py --check   # exit 1 if a table differs from what would be written

Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RECORD_NAME = re.compile(r"^20\d\d-\d\d-\d\d(T\d\d-\d\d)?-[a-z0-9-]+\.json$")
PERFORMANCE = ("<!-- performance:start -->", "<!-- performance:end -->")
HISTORY = ("<!-- history:start -->", "<!-- history:end -->")
LABELS = {
    "vs_naive": "k2jobs, 2 workers, vs the naive loader (x)",
    "vs_python_ceiling": "k2jobs, 2 workers, vs the raw-lines ceiling (x)",
    "rss_mb": "peak worker RSS (MB)",
    "ordered_vs_unordered": "ordered vs `--unordered`, 2 workers (x)",
    "first_job": "first job after the workers start vs a later one (x)",
    "first_job_after_stack_up": "first job after `stack up` vs a later one, 1 worker (x)",
    "avro_vs_json": "Avro vs JSON run in turn with it, 2 workers (x)",
    "avro_vs_naive_avro": "Avro vs a naive loader using AvroSerializer (x)",
    "many_files_vs_big": "4,000 small files vs 4 big files (x)",
    "many_files_vs_naive": "4,000 small files vs the naive loader on them (x)",
    "many_chunks_vs_few": "one key in 360 chunks vs in 4 chunks (x)",
    "gzip_vs_plain": "4 big files gzipped vs plain (x)",
    "submit_10000_files_s": "10,000 files planned and enqueued (s)",
}


def record_files(folder: Path = RESULTS) -> list[Path]:
    """The recorded runs in `folder`: the dated JSON files, not the scripts' scratch output."""
    return sorted(path for path in folder.glob("*.json") if RECORD_NAME.match(path.name))


def load_records(folder: Path = RESULTS) -> list[dict[str, Any]]:
    """Every recorded run, oldest first (by date), each with the name of its file under `file`."""
    records = [{**json.loads(path.read_text()), "file": path.name} for path in record_files(folder)]
    return sorted(records, key=lambda record: (record["date"], record["file"]))


def newest(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The most recent run by its date field."""
    if not records:
        raise SystemExit(f"report: no recorded results in {RESULTS}")
    return records[-1]


def show(value: Any) -> str:
    """A figure as text: 1,234,567 for integers, lists and mappings spelled out."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return ", ".join(show(item) for item in value)
    if isinstance(value, dict):
        return "; ".join(f"{key}: {show(item)}" for key, item in value.items())
    return str(value)


def measured(value: Any) -> str:
    """A target's measured value: a ratio with at least two decimals (1.00, 0.95, 0.854), as bench.py rounds it."""
    if isinstance(value, float) and round(value, 2) == value:
        return f"{value:.2f}"
    return show(value)


def wanted(name: str, target: float | None) -> str:
    """How a target's value compares with its bound: RSS below it, seconds at most it, ratios at least it."""
    if target is None:
        return ""
    if name == "rss_mb":
        return f"< {show(target)}"
    return f"{'<=' if name.endswith('_s') else '>='} {show(target)}"


def heading(record: dict[str, Any]) -> str:
    """One sentence naming the run: its command, commit, date, machine and notes."""
    commit = f" on commit {record['commit']}" if record.get("commit") else ""
    notes = f" {record['notes'][:1].upper()}{record['notes'][1:]}." if record.get("notes") else ""
    return (
        f"Newest recorded run: `{record['command']}`{commit} ({record['date']}, {record['machine']}), "
        f"from `bench/results/{record['file']}`.{notes}"
    )


def target_table(record: dict[str, Any]) -> list[str]:
    """The run's targets as Markdown table lines (none when it recorded no target)."""
    goals = record.get("targets") or {}
    if not goals:
        return []
    lines = ["| target | measured | wanted | met |", "|---|---:|---:|:---:|"]
    for name, goal in goals.items():
        met = "yes" if goal["met"] else "**no**"
        label, bound = LABELS.get(name, name), wanted(name, goal["target"])
        lines.append(f"| {label} | {measured(goal['value'])} | {bound} | {met} |")
    return lines


def figure_table(record: dict[str, Any]) -> list[str]:
    """The run's figures as Markdown table lines."""
    lines = ["| figure | value |", "|---|---|"]
    return lines + [f"| `{name}` | {show(value)} |" for name, value in record["figures"].items()]


def render_latest(record: dict[str, Any], figures: bool) -> str:
    """The block between the performance markers: the heading, the targets, and the figures if asked."""
    parts = [heading(record)]
    if record.get("targets"):
        parts.append("\n".join(target_table(record)))
    if figures and record["figures"]:
        parts.append("\n".join(figure_table(record)))
    return "\n\n".join(parts)


def render_history(records: list[dict[str, Any]]) -> str:
    """The block between the history markers: one table line per recorded run, oldest first."""
    lines = ["| date (UTC) | command | commit | targets met | missed | notes |", "|---|---|---|---:|---|---|"]
    for record in records:
        goals = record.get("targets") or {}
        missed = ", ".join(f"`{name}`" for name, goal in goals.items() if not goal["met"])
        met = f"{sum(goal['met'] for goal in goals.values())} of {len(goals)}" if goals else ""
        commit = record.get("commit") or ""
        lines.append(f"| {record['date']} | `{record['command']}` | {commit} | {met} | {missed} | {record['notes']} |")
    return "\n".join(lines)


def expected_blocks(records: list[dict[str, Any]], root: Path = ROOT) -> dict[Path, tuple[tuple[str, str], str]]:
    """Each file this script writes, with its markers and the block that belongs between them."""
    latest = newest(records)
    return {
        root / "README.md": (PERFORMANCE, render_latest(latest, figures=False)),
        root / "bench" / "README.md": (PERFORMANCE, render_latest(latest, figures=True)),
        root / "docs" / "performance.md": (HISTORY, render_history(records)),
    }


def current_block(text: str, markers: tuple[str, str]) -> str:
    """What a file holds between its markers, without the newlines around it."""
    start, end = markers
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"expected one {start} before one {end}")
    return text[text.index(start) + len(start) : text.index(end)].strip("\n")


def with_block(text: str, markers: tuple[str, str], block: str) -> str:
    """`text` with `block` between its markers."""
    current_block(text, markers)  # the markers must be there, once each
    start, end = markers
    return text[: text.index(start) + len(start)] + "\n" + block + "\n" + text[text.index(end) :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a table differs from what would be written")
    args = parser.parse_args(argv)
    stale = []
    for path, (markers, block) in expected_blocks(load_records()).items():
        text = path.read_text()
        if current_block(text, markers) == block:
            continue
        stale.append(path.relative_to(ROOT).as_posix())
        if not args.check:
            path.write_text(with_block(text, markers, block))
    if args.check and stale:
        print(f"report: tables out of date in {', '.join(stale)} (run python bench/report.py)", file=sys.stderr)
        return 1
    print(f"report: {'rewrote ' + ', '.join(stale) if stale else 'tables up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
