"""One Prefect shard task and one flow body for every job kind (:mod:`facepose.batch`), over one Ray
actor class (:class:`tasks.actor.KindActor`): the flows in ``flows/`` are a few lines each around
:func:`batch_flow_body`.

The flow body runs on the actor pool that :func:`tasks.run.run_batch` started before the flow (its
actors load their models while Prefect starts), or builds its own when it was not handed one (a
deployment's flow run); it hands the pool to its shard tasks as a parameter wrapped in
``prefect.utilities.annotations.quote``: shard tasks run in threads of the flow's process
(ThreadPoolTaskRunner) and, with result persistence and caching off (``cache_policy=NONE``), Prefect
neither serialises nor stores task parameters; ``quote`` only tells it not to walk into the object
looking for upstream futures.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from prefect import get_run_logger, task
from prefect.futures import as_completed
from prefect.runtime import flow_run, task_run
from prefect.utilities.annotations import quote

import tasks.pool  # noqa: F401 - sets Ray's environment defaults before anything imports ray
from facepose import storage
from facepose.batch import JobKind, get_kind
from facepose.batch.plan import plan_run
from facepose.batch.results import Claims, iter_shards, write_part
from facepose.batch.summary import finish, record_plan
from facepose.config import load_config
from facepose.errors import StorageError
from tasks.common import RETRIES, STORAGE_RETRIES, RunProgress, TransientRowsError
from tasks.run import handed

TABLE_ROWS = 500  # rows of the summary table artifact (errors first)


@dataclass
class RunContext:
    """What the flow hands every shard task (in-process; see the module docstring)."""

    kind: JobKind
    out: str
    run_id: str
    pool: Any  # tasks.pool.ActorPool
    claims: Claims
    progress: RunProgress
    finished: dict[int, dict[str, dict]] = field(default_factory=dict)  # shard -> rows an earlier attempt finished


@task(name="shard", **STORAGE_RETRIES)
def run_shard(index: int, jobs: list[dict], ctx: RunContext) -> int:
    """Run a shard's jobs on the pool, each under a claim taken when an actor is free to run it, and
    write their result rows as one part. Returns how many jobs another run finished first. A transient
    storage error fails the attempt so Prefect retries it (jobs an earlier attempt finished are kept);
    the last attempt records it."""
    logger = get_run_logger()
    kind, key = ctx.kind, ctx.kind.id_column
    finished = ctx.finished.setdefault(index, {})
    last = task_run.run_count > RETRIES
    pending, others, held, elsewhere = [job for job in jobs if job[key] not in finished], [], set(), set()

    def admit(job: dict) -> bool:
        # Asked by the pool with an idle actor in hand: a run holds claims only on jobs an actor is
        # running, never on jobs queued behind actors still waiting for a CPU (two runs sharing too few
        # CPUs would otherwise each wait on jobs the other holds).
        taken = ctx.claims.take(job[key])
        if kind.done_result(ctx.out, job) is not None:  # another run finished it since planning
            if taken:
                ctx.claims.release(job[key])
            elsewhere.add(job[key])
            ctx.progress.add({key: job[key], "status": "skipped"})
            return False
        if not taken:
            others.append(job)
            return False
        held.add(job[key])
        return True

    def report(row: dict) -> None:
        logger.log(20 if row["status"] == "ok" else 30, "%s", kind.describe(row))
        if row["status"] == "ok" or not row["transient"] or last:
            finished[row[key]] = row
            ctx.progress.add(row)
        held.discard(row[key])
        try:
            ctx.claims.release(row[key])
        except StorageError as e:  # no longer renewed, so it lapses; its done marker already tells other runs
            logger.warning("could not give back the claim on %s: %s", row[key], e)

    while pending:
        others.clear()
        try:
            ctx.pool.map(pending, on_result=report, admit=admit)
        finally:
            for job_id in list(held):
                ctx.claims.release(job_id)
            held.clear()
        pending = [job for job in others if job[key] not in finished]
        if pending:  # another run holds them: wait for its markers, or for its claims to lapse
            time.sleep(min(1.0, ctx.claims.lease_s / 10))
    transient = [job[key] for job in jobs if job[key] not in finished and job[key] not in elsewhere]  # only transient errors leave a job unfinished
    if transient and not last:
        raise TransientRowsError(f"{len(transient)} {kind.noun}(s) of shard {index} hit a transient storage error ({', '.join(transient[:5])})")
    write_part(kind, ctx.out, ctx.run_id, f"{index:06d}", [finished[job[key]] for job in jobs if job[key] in finished])
    ctx.finished.pop(index, None)
    return len(elsewhere)


# The storage steps of the flow body, with the retry policy of every storage task.
plan_task = task(name="plan", **STORAGE_RETRIES)(plan_run)
record_task = task(name="record-plan", **STORAGE_RETRIES)(record_plan)
finish_task = task(name="finish", **STORAGE_RETRIES)(finish)


def batch_flow_body(kind_name: str, manifest: str, out: str, overrides: Optional[list[str]], retry_failed: bool,
                    config_files: Optional[list[str]]) -> dict[str, Any]:
    """The body of every batch flow: extract (config, plan), transform (shards -> Prefect tasks -> one
    pool of Ray actors), load (summary from this run's result parts, compaction, artifacts)."""
    from prefect.artifacts import create_table_artifact

    from tasks.pool import kind_pool, ray_session

    logger = get_run_logger()
    given = handed.get()
    t0 = given.t0 if given is not None else time.perf_counter()

    # Extract: config and plan (handed over by run_batch, with a warm pool, when it planned already)
    cfg = load_config(overrides or [], config_files or [])
    storage.configure(cfg.storage)
    storage.ensure_bucket(out)
    kind = get_kind(kind_name, cfg)
    if given is not None and (given.plan.manifest, given.plan.out) != (manifest, out):
        given, t0 = None, time.perf_counter()
    plan = given.plan if given is not None else plan_task(kind, manifest, out, retry_failed=retry_failed)
    logger.info("%s", plan.describe())
    record_task(kind, quote(plan))
    progress = RunProgress(plan.total, kind.id_column, given and given.progress, artifact_key=f"{kind.name}-progress", description=f"{kind.name} {manifest} -> {out}")
    for row in itertools.chain(plan.kept, plan.failed):
        progress.add(row)

    # Transform: shards of jobs -> Prefect tasks -> Ray actors, each job under a claim
    t_work, elsewhere = time.perf_counter(), 0
    if plan.todo:
        with ray_session(cfg.batch):
            pool = given.pool if given is not None and given.pool is not None else kind_pool(kind, out, len(plan.todo))
            claims = Claims(out, plan.run_id, cfg.batch.lease_s)
            ctx = RunContext(kind, out, plan.run_id, pool, claims, progress)
            shard = run_shard.with_options(task_run_name=f"{kind.name}-shard-{{index}}")
            shards, pending = enumerate(iter_shards(plan.todo, kind.settings.shard_size)), {}
            window = 2 * len(pool.actors) + 2  # shards in flight: the plan's rows stay on disk until their shard is due
            try:
                while True:
                    for i, jobs in itertools.islice(shards, max(0, window - len(pending))):
                        pending[shard.submit(i, jobs, quote(ctx))] = (i, jobs)
                    if not pending:
                        break
                    fut = next(as_completed(list(pending)))
                    i, jobs = pending.pop(fut)
                    try:
                        elsewhere += fut.result()
                    except Exception as exc:  # noqa: BLE001 - retries exhausted: the shard's rows fail, the run goes on
                        logger.error("shard %d failed after its retries: %s", i, exc)
                        rows = [kind.crashed(job, exc) for job in jobs if job[kind.id_column] not in ctx.finished.get(i, {})]
                        write_part(kind, out, plan.run_id, f"{i:06d}-failed", list(ctx.finished.pop(i, {}).values()) + rows)
                        for row in rows:
                            progress.add(row)
                    progress.publish()
            finally:  # also on Ctrl+C / SIGTERM: shard tasks then stop taking rows at once
                claims.close()
                pool.shutdown()
    work_s = time.perf_counter() - t_work

    # Load: summary (this run's parts), compaction, artifacts
    progress.publish()
    summary = finish_task(kind, quote(plan), grace_s=cfg.batch.compact_grace_s, t0=t0, work_s=work_s, elsewhere=elsewhere, flow_run_id=str(flow_run.id))
    rows = summary.pop("rows") + [dict(r, status="skipped") for r in plan.kept.head(TABLE_ROWS)]
    rows.sort(key=lambda r: (r["status"] != "error", r[kind.id_column]))
    create_table_artifact(table=[{k: r.get(k) for k in kind.result_schema.names if k not in ("transient", "input_digest")} for r in rows[:TABLE_ROWS]],
                          key=f"{kind.name}-summary", description=f"{kind.name}: {plan.total} rows of {manifest} (first {TABLE_ROWS}, errors first)")
    logger.info("%d %ss: %d ok, %d failed, %d skipped; results at %s", plan.total, kind.noun, summary["ok"], summary["error"], summary["skipped"], summary["results"])
    return summary
