"""Whether the compiled parser may queue messages on confluent-kafka's producers directly: binding the compiled
send to the librdkafka this process loaded, and verifying, once per process and before its first compiled send,
that a Producer holds its librdkafka handle where the compiled send reads it."""

from __future__ import annotations

import logging
import threading

import confluent_kafka

try:
    from k2jobs.rows import _fastrows
except ImportError:  # installed without a C compiler: every message goes through confluent-kafka's produce()
    _fastrows = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# Where the compiled send reads a Producer's rd_kafka_t *: confluent-kafka's Handle struct starts
# `PyObject_HEAD rd_kafka_t *rk;` and cimpl.Producer is a Handle (tp_basicsize sizeof(Handle)) in every release
# from 2.4.0 to 2.16.2 (src/confluent_kafka/src/confluent_kafka.h and Producer.c), hence pyproject's <2.17.
HANDLE_OFFSET: int = _fastrows.HANDLE_OFFSET if _fastrows is not None else 0
# The child only reads memory and answers at once; generous, as a spurious timeout costs the process its compiled send.
VERIFY_TIMEOUT_S = 10.0
RK_NAME_BYTES = 128  # librdkafka's rk_name[128]: a longer name is cut to 127 bytes

_verdict: bool | None = None  # None until this process checked; a forked child inherits its parent's layout
_verdict_lock = threading.Lock()


def _bind_compiled_send() -> bool:
    """Whether _fastrows.send can queue on confluent-kafka's producers: the C extension is built and the one
    librdkafka this process loaded (for confluent-kafka) is found in /proc/self/maps."""
    if _fastrows is None:
        return False
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/librdkafka" in line}
    except OSError:  # not Linux
        return False
    return len(paths) == 1 and _fastrows.bind(paths.pop())


COMPILED_SEND = _bind_compiled_send()


def compiled_send_on(producer: object, client_id: str, enabled: bool = True) -> bool:
    """Whether the compiled send may queue on `producer`, a confluent_kafka.Producer created with `client_id`.

    The first call of a process verifies the Producer layout on `producer` (layout_mismatch); the verdict holds
    for every later producer, as the layout is the loaded confluent-kafka's. A mismatch, or a check that fails in
    any way, logs one warning and leaves every producer of the process on confluent-kafka's produce()."""
    global _verdict
    if not (COMPILED_SEND and enabled):  # enabled: Settings.compiled_send (K2_COMPILED_SEND=0 turns it off)
        return False
    with _verdict_lock:
        if _verdict is None:
            reason = layout_mismatch(producer, client_id)
            _verdict = reason is None
            if reason is not None:
                log.warning(
                    "compiled send off in this process, every message goes through confluent-kafka's produce(): "
                    "confluent-kafka %s does not hold its librdkafka handle where k2jobs reads it (%s)",
                    confluent_kafka.version()[0],
                    reason,
                )
        return _verdict


def layout_mismatch(producer: object, client_id: str) -> str | None:
    """Why the compiled send must not read `producer`'s handle, or None: the pointer at HANDLE_OFFSET is a
    librdkafka handle named as librdkafka names this producer (`client.id#producer-N`)."""
    # In a forked child: nothing readable here without dereferencing the unverified pointer proves it is a
    # handle, and a child that dies of it is only a verdict (_fastrows.c: verify_handle).
    try:
        name = _fastrows.verify_handle(producer, HANDLE_OFFSET, VERIFY_TIMEOUT_S)
    except Exception as exc:  # any failure of the check is a mismatch
        return str(exc)
    if not _is_producer_name(name, client_id):
        return f"the pointer there names {name!r}, not {client_id}#producer-<n>"
    return None


def _is_producer_name(name: bytes, client_id: str) -> bool:
    """Whether `name` is librdkafka's name of a producer created with `client_id`."""
    prefix = f"{client_id}#producer-".encode()
    if name.startswith(prefix) and name[len(prefix) :].isdigit():
        return True
    return len(name) == RK_NAME_BYTES - 1 and prefix.startswith(name)  # cut inside a long client.id
