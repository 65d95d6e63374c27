"""Alembic migrations of the registry schema; run them with `registry.db.upgrade`."""
