"""Registry test fixtures: migrated databases (SQLite file, PostgreSQL schema) and moto S3.

Test modules import what they use (`from tests.registry_fixtures import registry_fixture`);
each fixture is registered under its name without `_fixture`. PostgreSQL comes from
$HYDRACAT_TEST_PG_URL (default: postgres@127.0.0.1:5432/test); each test gets a fresh schema,
dropped afterwards, and is skipped with the reason when nothing listens there.
"""

import argparse
import hashlib
import os
import socket
import uuid
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from sqlalchemy import make_url

from registry.api import Registry
from registry.cli import add_registry_commands
from registry.db import make_engine, upgrade

PG_URL = os.environ.get("HYDRACAT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", "postgresql"]


def _reachable(url: str) -> bool:
    parsed = make_url(url)
    try:
        with socket.create_connection((parsed.host or "127.0.0.1", parsed.port or 5432), 2):
            return True
    except OSError:
        return False


def _schema_url(schema: str) -> str:
    separator = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{separator}{urlencode({'options': f'-csearch_path={schema}'})}"


@pytest.fixture(params=BACKENDS, name="empty_db_url")
def empty_db_url_fixture(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """A URL to an empty database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    if not _reachable(PG_URL):
        pytest.skip(f"PostgreSQL not reachable at {PG_URL} (set HYDRACAT_TEST_PG_URL)")
    schema = f"hydracat_test_{uuid.uuid4().hex[:12]}"
    admin = make_engine(PG_URL)
    with admin.begin() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield _schema_url(schema)
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture(name="db_url")
def db_url_fixture(empty_db_url: str) -> str:
    """A URL to a database migrated to head."""
    engine = make_engine(empty_db_url)
    upgrade(engine)
    engine.dispose()
    return empty_db_url


@pytest.fixture(name="registry")
def registry_fixture(db_url: str) -> Iterator[Registry]:
    engine = make_engine(db_url)
    yield Registry(engine)
    engine.dispose()


def manifest(bundle_id: str, tasks: list[str], version: str = "1", base: str = "tiny-llama") -> dict:
    """A manifest in the hydraopt bundle format over adapters `<task>-adapter` at `version`."""
    return {
        "schema_version": 1,
        "bundle_id": bundle_id,
        "method": "hydraopt",
        "params": {"heads": len(tasks)},
        "base_model": {"name": base, "revision": "main"},
        "members": [
            {
                "adapter_id": f"{task}-{version}",
                "name": f"{task}-adapter",
                "version": version,
                "task": task,
                "sha256": sha_of(task, version),
                "head": head,
            }
            for head, task in enumerate(tasks)
        ],
        "metrics": {
            task: {"relative_error": 0.01 * (head + 1), "modules": {}} for head, task in enumerate(tasks)
        },
        "storage": {"bundle_bytes": 10, "source_bytes": 20, "ratio": 0.5},
    }


def sha_of(task: str, version: str) -> str:
    return hashlib.sha256(f"{task}:{version}".encode()).hexdigest()


def seed(registry: Registry, bundle_ids: list[str], tasks: list[str]) -> None:
    """Register one adapter per task and record each bundle over all tasks."""
    for task in tasks:
        registry.register_adapter_version(
            f"{task}-adapter",
            "1",
            sha256=sha_of(task, "1"),
            uri=f"file:///adapters/{task}",
            base_model="tiny-llama",
            base_revision="main",
            rank=4,
            alpha=8.0,
            targets=["q_proj", "v_proj"],
        )
    for bundle_id in bundle_ids:
        registry.record_bundle(
            bundle_id, "tiny-llama", manifest(bundle_id, tasks), uri=f"file:///bundles/{bundle_id}"
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session", name="s3_endpoint")
def s3_endpoint_fixture() -> Iterator[str]:
    """A moto S3 server on a free local port, with dummy credentials in the environment."""
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            patch.setenv(name, value)
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()


@pytest.fixture(name="s3_bucket")
def s3_bucket_fixture(s3_endpoint: str) -> str:
    import boto3

    bucket = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return bucket


def registry_cli_args(*argv: str) -> argparse.Namespace:
    """`hydracat <argv>` parsed by the registry's commands alone."""
    parser = argparse.ArgumentParser(prog="hydracat")
    add_registry_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def run_registry_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """Run `hydracat <argv>` in this process: (exit code, stdout, stderr)."""
    args = registry_cli_args(*argv)
    code = args.handler(args)
    out, err = capsys.readouterr()
    return code, out, err
