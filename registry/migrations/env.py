"""Alembic environment: migrates the connection handed over by `registry.db.upgrade`."""

from alembic import context

from registry.db import make_engine
from registry.models import Base


def run_migrations(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    with make_engine(context.config.get_main_option("sqlalchemy.url")).begin() as connection:
        run_migrations(connection)
