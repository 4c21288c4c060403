"""s3:// input against a real S3-compatible server (VersityGW, started by `stack up --s3`): the sample field by
field with gzip and plain objects mixed, read by workers through ranged GETs only; errors a user can act on."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import TEST_STACK, chunk_consumers_paused, run_k2
from .reference import assert_sample_values, key_order_violations

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"
BUCKET = "k2-test"
COMPANY = "reference-data/company_info.csv"
GZIPPED = ("trades/7078.csv", "quotes/7181.csv")


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


@pytest.fixture(scope="module")
def s3(stack) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The stack's S3 settings, a bucket, and the sample under s3://k2-test/sample (two files gzipped)."""
    from k2jobs.stack.s3_server import stack_s3_client

    assert stack.get("s3", {}).get("pid"), stack
    env = read_env(Path(stack["s3"]["client_env"]))
    assert oct(Path(stack["s3"]["client_env"]).stat().st_mode & 0o777) == "0o600"
    client = stack_s3_client(env, BUCKET)
    for path in sorted(p for p in SAMPLE.rglob("*") if p.is_file()):
        relative = path.relative_to(SAMPLE).as_posix()
        if relative in GZIPPED:
            client.put_object(Bucket=BUCKET, Key=f"sample/{relative}.gz", Body=gzip.compress(path.read_bytes()))
        else:
            client.put_object(Bucket=BUCKET, Key=f"sample/{relative}", Body=path.read_bytes())
    return {"env": env, "client": client}


def submit(env: dict[str, str], *args: str, timeout: float = 600) -> tuple[int, dict[str, Any], str]:
    started = time.monotonic()
    done = run_k2("submit", *args, "--json", "--again", env=env, timeout=timeout)
    elapsed = time.monotonic() - started
    payload = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}
    return done.returncode, payload, f"{done.stderr}\n(took {elapsed:.1f}s)"


def test_the_sample_from_s3_with_gzip_and_plain_objects_loads_field_by_field(s3, read_back) -> None:  # type: ignore[no-untyped-def]
    """The workers get no path to what the server serves (its folder is outside their data root): every byte
    they load comes through S3 ranged GETs."""
    started_ms = int(time.time() * 1000)
    code, report, err = submit(s3["env"], f"s3://{BUCKET}/sample", "--chunk-rows", "20000")
    assert code == 0, (report, err)
    assert report["totals"] == {"rows": 170_332, "published": 170_332, "rejected": 0}
    rows = {f["path"]: f["published"] for f in report["files"]}
    assert rows["trades/7078.csv.gz"] == 91_631 and rows["quotes/7181.csv.gz"] == 549
    assert next(f for f in report["files"] if f["path"] == "trades/7078.csv.gz")["chunks"] == 5
    messages = read_back(report["job_id"])
    assert_sample_values(messages, set(rows), started_ms)
    assert key_order_violations(messages) == []
    verify = run_k2("verify", report["job_id"], "--json", env=s3["env"], timeout=300)
    assert verify.returncode == 0, verify.stdout
    # Load-once holds for objects as for files: the same content again is refused without --again.
    again = run_k2("submit", f"s3://{BUCKET}/sample", "--json", env=s3["env"], timeout=300)
    assert again.returncode == 2 and "already published" in again.stderr, again.stderr


def test_avro_from_s3(s3, read_back) -> None:  # type: ignore[no-untyped-def]
    """--format avro from a bucket: TradeV2 values through the registry, one per row."""
    client = s3["client"]
    for path in ("reference-data/company_info.csv", "trades/7181.csv"):
        client.put_object(Bucket=BUCKET, Key=f"avro/{path}", Body=(SAMPLE / path).read_bytes())
    code, report, err = submit(s3["env"], f"s3://{BUCKET}/avro", "--format", "avro")
    assert code == 0, (report, err)
    messages = read_back(report["job_id"])
    assert len(messages) == 232 and all(m.value[:1] == b"\0" for m in messages)  # the Confluent wire format
    assert not (TEST_STACK / "s3-data").is_relative_to(TEST_STACK / "data-root")  # the workers' K2_DATA_ROOT


def test_bad_credentials_a_missing_bucket_or_prefix_and_no_server_fail_fast_without_the_secret(s3) -> None:  # type: ignore[no-untyped-def]
    env = s3["env"]
    wrong = {**env, "AWS_SECRET_ACCESS_KEY": "not-the-secret-" + env["AWS_SECRET_ACCESS_KEY"][:4]}
    code, _, err = submit(wrong, f"s3://{BUCKET}/sample", timeout=60)
    assert code == 8 and "authentication" in err, err
    assert wrong["AWS_SECRET_ACCESS_KEY"] not in err and env["AWS_SECRET_ACCESS_KEY"] not in err
    code, _, err = submit(env, "s3://no-such-bucket-k2/sample", timeout=60)
    assert code == 2 and "no such bucket" in err, err
    code, _, err = submit(env, f"s3://{BUCKET}/no-such-prefix", timeout=60)
    assert code == 2 and "no objects under this prefix" in err, err
    s3["client"].put_object(Bucket=BUCKET, Key="flat/7078.csv", Body=b"03/10/2014,10:00:00.000,1.5,1,0,,\r\n")
    code, _, err = submit(env, f"s3://{BUCKET}/flat", timeout=60)
    assert code == 2 and "not know how to load" in err, err
    started = time.monotonic()
    code, _, err = submit({**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, f"s3://{BUCKET}/sample", timeout=120)
    assert code == 8 and "did not answer" in err, err
    assert time.monotonic() - started < 30


def test_an_object_replaced_after_submit_fails_its_chunks_naming_it(s3, ledger) -> None:  # type: ignore[no-untyped-def]
    client = s3["client"]
    for path in ("reference-data/company_info.csv", "trades/7181.csv", "trades/3153.csv"):
        client.put_object(Bucket=BUCKET, Key=f"replaced/{path}", Body=(SAMPLE / path).read_bytes())
    with chunk_consumers_paused():
        code, job, err = submit(s3["env"], f"s3://{BUCKET}/replaced", "--no-wait")
        assert code == 0, err
        changed = (SAMPLE / "trades/7181.csv").read_bytes().replace(b"03/10/2014", b"03/11/2014", 1)
        client.put_object(Bucket=BUCKET, Key="replaced/trades/7181.csv", Body=changed)
    done = run_k2("status", job["job_id"], "--wait", "--json", timeout=300)
    report = json.loads(done.stdout)
    assert done.returncode == 1 and report["status"] == "failed"
    errors = " ".join(f["error"] for f in report["failures"])
    assert f"s3://{BUCKET}/replaced/trades/7181.csv was replaced after submit" in errors, errors
    assert report["totals"]["published"] == 0  # both small files share one task: all or nothing
    # The object back as it was at submit (same bytes, same ETag): `resume` loads the job.
    client.put_object(Bucket=BUCKET, Key="replaced/trades/7181.csv", Body=(SAMPLE / "trades/7181.csv").read_bytes())
    resumed = run_k2("resume", job["job_id"], "--json", env=s3["env"], timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert json.loads(resumed.stdout)["totals"] == {"rows": 243, "published": 243, "rejected": 0}


def test_a_truncated_gzip_object_fails_the_job_naming_it(s3) -> None:  # type: ignore[no-untyped-def]
    client = s3["client"]
    whole = gzip.compress((SAMPLE / "trades/7078.csv").read_bytes(), 1)
    client.put_object(Bucket=BUCKET, Key="cut/reference-data/company_info.csv", Body=(SAMPLE / COMPANY).read_bytes())
    client.put_object(Bucket=BUCKET, Key="cut/trades/7078.csv.gz", Body=whole[: len(whole) // 3])
    code, report, err = submit(s3["env"], f"s3://{BUCKET}/cut")
    assert code == 1 and report["status"] == "failed", (report, err)
    [failure] = report["failures"]
    assert failure["path"] == "trades/7078.csv.gz" and "gzip data is corrupt or truncated" in failure["error"]


def test_watching_an_s3_prefix_loads_longer_objects_once_and_names_an_edited_one(s3, read_back) -> None:  # type: ignore[no-untyped-def]
    """Objects are replaced whole: one replaced by a longer one whose start is as published loads what follows."""
    import signal
    import uuid

    from .test_watch import TRADE, Watch, assert_each_line_once_in_order, rows

    prefix, client = f"grow-{uuid.uuid4().hex[:8]}", s3["client"]
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/{COMPANY}", Body=b"company_id,symbol\n7078,BHP\n")
    key = f"{prefix}/trades/7078.csv"
    # Rows 501-531 of the content: no other test publishes the same file content (load-once would refuse it).
    client.put_object(Bucket=BUCKET, Key=key, Body=rows(TRADE, 501, 520))
    watch = Watch(f"s3://{BUCKET}/{prefix}", env=s3["env"])
    try:
        watch.next("watching")
        jobs = [watch.next("job")]
        client.put_object(Bucket=BUCKET, Key=key, Body=rows(TRADE, 501, 530))
        jobs.append(watch.next("job"))
        edited = bytearray(rows(TRADE, 501, 531))
        edited[1:2] = b"4"  # a published byte (line 1: month 03 becomes 04)
        client.put_object(Bucket=BUCKET, Key=key, Body=bytes(edited))
        change = watch.next("changed")
        assert f"trades/7078.csv: bytes 0-{len(rows(TRADE, 501, 520))} changed since job" in change["reason"]
        watch.process.send_signal(signal.SIGINT)
        assert watch.process.wait(timeout=10) == 130
    finally:
        watch.process.kill()
    assert [(j["status"], j["published"]) for j in jobs] == [("succeeded", 20), ("succeeded", 10)]
    messages = [m for j in jobs for m in read_back(j["job_id"])]
    assert_each_line_once_in_order(messages, {"trades/7078.csv": 30})
