"""The Alembic history builds exactly the schema the models declare, on both databases."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from tests.conftest import _create_pg_database, _drop_pg_database, _postgres_available

from grassroots.db import Base, make_engine
from grassroots.migrate import alembic_config, upgrade
from grassroots.models_registry import import_all_models


def _schema_differences(url: str) -> list[object]:
    import_all_models()
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    engine.dispose()
    return list(differences)


def test_the_migration_history_is_one_linear_line() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    heads = script.get_heads()
    assert len(heads) == 1
    assert all(len(rev._all_down_revisions) <= 1 for rev in script.walk_revisions())


def test_migrations_on_sqlite_match_the_models(tmp_path: Path) -> None:
    assert _schema_differences(f"sqlite:///{tmp_path / 'm.db'}") == []


def test_migrations_on_postgresql_match_the_models() -> None:
    if not _postgres_available():
        if os.environ.get("GRASSROOTS_TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL is required but does not answer")
        pytest.skip("PostgreSQL is not running")
    name, url = _create_pg_database()
    try:
        assert _schema_differences(url) == []
    finally:
        _drop_pg_database(name)
