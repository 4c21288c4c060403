"""`stack up --secure` (its own stack, started once for this module, and a three-broker one at the end): the sample
loaded and verified over SASL_SSL Kafka with ACLs, TLS Redis with an ACL user, Flower with basic auth; every
wrong or missing credential, an untrusted CA and a client without TLS refused within 30 s with the service's exit
code and a message naming authentication or TLS; no secret in logs, `ps`, reports or `stack status`; a worker
started from `client.env` alone; a Redis restart losing nothing to its ACLs.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .cluster import cluster_env, gone, run_k2, wait_until
from .conftest import SAMPLE, SLOT

ENV = {**cluster_env(SLOT, "secure", offset=20)}
ENV["K2_KAFKA_BOOTSTRAP"] = ENV["K2_KAFKA_BOOTSTRAP"].split(",")[0]
STACK = Path(ENV["K2_STACK_DIR"])
DATA = Path(ENV["K2_DATA_ROOT"])
EXIT_REDIS, EXIT_KAFKA = 3, 4
REFUSED_WITHIN_S = 30


def read_env(path: Path) -> dict[str, str]:
    """client.env as a shell would read it (`set -a; . client.env`)."""
    return dict(line.split("=", 1) for text in path.read_text().splitlines() for line in shlex.split(text))


def fresh_stack(env: dict[str, str], *args: str) -> dict[str, Any]:
    """A secure stack started from an empty folder (one a kept run left running is stopped first)."""
    if Path(env["K2_DATA_ROOT"]).exists():
        run_k2(env, "stack", "down")
    subprocess.run(["rm", "-rf", env["K2_STACK_DIR"]], check=True)
    data = Path(env["K2_DATA_ROOT"])
    data.mkdir(parents=True)
    subprocess.run(["cp", "-r", str(SAMPLE), str(data / "sample")], check=True)
    up = run_k2(env, "stack", "up", "--secure", *args, "--json")
    assert up.returncode == 0, up.stderr
    return dict(json.loads(up.stdout))


@pytest.fixture(scope="module")
def secure() -> Iterator[dict[str, str]]:
    """A secure single-broker stack with one worker; yields the environment of a client that sourced client.env."""
    status = fresh_stack(ENV, "--workers", "1")
    client = read_env(Path(status["client_env"]))
    yield {**ENV, **client}
    if not os.environ.get("K2_TEST_KEEP_STACK"):
        run_k2(ENV, "stack", "down")


def passwords() -> list[str]:
    return list(json.loads((STACK / "secure" / "passwords.json").read_text()).values())


def submit(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = run_k2(env, "submit", "sample", "--again", "--json", *args)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def acl_refusals() -> list[str]:
    """Commands, keys and channels Redis refused to its users (ACL LOG, read as the stack's admin); failed logins
    (reason "auth", which the refusal tests cause on purpose) left out."""
    import redis

    from k2jobs.stack.secrets import admin_redis_url, ensure_material

    material = ensure_material(STACK)
    client = redis.Redis.from_url(admin_redis_url(material, read_env(STACK / "client.env")["K2_REDIS_URL"]))
    log = client.acl_log()
    return [f"{entry['username']}: {entry['object']} ({entry['reason']})" for entry in log if entry["reason"] != "auth"]


def test_client_env_names_every_setting_and_only_its_owner_reads_it(secure) -> None:  # type: ignore[no-untyped-def]
    path = STACK / "client.env"
    assert path.stat().st_mode & 0o777 == 0o600
    client = read_env(path)
    assert client["K2_KAFKA_OPT_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert client["K2_KAFKA_OPT_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert client["K2_REDIS_URL"].startswith("rediss://k2jobs:")
    assert "ssl_cert_reqs=required" in client["K2_REDIS_URL"]
    assert Path(client["K2_KAFKA_OPT_SSL_CA_LOCATION"]).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert {"K2_KAFKA_OPT_SASL_USERNAME", "K2_KAFKA_OPT_SASL_PASSWORD", "K2_FLOWER_USER", "K2_FLOWER_PASSWORD"} <= set(
        client
    )
    for private in ("server.key", "ca.key", "server-keystore.pem", "passwords.json"):
        assert (STACK / "secure" / private).stat().st_mode & 0o077 == 0, private


def test_the_sample_loads_and_verifies_over_tls_with_acls(secure) -> None:  # type: ignore[no-untyped-def]
    for value_format in ("json", "avro"):
        report = submit(secure, "--format", value_format)
        assert report["status"] == "succeeded", report
        assert report["totals"]["published"] == 170_332
        check = run_k2(secure, "verify", report["job_id"], "--json")
        assert check.returncode == 0, check.stdout + check.stderr
        assert json.loads(check.stdout)["ok"]
    # Celery, kombu and k2jobs never needed more than the k2jobs user may do.
    assert [r for r in acl_refusals() if r.startswith("k2jobs")] == []


def refused_cases() -> list[tuple[str, dict[str, str | None], int, str]]:
    other_ca = str(STACK / "other-ca.pem")
    return [
        ("kafka wrong password", {"K2_KAFKA_OPT_SASL_PASSWORD": "wrong"}, EXIT_KAFKA, "authentication"),
        ("kafka no password", {"K2_KAFKA_OPT_SASL_PASSWORD": None}, EXIT_KAFKA, "authentication"),
        ("kafka wrong user", {"K2_KAFKA_OPT_SASL_USERNAME": "nobody"}, EXIT_KAFKA, "authentication"),
        ("kafka without TLS", {"K2_KAFKA_OPT_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}, EXIT_KAFKA, "TLS"),
        ("kafka plaintext", {"K2_KAFKA_OPT_SECURITY_PROTOCOL": "PLAINTEXT"}, EXIT_KAFKA, "TLS"),
        ("kafka TLS without SASL", {"K2_KAFKA_OPT_SECURITY_PROTOCOL": "SSL"}, EXIT_KAFKA, "authentication"),
        ("kafka untrusted CA", {"K2_KAFKA_OPT_SSL_CA_LOCATION": other_ca}, EXIT_KAFKA, "TLS"),
        ("redis wrong password", {"redis": "k2jobs:wrong@"}, EXIT_REDIS, "authentication"),
        ("redis no user", {"redis": ""}, EXIT_REDIS, "authentication"),
        ("redis untrusted CA", {"redis_ca": other_ca}, EXIT_REDIS, "TLS"),
        ("redis without TLS", {"redis_plain": ""}, EXIT_REDIS, "TLS"),
    ]


def broken(env: dict[str, str], change: dict[str, str | None]) -> dict[str, str]:
    """`env` with one credential or TLS setting broken."""
    env = dict(env)
    url = env["K2_REDIS_URL"]
    for name, value in change.items():
        if name == "redis":  # the user and password part of the URL
            env["K2_REDIS_URL"] = "rediss://" + (value or "") + url.split("@", 1)[1]
        elif name == "redis_ca":
            env["K2_REDIS_URL"] = url.replace(env["K2_KAFKA_OPT_SSL_CA_LOCATION"], value or "")
        elif name == "redis_plain":
            env["K2_REDIS_URL"] = "redis://" + url.split("://", 1)[1].split("?")[0]
        elif value is None:
            env.pop(name)
        else:
            env[name] = value
    return env


@pytest.mark.parametrize("case", refused_cases(), ids=lambda case: case[0])
def test_wrong_credentials_and_tls_end_every_command_quickly_naming_the_cause(secure, case) -> None:  # type: ignore[no-untyped-def]
    name, change, code, cause = case
    other_ca = STACK / "other-ca.pem"
    if not other_ca.exists():
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-noenc", "-days", "2", "-subj", "/CN=other"]
            + ["-keyout", str(STACK / "other-ca.key"), "-out", str(other_ca)],
            check=True,
            capture_output=True,
        )
    job = run_k2(secure, "jobs", "--json", "--limit", "1")
    job_id = json.loads(job.stdout)[0]["job_id"] if job.returncode == 0 and json.loads(job.stdout) else "none"
    env = {**broken(secure, change), "PATH": os.environ["PATH"]}
    # A plain env (not os.environ + env): a removed setting must stay removed.
    commands = [["submit", "sample", "--again"], ["verify", job_id], ["worker", "--name", "refused@%h"]]
    if code == EXIT_REDIS:
        commands.append(["status", job_id])
    for command in commands:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "k2jobs", *command],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=DATA,
        )
        took = time.monotonic() - started
        assert done.returncode == code, (name, command, done.returncode, done.stderr[-2000:])
        assert took < REFUSED_WITHIN_S, (name, command, took)
        assert cause in done.stderr, (name, command, done.stderr)
        for secret in passwords():
            assert secret not in done.stdout + done.stderr, (name, command)


def flower_get(path: str, auth: tuple[str, str] | None) -> Any:
    """GET from the secure stack's Flower over HTTPS, trusting only the stack's CA."""
    request = urllib.request.Request(f"https://127.0.0.1:{ENV['K2_FLOWER_PORT']}{path}")
    if auth:
        request.add_header("Authorization", "Basic " + b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    context = ssl.create_default_context(cafile=str(STACK / "secure" / "ca.pem"))
    return urllib.request.urlopen(request, timeout=10, context=context)


def flower(path: str, auth: tuple[str, str] | None) -> int:
    try:
        with flower_get(path, auth) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_flower_asks_for_its_password_over_https_on_loopback_only(secure) -> None:  # type: ignore[no-untyped-def]
    user, password = secure["K2_FLOWER_USER"], secure["K2_FLOWER_PASSWORD"]
    for path in ("/", "/api/workers", "/api/tasks", "/tasks"):
        assert flower(path, None) == 401, path
        assert flower(path, (user, "wrong")) == 401, path
        assert flower(path, (user, password)) == 200, path
    # Flower leaves these two open whatever its auth (mher/flower#1342): the stack binds Flower to loopback.
    assert flower("/healthcheck", None) == 200
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # HTTPS only: plain HTTP gets no answer
        urllib.request.urlopen(f"http://127.0.0.1:{ENV['K2_FLOWER_PORT']}/healthcheck", timeout=10)
    listening = Path("/proc/net/tcp").read_text().splitlines()[1:]
    port = f"{int(ENV['K2_FLOWER_PORT']):04X}"
    bound = {line.split()[1] for line in listening if line.split()[1].endswith(f":{port}") and line.split()[3] == "0A"}
    assert bound == {f"0100007F:{port}"}  # 127.0.0.1 only


def test_no_secret_in_logs_ps_reports_or_stack_status(secure) -> None:  # type: ignore[no-untyped-def]
    report = submit(secure)
    outputs = [
        json.dumps(report),
        run_k2(secure, "status", report["job_id"], "--json").stdout,
        run_k2(secure, "jobs", "--json").stdout,
        run_k2(secure, "stack", "status", "--json").stdout,
        run_k2(secure, "stack", "status").stdout,
        subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout,
    ]
    logs = {path: path.read_text(errors="replace") for path in (STACK / "logs").glob("*.log")}
    assert len(logs) >= 5  # redis, kafka, registry, worker, flower
    for secret in passwords():
        for text in outputs:
            assert secret not in text
        for path, text in logs.items():
            assert secret not in text, path
    assert "rediss://k2jobs:***@" in run_k2(secure, "stack", "status").stdout


def test_a_worker_on_another_host_needs_only_client_env(secure) -> None:  # type: ignore[no-untyped-def]
    """The stack's worker stopped; a worker started with nothing but client.env (and a data root) loads a job."""
    stack_worker = int((STACK / "worker-1.pid").read_text())
    os.killpg(stack_worker, signal.SIGTERM)
    wait_until(lambda: gone(stack_worker), 60, "the stack's worker to stop")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "K2_DATA_ROOT": str(DATA),
        **read_env(STACK / "client.env"),
    }
    remote = subprocess.Popen(
        [sys.executable, "-m", "k2jobs", "worker", "--name", "remote@%h"],
        env=env,
        cwd="/",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        report = submit(secure)
        assert report["status"] == "succeeded", report
        auth = (secure["K2_FLOWER_USER"], secure["K2_FLOWER_PASSWORD"])
        with flower_get("/api/tasks?limit=1000", auth) as response:
            tasks = json.load(response).values()
        workers = {task["worker"] for task in tasks if task.get("name") == "k2jobs.process_chunk" and task["worker"]}
        assert any(name.startswith("remote@") for name in workers), workers
    finally:
        os.killpg(remote.pid, signal.SIGTERM)
        remote.wait(60)
        assert run_k2(ENV, "stack", "up", "--workers", "1").returncode == 0
    assert [r for r in acl_refusals() if r.startswith("k2jobs")] == []


def test_redis_restarted_keeps_every_transaction_its_acl_users_wrote(secure) -> None:  # type: ignore[no-untyped-def]
    """Redis 7.0 replays the AOF's MULTI/EXEC as the default user: were that user's rights cut, a restart would
    drop every job's transactional writes silently (redis/redis#14541)."""
    report = submit(secure)
    assert [r for r in acl_refusals() if r.startswith("k2jobs")] == []  # ACL LOG does not outlive a restart
    pid = int((STACK / "redis.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: gone(pid), 60, "Redis to stop")
    assert run_k2(ENV, "stack", "up", "--workers", "1").returncode == 0
    status = run_k2(secure, "status", report["job_id"], "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "succeeded"
    assert "NOPERM" not in (STACK / "logs" / "redis.log").read_text()
    assert submit(secure)["status"] == "succeeded"  # the workers reconnected with their credentials
    assert [r for r in acl_refusals() if r.startswith("k2jobs")] == []


def test_three_secure_brokers_load_and_verify_the_sample(secure) -> None:  # type: ignore[no-untyped-def]
    env = cluster_env(SLOT, "secure3", offset=30)
    try:
        status = fresh_stack(env, "--brokers", "3", "--workers", "1")
        client = {**env, **read_env(Path(status["client_env"]))}
        assert client["K2_KAFKA_BOOTSTRAP"] == env["K2_KAFKA_BOOTSTRAP"]
        for path in Path(env["K2_STACK_DIR"]).glob("kafka-*/server.properties"):
            assert "PLAINTEXT" not in path.read_text().replace("SASL_PLAINTEXT", "")
        report = submit(client)
        assert report["status"] == "succeeded" and report["totals"]["published"] == 170_332, report
        check = run_k2(client, "verify", report["job_id"])
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        if not os.environ.get("K2_TEST_KEEP_STACK"):
            run_k2(env, "stack", "down")
