"""Showing a job to a person: a live progress bar on a terminal, log lines elsewhere."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .jobs import Progress

log = logging.getLogger("k2jobs.progress")
LOG_EVERY_S = 10.0


def format_progress(p: Progress) -> str:
    """One line: rows and chunks done, rate, rejected, elapsed and remaining time."""
    pct = 100.0 * p.rows_done / p.rows if p.rows else 100.0
    rate = p.rows_done / p.elapsed_s if p.elapsed_s > 0 else 0.0
    remaining = f"{(p.rows - p.rows_done) / rate:.0f}s" if rate > 0 else "?"
    return (
        f"job {p.job_id} {p.status}: {p.rows_done}/{p.rows} rows ({pct:.1f}%), {rate:,.0f} rows/s, "
        f"chunks {p.chunks_done}/{p.chunks}, rejected {p.rejected}, elapsed {p.elapsed_s:.0f}s, "
        f"remaining {remaining}"
    )


def format_report(report: dict[str, Any]) -> str:
    """The final report as a short table for people."""
    totals = report["totals"]
    lines = [
        f"job {report['job_id']} {report['status'].upper()} in {report['duration_s']}s: "
        f"{totals['rows']} rows, {totals['published']} published, {totals['rejected']} rejected",
    ]
    for f in report["files"]:
        lines.append(
            f"  {f['path']:<28} {f['kind']:<7} rows {f['rows']:>9}  published {f['published']:>9}  "
            f"rejected {f['rejected']:>6}  chunks {f['chunks']}"
        )
    for failure in report["failures"]:
        where = f"chunk {failure['chunk']}" if failure.get("chunk") is not None else "rows"
        lines.append(f"  FAILED {failure['path']} {where}: {failure['error']}")
        lines.extend(f"    {reason}" for reason in failure.get("reasons", []))
    return "\n".join(lines) + "\n"


@contextmanager
def progress_display(enabled: bool = True) -> Iterator[Callable[[Progress], None]]:
    """A callback that shows progress: a rich bar on a terminal, a log line every few seconds otherwise."""
    if not enabled:
        yield lambda _p: None
        return
    if not sys.stderr.isatty():
        last = [0.0]

        def log_line(p: Progress) -> None:
            if time.monotonic() - last[0] >= LOG_EVERY_S:
                last[0] = time.monotonic()
                print(format_progress(p), file=sys.stderr, flush=True)

        yield log_line
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as Bar

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "rows • {task.fields[rate]} rows/s • chunks {task.fields[chunks]} • rejected {task.fields[rejected]}"
        ),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Bar(*columns, console=Console(stderr=True), transient=False, refresh_per_second=4) as bar:
        task = bar.add_task("loading", total=None, rate="0", chunks="0/0", rejected=0)

        def update(p: Progress) -> None:
            rate = p.rows_done / p.elapsed_s if p.elapsed_s > 0 else 0.0
            bar.update(
                task,
                total=p.rows,
                completed=p.rows_done,
                rate=f"{rate:,.0f}",
                chunks=f"{p.chunks_done}/{p.chunks}",
                rejected=p.rejected,
            )

        yield update
