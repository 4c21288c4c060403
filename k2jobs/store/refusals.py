"""Why Redis turned k2jobs away: its authentication and TLS failures, in words that say what to check."""

from __future__ import annotations

import ssl

import redis


def redis_failure(exc: Exception) -> str:
    """What a Redis error says to fix: credentials, TLS, or only that Redis did not answer."""
    text = str(exc)
    refused = ("NOAUTH", "WRONGPASS", "invalid username-password", "must be called with the client")
    if isinstance(exc, redis.AuthenticationError | redis.AuthenticationWrongNumberOfArgsError) or any(
        words in text for words in refused
    ):
        return f"Redis refused the credentials (authentication failed; check K2_REDIS_URL's user and password): {text}"
    if isinstance(exc.__context__, ssl.SSLError) or "SSL" in text or "certificate" in text:
        return f"Redis TLS failed (check rediss:// and ssl_ca_certs in K2_REDIS_URL): {text}"
    if isinstance(exc, redis.ConnectionError) and "reset by peer" in text:
        return f"Redis closed the connection (a TLS-only server needs rediss:// in K2_REDIS_URL): {text}"
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return f"Redis refused a command to this user (its ACL): {text}"
    return f"Redis did not answer: {text}"
