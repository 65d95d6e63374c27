"""The request each bundle was made for, so "is this group already served?" is one indexed query.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

- ``bundles.request_digest``: sha256 over the group's input adapter versions (task name, sha256) and
  how consolidate was asked to merge them (`flows.consolidate.request_digest`), recorded when
  consolidate publishes the bundle. A nightly whose group has a bundle with its digest skips it
  without downloading anything. NULL for bundles recorded otherwise, and for the rows this migration
  finds: their groups are merged once more, and that bundle records it. Indexed; added in batch mode
  on SQLite.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bundles") as batch:
        batch.add_column(sa.Column("request_digest", sa.String(length=64), nullable=True))
        batch.create_index("ix_bundles_request_digest", ["request_digest"])


def downgrade() -> None:
    with op.batch_alter_table("bundles") as batch:
        batch.drop_index("ix_bundles_request_digest")
        batch.drop_column("request_digest")
