"""Faults injected into real flow runs, and the audit that nothing they hit was lost or left half-done.

Shared by the fault tests and `hydracat bench reliability`. `failing` makes a method of the store,
the registry or the flows raise a chosen error for a number of calls (the errors below are what
botocore, SQLAlchemy and the OS raise). `kill_consolidate_at` runs `consolidate` in a child process,
pauses it at a point by patching that child only (product code has no hook) and SIGKILLs it there.
`audit` checks the registry against the store at the end.
"""

import errno
import importlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prefect import Task

from hydraopt.formats.layout import BUNDLE_TENSORS_FILE, MANIFEST_FILE, PEFT_FILES, task_folder
from registry.store import ObjectStore

UNREACHABLE = "http://s3.unreachable.invalid"


def s3_unreachable() -> Exception:
    from botocore.exceptions import EndpointConnectionError

    return EndpointConnectionError(endpoint_url=UNREACHABLE)


def s3_read_timeout() -> Exception:
    from botocore.exceptions import ReadTimeoutError

    return ReadTimeoutError(endpoint_url=UNREACHABLE)


def s3_connect_timeout() -> Exception:
    from botocore.exceptions import ConnectTimeoutError

    return ConnectTimeoutError(endpoint_url=UNREACHABLE)


def db_connection_dropped() -> Exception:
    from sqlalchemy.exc import OperationalError

    return OperationalError("COMMIT", {}, ConnectionResetError("server closed the connection"))


def disk_full() -> Exception:
    return OSError(errno.ENOSPC, "No space left on device")


@dataclass
class Injection:
    """What a `failing` patch saw: calls that matched, and how many of them raised."""

    calls: int = 0
    raised: int = 0


@contextmanager
def failing(
    owner: object,
    name: str,
    error: Callable[[], Exception],
    times: float = math.inf,
    when: Callable[..., bool] = lambda *_args, **_kwargs: True,
) -> Iterator[Injection]:
    """`owner.name` raises `error()` on its first `times` calls for which `when(*args)` holds."""
    real = getattr(owner, name)
    own = name in vars(owner)
    seen = Injection()

    def patched(*args, **kwargs):
        if when(*args, **kwargs):
            seen.calls += 1
            if seen.raised < times:
                seen.raised += 1
                raise error()
        return real(*args, **kwargs)

    setattr(owner, name, patched)
    try:
        yield seen
    finally:
        if own:
            setattr(owner, name, real)
        else:
            delattr(owner, name)


def under(prefix: str) -> Callable[..., bool]:
    """`when` for an ObjectStore method: the call's key starts with `prefix`."""
    return lambda _store, key, *_args, **_kwargs: key.startswith(prefix)


def retried_tasks() -> list["Task"]:
    """The flows' tasks that retry transient failures (3 retries, 1, 4 and 16 s apart)."""
    import flows.catalog
    import flows.consolidate
    from flows.resources import transient_error

    found = {
        id(obj): obj
        for module in (flows.catalog, flows.consolidate)
        for obj in vars(module).values()
        if isinstance(obj, Task) and obj.retry_condition_fn is transient_error
    }
    return list(found.values())


@contextmanager
def retry_delays(seconds: float) -> Iterator[None]:
    """The retried tasks and steps (`flows.resources.retrying`) wait `seconds` between tries (same number
    of retries): faults in less time."""
    import flows.resources

    tasks = retried_tasks()
    saved = [task.retry_delay_seconds for task in tasks], flows.resources.RETRY_DELAYS_S
    for task in tasks:
        task.retry_delay_seconds = [seconds] * task.retries
    flows.resources.RETRY_DELAYS_S = [seconds] * len(saved[1])
    try:
        yield
    finally:
        for task, delays in zip(tasks, saved[0], strict=True):
            task.retry_delay_seconds = delays
        flows.resources.RETRY_DELAYS_S = saved[1]


# A worker killed mid-run

PAUSE_POINTS = {
    "merge": ("hydraopt.evaluation.pipeline", "merge_adapters"),  # the group's lock held, nothing written
    "commit": ("registry.api", "Registry.publish_bundle"),  # bundle objects uploaded, no row yet
}
CHILD = "import sys; from bench.faults import run_paused; run_paused(*sys.argv[1:])"


def run_paused(stage: str, marker: str, kwargs: str) -> None:
    """In the child: `consolidate(**kwargs)`, stopping for good at `stage` after creating `marker`."""
    module, path = PAUSE_POINTS[stage]
    *parents, name = path.split(".")
    owner = importlib.import_module(module)
    for parent in parents:
        owner = getattr(owner, parent)

    def pause(*_args, **_kwargs):
        Path(marker).touch()
        time.sleep(3600)

    setattr(owner, name, pause)
    from flows.consolidate import consolidate

    consolidate(**json.loads(kwargs))


def kill_consolidate_at(stage: str, workdir: Path, timeout_s: float = 300, **kwargs) -> dict:
    """Run `consolidate(**kwargs)` in a child (this process's Prefect API and HYDRACAT_* settings),
    SIGKILL it once it reaches `stage`; returns what happened."""
    from prefect.settings import get_current_settings

    workdir.mkdir(parents=True, exist_ok=True)
    marker, log = workdir / f"paused-at-{stage}", workdir / f"killed-at-{stage}.log"
    marker.unlink(missing_ok=True)
    env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True)}
    start = time.monotonic()
    with log.open("w") as out:
        command = [sys.executable, "-c", CHILD, stage, str(marker), json.dumps(kwargs)]
        child = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        while not marker.exists():
            if child.poll() is not None:
                output = log.read_text()[-2000:]
                raise RuntimeError(f"consolidate exited ({child.returncode}) before {stage}: {output}")
            if time.monotonic() - start > timeout_s:
                raise TimeoutError(f"consolidate did not reach {stage} within {timeout_s:.0f} s")
            time.sleep(0.1)
        reached_s = time.monotonic() - start
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    return {"stage": stage, "reached_after_s": round(reached_s, 1), "exit": child.returncode}


# The audit



def bundle_files(manifest: dict) -> list[str]:
    tasks = sorted(member["task"] for member in manifest["members"])
    return [MANIFEST_FILE, BUNDLE_TENSORS_FILE, *(f"{task_folder(t)}/{f}" for t in tasks for f in PEFT_FILES)]


def missing_objects(store: ObjectStore, uri: str, files: list[str]) -> list[str]:
    key = store.key_for(uri)
    return [file for file in files if key is None or not store.exists(f"{key}/{file}")]


def audit(database_url: str, store: ObjectStore) -> dict:
    """Lost or inconsistent records, read from the registry and the store.

    Checks: every active adapter's files and every bundle's files are in the store; no two bundles
    were made of the same adapters, method and parameters; every "current" alias points at a
    bundle serving its task, and equals the last move of its history; every history is a chain
    (each move starts where the previous one ended, none stays in place).
    """
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from registry.db import make_engine
    from registry.models import Adapter, AliasEvent, Bundle, TaskAlias

    engine = make_engine(database_url)
    try:
        with Session(engine) as session:
            adapters = session.scalars(select(Adapter)).unique().all()
            bundles = {b.id: b for b in session.scalars(select(Bundle)).unique().all()}
            aliases = session.scalars(select(TaskAlias)).all()
            events = session.scalars(select(AliasEvent).order_by(AliasEvent.id)).all()
            problems = [
                f"adapter {a.name}/{a.version}: files missing at {a.uri}"
                for a in adapters
                if a.status == "active" and missing_objects(store, a.uri, list(PEFT_FILES))
            ]
            problems += bundle_problems(store, list(bundles.values()))
            served = {bundle.id: {m.task_id for m in bundle.members} for bundle in bundles.values()}
            problems += alias_problems(aliases, events, served)
    finally:
        engine.dispose()
    return {
        "adapters": len(adapters),
        "bundles": len(bundles),
        "aliases": len(aliases),
        "alias_events": len(events),
        "problems": problems,
    }


def bundle_problems(store: ObjectStore, bundles: list) -> list[str]:
    problems, made_of = [], defaultdict(list)
    for bundle in bundles:
        manifest = bundle.manifest
        if missing := missing_objects(store, bundle.uri, bundle_files(manifest)):
            problems.append(f"bundle {bundle.id}: {len(missing)} object(s) missing, e.g. {missing[0]}")
        members = sorted((m["task"], m["sha256"]) for m in manifest["members"])
        recipe = [members, manifest.get("method"), manifest.get("consolidate", {}).get("params")]
        made_of[json.dumps(recipe)].append(bundle.id)
    return problems + [f"bundles {ids} made of the same inputs" for ids in made_of.values() if len(ids) > 1]


def alias_problems(aliases: list, events: list, served: dict[str, set[int]]) -> list[str]:
    problems, history = [], defaultdict(list)
    for event in events:
        history[(event.task_id, event.alias)].append(event)
    current = {(a.task_id, a.alias): a.bundle_id for a in aliases}
    for (task_id, alias), moves in history.items():
        for before, move in zip([None, *moves], moves, strict=False):
            start = before.to_bundle_id if before else None
            if move.from_bundle_id != start or move.to_bundle_id == start:
                problems.append(f"task {task_id} {alias}: event {move.id} breaks the history chain")
        if current.get((task_id, alias)) != moves[-1].to_bundle_id:
            problems.append(f"task {task_id} {alias}: the alias is not where its last move put it")
    for (task_id, alias), bundle_id in current.items():
        if (task_id, alias) not in history or task_id not in served[bundle_id]:
            problems.append(f"task {task_id} {alias} -> {bundle_id}: no move to it, or not serving it")
    return problems
