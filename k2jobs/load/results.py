"""What a chunk's attempt reports: its result dict, a task's results together, and failing all of a task's chunks."""

from __future__ import annotations

from typing import Any

from k2jobs.load.ports import ResultStore
from k2jobs.plan.model import ChunkPlan
from k2jobs.plan.status import ChunkStatus


def chunk_result(chunk: ChunkPlan, status: str, counts: dict[str, Any], error: str | None = None) -> dict[str, Any]:
    """The deterministic result of a chunk: the same value however often it runs."""
    return {
        "chunk": chunk.index,
        "path": chunk.path,
        "status": status,
        "rows": chunk.rows,
        "published": counts.get("published", 0),
        "rejected": counts.get("rejected", 0),
        "reasons": counts.get("reasons", []),
        "error": error,
    }


def task_result(results: list[dict[str, Any]]) -> dict[str, Any]:
    """What the task of one chunk, or of several chunks, returns: the chunk's result, or the task's sums."""
    if len(results) == 1:
        return results[0]
    failed = [r for r in results if r["status"] != ChunkStatus.COMMITTED]
    return {
        "chunk": results[0]["chunk"],
        "path": f"{len(results)} chunks of {len({r['path'] for r in results})} files",
        "status": ChunkStatus.FAILED if failed else ChunkStatus.COMMITTED,
        "rows": sum(r["rows"] for r in results),
        "published": sum(r["published"] for r in results),
        "rejected": sum(r["rejected"] for r in results),
        "reasons": [reason for r in results for reason in r.get("reasons", [])][:5],
        "error": "; ".join(f"{r['path']}: {r['error']}" for r in failed[:3]) or None,
    }


def fail_all(ledger: ResultStore, job_id: str, chunks: list[ChunkPlan], reason: str | dict[int, str]) -> dict[str, Any]:
    """Record the task's chunks failed (a chunk with a result keeps it), in one round trip each way; the
    task's result from what they have now. `reason`: one for all, or one per chunk index."""
    why = reason if isinstance(reason, dict) else {c.index: reason for c in chunks}
    ledger.record_results(job_id, [chunk_result(c, ChunkStatus.FAILED, {}, why[c.index]) for c in chunks])
    stored = ledger.chunk_results(job_id, [c.index for c in chunks])
    return task_result(
        [r or chunk_result(c, ChunkStatus.FAILED, {}, why[c.index]) for c, r in zip(chunks, stored, strict=True)]
    )


def committed_results(chunks: list[ChunkPlan], marker: dict[str, Any]) -> list[dict[str, Any]]:
    """The chunks' results from the counts their commit marker holds (one chunk's counts, or a task's)."""
    if "chunks" not in marker:
        return [chunk_result(chunks[0], ChunkStatus.COMMITTED, marker)]
    return [chunk_result(c, ChunkStatus.COMMITTED, marker["chunks"][str(c.index)]) for c in chunks]
