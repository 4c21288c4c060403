"""Grouping a job's chunks into Celery tasks: small files' chunks share one, big files' get one each; pure."""

from __future__ import annotations

from k2jobs.plan.model import ChunkPlan, FilePlan


def group_into_tasks(files: list[FilePlan], chunks: list[ChunkPlan], task_rows: int) -> dict[int, list[int]]:
    """Which chunks one task loads together, in one Kafka transaction, up to `task_rows` rows a task.

    A key (kind and symbol) with fewer rows than that goes whole into a task shared with other small keys,
    its files in path order (the real layout: thousands of small per-company files). A bigger key's chunks
    go, in order, into tasks of consecutive chunks of that key alone, which chain like chunks. Either way a
    key's messages keep file and line order. A task is named by its first chunk; a task of one chunk is
    left out of the map (a chunk in no task of several is a task of its own).
    """
    keys: dict[tuple[str, str], list[int]] = {}
    for file in sorted(files, key=lambda f: f.path):
        keys.setdefault((file.kind, file.symbol), []).extend(file.chunks)
    key_rows = {key: sum(chunks[i].rows for i in indexes) for key, indexes in keys.items()}
    shares = {k: key_rows[k] < task_rows and not any(chunks[i].damaged for i in keys[k]) for k in keys}
    # As few shared tasks as task_rows allows, of about equal rows: 360,000 rows of small files with task_rows
    # 200,000 make two tasks of ~180,000, not 200,000 and 160,000 (two workers finish together).
    small_rows = sum(key_rows[k] for k in keys if shares[k])
    even = -(-small_rows // max(1, -(-small_rows // task_rows)))
    tasks: list[list[int]] = []
    shared: list[int] = []
    shared_rows = 0
    for key, indexes in keys.items():
        rows = key_rows[key]
        if shares[key]:
            if shared and (shared_rows + rows > task_rows or shared_rows >= even):
                tasks.append(shared)
                shared, shared_rows = [], 0
            shared.extend(indexes)
            shared_rows += rows
            continue
        own: list[int] = []
        own_rows = 0
        for index in indexes:
            if own and (own_rows + chunks[index].rows > task_rows or chunks[index].damaged or chunks[own[-1]].damaged):
                tasks.append(own)
                own, own_rows = [], 0
            own.append(index)
            own_rows += chunks[index].rows
        tasks.append(own)
    tasks.append(shared)
    return {task[0]: task for task in tasks if len(task) > 1}
