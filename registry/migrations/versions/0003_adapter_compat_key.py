"""The compatibility key of every adapter version, so planning merge groups is a registry query.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

- ``adapters.modules_digest``: sha256 over the sorted (module name, d_out, d_in) set of the version
  (`hydraopt.formats.compat.modules_digest`); with its base model, revision and adapter type it is the
  compatibility key, recorded at registration. NULL where the folder could not be read (quarantined
  or pending versions), and for the rows this migration finds: it cannot load their adapters, so
  ``consolidate`` computes it once from the loaded adapter of an active version and records it
  (`Registry.record_modules_digest`). Added in batch mode on SQLite.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("adapters") as batch:
        batch.add_column(sa.Column("modules_digest", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("adapters") as batch:
        batch.drop_column("modules_digest")
