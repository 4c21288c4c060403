"""VersityGW, a real S3-compatible server (Apache-2.0), for the local stack: built once from the Go module proxy,
cached, and run on one port serving a directory (a file at DIR/bucket/key is the object `key` of `bucket`)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

from k2jobs.errors import StackError

S3_VERSION = "1.8.0"
S3_MODULE = f"github.com/versity/versitygw/cmd/versitygw@v{S3_VERSION}"
S3_CACHE = Path.home() / ".cache" / "k2jobs" / f"versitygw-{S3_VERSION}"
REGION = "us-east-1"


def s3_binary() -> Path:
    """The versitygw binary, built with `go install` once (it takes a while) and cached."""
    binary = S3_CACHE / "versitygw"
    if binary.exists():
        return binary
    S3_CACHE.mkdir(parents=True, exist_ok=True)
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise StackError(f"Go is needed once, to build the local S3 server ({S3_MODULE}): install Go 1.22 or newer")
    done = subprocess.run(
        [go, "install", S3_MODULE],
        capture_output=True,
        text=True,
        env={**os.environ, "GOBIN": str(S3_CACHE), "CGO_ENABLED": "0"},
        timeout=1800,
    )
    if done.returncode != 0 or not binary.exists():
        raise StackError(f"building VersityGW {S3_VERSION} (go install {S3_MODULE}) failed:\n{done.stderr[-2000:]}")
    return binary


def s3_credentials(stack_dir: Path) -> tuple[str, str]:
    """The stack's S3 root access key and secret: made once per stack folder, kept in a 0600 file."""
    path = stack_dir / "s3-credentials"
    if not path.exists():
        stack_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"k2jobs{secrets.token_hex(6)}\n{secrets.token_urlsafe(30)}\n")
    access, secret = path.read_text().split()
    return access, secret


def s3_client_env(stack_dir: Path, port: int) -> dict[str, str]:
    """The standard AWS settings a client of the stack's S3 server needs (its root user)."""
    access, secret = s3_credentials(stack_dir)
    return {
        "AWS_ACCESS_KEY_ID": access,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_REGION": REGION,
    }


def write_client_env(stack_dir: Path, port: int) -> Path:
    """`<stack>/s3.env` (mode 0600): KEY=VALUE lines to source before `submit s3://...` or a worker elsewhere."""
    path = stack_dir / "s3.env"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.writelines(f"{name}={value}\n" for name, value in s3_client_env(stack_dir, port).items())
    return path


def s3_command(port: int, data: Path) -> list[str]:
    """versitygw serving `data` on 127.0.0.1:port; its root key comes from the environment (never argv)."""
    data.mkdir(parents=True, exist_ok=True)
    return [str(s3_binary()), "--port", f"127.0.0.1:{port}", "posix", str(data)]


def s3_server_env(stack_dir: Path) -> dict[str, str]:
    access, secret = s3_credentials(stack_dir)
    return {**os.environ, "ROOT_ACCESS_KEY": access, "ROOT_SECRET_KEY": secret}


def stack_s3_client(env: dict[str, str], bucket: str) -> Any:
    """A boto3 client of the server `env` names (s3_client_env), with `bucket` created if it is not there."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_REGION"],
    )
    if bucket not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=bucket)
    return client


def upload_directory(env: dict[str, str], directory: Path, bucket: str, prefix: str) -> int:
    """Put every file under `directory` into s3://bucket/prefix/ (creating the bucket); the objects written."""
    client = stack_s3_client(env, bucket)
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    for path in files:
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(directory).as_posix()}")
    return len(files)


def demo(directory: str) -> None:
    """`K2_SOURCE=s3 make demo`: put DIR into the stack's S3 server and submit it from there, with the stack's
    S3 settings in the environment (as `source <stack>/s3.env` would)."""
    import sys

    from k2jobs.config import load_settings

    settings = load_settings()
    env = s3_client_env(settings.stack_dir, settings.s3_port)
    source = Path(directory)
    count = upload_directory(env, source, "k2jobs-demo", source.name)
    url = f"s3://k2jobs-demo/{source.name}"
    print(f"uploaded {count} files to {url} (the stack's S3 server, {env['AWS_ENDPOINT_URL']})", flush=True)
    command = [sys.executable, "-m", "k2jobs", "submit", url, "--again"]
    os.execve(command[0], command, {**os.environ, **env})


if __name__ == "__main__":
    import sys

    demo(sys.argv[1])
