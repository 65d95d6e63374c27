"""The registry's Python API. Every method returns plain JSON-ready dicts, in the shapes the CLI
and HTTP surfaces return as well (README.md, "JSON shapes"):

```
current_bundle  {"task", "alias", "bundle_id", "bundle_uri", "base_model": {"name", "revision"},
                 "head", "adapter": {"id", "name", "version", "sha256"}, "task_adapter_uri",
                 "updated_at", "manifest"}
get_bundle      {"bundle_id", "base_model", "bundle_uri", "created_at",
                 "members": [{"task", "head", "adapter"}], "metrics", "manifest" (without members)}
```
`task_adapter_uri` is `<bundle_uri>/tasks/<task>`: a standard PEFT LoRA for that task.

Writes run in one transaction each. Alias moves lock the task row first (SELECT ... FOR UPDATE
on PostgreSQL, BEGIN IMMEDIATE on SQLite), so concurrent moves are serialised and every move is
logged in `alias_events` with the pointer it replaced.
"""

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Engine, bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from hydraopt.formats.layout import MANIFEST_FILE, TASKS_FOLDER
from registry.db import WRITE_LOCK, make_engine, session_factory
from registry.errors import (
    AdapterNotFoundError,
    AliasNotSetError,
    BaseModelNotFoundError,
    BundleNotFoundError,
    ConflictError,
    InvalidRequestError,
    TaskNotFoundError,
)
from registry.events import (
    ADAPTER_RETIRED,
    ALIAS_ROLLED_BACK,
    BASE_MODEL_ALIASED,
    BASE_MODEL_REGISTERED,
    BUNDLE_PUBLISHED,
    Change,
    Notify,
    adapter_change,
)
from registry.models import (
    ADAPTER_STATUSES,
    CURRENT_ALIAS,
    Adapter,
    AliasEvent,
    BaseModel,
    BaseModelAlias,
    BaseModelSource,
    Bundle,
    BundleMember,
    Evaluation,
    MergeRun,
    Task,
    TaskAlias,
    utcnow,
)
from registry.names import check_alias, check_location, check_name, check_revision
from registry.settings import Settings
from registry.store import ObjectStore, open_store

T = TypeVar("T")
log = logging.getLogger(__name__)

ADAPTER_REF_FIELDS = ("id", "name", "version", "sha256")  # `adapter_ref`, and the query's Adapter columns

# Built once: constructing this select costs as much as running it.
CURRENT_BUNDLE_QUERY = (
    select(
        Bundle.id,
        Bundle.uri,
        Bundle.manifest,
        BaseModel.name,
        BaseModel.revision,
        BundleMember.head,
        Adapter.id,
        Adapter.name,
        Adapter.version,
        Adapter.sha256,
        TaskAlias.updated_at,
    )  # fmt: skip
    .join(Task, Task.id == TaskAlias.task_id)
    .join(Bundle, Bundle.id == TaskAlias.bundle_id)
    .join(BaseModel, BaseModel.id == Bundle.base_model_id)
    .join(BundleMember, (BundleMember.bundle_id == Bundle.id) & (BundleMember.task_id == Task.id))
    .join(Adapter, Adapter.id == BundleMember.adapter_id)
    .where(Task.name == bindparam("task"), TaskAlias.alias == bindparam("alias"))
)


class Registry:
    """Adapters, bundles and task aliases in the registry database.

    With a `store`, bundles are recorded by their object key (`hydraopt.formats.layout.bundle_key`):
    the store gives their URI, and their manifest must be written before their row is recorded.
    Without one, `record_bundle` takes the URI as given.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session] | Engine,
        store: ObjectStore | None = None,
        notify: Notify | None = None,
    ):
        self._sessions = session_factory(sessions) if isinstance(sessions, Engine) else sessions
        self._engine: Engine = self._sessions.kw["bind"]
        self.store = store
        self._notify = notify

    @classmethod
    def from_settings(cls, settings: Settings | None = None, notify: Notify | None = None) -> "Registry":
        settings = settings or Settings.from_env()
        return cls(make_engine(settings.database_url), open_store(settings), notify)

    def close(self) -> None:
        """Close the database connections this registry's engine holds (it reconnects if used again)."""
        self._engine.dispose()

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def _write(self, work: Callable[[Session], T]) -> T:
        """Run `work` in a write transaction, once more if a concurrent insert won a race."""
        try:
            return self._transaction(work)
        except IntegrityError:
            return self._transaction(work)  # the retry finds the other writer's rows

    def _transaction(self, work: Callable[[Session], T]) -> T:
        with self._sessions() as session, session.begin():
            session.connection(execution_options={WRITE_LOCK: True})
            return work(session)

    def _tell(self, changes: list[Change]) -> None:
        """Hand committed `changes` to the listener; its failure is logged, never the write's."""
        if self._notify is None or not changes:
            return
        try:
            self._notify(changes)
        except Exception:  # the write has committed: a listener that fails must not undo or fail it
            log.warning("could not notify %d registry change(s)", len(changes), exc_info=True)

    # adapters

    def register_adapter_version(
        self,
        name: str,
        version: str,
        *,
        sha256: str,
        uri: str,
        base_model: str,
        base_revision: str | None = None,
        adapter_type: str = "lora",
        rank: int | None = None,
        alpha: float | None = None,
        targets: list[Any] | None = None,
        modules_digest: str | None = None,
        quarantine_reason: str | None = None,
        pending_reason: str | None = None,
    ) -> dict:
        """Register an adapter version: quarantined with `quarantine_reason`, pending with `pending_reason`.

        `modules_digest` (`hydraopt.formats.compat.modules_digest` of its module shapes), with the base
        model and adapter type, is the version's compatibility key (`compatible_groups`).

        Registering the same name, version and sha256 again returns the existing row; the same
        name and version with another sha256 raises ConflictError. A pending version is a
        placeholder (its base model or hub repo could not be had yet): registering it again
        replaces it, so the sync that can resolve it activates it, or records a newer reason.
        """
        fields = {
            "name": name, "version": version, "sha256": sha256, "uri": uri, "base_model": base_model,
            "base_revision": base_revision, "adapter_type": adapter_type, "rank": rank, "alpha": alpha,
            "targets": targets, "modules_digest": modules_digest, "quarantine_reason": quarantine_reason,
            "pending_reason": pending_reason,
        }  # fmt: skip
        return self.register_adapter_versions([fields])[0]

    def register_adapter_versions(self, versions: list[dict]) -> list[dict]:
        """Register many adapter versions in one transaction, each as `register_adapter_version` does
        (its keyword arguments plus "name" and "version"); returns their rows in the same order.

        A ConflictError or InvalidRequestError for one of them registers none.
        """
        for fields in versions:
            if fields.get("quarantine_reason") and fields.get("pending_reason"):
                raise InvalidRequestError("an adapter version is quarantined or pending, not both")

        def work(session: Session) -> list[dict]:
            names = sorted({fields["name"] for fields in versions})
            existing = {
                (adapter.name, adapter.version): adapter
                for chunk in chunks(names)
                for adapter in session.scalars(select(Adapter).where(Adapter.name.in_(chunk)))
            }
            bases: dict[tuple[str, str], BaseModel] = {}
            rows, changed = [], []
            for fields in versions:
                name, version = fields["name"], fields["version"]
                adapter = existing.get((name, version))
                if adapter is not None and adapter.status != "pending":
                    if adapter.sha256 != fields["sha256"]:
                        raise ConflictError(
                            f"adapter {name} {version} is registered with sha256 {adapter.sha256},"
                            f" not {fields['sha256']}: versions are immutable, register a new version"
                        )
                    rows.append(adapter)
                    continue
                base = (fields["base_model"], fields.get("base_revision") or "")
                if base not in bases:
                    bases[base] = _base_model(session, *base)
                quarantined, pending = fields.get("quarantine_reason"), fields.get("pending_reason")
                values = {
                    "sha256": fields["sha256"],
                    "uri": fields["uri"],
                    "base_model": bases[base],
                    "adapter_type": fields.get("adapter_type", "lora"),
                    "rank": fields.get("rank"),
                    "alpha": fields.get("alpha"),
                    "targets": list(fields.get("targets") or []),
                    "modules_digest": fields.get("modules_digest"),
                    "status": "quarantined" if quarantined else "pending" if pending else "active",
                    "quarantine_reason": quarantined,
                    "pending_reason": pending,
                }
                adapter = existing[name, version] = adapter or Adapter(name=name, version=version)
                for field, value in values.items():
                    setattr(adapter, field, value)
                session.add(adapter)
                rows.append(adapter)
                changed.append(adapter)
            session.flush()
            return [adapter_dict(adapter) for adapter in rows], [adapter_dict(adapter) for adapter in changed]

        rows, changed = self._write(work)
        self._tell([adapter_change(row) for row in changed])
        return rows

    def version_statuses(self) -> dict[tuple[str, str], str]:
        """{(name, version): status} of every registered adapter version: what a sync already knows."""
        with self._engine.connect() as connection:
            rows = connection.execute(select(Adapter.name, Adapter.version, Adapter.status))
            return {(name, version): status for name, version, status in rows}

    def list_adapters(
        self, base_model: str | None = None, status: str | None = None, name: str | None = None
    ) -> list[dict]:
        if status is not None and status not in ADAPTER_STATUSES:
            raise InvalidRequestError(f"status must be one of {', '.join(ADAPTER_STATUSES)}")
        query = select(Adapter).join(Adapter.base_model).order_by(Adapter.name, Adapter.version)
        if base_model is not None:
            query = query.where(BaseModel.name == base_model)
        if status is not None:
            query = query.where(Adapter.status == status)
        if name is not None:
            query = query.where(Adapter.name == name)
        with self._read() as session:
            return [adapter_dict(adapter) for adapter in session.scalars(query)]

    def compatible_groups(self, base_model: str | None = None) -> list[dict]:
        """The newest active version of every adapter name (of `base_model` if given), grouped by
        compatibility key: [{"base_model", "adapter_type", "modules_digest", "adapters": [...]}].

        Groups come in the order of their first adapter's name, adapters by name. Versions whose
        digest is not recorded yet (None: registered before migration 0003) share a group per base
        model and adapter type; `record_modules_digest` files them.
        """
        newest = select(func.max(Adapter.id)).where(Adapter.status == "active").group_by(Adapter.name)
        query = select(Adapter).where(Adapter.id.in_(newest.scalar_subquery()))
        if base_model is not None:  # of the newest versions, those of `base_model`
            query = query.join(Adapter.base_model).where(BaseModel.name == base_model)
        groups: dict[tuple[int, str, str | None], dict] = {}
        with self._read() as session:
            adapters = session.scalars(query)
            for adapter in sorted(adapters, key=lambda adapter: adapter.name):
                key = (adapter.base_model_id, adapter.adapter_type, adapter.modules_digest)
                if key not in groups:
                    groups[key] = {
                        "base_model": base_model_dict(adapter.base_model),
                        "adapter_type": adapter.adapter_type,
                        "modules_digest": adapter.modules_digest,
                        "adapters": [],
                    }
                groups[key]["adapters"].append(adapter_dict(adapter))
        return list(groups.values())

    def record_modules_digest(self, name: str, version: str, modules_digest: str) -> dict:
        """Record the module-shape digest of a version registered without one (before migration 0003).

        Recording the same digest again changes nothing; another one raises ConflictError.
        """

        def work(session: Session) -> dict:
            adapter = _adapter(session, name, version)
            if adapter.modules_digest not in (None, modules_digest):
                raise ConflictError(
                    f"adapter {name} {version} has modules digest {adapter.modules_digest},"
                    f" not {modules_digest}"
                )
            adapter.modules_digest = modules_digest
            session.flush()
            return adapter_dict(adapter)

        return self._write(work)

    def retire_adapter(self, name: str, version: str) -> dict:
        """Retire an adapter version: it is merged no more (an older active version of the name may be)."""

        def work(session: Session) -> tuple[dict, bool]:
            adapter = _adapter(session, name, version)
            retiring = adapter.status != "retired"
            adapter.status = "retired"
            return adapter_dict(adapter), retiring

        row, retiring = self._write(work)
        if retiring:
            self._tell([Change(ADAPTER_RETIRED, row, row["base_model"]["name"])])
        return row

    # registered base models

    def add_base_model(
        self,
        name: str,
        *,
        kind: str,
        location: str,
        revision: str | None = None,
        aliases: list[str] | tuple[str, ...] = (),
    ) -> dict:
        """Register base model `name`: a hub repo (`kind` "hub", `location` org/name), a local folder
        ("path", absolute) or a folder in the object store ("uri"), pinned to `revision` if given.

        Registering the same source again returns it (adding any new `aliases`); another source
        under a registered name raises ConflictError. Names and aliases never overlap.
        """
        check_name(name)
        check_location(kind, location)
        if revision is not None:
            check_revision(revision)
        if kind == "uri" and self.store is not None and self.store.key_for(location) is None:
            raise InvalidRequestError(f"uri {location!r} is not a folder of the registry's object store")

        def work(session: Session) -> tuple[dict, bool]:
            if _alias(session, name) is not None:
                raise ConflictError(f"{name!r} is already an alias of another base model")
            source = session.scalar(select(BaseModelSource).filter_by(name=name))
            created = source is None
            if source is None:
                source = BaseModelSource(name=name, kind=kind, location=location, revision=revision or "")
                session.add(source)
            elif (source.kind, source.location, source.revision) != (kind, location, revision or ""):
                raise ConflictError(
                    f"base model {name!r} is registered from {_source_text(source)}, not "
                    f"{kind} {location}{'@' + revision if revision else ''}"
                )
            known = {alias.alias for alias in source.aliases}
            for alias in aliases:
                _add_alias(session, source, alias)
            session.flush()
            return base_model_source_dict(source), created or bool(set(aliases) - known)

        source, changed = self._write(work)
        if changed:
            self._tell([Change(BASE_MODEL_REGISTERED, source, name)])
        return source

    def add_base_model_alias(self, alias: str, name: str) -> dict:
        """Make `alias` (say, the path a trainer's config names) another name of base model `name`."""

        def work(session: Session) -> dict:
            source = session.scalar(select(BaseModelSource).filter_by(name=name))
            if source is None:
                raise BaseModelNotFoundError(name)
            _add_alias(session, source, alias)
            session.flush()
            return base_model_source_dict(source)

        source = self._write(work)
        self._tell([Change(BASE_MODEL_ALIASED, source | {"alias": alias}, name)])
        return source

    def list_base_models(self) -> list[dict]:
        with self._read() as session:
            sources = session.scalars(select(BaseModelSource).order_by(BaseModelSource.name))
            return [base_model_source_dict(source) for source in sources]

    def find_base_model(self, name: str) -> dict | None:
        """The registered base model called `name`, or the one `name` is an alias of; None if neither."""
        with self._read() as session:
            source = session.scalar(select(BaseModelSource).filter_by(name=name))
            alias = _alias(session, name) if source is None else None
            source = alias.source if alias is not None else source
            return base_model_source_dict(source) if source is not None else None

    # bundles

    def record_bundle(
        self,
        bundle_id: str,
        base_model: str,
        manifest: dict,
        members: list[dict] | None = None,
        metrics: dict[str, dict[str, Any]] | None = None,
        *,
        key: str | None = None,
        uri: str | None = None,
        base_revision: str | None = None,
    ) -> dict:
        """Record a published bundle with its lineage and metrics; idempotent by bundle id.

        The bundle is named by its object `key` in the registry's store, or, where the registry has
        no store, by its `uri`.

        `members` (default: the manifest's) name registered adapter versions by `name` and
        `version` (or registry `adapter_id`), with their `task` and `head`. `metrics` (default:
        the manifest's) maps task -> {metric: value}; numeric values become evaluation rows.
        """
        if manifest.get("bundle_id", bundle_id) != bundle_id:
            raise InvalidRequestError(
                f"manifest bundle_id {manifest['bundle_id']!r} differs from {bundle_id!r}"
            )
        members = manifest.get("members", []) if members is None else members
        metrics = manifest.get("metrics", {}) if metrics is None else metrics
        if base_revision is None:
            base_revision = (manifest.get("base_model") or {}).get("revision")
        uri = self._bundle_uri(key, uri)
        return self._write(
            lambda session: _record_bundle(
                session, bundle_id, base_model, base_revision, uri, manifest, members, metrics
            )
        )

    def publish_bundle(
        self, manifest: dict, key: str, *, reason: str, actor: str, request_digest: str | None = None
    ) -> dict:
        """Record the bundle of `manifest`, at `key` in the store, and point every member task's
        "current" alias at it; `request_digest` names what it was made for (`served_requests`).

        One transaction: either the bundle row, its lineage and every alias move are visible, or
        none is. Its objects must already be in the store. Tasks already on this bundle are not
        moved again, so a rerun of a publish that committed changes nothing.
        Returns {"bundle": ..., "moves": [alias events]}.
        """
        bundle_id, members = manifest["bundle_id"], manifest["members"]
        base = manifest["base_model"]
        uri = self._bundle_uri(key, None)

        def work(session: Session) -> dict:
            bundle = _record_bundle(
                session, bundle_id, base["name"], base.get("revision"), uri, manifest, members,
                manifest.get("metrics", {}), request_digest,
            )  # fmt: skip
            tasks = _lock_tasks(session, [member["task"] for member in members])
            pointers = _pointers(session, tasks, CURRENT_ALIAS)
            latest = _latest_events(session, tasks, CURRENT_ALIAS)
            moving = [
                task
                for task in tasks
                if getattr(pointers.get(task.id), "bundle_id", None) != bundle_id
                and not _rolled_back_from(latest.get(task.id), bundle_id)
            ]
            events = _moves(session, moving, CURRENT_ALIAS, bundle_id, "move", reason, actor, pointers)
            return {"bundle": bundle, "moves": events}

        published = self._write(work)
        if published["moves"]:
            subject = {"bundle_id": bundle_id, "bundle_uri": uri, "tasks": [m["task"] for m in members],
                       "moved": [event["task"] for event in published["moves"]]}  # fmt: skip
            self._tell([Change(BUNDLE_PUBLISHED, subject, base["name"])])
        return published

    def _bundle_uri(self, key: str | None, uri: str | None) -> str:
        """The URI to record for a bundle: the store's for `key`, once its manifest is written there;
        `uri` as given where the registry has no store."""
        if self.store is None:
            if key is not None or uri is None:
                raise InvalidRequestError("the registry has no object store: record a bundle by its uri")
            return uri
        if key is None or uri is not None:
            raise InvalidRequestError("record a bundle by its object key: the registry's store gives its uri")
        if not self.store.exists(f"{key}/{MANIFEST_FILE}"):
            raise InvalidRequestError(
                f"no {MANIFEST_FILE} under {key}: write the bundle objects before recording it"
            )
        return self.store.uri_for(key)

    def served_requests(self, digests: list[str]) -> set[str]:
        """Those of `digests` (see `publish_bundle`) that a published bundle was made for."""
        with self._engine.connect() as connection:
            return {
                digest
                for chunk in chunks(sorted(set(digests)))
                for digest in connection.scalars(
                    select(Bundle.request_digest).where(Bundle.request_digest.in_(chunk)).distinct()
                )
            }

    def get_bundle(self, bundle_id: str) -> dict:
        with self._read() as session:
            bundle = session.get(Bundle, bundle_id)
            if bundle is None:
                raise BundleNotFoundError(bundle_id)
            return bundle_dict(bundle)

    def record_merge_run(
        self,
        flow_run_id: str,
        *,
        status: str,
        params: dict | None = None,
        bundle_id: str | None = None,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
        timings: dict[str, float] | None = None,
    ) -> dict:
        """Create or update the merge run of `flow_run_id`; None arguments keep stored values."""

        def work(session: Session) -> dict:
            run = session.scalar(select(MergeRun).filter_by(flow_run_id=flow_run_id))
            if run is None:
                run = MergeRun(flow_run_id=flow_run_id, params={}, timings={})
                session.add(run)
            run.status = status
            for field, value in [
                ("params", params),
                ("bundle_id", bundle_id),
                ("started_at", started_at),
                ("finished_at", finished_at),
                ("timings", timings),
            ]:
                if value is not None:
                    setattr(run, field, value)
            session.flush()
            return merge_run_dict(run)

        return self._write(work)

    # task aliases

    def move_alias(
        self, task: str, bundle_id: str, reason: str, actor: str, alias: str = CURRENT_ALIAS
    ) -> dict:
        """Point `alias` of `task` at `bundle_id` and log the move; returns the event."""

        def work(session: Session) -> dict:
            task_row = _lock_task(session, task)
            if session.get(Bundle, bundle_id) is None:
                raise BundleNotFoundError(bundle_id)
            if _member(session, bundle_id, task_row) is None:
                raise InvalidRequestError(f"bundle {bundle_id!r} has no adapter for task {task!r}")
            return _moves(session, [task_row], alias, bundle_id, "move", reason, actor)[0]

        return self._write(work)

    def rollback(self, task: str, actor: str, reason: str = "rollback", alias: str = CURRENT_ALIAS) -> dict:
        """Move `alias` back to the bundle it pointed at before its latest move; returns the event.

        Rollbacks undo moves one at a time: two rollbacks after moves A -> B -> C land on A.
        """

        def work(session: Session) -> dict:
            task_row = _lock_task(session, task)
            targets: list[str] = []
            for event in session.scalars(
                select(AliasEvent).filter_by(task_id=task_row.id, alias=alias).order_by(AliasEvent.id)
            ):
                if event.action == "rollback":
                    targets.pop()
                else:
                    targets.append(event.to_bundle_id)
            if len(targets) < 2:
                raise InvalidRequestError(f"task {task!r} has no earlier {alias!r} bundle")
            return _moves(session, [task_row], alias, targets[-2], "rollback", reason, actor)[0]

        event = self._write(work)
        self._tell([Change(ALIAS_ROLLED_BACK, event, None)])
        return event

    def current_bundle(self, task: str, alias: str = CURRENT_ALIAS) -> dict:
        """The bundle `alias` of `task` points at, in the shape shared by CLI and HTTP.

        The hot path: one prebuilt joined statement on a Core connection (no ORM session);
        the misses find out which error applies.
        """
        with self._engine.connect() as connection:
            row = connection.execute(CURRENT_BUNDLE_QUERY, {"task": task, "alias": alias}).one_or_none()
        if row is None:
            with self._read() as session:
                _task(session, task)
            raise AliasNotSetError(task, alias)
        bundle_id, uri, manifest, base_name, base_revision, head, *adapter, updated_at = row
        return {
            "task": task,
            "alias": alias,
            "bundle_id": bundle_id,
            "bundle_uri": uri,
            "base_model": {"name": base_name, "revision": base_revision or None},
            "head": head,
            "adapter": dict(zip(ADAPTER_REF_FIELDS, adapter, strict=True)),
            "task_adapter_uri": f"{uri.rstrip('/')}/{TASKS_FOLDER}/{task}",
            "updated_at": updated_at.isoformat(),
            "manifest": manifest,
        }

    def history(self, task: str, alias: str = CURRENT_ALIAS) -> list[dict]:
        """Every move of `alias` of `task`, newest first."""
        with self._read() as session:
            task_row = _task(session, task)
            events = session.scalars(
                select(AliasEvent).filter_by(task_id=task_row.id, alias=alias).order_by(AliasEvent.id.desc())
            )
            return [event_dict(event, task) for event in events]


# queries shared by the methods above


def chunks(values: Sequence[T], size: int = 500) -> Iterator[Sequence[T]]:
    """`values` in slices of `size`: IN lists that every backend takes."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _base_model(session: Session, name: str, revision: str | None) -> BaseModel:
    row = session.scalar(select(BaseModel).filter_by(name=name, revision=revision or ""))
    if row is None:
        row = BaseModel(name=name, revision=revision or "")
        session.add(row)
    return row


def _alias(session: Session, alias: str) -> BaseModelAlias | None:
    return session.scalar(select(BaseModelAlias).filter_by(alias=alias))


def _add_alias(session: Session, source: BaseModelSource, alias: str) -> None:
    check_alias(alias)
    existing = _alias(session, alias)
    if existing is not None:
        if existing.source_id != source.id:
            raise ConflictError(f"{alias!r} is already an alias of base model {existing.source.name!r}")
        return
    if session.scalar(select(BaseModelSource.id).filter_by(name=alias)) is not None:
        raise ConflictError(f"{alias!r} is a registered base model name, it cannot be an alias")
    source.aliases.append(BaseModelAlias(alias=alias))


def _source_text(source: BaseModelSource) -> str:
    return f"{source.kind} {source.location}{'@' + source.revision if source.revision else ''}"


def _task(session: Session, name: str) -> Task:
    row = session.scalar(select(Task).filter_by(name=name))
    if row is None:
        raise TaskNotFoundError(name)
    return row


def _lock_task(session: Session, name: str) -> Task:
    return _lock_tasks(session, [name])[0]


def _lock_tasks(session: Session, names: list[str]) -> list[Task]:
    """The task rows of `names`, in name order, locked until the transaction ends (SELECT ... FOR
    UPDATE; a no-op on SQLite's locked database)."""
    rows = []
    for chunk in chunks(sorted(set(names))):
        query = select(Task).where(Task.name.in_(chunk)).order_by(Task.name).with_for_update()
        rows += session.scalars(query)
    missing = sorted(set(names) - {row.name for row in rows})
    if missing:
        raise TaskNotFoundError(missing[0])
    return rows


def _tasks(session: Session, names: list[str]) -> dict[str, Task]:
    """The task rows of `names`, created where missing."""
    found = {row.name: row for chunk in chunks(sorted(set(names))) for row in
             session.scalars(select(Task).where(Task.name.in_(chunk)))}  # fmt: skip
    for name in sorted(set(names) - set(found)):
        found[name] = Task(name=name)
        session.add(found[name])
    return found


def _adapter(session: Session, name: str, version: str) -> Adapter:
    row = session.scalar(select(Adapter).filter_by(name=name, version=version))
    if row is None:
        raise AdapterNotFoundError(f"{name} {version}")
    return row


def _member_adapters(session: Session, members: list[dict]) -> list[Adapter]:
    """The registered adapter version of each bundle member (by name and version, or adapter_id)."""
    names = sorted({member["name"] for member in members if member.get("name") is not None})
    by_version = {(row.name, row.version): row for chunk in chunks(names) for row in
                  session.scalars(select(Adapter).where(Adapter.name.in_(chunk)))}  # fmt: skip
    return [_member_adapter(session, member, by_version) for member in members]


def _member_adapter(session: Session, member: dict, by_version: dict[tuple[str, str], Adapter]) -> Adapter:
    if member.get("name") is not None and member.get("version") is not None:
        adapter = by_version.get((member["name"], str(member["version"])))
        if adapter is None:
            raise AdapterNotFoundError(f"{member['name']} {member['version']}")
    elif isinstance(member.get("adapter_id"), int):
        adapter = session.get(Adapter, member["adapter_id"])
        if adapter is None:
            raise AdapterNotFoundError(f"id {member['adapter_id']}")
    else:
        raise InvalidRequestError(f"bundle member needs name and version, or adapter_id: {member}")
    if member.get("sha256") not in (None, adapter.sha256):
        raise ConflictError(
            f"bundle member {adapter.name} {adapter.version} has sha256 {member['sha256']},"
            f" the registry has {adapter.sha256}"
        )
    return adapter


def _member(session: Session, bundle_id: str, task: Task) -> BundleMember | None:
    return session.scalar(select(BundleMember).filter_by(bundle_id=bundle_id, task_id=task.id))


def _record_bundle(
    session: Session,
    bundle_id: str,
    base_model: str,
    base_revision: str | None,
    uri: str,
    manifest: dict,
    members: list[dict],
    metrics: dict[str, dict[str, Any]],
    request_digest: str | None = None,
) -> dict:
    """The bundle row, its members and evaluations; the existing row if already recorded (given
    `request_digest`, that request recorded on it)."""
    member_tasks = [member["task"] for member in members]
    if not members or len(set(member_tasks)) != len(member_tasks):
        raise InvalidRequestError(f"bundle {bundle_id!r} needs members with distinct tasks")
    bundle = session.get(Bundle, bundle_id)
    if bundle is not None:
        if bundle.uri != uri:
            raise ConflictError(f"bundle {bundle_id!r} is already recorded at {bundle.uri}")
        bundle.request_digest = request_digest or bundle.request_digest  # the latest request it serves
        return bundle_dict(bundle)
    bundle = Bundle(
        id=bundle_id, base_model=_base_model(session, base_model, base_revision), uri=uri, manifest=manifest,
        request_digest=request_digest,
    )  # fmt: skip
    session.add(bundle)
    tasks = _tasks(session, member_tasks)
    for member, adapter in zip(members, _member_adapters(session, members), strict=True):
        bundle.members.append(
            BundleMember(adapter=adapter, task=tasks[member["task"]], head=int(member["head"]))
        )
    for task_name, values in metrics.items():
        if task_name not in tasks:
            raise InvalidRequestError(f"metrics name task {task_name!r}, not a bundle member")
        bundle.evaluations.extend(
            Evaluation(task=tasks[task_name], metric=metric, value=float(value))
            for metric, value in values.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        )
    session.flush()
    return bundle_dict(bundle)


def _pointers(session: Session, tasks: list[Task], alias: str) -> dict[int, TaskAlias]:
    """{task id: its `alias` pointer} of the tasks that have one."""
    ids = [task.id for task in tasks if task.id is not None]
    found = {}
    for chunk in chunks(ids):
        query = select(TaskAlias).where(TaskAlias.task_id.in_(chunk), TaskAlias.alias == alias)
        found |= {row.task_id: row for row in session.scalars(query)}
    return found


def _latest_events(session: Session, tasks: list[Task], alias: str) -> dict[int, AliasEvent]:
    """{task id: the latest move of its `alias`} of the tasks that have one."""
    ids = [task.id for task in tasks if task.id is not None]
    found = {}
    for chunk in chunks(ids):
        newest = (
            select(func.max(AliasEvent.id))
            .where(AliasEvent.task_id.in_(chunk), AliasEvent.alias == alias)
            .group_by(AliasEvent.task_id)
        )
        found |= {e.task_id: e for e in session.scalars(select(AliasEvent).where(AliasEvent.id.in_(newest)))}
    return found


def _rolled_back_from(latest: AliasEvent | None, bundle_id: str) -> bool:
    """Whether the latest move, `latest`, rolled the alias back from `bundle_id` (which then stays off it)."""
    return latest is not None and latest.action == "rollback" and latest.from_bundle_id == bundle_id


def _moves(
    session: Session, tasks: list[Task], alias: str, bundle_id: str, action: str, reason: str, actor: str,
    pointers: dict[int, TaskAlias] | None = None,
) -> list[dict]:  # fmt: skip
    """Point `alias` of every task at `bundle_id` and log each move; `pointers` as `_pointers` gives them."""
    now = utcnow()
    pointers = _pointers(session, tasks, alias) if pointers is None else pointers
    events = []
    for task in tasks:
        pointer = pointers.get(task.id)
        previous = pointer.bundle_id if pointer is not None else None
        if pointer is None:
            pointer = TaskAlias(task_id=task.id, alias=alias)
            session.add(pointer)
        pointer.bundle_id, pointer.updated_at = bundle_id, now
        event = AliasEvent(task_id=task.id, alias=alias, action=action, from_bundle_id=previous,
                           to_bundle_id=bundle_id, reason=reason, actor=actor, created_at=now)  # fmt: skip
        session.add(event)
        events.append((event, task.name))
    session.flush()
    return [event_dict(event, name) for event, name in events]


# JSON shapes


def base_model_dict(base: BaseModel) -> dict:
    return {"name": base.name, "revision": base.revision or None}


def adapter_ref(adapter: Adapter) -> dict:
    """The adapter version a bundle member or a task's current bundle serves."""
    return {field: getattr(adapter, field) for field in ADAPTER_REF_FIELDS}


def adapter_dict(adapter: Adapter) -> dict:
    return {
        "id": adapter.id,
        "name": adapter.name,
        "version": adapter.version,
        "base_model": base_model_dict(adapter.base_model),
        "adapter_type": adapter.adapter_type,
        "sha256": adapter.sha256,
        "uri": adapter.uri,
        "rank": adapter.rank,
        "alpha": adapter.alpha,
        "targets": adapter.targets,
        "modules_digest": adapter.modules_digest,
        "status": adapter.status,
        "quarantine_reason": adapter.quarantine_reason,
        "pending_reason": adapter.pending_reason,
        "created_at": adapter.created_at.isoformat(),
    }


def base_model_source_dict(source: BaseModelSource) -> dict:
    return {
        "name": source.name,
        "kind": source.kind,
        "location": source.location,
        "revision": source.revision or None,
        "aliases": [alias.alias for alias in source.aliases],
        "created_at": source.created_at.isoformat(),
    }


def bundle_dict(bundle: Bundle) -> dict:
    """A bundle with its lineage: each member once, as `members` (not again in the manifest)."""
    metrics: dict[str, dict[str, float]] = {}
    for evaluation in bundle.evaluations:
        metrics.setdefault(evaluation.task.name, {})[evaluation.metric] = evaluation.value
    return {
        "bundle_id": bundle.id,
        "base_model": base_model_dict(bundle.base_model),
        "bundle_uri": bundle.uri,
        "created_at": bundle.created_at.isoformat(),
        "members": [
            {"task": member.task.name, "head": member.head, "adapter": adapter_ref(member.adapter)}
            for member in bundle.members
        ],
        "metrics": metrics,
        "manifest": {field: value for field, value in bundle.manifest.items() if field != "members"},
    }


def event_dict(event: AliasEvent, task: str) -> dict:
    return {
        "id": event.id,
        "task": task,
        "alias": event.alias,
        "action": event.action,
        "from_bundle_id": event.from_bundle_id,
        "to_bundle_id": event.to_bundle_id,
        "reason": event.reason,
        "actor": event.actor,
        "created_at": event.created_at.isoformat(),
    }


def merge_run_dict(run: MergeRun) -> dict:
    return {
        "flow_run_id": run.flow_run_id,
        "bundle_id": run.bundle_id,
        "params": run.params,
        "status": run.status,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "timings": run.timings,
    }
