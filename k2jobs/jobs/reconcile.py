"""Turning a job's plan and its chunks' results into the job report; pure."""

from __future__ import annotations

from typing import Any

from k2jobs.plan.model import JobPlan
from k2jobs.plan.status import ChunkStatus, JobStatus

MAX_FILE_REASONS = 5


def blocked_by(plan: JobPlan, results: dict[int, dict[str, Any]]) -> dict[int, int]:
    """Chunk -> the failed or unfinished chunk before it in its key's order (ordered jobs)."""
    blocked: dict[int, int] = {}
    for group in plan.key_chunks():
        first_bad = None
        for index in group:
            if first_bad is not None:
                blocked[index] = first_bad
            elif results.get(index, {}).get("status") != ChunkStatus.COMMITTED:
                first_bad = index
    return blocked


def chunks_to_come(plan: JobPlan, results: dict[int, dict[str, Any]], ordered: bool = True) -> list[int]:
    """Chunks without a result that should still get one: in ordered jobs, those no failed chunk holds back."""
    blocked = blocked_by(plan, results) if ordered else {}
    return [c.index for c in plan.chunks if c.index not in results and c.index not in blocked]


def never_finished(plan: JobPlan, index: int, blocked: dict[int, int]) -> str:
    """Why a chunk without a result has none."""
    if index not in blocked:
        return "chunk never finished"
    before = plan.chunks[blocked[index]]
    return f"not loaded, to keep the key's order: chunk {before.index} ({before.path}) before it did not commit"


def reconcile_job(
    job_id: str, plan: JobPlan, results: dict[int, dict[str, Any]], duration_s: float, ordered: bool = True
) -> dict[str, Any]:
    """Compare every chunk's planned rows with what was published and rejected."""
    files: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    blocked = blocked_by(plan, results) if ordered else {}
    for file in plan.files:
        published = rejected = 0
        reasons: list[str] = []
        for index in file.chunks:
            chunk = plan.chunks[index]
            result = results.get(index)
            if result is None:
                failures.append({"path": file.path, "chunk": index, "error": never_finished(plan, index, blocked)})
                continue
            if result["status"] != ChunkStatus.COMMITTED:
                failures.append({"path": file.path, "chunk": index, "error": result.get("error") or "failed"})
                continue
            if result["published"] + result["rejected"] != chunk.rows:
                failures.append(
                    {
                        "path": file.path,
                        "chunk": index,
                        "error": f"planned {chunk.rows} rows, published {result['published']} "
                        f"and rejected {result['rejected']}",
                    }
                )
            published += result["published"]
            rejected += result["rejected"]
            reasons.extend(result.get("reasons", [])[: MAX_FILE_REASONS - len(reasons)])
        if rejected:
            failures.append(
                {"path": file.path, "chunk": None, "error": f"{rejected} rows rejected", "reasons": reasons}
            )
        files.append(
            {
                "path": file.path,
                "kind": file.kind,
                "rows": file.rows,
                "published": published,
                "rejected": rejected,
                "chunks": len(file.chunks),
                "reasons": reasons,
                **({"out_of_order": file.out_of_order} if file.out_of_order else {}),
            }
        )
    totals = {
        "rows": plan.rows,
        "published": sum(f["published"] for f in files),
        "rejected": sum(f["rejected"] for f in files),
    }
    return {
        "job_id": job_id,
        "status": JobStatus.FAILED if failures else JobStatus.SUCCEEDED,
        "totals": totals,
        "files": files,
        "failures": failures,
        "warnings": [f["out_of_order"] for f in files if "out_of_order" in f],
        "duration_s": round(duration_s, 3),
    }
