"""`consolidate`: merge each group of compatible adapters, evaluate, publish behind the gate.

1. Plan: the newest active version of every registered adapter, grouped by the compatibility key
   the registry recorded at registration (`Registry.compatible_groups`): the canonical base model
   and revision (so a hub id and a trainer path aliased to it group together), adapter type and
   module-shape digest. A version registered before the digest was recorded is downloaded once to
   compute and record it. A group's adapters are downloaded when it is merged (cached by sha256
   under HYDRACAT_WORK_DIR; from the object store, or the hub for an ``hf://`` URI).
2. One task per group, run concurrently; a lock per group in the registry database
   (`flows.locks`, dropped the moment its holder dies) keeps two runs from merging or publishing
   the same group at once. A group whose every task already serves a bundle of exactly these
   adapter versions, method and parameters is skipped.
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
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import Annotated, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from pydantic import Field

from flows.catalog import RETRIES
from flows.locks import group_lock
from flows.model_sources import BaseModelUnavailable, hub_adapter, resolve_base_model
from flows.resources import open_registry
from flows.settings import FlowSettings
from hydraopt.adapter import Adapter
from hydraopt.evaluation import Evaluator, Gate, TaskScore, auto_hydraopt
from hydraopt.evaluation.activations import input_statistics
from hydraopt.evaluation.distillation import references
from hydraopt.evaluation.model import load_causal_lm
from hydraopt.evaluation.pipeline import DistillStep, MergePipeline
from hydraopt.evaluation.suite import TaskSet, read_task_jsonl
from hydraopt.formats.bundle import task_rows, write_bundle
from hydraopt.formats.layout import EVAL_FILE, MANIFEST_FILE, PEFT_FILES, bundle_key, model_slug
from hydraopt.formats.peft_lora import load_adapter
from hydraopt.methods import METHODS, MergeMethod
from registry.api import Registry
from registry.errors import RegistryError

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
    """`<base-model-slug>-<hash of the compatibility key>` of a `Registry.compatible_groups` group:
    names the group and its lock."""
    base = group["base_model"]
    key = (base["name"], base["revision"], group["adapter_type"], group["modules_digest"])
    return f"{model_slug(base['name'])}-{hashlib.sha256(repr(key).encode()).hexdigest()[:8]}".lower()


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


def already_served(registry: Registry, adapters: list[Adapter], request: dict) -> bool:
    """Every task's current bundle was made from exactly these adapters and `request` (`made_by`)."""
    members = sorted((a.task_name, a.sha256) for a in adapters)
    for adapter in adapters:
        try:
            manifest = registry.current_bundle(adapter.task_name)["manifest"]
        except RegistryError:
            return False
        served = sorted((m["task"], m["sha256"]) for m in manifest["members"])
        if served != members or manifest.get("consolidate") != request:
            return False
    return True


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


@task(cache_policy=NO_CACHE, task_run_name="consolidate {label}")
def consolidate_group(
    label: str,
    rows: list[dict],
    method: str,
    heads: int | None,
    rank: int | None,
    min_retention: float,
    refine: bool,
    distill_steps: int,
    dry_run: bool,
    flow_run_id: str,
) -> dict:
    """Merge, evaluate and (unless dry run) publish one group; returns its summary.

    Its "tasks" are `task_rows` with each task's gate verdict ("passed", "reason"). Holds the
    group's lock throughout; a killed worker's lock is dropped with its process.
    """
    logger = get_run_logger()
    settings = FlowSettings.from_env()
    waiting = partial(logger.info, "group %s: another run holds its lock, waiting", label)
    with group_lock(settings.registry.database_url, label, on_wait=waiting):
        registry = open_registry(settings.registry)
        adapters = fetch_members(rows)
        params = requested_params(method, heads, rank)
        request = made_by(method, params, refine, distill_steps)
        if already_served(registry, adapters, request):
            logger.info("group %s: unchanged since its current bundle, skipped", label)
            return {"group": label, "status": "unchanged", "tasks": []}
        gate = Gate(min_retention)
        steps = request.get("distill_steps", 0)
        progress = partial(logger.info, "group %s: distill step %d/%d, KL %.6f", label)
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
                                    device=settings.device)  # fmt: skip
            excluded = outcome.excluded
            if outcome.result is None:
                left = [{"task": t, "passed": False, "reason": why} for t, why in excluded.items()]
                return {"group": label, "status": "gate failed", "tasks": left, "excluded": excluded}
            result, decision = outcome.result, outcome.decision
            scores = pipeline.score(result)
        else:
            result = pipeline.merge(method, **params)
            scores = pipeline.score(result)
            decision = gate.decide(pipeline.originals, scores)
        members = [a for a in adapters if a.task_name in result.tasks]
        metrics = metrics_of(scores, pipeline.originals, decision)
        rows = task_rows({task: result.assignment[task] for task in decision.verdicts}, metrics)
        tasks = [
            row | {"passed": verdict.passed, "reason": verdict.reason}
            for row, verdict in zip(rows, decision.verdicts.values(), strict=True)
        ]
        tasks += [
            {"task": task, "passed": False, "reason": f"left on its adapter: {why}"}
            for task, why in excluded.items()
        ]
        summary = {
            "group": label,
            "method": method,
            "heads": result.heads,
            "rank": result.rank,
            "refined": "refine" in result.params,
            "distilled": result.params.get("distill", {}).get("kept", False),
            "tasks": tasks,
            "excluded": excluded,
        }
        if not decision.publish:
            logger.warning("group %s: gate failed for %s; nothing published", label, decision.failing)
            return summary | {"status": "gate failed"}
        if dry_run:
            return summary | {"status": "dry run: would publish"}
        extra = {
            "flow_run_id": flow_run_id,
            "consolidate": request,
            "gate": decision.to_dict(),
        }
        with tempfile.TemporaryDirectory(prefix="hydracat-bundle-", dir=settings.work_dir) as tmp:
            manifest = write_bundle(
                members,
                result,
                Path(tmp) / "bundle",
                metrics=metrics,
                extra=extra,
            )
            key = bundle_key(members[0].base_model, manifest["bundle_id"])
            publish_objects(Path(tmp) / "bundle", key)
        published = publish_records(manifest, key, flow_run_id)
        logger.info(
            "group %s: published bundle %s, %d alias moves",
            label,
            manifest["bundle_id"],
            len(published["moves"]),
        )
        return summary | {
            "status": "published",
            "bundle_id": manifest["bundle_id"],
            "bundle_uri": published["bundle"]["bundle_uri"],
            "storage": manifest["storage"],
        }


@task(**RETRIES, cache_policy=NO_CACHE)
def publish_objects(folder: Path, key: str) -> None:
    upload_bundle(open_registry(), folder, key)


@task(**RETRIES, cache_policy=NO_CACHE)
def publish_records(manifest: dict, key: str, flow_run_id: str) -> dict:
    return open_registry().publish_bundle(manifest, key, reason="consolidate", actor=f"prefect:{flow_run_id}")


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


@task(**RETRIES, cache_policy=NO_CACHE)
def plan_groups(base_model: str | None) -> dict[str, list[dict]]:
    """Newest active adapter versions grouped by the registry's compatibility keys: {label: [rows]}."""
    settings = FlowSettings.from_env()
    registry = open_registry(settings.registry)
    groups = registry.compatible_groups(base_model)
    unkeyed = [row for group in groups if group["modules_digest"] is None for row in group["adapters"]]
    if unkeyed:
        record_digests(registry, unkeyed, settings)
        groups = registry.compatible_groups(base_model)
    return {group_label(group): group["adapters"] for group in groups}


@flow(name="consolidate")
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
    groups = plan_groups(base_model)
    logger.info("%d group(s): %s", len(groups), ", ".join(f"{k} ({len(v)})" for k, v in groups.items()))
    futures = [
        consolidate_group.submit(
            label, rows, method, heads, rank, min_retention, refine, distill_steps, dry_run, flow_run_id
        )
        for label, rows in groups.items()
    ]
    results = [future.result() for future in futures]
    rows = [{"group": result["group"]} | row for result in results for row in result["tasks"]]
    create_table_artifact(
        key="consolidate-tasks",
        table=rows or [{"result": "no tasks evaluated"}],
        description="per task: metric before and after the merge, retention, gate",
    )
    create_markdown_artifact(key="consolidate-summary", markdown=summary_markdown(results, dry_run))
    return {"groups": results, "published": [r["bundle_id"] for r in results if r["status"] == "published"]}


def summary_markdown(results: list[dict], dry_run: bool) -> str:
    lines = ["| group | status | method | K | r' | storage | tasks |", "|---|---|---|---|---|---|---|"]
    for r in results:
        storage = f"{r['storage']['ratio']:.3f}" if "storage" in r else "-"
        lines.append(
            f"| {r['group']} | {r['status']} | {r.get('method', '-')} | {r.get('heads', '-')} | "
            f"{r.get('rank', '-')} | {storage} | {len(r['tasks'])} |"
        )
    title = "# consolidate (dry run)" if dry_run else "# consolidate"
    return "\n".join([title, "", *lines])
