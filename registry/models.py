"""Registry tables (SQLAlchemy 2.x typed models). The schema itself is owned by the migrations."""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Dialect,
    Double,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ADAPTER_STATUSES = ("active", "retired", "quarantined", "pending")
SOURCE_KINDS = ("hub", "path", "uri")
CURRENT_ALIAS = "current"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite drops the offset on its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class BaseModel(Base):
    __tablename__ = "base_models"
    __table_args__ = (UniqueConstraint("name", "revision"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    # "" when the revision is unknown: NULLs would not be unique.
    revision: Mapped[str] = mapped_column(String(256), default="")


class BaseModelSource(Base):
    """A registered base model: where its files come from (hub repo, local folder, object-store URI)."""

    __tablename__ = "base_model_sources"
    __table_args__ = (CheckConstraint(f"kind IN {SOURCE_KINDS!r}", name="kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    kind: Mapped[str] = mapped_column(String(8))
    location: Mapped[str] = mapped_column(Text)
    revision: Mapped[str] = mapped_column(String(256), default="")  # "" = none pinned
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    aliases: Mapped[list["BaseModelAlias"]] = relationship(
        order_by="BaseModelAlias.alias", lazy="selectin", back_populates="source"
    )


class BaseModelAlias(Base):
    """Another name of a registered base model, such as the path it had on a trainer's machine."""

    __tablename__ = "base_model_aliases"

    id: Mapped[int] = mapped_column(primary_key=True)
    alias: Mapped[str] = mapped_column(String(1024), unique=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("base_model_sources.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    source: Mapped[BaseModelSource] = relationship(back_populates="aliases", lazy="joined")


class Adapter(Base):
    """One adapter version: immutable once active; a pending one waits for its inputs (`pending_reason`)."""

    __tablename__ = "adapters"
    __table_args__ = (
        UniqueConstraint("name", "version"),
        CheckConstraint(f"status IN {ADAPTER_STATUSES!r}", name="status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    version: Mapped[str] = mapped_column(String(128))
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"), index=True)
    adapter_type: Mapped[str] = mapped_column(String(32), default="lora")
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    uri: Mapped[str] = mapped_column(Text)
    rank: Mapped[int | None] = mapped_column(Integer)
    alpha: Mapped[float | None] = mapped_column(Float)
    targets: Mapped[list[Any]] = mapped_column(default=list)
    # sha256 of the (module, d_out, d_in) set: with base model and adapter type, the compatibility key
    modules_digest: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="active")
    quarantine_reason: Mapped[str | None] = mapped_column(Text)
    pending_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    base_model: Mapped[BaseModel] = relationship(lazy="joined")


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)


class Bundle(Base):
    __tablename__ = "bundles"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)  # content-addressed bundle id
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"), index=True)
    uri: Mapped[str] = mapped_column(Text)
    manifest: Mapped[dict[str, Any]]
    # what consolidate was asked for: sha256 of the group's inputs and request (migration 0004)
    request_digest: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    base_model: Mapped[BaseModel] = relationship(lazy="joined")
    members: Mapped[list["BundleMember"]] = relationship(order_by="BundleMember.id")
    evaluations: Mapped[list["Evaluation"]] = relationship(order_by="Evaluation.id")


class BundleMember(Base):
    """Lineage: which adapter version serves which task through which head."""

    __tablename__ = "bundle_members"
    __table_args__ = (UniqueConstraint("bundle_id", "task_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    bundle_id: Mapped[str] = mapped_column(ForeignKey("bundles.id"))
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"), index=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    head: Mapped[int]

    adapter: Mapped[Adapter] = relationship(lazy="joined")
    task: Mapped[Task] = relationship(lazy="joined")


class Evaluation(Base):
    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("bundle_id", "task_id", "metric"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    bundle_id: Mapped[str] = mapped_column(ForeignKey("bundles.id"))
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    metric: Mapped[str] = mapped_column(String(128))
    value: Mapped[float] = mapped_column(Double)  # as migration 0001 has it (2.0 maps float to Float)

    task: Mapped[Task] = relationship(lazy="joined")


class MergeRun(Base):
    __tablename__ = "merge_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    flow_run_id: Mapped[str] = mapped_column(String(64), unique=True)
    bundle_id: Mapped[str | None] = mapped_column(ForeignKey("bundles.id"), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)  # seconds per phase


class TaskAlias(Base):
    """A named pointer ("current") from a task to a bundle."""

    __tablename__ = "task_aliases"
    __table_args__ = (UniqueConstraint("task_id", "alias"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    alias: Mapped[str] = mapped_column(String(64))
    bundle_id: Mapped[str] = mapped_column(ForeignKey("bundles.id"), index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    bundle: Mapped[Bundle] = relationship()


class AliasEvent(Base):
    """Append-only history of alias moves; `action` is "move" or "rollback"."""

    __tablename__ = "alias_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    alias: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16), default="move")
    from_bundle_id: Mapped[str | None] = mapped_column(ForeignKey("bundles.id"))
    to_bundle_id: Mapped[str] = mapped_column(ForeignKey("bundles.id"))
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
