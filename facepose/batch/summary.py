"""The end of a run of any kind: its summary, computed once from this run's result parts, and the
compaction of the results file (see :mod:`facepose.batch.results`)."""

from __future__ import annotations

import time
from typing import Any, Optional

from facepose.batch.kind import JobKind
from facepose.batch.plan import Plan
from facepose.batch.results import compact, read_results, results_uri, write_part

MAX_ERRORS = 1000  # error rows listed in a summary (all of them are in the results file)


def record_plan(kind: JobKind, plan: Plan) -> None:
    """Write the rows planning decided (new errors, results recovered from done markers) as a part."""
    write_part(kind, plan.out, plan.run_id, "plan", plan.record)


def finish(kind: JobKind, plan: Plan, *, grace_s: float, t0: float, work_s: float = 0.0, elsewhere: int = 0,
           flow_run_id: Optional[str] = None) -> dict[str, Any]:
    """Summarize the run (counts by status: ``skipped`` = done before, or by a concurrent run), then
    compact the results file. ``t0``: the run's start (``time.perf_counter()``)."""
    key = kind.id_column
    recovered = {r[key] for r in plan.record if r["status"] == "ok"}  # done markers of a killed run: counted as skipped
    ran = [r for r in read_results(kind, plan.out, plan.run_id).values() if r[key] not in recovered]
    compact(kind, plan.out, grace_s)
    ran_ids = {r[key] for r in ran}
    errors = [r for r in ran if r["status"] == "error"]
    n_errors = len(errors)
    for r in plan.failed:  # bad rows fail every run
        if r[key] not in ran_ids:
            n_errors += 1
            if len(errors) < MAX_ERRORS:
                errors.append(r)
    summary: dict[str, Any] = {
        f"{kind.noun}s": plan.total, "ok": sum(r["status"] == "ok" for r in ran), "error": n_errors,
        "skipped": len(plan.kept) + elsewhere,
    }
    summary.update(kind.summary(ran, work_s))
    summary.update(
        wall_s=time.perf_counter() - t0, work_s=work_s, out=plan.out, results=results_uri(kind, plan.out), run_id=plan.run_id,
        flow_run_id=flow_run_id,
        errors=[{key: r[key], "error": r["error"], "error_kind": r["error_kind"]} for r in sorted(errors, key=lambda r: r[key])[:MAX_ERRORS]],
    )
    summary["rows"] = ran  # this run's result rows, for the caller's table (dropped from what is returned to users)
    return summary


def dry_run_summary(kind: JobKind, plan: Plan, t0: float) -> dict[str, Any]:
    """What a run would do, without doing it."""
    key = kind.id_column
    return {
        f"{kind.noun}s": plan.total, "to_run": len(plan.todo), "skipped": len(plan.kept), "error": len(plan.failed),
        "wall_s": time.perf_counter() - t0, "out": plan.out, "dry_run": True,
        "errors": [{key: r[key], "error": r["error"], "error_kind": r["error_kind"]} for r in plan.failed.head(MAX_ERRORS)],
    }
