"""Reconciling plan against chunk results, and reading settings; pure."""

from __future__ import annotations

from pathlib import Path

import pytest

from k2jobs.config import load_settings
from k2jobs.errors import InputError
from k2jobs.jobs.reconcile import reconcile_job
from k2jobs.plan.model import ChunkPlan, FilePlan, JobPlan


def chunk(index: int, path: str, rows: int) -> ChunkPlan:
    return ChunkPlan(index, path, path, "trades", "BHP", 7078, 0, 1, 1, rows, 0, 1)


PLAN = JobPlan(
    source_dir="job",
    files=[
        FilePlan("trades/7078.csv", "trades", "BHP", 7078, 30, [0, 1]),
        FilePlan("trades/7181.csv", "trades", "DVN", 7181, 5, [2]),
    ],
    chunks=[chunk(0, "trades/7078.csv", 20), chunk(1, "trades/7078.csv", 10), chunk(2, "trades/7181.csv", 5)],
)


def committed(published: int, rejected: int = 0, reasons: list[str] | None = None) -> dict:  # type: ignore[type-arg]
    return {"status": "committed", "published": published, "rejected": rejected, "reasons": reasons or []}


def test_every_row_published_is_succeeded() -> None:
    report = reconcile_job("j", PLAN, {0: committed(20), 1: committed(10), 2: committed(5)}, 1.23456)
    assert report["status"] == "succeeded"
    assert report["totals"] == {"rows": 35, "published": 35, "rejected": 0}
    assert [(f["path"], f["rows"], f["published"], f["chunks"]) for f in report["files"]] == [
        ("trades/7078.csv", 30, 30, 2),
        ("trades/7181.csv", 5, 5, 1),
    ]
    assert report["failures"] == [] and report["duration_s"] == 1.235


def test_rejected_rows_fail_the_job_and_keep_their_reasons_per_file() -> None:
    results = {0: committed(18, 2, ["line 3: bad", "line 9: worse"]), 1: committed(10), 2: committed(5)}
    report = reconcile_job("j", PLAN, results, 1)
    assert report["status"] == "failed"
    assert report["totals"] == {"rows": 35, "published": 33, "rejected": 2}
    assert report["files"][0]["reasons"] == ["line 3: bad", "line 9: worse"]
    assert report["failures"] == [
        {
            "path": "trades/7078.csv",
            "chunk": None,
            "error": "2 rows rejected",
            "reasons": ["line 3: bad", "line 9: worse"],
        }
    ]


def test_failed_and_missing_chunks_are_named() -> None:
    results = {0: committed(20), 1: {"status": "failed", "error": "trades/7078.csv changed after submit"}}
    report = reconcile_job("j", PLAN, results, 1)
    assert report["status"] == "failed"
    assert report["totals"]["published"] == 20
    assert {(f["chunk"], f["error"]) for f in report["failures"]} == {
        (1, "trades/7078.csv changed after submit"),
        (2, "chunk never finished"),
    }


def test_counts_that_do_not_add_up_to_the_plan_are_a_failure() -> None:
    report = reconcile_job("j", PLAN, {0: committed(19), 1: committed(10), 2: committed(5)}, 1)
    assert report["status"] == "failed"
    assert "planned 20 rows, published 19" in report["failures"][0]["error"]


def test_settings_come_from_the_environment() -> None:
    settings = load_settings(
        {
            "K2_REDIS_URL": "redis://:pw@redis:6380/2",
            "K2_KAFKA_BOOTSTRAP": "k1:9092,k2:9092",
            "K2_KAFKA_OPT_SECURITY_PROTOCOL": "SASL_SSL",
            "K2_KAFKA_OPT_SASL_MECHANISM": "PLAIN",
            "K2_CHUNK_ROWS": "5000",
            "K2_DATA_ROOT": "/",
        }
    )
    assert settings.redis_url == "redis://:pw@redis:6380/2"
    assert settings.chunk_rows == 5000 and settings.data_root == Path("/")
    conf = settings.kafka_config(**{"client.id": "x"})
    assert conf == {
        "bootstrap.servers": "k1:9092,k2:9092",
        "metadata.recovery.strategy": "none",
        "reconnect.backoff.max.ms": "1000",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "client.id": "x",
    }
    overridden = load_settings({"K2_KAFKA_OPT_METADATA_RECOVERY_STRATEGY": "rebootstrap"}).kafka_consumer_config()
    assert overridden["metadata.recovery.strategy"] == "rebootstrap"  # a K2_KAFKA_OPT_* wins over k2jobs' default


@pytest.mark.parametrize("value", ["abc", "0", "-5"])
def test_bad_numbers_in_the_environment_are_refused(value: str) -> None:
    with pytest.raises(InputError, match="K2_CHUNK_ROWS"):
        load_settings({"K2_CHUNK_ROWS": value})


def test_in_an_ordered_job_a_failed_chunk_holds_back_the_rest_of_its_key() -> None:
    from k2jobs.jobs.reconcile import chunks_to_come

    failed = {"status": "failed", "error": "changed"}
    assert chunks_to_come(PLAN, {0: failed}) == [2]  # chunk 1 comes after chunk 0 in BHP's order; DVN still to come
    assert chunks_to_come(PLAN, {0: failed}, ordered=False) == [1, 2]
    assert chunks_to_come(PLAN, {0: committed(20)}) == [1, 2]
    report = reconcile_job("j", PLAN, {0: failed, 2: committed(5)}, 1)
    assert {f["chunk"]: f["error"] for f in report["failures"]} == {
        0: "changed",
        1: "not loaded, to keep the key's order: chunk 0 (trades/7078.csv) before it did not commit",
    }


def test_a_file_loaded_out_of_order_is_a_warning_in_the_report_not_a_failure() -> None:
    from dataclasses import replace

    from k2jobs.jobs.progress import format_report

    note = "trades/7078.csv sorts before 7078.csv.gz, loaded earlier by job j0: its rows come after that file's"
    plan = replace(PLAN, files=[replace(PLAN.files[0], out_of_order=note), PLAN.files[1]])
    report = reconcile_job("j", plan, {0: committed(20), 1: committed(10), 2: committed(5)}, 1.0)
    assert report["status"] == "succeeded" and report["warnings"] == [note]
    assert report["files"][0]["out_of_order"] == note and "out_of_order" not in report["files"][1]
    assert f"WARNING out of order: {note}" in format_report(report)
    assert reconcile_job("j", PLAN, {0: committed(20), 1: committed(10), 2: committed(5)}, 1.0)["warnings"] == []
