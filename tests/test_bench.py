"""The benchmark script itself, in its tiny smoke mode: it must keep working (`make bench`, `make bench-check`).

Speed is not asserted here (the smoke input is far too small and CI machines vary): the targets are
met in `make bench-check`. This checks that every measurement runs against its own real stack, that
k2jobs loads every row, and that the table and results file are written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "smoke.json"

pytestmark = pytest.mark.integration


def test_bench_smoke_run_measures_everything_side_by_side() -> None:
    RESULTS.unlink(missing_ok=True)
    # `stack up` warms the fresh broker it starts for a second (10 s by default; the test stack sets 0).
    env = {**os.environ, "K2_BROKER_WARM_UP_S": "1"}
    done = subprocess.run(
        [sys.executable, "bench/bench.py", "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=900, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| k2jobs, 2 workers | 40,000 |" in done.stdout
    results = json.loads(RESULTS.read_text())
    rows = {r["name"]: r["rows"] for r in results["results"]}
    assert rows == {
        "k2jobs first job after stack up, 1 worker": 40_000,
        "Kafka ProducerPerformance (Java)": 40_000,
        "raw CSV lines, 1 Python process": 20_000,
        "naive loader, 1 process": 40_000,
        "k2jobs, 1 worker": 40_000,
        "k2jobs first job after workers start, 2 workers": 40_000,
        "k2jobs, 2 workers": 40_000,
        "k2jobs, 2 workers, --unordered": 40_000,
        "k2jobs Avro, 2 workers": 40_000,
        "k2jobs, 2 workers, again": 40_000,
        "naive Avro loader (AvroSerializer), 1 process": 40_000,
    }
    [stack_warm_up] = results["stack_broker_warm_up"]  # traffic `stack up` sent in transactions, then deleted
    assert stack_warm_up["messages"] >= 100_000 and stack_warm_up["transactions"] >= 1
    warm = results["broker_warm_up"]  # untimed loads in both formats before anything is measured
    assert [w["format"] for w in warm] == ["json", "avro"] and all(w["broker_cpu_s"] > 0 for w in warm)
    k2 = [r for r in results["results"] if r["name"].startswith("k2jobs")]
    assert all(r["rss_mb"] and r["extra"]["plan_s"] >= 0 and r["extra"]["job_id"] for r in k2)
    assert all(len(r["extra"]["worker_processes"]) >= n for r, n in zip(k2, (1, 1, 2, 2, 2, 2, 2), strict=True))
    assert set(results["targets"]) == {
        "vs_naive",
        "vs_python_ceiling",
        "rss_mb",
        "ordered_vs_unordered",
        "first_job",
        "first_job_after_stack_up",
        "avro_vs_json",
        "avro_vs_naive_avro",
    }


def test_scale_smoke_run_measures_each_shape() -> None:
    results = ROOT / "bench" / "results" / "scale-smoke.json"
    results.unlink(missing_ok=True)
    env = {**os.environ, "K2_BROKER_WARM_UP_S": "1"}
    done = subprocess.run(
        [sys.executable, "bench/scale.py", "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=900, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    shapes = {s["name"]: s for s in json.loads(results.read_text())["shapes"]}
    assert {name: s["published"] for name, s in shapes.items()} == {
        "8files: 8 files, 16,000 rows": 16_000,
        "100k: 300 files, 6,600 rows": 6_600,
        "1m: 600 files, 7,146 rows": 7_146,
    }
    for shape in shapes.values():
        assert shape["status"] == "succeeded"
        assert 0 < shape["submit_s"] < shape["seconds"]
        assert 0 < shape["first_message_s"] < shape["seconds"]  # a read_committed consumer saw the job's first record
        assert shape["chunks"] >= 1 and shape["worker_peak_mb"] > 0 and shape["submit_peak_mb"] > 0
        assert shape["input_bytes"] > 0 and shape["listing_s"] >= 0 and shape["bytes_read"] >= 0
    assert "| 100k: 300 files, 6,600 rows | 300 | 6,600 |" in done.stdout
