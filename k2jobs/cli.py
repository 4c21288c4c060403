"""Command line: argument parsing, printing and exit codes; no domain logic."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from k2jobs import __version__
from k2jobs.config import VALUE_FORMATS, Settings, load_settings
from k2jobs.errors import (
    InputError,
    JobNotFound,
    K2Error,
    KafkaUnavailable,
    RedisUnavailable,
    RegistryUnavailable,
    StackError,
    StorageUnavailable,
    StoredDataError,
    WaitTimeout,
)
from k2jobs.sources.s3 import is_object_url

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_REFUSED = 2
EXIT_REDIS_UNAVAILABLE = 3
EXIT_KAFKA_UNAVAILABLE = 4
EXIT_STACK_FAILED = 5
EXIT_WAIT_TIMEOUT = 6
EXIT_REGISTRY_UNAVAILABLE = 7
EXIT_STORAGE_UNAVAILABLE = 8
EXIT_INTERRUPTED = 130


def _print_json(value: Any) -> None:
    """`value` as indented JSON, as json.dumps(value, indent=2) writes it but UTF-8, and far faster for the report
    of a job of thousands of files."""
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n")


def _report_exit(report: dict[str, Any]) -> int:
    return EXIT_OK if report["status"] == "succeeded" else EXIT_JOB_FAILED


def _print_report(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(report)
        return
    from k2jobs.jobs.progress import format_report

    sys.stdout.write(format_report(report))


def _ledger(settings: Settings) -> Any:
    from k2jobs.store.ledger import Ledger, connect

    ledger = Ledger(connect(settings.redis_url))
    ledger.ping()
    return ledger


def _wait(settings: Settings, ledger: Any, job_id: str, as_json: bool, timeout_s: float | None = None) -> int:
    from k2jobs.jobs.diagnose import describe_stall
    from k2jobs.jobs.progress import progress_display
    from k2jobs.jobs.waiting import wait_for_report

    def say_what_is_stuck(stalled_s: float) -> None:
        lines = [f"job {job_id}: nothing has moved for {stalled_s:.0f}s", *describe_stall(settings, ledger, job_id)]
        print("\n".join(f"k2jobs: {line}" for line in lines), file=sys.stderr, flush=True)

    with progress_display(enabled=not as_json) as show:
        report = wait_for_report(
            ledger, job_id, show, timeout_s=timeout_s, stall_warn_s=settings.stall_warn_s, on_stall=say_what_is_stuck
        )
    _print_report(report, as_json)
    return _report_exit(report)


def _check_settings(settings: Settings) -> None:
    """Refuse (exit 2) a setting the Kafka clients would refuse, before anything starts or is enqueued."""
    from k2jobs.kafka.preflight import check_client_settings

    check_client_settings(settings)


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    from k2jobs.jobs.submit import SubmitOptions, submit_job
    from k2jobs.store.ledger import Ledger, connect

    _check_settings(settings)

    directory = args.directory if is_object_url(args.directory) else Path(args.directory).absolute()
    options = SubmitOptions(
        chunk_rows=args.chunk_rows or settings.chunk_rows,
        ordered=not args.unordered,
        again=args.again,
        skip_unknown=args.skip_unknown,
        value_format=args.format or settings.value_format,
    )
    ledger = Ledger(connect(settings.redis_url))
    job_id, plan = submit_job(settings, ledger, directory, options)
    for chunk in plan.chunks:
        if chunk.damaged:  # the job loads the other files and ends failed, naming this one
            print(f"warning: {chunk.damaged}", file=sys.stderr)
    for file in plan.files:
        if file.out_of_order:
            print(f"warning: out of order: {file.out_of_order}", file=sys.stderr)
    if plan.unchanged:
        more = f" and {len(plan.unchanged) - 5} more" if len(plan.unchanged) > 5 else ""
        print(
            f"note: {len(plan.unchanged)} files left out, nothing new: {', '.join(plan.unchanged[:5])}{more}",
            file=sys.stderr,
        )
    order = "unordered" if args.unordered else f"ordered per key, {len(plan.key_chunks())} keys"
    how = f"{order}, {options.value_format}"
    if not args.wait:
        if args.json:
            _print_json({"job_id": job_id})
        else:
            print(f"job {job_id}: {len(plan.chunks)} chunks ({how}), {plan.rows} rows enqueued")
        return EXIT_OK
    if not args.json:
        print(f"job {job_id}: {len(plan.chunks)} chunks ({how}), {plan.rows} rows", file=sys.stderr)
    return _wait(settings, ledger, job_id, args.json, args.timeout)


def cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    import signal

    from k2jobs.jobs.submit import SubmitOptions
    from k2jobs.jobs.watch import Watcher
    from k2jobs.store.ledger import Ledger, connect

    _check_settings(settings)
    options = SubmitOptions(
        chunk_rows=args.chunk_rows or settings.chunk_rows,
        skip_unknown=args.skip_unknown,
        value_format=args.format or settings.value_format,
    )

    def say(event: dict[str, Any]) -> None:
        print(json.dumps(event) if args.json else _watch_line(event), flush=True)

    directory = args.directory if is_object_url(args.directory) else Path(args.directory).absolute()
    watcher = Watcher(settings, Ledger(connect(settings.redis_url)), directory, options, say)
    signals: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        signals.append(signum)
        watcher.stop.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    watcher.run(args.every)
    say({"event": "stopped", "reason": "a running job goes on on the workers" if signals else ""})
    return EXIT_INTERRUPTED if signals and signals[0] == signal.SIGINT else EXIT_OK


def _watch_line(event: dict[str, Any]) -> str:
    what = event["event"]
    if what == "job":
        text = (
            f"job {event['job_id']} {event['status'].upper()}: {event['published']} published, "
            f"{event['rejected']} rejected of {event['rows']} new rows in {event['duration_s']}s"
        )
        text += "".join(f"; out of order: {warning}" for warning in event.get("warnings", []))
        return text + (f"; {event['reason']}" if "reason" in event else "")
    if what == "watching":
        return f"watching {event['directory']} every {event['every_s']:g}s (Ctrl-C stops; a running job goes on)"
    if what == "changed":
        return f"not loaded: {event['reason']}"
    return f"{what}: {event['reason']}" if event.get("reason") else what


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from k2jobs.jobs.waiting import job_progress

    ledger = _ledger(settings)
    if args.wait:
        return _wait(settings, ledger, args.job_id, args.json, args.timeout)
    report = ledger.report(args.job_id)
    if report is not None:
        _print_report(report, args.json)
        return _report_exit(report)
    progress = job_progress(ledger, args.job_id)
    if args.json:
        _print_json({**progress.__dict__, "status": "running"})
    else:
        from k2jobs.jobs.progress import format_progress

        print(format_progress(progress))
    return EXIT_OK


def cmd_resume(args: argparse.Namespace, settings: Settings) -> int:
    from k2jobs.jobs.lifecycle import resume_job
    from k2jobs.kafka.preflight import check_kafka

    _check_settings(settings)
    ledger = _ledger(settings)
    check_kafka(settings)
    pending = resume_job(ledger, args.job_id)
    if not args.json:
        print(f"job {args.job_id}: {len(pending)} chunks re-enqueued", file=sys.stderr)
    if not args.wait:
        if args.json:
            _print_json({"job_id": args.job_id, "chunks": pending})
        return EXIT_OK
    return _wait(settings, ledger, args.job_id, args.json, args.timeout)


def cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    from k2jobs.jobs.waiting import job_progress

    ledger = _ledger(settings)
    rows = [
        {**job_progress(ledger, job_id).__dict__, "made_by": ledger.job_options(job_id).get("made_by", "")}
        for job_id in ledger.recent_jobs(args.limit)
    ]
    if args.json:
        _print_json(rows)
        return EXIT_OK
    for row in rows:
        print(
            f"{row['job_id']}  {row['status']:<9}  {row['rows_done']:>10}/{row['rows']:<10} rows  "
            f"{row['chunks_done']}/{row['chunks']} chunks  {row['rejected']} rejected"
            + (f"  ({row['made_by']})" if row["made_by"] else "")
        )
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from k2jobs.jobs.verify import verify_job
    from k2jobs.kafka.preflight import check_kafka

    ledger = _ledger(settings)
    check_kafka(settings)
    result = verify_job(settings, ledger, args.job_id)
    if args.json:
        _print_json(result)
    else:
        for file in result["files"]:
            mark = "ok " if file["ok"] else "BAD"
            print(
                f"{mark} {file['path']}: {file['found_published']}/{file['published']} published, "
                f"{file['found_rejected']}/{file['rejected']} dead-lettered"
                + (f", {file['malformed']} values not in the job's format" if file["malformed"] else "")
            )
        for stalled in result["stalled_partitions"]:
            print(
                f"note: {stalled['topic']}-{stalled['partition']}: committed reading stops at offset "
                f"{stalled['stable_offset']} of {stalled['end_offset']} (a transaction is open there, or hanging: "
                "kafka-transactions.sh find-hanging)"
            )
        print("verified" if result["ok"] else "MISMATCH")
    return EXIT_OK if result["ok"] else EXIT_JOB_FAILED


def cmd_stack(args: argparse.Namespace, settings: Settings) -> int:
    from k2jobs.stack.control import Stack
    from k2jobs.stack.secrets import is_secure

    if getattr(args, "brokers", None) is not None and args.brokers <= 0:
        raise InputError("--brokers must be positive")
    secure = getattr(args, "secure", False)
    client_env: dict[str, str] = {}
    if secure or is_secure(settings.stack_dir):
        settings, client_env = _secure_settings(settings)
    stack = Stack(
        settings,
        workers=getattr(args, "workers", 2),
        brokers=getattr(args, "brokers", None),
        s3=getattr(args, "s3", False),
        watch=_watch_option(args, settings),
        secure=secure,
        client_env=client_env,
    )
    if args.action == "up":
        _check_settings(settings)
        status = stack.up()
    elif args.action == "down":
        stopped = stack.down()
        print("stopped: " + (", ".join(stopped) or "nothing"), file=sys.stderr)
        return EXIT_OK
    else:
        status = stack.status()
    if getattr(args, "json", False):
        _print_json(status)
    else:
        for name, value in status.items():
            print(f"{name}: {value}")
    return EXIT_OK


def _secure_settings(settings: Settings) -> tuple[Settings, dict[str, str]]:
    """A secure stack's client settings (stack.secrets.client_env), and this process's Settings with them: the
    services it starts get them in their environment; this process's own environment is left as it is."""
    import os
    from urllib.parse import urlsplit

    from k2jobs.stack.secrets import client_env, ensure_material

    redis = urlsplit(settings.redis_url)
    env = client_env(
        ensure_material(settings.stack_dir), redis.hostname or "127.0.0.1", redis.port or 6379, settings.kafka_bootstrap
    )
    env["K2_SCHEMA_REGISTRY_URL"] = settings.schema_registry_url
    return load_settings({**os.environ, **env}), env


def _watch_option(args: argparse.Namespace, settings: Settings) -> tuple[str, float] | None:
    """`stack up --watch DIR [--watch-every S]`: DIR under the data root; `--watch ''` stops watching."""
    directory = getattr(args, "watch", None)
    if directory is None:
        return None
    if not directory:
        return "", 0.0
    if is_object_url(directory):
        return directory.rstrip("/"), args.watch_every
    path = (settings.data_root / directory).resolve()
    if not path.is_dir() or not path.is_relative_to(settings.data_root):
        raise InputError(f"--watch {directory}: not a directory under the data root {settings.data_root}")
    return path.relative_to(settings.data_root).as_posix() or ".", args.watch_every


def _timeout_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help=f"with --wait: stop waiting after S seconds, exit {EXIT_WAIT_TIMEOUT} (the job keeps running)",
    )


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Check Redis, Kafka and the data root, then become a Celery worker (exec: signals reach Celery itself)."""
    import os

    from k2jobs.kafka.preflight import check_kafka
    from k2jobs.worker.command import worker_command, worker_environment

    if args.concurrency <= 0:
        raise InputError("--concurrency must be positive")
    if not settings.data_root.is_dir():
        raise InputError(f"the data root {settings.data_root} (K2_DATA_ROOT) is not a directory")
    _ledger(settings)
    check_kafka(settings)
    command = worker_command(args.concurrency, args.name or f"k2jobs-{os.getpid()}@%h")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, worker_environment(settings))
    return EXIT_OK  # not reached


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m k2jobs", description="Bulk-load market-data CSV into Kafka.")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    submit = sub.add_parser("submit", help="load a directory of trades/ and quotes/ CSV files")
    submit.add_argument("directory")
    submit.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait for the report (default) or return the job id at once",
    )
    submit.add_argument("--json", action="store_true", help="print only JSON on stdout")
    submit.add_argument(
        "--chunk-rows",
        type=int,
        default=None,
        help="lines per chunk (default 200000, or K2_CHUNK_ROWS); one task loads chunks up to K2_TASK_ROWS rows",
    )
    submit.add_argument("--skip-unknown", action="store_true", help="skip files and folders it cannot load")
    submit.add_argument(
        "--unordered",
        action="store_true",
        help="load every chunk in parallel: faster for one big file, but a key's messages are not in file order",
    )
    submit.add_argument(
        "--again", action="store_true", help="load files whose content a succeeded job already published"
    )
    _timeout_option(submit)
    submit.add_argument(
        "--format",
        choices=VALUE_FORMATS,
        default=None,
        help="message values: json, or avro (TradeV2/QuoteV2 through the schema registry); default K2_FORMAT or json",
    )
    submit.set_defaults(func=cmd_submit)

    for name, func, text in (
        ("status", cmd_status, "where a job stands"),
        ("resume", cmd_resume, "re-enqueue a job's chunks that are not committed"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("job_id")
        p.add_argument("--wait", action=argparse.BooleanOptionalAction, default=(name == "resume"))
        p.add_argument("--json", action="store_true")
        _timeout_option(p)
        p.set_defaults(func=func)

    watch = sub.add_parser("watch", help="load new files and appended lines as they arrive, until stopped")
    watch.add_argument("directory")
    watch.add_argument("--every", type=float, default=10.0, help="seconds between scans (default 10)")
    watch.add_argument("--json", action="store_true", help="one JSON object per line")
    watch.add_argument("--chunk-rows", type=int, default=None, help="lines per chunk (default K2_CHUNK_ROWS)")
    watch.add_argument("--skip-unknown", action="store_true", help="skip files and folders it cannot load")
    watch.add_argument("--format", choices=VALUE_FORMATS, default=None, help="json or avro (default K2_FORMAT)")
    watch.set_defaults(func=cmd_watch)

    jobs = sub.add_parser("jobs", help="recent jobs with status and totals")
    jobs.add_argument("--limit", type=int, default=20)
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(func=cmd_jobs)

    verify = sub.add_parser("verify", help="read a job's messages back from Kafka and compare with its report")
    verify.add_argument("job_id")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=cmd_verify)

    stack = sub.add_parser("stack", help="the local Redis, Kafka, workers and Flower")
    stack_sub = stack.add_subparsers(dest="action", required=True)
    up = stack_sub.add_parser("up", help="start what is not running")
    up.add_argument("--workers", type=int, default=2)
    up.add_argument("--brokers", type=int, default=None, help="Kafka brokers (default: as last time, else 1)")
    up.add_argument(
        "--s3", action="store_true", help="also a local S3-compatible server (VersityGW); remembered by the stack"
    )
    up.add_argument(
        "--watch",
        default=None,
        metavar="DIR",
        help="also Celery beat, scanning DIR for new files and appended lines (remembered; --watch '' stops it)",
    )
    up.add_argument("--watch-every", type=float, default=10.0, help="seconds between scheduled scans (default 10)")
    up.add_argument(
        "--secure",
        action="store_true",
        help="TLS, passwords and ACLs on Kafka, Redis and Flower; clients' settings in <stack>/client.env (remembered)",
    )
    up.add_argument("--json", action="store_true")
    stack_sub.add_parser("down", help="stop what the stack started")
    st = stack_sub.add_parser("status", help="pids of the stack's processes")
    st.add_argument("--json", action="store_true")
    stack.set_defaults(func=cmd_stack)

    worker = sub.add_parser("worker", help="run one worker in the foreground, configured from the environment")
    worker.add_argument("--concurrency", type=int, default=1, help="chunks loaded at once (worker processes)")
    worker.add_argument("--name", default=None, help="Celery node name (default k2jobs-<pid>@<host>)")
    worker.set_defaults(func=cmd_worker)
    return parser


ERROR_EXITS: list[tuple[type[K2Error], int]] = [
    (InputError, EXIT_REFUSED),
    (JobNotFound, EXIT_REFUSED),
    (StoredDataError, EXIT_REFUSED),
    (RedisUnavailable, EXIT_REDIS_UNAVAILABLE),
    (KafkaUnavailable, EXIT_KAFKA_UNAVAILABLE),
    (StackError, EXIT_STACK_FAILED),
    (WaitTimeout, EXIT_WAIT_TIMEOUT),
    (RegistryUnavailable, EXIT_REGISTRY_UNAVAILABLE),
    (StorageUnavailable, EXIT_STORAGE_UNAVAILABLE),
]


def main(argv: list[str] | None = None) -> int:
    """Run one command; only here does k2jobs print errors and choose exit codes."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace, Settings], int] = args.func
    try:
        return func(args, load_settings())
    except K2Error as exc:
        print(f"k2jobs: {exc}", file=sys.stderr)
        return next((code for kind, code in ERROR_EXITS if isinstance(exc, kind)), EXIT_JOB_FAILED)
    except KeyboardInterrupt:
        print("k2jobs: interrupted (the job keeps running; see `status`)", file=sys.stderr)
        return EXIT_INTERRUPTED
