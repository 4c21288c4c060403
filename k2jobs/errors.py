"""The k2jobs error tree: one base class, specific subclasses that say what to fix."""

from __future__ import annotations


class K2Error(Exception):
    """Base class of every error k2jobs raises on purpose."""


class InputError(K2Error):
    """The input cannot be loaded as given; nothing was enqueued."""


class SettingsError(InputError):
    """A setting (K2_* environment variable) is invalid; the message names it."""


class AlreadyLoaded(InputError):
    """The input's content was published by a succeeded job already (and --again was not given)."""


class TopicRefused(InputError):
    """An existing topic k2jobs needs has settings that would break its guarantees."""


class UnsafePathError(InputError):
    """A path resolves outside the data root."""


class ServiceUnavailable(K2Error):
    """A service k2jobs needs did not answer."""

    service = "service"


class RedisUnavailable(ServiceUnavailable):
    """Redis could not be reached or refused the command."""

    service = "redis"


class KafkaUnavailable(ServiceUnavailable):
    """The Kafka cluster could not be reached in time."""

    service = "kafka"


class RegistryUnavailable(ServiceUnavailable):
    """The schema registry could not be reached or answered with a server error."""

    service = "schema registry"


class StorageUnavailable(ServiceUnavailable):
    """The object store (s3://) could not be reached or refused the credentials."""

    service = "object storage"


class SchemaIncompatible(InputError):
    """The registry refused the platform's schema for a subject (a compatibility rule)."""


class ChunkChanged(K2Error):
    """A chunk's bytes differ from what was planned (the file changed after submit)."""


class PublishError(K2Error):
    """Kafka did not accept a chunk's transaction; the chunk can be retried."""


class CommitUncertain(PublishError):
    """The chunk's attempt reached its commit, then something failed: whether it committed is decided by
    the next attempt, from Kafka; such a chunk is never recorded failed."""


class WaitTimeout(K2Error):
    """The wait for a job's report ended before the job did; the job keeps running."""


class StoredDataError(K2Error):
    """Data in Redis that this version of k2jobs does not read (stored by another version)."""


class JobNotFound(K2Error):
    """No job with that id is known to Redis."""


class StackError(K2Error):
    """The local stack could not be started or inspected."""
