"""Why Kafka turned k2jobs away: its authentication and TLS failures, in words that say what to check."""

from __future__ import annotations

import logging
from typing import Any

AUTH_HINT = "check K2_KAFKA_OPT_SASL_USERNAME and K2_KAFKA_OPT_SASL_PASSWORD"
TLS_HINT = "check K2_KAFKA_OPT_SECURITY_PROTOCOL and K2_KAFKA_OPT_SSL_CA_LOCATION"


class KafkaWatch(logging.Handler):
    """A Kafka client's error callback and logger: keeps what brokers said, prints nothing."""

    def __init__(self, protocol: str = "plaintext") -> None:
        super().__init__()
        self.protocol = protocol.lower()
        self.errors: list[Any] = []
        self.lines: list[str] = []
        self._logger = logging.Logger("k2jobs.kafka-client")  # not in logging's tree: nothing reaches stderr
        self._logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.lines) < 100:
            self.lines.append(record.getMessage())

    def error_cb(self, error: Any) -> None:
        if len(self.errors) < 100:
            self.errors.append(error)

    def config(self) -> dict[str, Any]:
        """What to add to the client's configuration (served by the client's poll and blocking calls)."""
        return {"error_cb": self.error_cb, "logger": self._logger}

    def refusal(self) -> str | None:
        """Authentication or TLS, as the brokers' answers show it; None when nothing says so."""
        from confluent_kafka import KafkaError

        for error in self.errors:
            text = error.str()
            if error.code() == KafkaError._AUTHENTICATION or "SASL authentication" in text:
                return f"authentication failed ({AUTH_HINT}): {text}"
            if error.code() == KafkaError._SSL or "SSL handshake failed" in text:
                return f"TLS failed ({TLS_HINT}): {text}"
        for line in self.lines:
            if "closed by peer" in line and "APIVERSION_QUERY" in line and "ssl" not in self.protocol:
                return (
                    "the broker closed the connection at its first request: it expects TLS "
                    f"(K2_KAFKA_OPT_SECURITY_PROTOCOL={self.protocol.upper()}; {TLS_HINT})"
                )
            if "SSL connection closed by peer" in line and "sasl" not in self.protocol:
                return (
                    "the broker closed the connection after TLS: it expects SASL authentication "
                    f"(K2_KAFKA_OPT_SECURITY_PROTOCOL={self.protocol.upper()}; {AUTH_HINT})"
                )
        return None


def watched_config(conf: dict[str, Any]) -> tuple[dict[str, Any], KafkaWatch]:
    """`conf` with a KafkaWatch attached (replacing log_level=0, which only silenced the same log)."""
    watch = KafkaWatch(str(conf.get("security.protocol", "plaintext")))
    conf = {name: value for name, value in conf.items() if name != "log_level"}
    return {**conf, **watch.config()}, watch
