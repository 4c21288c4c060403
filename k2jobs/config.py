"""One frozen Settings object, built once from the environment and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError

KAFKA_OPTION_PREFIX = "K2_KAFKA_OPT_"


@dataclass(frozen=True)
class Settings:
    """Everything k2jobs reads from its environment."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    kafka_bootstrap: str = "127.0.0.1:9092"
    stack_dir: Path = Path(".k2stack")
    data_root: Path = Path(".")
    flower_port: int = 5555
    partitions: int = 6
    # Replicas of the topics k2jobs creates; None: the smaller of 3 and the number of brokers.
    replication_factor: int | None = None
    chunk_rows: int = 200_000
    batch_rows: int = 1_000
    visibility_timeout_s: int = 120
    # Extra librdkafka properties (security.protocol, sasl.*, ssl.*), passed through as given.
    kafka_options: Mapping[str, str] = field(default_factory=dict)

    def kafka_config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka configuration for any client: bootstrap, security options, overrides."""
        conf: dict[str, Any] = {"bootstrap.servers": self.kafka_bootstrap}
        conf.update(self.kafka_options)
        conf.update(overrides)
        return conf


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InputError(f"{name}={raw!r} is not an integer") from None
    if value <= 0:
        raise InputError(f"{name}={raw!r} must be positive")
    return value


def kafka_options_from(env: Mapping[str, str]) -> dict[str, str]:
    """`K2_KAFKA_OPT_SASL_MECHANISM=PLAIN` becomes `sasl.mechanism=PLAIN`."""
    return {
        name[len(KAFKA_OPTION_PREFIX) :].lower().replace("_", "."): value
        for name, value in env.items()
        if name.startswith(KAFKA_OPTION_PREFIX)
    }


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment (or the mapping given)."""
    env = os.environ if env is None else env
    defaults = Settings()
    return Settings(
        redis_url=env.get("K2_REDIS_URL") or defaults.redis_url,
        kafka_bootstrap=env.get("K2_KAFKA_BOOTSTRAP") or defaults.kafka_bootstrap,
        stack_dir=Path(env.get("K2_STACK_DIR") or defaults.stack_dir).absolute(),
        data_root=Path(env.get("K2_DATA_ROOT") or os.getcwd()).resolve(),
        flower_port=_int(env, "K2_FLOWER_PORT", defaults.flower_port),
        partitions=_int(env, "K2_PARTITIONS", defaults.partitions),
        replication_factor=_int(env, "K2_REPLICATION_FACTOR", 0) or None,
        chunk_rows=_int(env, "K2_CHUNK_ROWS", defaults.chunk_rows),
        batch_rows=_int(env, "K2_BATCH_ROWS", defaults.batch_rows),
        visibility_timeout_s=_int(env, "K2_VISIBILITY_TIMEOUT", defaults.visibility_timeout_s),
        kafka_options=kafka_options_from(env),
    )
