"""Migrations: empty database -> head on SQLite and PostgreSQL, matching the models exactly."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from registry.db import alembic_config, make_engine, upgrade
from registry.models import Base
from tests.registry_fixtures import empty_db_url_fixture  # noqa: F401


def test_upgrade_from_empty_to_head_matches_models(empty_db_url: str):
    engine = make_engine(empty_db_url)
    assert inspect(engine).get_table_names() == []
    upgrade(engine)
    upgrade(engine)  # a second run is a no-op
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert context.get_current_revision() == head
        assert compare_metadata(context, Base.metadata) == []
    assert set(inspect(engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    engine.dispose()


def test_migrations_ship_inside_the_package():
    script = ScriptDirectory.from_config(alembic_config())
    assert script.dir.endswith("registry/migrations")
    assert [rev.revision for rev in script.walk_revisions()] == ["0001"]
