"""Showing a job to a person: a live progress bar on a terminal, log lines elsewhere."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from k2jobs.jobs.waiting import Progress

log = logging.getLogger("k2jobs.jobs.progress")
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
    lines.extend(f"  WARNING out of order: {warning}" for warning in report.get("warnings", []))
    return "\n".join(lines) + "\n"


BAR_MIN, BAR_MAX = 10, 40  # the bar takes the room the numbers leave, within these widths


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02}:{secs:02}"


def progress_line(p: Progress, width: int) -> tuple[int, str]:
    """The live line for a terminal `width` columns wide: (bar width, text after the bar).

    The numbers are never cut: rows and percentage always show; chunks, rejected, rate, the bar,
    remaining and elapsed time are added, in that order, while they fit.
    """
    pct = 100.0 * p.rows_done / p.rows if p.rows else 100.0
    rate = p.rows_done / p.elapsed_s if p.elapsed_s > 0 else 0.0
    remaining = _clock((p.rows - p.rows_done) / rate) if rate > 0 else "?"
    optional = {
        "chunks": f"chunks {p.chunks_done}/{p.chunks}",
        "rejected": f"rejected {p.rejected}",
        "rate": f"{rate:,.0f} rows/s",
        "bar": "",
        "remaining": f"{remaining} left",
        "elapsed": _clock(p.elapsed_s),
    }
    shown = [f"{pct:3.0f}% {p.rows_done}/{p.rows} rows"]
    bar = 0
    for name, part in optional.items():
        used = len(" • ".join(shown)) + (bar + 1 if bar else 0)
        if name == "bar":
            bar = BAR_MIN if width - used - 1 >= BAR_MIN else 0
        elif used + 3 + len(part) <= width:
            shown.append(part)
    if bar:
        bar = min(BAR_MAX, width - len(" • ".join(shown)) - 1)
    return bar, " • ".join(shown)


@contextmanager
def progress_display(enabled: bool = True) -> Iterator[Callable[[Progress], None]]:
    """A callback that shows progress: a live line on a terminal, a log line every few seconds otherwise."""
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
    from rich.live import Live
    from rich.text import Text

    console = Console(stderr=True)
    latest: list[Progress] = []

    def render() -> Text:
        if not latest:
            return Text("loading", style="bold")
        bar, text = progress_line(latest[-1], console.width - 1)  # the last column would wrap on some terminals
        p = latest[-1]
        done = round(bar * p.rows_done / p.rows) if p.rows else bar
        line = Text(no_wrap=False)
        if bar:
            line.append("━" * done, style="bar.complete" if done < bar else "bar.finished")
            line.append("━" * (bar - done) + " ", style="bar.back")
        line.append(text)
        return line

    # Live (not rich's Progress table): its columns would crop the numbers to fit narrow terminals.
    with Live(console=console, get_renderable=render, refresh_per_second=4, transient=False):
        yield latest.append
