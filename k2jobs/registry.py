"""The schema registry, through Confluent's API: registering the platform's schemas, setting compatibility."""

from __future__ import annotations

from confluent_kafka.schema_registry import ConfigCompatibilityLevel, Schema, SchemaRegistryClient, ServerConfig
from confluent_kafka.schema_registry.error import SchemaRegistryError

from .avro import schema_text, subject
from .config import Settings
from .errors import RegistryUnavailable, SchemaIncompatible
from .records import Kind

HTTP_CONFLICT = 409  # Confluent's API: the schema breaks the subject's compatibility rule
TIMEOUT_S = 5


def registry_client(settings: Settings) -> SchemaRegistryClient:
    """A client that gives up within seconds, so an unreachable registry is reported, not waited on."""
    return SchemaRegistryClient({"url": settings.schema_registry_url, "timeout": TIMEOUT_S, "max.retries": 1})


def _unavailable(settings: Settings, exc: Exception) -> RegistryUnavailable:
    return RegistryUnavailable(f"the schema registry at {settings.schema_registry_url} did not answer: {exc}")


def register_schemas(settings: Settings) -> dict[str, int]:
    """Register TradeV2 / QuoteV2 under `<topic>-value`; their ids by kind. Refused if a subject holds an
    incompatible schema under its compatibility rule (the same schema again just returns its id)."""
    client = registry_client(settings)
    ids: dict[str, int] = {}
    for kind in Kind:
        name = subject(kind)
        try:
            ids[kind.value] = client.register_schema(name, Schema(schema_text(kind), "AVRO"))
        except SchemaRegistryError as exc:
            if exc.http_status_code == HTTP_CONFLICT:
                raise SchemaIncompatible(
                    f"the schema registry refused the platform's schema for subject {name!r}: the subject holds a "
                    f"schema it is not compatible with ({exc.error_message})"
                ) from exc
            if exc.http_status_code >= 500 or exc.http_status_code < 0:
                raise _unavailable(settings, exc) from exc
            raise SchemaIncompatible(f"the schema registry refused subject {name!r}: {exc.error_message}") from exc
        except Exception as exc:  # noqa: BLE001 - the client's transport errors (httpx) share no public base class
            raise _unavailable(settings, exc) from exc
    return ids


def set_backward_compatibility(settings: Settings) -> None:
    """The registry-wide default rule Confluent's registry has (Apicurio's own default is NONE)."""
    try:
        registry_client(settings).set_config(config=ServerConfig(compatibility=ConfigCompatibilityLevel.BACKWARD))
    except Exception as exc:  # noqa: BLE001 - as above
        raise _unavailable(settings, exc) from exc


def registry_ready(settings: Settings) -> bool:
    """True once the registry answers Confluent's config call."""
    try:
        registry_client(settings).get_config()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not yet"
        return False
