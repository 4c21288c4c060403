"""What every part of the ledger stands on: one Redis client, and the Redis server's epoch."""

from __future__ import annotations

from typing import Any

import orjson


class Records:
    """One Redis client, bytes replies (no decode_responses); each part of the Ledger is a Records."""

    redis: Any

    def epoch(self) -> str:
        """The Redis server's run id: it changes on every restart or failover, the only times Redis can lose
        writes it acknowledged (appendfsync everysec, an asynchronous replica)."""
        return str(self.redis.info("server")["run_id"])


def loads(raw: bytes | None) -> Any:
    return None if raw is None else orjson.loads(raw)
