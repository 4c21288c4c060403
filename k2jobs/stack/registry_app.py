"""Apicurio Registry from Maven Central: the app, cached once, and how to run it on one port with file storage."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from k2jobs.errors import StackError
from k2jobs.stack.processes import need_program

REGISTRY_VERSION = "3.0.9"  # the last 3.0.x; 3.3 needs Java 21
REGISTRY_ARTIFACT = f"io.apicurio:apicurio-registry-app:{REGISTRY_VERSION}:tar.gz:all"
REGISTRY_CACHE = Path.home() / ".cache" / "k2jobs" / f"apicurio-registry-{REGISTRY_VERSION}"
RUNNER = f"apicurio-registry-app-{REGISTRY_VERSION}-runner.jar"


def registry_app() -> Path:
    """The unpacked Quarkus app (runner jar and lib/), fetched from Maven Central once and cached."""
    if (REGISTRY_CACHE / RUNNER).exists():
        return REGISTRY_CACHE
    # Version 2.8 of the plugin: 3.x fails on a parent POM of this artifact that Maven Central does not serve.
    done = subprocess.run(
        [
            need_program("mvn"),
            "-q",
            "-B",
            "org.apache.maven.plugins:maven-dependency-plugin:2.8:get",
            "-Dtransitive=false",
            f"-Dartifact={REGISTRY_ARTIFACT}",
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise StackError(
            f"fetching Apicurio Registry {REGISTRY_VERSION} from Maven Central failed:\n{done.stdout[-2000:]}"
        )
    archive = (
        Path.home() / ".m2" / "repository" / "io" / "apicurio" / "apicurio-registry-app" / REGISTRY_VERSION
    ) / f"apicurio-registry-app-{REGISTRY_VERSION}-all.tar.gz"
    staging = REGISTRY_CACHE.with_name(f"{REGISTRY_CACHE.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(staging, filter="data")
    try:
        staging.rename(REGISTRY_CACHE)
    except OSError:  # another checkout unpacked it at the same time
        shutil.rmtree(staging, ignore_errors=True)
        if not (REGISTRY_CACHE / RUNNER).exists():
            raise
    return REGISTRY_CACHE


def registry_command(stack_dir: Path, host: str, port: int) -> list[str]:
    """The command that runs the registry on host:port, keeping its schemas in stack_dir/registry."""
    data = stack_dir / "registry"
    data.mkdir(parents=True, exist_ok=True)
    return [
        "java",
        "-Xmx256m",
        "-XX:+UseSerialGC",
        f"-Dquarkus.http.host={host}",
        f"-Dquarkus.http.port={port}",
        # On disk, so schemas and their ids outlive a restart (the default is in memory).
        f"-Dapicurio.datasource.url=jdbc:h2:file:{data / 'registry'}",
        # Subjects can be deleted, as in Confluent's registry (Apicurio 3 refuses it by default).
        "-Dapicurio.rest.deletion.artifact.enabled=true",
        "-Dapicurio.rest.deletion.artifact-version.enabled=true",
        "-jar",
        str(registry_app() / RUNNER),
    ]
