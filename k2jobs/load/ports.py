"""What loading a chunk needs of the ledger, the commit markers and the Kafka transaction, as Protocols."""

from __future__ import annotations

from typing import Any, Protocol

from k2jobs.rows.batches import Headers


class ResultReader(Protocol):
    """Chunks' recorded results, read (the store's Ledger)."""

    def chunk_results(self, job_id: str, indexes: list[int]) -> list[dict[str, Any] | None]: ...


class ResultStore(ResultReader, Protocol):
    """Chunks' results, read and recorded (the store's Ledger)."""

    def record_results(self, job_id: str, results: list[dict[str, Any]]) -> None: ...


class ProgressSink(Protocol):
    """Where a running chunk's rows handled so far are written (the store's Ledger)."""

    def set_progress(self, job_id: str, index: int, rows_done: int) -> None: ...


class ChunkLedger(ResultStore, ProgressSink, Protocol):
    """The part of the ledger that loading a chunk uses: results and progress (the store's Ledger)."""


class CommitLookup(Protocol):
    """Answers "did this chunk commit?" from Kafka (the kafka layer's CommitMarkers)."""

    def find(self, key: bytes, start: int) -> dict[str, Any] | None: ...


class ChunkProducer(Protocol):
    """A chunk's Kafka transaction as loading uses it (the kafka layer's ChunkTransaction)."""

    @property
    def compiled(self) -> bool: ...

    def queue_rows(
        self, topic: str, rows: Any, key: bytes, data: bytes, pos: int, line_no: int, max_lines: int, ingestion: int
    ) -> tuple[int, int, int, bool]: ...

    def begin(self) -> None: ...

    def send(self, topic: str, key: bytes, value: bytes, headers: Headers, partition: int = -1) -> None: ...

    def send_batch(self, topic: str, key: bytes, values: list[bytes], headers: list[Headers]) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...
