"""What security costs: the same jobs on a plain stack and on `stack up --secure` (issue 20), side by side.

Each mode gets a fresh stack folder on the bench ports, 2 workers, one untimed warm-up load, then RUNS loads of
bench.py's input (1M trade + 1M quote rows by default), each checked like every bench load. The secure stack's
clients use its client.env: SASL_SSL/SCRAM to Kafka, TLS to Redis. Prints a Markdown table; no target.

    make bench-secure          # or: python bench/secure.py [--rows N] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402 - the bench stack, input and loaders are bench.py's

RUNS = 3


def read_env(path: Path) -> dict[str, str]:
    """client.env as a shell reads it (`set -a; . client.env`)."""
    return dict(line.split("=", 1) for text in path.read_text().splitlines() for line in shlex.split(text))


def measure(mode: str, rows: int, runs: int) -> list[float]:
    """rows/s of `runs` loads of the bench input on a fresh stack in `mode` (plain or secure), 2 workers."""
    env = {**bench.bench_env(), "K2_STACK_DIR": str(bench.WORK / f"stack-{mode}")}
    bench.k2(env, "stack", "down", timeout=300)
    shutil.rmtree(env["K2_STACK_DIR"], ignore_errors=True)
    secure = ["--secure"] if mode == "secure" else []
    status = json.loads(bench.k2(env, "stack", "up", "--workers", "2", *secure, "--json", timeout=600))
    if mode == "secure":
        env.update(read_env(Path(status["client_env"])))
    try:
        bench.warm_up(env)
        return [bench.k2jobs_load(env, 2, 2 * rows, name=f"{mode} {n}").rate for n in range(1, runs + 1)]
    finally:
        bench.stop_stack(env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per kind (default 1,000,000)")
    parser.add_argument("--runs", type=int, default=RUNS, help=f"timed loads per mode (default {RUNS})")
    args = parser.parse_args()
    bench.build_input(args.rows)
    bench.stop_stack(bench.bench_env())  # the usual bench stack holds the same ports
    rates = {mode: measure(mode, args.rows, args.runs) for mode in ("plain", "secure")}
    print(f"\n# plain vs secure stack ({datetime.now().astimezone().isoformat(timespec='seconds')}, 2 workers)\n")
    print(f"Input: {2 * args.rows:,} rows (bench.py's), after one untimed warm-up load per stack.\n")
    print("| stack | " + " | ".join(f"run {n} rows/s" for n in range(1, args.runs + 1)) + " | median |")
    print("|---|" + "---:|" * (args.runs + 1))
    for mode, values in rates.items():
        cells = " | ".join(f"{value:,.0f}" for value in values)
        print(f"| {mode} | {cells} | {statistics.median(values):,.0f} |")
    ratio = statistics.median(rates["secure"]) / statistics.median(rates["plain"])
    print(f"\nsecure / plain (medians): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
