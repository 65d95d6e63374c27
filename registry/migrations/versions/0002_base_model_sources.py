"""Registered base models, their aliases, and pending adapter versions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

- ``base_model_sources``: a base model by name, from a hub repo, a local folder or an object-store
  URI, with the revision it is pinned to.
- ``base_model_aliases``: other names of a registered base model (a trainer's local path).
- ``adapters``: status ``pending`` (waiting for its base model or hub repo) and its
  ``pending_reason``. The CHECK constraint is replaced, in batch mode on SQLite.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
STATUSES_0001 = "status IN ('active', 'retired', 'quarantined')"
STATUSES_0002 = "status IN ('active', 'retired', 'quarantined', 'pending')"


def upgrade() -> None:
    op.create_table(
        "base_model_sources",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("location", sa.Text(), nullable=False),
        sa.Column("revision", sa.String(length=256), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("kind IN ('hub', 'path', 'uri')", name=op.f("ck_base_model_sources_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_base_model_sources")),
        sa.UniqueConstraint("name", name=op.f("uq_base_model_sources_name")),
    )
    op.create_table(
        "base_model_aliases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=1024), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["source_id"],
            ["base_model_sources.id"],
            name=op.f("fk_base_model_aliases_source_id_base_model_sources"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_base_model_aliases")),
        sa.UniqueConstraint("alias", name=op.f("uq_base_model_aliases_alias")),
    )
    op.create_index(op.f("ix_base_model_aliases_source_id"), "base_model_aliases", ["source_id"])
    with op.batch_alter_table("adapters") as batch:
        batch.add_column(sa.Column("pending_reason", sa.Text(), nullable=True))
        batch.drop_constraint(op.f("ck_adapters_status"), type_="check")
        batch.create_check_constraint(op.f("ck_adapters_status"), STATUSES_0002)


def downgrade() -> None:
    """Pending versions become quarantined, their reason kept, so the 0001 constraint holds."""
    op.execute(
        "UPDATE adapters SET status = 'quarantined', quarantine_reason = 'pending: ' || pending_reason"
        " WHERE status = 'pending'"
    )
    with op.batch_alter_table("adapters") as batch:
        batch.drop_constraint(op.f("ck_adapters_status"), type_="check")
        batch.create_check_constraint(op.f("ck_adapters_status"), STATUSES_0001)
        batch.drop_column("pending_reason")
    op.drop_index(op.f("ix_base_model_aliases_source_id"), table_name="base_model_aliases")
    op.drop_table("base_model_aliases")
    op.drop_table("base_model_sources")
