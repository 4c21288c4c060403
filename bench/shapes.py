"""Job shapes side by side in one run: the same 360,000 trade rows as few big files, as thousands of small
files (the real layout: one file per company), and as one key cut into many chunks.

One local broker and 2 workers (the bench stack of bench/bench.py, on its own ports):

- 4 files of 90,000 rows, one company each; the same files gzipped, and the same files from the stack's S3 server;
- 4,000 files of 90 rows, one company each (company_info.csv lists 4,000 companies), and the naive
  single-process loader of bench/bench.py on the same 4,000 files;
- one company's 360,000 rows in one file, cut into 4 chunks of 90,000 rows and into 360 chunks of 1,000.

- 10,000 files of 10 rows: how long `submit` takes to plan and enqueue them (the job's own timings).

With --scaling, also the big-files and many-files shapes with 1, 2 and 4 workers.

Targets (issue 17): many small files >= 0.5x the big files and >= 2x naive on the same files; one key in 360
chunks >= 0.5x the same key in 4 chunks; 10,000 files planned and enqueued in <= 5 s. Issue 18: the 4 big files
gzipped load at >= 0.7x the plain ones. Writes
bench/results/shapes.{md,json}; with --check, exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402 - the bench stack, the loaders and the report helpers are bench.py's

ROWS = 360_000
SHAPES = bench.WORK / "shapes"
TARGETS = {
    "many_files_vs_big": 0.5,
    "many_files_vs_naive": 2.0,
    "many_chunks_vs_few": 0.5,
    "gzip_vs_plain": 0.7,  # issue 18
    "submit_10000_files_s": 5.0,
}
SUBMIT_10000 = "k2jobs, 10,000 files of 10 rows"
S3_BIG = "k2jobs, 4 files of 90,000 rows, from S3 (VersityGW)"
GZIP_BIG = "k2jobs, 4 files of 90,000 rows, .csv.gz"
BIG = "k2jobs, 4 files of 90,000 rows"
SMALL = "k2jobs, 4,000 files of 90 rows"
FEW_CHUNKS = "k2jobs, one key in 4 chunks"
MANY_CHUNKS = "k2jobs, one key in 360 chunks"
COMPARED = (BIG, GZIP_BIG, SMALL, FEW_CHUNKS, MANY_CHUNKS)
ONE_TASK_EACH = "k2jobs, one key in 360 chunks, a task each (K2_TASK_ROWS=1000)"
SCALING_ROWS = 1_000_000  # per kind, bench.py's default input


def write_shape(name: str, files: int, rows_per_file: int | Callable[[int], int], folder: Path = SHAPES) -> Path:
    """`files` trade files of real rows under folder/name, one company each; company_info lists them all. File n
    holds `rows_per_file` rows, or `rows_per_file(n)`. Reused if already written with the same shape."""
    root = folder / name
    manifest = root / ".manifest"
    counts = [rows_per_file(n) if callable(rows_per_file) else rows_per_file for n in range(files)]
    wanted = f"{files}x{rows_per_file}" if isinstance(rows_per_file, int) else f"{files}x{sum(counts)}"
    if manifest.exists() and manifest.read_text() == wanted:
        return root
    shutil.rmtree(root, ignore_errors=True)
    lines = bench.sample_lines("trades")
    (root / "trades").mkdir(parents=True)
    (root / "reference-data").mkdir()
    info = ["company_id,symbol"] + [f"{100_000 + n},S{n:05d}" for n in range(files)]
    (root / bench.COMPANY_INFO).write_text("\n".join(info) + "\n")
    offset = 0
    for n, count in enumerate(counts):
        start = offset % len(lines)
        offset += count
        path = root / "trades" / f"{100_000 + n}.csv"
        if start + count <= len(lines):  # a slice, not a copy of every line: a million small files
            path.write_bytes(b"".join(line + b"\r\n" for line in lines[start : start + count]))
        else:
            bench.write_tiled(path, lines[start:] + lines, count)
    manifest.write_text(wanted)
    return root


def gzip_shape(plain: Path) -> Path:
    """The same files as `plain`, each gzipped (`.csv.gz`, level 6: gzip's default)."""
    import gzip

    root = plain.with_name(plain.name + "-gz")
    manifest = root / ".manifest"
    wanted = (plain / ".manifest").read_text()
    if manifest.exists() and manifest.read_text() == wanted:
        return root
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(plain / "reference-data", root / "reference-data")
    (root / "trades").mkdir()
    for path in sorted((plain / "trades").glob("*.csv")):
        (root / "trades" / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes(), 6))
    manifest.write_text(wanted)
    return root


def load_from_s3(env: dict[str, str], root: Path) -> bench.Result:
    """The files of `root` uploaded to the bench stack's S3 server (VersityGW), loaded from s3://bench/NAME."""
    from k2jobs.config import load_settings
    from k2jobs.stack.s3_server import s3_client_env, upload_directory

    settings = load_settings(env)
    s3_env = s3_client_env(settings.stack_dir, settings.s3_port)
    upload_directory(s3_env, root, "bench", root.name)
    return load({**env, **s3_env}, f"s3://bench/{root.name}", S3_BIG)  # type: ignore[arg-type]


def files_of(root: Path) -> tuple[list[tuple[str, int, Path]], dict[int, str]]:
    """`root`'s trade files as bench.py's loaders take them, and its own company_info's symbols."""
    with (root / bench.COMPANY_INFO).open(newline="") as handle:
        symbols = {int(r["company_id"]): r["symbol"] for r in csv.DictReader(handle)}
    return [("trades", int(p.stem), p) for p in sorted((root / "trades").glob("*.csv"))], symbols


def naive_on(root: Path, bootstrap: str) -> bench.Result:
    """bench.py's naive loader over every file of `root`."""
    files, symbols = files_of(root)
    return bench.naive_loader(bootstrap, files, symbols, name=f"naive loader, 1 process, {len(files)} files")


def ceiling_on(root: Path, bootstrap: str) -> bench.Result:
    """bench.py's raw-produce ceiling (best of its runs) over every file of `root`."""
    files, symbols = files_of(root)
    name = f"raw CSV lines, 1 Python process, {len(files)} files"
    runs = [bench.python_ceiling(bootstrap, files, symbols, name) for _ in range(bench.CEILING_RUNS)]
    return max(runs, key=lambda r: r.rate)


def load(env: dict[str, str], root: Path, name: str, *options: str, workers: int = 2, rows: int = ROWS) -> bench.Result:
    result = bench.k2jobs_load(env, workers, rows, *options, name=name, source=root)
    result.extra["redis_kb"] = redis_kb(env, result.extra["job_id"])
    return result


def redis_kb(env: dict[str, str], job_id: str) -> float:
    """What the job's keys take in Redis (MEMORY USAGE of each), in KiB: it grows with the chunks, linearly."""
    import redis

    client = redis.Redis.from_url(env["K2_REDIS_URL"])
    keys = list(client.scan_iter(f"k2:job:{job_id}*", count=1000))
    return round(sum(client.memory_usage(k) or 0 for k in keys) / 1024, 1)


def scaling(env: dict[str, str], big: Path, small: Path) -> list[bench.Result]:
    """Both file shapes, and bench.py's big input (1M trade + 1M quote rows in 6 files), with 1, 2 and 4
    workers (a fresh stack each time: `stack up` only adds workers)."""
    results = []
    large = bench.build_input(SCALING_ROWS)
    shapes = (
        (big, "4 files of 90,000 rows", ROWS),
        (small, "4,000 files of 90 rows", ROWS),
        (large, "6 files of 333,333 rows", 2 * SCALING_ROWS),
    )
    for workers in (1, 2, 4):
        bench.restart_stack(env, workers)
        bench.warm_up(env)
        print(f"shapes: scaling, {workers} worker(s) ...")
        for root, shape, rows in shapes:
            results.append(load(env, root, f"scaling: {shape}, {workers} worker(s)", workers=workers, rows=rows))
    return results


def run(
    env: dict[str, str], with_scaling: bool, repeat: int = bench.REPEAT
) -> tuple[list[bench.Result], dict[str, Any]]:
    from k2jobs.config import load_settings

    settings = load_settings(env)
    big, small, one = (
        write_shape("4x90000", 4, 90_000),
        write_shape("4000x90", 4000, 90),
        write_shape("1x360000", 1, ROWS),
    )
    info: dict[str, Any] = {"stack_up_s": round(bench.restart_stack(env, 2), 1)}
    bench.ensure_topics(settings.kafka_bootstrap, settings.partitions)
    bench.warm_up(env)
    # As bench.py: every shape is measured on a broker whose JIT has warmed, with bench.py's input.
    print(f"shapes: broker warm-up, {bench.BROKER_WARM_JOBS} untimed loads ...")
    info["broker_warm_up"] = bench.warm_broker(env, bench.BROKER_WARM_JOBS, bench.build_input(1_000_000))
    print("shapes: raw-produce ceiling on the 4 files ...")
    results = [ceiling_on(big, settings.kafka_bootstrap)]
    # The shapes a target compares are loaded in turn, `repeat` rounds, and each counts by its median run (bench.py).
    compared: dict[str, list[bench.Result]] = {name: [] for name in COMPARED}
    gzipped = gzip_shape(big)
    for round_ in range(1, repeat + 1):
        print(f"shapes: round {round_}/{repeat}: 4 files plain and gzipped, 4,000 files, one key in 4 and 360 chunks")
        compared[BIG].append(load(env, big, BIG))
        compared[GZIP_BIG].append(load(env, gzipped, GZIP_BIG))
        compared[SMALL].append(load(env, small, SMALL))
        compared[FEW_CHUNKS].append(load(env, one, FEW_CHUNKS, "--chunk-rows", "90000"))
        compared[MANY_CHUNKS].append(load(env, one, MANY_CHUNKS, "--chunk-rows", "1000"))
    median = {name: bench.median_run(runs) for name, runs in compared.items()}
    results += [median[BIG], median[GZIP_BIG]]
    print("shapes: the 4 files from the stack's S3 server ...")
    results.append(load_from_s3(env, big))
    results.append(median[SMALL])
    print("shapes: naive loader on the 4,000 files ...")
    results.append(naive_on(small, settings.kafka_bootstrap))
    results += [median[FEW_CHUNKS], median[MANY_CHUNKS]]
    # Not a target: the fixed cost of a task (a transaction), when every chunk pays it (see task_cost.py).
    print("shapes: one key in 360 chunks, a task (and transaction) each ...")
    each = {**env, "K2_TASK_ROWS": "1000"}
    results.append(load(each, one, ONE_TASK_EACH, "--chunk-rows", "1000"))
    print("shapes: 10,000 files of 10 rows ...")
    results.append(load(env, write_shape("10000x10", 10_000, 10), SUBMIT_10000, rows=100_000))
    if with_scaling:
        results += scaling(env, big, small)
    return results, info


def submit_seconds(results: list[bench.Result]) -> float:
    """Plan and enqueue time of the 10,000-file job, as the job recorded it."""
    job = next(r for r in results if r.name == SUBMIT_10000)
    return float(job.extra["plan_s"] + job.extra["enqueue_s"])


def targets(results: list[bench.Result]) -> dict[str, dict[str, Any]]:
    rate = {r.name: r.rate for r in results}
    values = {
        "many_files_vs_big": rate[SMALL] / rate[BIG],
        "many_files_vs_naive": rate[SMALL] / rate["naive loader, 1 process, 4000 files"],
        "many_chunks_vs_few": rate[MANY_CHUNKS] / rate[FEW_CHUNKS],
        "gzip_vs_plain": rate[GZIP_BIG] / rate[BIG],
        "submit_10000_files_s": next(
            r.extra["plan_s"] + r.extra["enqueue_s"] for r in results if r.name == SUBMIT_10000
        ),
    }
    return {
        name: {
            "value": round(value, 2),
            "target": TARGETS[name],
            "met": value <= TARGETS[name] if name.endswith("_s") else value >= TARGETS[name],
        }
        for name, value in values.items()
    }


def per_task_ms(results: list[bench.Result]) -> float:
    """Wall time a task adds, end to end: one key's 360 chunks as 360 chained tasks against 4 (ms per task)."""
    rate = {r.name: r for r in results}
    return (rate[ONE_TASK_EACH].seconds - rate[FEW_CHUNKS].seconds) / 356 * 1000


def per_task_line(results: list[bench.Result]) -> str:
    return (
        f"Fixed cost of a task (a transaction) end to end, one key's tasks running one after another: "
        f"{per_task_ms(results):.1f} ms (360 tasks against 4, same rows)."
    )


def report(results: list[bench.Result], info: dict[str, Any]) -> str:
    goals = targets(results)
    date = datetime.now().astimezone().isoformat(timespec="seconds")
    lines = [
        "| job shape | rows | seconds | rows/s | vs raw ceiling | plan + enqueue s | job in Redis KiB | runs (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    ceiling = results[0].rate  # run() measures the raw-produce ceiling first
    for r in results:
        inside = f"{r.extra['plan_s']:.2f} + {r.extra['enqueue_s']:.2f}" if "plan_s" in r.extra else "-"
        memory = r.extra.get("redis_kb", "-")
        runs = ", ".join(f"{s:.2f}" for s in r.extra.get("runs_s", [])) or "-"
        lines.append(
            f"| {r.name} | {r.rows:,} | {r.seconds:.1f} | {r.rate:,.0f} | {r.rate / ceiling:.2f}x | {inside} "
            f"| {memory} | {runs} |"
        )
    text = "\n".join(
        [
            f"# k2jobs job shapes ({date}, nproc {bench.os.cpu_count()}, 2 workers)\n",
            *lines,
            "",
            per_task_line(results),
            "",
            "Targets:\n",
            *[
                f"- [{'x' if g['met'] else ' '}] {name} {'<=' if name.endswith('_s') else '>='} {g['target']}: "
                f"{g['value']}"
                for name, g in goals.items()
            ],
            "",
        ]
    )
    bench.RESULTS.mkdir(parents=True, exist_ok=True)
    (bench.RESULTS / "shapes.md").write_text(text)
    payload = {"date": date, **info, "results": [{**r.__dict__, "rows_per_s": round(r.rate)} for r in results]}
    (bench.RESULTS / "shapes.json").write_text(json.dumps({**payload, "targets": goals}, indent=2, default=str) + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 unless every target is met")
    parser.add_argument("--keep-stack", action="store_true", help="leave the bench stack running at the end")
    parser.add_argument("--scaling", action="store_true", help="also both file shapes with 1, 2 and 4 workers")
    parser.add_argument(
        "--repeat", type=int, default=bench.REPEAT, help="rounds of the compared shapes; each counts by its median run"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be 1 or more")
    env = bench.bench_env()
    started = time.perf_counter()
    try:
        results, info = run(env, args.scaling, args.repeat)
    except (bench.BenchError, subprocess.TimeoutExpired) as exc:
        print(f"shapes: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep_stack:
            bench.stop_stack(env)
    print(report(results, info))
    print(f"shapes: {time.perf_counter() - started:.0f} s")
    return bench.exit_status("shapes", targets(results), args.check)


if __name__ == "__main__":
    sys.exit(main())
