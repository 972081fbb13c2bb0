"""Reading a run's JSON-lines files (``metrics.jsonl``, ``evals.jsonl``).

Below both the engine, which writes them (:mod:`selfsup.engine.logger`), and the evaluation,
which reads them back for ``selfsup report`` and ``compare`` (:mod:`selfsup.eval.report`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["read_jsonl", "read_metrics"]


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (none if it does not exist), skipping a line cut short."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill mid-write
    return records


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """``metrics.jsonl`` as one history. A run that died after its last checkpoint logged steps
    that its resumed run logs again (the file is only appended to, never rewritten); where a
    record's step goes back below the one before it, the earlier records at or after that step
    are the dead attempt's and are dropped, so every step appears once, from the run that went on."""
    records: list[dict[str, Any]] = []
    for record in read_jsonl(Path(run_dir) / "metrics.jsonl"):
        step = record.get("step")
        if isinstance(step, int) and records and step < records[-1].get("step", -1):
            records = [old for old in records if old.get("step", -1) < step]
        records.append(record)
    return records
