"""Migrations on SQLite and PostgreSQL: empty database -> head matching the models exactly, and
existing 0001 and 0002 databases upgraded in place (SQLite in batch mode) and back."""

import pytest
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
    assert [rev.revision for rev in script.walk_revisions()] == ["0004", "0003", "0002", "0001"]


def test_a_0001_database_is_upgraded_in_place_and_keeps_its_rows(empty_db_url: str):
    from alembic import command
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    from registry.api import Registry

    engine = make_engine(empty_db_url)
    upgrade(engine, "0001")
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO base_models (id, name, revision) VALUES (1, 'tiny-llama', 'main')")
        )
        connection.execute(
            text(
                "INSERT INTO adapters (name, version, base_model_id, adapter_type, sha256, uri, targets,"
                " status, quarantine_reason, created_at) VALUES (:name, '1', 1, 'lora', :sha, 'u', '[]',"
                " :status, :reason, CURRENT_TIMESTAMP)"
            ),
            [
                {"name": "a", "sha": "1" * 64, "status": "active", "reason": None},
                {"name": "b", "sha": "2" * 64, "status": "quarantined", "reason": "bad shapes"},
            ],
        )
    upgrade(engine)
    registry = Registry(engine)
    rows = {row["name"]: row for row in registry.list_adapters()}
    assert {name: (row["status"], row["quarantine_reason"]) for name, row in rows.items()} == {
        "a": ("active", None),
        "b": ("quarantined", "bad shapes"),
    }
    assert (
        rows["a"]["base_model"] == {"name": "tiny-llama", "revision": "main"}
        and rows["a"]["pending_reason"] is None
    )
    registry.register_adapter_version(
        "c", "1", sha256="3" * 64, uri="u", base_model="m", pending_reason="waiting"
    )
    registry.add_base_model("m", kind="path", location="/models/m", aliases=["/home/alice/m"])
    with pytest.raises(IntegrityError), engine.begin() as connection:  # the new CHECK constraint holds
        connection.execute(text("UPDATE adapters SET status = 'gone' WHERE name = 'a'"))
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []

    config = alembic_config()
    with engine.begin() as connection:  # and back: a pending version is kept as quarantined
        config.attributes["connection"] = connection
        command.downgrade(config, "0001")
    with engine.connect() as connection:
        statuses = connection.execute(
            text("SELECT name, status, quarantine_reason FROM adapters ORDER BY name")
        )
        assert statuses.all() == [("a", "active", None), ("b", "quarantined", "bad shapes"),
                                  ("c", "quarantined", "pending: waiting")]  # fmt: skip
    assert "base_model_sources" not in inspect(engine).get_table_names()
    engine.dispose()


def test_a_0002_database_gets_modules_digests_null_until_recorded(empty_db_url: str):
    from alembic import command
    from sqlalchemy import text

    from registry.api import Registry

    engine = make_engine(empty_db_url)
    upgrade(engine, "0002")
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO base_models (id, name, revision) VALUES (1, 'tiny-llama', 'main')")
        )
        connection.execute(
            text(
                "INSERT INTO adapters (name, version, base_model_id, adapter_type, sha256, uri, targets,"
                " status, quarantine_reason, pending_reason, created_at) VALUES (:name, '1', 1, 'lora',"
                " :sha, 'u', '[]', :status, NULL, :pending, CURRENT_TIMESTAMP)"
            ),
            [
                {"name": "a", "sha": "1" * 64, "status": "active", "pending": None},
                {"name": "b", "sha": "2" * 64, "status": "active", "pending": None},
                {"name": "c", "sha": "3" * 64, "status": "pending", "pending": "no base model"},
            ],
        )
    upgrade(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    registry = Registry(engine)
    rows = {row["name"]: row for row in registry.list_adapters()}
    assert {name: (row["status"], row["modules_digest"]) for name, row in rows.items()} == {
        "a": ("active", None),
        "b": ("active", None),
        "c": ("pending", None),
    }
    (unkeyed,) = registry.compatible_groups()  # the active ones, waiting for their digests
    assert unkeyed["modules_digest"] is None and [a["name"] for a in unkeyed["adapters"]] == ["a", "b"]
    registry.record_modules_digest("a", "1", "d" * 64)
    registry.record_modules_digest("b", "1", "d" * 64)
    (keyed,) = registry.compatible_groups()
    assert keyed["modules_digest"] == "d" * 64 and [a["name"] for a in keyed["adapters"]] == ["a", "b"]

    config = alembic_config()
    with engine.begin() as connection:  # and back: the digests go, the rows stay
        config.attributes["connection"] = connection
        command.downgrade(config, "0002")
    assert "modules_digest" not in {column["name"] for column in inspect(engine).get_columns("adapters")}
    with engine.connect() as connection:
        names = connection.execute(text("SELECT name, status FROM adapters ORDER BY name"))
        assert names.all() == [("a", "active"), ("b", "active"), ("c", "pending")]
    engine.dispose()
