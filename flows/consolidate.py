"""`consolidate`: merge each group of compatible adapters, evaluate, publish behind the gate.

1. Plan: the newest active version of every registered adapter, grouped by the compatibility key
   the registry recorded at registration (`Registry.compatible_groups`): the canonical base model
   and revision (so a hub id and a trainer path aliased to it group together), adapter type and
   module-shape digest. A version registered before the digest was recorded is downloaded once to
   compute and record it. A group is served when a bundle was published for exactly its adapter
   versions and this request (method, parameters): the bundle records their `request_digest`, so
   planning finds the groups to merge in one query, downloading nothing; the others are skipped.
2. Each group to merge is merged on its own: run from a deployment, as a flow run of the
   ``consolidate-group`` deployment (`GROUP_DEPLOYMENT`) when that one has a work pool, so that
   every worker of the pool takes groups; otherwise (run directly, or served by `hydracat serve`)
   as task runs in this process, `GROUPS_AT_ONCE` at a time. A lock per group in the registry database
   (`flows.locks`, dropped the moment its holder dies) keeps two runs from merging or publishing the
   same group at once. A group's adapters are downloaded when it is merged (cached by sha256 under
   HYDRACAT_WORK_DIR; from the object store, or the hub for an ``hf://`` URI).
3. Merge through the group's `hydraopt.evaluation.pipeline.MergePipeline` (closed form, then
   refinement and distillation where asked; or `auto`: the smallest HydraOpt setting that passes
   the gate, tasks that never pass are left on their original adapters), then evaluate each task:
   on its eval set (``eval.jsonl`` beside the adapter) with the base model's resolved folder
   (`flows.model_sources`), or, without one, in weight space (1 − relative reconstruction error).
4. Publish if the gate passes: bundle objects are uploaded first (manifest last), then one
   registry transaction records the bundle, its lineage and metrics and moves every member task's
   "current" alias. A crash in between leaves no visible change; a rerun completes it.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Annotated, Literal
from uuid import UUID

from prefect import flow, get_client, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.context import get_run_context
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import deployment
from prefect.states import Completed, State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from flows.catalog import ARTIFACT_ROWS, RETRIES
from flows.locks import group_lock
from flows.model_sources import BaseModelUnavailable, hub_adapter, resolve_base_model
from flows.resources import open_registry
from flows.settings import FlowSettings
from hydraopt.adapter import Adapter
from hydraopt.evaluation import Evaluator, Gate, TaskScore, auto_hydraopt
from hydraopt.evaluation.activations import input_statistics
from hydraopt.evaluation.distillation import references
from hydraopt.evaluation.gate import GateDecision
from hydraopt.evaluation.model import load_causal_lm
from hydraopt.evaluation.pipeline import DistillStep, MergePipeline
from hydraopt.evaluation.suite import TaskSet, read_task_jsonl
from hydraopt.formats.bundle import task_rows, write_bundle
from hydraopt.formats.layout import EVAL_FILE, MANIFEST_FILE, PEFT_FILES, bundle_key
from hydraopt.formats.peft_lora import load_adapter
from hydraopt.merge import MergeResult
from hydraopt.methods import METHODS, MergeMethod
from registry.api import Registry, chunks
from registry.names import group_label as registry_group_label

GROUP_DEPLOYMENT = "consolidate-group/consolidate-group"  # the flow run per group, on the workers
# Groups merged at once in one process (consolidate run directly): more only contend for the cores
# and hold more adapters in memory (measured in `hydracat bench scale`).
GROUPS_AT_ONCE = min(4, os.cpu_count() or 1)
LOGGED_GROUPS = 20  # groups named in the plan's log line
AUTO, AUTO_SEARCHES = "auto", "hydraopt"  # auto: the smallest HydraOpt setting that passes the gate
Method = Literal[(*METHODS, AUTO)]  # the UI offers every registered method
KNOBS = {field.name: field.metadata["help"] for field in fields(METHODS[AUTO_SEARCHES].params_type)}
Heads = Annotated[int | None, Field(ge=1, description=KNOBS["heads"])]
Rank = Annotated[int | None, Field(ge=1, description=KNOBS["rank"])]
MinRetention = Annotated[float, Field(gt=0, le=1, description="gate: minimum retention per task")]
BaseModelFilter = Annotated[str | None, Field(description="only this base model's adapters")]
DryRun = Annotated[bool, Field(description="merge and evaluate, publish nothing")]
Refine = Annotated[
    bool,
    Field(description='refine HydraOpt merges on each task\'s inputs (eval.jsonl rows with split "train")'),
]
DistillSteps = Annotated[
    int,
    Field(ge=0, description="then this many gradient steps on the KL to the original adapters over the same "
          "rows (slow on CPU: minutes per group; 0 = off)"),
]  # fmt: skip


# planning


def fetch(registry: Registry, row: dict, cache: Path, settings: FlowSettings) -> Path:
    """The adapter folder of a registry row, downloaded once per sha256 (object store or hf://)."""
    folder = cache / row["sha256"]
    if folder.is_dir():
        return folder
    key = registry.store.key_for(row["uri"])
    if key is None and not row["uri"].startswith("hf://"):
        raise ValueError(f"adapter {row['name']} {row['version']}: {row['uri']} is not in the object store")
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache))
    try:
        if key is None:
            found = hub_adapter(row["uri"], settings, (EVAL_FILE,))  # the registered commit, hub cache
            for file in found.files:
                shutil.copyfile(found.folder / file, staging / file)
        else:
            for file in (*PEFT_FILES, EVAL_FILE):
                if file != EVAL_FILE or registry.store.exists(f"{key}/{file}"):
                    registry.store.download(f"{key}/{file}", staging / file)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone after the rename; a failed fetch leaves nothing
    return folder


def load_member(row: dict, folder: Path) -> Adapter:
    """The adapter of a registry row, named after the base model the registry resolved it to.

    Its compatibility key, the bundle's manifest and its task adapters' configs then carry the
    canonical base model, whatever name the trainer's config gave it.
    """
    adapter = load_adapter(folder, task=row["name"])
    if adapter.sha256 != row["sha256"]:
        raise ValueError(f"adapter {row['name']} {row['version']}: sha256 differs from the registry's")
    adapter.name, adapter.version, adapter.adapter_id = row["name"], row["version"], row["id"]
    name, revision = row["base_model"]["name"], row["base_model"]["revision"]
    if (name, revision) != (adapter.base_model, adapter.revision or None):
        adapter.base_model, adapter.revision = name, revision
        adapter.config = adapter.config | {"base_model_name_or_path": name, "revision": revision}
    return adapter


def group_label(group: dict) -> str:
    """The label of a `Registry.compatible_groups` group: names the group and its lock."""
    return registry_group_label(group["base_model"], group["adapter_type"], group["modules_digest"])


def merge_method(method: str) -> MergeMethod:
    """The registered method a consolidate `method` merges with (`auto` searches HydraOpt's settings)."""
    return METHODS[AUTO_SEARCHES if method == AUTO else method]


def requested_params(method: str, heads: int | None, rank: int | None) -> dict:
    """The knobs given that the method has (only HydraOpt has heads)."""
    known = {field.name for field in fields(merge_method(method).params_type)}
    return {name: value for name, value in {"heads": heads, "rank": rank}.items() if value is not None
            and name in known}  # fmt: skip


def made_by(method: str, params: dict, refine: bool, distill_steps: int) -> dict:
    """How a bundle was asked for, as its manifest records it (`distill_steps` only when used)."""
    refinable = merge_method(method).refinable
    record = {"method": method, "params": params, "refine": refine and refinable}
    return record | ({"distill_steps": distill_steps} if distill_steps and refinable else {})


def request_digest(rows: list[dict], request: dict) -> str:
    """sha256 of a group's inputs (each adapter version's task and sha256) and `request` (`made_by`):
    what a bundle published for them records, so that planning finds served groups by a query."""
    members = sorted((row["name"], row["sha256"]) for row in rows)
    return hashlib.sha256(json.dumps([members, request], sort_keys=True).encode()).hexdigest()


# evaluation


def eval_sets(adapters: list[Adapter]) -> list[TaskSet]:
    return [
        read_task_jsonl(a.path / EVAL_FILE, name=a.task_name)
        for a in adapters
        if (a.path / EVAL_FILE).is_file()
    ]


def group_pipeline(
    adapters: list[Adapter], base: Path | None, device: str | None, refine: bool, distill_steps: int,
    on_distill_step: DistillStep,
) -> tuple[MergePipeline, str | None]:  # fmt: skip
    """The group's merge pipeline (function space where an eval set and the base model exist), and
    why its HydraOpt merges stay closed form though refinement or distillation was asked for.

    Refinement and distillation calibrate on every member's eval.jsonl rows with split "train".
    """
    tasks = eval_sets(adapters)
    evaluator = None
    if tasks and base is not None:
        evaluator = Evaluator(*load_causal_lm(base, device), tasks)
    uncalibrated = sorted({a.task_name for a in adapters} - {t.name for t in tasks if t.train})
    calibrate = evaluator is not None and not uncalibrated
    why_not = None
    if (refine or distill_steps) and not calibrate:
        why_not = (
            f'no calibration rows (split "train") for {uncalibrated}'
            if evaluator
            else "no eval sets or no base model to calibrate on"
        )
    model, tokenizer = (evaluator.model, evaluator.tokenizer) if evaluator else (None, None)
    pipeline = MergePipeline(
        adapters,
        evaluator,
        device=device,
        statistics=input_statistics(model, tokenizer, tasks, adapters) if calibrate and refine else None,
        references=references(model, tokenizer, tasks, adapters) if calibrate and distill_steps else None,
        distill_options={"steps": distill_steps},
        on_distill_step=on_distill_step,
    )
    return pipeline, why_not


def base_folder(
    registry: Registry, adapters: list[Adapter], settings: FlowSettings, log: Callable[[str], None]
) -> Path | None:
    """The group's base model folder, resolved from its canonical name, when an eval set needs it.

    None (logged) when it cannot be had now: the group is then judged in weight space.
    """
    if not any((a.path / EVAL_FILE).is_file() for a in adapters):
        return None
    try:
        return resolve_base_model(registry, adapters[0].base_model, adapters[0].revision, settings).folder
    except BaseModelUnavailable as exc:
        log(f"no base model to evaluate on, weight space only: {exc}")
        return None


# publishing


def upload_bundle(registry: Registry, folder: Path, key: str) -> None:
    """Every file of the bundle folder under `key`, manifest.json last."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == MANIFEST_FILE)
    for path in files:
        registry.store.put_file(f"{key}/{path.relative_to(folder).as_posix()}", path)


def metrics_of(scores: dict[str, TaskScore], originals: dict[str, TaskScore], decision) -> dict:
    """The manifest's per-task metrics: the metric's name, its value before and after the merge."""
    return {
        task: {
            "metric": score.metric,
            "original": originals[task].value,
            "merged": score.value,
            "retention": decision.verdicts[task].retention,
            **({"agreement": score.agreement, "kl": score.kl} if score.agreement is not None else {}),
        }
        for task, score in scores.items()
    }


def consolidate_one(
    label: str,
    base_model: str,
    method: str,
    heads: int | None,
    rank: int | None,
    min_retention: float,
    refine: bool,
    distill_steps: int,
    dry_run: bool,
    flow_run_id: str,
) -> dict:
    """Merge, evaluate and (unless dry run) publish group `label` of `base_model`'s adapters; returns
    its summary.

    Its "tasks" are `task_rows` with each task's gate verdict ("passed", "reason"). Holds the
    group's lock throughout; a killed worker's lock is dropped with its process. The group's
    adapter versions are read from the registry once the lock is held; a group a bundle was already
    published for (by a run that held the lock before) is left "unchanged".
    """
    logger = get_run_logger()
    settings = FlowSettings.from_env()
    waiting = partial(logger.info, "group %s: another run holds its lock, waiting", label)
    with group_lock(settings.registry.database_url, label, on_wait=waiting):
        rows = plan_groups(base_model, settings).get(label)
        if rows is None:
            return {"group": label, "status": "gone", "adapters": 0, "tasks": []}
        params = requested_params(method, heads, rank)
        request = made_by(method, params, refine, distill_steps)
        digest = request_digest(rows, request)
        if open_registry(settings.registry).served_requests([digest]):
            logger.info("group %s: unchanged since its bundle, skipped", label)
            return {"group": label, "status": "unchanged", "adapters": len(rows), "tasks": []}
        adapters = fetch_members(rows)
        merged = merge_group(label, adapters, method, params, request, Gate(min_retention), settings)
        summary = {"group": label, "adapters": len(rows), **merged.summary}
        if merged.result is None or not merged.decision.publish:
            logger.warning("group %s: gate failed for %s; nothing published", label, merged.failing)
            return summary | {"status": "gate failed"}
        if dry_run:
            return summary | {"status": "dry run: would publish"}
        extra = {"flow_run_id": flow_run_id, "consolidate": request, "gate": merged.decision.to_dict()}
        members = [a for a in adapters if a.task_name in merged.result.tasks]
        with tempfile.TemporaryDirectory(prefix="hydracat-bundle-", dir=settings.work_dir) as tmp:
            manifest = write_bundle(
                members, merged.result, Path(tmp) / "bundle", metrics=merged.metrics, extra=extra
            )
            key = bundle_key(members[0].base_model, manifest["bundle_id"])
            publish_objects(Path(tmp) / "bundle", key)
        published = publish_records(manifest, key, flow_run_id, digest)
        logger.info("group %s: published bundle %s, %d alias moves", label, manifest["bundle_id"],
                    len(published["moves"]))  # fmt: skip
        return summary | {
            "status": "published",
            "bundle_id": manifest["bundle_id"],
            "bundle_uri": published["bundle"]["bundle_uri"],
            "storage": manifest["storage"],
        }


@dataclass
class Merged:
    """A group's merge and its gate decision (`result` None: `auto` found no setting that passes)."""

    result: MergeResult | None
    decision: GateDecision | None
    metrics: dict
    summary: dict

    @property
    def failing(self) -> list[str]:
        return self.decision.failing if self.decision else sorted(self.summary["excluded"])


def merge_group(
    label: str, adapters: list[Adapter], method: str, params: dict, request: dict, gate: Gate,
    settings: FlowSettings,
) -> Merged:  # fmt: skip
    """Merge and evaluate a group's adapters as `request` asks; the summary's "tasks" are its
    `task_rows` with each task's verdict, then the tasks `auto` left on their adapters."""
    logger = get_run_logger()
    steps = request.get("distill_steps", 0)
    progress = partial(logger.info, "group %s: distill step %d/%d, KL %.6f", label)
    registry = open_registry(settings.registry)
    base = base_folder(registry, adapters, settings, partial(logger.warning, "group %s: %s", label))
    pipeline, why_not = group_pipeline(
        adapters, base, settings.device, request["refine"], steps, lambda _r, *step: progress(*step)
    )
    if why_not:
        logger.info("group %s: closed form only, not refined: %s", label, why_not)
    excluded: dict[str, str] = {}
    if method == AUTO:
        refiner = pipeline.finish if pipeline.improves else None
        outcome = auto_hydraopt(adapters, pipeline.score, pipeline.originals, gate=gate, refine=refiner,
                                screen=pipeline.screen(), device=settings.device)  # fmt: skip
        excluded, result, decision = outcome.excluded, outcome.result, outcome.decision
    else:
        result = pipeline.merge(method, **params)
    left = [
        {"task": t, "passed": False, "reason": f"left on its adapter: {why}"} for t, why in excluded.items()
    ]
    if result is None:
        return Merged(None, None, {}, {"tasks": left, "excluded": excluded})
    scores = pipeline.score(result)
    if method != AUTO:
        decision = gate.decide(pipeline.originals, scores)
    metrics = metrics_of(scores, pipeline.originals, decision)
    scored = task_rows({task: result.assignment[task] for task in decision.verdicts}, metrics)
    tasks = [
        row | {"passed": verdict.passed, "reason": verdict.reason}
        for row, verdict in zip(scored, decision.verdicts.values(), strict=True)
    ]
    summary = {
        "method": method,
        "heads": result.heads,
        "rank": result.rank,
        "refined": "refine" in result.params,
        "distilled": result.params.get("distill", {}).get("kept", False),
        "tasks": tasks + left,
        "excluded": excluded,
    }
    return Merged(result, decision, metrics, summary)


@task(**RETRIES, cache_policy=NO_CACHE)
def publish_objects(folder: Path, key: str) -> None:
    upload_bundle(open_registry(), folder, key)


@task(**RETRIES, cache_policy=NO_CACHE)
def publish_records(manifest: dict, key: str, flow_run_id: str, digest: str) -> dict:
    return open_registry().publish_bundle(
        manifest, key, reason="consolidate", actor=f"prefect:{flow_run_id}", request_digest=digest
    )


@task(**RETRIES, cache_policy=NO_CACHE)
def fetch_members(rows: list[dict]) -> list[Adapter]:
    """The group's adapters, from the work dir's cache or the store (S3 errors and timeouts retried)."""
    settings = FlowSettings.from_env()
    registry, cache = open_registry(settings.registry), adapter_cache(settings)
    return [load_member(row, fetch(registry, row, cache, settings)) for row in rows]


def adapter_cache(settings: FlowSettings) -> Path:
    cache = settings.work_dir / "adapters"
    cache.mkdir(parents=True, exist_ok=True)
    return cache


def record_digests(registry: Registry, rows: list[dict], settings: FlowSettings) -> None:
    """Compute, from the loaded adapters, and record the module-shape digests the rows lack."""
    cache = adapter_cache(settings)
    for row in rows:
        digest = load_member(row, fetch(registry, row, cache, settings)).compat_key().modules_digest
        registry.record_modules_digest(row["name"], row["version"], digest)


def plan_groups(base_model: str | None, settings: FlowSettings | None = None) -> dict[str, list[dict]]:
    """Newest active adapter versions grouped by the registry's compatibility keys: {label: [rows]}.

    Versions registered before their digest was recorded are downloaded once to record it."""
    settings = settings or FlowSettings.from_env()
    registry = open_registry(settings.registry)
    groups = registry.compatible_groups(base_model)
    unkeyed = [row for group in groups if group["modules_digest"] is None for row in group["adapters"]]
    if unkeyed:
        record_digests(registry, unkeyed, settings)
        groups = registry.compatible_groups(base_model)
    return {group_label(group): group["adapters"] for group in groups}


@task(**RETRIES, cache_policy=NO_CACHE)
def plan(base_model: str | None, request: dict) -> dict:
    """The groups to merge, those without a bundle published for their adapters and `request`:
    {"merge": [{"group", "base_model", "adapters"}], "served": how many groups have one}."""
    groups = plan_groups(base_model)
    digests = {label: request_digest(rows, request) for label, rows in groups.items()}
    served = open_registry().served_requests(list(digests.values()))
    merge = [
        {"group": label, "base_model": rows[0]["base_model"]["name"], "adapters": len(rows)}
        for label, rows in groups.items()
        if digests[label] not in served
    ]
    return {"merge": merge, "served": len(groups) - len(merge)}


@task(cache_policy=NO_CACHE, task_run_name="consolidate {label}")
def consolidate_in_process(label: str, base_model: str, options: dict, flow_run_id: str) -> dict:
    """One group in this process (consolidate run directly): `consolidate_one`."""
    return consolidate_one(label, base_model, **options, flow_run_id=flow_run_id)


@flow(name="consolidate-group")
def consolidate_group(
    group: str,
    base_model: str,
    method: Method = "hydraopt",
    heads: Heads = None,
    rank: Rank = None,
    min_retention: MinRetention = 0.97,
    refine: Refine = True,
    distill_steps: DistillSteps = 0,
    dry_run: DryRun = False,
) -> State:
    """Merge, evaluate and publish one group (`group` label, as `consolidate` plans it, of
    `base_model`'s adapters): the flow run `consolidate` starts per group on the work pool's workers.

    Its state message is the group's summary without its tasks, as JSON; the tasks are its
    ``consolidate-group-<label>`` table artifact."""
    options = dict(method=method, heads=heads, rank=rank, min_retention=min_retention, refine=refine,
                   distill_steps=distill_steps, dry_run=dry_run)  # fmt: skip
    summary = consolidate_one(group, base_model, **options, flow_run_id=str(get_run_context().flow_run.id))
    create_table_artifact(
        key=artifact_key(f"consolidate-group-{group}"),
        table=summary["tasks"][:ARTIFACT_ROWS] or [{"result": summary["status"]}],
        description=f"group {group}: metric before and after the merge, retention, gate",
    )
    return Completed(message=json.dumps(without_tasks(summary)), data=summary)


def artifact_key(name: str) -> str:
    """`name` as a Prefect artifact key (lowercase letters, digits and dashes)."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower())


def without_tasks(summary: dict) -> dict:
    return {field: value for field, value in summary.items() if field != "tasks"}


def group_deployment() -> str | None:
    """`GROUP_DEPLOYMENT` when this run comes from a deployment and that one has a work pool
    (its workers merge the groups), else None (they are merged in this process)."""
    if not deployment.get_id():
        return None
    with get_client(sync_client=True) as client:
        try:
            found = client.read_deployment_by_name(GROUP_DEPLOYMENT)
        except ObjectNotFound:
            return None
    return GROUP_DEPLOYMENT if found.work_pool_name else None


def run_on_workers(groups: list[dict], options: dict, flow_run_id: str) -> list[dict]:
    """A `consolidate-group` flow run per group, all started at once and awaited; their summaries
    (without tasks, read from their final states). Raises once all ended if any did not complete."""
    runs = {
        str(run_deployment(
            GROUP_DEPLOYMENT, parameters={"group": g["group"], "base_model": g["base_model"], **options},
            timeout=0, idempotency_key=f"{flow_run_id}:{g['group']}",
            flow_run_name=f"consolidate-group {g['group']}",
        ).id): g["group"]
        for g in groups
    }  # fmt: skip
    logger = get_run_logger()
    logger.info("%d consolidate-group flow runs started on %s", len(runs), GROUP_DEPLOYMENT)
    states = wait_for_runs(list(runs))
    failed = [f"{runs[run]} ({state.name})" for run, state in states.items() if not state.is_completed()]
    if failed:
        raise RuntimeError(f"consolidate-group runs did not complete: {', '.join(failed)}")
    return [json.loads(states[run].message) | {"flow_run_id": run} for run in runs]


def wait_for_runs(run_ids: list[str], poll_s: float = 2.0) -> dict[str, State]:
    """The final state of each flow run, read in one query per poll."""
    states: dict[str, State] = {}
    with get_client(sync_client=True) as client:
        while len(states) < len(run_ids):
            time.sleep(poll_s)
            waiting = [UUID(run) for run in run_ids if run not in states]
            for chunk in chunks(waiting, 200):
                flow_runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(chunk)))
                )
                states |= {str(r.id): r.state for r in flow_runs if r.state and r.state.is_final()}
    return states


@flow(name="consolidate", task_runner=ThreadPoolTaskRunner(max_workers=GROUPS_AT_ONCE))
def consolidate(
    method: Method = "hydraopt",
    heads: Heads = None,
    rank: Rank = None,
    min_retention: MinRetention = 0.97,
    base_model: BaseModelFilter = None,
    refine: Refine = True,
    distill_steps: DistillSteps = 0,
    dry_run: DryRun = False,
) -> dict:
    """Merge every group of compatible adapters, evaluate, and publish the ones that pass the gate."""
    logger = get_run_logger()
    flow_run_id = str(get_run_context().flow_run.id)
    options = dict(method=method, heads=heads, rank=rank, min_retention=min_retention, refine=refine,
                   distill_steps=distill_steps, dry_run=dry_run)  # fmt: skip
    planned = plan(base_model, made_by(method, requested_params(method, heads, rank), refine, distill_steps))
    groups = planned["merge"]
    named = ", ".join(f"{g['group']} ({g['adapters']})" for g in groups[:LOGGED_GROUPS])
    more = f" and {len(groups) - LOGGED_GROUPS} more" if len(groups) > LOGGED_GROUPS else ""
    logger.info("%d group(s) already served; %d to merge: %s%s", planned["served"], len(groups), named, more)
    if groups and group_deployment() is not None:
        results = run_on_workers(groups, options, flow_run_id)
    else:
        futures = [consolidate_in_process.submit(g["group"], g["base_model"], options, flow_run_id)
                   for g in groups]  # fmt: skip
        results = [future.result() for future in futures]
    rows = [{"group": result["group"]} | row for result in results for row in result.get("tasks", [])]
    more = f" (the first {ARTIFACT_ROWS} of {len(rows)})" if len(rows) > ARTIFACT_ROWS else ""
    create_table_artifact(
        key="consolidate-tasks",
        table=rows[:ARTIFACT_ROWS] or [{"result": "no tasks evaluated"}],
        description=f"per task of the groups merged{more}: metric before and after, retention, gate",
    )
    create_markdown_artifact(
        key="consolidate-summary", markdown=summary_markdown(results, planned["served"], dry_run)
    )
    return {
        "groups": results,
        "unchanged": planned["served"] + sum(r["status"] == "unchanged" for r in results),
        "published": [r["bundle_id"] for r in results if r["status"] == "published"],
    }


def summary_markdown(results: list[dict], served: int, dry_run: bool) -> str:
    lines = [
        f"{served} group(s) already served by their bundles, not merged again.",
        "",
        "| group | status | method | K | r' | storage | adapters |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        storage = f"{r['storage']['ratio']:.3f}" if "storage" in r else "-"
        lines.append(
            f"| {r['group']} | {r['status']} | {r.get('method', '-')} | {r.get('heads', '-')} | "
            f"{r.get('rank', '-')} | {storage} | {r['adapters']} |"
        )
    title = "# consolidate (dry run)" if dry_run else "# consolidate"
    return "\n".join([title, "", *lines])
