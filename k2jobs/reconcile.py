"""Turning a job's plan and its chunks' results into the job report; pure."""

from __future__ import annotations

from typing import Any

from .ledger import COMMITTED
from .planning import JobPlan

MAX_FILE_REASONS = 5
SUCCEEDED, FAILED = "succeeded", "failed"


def reconcile_job(job_id: str, plan: JobPlan, results: dict[int, dict[str, Any]], duration_s: float) -> dict[str, Any]:
    """Compare every chunk's planned rows with what was published and rejected."""
    files: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for file in plan.files:
        published = rejected = 0
        reasons: list[str] = []
        for index in file.chunks:
            chunk = plan.chunks[index]
            result = results.get(index)
            if result is None:
                failures.append({"path": file.path, "chunk": index, "error": "chunk never finished"})
                continue
            if result["status"] != COMMITTED:
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
            }
        )
    totals = {
        "rows": plan.rows,
        "published": sum(f["published"] for f in files),
        "rejected": sum(f["rejected"] for f in files),
    }
    return {
        "job_id": job_id,
        "status": FAILED if failures else SUCCEEDED,
        "totals": totals,
        "files": files,
        "failures": failures,
        "duration_s": round(duration_s, 3),
    }
