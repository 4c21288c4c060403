"""The schema registry, through Confluent's REST API: registering the platform's schemas, setting compatibility.

Three plain HTTP calls, made with the standard library: confluent-kafka's registry client takes 0.16 s to import
(httpx, authlib), which every Avro `submit` paid before its first chunk could start.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from k2jobs.config import Settings
from k2jobs.errors import RegistryUnavailable, SchemaIncompatible
from k2jobs.plan.model import Kind
from k2jobs.rows.avro import schema_text, subject

HTTP_CONFLICT = 409  # Confluent's API: the schema breaks the subject's compatibility rule
TIMEOUT_S = 5
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryRefused(Exception):
    """The registry answered a request with a client error (4xx): its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


def _unavailable(settings: Settings, reason: object) -> RegistryUnavailable:
    return RegistryUnavailable(f"the schema registry at {settings.schema_registry_url} did not answer: {reason}")


def _call(settings: Settings, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One request to the registry, its JSON answer. Transport errors, timeouts (TIMEOUT_S) and server errors
    raise RegistryUnavailable; any other error status raises RegistryRefused."""
    request = urllib.request.Request(
        settings.schema_registry_url.rstrip("/") + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": CONTENT_TYPE, "Accept": CONTENT_TYPE},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        message = _error_message(exc)
        if exc.code >= 500:
            raise _unavailable(settings, f"HTTP {exc.code}: {message}") from exc
        raise RegistryRefused(exc.code, message) from exc
    except (OSError, ValueError) as exc:  # URLError, refused connections, timeouts, an answer that is not JSON
        raise _unavailable(settings, getattr(exc, "reason", None) or exc) from exc


def _error_message(exc: urllib.error.HTTPError) -> str:
    """The `message` of Confluent's error body, or the body itself."""
    text = exc.read().decode("utf-8", "replace")
    try:
        return str(json.loads(text)["message"])
    except (ValueError, KeyError, TypeError):
        return text.strip() or str(exc.reason)


def register_schemas(settings: Settings) -> dict[str, int]:
    """Register TradeV2 / QuoteV2 under `<topic>-value`; their ids by kind. Refused if a subject holds an
    incompatible schema under its compatibility rule (the same schema again just returns its id)."""
    ids: dict[str, int] = {}
    for kind in Kind:
        name = subject(kind)
        try:
            answer = _call(settings, "POST", f"/subjects/{urllib.parse.quote(name, safe='')}/versions", {
                "schema": schema_text(kind)
            })  # fmt: skip
        except RegistryRefused as exc:
            if exc.status == HTTP_CONFLICT:
                raise SchemaIncompatible(
                    f"the schema registry refused the platform's schema for subject {name!r}: the subject holds a "
                    f"schema it is not compatible with ({exc.message})"
                ) from exc
            raise SchemaIncompatible(f"the schema registry refused subject {name!r}: {exc.message}") from exc
        ids[kind.value] = int(answer["id"])
    return ids


def set_backward_compatibility(settings: Settings) -> None:
    """The registry-wide default rule Confluent's registry has (Apicurio's own default is NONE)."""
    try:
        _call(settings, "PUT", "/config", {"compatibility": "BACKWARD"})
    except RegistryRefused as exc:
        raise _unavailable(settings, exc) from exc


def registry_ready(settings: Settings) -> bool:
    """True once the registry answers Confluent's config call."""
    try:
        _call(settings, "GET", "/config")
        return True
    except (RegistryUnavailable, RegistryRefused):
        return False
