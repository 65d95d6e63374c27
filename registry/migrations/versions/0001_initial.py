"""Initial registry schema.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
BUNDLE_ID = sa.String(length=128)


def _pk(table: str) -> sa.PrimaryKeyConstraint:
    return sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}"))


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}"))


def _index(table: str, *columns: str) -> None:
    for column in columns:
        op.create_index(op.f(f"ix_{table}_{column}"), table, [column])


def upgrade() -> None:
    op.create_table(
        "base_models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("revision", sa.String(length=256), nullable=False),
        _pk("base_models"),
        sa.UniqueConstraint("name", "revision", name=op.f("uq_base_models_name_revision")),
    )
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        _pk("tasks"),
        sa.UniqueConstraint("name", name=op.f("uq_tasks_name")),
    )
    op.create_table(
        "adapters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("base_model_id", sa.Integer(), nullable=False),
        sa.Column("adapter_type", sa.String(length=32), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=True),
        sa.Column("alpha", sa.Float(), nullable=True),
        sa.Column("targets", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("quarantine_reason", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("status IN ('active', 'retired', 'quarantined')", name=op.f("ck_adapters_status")),
        _fk("adapters", "base_model_id", "base_models"),
        _pk("adapters"),
        sa.UniqueConstraint("name", "version", name=op.f("uq_adapters_name_version")),
    )
    _index("adapters", "base_model_id", "sha256")
    op.create_table(
        "bundles",
        sa.Column("id", BUNDLE_ID, nullable=False),
        sa.Column("base_model_id", sa.Integer(), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        _fk("bundles", "base_model_id", "base_models"),
        _pk("bundles"),
    )
    _index("bundles", "base_model_id")
    op.create_table(
        "bundle_members",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("bundle_id", BUNDLE_ID, nullable=False),
        sa.Column("adapter_id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("head", sa.Integer(), nullable=False),
        _fk("bundle_members", "adapter_id", "adapters"),
        _fk("bundle_members", "bundle_id", "bundles"),
        _fk("bundle_members", "task_id", "tasks"),
        _pk("bundle_members"),
        sa.UniqueConstraint("bundle_id", "task_id", name=op.f("uq_bundle_members_bundle_id_task_id")),
    )
    _index("bundle_members", "adapter_id", "task_id")
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("bundle_id", BUNDLE_ID, nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        _fk("evaluations", "bundle_id", "bundles"),
        _fk("evaluations", "task_id", "tasks"),
        _pk("evaluations"),
        sa.UniqueConstraint(
            "bundle_id", "task_id", "metric", name=op.f("uq_evaluations_bundle_id_task_id_metric")
        ),
    )
    _index("evaluations", "task_id")
    op.create_table(
        "merge_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("flow_run_id", sa.String(length=64), nullable=False),
        sa.Column("bundle_id", BUNDLE_ID, nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("timings", sa.JSON(), nullable=False),
        _fk("merge_runs", "bundle_id", "bundles"),
        _pk("merge_runs"),
        sa.UniqueConstraint("flow_run_id", name=op.f("uq_merge_runs_flow_run_id")),
    )
    _index("merge_runs", "bundle_id")
    op.create_table(
        "task_aliases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("bundle_id", BUNDLE_ID, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        _fk("task_aliases", "bundle_id", "bundles"),
        _fk("task_aliases", "task_id", "tasks"),
        _pk("task_aliases"),
        sa.UniqueConstraint("task_id", "alias", name=op.f("uq_task_aliases_task_id_alias")),
    )
    _index("task_aliases", "bundle_id")
    op.create_table(
        "alias_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("from_bundle_id", BUNDLE_ID, nullable=True),
        sa.Column("to_bundle_id", BUNDLE_ID, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        _fk("alias_events", "from_bundle_id", "bundles"),
        _fk("alias_events", "task_id", "tasks"),
        _fk("alias_events", "to_bundle_id", "bundles"),
        _pk("alias_events"),
    )
    _index("alias_events", "task_id")


def downgrade() -> None:
    for table in (
        "alias_events",
        "task_aliases",
        "merge_runs",
        "evaluations",
        "bundle_members",
        "bundles",
        "adapters",
        "tasks",
        "base_models",
    ):
        op.drop_table(table)
