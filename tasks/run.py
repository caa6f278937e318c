"""Starting a batch run from this process (what ``facepose render-batch`` / ``curate`` call): plan first,
and start Prefect and Ray only when there is work. Imports neither at module level."""

from __future__ import annotations

import contextvars
import itertools
import importlib
import time
from typing import Any, Optional, Sequence

from facepose import storage
from facepose.batch import get_kind
from facepose.batch.plan import Plan, plan_run
from facepose.batch.summary import dry_run_summary, finish, record_plan
from facepose.config import load_config

ProgressCallback = Any  # (rows finished, rows in the run, the result row) -> None; see tasks.common

# The plan and progress callback of an in-process caller, picked up by the flow body (flow parameters
# must be plain data; a callback and a plan are not).
handed: contextvars.ContextVar[Optional[tuple[Optional[Plan], Optional[ProgressCallback]]]] = contextvars.ContextVar("facepose_batch", default=None)


def run_batch(kind_name: str, manifest: str, out: str, *, overrides: Sequence[str] = (), retry_failed: bool = False, dry_run: bool = False,
              progress: Optional[ProgressCallback] = None, config_files: Sequence[str] = ()) -> dict[str, Any]:
    """Plan ``manifest`` against ``out``; with ``dry_run`` return the plan's counts; with nothing to
    run record what planning found and return the summary; otherwise run the kind's flow with the plan.

    progress: ``progress(done, total, result_row)`` as rows finish (rows done before count at once).
    Raises InputError (bad manifest) and StorageError (unreachable storage) before anything starts."""
    t0 = time.perf_counter()
    cfg = load_config(list(overrides), list(config_files))
    storage.configure(cfg.storage)
    kind = get_kind(kind_name, cfg)
    plan = plan_run(kind, manifest, out, retry_failed=retry_failed)
    if dry_run:
        return dry_run_summary(kind, plan, t0)
    if not plan.todo:
        storage.ensure_bucket(out)
        record_plan(kind, plan)
        if progress is not None:
            for n, row in enumerate(itertools.chain(plan.kept, plan.failed), 1):
                progress(n, plan.total, row)
        summary = finish(kind, plan, grace_s=cfg.batch.compact_grace_s, t0=t0)
        summary.pop("rows")
        return summary
    flow = getattr(importlib.import_module(f"flows.{kind_name}"), f"{kind_name}_flow")  # flows/<kind>.py defines <kind>_flow
    token = handed.set((plan, progress))
    try:
        return flow(manifest, out, overrides=list(overrides), retry_failed=retry_failed, config_files=[str(f) for f in config_files])
    finally:
        handed.reset(token)
