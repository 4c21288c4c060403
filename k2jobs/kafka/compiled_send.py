"""Whether the compiled parser may queue messages on confluent-kafka's producers directly."""

from __future__ import annotations

import os

try:
    from k2jobs.rows import _fastrows
except ImportError:  # installed without a C compiler: every message goes through confluent-kafka's produce()
    _fastrows = None  # type: ignore[assignment]


def _bind_compiled_send() -> bool:
    """Whether _fastrows.send can queue on confluent-kafka's producers: the C extension is built and the one
    librdkafka this process loaded (for confluent-kafka) is found in /proc/self/maps."""
    if _fastrows is None or os.environ.get("K2_COMPILED_SEND") == "0":  # 0: confluent-kafka's produce() only
        return False
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/librdkafka" in line}
    except OSError:  # not Linux
        return False
    return len(paths) == 1 and _fastrows.bind(paths.pop())


COMPILED_SEND = _bind_compiled_send()
